"""Per-pixel order statistics over a stack of images (the visit axis), in numba.

numpy's ``nanpercentile`` over the first axis of a (V, ny, nx) stack runs a
Python-level loop per pixel; this kernel sorts the ≤ V good values of each
pixel in place instead.  Quantiles use numpy's default 'linear' rule.
"""

from __future__ import annotations

import numba
import numpy as np
from numpy.typing import NDArray


@numba.njit(cache=True, nogil=True)
def _stack_quantiles(stack, use, qs, out):  # pragma: no cover - compiled
    nv, ny, nx = stack.shape
    nq = qs.shape[0]
    buf = np.empty(nv, dtype=np.float64)
    for y in range(ny):
        for x in range(nx):
            n = 0
            for v in range(nv):
                if use[v, y, x]:
                    buf[n] = stack[v, y, x]
                    n += 1
            if n == 0:
                for i in range(nq):
                    out[i, y, x] = np.nan
                continue
            s = np.sort(buf[:n])
            for i in range(nq):
                pos = qs[i] * (n - 1)
                lo = int(np.floor(pos))
                hi = min(lo + 1, n - 1)
                frac = pos - lo
                out[i, y, x] = s[lo] + frac * (s[hi] - s[lo])


def stack_quantiles(stack: NDArray, use: NDArray[np.bool_], quantiles: list[float]) -> NDArray[np.float64]:
    """Quantiles (0–1) over axis 0 of ``stack`` (V, ny, nx) using only ``use`` values; NaN where none.

    Returns (len(quantiles), ny, nx), equal to ``np.nanpercentile(np.where(use, stack, nan), 100·q, axis=0)``.
    """
    qs = np.asarray(quantiles, dtype=np.float64)
    out = np.empty((qs.size, *stack.shape[1:]), dtype=np.float64)
    _stack_quantiles(np.ascontiguousarray(stack), np.ascontiguousarray(use), qs, out)
    return out
