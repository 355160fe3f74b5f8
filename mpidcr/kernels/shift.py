"""Sub-pixel image shifts by spline interpolation (orders 1 and 3), in numba.

Convention (that of ``scipy.ndimage.shift(..., mode="constant", cval=0)``):
``out[y, x] = image(y − dy, x − dx)`` where the image is interpolated by a
spline of the given order; samples outside ``[0, n−1]`` along an axis are 0.
Order 3 interpolates spline *coefficients* (see :func:`prefilter`) whose
indices beyond the edges are mirrored, as scipy does.  Integer shifts are
exact translations for both orders.

A shift is separable: for a constant (dy, dx) every output row reads the same
few input rows with the same weights, so each axis is described once by a
*tap table* (source index and weight per output index and tap) and one
private kernel applies any pair of tables.  Axis order is ``(y, x)``.
"""

from __future__ import annotations

import functools

import numba
import numpy as np
from numpy.typing import NDArray

_EDGE_TOLERANCE = 1e-9  # samples this close outside an edge count as on it (float rounding of shifts)


def tap_table(n: int, shift: float, order: int) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Source indices and weights along one axis of length ``n`` for ``out[i] = in(i − shift)``.

    Returns ``(index, weight)`` of shape ``(n, order + 1)``.  Outputs whose sample
    lies outside ``[0, n−1]`` get zero weights.
    """
    if order not in (1, 3):
        raise ValueError(f"spline order {order} is not implemented (1 or 3)")
    taps = order + 1
    coord = np.arange(n, dtype=np.float64) - shift
    # snap samples within rounding of an integer, so integer shifts are exact translations
    near = np.rint(coord)
    coord = np.where(np.abs(coord - near) < _EDGE_TOLERANCE, near, coord)
    valid = (coord >= 0.0) & (coord <= n - 1.0)
    if order == 1:
        i0 = np.floor(coord)
        t = coord - i0
        first = i0.astype(np.int64)
        index = np.stack([first, first + 1], axis=1)
        weight = np.stack([1.0 - t, t], axis=1)
        index = np.clip(index, 0, n - 1)
    else:
        i0 = np.floor(coord)
        t = coord - i0
        first = i0.astype(np.int64) - 1
        index = first[:, None] + np.arange(4)[None, :]
        weight = np.stack(
            [
                (1.0 - t) ** 3 / 6.0,
                (4.0 - 6.0 * t**2 + 3.0 * t**3) / 6.0,
                (1.0 + 3.0 * t + 3.0 * t**2 - 3.0 * t**3) / 6.0,
                t**3 / 6.0,
            ],
            axis=1,
        )
        index = _mirror(index, n)
    weight = np.where(valid[:, None], weight, 0.0)
    index = np.where(valid[:, None], index, 0)
    assert index.shape == (n, taps)
    return np.ascontiguousarray(index, dtype=np.int64), np.ascontiguousarray(weight)


def _mirror(index: NDArray[np.int64], n: int) -> NDArray[np.int64]:
    """Fold indices into [0, n−1] by mirror reflection about the edge samples (scipy 'mirror')."""
    if n == 1:
        return np.zeros_like(index)
    period = 2 * (n - 1)
    m = np.mod(index, period)
    return np.where(m >= n, period - m, m)


@numba.njit(cache=True, nogil=True, fastmath=False)
def _edges(srow, ix, wx, w_a, orow, xa, xb):  # pragma: no cover - compiled
    """The columns outside [xa, xb), through the tap tables."""
    nx = orow.shape[0]
    tx = ix.shape[1]
    for x in range(0, min(xa, nx)):
        acc = 0.0
        for b in range(tx):
            acc += wx[x, b] * srow[ix[x, b]]
        orow[x] += w_a * acc
    for x in range(max(xb, 0), nx):
        acc = 0.0
        for b in range(tx):
            acc += wx[x, b] * srow[ix[x, b]]
        orow[x] += w_a * acc


@numba.njit(cache=True, nogil=True, fastmath=False)
def _accumulate_shifted(src, iy, wy, ix, wx, xa, xb, offset, scale, out):  # pragma: no cover - compiled
    """out[y, x] += scale · Σ_a Σ_b wy[y, a] wx[x, b] src[iy[y, a], ix[x, b]].

    On the interior columns [xa, xb) the x taps are ``x + offset + b`` with the
    weights of column ``xa`` (a shift is the same for every column), so each
    output row is one pass over contiguous memory that vectorises (orders 1
    and 3 unrolled); the few edge columns use the tables.
    """
    ny = out.shape[0]
    ty = iy.shape[1]
    tx = ix.shape[1]
    for y in range(ny):
        orow = out[y]
        if ty == 2:
            w0, w1 = wy[y, 0] * scale, wy[y, 1] * scale
            if w0 == 0.0 and w1 == 0.0:
                continue
            r0, r1 = src[iy[y, 0]], src[iy[y, 1]]
            if xb > xa:
                c0, c1 = wx[xa, 0], wx[xa, 1]
                a00, a01, a10, a11 = w0 * c0, w0 * c1, w1 * c0, w1 * c1
                # slices indexed from 0 let LLVM drop numba's negative-index checks and vectorise
                o = orow[xa:xb]
                p0 = r0[xa + offset : xb + offset + 1]
                p1 = r1[xa + offset : xb + offset + 1]
                for j in range(xb - xa):
                    o[j] += a00 * p0[j] + a01 * p0[j + 1] + a10 * p1[j] + a11 * p1[j + 1]
            _edges(r0, ix, wx, w0, orow, xa, xb)
            _edges(r1, ix, wx, w1, orow, xa, xb)
        else:
            w0, w1, w2, w3 = wy[y, 0] * scale, wy[y, 1] * scale, wy[y, 2] * scale, wy[y, 3] * scale
            if w0 == 0.0 and w1 == 0.0 and w2 == 0.0 and w3 == 0.0:
                continue
            r0, r1, r2, r3 = src[iy[y, 0]], src[iy[y, 1]], src[iy[y, 2]], src[iy[y, 3]]
            if xb > xa and tx == 4:
                c0, c1, c2, c3 = wx[xa, 0], wx[xa, 1], wx[xa, 2], wx[xa, 3]
                o = orow[xa:xb]
                p0 = r0[xa + offset : xb + offset + 3]
                p1 = r1[xa + offset : xb + offset + 3]
                p2 = r2[xa + offset : xb + offset + 3]
                p3 = r3[xa + offset : xb + offset + 3]
                for j in range(xb - xa):
                    v0 = c0 * p0[j] + c1 * p0[j + 1] + c2 * p0[j + 2] + c3 * p0[j + 3]
                    v1 = c0 * p1[j] + c1 * p1[j + 1] + c2 * p1[j + 2] + c3 * p1[j + 3]
                    v2 = c0 * p2[j] + c1 * p2[j + 1] + c2 * p2[j + 2] + c3 * p2[j + 3]
                    v3 = c0 * p3[j] + c1 * p3[j + 1] + c2 * p3[j + 2] + c3 * p3[j + 3]
                    o[j] += w0 * v0 + w1 * v1 + w2 * v2 + w3 * v3
            _edges(r0, ix, wx, w0, orow, xa, xb)
            _edges(r1, ix, wx, w1, orow, xa, xb)
            _edges(r2, ix, wx, w2, orow, xa, xb)
            _edges(r3, ix, wx, w3, orow, xa, xb)


def _interior(index: NDArray[np.int64], weight: NDArray[np.float64]) -> tuple[int, int, int]:
    """Longest run of columns whose taps are ``x + offset + b`` with nonzero weight: (xa, xb, offset)."""
    n, taps = index.shape
    valid = np.any(weight != 0.0, axis=1)
    if not valid.any():
        return 0, 0, 0
    # the offset from the middle valid column: near an edge the order-3 taps are mirrored
    # (index −1 → 1), so the first valid column need not follow the pattern, and taking the
    # offset there once sent whole images through the scalar edge path (10× slower)
    used = np.flatnonzero(valid)
    middle = int(used[used.size // 2])
    offset = int(index[middle, 0] - middle)
    pattern = np.arange(n)[:, None] + offset + np.arange(taps)[None, :]
    match = np.all(index == pattern, axis=1) & valid
    if not match.any():
        return 0, 0, 0
    # the matching columns form one run (shifts are constant); take its ends
    cols = np.flatnonzero(match)
    xa, xb = int(cols[0]), int(cols[-1]) + 1
    if xb - xa != cols.size:
        return 0, 0, 0
    return xa, xb, offset


def prefilter(image: NDArray, order: int) -> NDArray[np.float64]:
    """Spline coefficients for interpolation of ``order`` (identity for order 1), float64.

    Order 3 uses scipy's recursive B-spline prefilter with mirror boundaries.
    """
    if order == 1:
        return np.ascontiguousarray(image, dtype=np.float64)
    from scipy import ndimage  # (order 3 only: a run at order 1 need not import it)

    return ndimage.spline_filter(np.asarray(image, dtype=np.float64), order=order, mode="mirror", output=np.float64)


def prefilter_planes(planes: NDArray, order: int) -> NDArray[np.float64]:
    """:func:`prefilter` applied to each plane of a (K, ny, nx) stack."""
    if order == 1:
        return np.ascontiguousarray(planes, dtype=np.float64)
    return np.stack([prefilter(p, order) for p in planes])


def add_shifted(
    out: NDArray, coeffs: NDArray, shift: tuple[float, float] | NDArray, order: int, scale: float = 1.0
) -> None:
    """``out += scale · shift(image)`` where ``coeffs = prefilter(image, order)``; in place.

    out : (ny, nx) float array; coeffs : (ny, nx) float64; shift : (dy, dx) pixels.
    """
    ny, nx = out.shape
    if coeffs.shape != out.shape:
        raise ValueError(f"shape mismatch: coefficients {coeffs.shape} vs output {out.shape}")
    iy, wy = _axis_table(ny, float(shift[0]), order)[:2]
    ix, wx, xa, xb, offset = _axis_table(nx, float(shift[1]), order)
    _accumulate_shifted(coeffs, iy, wy, ix, wx, xa, xb, offset, float(scale), out)


# A run shifts by the same few values every iteration (its visits' shifts), so the tables are
# kept: building them cost more than the shift itself at order 3 (0.17 against 0.13 ms at 256²).
# At most 512, ~130 kB per 4096-pixel axis at order 3 (the arrays are never written).
@functools.lru_cache(maxsize=512)
def _axis_table(n: int, shift: float, order: int) -> tuple[NDArray[np.int64], NDArray[np.float64], int, int, int]:
    """:func:`tap_table` of one axis and its :func:`_interior` run (used for the columns only)."""
    index, weight = tap_table(n, shift, order)
    return (index, weight, *_interior(index, weight))


def shift_image(image: NDArray, shift: tuple[float, float] | NDArray, order: int = 1) -> NDArray[np.float64]:
    """Return ``image`` shifted by ``shift = (dy, dx)`` pixels (float64), zero outside."""
    out = np.zeros(np.shape(image), dtype=np.float64)
    add_shifted(out, prefilter(image, order), shift, order)
    return out


def build_template(
    coeffs: NDArray, forward_shifts: NDArray, order: int, out: NDArray | None = None
) -> NDArray[np.float64]:
    """Forward model of one visit: Σ_k mean_j shift(plane_k, forward_shifts[k, j]).

    coeffs : (K, ny, nx) prefiltered model planes; forward_shifts : (K, J, 2).
    Sub-filters whose J shifts are identical are shifted once.
    """
    num, ny, nx = coeffs.shape
    if out is None:
        out = np.zeros((ny, nx), dtype=np.float64)
    else:
        out[...] = 0.0
    for k in range(num):
        shifts = np.asarray(forward_shifts[k], dtype=np.float64)
        if np.all(shifts == shifts[0]):
            add_shifted(out, coeffs[k], shifts[0], order)
        else:
            for j in range(shifts.shape[0]):
                add_shifted(out, coeffs[k], shifts[j], order, scale=1.0 / shifts.shape[0])
    return out


def accumulate_reverse(residual: NDArray, mean_shifts: NDArray, order: int, accumulators: NDArray) -> None:
    """accumulators[k] += shift(residual, −mean_shifts[k]) for every sub-filter k; in place.

    residual : (ny, nx); mean_shifts : (K, 2); accumulators : (K, ny, nx) float64.
    """
    coeffs = prefilter(residual, order)
    for k in range(mean_shifts.shape[0]):
        add_shifted(accumulators[k], coeffs, -np.asarray(mean_shifts[k], dtype=np.float64), order)
