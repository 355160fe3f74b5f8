"""The pieces of one model update (SPEC §2, steps 3–7) and the gain: plain functions on numpy arrays.

Axis order: model planes ``(K, y, x)``.  The solver fuses steps 6 and 7 into one pass
(:func:`mpidcr.kernels.regularize.condition_weighted`); :func:`condition` and
:func:`apply_model_weights` are the steps one at a time, as the specification states them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from .errors import SolverError
from .kernels import regularize


def clamp_to_previous(new: NDArray, old: NDArray, factor: float, width: int, sel: NDArray | None = None,
                      scratch: NDArray | None = None) -> None:  # fmt: skip
    """Step 4: limit ``new`` (ny, nx) to [old/f, |old|·f] (in place) where coherent groups exceed it.

    ``sel``, ``scratch``: optional uint8 work images of the same shape.
    """
    sel = np.empty(new.shape, np.uint8) if sel is None else sel
    scratch = np.empty(new.shape, np.uint8) if scratch is None else scratch
    regularize.clamp_opened(new, old, factor, True, 1.0 / factor, False, width, sel, scratch)


def regularize_frequency(planes: NDArray, factor: float, width: int, noise: float,
                         work: regularize.FrequencyWork | None = None, previous: NDArray | None = None,
                         mode: str = "reflect", keep_flux: bool = False, defer_flux: bool = False) -> None:  # fmt: skip
    """Step 5 (in place on ``planes`` (K, ny, nx)): limit the sub-filters' departure from their mean.

    With ref = mean of the planes (0 where not positive), smooth = G_w(ref) + 3·noise/(2w):
    clamp each plane to [smooth/√f, smooth·√f] on coherent groups, then replace it by
    ratio·ref with ratio = (G_w(plane) + 3·noise/(2w))/smooth sharpened as
    ratio + 3·(ratio − G_{w/3}(ratio)).  ``noise`` is the background std of plane 0; G_σ is a
    Gaussian (scipy's, truncate 4; ``mode`` 'reflect', or LSST's 'constant' for the two of width
    w).  ``previous``: take ref from these planes instead (LSST's task uses the previous
    iteration's).  ``work``: preallocated work images.  ``keep_flux``: then give every pixel back
    the sum over sub-filters it had, spread evenly over the planes — the regularization moves flux
    between sub-filters but makes none (without it the templates' stars came out ~1 % bright).
    ``defer_flux``: leave that to the caller, with the sums before in ``work.flux`` (the solver
    gives them back in its conditioning pass, :func:`mpidcr.kernels.regularize.condition_weighted`).
    """
    work = work or regularize.FrequencyWork(planes.shape[1:], planes.dtype)
    flux = work.flux if keep_flux else None
    regularize.regularize_frequency(planes, factor, width, noise, work, previous, mode, flux)
    if flux is not None and not defer_flux:
        regularize.restore_flux(planes, flux)


def condition(new: NDArray, old: NDArray, gain: float) -> NDArray:
    """Step 6: the gain-weighted mean (g·new + old)/(1 + g) (the solver fuses it with step 7)."""
    return regularize.condition_weighted(new, old, gain, None, None, out=np.empty_like(new))


def static_share(static: NDArray, weights: NDArray, num_subfilters: int) -> NDArray:
    """T·(1 − M)/K: what the static model contributes to every plane under model weights M (step 7)."""
    return (static * (1 - weights) / num_subfilters).astype(weights.dtype)


def apply_model_weights(new: NDArray, static: NDArray, weights: NDArray) -> NDArray:
    """Step 7: new·M + T·(1 − M)/K for planes ``new`` (K, ny, nx) (the solver fuses it with step 6)."""
    share = static_share(static, weights, new.shape[0])
    return regularize.condition_weighted(new, new, 0.0, weights, share, out=np.empty_like(new))


#: Estimates of the final metric whose median the progressive gain takes: mpidcr's, and the LSST task's
GAIN_WINDOW, LSST_GAIN_WINDOW = 5, 4


def next_gain(metrics: Sequence[float], gains: Sequence[float], base_gain: float, progressive: bool,
              window: int = GAIN_WINDOW) -> float:  # fmt: skip
    """Gain of the next iteration from the metric and gain histories (SPEC §2 'Gain'): the median
    of at most the last ``window`` estimates of the final metric.

    ``metrics`` must have exactly one element more than ``gains``.
    """
    n = len(metrics)
    if n != len(gains) + 1:
        raise SolverError(f"the metric history ({n}) must be one element longer than the gain history ({len(gains)})")
    if not progressive or n < 3:
        return base_gain
    est = np.array([((1 + gains[i]) * metrics[i + 1] - metrics[i]) / gains[i] for i in range(n - 1)])
    est[est < 0] = 0.0
    final = float(np.median(est[-window:]))
    g_last, c_prev, c_new = gains[-1], metrics[-2], metrics[-1]
    predicted = (final * g_last + c_prev) / (1.0 + g_last)
    denom = (c_prev - final) / (1.0 + g_last)
    if denom == 0:
        return base_gain
    delta = (predicted - c_new) / denom
    return max(base_gain, ((1.0 - abs(delta)) + g_last) / 2.0)


def amplified(planes: NDArray, accelerate: float, out: NDArray | None = None) -> NDArray:
    """(y_k − ȳ)·A + ȳ: the planes as the forward model and the output use them (into ``out``)."""
    if accelerate == 1.0:
        return planes
    out = np.empty(planes.shape, planes.dtype) if out is None else out
    return regularize.amplify(np.ascontiguousarray(planes), accelerate, out)
