"""The static sky model T: a weighted coadd of the warps (SPEC §3, without artifact rejection).

Arrays are ``(V, ny, nx)`` stacks over visits, axis order ``(visit, y, x)``.
Everything here is per pixel, so it runs unchanged on any tile.  The per-pixel work is the numba
kernel :func:`mpidcr.kernels.stack.static_stack`; ``tests/reference.py`` holds its numpy twin.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from .kernels import stack
from .masks import plane_bits


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
    codes = {"MEAN": stack.MEAN, "MEDIAN": stack.MEDIAN, "MEANCLIP": stack.MEANCLIP}
    if statistic not in codes:
        raise ValueError(f"statistic must be MEAN, MEDIAN or MEANCLIP, not {statistic!r}")
    propagate = {}
    for name, threshold in (propagation_thresholds or {}).items():
        bit = plane_bits(mask_planes, [name])
        if bit:
            propagate[bit] = float(threshold)
    image, variance, mask, count = stack.static_stack(
        images,
        variances,
        masks,
        good,
        weights,
        codes[statistic],
        sigma_clip,
        clip_iter,
        propagate,
        error_from_input_variance,
        plane_bits(mask_planes, ["NO_DATA"]),
    )
    return StaticModel(image=image, variance=variance, mask=mask, count=count)


def propagate_rejections(masks: NDArray, used: NDArray[np.bool_], mask_planes: Mapping[str, int],
                         bad_bits: int) -> NDArray[np.int32]:  # fmt: skip
    """LSST's coadd mask planes for inputs left out (``masks``, ``used``: (V, ny, nx)), an OR into
    the static model's mask: REJECTED where an input with data was left out for one of ``bad_bits``
    (other than NO_DATA, EDGE, CLIPPED), SENSOR_EDGE for EDGE, CLIPPED for CLIPPED (artifact
    rejection); INEXACT_PSF wherever any of the three is set (the coadd PSF, the weighted sum of
    all visits' PSFs, is not exact there).  Planes absent from ``mask_planes`` are skipped."""
    nodata, edge, clipped = (plane_bits(mask_planes, [n]) for n in ("NO_DATA", "EDGE", "CLIPPED"))
    reject = bad_bits & ~nodata & ~edge & ~clipped
    out = np.zeros(masks.shape[1:], dtype=np.int32)
    left_out = ~used & ((masks & nodata) == 0)
    for source, target in ((reject, "REJECTED"), (edge, "SENSOR_EDGE"), (clipped, "CLIPPED")):
        if source and target in mask_planes:
            hit = (left_out & ((masks & source) != 0)).any(axis=0)
            out |= np.where(hit, np.int32(1 << mask_planes[target]), np.int32(0))
    inexact = plane_bits(mask_planes, ["INEXACT_PSF"])
    if inexact:
        out |= np.where(out != 0, np.int32(inexact), np.int32(0))
    return out
