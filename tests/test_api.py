"""The public Python interface: importable without MPI or GalSim, the same models as the CLI."""

from __future__ import annotations

import contextlib
import inspect
import io
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from astropy.io import fits

import mpidcr
from mpidcr.cli import main
from mpidcr.errors import InputError
from mpidcr.sim.simulate import simulate

MPIEXEC = shutil.which("mpiexec")
DATASETS = ("model", "coadd/image", "coadd/variance", "coadd/mask", "nimage")


def _cli(*args):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return main(["-q", *map(str, args)])


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    out = tmp_path_factory.mktemp("api")
    info = simulate(out / "f", size=160, num_visits=6, num_science=1, seed=23, engine="numpy")
    assert _cli("run", out / "f" / "manifest.toml", "-o", out / "cli.h5") == 0
    return out, info


def _same(a: Path, b: Path) -> bool:
    with h5py.File(a) as x, h5py.File(b) as y:
        return all(np.array_equal(x[k][...], y[k][...]) for k in DATASETS)


def test_open_model_and_template_without_mpi4py_or_galsim(field):
    """What a notebook does, on a machine without mpi4py (and without GalSim)."""
    out, _ = field
    code = (
        "import sys; sys.modules['mpi4py'] = None; sys.modules['galsim'] = None\n"
        "import mpidcr\n"
        f"m = mpidcr.open_model({str(out / 'cli.h5')!r})\n"
        "t = m.template(airmass=1.4, parallactic_angle=35.0)\n"
        "from astropy.nddata import CCDData, VarianceUncertainty\n"
        "assert isinstance(t, CCDData) and t.wcs.has_celestial and t.mask.dtype == bool\n"
        "assert isinstance(t.uncertainty, VarianceUncertainty) and t.data.shape == m.planes.shape[1:]\n"
        "assert 'mpi4py' not in sys.modules or sys.modules['mpi4py'] is None\n"
        "print('ok', t.meta['airmass'])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok 1.4")


def test_model_object(field):
    out, _ = field
    m = mpidcr.open_model(out / "cli.h5")
    K = m.config.num_subfilters
    assert m.planes.shape == (K, 160, 160) and np.allclose(m.planes.sum(axis=0), m.coadd, rtol=1e-5, atol=1e-4)
    assert len(m.subfilter_edges) == K + 1 and m.pixel_scale == pytest.approx(0.2)
    assert len(m.visits) == 6 and "airmass" in m.visits.colnames and len(m.history) >= 2
    assert m.psf is not None and m.nimage is not None and "NO_DATA" in m.mask_planes
    with pytest.raises(ValueError, match="give a warp, an observation"):
        m.template()


def test_template_of_a_warp_equals_the_cli_template(field, tmp_path):
    out, info = field
    m = mpidcr.open_model(out / "cli.h5")
    t = m.template(info["science"][0])
    assert _cli("template", out / "cli.h5", info["science"][0], "-o", tmp_path / "t.fits") == 0
    assert np.allclose(t.data, fits.getdata(tmp_path / "t.fits", "IMAGE"), rtol=0, atol=1e-5)
    assert np.allclose(t.uncertainty.array, fits.getdata(tmp_path / "t.fits", "VARIANCE"), rtol=1e-6)


def test_run_in_process_equals_the_cli_bit_for_bit(field, tmp_path):
    out, _ = field
    model = mpidcr.run(out / "f" / "manifest.toml", tmp_path / "api.h5")
    assert isinstance(model, mpidcr.Model) and _same(out / "cli.h5", tmp_path / "api.h5")


def test_solve_from_arrays_equals_the_cli(field, tmp_path):
    """From the warps' arrays with the run's angles (no files, no artifact rejection): the CLI's
    model bit for bit."""
    out, _ = field
    assert _cli("run", out / "f" / "manifest.toml", "-o", tmp_path / "plain.h5", "--set", "doRejectArtifacts=false") == 0
    m = mpidcr.open_model(tmp_path / "plain.h5")
    v = m.visits
    arrays = [fits.open(p.decode() if isinstance(p, bytes) else p) for p in v["file"]]
    # native float32 and int32, as a caller holds them (FITS's big-endian arrays were always copied)
    images = np.array([h["IMAGE"].data for h in arrays]).astype(np.float32)
    variances = np.array([h["VARIANCE"].data for h in arrays]).astype(np.float32)
    masks = np.array([h["MASK"].data for h in arrays]).astype(np.int32)
    given = (images.copy(), variances.copy(), masks.copy())
    result = mpidcr.solve(images, variances, masks=masks, airmass=list(v["airmass"]),
                          parallactic_angle=list(v["parallactic_angle"]), rotation_angle=list(v["rotation_angle"]),
                          effective_wavelength=m.config.effectiveWavelength, bandwidth=m.config.bandwidth,
                          pixel_scale=m.pixel_scale, config={"doRejectArtifacts": False})  # fmt: skip
    assert np.array_equal(result.planes.astype(np.float32), m.planes)
    assert result.iterations == int(m.attrs["iterations"])
    # the caller's arrays come back as they went in (the solver sets bad pixels to 0, scales the
    # variances and marks the masks: in copies)
    for before, after in zip(given, (images, variances, masks), strict=True):
        assert np.array_equal(before, after, equal_nan=True)
    # bad shapes and lengths: one line saying which
    common = {"airmass": list(v["airmass"]), "parallactic_angle": list(v["parallactic_angle"]),
              "effective_wavelength": m.config.effectiveWavelength, "bandwidth": m.config.bandwidth,
              "pixel_scale": m.pixel_scale}  # fmt: skip
    with pytest.raises(InputError, match=r"images must be \(V, ny, nx\), not of shape"):
        mpidcr.solve(images[0], variances[0], **common)
    with pytest.raises(InputError, match=r"airmass has 2 values for \d+ visits"):
        mpidcr.solve(images, variances, **{**common, "airmass": [1.0, 1.1]})
    with pytest.raises(InputError, match="at least 2 visits are needed, not 1"):
        mpidcr.solve(images[:1], variances[:1], **{**common, "airmass": [1.0], "parallactic_angle": [0.0]})


@pytest.mark.mpi
@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec on PATH")
def test_run_on_the_callers_communicator(field, tmp_path):
    out, _ = field
    script = Path(__file__).parent / "mpi_scripts" / "api_run.py"
    proc = subprocess.run([MPIEXEC, "-n", "2", sys.executable, str(script), str(out / "f" / "manifest.toml"),
                           str(tmp_path / "two.h5")], capture_output=True, text=True, timeout=240)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    with h5py.File(tmp_path / "two.h5") as f:
        assert f.attrs["num_ranks"] == 2
    assert _same(out / "cli.h5", tmp_path / "two.h5")


def test_every_public_name_is_documented():
    for name in mpidcr.__all__:
        obj = getattr(mpidcr, name)
        if name == "__version__":
            continue
        assert inspect.getdoc(obj), name
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if not attr.startswith("_") and (inspect.isfunction(member) or isinstance(member, property)):
                    assert inspect.getdoc(member), f"{name}.{attr}"
