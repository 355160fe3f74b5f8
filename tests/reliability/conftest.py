"""Fixtures of the reliability suite: a small field, private copies of it, small tmpfs mounts."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from mpidcr.sim.simulate import simulate


@pytest.fixture(scope="session")
def field(tmp_path_factory):
    """A 64x64 field of 4 visits (numpy engine): runs in well under a second."""
    out = tmp_path_factory.mktemp("rel_field")
    info = simulate(out, size=64, num_visits=4, num_science=0, seed=3)
    return out, info


@pytest.fixture
def field_copy(field, tmp_path):
    """A private copy of the field (warps may be edited)."""
    src, _ = field
    dst = tmp_path / "field"
    shutil.copytree(src, dst)
    return dst


@pytest.fixture
def tiny_fs():
    """A factory of small tmpfs mounts (root only): ``tiny_fs(bytes) -> Path``; unmounted after."""
    mounts = []

    def make(size):
        path = Path(tempfile.mkdtemp(prefix="mpidcr-tmpfs-"))
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", f"mpidcr-{uuid.uuid4().hex[:6]}",
                               str(path)], capture_output=True, text=True)  # fmt: skip
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()}); needs root")
        mounts.append(path)
        return path

    yield make
    for path in mounts:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
        shutil.rmtree(path, ignore_errors=True)
