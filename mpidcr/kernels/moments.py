"""Sums over selected pixels of an image, in numba, for the patch-wide noise estimates.

The solver needs standard deviations over background pixels (merged over tiles by
:mod:`mpidcr.reduction`): the count and sum of the selected values, then the sum of squared
deviations about the patch-wide mean.  numpy would first copy the selection out (``a[mask]``) in
float64; these kernels read the image once per sum.  A pixel is selected where ``select`` is set,
its value is finite and within ``[lo, hi]`` (the clipping window).  Sums are float64.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numpy.typing import NDArray


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc", "nsz", "contract"})
def _sums(values, select, masks, excluded, lo, hi, center, y0, y1, x0, x1):  # pragma: no cover - compiled
    """(count, Σ v, Σ (v − center)²) over the selected pixels.  The tests are combined with ``&``
    (``and`` would branch, and random masks defeat branch prediction: 5× slower) and the sums are
    reassociated (fastmath without 'nnan'/'ninf', so the finiteness test stays exact), so the loop
    vectorises; only the rounding of the float64 sums depends on that."""
    n = 0
    s = 0.0
    m2 = 0.0
    for y in range(y0, y1):
        # [y, x0:x1] of a C-contiguous image is typed contiguous (a row of a strided view is not,
        # and would not vectorise): so the kernel takes whole images and the box
        a, sel, msk = values[y, x0:x1], select[y, x0:x1], masks[y, x0:x1]
        for x in range(x1 - x0):
            v = np.float64(a[x])
            ok = (sel[x] != 0) & ((msk[x] & excluded) == 0) & math.isfinite(v) & (v >= lo) & (v <= hi)
            d = v - center if ok else 0.0
            n += 1 if ok else 0
            s += v if ok else 0.0
            m2 += d * d
    return n, s, m2


def selected_sums(values: NDArray, select: NDArray[np.bool_], lo: float = -np.inf, hi: float = np.inf,
                  center: float = 0.0, masks: NDArray | None = None,
                  excluded: int = 0, region: tuple[slice, slice] | None = None) -> tuple[int, float, float]:  # fmt: skip
    """(count, Σv, Σ(v − center)²) over pixels where ``select`` is set, ``masks`` (if given) has none
    of the ``excluded`` bits, and v is finite and in [lo, hi].

    ``region``: (y slice, x slice) of the images to use (default all); the images themselves
    should be whole C-contiguous arrays, not views of the region.
    """
    if masks is None:  # any integer image with no excluded bits: the selection itself
        masks, excluded = select.view(np.uint8), 0
    ny, nx = values.shape
    ys, xs = region if region is not None else (slice(0, ny), slice(0, nx))
    y0, y1, _ = ys.indices(ny)
    x0, x1, _ = xs.indices(nx)
    return _sums(values, select, masks, int(excluded), float(lo), float(hi), float(center), y0, y1, x0, x1)
