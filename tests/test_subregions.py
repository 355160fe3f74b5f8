"""The subregion solve (lsstCompat.subregions): its blocks, their ranks, what it refuses, SIGTERM.
Its numbers against the LSST task are tests/test_lsst_parity.py's."""

import contextlib
import io

import h5py
import numpy as np
import pytest

import mpidcr.subregions as subregions
from mpidcr.cli import main
from mpidcr.preemption import STOP
from mpidcr.sim.simulate import simulate
from mpidcr.tiling import Box, Plan


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    out = tmp_path_factory.mktemp("subregions")
    simulate(out, size=(70, 90), num_visits=4, num_science=0, seed=9, engine="numpy")
    return out


def _cli(*args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["-q", *map(str, args)])
    return code, err.getvalue().strip().splitlines()


def test_blocks_follow_the_tasks_order_and_sizes():
    """subregionSize is (width, height); rows of blocks outer; the last row and column are cut."""
    boxes = subregions.subregion_boxes((70, 90), (40, 30))
    assert boxes[0] == Box(0, 30, 0, 40) and boxes[1] == Box(0, 30, 40, 80)
    assert boxes[2] == Box(0, 30, 80, 90) and boxes[3] == Box(30, 60, 0, 40) and boxes[-1] == Box(60, 70, 80, 90)
    covered = np.zeros((70, 90), int)
    for b in boxes:
        covered[b.slices()] += 1
    assert np.all(covered == 1) and len(boxes) == 9


def test_a_small_block_takes_fewer_ranks():
    n, dims = subregions.block_ranks(4, (164, 164), 37)
    assert n == 4 and dims == (2, 2)
    Plan((164, 164), dims, 37).validate()
    n, dims = subregions.block_ranks(4, (100, 164), 37)  # 2 tiles fit along x only
    assert n == 2 and dims == (1, 2)
    assert subregions.block_ranks(4, (40, 40), 37) == (1, (1, 1))


def test_subregion_model_differs_from_the_global_fit_only_near_block_edges(field, tmp_path):
    """Blocks are solved separately: the model depends on subregionSize, and one block as large as
    the patch is the whole-patch solve with the LSST behaviours."""
    one, four, whole = tmp_path / "one.h5", tmp_path / "four.h5", tmp_path / "whole.h5"
    common = ["--profile", "lsst", "--set", "lsstCompat.rotationDirection=false"]
    assert _cli("run", field / "manifest.toml", "-o", one, *common)[0] == 0
    assert _cli("run", field / "manifest.toml", "-o", four, *common, "--set", "subregionSize=[45, 35]")[0] == 0
    assert _cli("run", field / "manifest.toml", "-o", whole, *common, "--set", "lsstCompat.subregions=false")[0] == 0
    with h5py.File(one) as a, h5py.File(four) as b, h5py.File(whole) as c:
        assert len(a["subregions"]) == 1 and len(b["subregions"]) == 4 and "subregions" not in c
        assert np.allclose(a["model"][...], c["model"][...], rtol=1e-5, atol=1e-4)
        assert not np.allclose(a["model"][...], b["model"][...], rtol=1e-3, atol=1e-2)
        table = b["subregions"][...]
        assert [tuple(int(r[k]) for k in ("y0", "y1", "x0", "x1")) for r in table] == [
            (0, 35, 0, 45), (0, 35, 45, 90), (35, 70, 0, 45), (35, 70, 45, 90)]  # fmt: skip
        rows = b["convergence"][...]
        assert len(rows) == sum(int(r["rows"]) for r in table)
        assert b.attrs["iterations"] == sum(int(r["iterations"]) for r in table)
        assert np.isfinite(b.attrs["final_metric"]) and np.isfinite(b.attrs["initial_metric"])


def test_checkpoints_are_refused_in_one_line(field, tmp_path):
    code, err = _cli("run", field / "manifest.toml", "-o", tmp_path / "m.h5", "--profile", "lsst",
                     "--checkpoint-every", "2")  # fmt: skip
    assert code == 2 and len(err) == 1 and "keeps no checkpoints" in err[0]
    assert not (tmp_path / "m.h5").exists()


def test_sigterm_between_blocks_stops_without_output(field, tmp_path, monkeypatch):
    """A SIGTERM during the subregion solve: exit 75 on the next update, no output, no checkpoint."""
    real = subregions.solve_block
    calls = []

    def signalled(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            STOP.requested = True  # as the handler does when the signal arrives
        return real(*args, **kwargs)

    monkeypatch.setattr(subregions, "solve_block", signalled)
    out = tmp_path / "m.h5"
    code, err = _cli("run", field / "manifest.toml", "-o", out, "--profile", "lsst", "--set", "subregionSize=[45, 35]")
    assert code == 75 and "SIGTERM" in err[-1] and "no checkpoint" in err[-1]
    assert not out.exists() and not (tmp_path / "m.h5.ckpt").exists()
    assert len(calls) == 2  # it stopped in the second block
