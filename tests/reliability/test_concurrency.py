"""Two jobs on one output path: the output is locked for a run, temporary names are unique."""

import os
import socket
import subprocess
import sys

import h5py
import numpy as np
import pytest

from mpidcr.errors import InputError
from mpidcr.io.outputs import OutputLock, exclusive_temp

from .helpers import assert_one_line_error, cli, leftovers


def test_a_locked_output_is_refused_naming_the_holder(field, tmp_path, capsys):
    out = tmp_path / "m.h5"
    with OutputLock(str(out)):
        code, _, err = cli(capsys, "run", field[0] / "manifest.toml", "-o", out)
    assert_one_line_error(code, err, "another run is writing this output", f"pid={os.getpid()}")
    assert not out.exists()


def test_the_lock_is_held_by_the_kernel_not_by_the_file(tmp_path):
    out = str(tmp_path / "m.h5")
    # a lock file left by a dead run (same host, dead pid, no record lock): taken over
    (tmp_path / "m.h5.lock").write_text(f"host={socket.gethostname()} pid=999999 since=2026-01-01T00:00:00\n")
    with OutputLock(out):
        # another process cannot take it while this one lives
        code = subprocess.run([sys.executable, "-c", f"from mpidcr.io.outputs import OutputLock; "
                               f"OutputLock({out!r}).acquire()"], capture_output=True, text=True)  # fmt: skip
        assert code.returncode != 0 and "another run is writing this output" in code.stderr
    assert not (tmp_path / "m.h5.lock").exists()


def test_a_symlink_as_lock_file_is_not_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (tmp_path / "m.h5.lock").symlink_to(victim)
    with pytest.raises(InputError, match="symbolic link"):
        OutputLock(str(tmp_path / "m.h5")).acquire()
    assert victim.read_text() == "keep"


def test_temporary_names_are_unique_and_exclusive(tmp_path):
    final = str(tmp_path / "m.h5")
    names = {exclusive_temp(final) for _ in range(20)}
    assert len(names) == 20 and all(os.path.getsize(n) == 0 for n in names)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_outputs_get_the_permissions_of_the_umask(field, tmp_path, capsys, umask):
    """A model and its FITS export are readable as any new file of the user's would be (they are
    written under a temporary name, and mkstemp alone makes 0600 files)."""
    previous = os.umask(umask)
    try:
        out = tmp_path / "m.h5"
        code, _, err = cli(capsys, "run", field[0] / "manifest.toml", "--set", "maxNumIter=3", "-o", out)
        assert code == 0, err
        code, _, err = cli(capsys, "export", out, "--fits", tmp_path / "fits")
        assert code == 0, err
    finally:
        os.umask(previous)
    written = [out, *(tmp_path / "fits").iterdir()]
    assert len(written) > 1
    for path in written:
        assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask, path


@pytest.mark.parametrize("hdf5_locking", ["TRUE", "FALSE"])
def test_two_concurrent_runs_on_one_output(field, tmp_path, hdf5_locking):
    out = tmp_path / "m.h5"
    settings = ["--set", "useConvergence=false", "--set", "maxNumIter=30"]
    base = [sys.executable, "-m", "mpidcr", "-q", "run", str(field[0] / "manifest.toml"), *settings, "-o"]
    cmd = [*base, str(out)]
    env = {**os.environ, "HDF5_USE_FILE_LOCKING": hdf5_locking}
    procs = [subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    # (generous: on a fresh machine both runs may first compile the numba kernels, at once)
    results = [(p.wait(timeout=400), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    # one finished the model; the other either was refused (lock) or found the output existing
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert "another run is writing this output" in refused or "output file exists" in refused
    solo = tmp_path / "solo.h5"
    subprocess.run([*base, str(solo)], check=True, env=env, capture_output=True)
    with h5py.File(out) as a, h5py.File(solo) as b:
        assert a.attrs["complete"] and np.array_equal(a["model"][...], b["model"][...])
    assert leftovers(tmp_path) == []
