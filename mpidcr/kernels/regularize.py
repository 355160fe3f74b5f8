"""The model update's per-pixel passes (SPEC §2 steps 3–7), in numba.

Each function is one pass over the planes, in place or into a preallocated array, so an
iteration allocates nothing image-sized; the arithmetic is in the planes' dtype (float32 in the
solver).  Their numpy twins are the plain formulas in ``tests/reference.py``.  Axis order
``(K, y, x)`` for planes, ``(y, x)`` for images.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numpy.typing import NDArray

from .gaussian import gaussian_filter, gaussian_ratio, gaussian_sharpen
from .morphology import open_in_place


@numba.njit(cache=True, nogil=True)
def _apply_update(model, acc, inverse_weights, out):  # pragma: no cover - compiled
    flat_m, flat_a, flat_w, flat_o = model.ravel(), acc.ravel(), inverse_weights.ravel(), out.ravel()
    for i in range(flat_o.shape[0]):
        v = flat_m[i] + flat_w[i] * flat_a[i]
        flat_o[i] = v if math.isfinite(v) else flat_m[i]


def apply_update(model: NDArray, acc: NDArray, inverse_weights: NDArray, out: NDArray) -> NDArray:
    """Step 3: ``out = model + acc / weights`` (``inverse_weights`` = 1/weights, 0 where undetermined);
    a non-finite result keeps the model's value."""
    _apply_update(model, acc, inverse_weights, out)
    return out


@numba.njit(cache=True, nogil=True)
def _select(image, base, high_scale, high_abs, low_scale, low_abs, bits, sel):  # pragma: no cover - compiled
    """sel = bit 1 where image > high limit, bit 2 where image < low limit, of the ``bits`` asked
    for (limits |base|·scale or base·scale); returns (any bit set, every high limit ≥ its low limit)."""
    ny, nx = image.shape
    found = False
    ordered = True
    for y in range(ny):
        im, b, s = image[y], base[y], sel[y]
        row = 0
        bad = 0
        for x in range(nx):
            high = (abs(b[x]) if high_abs else b[x]) * high_scale
            low = (abs(b[x]) if low_abs else b[x]) * low_scale
            hit = (np.uint8(im[x] > high) | (np.uint8(im[x] < low) << np.uint8(1))) & bits
            s[x] = hit
            row |= hit
            bad |= high < low
        found |= row != 0
        ordered &= bad == 0
    return found, ordered


@numba.njit(cache=True, nogil=True)
def _assign(image, base, high_scale, high_abs, low_scale, low_abs, sel):  # pragma: no cover - compiled
    ny, nx = image.shape
    for y in range(ny):
        im, b, s = image[y], base[y], sel[y]
        for x in range(nx):  # selects, not branches, so the loop vectorises
            high = (abs(b[x]) if high_abs else b[x]) * high_scale
            low = (abs(b[x]) if low_abs else b[x]) * low_scale
            v = high if s[x] & 1 else im[x]
            im[x] = low if s[x] & 2 else v


def clamp_opened(image: NDArray, base: NDArray, high_scale: float, high_abs: bool, low_scale: float, low_abs: bool,
                 width: int, sel: NDArray[np.uint8], scratch: NDArray[np.uint8]) -> None:  # fmt: skip
    """Clamp ``image`` in place to its high limit where it is above it, then to its low limit where
    it is below it, on pixel groups that survive a binary opening by the diamond of radius
    ``width`` (isolated pixels are left alone).  Limits: ``(|base| if abs else base)·scale``.
    ``sel`` and ``scratch`` are uint8 work images.

    One select, one opening and one assignment: the two selections are bits 1 and 2 of ``sel``, and
    the opening (ANDs and ORs) works on each bit independently.  That equals the two clamps in turn
    whenever every high limit ≥ its low limit (a pixel lowered to its high limit is then not below
    its low limit, so the first clamp cannot change the second's selection); otherwise the two
    clamps run in turn."""
    dt = image.dtype.type
    limits = (base, dt(high_scale), bool(high_abs), dt(low_scale), bool(low_abs))
    found, ordered = _select(image, *limits, np.uint8(3), sel)
    if not ordered:  # one clamp after the other
        for bits in (1, 2):
            if _select(image, *limits, np.uint8(bits), sel)[0]:
                open_in_place(sel, width, scratch)
                _assign(image, *limits, sel)
        return
    if found:
        open_in_place(sel, width, scratch)
        _assign(image, *limits, sel)


@numba.njit(cache=True, nogil=True, inline="always")
def _row_sum(planes, y, out):  # pragma: no cover - compiled
    """out = sum over k of planes[k, y], added in the order of k (as numpy's sum over axis 0)."""
    K = planes.shape[0]
    out[:] = 0
    for k in range(K):
        p = planes[k, y]
        for x in range(out.shape[0]):
            out[x] += p[x]


@numba.njit(cache=True, nogil=True, inline="always")
def _row_mean(planes, y, out):  # pragma: no cover - compiled
    """out = mean over k of planes[k, y]."""
    _row_sum(planes, y, out)
    inv = planes.dtype.type(1.0 / planes.shape[0])
    for x in range(out.shape[0]):
        out[x] *= inv


@numba.njit(cache=True, nogil=True)
def _amplify(planes, accelerate, out, amplify, significance, floor):  # pragma: no cover - compiled
    K, ny, nx = planes.shape
    a = planes.dtype.type(accelerate)
    f = planes.dtype.type(floor)
    mean = np.empty(nx, dtype=planes.dtype)
    for y in range(ny):
        _row_mean(planes, y, mean)
        s = significance[y]
        for x in range(nx):
            s[x] = abs(mean[x]) + f
        if amplify:
            for k in range(K):
                p, o = planes[k, y], out[k, y]
                for x in range(nx):
                    o[x] = (p[x] - mean[x]) * a + mean[x]


def amplify(planes: NDArray, accelerate: float, out: NDArray, significance: NDArray | None = None,
            floor: float = 0.0) -> NDArray:  # fmt: skip
    """``out = (y_k − ȳ)·A + ȳ`` for planes (K, ny, nx) in one pass (``out`` untouched when A = 1);
    with ``significance`` (ny, nx), also ``|ȳ| + floor`` there.  Returns ``out``."""
    if significance is None:
        if accelerate == 1.0:
            return out
        significance = np.empty(planes.shape[1:], planes.dtype)  # written row by row; not returned
    _amplify(planes, float(accelerate), out, accelerate != 1.0, significance, float(floor))
    return out


@numba.njit(cache=True, nogil=True)
def _plane_mean_positive(planes, out, sums, with_sums):  # pragma: no cover - compiled
    """out = the mean of the planes where finite and positive, else 0; with ``with_sums`` also
    sums = their sum (the same additions), in one pass."""
    ny, nx = out.shape
    inv = planes.dtype.type(1.0 / planes.shape[0])
    for y in range(ny):
        o = out[y]
        _row_sum(planes, y, o)
        if with_sums:
            t = sums[y]
            for x in range(nx):
                t[x] = o[x]
        for x in range(nx):
            v = o[x] * inv
            o[x] = v if (math.isfinite(v) and v > 0) else 0


class FrequencyWork:
    """The work images of :func:`regularize_frequency`, allocated once per run: four float images
    (``flux`` holds the planes' sum before the regularization) and two uint8 selections of shape (ny, nx)."""

    def __init__(self, shape: tuple[int, int], dtype: np.dtype):
        self.ref, self.smooth, self.ratio, self.flux = (np.empty(shape, dtype) for _ in range(4))
        self.sel = np.empty(shape, np.uint8)
        self.scratch = np.empty(shape, np.uint8)


def regularize_frequency(planes: NDArray, factor: float, width: int, noise: float, work: FrequencyWork,
                         reference: NDArray | None = None, mode: str = "reflect",
                         flux: NDArray | None = None) -> None:  # fmt: skip
    """Step 5 in place on ``planes`` (K, ny, nx): see :func:`mpidcr.update.regularize_frequency`.

    ``reference``: the planes whose positive mean is the reference (default ``planes`` themselves;
    LSST's task uses the previous iteration's).  ``mode``: of the two Gaussians of width ``width``
    ('reflect', or LSST's 'constant'); the sharpening's is always 'reflect'.  ``flux`` (ny, nx):
    receives the planes' sum before the regularization (in the reference's pass; without a
    ``reference`` only), for :func:`restore_flux` or the conditioning to give back.
    """
    dt = planes.dtype.type
    floor = dt(3.0 * noise / (2.0 * width))
    ref, smooth, ratio = work.ref, work.smooth, work.ratio
    if flux is not None and reference is not None:
        raise ValueError("the flux before the regularization is summed with the planes as the reference only")
    source = planes if reference is None else np.ascontiguousarray(reference, dtype=planes.dtype)
    _plane_mean_positive(source, ref, ref if flux is None else flux, flux is not None)
    gaussian_filter(ref, width, out=smooth, add=floor, mode=mode)
    max_diff = math.sqrt(factor)
    for k in range(planes.shape[0]):
        clamp_opened(planes[k], smooth, max_diff, False, 1.0 / max_diff, False, width, work.sel, work.scratch)
    for k in range(planes.shape[0]):
        # the ratio and the sharpening are applied to each smoothed row while it is in cache
        gaussian_ratio(planes[k], width, floor, smooth, out=ratio, mode=mode)
        gaussian_sharpen(ratio, width / 3.0, ref, out=planes[k])


@numba.njit(cache=True, nogil=True, inline="always")
def _flux_row(new, y, flux, inv, d):  # pragma: no cover - compiled
    """d = (flux[y] − Σ_k new[k, y])·inv, the sum added in the order of k (as numpy's)."""
    # row by row over the planes, not plane by plane within each pixel: the loops over x then
    # vectorise (a loop over k inside the pixel loop ran scalar: ~1 ms per 512² pass, now ~0.2);
    # the same additions in the same order
    f = flux[y]
    p = new[0, y]
    for x in range(d.shape[0]):
        d[x] = p[x]
    for k in range(1, new.shape[0]):
        p = new[k, y]
        for x in range(d.shape[0]):
            d[x] += p[x]
    for x in range(d.shape[0]):
        d[x] = (f[x] - d[x]) * inv


@numba.njit(cache=True, nogil=True, inline="always")
def _condition_row(n, o, d, w, s, g, norm, keep, weighted, r):  # pragma: no cover - compiled
    """r = (g·(n + d) + o)/(1 + g)·w + s, without d unless ``keep``, without w and s unless
    ``weighted``; r may be n itself (the same view: see :func:`_condition`)."""
    if keep and weighted:
        for x in range(r.shape[0]):
            r[x] = (g * (n[x] + d[x]) + o[x]) * norm * w[x] + s[x]
    elif keep:
        for x in range(r.shape[0]):
            r[x] = (g * (n[x] + d[x]) + o[x]) * norm
    elif weighted:
        for x in range(r.shape[0]):
            r[x] = (g * n[x] + o[x]) * norm * w[x] + s[x]
    else:
        for x in range(r.shape[0]):
            r[x] = (g * n[x] + o[x]) * norm


@numba.njit(cache=True, nogil=True)
def _condition(new, old, gain, weights, static_share, weighted, flux, keep, out, inplace):  # pragma: no cover - compiled
    K, ny, nx = new.shape
    dt = new.dtype.type
    g = dt(gain)
    norm = dt(1.0 / (1.0 + gain))
    inv = dt(1.0 / K)
    d = np.zeros(nx, dtype=new.dtype)
    for y in range(ny):
        if keep:
            _flux_row(new, y, flux, inv, d)
        w, s = weights[y], static_share[y]
        for k in range(K):
            n = new[k, y]
            if inplace:  # one view read and written: two views of the same row would defeat
                # LLVM's run-time alias check and run the loop scalar (3x slower)
                _condition_row(n, old[k, y], d, w, s, g, norm, keep, weighted, n)
            else:
                _condition_row(n, old[k, y], d, w, s, g, norm, keep, weighted, out[k, y])


def condition_weighted(new: NDArray, old: NDArray, gain: float, weights: NDArray | None, static_share: NDArray | None,
                       out: NDArray, flux: NDArray | None = None) -> NDArray:  # fmt: skip
    """Steps 6–7 in one pass: ``out = (g·new + old)/(1 + g)·M + T·(1 − M)/K`` (without model
    weights: M = 1, no static share).  ``static_share`` is T·(1 − M)/K, (ny, nx).  ``out`` may be
    ``new``.  With ``flux`` (ny, nx), the sum of the planes before the frequency regularization:
    first new_k += (flux − Σ_k new_k)/K, what :func:`restore_flux` does, in the same pass."""
    weighted = weights is not None and static_share is not None
    if not weighted:  # unused by the kernel: any (ny, nx) images of the planes' dtype
        weights = static_share = new[0]
    keep = flux is not None
    inplace = out is new
    if not inplace and np.may_share_memory(out, new):
        raise ValueError("out must be new itself or not overlap it")
    _condition(new, old, float(gain), weights, static_share, weighted, new[0] if flux is None else flux, keep, out,
               inplace)  # fmt: skip
    return out


@numba.njit(cache=True, nogil=True)
def _restore_flux(planes, flux):  # pragma: no cover - compiled
    K, ny, nx = planes.shape
    inv = planes.dtype.type(1.0 / K)
    d = np.zeros(nx, dtype=planes.dtype)
    for y in range(ny):
        _flux_row(planes, y, flux, inv, d)
        for k in range(K):
            p = planes[k, y]
            for x in range(nx):
                p[x] += d[x]


def restore_flux(planes: NDArray, flux: NDArray) -> None:
    """planes_k += (flux − Σ_k planes_k)/K in place: every pixel gets back the sum over sub-filters
    ``flux`` (ny, nx) it had, the difference spread evenly over the planes."""
    _restore_flux(planes, np.ascontiguousarray(flux, dtype=planes.dtype))
