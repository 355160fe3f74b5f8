"""The halo of a tile: how wide it must be, and the refresh interface the numerical core calls.

The MPI implementation of the refresh is :class:`mpidcr.parallel.halo.MpiHaloExchanger`; a single
tile covering the patch needs none (:class:`NoExchange`).
"""

from __future__ import annotations

import math
from typing import Protocol

from numpy.typing import NDArray

from .config import DcrConfig


class HaloExchanger(Protocol):
    """Refreshes the ghost pixels of outer-box arrays ``(..., ny, nx)`` from their owners."""

    def exchange(self, array: NDArray) -> None: ...


class NoExchange:
    """The halo exchange of a single tile covering the patch: nothing to do."""

    def exchange(self, array: NDArray) -> None:
        return None


def gaussian_radius(sigma: float) -> int:
    """Half-width in pixels of scipy's Gaussian filter of ``sigma`` (truncate = 4)."""
    return int(4.0 * float(sigma) + 0.5) if sigma > 0 else 0


#: Pixels the order-3 spline prefilter needs for its edge effect to decay below 1e-7 (|z|^n, z = √3 − 2).
PREFILTER_MARGIN = math.ceil(math.log(1e-7) / math.log(2.0 - math.sqrt(3.0)))


def halo_width(config: DcrConfig, buffer: int, psf_support: int = 0) -> int:
    """Ghost pixels a tile needs so that one iteration computes its inner box exactly.

    One iteration chains: forward shift (template) → reverse shift (update),
    each ``buffer`` + the interpolation support (order 3: + prefilter margin);
    the iteration clamp's opening (2·regularizationWidth); the frequency
    regularization (smoothing, opening, smoothing, sharpening).  The model
    weights' Gaussian is computed once from exact data, so it only needs to fit.  The PSF-aware
    model blurs the planes before the forward shifts and the residuals after the reverse ones, one
    pixel per blur step (``psf_support`` steps) each way.
    """
    order = int(config.imageInterpOrder)
    support = 1 if order == 1 else 2 + PREFILTER_MARGIN
    width = int(config.regularizationWidth)
    halo = 2 * (buffer + support) + 2 * int(psf_support)
    if config.regularizeModelIterations > 0:
        halo += 2 * width
    if config.regularizeModelFrequency > 0:
        halo += 2 * gaussian_radius(width) + 2 * width + gaussian_radius(width / 3.0)
    if config.useModelWeights:
        # the model weights smooth the static mask, which may carry detections grown on the static model
        halo = max(halo, gaussian_radius(config.modelWeightsWidth) + int(config.detectTemplate.growRadius))
    return halo
