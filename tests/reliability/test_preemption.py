"""Pre-emption: SIGTERM at any moment gives exit 75 on every rank (a checkpoint once there is an
iteration), never a success without a model; a resume is exact, even from a moved directory, and
a damaged checkpoint is refused."""

import os
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from mpidcr.sim.simulate import simulate

from .helpers import MPIEXEC, assert_one_line_error, cli

# long enough to be interrupted: 64 iterations of a 160x160 field (~0.02 s each)
LONG = ["--set", "useConvergence=false", "--set", "maxNumIter=64", "--set", "regularizeModelFrequency=0"]


@pytest.fixture(scope="module")
def field160(tmp_path_factory):
    out = tmp_path_factory.mktemp("field160")
    simulate(out, size=160, num_visits=6, num_science=0, seed=8)
    return out


def _interrupt(cmd, trigger, signals=1, target=None, timeout=120):
    """Start ``cmd``; when a stderr line contains ``trigger``, send SIGTERM ``signals`` times to the
    process (or to ``target()``'s pid); return (exit code, stderr)."""
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines, sent = [], False
    deadline = time.monotonic() + timeout
    for line in proc.stderr:
        lines.append(line)
        if not sent and trigger in line:
            pid = target() if target else proc.pid
            for _ in range(signals):
                os.kill(pid, signal.SIGTERM)
                time.sleep(0.05)
            sent = True
        if time.monotonic() > deadline:
            proc.kill()
    return proc.wait(timeout=timeout), "".join(lines)


def _run_cmd(ranks, *args):
    base = [sys.executable, "-m", "mpidcr", "run", *map(str, args)]
    if ranks == 1:
        return base
    # each rank under a shell that reports its exit code (the shell ignores SIGTERM itself)
    script = 'trap "" TERM; "$@"; echo "rank exit $?" >&2'
    return [MPIEXEC, "-n", str(ranks), "sh", "-c", script, "sh", *base]


@pytest.mark.parametrize(
    "trigger, expect",
    [
        # a signal during the kernel compilation or the read is seen at the next phase boundary
        ("visits, patch", "nothing to checkpoint yet; rerun the same command"),
        ("kernels ready", "SIGTERM while artifacts were sought: nothing to checkpoint yet"),
        ("reading 6 warp windows", "SIGTERM while the warps were read: nothing to checkpoint yet"),
        ("iteration 2/", "continue with --resume"),
    ],
    ids=["decompose", "reject", "read", "solve"],
)
def test_sigterm_in_every_phase_of_one_rank(field160, tmp_path, trigger, expect):
    out = tmp_path / "m.h5"
    code, err = _interrupt(_run_cmd(1, field160 / "manifest.toml", "-o", out, *LONG), trigger)
    assert code == 75, err
    assert expect in err.strip().splitlines()[-1]
    assert not out.exists() and (f"{out}.ckpt" if "resume" in expect else True)
    assert (tmp_path / "m.h5.ckpt").exists() == ("resume" in expect)
    assert not list(tmp_path.glob(".*tmp")) and not (tmp_path / "m.h5.lock").exists()


@pytest.mark.mpi
@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")
@pytest.mark.parametrize("signals", [1, 2])
def test_sigterm_to_mpiexec_stops_every_rank_with_75(field160, tmp_path, signals):
    out = tmp_path / "m.h5"
    code, err = _interrupt(_run_cmd(2, field160 / "manifest.toml", "-o", out, *LONG), "iteration 2/", signals)
    # every rank exits 75 with a checkpoint; MPICH's mpiexec itself reports 0 or 75 after forwarding a
    # signal (measured: 0 in most tries), which is why jobs/ templates trap the signal themselves
    assert err.count("rank exit 75") == 2, err
    assert code in (0, 75) and not out.exists()
    with h5py.File(f"{out}.ckpt") as f:
        assert f.attrs["complete"] and int(f.attrs["iteration"]) >= 2


@pytest.mark.mpi
@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")
def test_sigterm_to_one_rank_stops_all(field160, tmp_path):
    out = tmp_path / "m.h5"
    pids = tmp_path / "pids"
    pids.mkdir()
    script = f'trap "" TERM; "$@" & echo $! > {pids}/$PMI_RANK; wait $!; echo "rank exit $?" >&2'
    cmd = [MPIEXEC, "-n", "2", "sh", "-c", script, "sh", sys.executable, "-m", "mpidcr", "run",
           str(field160 / "manifest.toml"), "-o", str(out), *LONG]  # fmt: skip
    code, err = _interrupt(cmd, "iteration 2/", target=lambda: int((pids / "1").read_text()))
    assert code in (0, 75)
    assert err.count("rank exit 75") == 2, err
    assert (tmp_path / "m.h5.ckpt").exists() and not out.exists()


def test_sigterm_during_the_final_write_finishes_it(field, tmp_path, capsys, monkeypatch):
    from mpidcr import driver
    from mpidcr.preemption import STOP

    write = driver.write_output

    def signalled_write(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # arrives while the model is being written
        return write(*args, **kwargs)

    monkeypatch.setattr(driver, "write_output", signalled_write)
    code, _, err = cli(capsys, "run", field[0] / "manifest.toml", "-o", tmp_path / "m.h5")
    assert code == 0, err
    assert any("the model was written and is complete" in line for line in err)
    with h5py.File(tmp_path / "m.h5") as f:
        assert f.attrs["complete"]
    assert not STOP.requested  # the handler is removed after the command


def test_sigterm_with_no_room_for_the_checkpoint(field160, tiny_fs, tmp_path):
    fs = tiny_fs("16k")
    cmd = _run_cmd(1, field160 / "manifest.toml", "-o", tmp_path / "m.h5", "--checkpoint", fs / "c.h5", *LONG)
    code, err = _interrupt(cmd, "iteration 2/")
    assert code == 75
    assert "the checkpoint could not be written" in err and "rerun from the start" in err.strip().splitlines()[-1]


def _model(path):
    with h5py.File(path) as f:
        return f["model"][...], f["convergence"]["metric"][...]


def test_resume_from_a_moved_directory_is_exact(field160, tmp_path):
    run_dir = tmp_path / "a"
    shutil.copytree(field160, run_dir)
    full = tmp_path / "full.h5"
    fixed = [*LONG[:2], "--set", "maxNumIter=12", *LONG[4:]]
    subprocess.run(_run_cmd(1, run_dir / "manifest.toml", "-o", full, *fixed), check=True, capture_output=True)
    out = run_dir / "m.h5"
    code, _ = _interrupt(_run_cmd(1, run_dir / "manifest.toml", "-o", out, *fixed), "iteration 3/")
    assert code == 75
    moved = tmp_path / "b"
    run_dir.rename(moved)  # the whole run directory, checkpoint included, moves elsewhere
    proc = subprocess.run(_run_cmd(1, moved / "manifest.toml", "-o", moved / "m.h5", "--resume",
                                   moved / "m.h5.ckpt", *fixed), capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (a, ca), (b, cb) = _model(full), _model(moved / "m.h5")
    assert np.array_equal(a, b) and np.array_equal(ca, cb)


def test_a_damaged_checkpoint_is_refused(field, tmp_path, capsys):
    out = tmp_path / "m.h5"
    fixed = ["--set", "useConvergence=false", "--set", "maxNumIter=3"]
    assert cli(capsys, "run", field[0] / "manifest.toml", "-o", out, "--checkpoint-every", "2", *fixed)[0] == 0
    ckpt = tmp_path / "m.h5.ckpt"
    size = ckpt.stat().st_size
    with open(ckpt, "r+b") as fh:  # 8 kB of the model planes overwritten
        with h5py.File(ckpt) as f:
            offset = f["model_raw"].id.get_chunk_info(0).byte_offset
        fh.seek(offset)
        fh.write(os.urandom(8192))
    assert ckpt.stat().st_size == size
    code, _, err = cli(capsys, "run", field[0] / "manifest.toml", "-o", tmp_path / "r.h5", "--resume", ckpt, *fixed)
    assert_one_line_error(code, err, str(ckpt), "checkpoint is damaged")
