"""Binary opening with a diamond (a cross grown ``width`` times), in numba.

Erosion by the diamond of radius w equals w successive erosions by the 3×3 cross (the diamond
is the cross dilated by itself w − 1 times), and likewise for dilation; pixels outside the
image count as False, as in ``scipy.ndimage.binary_opening`` (its twin in the tests).
"""

from __future__ import annotations

import numba
import numpy as np
from numpy.typing import NDArray


@numba.njit(cache=True, nogil=True)
def _cross_pass(src, dst, erode):  # pragma: no cover - compiled
    ny, nx = src.shape
    for y in range(ny):
        for x in range(nx):
            c = src[y, x]
            up = src[y - 1, x] if y > 0 else False
            down = src[y + 1, x] if y < ny - 1 else False
            left = src[y, x - 1] if x > 0 else False
            right = src[y, x + 1] if x < nx - 1 else False
            if erode:
                dst[y, x] = c and up and down and left and right
            else:
                dst[y, x] = c or up or down or left or right


@numba.njit(cache=True, nogil=True)
def _iterate(selection, width, erode):  # pragma: no cover - compiled
    """``width`` cross erosions (or dilations) = one by the diamond of radius ``width``."""
    a = selection.copy()
    b = np.empty_like(a)
    for _ in range(width):
        _cross_pass(a, b, erode)
        a, b = b, a
    return a


def binary_opening_diamond(selection: NDArray[np.bool_], width: int) -> NDArray[np.bool_]:
    """Opening of a 2-D boolean image by the diamond of radius ``width`` (≥ 1)."""
    eroded = _iterate(np.ascontiguousarray(selection, dtype=np.bool_), int(width), True)
    return _iterate(eroded, int(width), False)


def binary_dilation_diamond(selection: NDArray[np.bool_], width: int) -> NDArray[np.bool_]:
    """Dilation of a 2-D boolean image by the diamond of radius ``width`` (0: unchanged)."""
    return _iterate(np.ascontiguousarray(selection, dtype=np.bool_), int(width), False)
