"""The tile grid chosen for a rank count and a patch shape."""

import numpy as np
import pytest

from mpidcr.tiling import MIN_ROW_TILE, choose_dims


@pytest.mark.parametrize(
    "size, shape, dims",
    [
        (2, (2048, 4096), (2, 1)),  # whole-width tiles: contiguous reads, though x is the longer side
        (4, (2048, 4096), (4, 1)),
        (2, (4096, 2048), (2, 1)),
        (1, (100, 100), (1, 1)),
        (4, (128, 128), (2, 2)),  # too short for whole-width tiles: squarest tiles
        (64, (4000, 4000), (8, 8)),
        (3, (96, 300), (1, 3)),  # the largest smallest side
    ],
)
def test_choose_dims(size, shape, dims):
    assert choose_dims(size, shape) == dims


def test_whole_width_tiles_stop_at_the_minimum_height():
    rows = 4 * MIN_ROW_TILE
    assert choose_dims(4, (rows, 2 * rows)) == (4, 1)
    assert choose_dims(8, (rows, 2 * rows)) != (8, 1)


# -- the decomposition itself ------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(37, 29), (256, 256), (5, 300)])
@pytest.mark.parametrize("dims", [(1, 1), (2, 1), (1, 3), (3, 2), (4, 4)])
def test_inner_boxes_cover_the_patch_once(shape, dims):
    from mpidcr.tiling import Plan

    if dims[0] > shape[0] or dims[1] > shape[1]:
        pytest.skip("more tiles than pixels")
    plan = Plan(shape, dims, halo=3)
    covered = np.zeros(shape, dtype=int)
    for rank in range(plan.size):
        tile = plan.tile(rank)
        covered[tile.inner.slices()] += 1
        assert plan.rank_of(*plan.coords(rank)) == rank
        # outer = inner grown by the halo, clipped at the patch edges
        assert tile.outer == tile.inner.grow(3, tile.patch)
        assert tile.outer.y0 == max(tile.inner.y0 - 3, 0) and tile.outer.x1 == min(tile.inner.x1 + 3, shape[1])
        # inner_local slices the inner box out of an outer-box array
        local = np.arange(shape[0] * shape[1]).reshape(shape)[tile.outer.slices()]
        assert np.array_equal(local[tile.inner_local], np.arange(shape[0] * shape[1]).reshape(shape)[tile.inner.slices()])
    assert np.all(covered == 1)
    sizes = [plan.tile(r).inner.shape for r in range(plan.size)]
    assert max(s[0] for s in sizes) - min(s[0] for s in sizes) <= 1  # near-equal blocks


def test_validate_refuses_tiles_narrower_than_two_halos():
    from mpidcr.errors import DecompositionError
    from mpidcr.tiling import Plan

    Plan((100, 100), (2, 1), 25).validate()  # 50 rows per tile, halo 25: just enough
    with pytest.raises(DecompositionError, match="px along y, less than 2 x the halo of 26 px"):
        Plan((100, 100), (2, 1), 26).validate()
    Plan((100, 10), (2, 1), 25).validate()  # x is not split: its width does not matter


def test_serial_communicator_decomposes_to_identities():
    from mpidcr.halo import NoExchange
    from mpidcr.parallel.comm import SerialComm
    from mpidcr.reduction import SerialReducer
    from mpidcr.tiling import Plan

    reducer, exchanger = SerialComm().decompose(Plan((8, 8), (1, 1), 0))
    assert isinstance(reducer, SerialReducer) and isinstance(exchanger, NoExchange)
    assert list(reducer.sum([1.0, 2.5])) == [1.0, 2.5] and list(reducer.max([3.0])) == [3.0]


@pytest.mark.mpi
@pytest.mark.parametrize("ranks", [2, 3, 4])
def test_halo_exchange_and_reducers_against_a_global_array(ranks):
    """Every rank's outer window equals the global array's after the exchange (its ghost pixels
    started as NaN), for every tile grid of the rank count; sums, maxima and merged standard
    deviations equal the global ones."""
    import json
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    mpiexec = shutil.which("mpiexec")
    if mpiexec is None:
        pytest.skip("no mpiexec")
    script = Path(__file__).resolve().parent / "mpi_scripts" / "halo_and_reduce.py"
    proc = subprocess.run([mpiexec, "-n", str(ranks), sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    grids = {tuple(r["grid"]) for r in rows}
    assert grids == {(py, ranks // py) for py in range(1, ranks + 1) if ranks % py == 0}
    for r in rows:
        assert r["halo_ok"], r
        assert r["sum_err"] < 1e-12 and r["ranks"] == ranks and r["max_ok"], r
        assert r["std_err"] < 1e-12, r


@pytest.mark.parametrize("text, message", [("2x3", None), ("2X1", None), ("0x1", "at least one tile along each axis"),
                                           ("2x-1", "at least one tile"), ("2x2x2", "not of the form PYxPX"),
                                           ("abc", "not of the form PYxPX")])  # fmt: skip
def test_parse_tiles(text, message):
    from mpidcr.errors import DecompositionError
    from mpidcr.tiling import parse_tiles

    if message is None:
        py, px = parse_tiles(text)
        assert f"{py}x{px}" == text.lower()
    else:
        with pytest.raises(DecompositionError, match=message):
            parse_tiles(text)
