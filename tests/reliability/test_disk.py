"""Full disks: found before the solve, or reported cleanly (one line, nothing left) if they fill later."""

import subprocess
import sys
import textwrap

import h5py
import pytest

from .helpers import MPIEXEC, assert_one_line_error, cli, cli_process, leftovers

FIXED = ["--set", "useConvergence=false", "--set", "maxNumIter=4"]


def test_output_on_a_full_disk_is_refused_before_the_solve(field, tiny_fs, capsys):
    fs = tiny_fs("64k")  # the 64x64 model file needs ~150 kB
    code, _, err = cli(capsys, "run", field[0] / "manifest.toml", "-o", fs / "m.h5")
    assert_one_line_error(code, err, "not enough space", str(fs))
    assert not any("iteration" in line for line in err)
    assert list(fs.iterdir()) == []


@pytest.mark.mpi
@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")
def test_full_disk_on_two_ranks_does_not_hang(field, tiny_fs):
    fs = tiny_fs("64k")
    small_halo = ["--set", "regularizeModelFrequency=0", "--set", "regularizeModelIterations=0"]
    proc = cli_process("run", field[0] / "manifest.toml", "-o", fs / "m.h5", *small_halo, ranks=2, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("mpidcr: error:")]
    assert len(lines) == 1 and "not enough space" in lines[0], proc.stderr
    assert list(fs.iterdir()) == []


def test_a_disk_that_fills_during_the_write_is_one_clean_error(tiny_fs, tmp_path):
    # the writer itself, past the space check: HDF5 sees ENOSPC (it used to segfault at exit)
    fs = tiny_fs("256k")
    script = tmp_path / "w.py"
    script.write_text(textwrap.dedent(f"""
        import numpy as np
        from mpidcr.errors import InputError
        from mpidcr.io.modelfile import DatasetSpec, write_collective
        from mpidcr.parallel.comm import SerialComm
        from mpidcr.tiling import Box
        layout = {{"a": DatasetSpec((3, 256, 256), np.dtype("f4"), (1, 64, 64))}}
        arrays = {{"a": np.ones((3, 256, 256), "f4")}}
        try:
            write_collective("{fs}/m.h5", layout, Box(0, 256, 0, 256), arrays, {{}}, {{}}, SerialComm())
        except InputError as exc:
            print("ERROR", exc)
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr  # no segfault at exit
    assert proc.stdout.startswith("ERROR") and "No space left on device" in proc.stdout
    assert "nothing was written" in proc.stdout and list(fs.iterdir()) == []


def test_periodic_checkpoints_on_a_full_disk_are_skipped(field, tiny_fs, tmp_path, capsys):
    fs = tiny_fs("16k")
    out = tmp_path / "m.h5"
    code, _, err = cli(capsys, "run", field[0] / "manifest.toml", "-o", out, "--checkpoint", fs / "c.h5",
                       "--checkpoint-every", "1", *FIXED)  # fmt: skip
    assert code == 0, err
    assert sum("the checkpoint could not be written" in line for line in err) == 4, err
    with h5py.File(out) as f:
        assert f.attrs["complete"] and int(f.attrs["iterations"]) == 4
    assert list(fs.iterdir()) == [] and leftovers(tmp_path) == []
