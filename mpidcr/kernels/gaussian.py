"""Gaussian smoothing of a 2-D image, in numba: the regularizations' filter.

Equal to ``scipy.ndimage.gaussian_filter(image, sigma, mode="reflect", truncate=4.0)`` (its twin
in the tests) to rounding, and several times faster on float32 images: for each output row the
vertical pass combines the 2r + 1 neighbouring input rows (still in cache) into a padded row
buffer with symmetric weights, and the horizontal pass runs on that buffer, so the image is read
and written once and both inner loops vectorise over x.  Rows are independent, so they run in
parallel with ``--threads``.  Axis order ``(y, x)``; arithmetic in the image's dtype.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numpy.typing import NDArray

from .threads import threadable


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


@numba.njit(cache=True, nogil=True, inline="always")
def _taps(o, w, src, lo, hi):  # pragma: no cover - compiled
    """The vertical taps: o[x] += Σ_t w[t]·(src[lo[t−1], x] + src[hi[t−1], x]) for t = 1..r, four
    at a time: each pass over ``o`` costs a load and a store, so grouping the taps turns r passes
    into ~r/4."""
    nt = lo.shape[0]
    nx = o.shape[0]
    t = 0
    while t + 4 <= nt:
        a0, b0, a1, b1 = src[lo[t]], src[hi[t]], src[lo[t + 1]], src[hi[t + 1]]
        a2, b2, a3, b3 = src[lo[t + 2]], src[hi[t + 2]], src[lo[t + 3]], src[hi[t + 3]]
        w0, w1, w2, w3 = w[t + 1], w[t + 2], w[t + 3], w[t + 4]
        for x in range(nx):
            o[x] += w0 * (a0[x] + b0[x]) + w1 * (a1[x] + b1[x]) + w2 * (a2[x] + b2[x]) + w3 * (a3[x] + b3[x])
        t += 4
    while t + 2 <= nt:
        a0, b0, a1, b1 = src[lo[t]], src[hi[t]], src[lo[t + 1]], src[hi[t + 1]]
        w0, w1 = w[t + 1], w[t + 2]
        for x in range(nx):
            o[x] += w0 * (a0[x] + b0[x]) + w1 * (a1[x] + b1[x])
        t += 2
    while t < nt:
        a0, b0 = src[lo[t]], src[hi[t]]
        w0 = w[t + 1]
        for x in range(nx):
            o[x] += w0 * (a0[x] + b0[x])
        t += 1


# what is done with each smoothed row g while it is in cache (the frequency regularization's
# per-pixel steps, which would otherwise be passes over whole images of their own)
PLAIN, ADD, RATIO, SHARPEN = 0, 1, 2, 3


@numba.njit(cache=True, nogil=True, inline="always")
def _taps_inside(o, w, src, y):  # pragma: no cover - compiled
    """The vertical taps of mode 'constant': rows outside the image are zeros, so they add nothing."""
    ny, nx = src.shape
    for t in range(1, w.shape[0]):
        for yy in (y - t, y + t):
            if 0 <= yy < ny:
                a = src[yy]
                for x in range(nx):
                    o[x] += w[t] * a[x]


@threadable(error_model="numpy")
def _gaussian(src, weights, out, block, post, value, image, constant):  # pragma: no cover - compiled
    """out[y] = post(g) for every smoothed row g of ``src``: PLAIN g; ADD g + value; RATIO
    (g + value) / image[y], 1 where not finite; SHARPEN (s + 3·(s − g))·image[y], s = src[y].
    ``constant``: zeros beyond the edges (scipy's mode 'constant'), else mode 'reflect'."""
    ny, nx = src.shape
    r = weights.shape[0] // 2
    dt = src.dtype.type
    w = np.empty(r + 1, dtype=src.dtype)
    for t in range(r + 1):
        w[t] = dt(weights[r + t])
    c = dt(value)
    three = dt(3.0)
    nblocks = (ny + block - 1) // block
    # outside prange: numba hoists allocations
    pads = np.zeros((nblocks, nx + 2 * r), dtype=src.dtype)
    rows = np.empty((nblocks, nx), dtype=src.dtype)
    lows = np.empty((nblocks, r), dtype=np.int64)
    highs = np.empty((nblocks, r), dtype=np.int64)
    for bi in numba.prange(nblocks):
        pad = pads[bi]
        row = pad[r : r + nx]
        g = rows[bi]
        lo = lows[bi]
        hi = highs[bi]
        for y in range(bi * block, min((bi + 1) * block, ny)):
            s = src[y]
            for x in range(nx):
                row[x] = w[0] * s[x]
            if constant:
                _taps_inside(row, w, src, y)
            else:
                for t in range(1, r + 1):  # the vertical taps' rows, reflected at the edges
                    lo[t - 1] = _reflect(y - t, ny)
                    hi[t - 1] = _reflect(y + t, ny)
                _taps(row, w, src, lo, hi)
            for t in range(1, r + 1):  # margins of the row: reflected, or zeros
                pad[r - t] = 0 if constant else row[_reflect(-t, nx)]
                pad[r + nx - 1 + t] = 0 if constant else row[_reflect(nx - 1 + t, nx)]
            for x in range(nx):
                g[x] = w[0] * pad[r + x]
            _taps_shifted(g, w, pad, r)
            o = out[y]
            if post == PLAIN:
                o[:] = g
            elif post == ADD:
                for x in range(nx):
                    o[x] = g[x] + c
            elif post == RATIO:
                d = image[y]
                for x in range(nx):
                    q = (g[x] + c) / d[x]
                    o[x] = q if math.isfinite(q) else 1
            else:
                f = image[y]
                for x in range(nx):
                    o[x] = (s[x] + three * (s[x] - g[x])) * f[x]


@numba.njit(cache=True, nogil=True, inline="always")
def _taps_shifted(o, w, pad, r):  # pragma: no cover - compiled
    """The horizontal taps: o[x] += Σ_t w[t]·(pad[r − t + x] + pad[r + t + x]), four at a time."""
    nx = o.shape[0]
    t = 1
    while t + 3 <= r:
        a0, b0 = pad[r - t : r - t + nx], pad[r + t : r + t + nx]
        a1, b1 = pad[r - t - 1 : r - t - 1 + nx], pad[r + t + 1 : r + t + 1 + nx]
        a2, b2 = pad[r - t - 2 : r - t - 2 + nx], pad[r + t + 2 : r + t + 2 + nx]
        a3, b3 = pad[r - t - 3 : r - t - 3 + nx], pad[r + t + 3 : r + t + 3 + nx]
        w0, w1, w2, w3 = w[t], w[t + 1], w[t + 2], w[t + 3]
        for x in range(nx):
            o[x] += w0 * (a0[x] + b0[x]) + w1 * (a1[x] + b1[x]) + w2 * (a2[x] + b2[x]) + w3 * (a3[x] + b3[x])
        t += 4
    while t + 1 <= r:
        a0, b0 = pad[r - t : r - t + nx], pad[r + t : r + t + nx]
        a1, b1 = pad[r - t - 1 : r - t - 1 + nx], pad[r + t + 1 : r + t + 1 + nx]
        w0, w1 = w[t], w[t + 1]
        for x in range(nx):
            o[x] += w0 * (a0[x] + b0[x]) + w1 * (a1[x] + b1[x])
        t += 2
    while t <= r:
        a0, b0 = pad[r - t : r - t + nx], pad[r + t : r + t + nx]
        w0 = w[t]
        for x in range(nx):
            o[x] += w0 * (a0[x] + b0[x])
        t += 1


def _smooth(image: NDArray, sigma: float, out: NDArray | None, post: int, value: float = 0.0,
            other: NDArray | None = None, block: int = 32, mode: str = "reflect",
            truncate: float = 4.0) -> NDArray:  # fmt: skip
    if mode not in ("reflect", "constant"):
        raise ValueError(f"mode must be 'reflect' or 'constant', not {mode!r}")
    src = np.ascontiguousarray(image)
    if out is None:
        out = np.empty_like(src)
    if out is src or np.shares_memory(out, src):
        raise ValueError("Gaussian smoothing cannot work in place")
    # sigma 0: a one-tap kernel, the identity (as scipy)
    weights = gaussian_weights(sigma, truncate) if sigma > 0 else np.ones(1)
    other = src if other is None else np.ascontiguousarray(other, dtype=src.dtype)
    _gaussian(src, weights, out, max(int(block), 1), post, float(value), other, mode == "constant")
    return out


def gaussian_filter(image: NDArray, sigma: float, out: NDArray | None = None, block: int = 32,
                    add: float = 0.0, mode: str = "reflect", truncate: float = 4.0) -> NDArray:  # fmt: skip
    """Gaussian smoothing with standard deviation ``sigma`` (pixels) of a 2-D image, plus ``add``;
    ``mode`` and ``truncate`` (the radius in σ) as scipy's: 'reflect' or 'constant' (zeros beyond
    the edges).

    ``out`` (same shape and dtype, not ``image`` itself) receives the result; it is returned.
    """
    return _smooth(image, sigma, out, ADD if add else PLAIN, add, block=block, mode=mode, truncate=truncate)


def gaussian_ratio(image: NDArray, sigma: float, floor: float, denominator: NDArray, out: NDArray,
                   mode: str = "reflect") -> NDArray:  # fmt: skip
    """``(G_σ(image) + floor) / denominator``, 1 where that is not finite, in one pass."""
    return _smooth(image, sigma, out, RATIO, floor, denominator, mode=mode)


def gaussian_sharpen(image: NDArray, sigma: float, scale: NDArray, out: NDArray) -> NDArray:
    """``(image + 3·(image − G_σ(image)))·scale`` in one pass (unsharp masking, then a scale)."""
    return _smooth(image, sigma, out, SHARPEN, 0.0, scale)


def correlate_separable(image: NDArray, weights: NDArray, out: NDArray | None = None) -> NDArray:
    """``image`` correlated with the symmetric 1-D kernel ``weights`` (odd length) along y, then
    along x, edges mirrored (scipy's 'reflect'): ``scipy.ndimage.correlate1d`` on both axes (its
    twin in the tests), in the image's dtype.  ``out``: not ``image``; returned."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or w.size % 2 == 0 or not np.array_equal(w, w[::-1]):
        raise ValueError("correlate_separable needs a symmetric kernel of odd length")
    src = np.ascontiguousarray(image)
    if out is None:
        out = np.empty_like(src)
    if np.shares_memory(out, src):
        raise ValueError("a separable correlation cannot work in place")
    _gaussian(src, w, out, 32, PLAIN, 0.0, src, False)
    return out


# ----------------------------------------------------------------------------- small blur steps
@threadable()
def _step(src, out, w0, w1, block):  # pragma: no cover - compiled
    """out = the 3-tap kernel (w1, w0, w1) along y, then along x, edges mirrored (scipy's 'reflect')."""
    ny, nx = src.shape
    nblocks = (ny + block - 1) // block
    rows = np.empty((nblocks, nx + 2), dtype=src.dtype)
    a, b = src.dtype.type(w0), src.dtype.type(w1)
    for bi in numba.prange(nblocks):
        pad = rows[bi]
        for y in range(bi * block, min((bi + 1) * block, ny)):
            _step_row(src, y, pad, a, b, out[y])


@numba.njit(cache=True, nogil=True, inline="always")
def _step_row(src, y, pad, a, b, o):  # pragma: no cover - compiled
    """o = row ``y`` of the 3-tap step of ``src`` (``pad``: a work row of nx + 2); o must not be a row of src."""
    ny = src.shape[0]
    step_rows(src[y - 1] if y > 0 else src[0], src[y], src[y + 1] if y < ny - 1 else src[ny - 1], pad, a, b, o)


@numba.njit(cache=True, nogil=True, inline="always")
def step_rows(up, s, down, pad, a, b, o):  # pragma: no cover - compiled
    """o = the 3-tap step (b, a, b) along y of rows (up, s, down), then along x, the row's ends
    mirrored (``pad``: a work row of nx + 2; o not one of the rows)."""
    nx = s.shape[0]
    row = pad[1 : nx + 1]
    for x in range(nx):
        row[x] = a * s[x] + b * (up[x] + down[x])
    pad[0] = pad[1]
    pad[nx + 1] = pad[nx]
    left = pad[0:nx]
    right = pad[2 : nx + 2]
    for x in range(nx):
        o[x] = a * row[x] + b * (left[x] + right[x])


@numba.njit(cache=True, nogil=True, inline="always")
def _mix_row(o, cc, wings, ww, y, m):  # pragma: no cover - compiled
    """m = cc·o + Σ_j ww[j]·wings[j, y] (the arithmetic of :func:`_mix`, on one row)."""
    for x in range(o.shape[0]):
        m[x] = cc * o[x]
    for j in range(wings.shape[0]):
        wj = o.dtype.type(ww[j])
        wing = wings[j, y]
        for x in range(o.shape[0]):
            m[x] += wj * wing[x]


@threadable()
def _step_mix(src, out, w0, w1, c, wings, ww, mixed, block):  # pragma: no cover - compiled
    """out = the step of src (as :func:`_step`), and mixed = c·out + Σ_j ww[j]·wings[j], row by row
    while the step's row is in cache (the arithmetic of :func:`_mix`)."""
    ny, nx = src.shape
    nblocks = (ny + block - 1) // block
    rows = np.empty((nblocks, nx + 2), dtype=src.dtype)
    a, b = src.dtype.type(w0), src.dtype.type(w1)
    cc = src.dtype.type(c)
    for bi in numba.prange(nblocks):
        pad = rows[bi]
        for y in range(bi * block, min((bi + 1) * block, ny)):
            o = out[y]
            _step_row(src, y, pad, a, b, o)
            _mix_row(o, cc, wings, ww, y, mixed[y])


@threadable()
def _step_gather(src, add, w0, w1, c, wing_acc, ww, out, block):  # pragma: no cover - compiled
    """wing_acc[j] += ww[j]·add for every j, then out = the step of src + c·add, row by row (``out``
    may be ``add``: each row of add is read before it is written; not ``src``)."""
    ny, nx = src.shape
    nblocks = (ny + block - 1) // block
    rows = np.empty((nblocks, nx + 2), dtype=src.dtype)
    scaled = np.empty((nblocks, nx), dtype=src.dtype)
    a, b = src.dtype.type(w0), src.dtype.type(w1)
    cc = src.dtype.type(c)
    for bi in numba.prange(nblocks):
        pad = rows[bi]
        g = scaled[bi]
        for y in range(bi * block, min((bi + 1) * block, ny)):
            d = add[y]
            for j in range(wing_acc.shape[0]):
                wj = src.dtype.type(ww[j])
                acc = wing_acc[j, y]
                for x in range(nx):
                    acc[x] += wj * d[x]
            # c·add into a private row first: out may be add, and a loop reading add while writing
            # out would run scalar (LLVM's run-time alias check fails)
            for x in range(nx):
                g[x] = cc * d[x]
            o = out[y]
            _step_row(src, y, pad, a, b, o)
            for x in range(nx):
                o[x] += g[x]


#: the largest variance (pixels²) of one blur step: (0.25, 0.5, 0.25) has 0.5 along each axis
MAX_STEP_VARIANCE = 0.5


def _step_weights(variance: float) -> tuple[float, float]:
    if not 0.0 <= variance <= MAX_STEP_VARIANCE:
        raise ValueError(f"a blur step's variance must be in [0, {MAX_STEP_VARIANCE}], not {variance}")
    return 1.0 - variance, variance / 2.0


def blur_step_mix(image: NDArray, variance: float, out: NDArray, core_weight: float, wings: NDArray,
                  weights: NDArray, mixed: NDArray, block: int = 32) -> NDArray:  # fmt: skip
    """:func:`blur_step` of ``image`` into ``out``, and in the same pass ``mixed = core_weight·out +
    Σ_j weights[j]·wings[j]`` (``wings`` (J, ny, nx)): a blur group's core plane and the plane its
    matching kernel sees, as :func:`mix_blurs` makes it.  Returns ``mixed``."""
    w0, w1 = _step_weights(variance)
    src = np.ascontiguousarray(image)
    if np.shares_memory(out, src) or np.shares_memory(mixed, src) or np.shares_memory(mixed, out):
        raise ValueError("a blur step cannot work in place")
    _step_mix(src, out, w0, w1, float(core_weight), wings, np.asarray(weights, np.float64), mixed, max(int(block), 1))
    return mixed


def blur_step_gather(image: NDArray, add: NDArray, variance: float, core_weight: float, wing_acc: NDArray,
                     weights: NDArray, out: NDArray, block: int = 32) -> NDArray:  # fmt: skip
    """The adjoint of :func:`blur_step_mix`'s chain at one group, in one pass: ``wing_acc[j] +=
    weights[j]·add`` (``wing_acc`` (J, ny, nx)), then ``out = blur_step(image) + core_weight·add``.
    ``out`` may be ``add``, not ``image``.  Returns ``out``."""
    w0, w1 = _step_weights(variance)
    src = np.ascontiguousarray(image)
    if np.shares_memory(out, src) or np.shares_memory(add, src):
        raise ValueError("a blur step cannot work in place")
    _step_gather(src, add, w0, w1, float(core_weight), wing_acc, np.asarray(weights, np.float64), out,
                 max(int(block), 1))  # fmt: skip
    return out


def blur_step(image: NDArray, variance: float, out: NDArray, block: int = 32) -> NDArray:
    """The separable 3-tap blur (v/2, 1 − v, v/2) along y and x: variance ``v`` ≤ 0.5 px² per axis
    added exactly, flux kept, its own adjoint (edges mirrored).  Variances add under composition, so
    a sequence of steps blurs by their sum.  ``out`` must not be ``image``."""
    w0, w1 = _step_weights(variance)
    src = np.ascontiguousarray(image)
    if np.shares_memory(out, src):
        raise ValueError("a blur step cannot work in place")
    _step(src, out, w0, w1, max(int(block), 1))
    return out


# ----------------------------------------------------------------------------- mixing blurs (the PSF-aware wings)
#: pixels per block of the mixing kernels: a block of every operand stays in L1/L2 between their passes
_MIX_BLOCK = 4096


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _mix(core, c, wings, w, out):  # pragma: no cover - compiled
    n = out.shape[0]
    cc = out.dtype.type(c)
    for start in range(0, n, _MIX_BLOCK):
        stop = min(start + _MIX_BLOCK, n)
        o, a = out[start:stop], core[start:stop]
        for i in range(stop - start):
            o[i] = cc * a[i]
        for j in range(wings.shape[0]):
            wj = out.dtype.type(w[j])
            b = wings[j, start:stop]
            for i in range(stop - start):
                o[i] += wj * b[i]


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _spread(group, c, w, wing_acc, total, add):  # pragma: no cover - compiled
    n = group.shape[0]
    cc = group.dtype.type(c)
    for start in range(0, n, _MIX_BLOCK):
        stop = min(start + _MIX_BLOCK, n)
        g = group[start:stop]
        for j in range(wing_acc.shape[0]):
            wj = group.dtype.type(w[j])
            acc = wing_acc[j, start:stop]
            for i in range(stop - start):
                acc[i] += wj * g[i]
        t = total[start:stop]
        if add:
            for i in range(stop - start):
                t[i] += cc * g[i]
        else:  # total may be group itself: each pixel read before it is written
            for i in range(stop - start):
                t[i] = cc * g[i]


def _flat(a: NDArray, leading: int = 0) -> NDArray:
    """A C-contiguous array as 1-D (or (leading, n)) without copying."""
    if not a.flags.c_contiguous:
        raise ValueError("the mixing kernels need C-contiguous arrays")
    return a.reshape(-1) if not leading else a.reshape(leading, -1)


def mix_blurs(core: NDArray, core_weight: float, wings: NDArray, weights: NDArray, out: NDArray) -> NDArray:
    """``out = core_weight·core + Σ_j weights[j]·wings[j]`` in one blocked pass: a group's planes
    (K, ny, nx) seen through its matching kernel, from its core blur and the wing Gaussians
    (J, K, ny, nx).  Arithmetic in ``out``'s dtype; returns ``out``."""
    _mix(_flat(core), float(core_weight), _flat(wings, wings.shape[0]), np.asarray(weights, np.float64), _flat(out))
    return out


def spread_blurs(group: NDArray, core_weight: float, weights: NDArray, wing_acc: NDArray, total: NDArray,
                 add: bool) -> NDArray:  # fmt: skip
    """The adjoint of :func:`mix_blurs` for a group's accumulators (K, ny, nx): ``wing_acc[j] +=
    weights[j]·group`` for every wing, and ``total (+)= core_weight·group`` (``add`` False: set;
    ``total`` may then be ``group`` itself).  Returns ``total``."""
    _spread(_flat(group), float(core_weight), np.asarray(weights, np.float64), _flat(wing_acc, wing_acc.shape[0]),
            _flat(total), bool(add))  # fmt: skip
    return total
