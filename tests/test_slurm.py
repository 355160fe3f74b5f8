"""The jobs/ templates under a real Slurm (started by `make test-slurm`); skipped when none runs."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from mpidcr.sim.simulate import simulate

ROOT = Path(__file__).resolve().parent.parent
JOBS = ROOT / "jobs"


def _slurm_up() -> bool:
    if shutil.which("sbatch") is None:
        return False
    proc = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20)
    return proc.returncode == 0 and any(s.startswith(("idle", "mix", "alloc")) for s in proc.stdout.split())


pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(not _slurm_up(), reason="no running Slurm (run `make test-slurm` as root)"),
]
MPIDCR = f"{sys.executable} -m mpidcr"
SETTINGS = "useConvergence=false maxNumIter=5 regularizeModelFrequency=0"
FIXED = [a for s in SETTINGS.split() for a in ("--set", s)]


def sbatch(script, env, tmp, *extra):
    env = {**os.environ, **env, "MPIDCR": MPIDCR, "SETTINGS": SETTINGS}
    proc = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--wait",
            "-O",
            "--ntasks=2",
            f"--chdir={tmp}",
            f"--output={tmp}/slurm-%j.out",
            *extra,
            str(JOBS / script),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    logs = "\n".join(p.read_text() for p in Path(tmp).glob("slurm-*.out"))
    assert proc.returncode == 0, proc.stderr + logs
    return proc.stdout.strip(), logs


def direct(manifest, out, *extra):
    cmd = [
        shutil.which("mpiexec"),
        "-n",
        "2",
        sys.executable,
        "-m",
        "mpidcr",
        "-q",
        "run",
        str(manifest),
        "-o",
        str(out),
        *FIXED,
        *extra,
    ]
    assert subprocess.run(cmd, capture_output=True, text=True).returncode == 0
    with h5py.File(out) as f:
        return f["model"][...], int(f.attrs["iterations"])


def same(path, ref):
    with h5py.File(path) as f:
        assert int(f.attrs["iterations"]) == ref[1]
        assert f.attrs["num_ranks"] == 2
        assert np.max(np.abs(f["model"][...] - ref[0])) <= 1e-6 * np.max(np.abs(ref[0]))


@pytest.fixture(scope="module")
def patches(tmp_path_factory):
    base = tmp_path_factory.mktemp("slurm")
    for name, seed in (("p1", 1), ("p2", 2)):
        simulate(base / name, size=128, num_visits=6, num_science=0, seed=seed)
    return base


@pytest.fixture(scope="module")
def long_patch(tmp_path_factory):
    """A patch whose 1000 iterations take seconds on two ranks (384² × 12 visits): long enough to be
    still running when a signal sent after its second iteration arrives."""
    base = tmp_path_factory.mktemp("slurm_long")
    simulate(base, size=384, num_visits=12, num_science=0, seed=3)
    return base / "manifest.toml"


def test_patch_template(patches):
    ref = direct(patches / "p1" / "manifest.toml", patches / "direct1.h5")
    out = patches / "slurm1.h5"
    _, logs = sbatch(
        "dcr_patch.sbatch", {"MANIFEST": str(patches / "p1" / "manifest.toml"), "OUTPUT": str(out)}, patches
    )
    assert "2 ranks" in logs
    same(out, ref)


def test_patch_template_with_mpiexec_launcher(patches):
    ref = direct(patches / "p1" / "manifest.toml", patches / "direct1m.h5")
    out = patches / "slurm1m.h5"
    sbatch(
        "dcr_patch.sbatch",
        {"MANIFEST": str(patches / "p1" / "manifest.toml"), "OUTPUT": str(out), "LAUNCHER": "mpiexec"},
        patches,
    )
    same(out, ref)


def test_array_template(patches):
    refs = [direct(patches / p / "manifest.toml", patches / f"direct_{p}.h5") for p in ("p1", "p2")]
    lst = patches / "patches.txt"
    lst.write_text(
        "# manifest output\n"
        + "".join(f"{patches / p / 'manifest.toml'} {patches / f'array_{p}.h5'}\n" for p in ("p1", "p2"))
    )
    sbatch("dcr_patches_array.sbatch", {"PATCH_LIST": str(lst)}, patches, "--array=1-2")
    for p, ref in zip(("p1", "p2"), refs, strict=True):
        same(patches / f"array_{p}.h5", ref)


def test_resume_template(patches):
    manifest = patches / "p2" / "manifest.toml"
    ref = direct(manifest, patches / "direct_full.h5")
    out = patches / "resumed.h5"
    # an interrupted run: SIGTERM after iteration 2 leaves OUTPUT.ckpt
    proc = subprocess.Popen(
        [sys.executable, "-m", "mpidcr", "run", str(manifest), "-o", str(out), *FIXED],
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in proc.stderr:
        if "iteration 2/" in line:
            proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 75 and Path(f"{out}.ckpt").exists() and not out.exists()
    t0 = time.time()
    sbatch("dcr_resume.sbatch", {"MANIFEST": str(manifest), "OUTPUT": str(out)}, patches)
    assert time.time() - t0 < 600
    same(out, ref)


@pytest.mark.parametrize("launcher", ["srun", "mpiexec"])
def test_preempted_job_exits_75_with_a_checkpoint(long_patch, tmp_path, launcher):
    """The time-limit signal (--signal=B:TERM, here sent by scancel --batch) ends the job with exit
    code 75 and a checkpoint, whichever launcher; a resume then completes the model."""
    out = tmp_path / "pre.h5"
    # a run long enough to be still running when the signal comes (400 iterations of a 128² patch
    # took 0.5 s, and one CI run finished before scancel reached it)
    settings = "useConvergence=false maxNumIter=1000 regularizeModelFrequency=0"
    env = {**os.environ, "MPIDCR": MPIDCR, "MANIFEST": str(long_patch), "OUTPUT": str(out),
           "LAUNCHER": launcher, "CHECKPOINT_EVERY": "0", "SETTINGS": settings}  # fmt: skip
    proc = subprocess.Popen(["sbatch", "--parsable", "--wait", "-O", "--ntasks=2", f"--chdir={tmp_path}",
                             f"--output={tmp_path}/slurm-%j.out", str(JOBS / "dcr_patch.sbatch")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
    deadline = time.time() + 300
    while time.time() < deadline:
        logs = "".join(p.read_text() for p in tmp_path.glob("slurm-*.out"))
        if "iteration 2/" in logs:
            break
        time.sleep(0.5)
    job = next(tmp_path.glob("slurm-*.out")).stem.split("-")[1]
    subprocess.run(["scancel", "--batch", "--signal=TERM", job], check=True)
    code = proc.wait(timeout=300)
    logs = "".join(p.read_text() for p in tmp_path.glob("slurm-*.out"))
    assert "1000/1000" not in logs, "the run ended before the signal reached it"
    assert code == 75, logs
    assert Path(f"{out}.ckpt").exists() and not out.exists(), logs
