"""The tile grid chosen for a rank count and a patch shape."""

import pytest

from mpidcr.parallel.comm import MIN_ROW_TILE, choose_dims


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
