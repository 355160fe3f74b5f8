"""The static sky model T: a weighted coadd of the warps (SPEC §3, without artifact rejection).

Arrays are ``(V, ny, nx)`` stacks over visits, axis order ``(visit, y, x)``.
Everything here is per pixel, so it runs unchanged on any tile.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from .kernels import stack_quantiles
from .masks import plane_bits

_IQR_TO_SIGMA = 0.7413  # 1 / (2 · Φ⁻¹(0.75)) for a Gaussian


@dataclass
class StaticModel:
    """The static sky model on a tile: image, variance and mask, each (ny, nx); count of inputs."""

    image: NDArray[np.float64]
    variance: NDArray[np.float64]
    mask: NDArray[np.int32]
    count: NDArray[np.int32]


def visit_weights_from_sums(variance_sums: NDArray, counts: NDArray, airmass: NDArray | None) -> NDArray[np.float64]:
    """Inverse mean variance of each visit's good pixels (× airmass if given); 0 for empty visits."""
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where((counts > 0) & (variance_sums > 0), counts / variance_sums, 0.0)
    if airmass is not None:
        w = w * np.asarray(airmass, dtype=np.float64)
    return w


def static_sky_model(
    images: NDArray,
    variances: NDArray,
    masks: NDArray,
    good: NDArray[np.bool_],
    weights: NDArray,
    statistic: str,
    mask_planes: Mapping[str, int],
    sigma_clip: float = 3.0,
    clip_iter: int = 2,
    propagation_thresholds: Mapping[str, float] | None = None,
    error_from_input_variance: bool = True,
) -> StaticModel:
    """Coadd ``images`` with per-visit ``weights`` over ``good`` pixels.

    statistic : ``MEAN`` (weighted mean), ``MEDIAN`` (unweighted median of good
        inputs) or ``MEANCLIP`` (start from the median and 0.7413·IQR, then
        ``clip_iter`` passes of rejecting inputs beyond ``sigma_clip`` σ of the
        weighted mean and standard deviation of the survivors; weighted mean).
    Mask: OR of the masks of the inputs used; a plane of
    ``propagation_thresholds`` is also set where the inputs that carry it but
    were not used hold more than that fraction of the pixel's total weight;
    ``NO_DATA`` where no input is used.
    Variance: Σw²σ²/(Σw)² of the inputs used, or (``error_from_input_variance``
    False) the weighted scatter of the inputs about the result divided by their number.
    """
    images = np.asarray(images, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)[:, None, None] * good
    use = good & (w > 0)
    if statistic == "MEDIAN":
        image = stack_quantiles(images, use, [0.5])[0]
    elif statistic in ("MEAN", "MEANCLIP"):
        if statistic == "MEANCLIP" and images.shape[0] > 2:
            q25, center, q75 = stack_quantiles(images, use, [0.25, 0.5, 0.75])
            sigma = _IQR_TO_SIGMA * (q75 - q25)
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
    else:
        raise ValueError(f"statistic must be MEAN, MEDIAN or MEANCLIP, not {statistic!r}")
    image = np.where(np.isfinite(image), image, 0.0)

    wu = np.where(use, w, 0.0)
    sw = wu.sum(axis=0)
    count = use.sum(axis=0).astype(np.int32)
    with np.errstate(all="ignore"):
        if error_from_input_variance:
            variance = (wu**2 * variances).sum(axis=0) / sw**2
        else:
            scatter = (wu * (images - image) ** 2).sum(axis=0) / sw
            variance = scatter / np.maximum(count, 1)
    variance = np.where((sw > 0) & np.isfinite(variance), variance, np.inf)

    mask = np.bitwise_or.reduce(np.where(use, masks, 0), axis=0).astype(np.int32)
    total_w = (np.asarray(weights, dtype=np.float64)[:, None, None] * np.ones_like(images)).sum(axis=0)
    for name, threshold in (propagation_thresholds or {}).items():
        bit = plane_bits(mask_planes, [name])
        if not bit:
            continue
        carried = ((masks & bit) != 0) & ~use
        frac = np.where(carried, np.asarray(weights)[:, None, None], 0.0).sum(axis=0) / np.maximum(total_w, 1e-300)
        mask |= np.where(frac > threshold, bit, 0).astype(np.int32)
    nodata = plane_bits(mask_planes, ["NO_DATA"])
    mask |= np.where(count == 0, nodata, 0).astype(np.int32)
    return StaticModel(image=image, variance=variance, mask=mask, count=count)
