"""Real mpiexec runs of 1–4 ranks: same answer for any rank count and tile grid, windowed reads,
both output paths, and clean failure."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from mpidcr.sim.simulate import simulate
from mpidcr.tiling import Plan

MPIEXEC = shutil.which("mpiexec")
pytestmark = [pytest.mark.mpi, pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec on PATH")]
SCRIPTS = Path(__file__).resolve().parent / "mpi_scripts"
NO_FREQ = ["--set", "regularizeModelFrequency=0"]


def mpirun(n, args, timeout=240, script=None):
    cmd = [MPIEXEC, "-n", str(n), sys.executable]
    cmd += [str(script)] if script else ["-m", "mpidcr", "-q"]
    proc = subprocess.run(
        cmd + [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    return proc


@pytest.fixture(scope="module")
def field128(tmp_path_factory):
    out = tmp_path_factory.mktemp("field128")
    simulate(out, size=128, num_visits=8, num_science=0, seed=5)
    return out


def _read(path):
    with h5py.File(path, "r") as f:
        return {
            k: f[k][...]
            for k in (
                "model",
                "coadd/image",
                "coadd/variance",
                "coadd/mask",
                "nimage",
                "nimage_total",
                "visits",
                "convergence",
            )
        }, dict(f.attrs)


def _same(a, b, rtol=1e-9):  # the issue asks 1e-5 of the largest value; mpidcr is identical to rounding
    scale = np.max(np.abs(a["model"]))
    assert np.max(np.abs(a["model"] - b["model"])) <= rtol * scale
    assert np.max(np.abs(a["coadd/image"] - b["coadd/image"])) <= rtol * np.max(np.abs(a["coadd/image"]))
    assert np.array_equal(a["nimage"], b["nimage"]) and np.array_equal(a["coadd/mask"], b["coadd/mask"])
    assert np.array_equal(a["convergence"]["iteration"], b["convergence"]["iteration"])


def _serial(manifest, out, *extra):
    """The one-rank reference, in this process."""
    from mpidcr.cli import main

    assert main(["-q", "run", str(manifest), "-o", str(out), *map(str, extra)]) == 0
    return _read(out)


@pytest.fixture(scope="module")
def runs(field128, tmp_path_factory):
    """Every multi-rank case of this module, run in ONE mpiexec launch of 4 ranks (sub-communicators
    of 2, 3 and 4 ranks; tests/mpi_scripts/run_cases.py): {label: (datasets, attributes)}, plus the
    fields the cases use."""
    base = tmp_path_factory.mktemp("mpi_runs")
    field160 = base / "field160"
    simulate(field160, size=160, num_visits=6, num_science=0, seed=7)
    masked = base / "masked"
    simulate(masked, size=128, num_visits=6, num_science=0, seed=9)
    from astropy.io import fits

    for path in sorted((masked / "warps").glob("*.fits")):
        with fits.open(path, mode="update") as hdul:
            hdul["MASK"].data[:, 64:] = 1 << int(hdul["MASK"].header["MP_NO_DATA"])
    undetected = base / "undetected"
    simulate(undetected, size=128, num_visits=6, num_science=0, seed=12)
    for path in sorted((undetected / "warps").glob("*.fits")):
        with fits.open(path, mode="update") as hdul:
            hdul["MASK"].data[:] = 0  # warps without DETECTED: sources are detected on the static model
    psfvar = base / "psfvar"  # visits with PSFs of different widths: the PSF-aware model's blur groups
    simulate(psfvar, size=256, num_visits=6, num_science=0, seed=13)
    from mpidcr.io.warps import psf_hdu
    from mpidcr.psf import kolmogorov_image

    for path, fwhm in zip(sorted((psfvar / "warps").glob("*.fits")), (3.0, 3.0, 3.4, 3.8, 4.1, 4.5), strict=True):
        with fits.open(path) as hdul:  # Kolmogorov seeing: the kernels get wing Gaussians, which reach across tiles
            hdus = [h.copy() for h in hdul if h.name != "PSF"]
        fits.HDUList([*hdus, psf_hdu(kolmogorov_image(fwhm, 31))]).writeto(path, overwrite=True)
    # transients in every warp and trails in some, and a block missing in every warp (NO_DATA
    # in the model): artifact rejection, streak masking and doInterp, all on by default
    artifacts = base / "artifacts"
    simulate(artifacts, size=128, num_visits=8, num_science=0, seed=17, cosmic_rays=8, satellite_fraction=0.3)
    for path in sorted((artifacts / "warps").glob("*.fits")):
        with fits.open(path, mode="update") as hdul:
            hdul["IMAGE"].data[100:110, 5:40] = np.nan
    m128 = field128 / "manifest.toml"
    cases = {
        "2": (2, m128, NO_FREQ),
        "3": (3, m128, NO_FREQ),
        "4": (4, m128, NO_FREQ),
        "1x4": (4, m128, [*NO_FREQ, "--tiles", "1x4"]),
        "4x1": (4, m128, [*NO_FREQ, "--tiles", "4x1"]),
        "2x2": (4, m128, [*NO_FREQ, "--tiles", "2x2"]),
        "mpio": (2, m128, [*NO_FREQ, "--output-mode", "mpio"]),
        "gather": (2, m128, [*NO_FREQ, "--output-mode", "gather"]),
        "default2": (2, field160 / "manifest.toml", []),
        "masked2": (2, masked / "manifest.toml", [*NO_FREQ, "--tiles", "1x2"]),
        "undetected2": (2, undetected / "manifest.toml", NO_FREQ),
        "undetected4": (4, undetected / "manifest.toml", NO_FREQ),
        "psf2": (2, psfvar / "manifest.toml", ["--set", "usePsf=true", "--tiles", "2x1"]),
        "psf4": (4, psfvar / "manifest.toml", ["--set", "usePsf=true", "--tiles", "2x2"]),
        "artifacts4": (4, artifacts / "manifest.toml", [*NO_FREQ, "--tiles", "2x2"]),
        "artifacts3": (3, artifacts / "manifest.toml", NO_FREQ),
    }
    spec = [{"ranks": n, "argv": ["run", str(man), "-o", str(base / f"{label}.h5"), *map(str, extra)]}
            for label, (n, man, extra) in cases.items()]  # fmt: skip
    (base / "cases.json").write_text(json.dumps(spec))
    proc = mpirun(4, [base / "cases.json"], script=SCRIPTS / "run_cases.py", timeout=600)
    assert proc.returncode == 0, proc.stderr
    out = {label: _read(base / f"{label}.h5") for label in cases}
    out["_dirs"] = {"field160": field160, "masked": masked, "undetected": undetected, "base": base, "psfvar": psfvar,
                    "artifacts": artifacts}  # fmt: skip
    return out


def test_rank_counts_and_tile_grids_agree(field128, runs):
    ref, ref_attrs = _serial(field128 / "manifest.toml", field128 / "m1.h5", *NO_FREQ)
    assert ref_attrs["iterations"] >= 2
    for label in ("2", "3", "4", "1x4", "4x1", "2x2"):
        data, attrs = runs[label]
        assert attrs["iterations"] == ref_attrs["iterations"], label
        assert attrs["stop_reason"] == ref_attrs["stop_reason"], label
        _same(ref, data)
    assert list(runs["4x1"][1]["tile_grid"]) == [4, 1]
    assert [runs[label][1]["num_ranks"] for label in ("2", "3", "4", "2x2")] == [2, 3, 4, 4]


def test_psf_aware_model_is_rank_independent(runs):
    """The PSF-aware model's blurs reach across tiles (the halo grows by their steps): 1 = 2 = 4
    ranks bit for bit."""
    psfvar = runs["_dirs"]["psfvar"]
    ref, ref_attrs = _serial(psfvar / "manifest.toml", runs["_dirs"]["base"] / "psf1.h5", "--set", "usePsf=true")
    assert ref_attrs["psf_aware"] and ref_attrs["iterations"] >= 2 and len(ref_attrs["psf_wing_sigmas"]) == 1
    for label in ("psf2", "psf4"):
        data, attrs = runs[label]
        assert attrs["iterations"] == ref_attrs["iterations"], label
        assert np.array_equal(ref["model"], data["model"]), label


def test_artifact_rejection_is_rank_independent(runs):
    """Footprints, epoch counts and streaks cross tiles (gathered to each visit's owner rank);
    doInterp rows cross tiles (done on the whole file): 1 = 3 = 4 ranks bit for bit."""
    field = runs["_dirs"]["artifacts"]
    out = runs["_dirs"]["base"] / "artifacts1.h5"
    ref, ref_attrs = _serial(field / "manifest.toml", out, *NO_FREQ)
    with h5py.File(out) as f:
        clipped, streak = f["artifacts/clipped"][...], f["artifacts/streak"][...]
        planes = {k[3:]: int(v) for k, v in f["coadd/mask"].attrs.items() if k.startswith("MP_")}
    assert np.unpackbits(clipped).sum() > 100 and np.unpackbits(streak).sum() > 100
    assert np.any(ref["coadd/mask"] & (1 << planes["INTRP"]))
    for label in ("artifacts4", "artifacts3"):
        data, attrs = runs[label]
        with h5py.File(runs["_dirs"]["base"] / f"{label}.h5") as f:
            assert np.array_equal(f["artifacts/clipped"][...], clipped), label
            assert np.array_equal(f["artifacts/streak"][...], streak), label
        assert attrs["iterations"] == ref_attrs["iterations"], label
        for key in ("model", "coadd/image", "coadd/variance", "coadd/mask", "nimage"):
            assert np.array_equal(ref[key], data[key]), (label, key)


def test_default_config_two_ranks(runs):
    field160 = runs["_dirs"]["field160"]
    one = _serial(field160 / "manifest.toml", runs["_dirs"]["base"] / "default1.h5")
    two = runs["default2"]
    assert one[1]["iterations"] == two[1]["iterations"]
    assert two[1]["halo"] > 30  # frequency regularization and model weights widen the halo
    _same(one[0], two[0])


def test_output_paths_identical(runs):
    a, b = runs["mpio"][0], runs["gather"][0]
    for key in a:
        if key == "convergence":  # wall-clock seconds differ between runs
            for col in ("iteration", "metric", "gain"):
                assert np.array_equal(a[key][col], b[key][col], equal_nan=True)
        elif key == "visits":  # NaN where a visit has no value (psf_sigma of a constant-PSF model)
            for col in a[key].dtype.names:
                nan = a[key][col].dtype.kind == "f"
                assert np.array_equal(a[key][col], b[key][col], equal_nan=nan), col
        else:
            assert np.array_equal(a[key], b[key]), key
    with h5py.File(runs["_dirs"]["base"] / "mpio.h5") as f:
        assert f.attrs["complete"] and f["model"].chunks[0] == 1
    assert not list(runs["_dirs"]["base"].glob("*.tmp")) and not list(runs["_dirs"]["base"].glob(".*.tmp"))


def test_ranks_read_only_their_windows(field128, tmp_path):
    report = tmp_path / "report"
    proc = mpirun(4, [field128 / "manifest.toml", tmp_path / "w.h5", report], script=SCRIPTS / "read_windows.py")
    assert proc.returncode == 0, proc.stderr
    with h5py.File(tmp_path / "w.h5") as f:
        halo, dims = int(f.attrs["halo"]), tuple(int(d) for d in f.attrs["tile_grid"])
    plan = Plan((128, 128), dims, halo)
    full_bytes = 8 * 128 * 128 * (4 + 4 + 4)
    for rank in range(4):
        rep = json.loads(Path(f"{report}.{rank}").read_text())
        tile = plan.tile(rank)
        outer, inner = tile.outer, tile.inner
        boxes = {tuple(b) for _, b in rep["windows"]}
        # the solve's window (the outer box) and artifact rejection's (the inner box grown by the
        # PSF-matching kernels), each read once per extension of each warp; never the whole patch
        assert (outer.y0, outer.y1, outer.x0, outer.x1) in boxes and len(boxes) <= 2
        for y0, y1, x0, x1 in boxes:
            assert y0 <= inner.y0 and y1 >= inner.y1 and x0 <= inner.x0 and x1 >= inner.x1
            assert (y1 - y0) * (x1 - x0) < 128 * 128
        assert len(rep["windows"]) == 8 * 3 * len(boxes)  # image, mask, variance of each warp
        assert rep["bytes"] < 2 * full_bytes / 2


def test_failure_on_one_rank_aborts_all(field128):
    proc = mpirun(
        3,
        ["1", "run", field128 / "manifest.toml", "-o", field128 / "fail.h5", *NO_FREQ],
        script=SCRIPTS / "fail_on_rank.py",
        timeout=120,
    )
    assert proc.returncode != 0
    assert "mpidcr: error: [rank 1]" in proc.stderr and "simulated failure" in proc.stderr
    assert not (field128 / "fail.h5").exists()


def test_collective_error_reported_once(field128):
    proc = mpirun(3, ["run", field128 / "manifest.toml", "-o", field128 / "x.h5"], timeout=120)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("mpidcr: error:")]
    assert len(lines) == 1 and "less than 2 x the halo" in lines[0] and "fewer ranks" in lines[0]


def test_rank_with_only_masked_pixels_takes_part(runs):
    masked = runs["_dirs"]["masked"]
    one = _serial(masked / "manifest.toml", runs["_dirs"]["base"] / "masked1.h5", *NO_FREQ)
    _same(one[0], runs["masked2"][0])
    assert np.all(runs["masked2"][0]["nimage_total"][:, 70:] == 0)


def test_fallback_detection_is_rank_independent(runs):
    undetected = runs["_dirs"]["undetected"]
    one = _serial(undetected / "manifest.toml", runs["_dirs"]["base"] / "undetected1.h5", *NO_FREQ)
    for label in ("undetected2", "undetected4"):
        data, attrs = runs[label]
        assert attrs["iterations"] == one[1]["iterations"] >= 3
        _same(one[0], data)
