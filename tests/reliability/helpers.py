"""Helpers of the reliability suite: the CLI in-process and as a process, one-line error checks,
warps edited on copies."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from astropy.io import fits

from mpidcr.cli import main

MPIEXEC = shutil.which("mpiexec")

def cli(capsys, *args):
    """``mpidcr -q ARGS`` in this process → (exit code, stdout, stderr lines)."""
    capsys.readouterr()
    code = main(["-q", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, [line for line in err.splitlines() if line.strip()]


def cli_process(*args, timeout=120, ranks=1, env=None):
    """``mpidcr -q ARGS`` as a process (under mpiexec for ranks > 1) → CompletedProcess."""
    cmd = [sys.executable, "-m", "mpidcr", "-q", *map(str, args)]
    if ranks > 1:
        cmd = [MPIEXEC, "-n", str(ranks), *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})  # fmt: skip


def assert_one_line_error(code, err, *fragments):
    """Exit 2 and exactly one ``mpidcr: error:`` line holding every fragment; no traceback."""
    assert code == 2, err
    assert not any("Traceback" in line for line in err), err
    errors = [line for line in err if line.startswith("mpidcr: error:")]
    assert len(errors) == 1, err
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def edit_warp(path, header=None, data=None):
    """Edit a warp in place: ``header(primary_header)``, ``data(hdul)``."""
    with fits.open(path, mode="update") as hdul:
        if header:
            header(hdul[0].header)
        if data:
            data(hdul)


def warps_of(directory):
    return sorted((Path(directory) / "warps").glob("*.fits"))


def leftovers(directory):
    """Temporary, lock and reservation files left in ``directory``."""
    return [p.name for p in Path(directory).iterdir() if p.name.endswith((".tmp", ".lock")) or ".mpidcr-reserve" in p.name]
