"""Gaussian smoothing of a 2-D image, in numba: the regularizations' filter.

Equal to ``scipy.ndimage.gaussian_filter(image, sigma, mode="reflect", truncate=4.0)`` (its twin
in the tests) to rounding, and several times faster on float32 images: for each output row the
vertical pass combines the 2r + 1 neighbouring input rows (still in cache) into a padded row
buffer with symmetric weights, and the horizontal pass runs on that buffer, so the image is read
and written once and both inner loops vectorise over x.  Rows are independent, so they run in
parallel with ``--threads``.  Axis order ``(y, x)``; arithmetic in the image's dtype.
"""

from __future__ import annotations

import numba
import numpy as np
from numpy.typing import NDArray


def gaussian_weights(sigma: float, truncate: float = 4.0) -> NDArray[np.float64]:
    """The normalised kernel scipy uses: radius ``int(truncate·sigma + 0.5)``, (2r + 1,)."""
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    phi = np.exp(-0.5 * (x / float(sigma)) ** 2)
    return phi / phi.sum()


@numba.njit(cache=True, nogil=True, inline="always")
def _reflect(i, n):  # pragma: no cover - compiled
    """scipy's 'reflect' (d c b a | a b c d | d c b a) index into [0, n)."""
    period = 2 * n
    m = i % period
    return period - 1 - m if m >= n else m


@numba.njit(cache=True, nogil=True, parallel=True)
def _gaussian(src, weights, out, block):  # pragma: no cover - compiled
    ny, nx = src.shape
    r = weights.shape[0] // 2
    dt = src.dtype.type
    w = np.empty(r + 1, dtype=src.dtype)
    for t in range(r + 1):
        w[t] = dt(weights[r + t])
    nblocks = (ny + block - 1) // block
    pads = np.zeros((nblocks, nx + 2 * r), dtype=src.dtype)  # outside prange: numba hoists allocations
    for bi in numba.prange(nblocks):
        pad = pads[bi]
        row = pad[r : r + nx]
        for y in range(bi * block, min((bi + 1) * block, ny)):
            c = src[y]
            for x in range(nx):
                row[x] = w[0] * c[x]
            for t in range(1, r + 1):
                a = src[_reflect(y - t, ny)]
                b = src[_reflect(y + t, ny)]
                wt = w[t]
                for x in range(nx):
                    row[x] += wt * (a[x] + b[x])
            for t in range(1, r + 1):  # reflected margins of the row
                pad[r - t] = row[_reflect(-t, nx)]
                pad[r + nx - 1 + t] = row[_reflect(nx - 1 + t, nx)]
            o = out[y]
            for x in range(nx):
                o[x] = w[0] * pad[r + x]
            for t in range(1, r + 1):
                lo = pad[r - t : r - t + nx]
                hi = pad[r + t : r + t + nx]
                wt = w[t]
                for x in range(nx):
                    o[x] += wt * (lo[x] + hi[x])


def gaussian_filter(image: NDArray, sigma: float, out: NDArray | None = None, block: int = 32) -> NDArray:
    """Gaussian smoothing with standard deviation ``sigma`` (pixels) of a 2-D image, mode 'reflect'.

    ``out`` (same shape and dtype, not ``image`` itself) receives the result; it is returned.
    """
    src = np.ascontiguousarray(image)
    if out is None:
        out = np.empty_like(src)
    if out is src or np.shares_memory(out, src):
        raise ValueError("gaussian_filter cannot work in place")
    if sigma <= 0:
        out[...] = src
        return out
    _gaussian(src, gaussian_weights(sigma), out, max(int(block), 1))
    return out
