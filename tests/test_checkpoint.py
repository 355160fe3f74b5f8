"""Checkpoint/restart: SIGTERM mid-run, resume, and the same model as an uninterrupted run."""

import os
import shutil
import signal
import subprocess
import sys

import h5py
import numpy as np
import pytest
from astropy.io import fits

from mpidcr.sim.simulate import simulate

# enough iterations that a SIGTERM at the second is always seen before the end
ITERATIONS = 16
FIXED = ["--set", "useConvergence=false", "--set", f"maxNumIter={ITERATIONS}", "--set", "regularizeModelFrequency=0"]


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt")
    simulate(out, size=128, num_visits=8, num_science=0, seed=21)
    return out


@pytest.fixture(scope="module")
def seeing_field(tmp_path_factory):
    """Visits whose headers give different seeing (Kolmogorov, 0.6-1.1 arcsec): the PSF-aware model,
    with its wing, by default."""
    from astropy.io import fits

    out = tmp_path_factory.mktemp("ckpt_seeing")
    simulate(out, size=128, num_visits=8, num_science=0, seed=22)
    for path, fwhm in zip(sorted((out / "warps").glob("*.fits")), np.linspace(0.6, 1.1, 8), strict=True):
        with fits.open(path) as hdul:
            hdus = [hdul[name].copy() for name in ("PRIMARY", "IMAGE", "MASK", "VARIANCE")]
        hdus[0].header["PSF-FWHM"] = float(fwhm)
        fits.HDUList(hdus).writeto(path, overwrite=True)
    return out


def _cmd(n):
    if n == 1:
        return [sys.executable, "-m", "mpidcr"]
    return [shutil.which("mpiexec"), "-n", str(n), sys.executable, "-m", "mpidcr"]


def _run_and_term(cmd, after="iteration 2/"):
    """Start ``cmd``, send SIGTERM once its log shows ``after``; return (exit code, stderr)."""
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if after in line:
            proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=120), "".join(lines)


def _run(*args):
    """``mpidcr -q ARGS`` in this process; its exit code."""
    from mpidcr.cli import main

    return main(["-q", *map(str, args)])


def _model(path):
    with h5py.File(path) as f:
        return f["model"][...], int(f.attrs["iterations"]), f["convergence"]["metric"][...]


@pytest.mark.parametrize(("ranks", "kind"), [(1, "constant"), pytest.param(2, "constant", marks=pytest.mark.mpi),
                                             (1, "psf-aware")])  # fmt: skip
def test_sigterm_then_resume_equals_uninterrupted(field, seeing_field, ranks, kind, tmp_path):
    if ranks > 1 and shutil.which("mpiexec") is None:
        pytest.skip("no mpiexec")
    manifest = (field if kind == "constant" else seeing_field) / "manifest.toml"
    full = tmp_path / "full.h5"
    assert _run("run", manifest, "-o", full, *FIXED) == 0
    out = tmp_path / "cut.h5"
    code, log = _run_and_term([*_cmd(ranks), "run", str(manifest), "-o", str(out), *FIXED])
    if ranks == 1:
        assert code == 75  # mpiexec (hydra) reports 0 after forwarding a signal; srun passes 75 on
    assert "SIGTERM received" in log and "continue with --resume" in log
    ckpt = tmp_path / "cut.h5.ckpt"
    assert ckpt.exists() and not out.exists()
    with h5py.File(ckpt) as f:
        stopped_at = int(f.attrs["iteration"])
    assert 2 <= stopped_at < ITERATIONS
    if ranks == 1:
        assert _run("run", manifest, "-o", out, "--resume", ckpt, *FIXED) == 0
    else:
        proc = subprocess.run([*_cmd(ranks), "-q", "run", str(manifest), "-o", str(out), "--resume", str(ckpt), *FIXED],
                              capture_output=True, text=True)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
    a, na, ca = _model(full)
    b, nb, cb = _model(out)
    with h5py.File(full) as f:
        assert bool(f.attrs["psf_aware"]) == (kind == "psf-aware")
    assert na == nb == ITERATIONS
    assert np.max(np.abs(a - b)) <= 1e-6 * np.max(np.abs(a))
    assert np.allclose(ca, cb, rtol=1e-10)


def _cli(capsys, *args):
    code = _run(*args)
    return code, capsys.readouterr().err.strip()


def test_periodic_checkpoints_and_mismatched_resume(field, tmp_path, capsys):
    manifest = field / "manifest.toml"
    out = tmp_path / "m.h5"
    ck = tmp_path / "every2.ckpt"
    code, err = _cli(capsys, "run", manifest, "-o", out, "--checkpoint-every", "2", "--checkpoint", ck, *FIXED)
    assert code == 0, err
    with h5py.File(ck) as f:
        assert int(f.attrs["iteration"]) == ITERATIONS and f.attrs["complete"]
    # another configuration
    code, err = _cli(capsys, "run", manifest, "-o", tmp_path / "x.h5", "--resume", ck, *FIXED, "--set",
                     "accelerateModel=2")  # fmt: skip
    assert code == 2
    assert err.endswith("checkpoint was made with a different configuration; resume with the same one")
    # other inputs: one pixel of a warp changed, its size and modification time kept
    copy = tmp_path / "field"
    shutil.copytree(field, copy)
    warp = sorted((copy / "warps").glob("*.fits"))[0]
    stat = warp.stat()
    with fits.open(warp, mode="update") as hdul:
        hdul["IMAGE"].data[5, 5] += 1.0
    os.utime(warp, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert warp.stat().st_size == stat.st_size
    code, err = _cli(capsys, "run", copy / "manifest.toml", "-o", tmp_path / "y.h5", "--resume", ck, *FIXED)
    assert code == 2 and "different input files" in err
    assert not (tmp_path / "x.h5").exists() and not (tmp_path / "y.h5").exists()
