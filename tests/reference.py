"""Slow, obviously correct twins of the numba kernels, built on scipy.ndimage.

Used only by the tests: every fast path is compared against one of these.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def shift_reference(image, shift, order):
    """scipy's spline shift, zero outside the image (the kernels' convention)."""
    return ndimage.shift(np.asarray(image, dtype=np.float64), shift, order=order, mode="constant", cval=0.0)


def template_reference(planes, forward_shifts, order):
    """Σ_k mean_j shift(plane_k, forward_shifts[k, j]) with one scipy call per shift."""
    out = np.zeros(planes.shape[1:])
    for k in range(planes.shape[0]):
        for j in range(forward_shifts.shape[1]):
            out += shift_reference(planes[k], forward_shifts[k, j], order) / forward_shifts.shape[1]
    return out


def reverse_reference(residual, mean_shifts, order):
    """(K, ny, nx) stack of shift(residual, −mean_shifts[k])."""
    return np.stack([shift_reference(residual, -np.asarray(s), order) for s in mean_shifts])


def static_sky_model_reference(images, variances, masks, good, weights, statistic, mask_planes, sigma_clip=3.0,
                               clip_iter=2, propagation_thresholds=None, error_from_input_variance=True):  # fmt: skip
    """numpy twin of :func:`mpidcr.coadd.static_sky_model` (whole-stack arrays, nanpercentile)."""
    from mpidcr.masks import plane_bits

    images = np.asarray(images, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)[:, None, None] * good
    use = good & (w > 0)

    def quantiles(qs):
        with np.errstate(all="ignore"):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                return np.nanpercentile(np.where(use, images, np.nan), [100 * q for q in qs], axis=0)

    if statistic == "MEDIAN":
        image = quantiles([0.5])[0]
    else:
        if statistic == "MEANCLIP" and images.shape[0] > 2:
            q25, center, q75 = quantiles([0.25, 0.5, 0.75])
            sigma = 0.7413 * (q75 - q25)
            with np.errstate(all="ignore"):
                for _ in range(clip_iter):
                    keep = use & ~(np.abs(images - center) > sigma_clip * sigma)
                    wk = np.where(keep, w, 0.0)
                    sw = wk.sum(axis=0)
                    center = (wk * images).sum(axis=0) / sw
                    sigma = np.sqrt((wk * (images - center) ** 2).sum(axis=0) / sw)
            use = use & ~(np.abs(images - center) > sigma_clip * sigma)
        wu = np.where(use, w, 0.0)
        sw = wu.sum(axis=0)
        with np.errstate(all="ignore"):
            image = np.where(sw > 0, (wu * images).sum(axis=0) / sw, 0.0)
    image = np.where(np.isfinite(image), image, 0.0)
    wu = np.where(use, w, 0.0)
    sw = wu.sum(axis=0)
    count = use.sum(axis=0).astype(np.int32)
    with np.errstate(all="ignore"):
        if error_from_input_variance:
            variance = (wu**2 * variances).sum(axis=0) / sw**2
        else:
            variance = (wu * (images - image) ** 2).sum(axis=0) / sw / np.maximum(count, 1)
    variance = np.where((sw > 0) & np.isfinite(variance), variance, np.inf)
    mask = np.bitwise_or.reduce(np.where(use, masks, 0), axis=0).astype(np.int32)
    # judged per pixel: the weight of the inputs that carry the plane and were left out, over the
    # weight of the inputs with data there (used or left out; NO_DATA inputs are neither)
    nodata = plane_bits(mask_planes, ["NO_DATA"])
    w3 = np.asarray(weights, dtype=np.float64)[:, None, None]
    with_data = use | ((masks & nodata) == 0)
    pixel_w = np.where(with_data, w3, 0.0).sum(axis=0)
    for name, threshold in (propagation_thresholds or {}).items():
        bit = plane_bits(mask_planes, [name])
        if not bit:
            continue
        carried = ((masks & bit) != 0) & ~use
        with np.errstate(invalid="ignore", divide="ignore"):
            frac = np.where(carried & with_data, w3, 0.0).sum(axis=0) / pixel_w
        mask |= np.where(frac > threshold, bit, 0).astype(np.int32)
    mask |= np.where(count == 0, plane_bits(mask_planes, ["NO_DATA"]), 0).astype(np.int32)
    return image, variance, mask, count


def diamond(width):
    """Cross-shaped element grown ``width`` times (a diamond of radius ``width``)."""
    cross = ndimage.generate_binary_structure(2, 1)
    return ndimage.iterate_structure(cross, width) if width > 1 else cross


def apply_thresholds_reference(image, high, low, width):
    """Clamp ``image`` in place to [low, high] where scipy's binary opening keeps the excess."""
    if high is not None:
        sel = ndimage.binary_opening(image > high, structure=diamond(width))
        image[sel] = high[sel]
    if low is not None:
        sel = ndimage.binary_opening(image < low, structure=diamond(width))
        image[sel] = low[sel]


def regularize_frequency_reference(planes, factor, width, noise):
    """SPEC §2 step 5 in plain numpy/scipy, in float64 (in place on ``planes``)."""
    ref = planes.mean(axis=0)
    ref = np.where(np.isfinite(ref) & (ref > 0), ref, 0.0)
    noise = noise / (2.0 * width)
    smooth = ndimage.gaussian_filter(ref, width) + 3.0 * noise
    high, low = smooth * np.sqrt(factor), smooth / np.sqrt(factor)
    for k in range(planes.shape[0]):
        apply_thresholds_reference(planes[k], high, low, width)
    with np.errstate(divide="ignore", invalid="ignore"):
        for k in range(planes.shape[0]):
            ratio = (ndimage.gaussian_filter(planes[k], width) + 3.0 * noise) / smooth
            ratio = np.where(np.isfinite(ratio), ratio, 1.0)
            ratio += 3.0 * (ratio - ndimage.gaussian_filter(ratio, width / 3.0))
            planes[k] = ratio * ref


def blur_step_reference(image, variance):
    """scipy twin of :func:`mpidcr.kernels.gaussian.blur_step`: the 3-tap kernel along y and x, mirrored edges."""
    w = np.array([variance / 2.0, 1.0 - variance, variance / 2.0])
    out = ndimage.correlate1d(np.asarray(image, dtype=np.float64), w, axis=0, mode="reflect")
    return ndimage.correlate1d(out, w, axis=1, mode="reflect")
