"""Per-pixel statistics over a stack of warps (the visit axis), in numba: the static sky model.

One pass over the ``(V, ny, nx)`` stack computes, for every pixel, the statistic of its good
inputs (weighted mean, median, or the sigma-clipped weighted mean), the variance, the count and
the propagated mask.  numpy's version of the same (``tests/reference.py``, the kernel's twin)
needs a dozen full-stack float64 temporaries and a per-pixel Python loop for the quantiles; here
the ≤ V values of a row segment's pixels are gathered into small (V, columns) buffers and sorted
by a sorting network whose comparators are vectorised over the columns.  Quantiles use numpy's
default 'linear' rule.  Rows are independent, so they run in parallel with ``--threads``.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numpy.typing import NDArray

from .threads import threadable

#: statistic codes of :func:`static_stack`
MEAN, MEDIAN, MEANCLIP = 0, 1, 2

_IQR_TO_SIGMA = 0.7413  # 1 / (2 · Φ⁻¹(0.75)) for a Gaussian


@threadable()
def _static_stack(inputs, options, outputs, chunks, width):  # pragma: no cover - compiled
    """``inputs`` = (images, variances, masks, good, weights), ``options`` = (statistic, sigma_clip,
    clip_iter, propagated bits, their thresholds, variance from inputs?, NO_DATA bit, sorting
    network), ``outputs`` = (image, variance, mask, count); rows in ``chunks`` parallel chunks,
    columns in segments of ``width``."""
    images, weights = inputs[0], inputs[4]
    nv, ny, nx = images.shape
    total_weight = max(np.sum(weights), 1e-300)
    # per-chunk scratch rows (visit, column), allocated here: numba hoists allocations out of prange
    vals = np.empty((chunks, nv, width))
    keeps = np.empty((chunks, nv, width))
    srt = np.empty((chunks, nv, width), dtype=images.dtype)  # sorting the inputs' own values is exact
    kws = np.empty((chunks, nv, width))
    accs = np.empty((chunks, 6, width))
    for c in numba.prange(chunks):
        # whole C-contiguous buffers, not [:, :m] views: numba types those as strided ('A'
        # layout), and strided inner loops do not vectorise
        scratch = (vals[c], keeps[c], srt[c], kws[c], accs[c])
        for y in range(c * ny // chunks, (c + 1) * ny // chunks):
            for x0 in range(0, nx, width):
                _segment(inputs, options, total_weight, outputs, scratch, y, x0, min(width, nx - x0))


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _segment(inputs, options, total_weight, outputs, scratch, y, x0, m):  # pragma: no cover - compiled
    """Pixels (y, x0 … x0 + m): every step is a loop over visits of loops over columns, which vectorise."""
    images, variances, masks, good, weights = inputs
    statistic, sigma_clip, clip_iter, prop_bits, prop_thresholds, from_input_variance, nodata_bit, network = options
    image, variance, mask, count = outputs
    val, keep, s, kw, acc = scratch
    sw, swx, cnt, center, sigma, tmp = acc[0], acc[1], acc[2], acc[3], acc[4], acc[5]
    _gather(images, good, weights, y, x0, m, val, keep)
    if statistic == MEDIAN or (statistic == MEANCLIP and val.shape[0] > 2):
        _robust_center(val, keep, m, network, s, cnt, center, sigma)
        if statistic == MEANCLIP:
            for _ in range(clip_iter):
                _moments(val, keep, m, weights, center, sigma, sigma_clip, kw, sw, swx, tmp)
            _final_selection(val, keep, m, center, sigma, sigma_clip)
    out = image[y, x0 : x0 + m]
    _weighted_result(val, keep, m, weights, statistic, center, sw, swx, cnt, out)
    for x in range(m):
        count[y, x0 + x] = int(cnt[x])
    _variance(val, keep, m, weights, variances, y, x0, from_input_variance, out, sw, cnt, tmp, variance[y, x0 : x0 + m])
    _mask(masks, y, x0, keep, m, weights, total_weight, prop_bits, prop_thresholds, nodata_bit, cnt, tmp,
          mask[y, x0 : x0 + m])  # fmt: skip


@numba.njit(cache=True, nogil=True, inline="always")
def _gather(images, good, weights, y, x0, m, val, keep):  # pragma: no cover - compiled
    """The segment's values (V, m) and whether each input is used (good, of a visit with weight)."""
    for v in range(val.shape[0]):
        im, gd = images[v, y, x0 : x0 + m], good[v, y, x0 : x0 + m]
        on = 1.0 if weights[v] > 0 else 0.0
        for x in range(m):
            val[v, x] = im[x]
            keep[v, x] = on * gd[x]


@numba.njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _robust_center(val, keep, m, network, s, cnt, center, sigma):  # pragma: no cover - compiled
    """Median and 0.7413·IQR of each column's used values (NaN where none): the used values are
    sorted to the column's front (unused = +inf) by a sorting network whose comparators are
    min/max of two rows, vectorised over the columns."""
    nv = val.shape[0]
    for v in range(nv):
        for x in range(m):
            s[v, x] = val[v, x] if keep[v, x] > 0 else np.inf
    for c in range(network.shape[0]):
        a, b = s[network[c, 0]], s[network[c, 1]]
        for x in range(m):
            lo = min(a[x], b[x])
            b[x] = max(a[x], b[x])
            a[x] = lo
    cnt[:] = 0.0
    for v in range(nv):
        for x in range(m):
            cnt[x] += keep[v, x]
    for x in range(m):
        n = int(cnt[x])
        if n == 0:
            center[x] = np.nan
            sigma[x] = np.nan
            continue
        center[x] = _quantile(s, x, n, 0.5)
        sigma[x] = _IQR_TO_SIGMA * (_quantile(s, x, n, 0.75) - _quantile(s, x, n, 0.25))


@numba.njit(cache=True, nogil=True, inline="always")
def _final_selection(val, keep, m, center, sigma, sigma_clip):  # pragma: no cover - compiled
    """Drop the inputs beyond ``sigma_clip``·σ of the centre (a NaN centre or σ rejects nothing, as
    in numpy); selects, not branches: data-dependent branches and stores do not vectorise."""
    for v in range(val.shape[0]):
        for x in range(m):
            keep[v, x] = 0.0 if abs(val[v, x] - center[x]) > sigma_clip * sigma[x] else keep[v, x]


@numba.njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _weighted_result(val, keep, m, weights, statistic, center, sw, swx, cnt, out):  # pragma: no cover - compiled
    """The statistic (median, or the weighted mean of the kept inputs; 0 where undefined) into
    ``out``; Σw, Σwx and the count of kept inputs into ``sw``, ``swx``, ``cnt``."""
    sw[:] = 0.0
    swx[:] = 0.0
    cnt[:] = 0.0
    for v in range(val.shape[0]):
        w = weights[v]
        for x in range(m):
            k = keep[v, x] * w
            sw[x] += k
            swx[x] += k * val[v, x]
            cnt[x] += keep[v, x]
    for x in range(m):
        r = center[x] if statistic == MEDIAN else (swx[x] / sw[x] if sw[x] > 0 else 0.0)
        out[x] = r if math.isfinite(r) else 0.0


@numba.njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _variance(val, keep, m, weights, variances, y, x0, from_input_variance, out, sw, cnt, tmp,
              var_out):  # pragma: no cover - compiled
    """Σw²σ²/(Σw)² of the kept inputs, or their weighted scatter about ``out`` over their number; inf
    where undefined."""
    tmp[:] = 0.0
    for v in range(val.shape[0]):
        w = weights[v]
        if from_input_variance:
            var = variances[v, y, x0 : x0 + m]
            for x in range(m):
                tmp[x] += keep[v, x] * w * w * var[x]
        else:
            for x in range(m):
                tmp[x] += keep[v, x] * w * (val[v, x] - out[x]) ** 2
    for x in range(m):
        q = tmp[x] / (sw[x] * sw[x]) if from_input_variance else tmp[x] / sw[x] / max(cnt[x], 1.0)
        var_out[x] = q if (sw[x] > 0) & math.isfinite(q) else np.inf


@numba.njit(cache=True, nogil=True, inline="always")
def _mask(masks, y, x0, keep, m, weights, total_weight, prop_bits, prop_thresholds, nodata_bit, cnt, tmp,
          bits):  # pragma: no cover - compiled
    """OR of the kept inputs' masks; the propagated planes whose rejected inputs hold more than their
    threshold of the pixel's weight; NO_DATA where no input is kept."""
    nv = masks.shape[0]
    bits[:] = 0
    for v in range(nv):
        mk = masks[v, y, x0 : x0 + m]
        for x in range(m):
            bits[x] |= mk[x] if keep[v, x] > 0 else 0
    if prop_bits.shape[0] > 0:
        # judged per pixel: over the weight of the inputs with data there (used, or left out
        # without NO_DATA)
        pixel_weight = np.zeros(m)
        for v in range(nv):
            mk = masks[v, y, x0 : x0 + m]
            for x in range(m):
                pixel_weight[x] += weights[v] if (keep[v, x] > 0) | ((mk[x] & nodata_bit) == 0) else 0.0
    for p in range(prop_bits.shape[0]):
        tmp[:] = 0.0
        for v in range(nv):
            mk = masks[v, y, x0 : x0 + m]
            for x in range(m):
                with_data = (keep[v, x] > 0) | ((mk[x] & nodata_bit) == 0)
                tmp[x] += weights[v] if ((mk[x] & prop_bits[p]) != 0) & (keep[v, x] == 0) & with_data else 0.0
        for x in range(m):
            bits[x] |= prop_bits[p] if tmp[x] > prop_thresholds[p] * pixel_weight[x] else 0
    for x in range(m):
        bits[x] |= nodata_bit if cnt[x] == 0 else 0


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _moments(val, keep, m, weights, center, sigma, sigma_clip, kw, sw, swx, ss):  # pragma: no cover - compiled
    """One clipping pass: the weighted mean and std of the values within sigma_clip·sigma of the
    centre (all of ``keep`` where the centre or sigma is NaN) replace ``center`` and ``sigma``;
    NaN where nothing is left.  ``kw`` (V, m) is scratch for the pass's weights."""
    nv = val.shape[0]
    sw[:m] = 0.0
    swx[:m] = 0.0
    ss[:m] = 0.0
    for v in range(nv):
        w = weights[v]
        for x in range(m):
            k = keep[v, x] * w
            if abs(val[v, x] - center[x]) > sigma_clip * sigma[x]:
                k = 0.0
            kw[v, x] = k
            sw[x] += k
            swx[x] += k * val[v, x]
    for x in range(m):
        center[x] = swx[x] / sw[x] if sw[x] > 0 else np.nan
    for v in range(nv):
        for x in range(m):
            ss[x] += kw[v, x] * (val[v, x] - center[x]) ** 2
    for x in range(m):
        sigma[x] = math.sqrt(ss[x] / sw[x]) if sw[x] > 0 else np.nan


@numba.njit(cache=True, nogil=True, inline="always")
def _quantile(s, x, n, q):  # pragma: no cover - compiled
    """Quantile ``q`` of the sorted column ``s[:n, x]`` by linear interpolation (numpy's default);
    indexed directly, as a column view per pixel would cost a reference count each."""
    pos = q * (n - 1)
    lo = int(pos)  # pos ≥ 0: truncation is the floor
    hi = min(lo + 1, n - 1)
    a = np.float64(s[lo, x])
    return a + (pos - lo) * (np.float64(s[hi, x]) - a)


def sorting_network(n: int) -> NDArray[np.int64]:
    """Comparators (i, j), i < j, of Batcher's merge-exchange network for ``n`` keys (Knuth, TAOCP
    vol. 3, §5.2.2, algorithm M): applied in order, each putting the smaller key first, they sort
    any input (41 comparators for 12 keys, against 66 for odd-even transposition)."""
    pairs: list[tuple[int, int]] = []
    if n > 1:
        t = (n - 1).bit_length()
        p = 1 << (t - 1)
        while p > 0:
            q, r, d = 1 << (t - 1), 0, p
            while True:
                pairs += [(i, i + d) for i in range(n - d) if i & p == r]
                if q == p:
                    break
                d, q, r = q - p, q // 2, p
            p //= 2
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


def static_stack(images: NDArray, variances: NDArray, masks: NDArray, good: NDArray[np.bool_], weights: NDArray,
                 statistic: int, sigma_clip: float, clip_iter: int, propagate: dict[int, float],
                 from_input_variance: bool, nodata_bit: int) -> tuple[NDArray, NDArray, NDArray, NDArray]:  # fmt: skip
    """The static sky model of a ``(V, ny, nx)`` stack; see :func:`mpidcr.coadd.static_sky_model`.

    weights : (V,) per-visit weights; a pixel's input is used where ``good`` and its weight > 0.
    statistic : :data:`MEAN`, :data:`MEDIAN` or :data:`MEANCLIP`.
    propagate : mask bit → weight-fraction threshold.
    Returns (image float64, variance float64, mask int32, count int32), each (ny, nx).
    """
    ny, nx = images.shape[1:]
    image = np.empty((ny, nx))
    variance = np.empty((ny, nx))
    mask = np.empty((ny, nx), dtype=np.int32)
    count = np.empty((ny, nx), dtype=np.int32)
    bits = np.array(list(propagate.keys()), dtype=np.int32)
    thresholds = np.array(list(propagate.values()), dtype=np.float64)
    inputs = (np.ascontiguousarray(images), np.ascontiguousarray(variances), np.ascontiguousarray(masks),
              np.ascontiguousarray(good), np.asarray(weights, dtype=np.float64))  # fmt: skip
    options = (int(statistic), float(sigma_clip), int(clip_iter), bits, thresholds, bool(from_input_variance),
               np.int32(nodata_bit), sorting_network(images.shape[0]))  # fmt: skip
    _static_stack(inputs, options, (image, variance, mask, count), max(1, min(numba.get_num_threads(), ny)), 256)
    return image, variance, mask, count


@numba.njit(cache=True, nogil=True)
def _classify(images, variances, masks, remove_bits, bad_bits, converge_bits, good, converge):  # pragma: no cover
    img, var, msk, gd, cv = images.ravel(), variances.ravel(), masks.ravel(), good.ravel(), converge.ravel()
    keep = ~remove_bits
    for i in range(img.shape[0]):
        m = msk[i] & keep
        msk[i] = m
        ok = ((m & bad_bits) == 0) & math.isfinite(img[i]) & math.isfinite(var[i])
        gd[i] = ok
        img[i] = img[i] if ok else 0  # a select, not a branch: the loop vectorises
        cv[i] = (m & converge_bits) != 0


def classify_pixels(images: NDArray, variances: NDArray, masks: NDArray, remove_bits: int, bad_bits: int,
                    converge_bits: int, nodata_bit: int = 0,
                    max_magnitude: float = 1e30) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:  # fmt: skip
    """One pass over a (V, ny, nx) stack, in place: clear ``remove_bits`` from ``masks``; mark
    ``nodata_bit`` where the image or the variance is not finite or beyond ``max_magnitude``
    (missing data, as LSST marks uncovered pixels); find the good pixels (none of ``bad_bits``,
    image and variance present) and set the others' image and variance to 0, so no sum over
    visits meets a NaN (0·NaN is NaN).  Returns (good, convergence pixels) as boolean stacks."""
    for a in (images, variances, masks):
        if not a.flags.c_contiguous:
            raise ValueError("classify_pixels needs C-contiguous stacks")
    good = np.empty(images.shape, dtype=np.bool_)
    converge = np.empty(images.shape, dtype=np.bool_)
    _classify(images, variances, masks, np.int32(remove_bits), np.int32(bad_bits), np.int32(converge_bits),
              np.int32(nodata_bit), float(max_magnitude), good, converge)  # fmt: skip
    return good, converge


@numba.njit(cache=True, nogil=True)
def _classify(images, variances, masks, remove_bits, bad_bits, converge_bits, nodata_bit, limit, good,
              converge):  # pragma: no cover - compiled
    img, var, msk, gd, cv = images.ravel(), variances.ravel(), masks.ravel(), good.ravel(), converge.ravel()
    keep = ~remove_bits
    for i in range(img.shape[0]):
        present = (abs(img[i]) <= limit) & (abs(var[i]) <= limit)  # False for NaN and ±inf too
        m = (msk[i] & keep) | (0 if present else nodata_bit)
        msk[i] = m
        ok = ((m & bad_bits) == 0) & present
        gd[i] = ok
        img[i] = img[i] if ok else 0  # selects, not branches: the loop vectorises
        var[i] = var[i] if ok else 0
        cv[i] = (m & converge_bits) != 0
