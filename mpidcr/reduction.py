"""Patch-wide reductions, as an interface the numerical core calls.

Every quantity the solver needs over the whole patch (metric sums, noise
levels, counts, maxima) is a reduction of per-tile partial results.  Classified:

- sums and counts (metric numerators/denominators, visit variance sums) → ``sum``;
- maxima (model-weight normalisation, significance) → ``max``;
- standard deviations (noise levels) → merged moments: per tile
  count, sum and squared deviations about a common guess (:func:`selected_moments`);
- medians over the *iteration history* (gain) are scalars computed identically
  on every rank and need no reduction.

:class:`SerialReducer` is the one-process implementation; the MPI one lives in
``mpidcr.parallel``.  Both return float64 arrays of the input's shape.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .kernels import moments


class Reducer(Protocol):
    """Elementwise reductions of small float arrays across all tiles."""

    def sum(self, values: ArrayLike) -> NDArray[np.float64]: ...

    def max(self, values: ArrayLike) -> NDArray[np.float64]: ...


class SerialReducer:
    """Reductions over a single tile: the identity."""

    def sum(self, values: ArrayLike) -> NDArray[np.float64]:
        return np.array(values, dtype=np.float64)

    def max(self, values: ArrayLike) -> NDArray[np.float64]:
        return np.array(values, dtype=np.float64)


def _as_image(a: NDArray) -> NDArray:
    a = np.asarray(a)
    return a if a.ndim == 2 else a.reshape(1, -1)


def selected_moments(reducer: Reducer, values: NDArray, select: NDArray | None = None, lo: float = -math.inf,
                     hi: float = math.inf, guess: float = 0.0,
                     masks: NDArray | None = None, excluded: int = 0,
                     region: tuple[slice, slice] | None = None,
                     extra: tuple[float, float, float] | None = None) -> tuple[float, float, float]:  # fmt: skip
    """(n, mean, population std) of the selected finite ``values`` within [lo, hi], pooled over all tiles.

    One pass: each tile contributes its count, sum and sum of squared deviations about ``guess``
    (the same on every tile); the pooled M2 about the pooled mean is then
    ``M2_guess − n·(mean − guess)²``, exact in exact arithmetic, so the result does not depend on
    how the pixels are split.  In float64 its relative rounding grows as ((mean − guess)/σ)²·1e-16:
    nothing while the guess is within a few σ of the mean (the clipping passes pass the previous
    mean), still ~1e-8 for a first pass about 0 with the mean 10⁴ σ away.  ``select`` (same shape as
    ``values``; default all) picks pixels; pixels whose ``masks`` value has any ``excluded`` bit
    are left out; ``region`` (y slice, x slice) restricts the sums to part of the images (a tile's inner
    box); ``extra`` (count, sum, sum of squares about ``guess``) adds pixels held elsewhere (the same
    on every rank).  (0, 0, 0) when nothing is selected.
    """
    v = _as_image(values)
    sel = np.ones(v.shape, dtype=np.bool_) if select is None else _as_image(select)
    msk = None if masks is None else _as_image(masks)
    n, total, m2_guess = reducer.sum(moments.selected_sums(v, sel, lo, hi, guess, msk, excluded, region))
    if extra is not None:
        n, total, m2_guess = n + extra[0], total + extra[1], m2_guess + extra[2]
    if n == 0:
        return 0.0, 0.0, 0.0
    mean = total / n
    m2 = max(m2_guess - n * (mean - guess) ** 2, 0.0)
    return float(n), float(mean), float(np.sqrt(m2 / n))


def merged_std(reducer: Reducer, values: NDArray, select: NDArray | None = None,
               region: tuple[slice, slice] | None = None, extra: tuple[float, float, float] | None = None) -> float:  # fmt: skip
    """Population standard deviation of the selected finite ``values`` pooled over all tiles (0 if
    empty), with ``extra`` moments (see :func:`selected_moments`)."""
    return selected_moments(reducer, values, select, region=region, extra=extra)[2]


def clipped_std(reducer: Reducer, values: NDArray, nsigma: float = 3.0, iterations: int = 3,
                select: NDArray | None = None, masks: NDArray | None = None,
                excluded: int = 0, region: tuple[slice, slice] | None = None) -> float:  # fmt: skip
    """Standard deviation after ``iterations`` passes of rejecting values beyond ``nsigma`` of the
    pooled mean; every pass is a pooled-moments reduction, so the result does not depend on the
    tiles.  The other arguments as in :func:`selected_moments`."""
    n, mean, std = selected_moments(reducer, values, select, masks=masks, excluded=excluded, region=region)
    for _ in range(iterations):
        if n == 0 or std == 0:
            break
        n, mean, std = selected_moments(
            reducer,
            values,
            select,
            mean - nsigma * std,
            mean + nsigma * std,
            guess=mean,
            masks=masks,
            excluded=excluded,
            region=region,
        )
    # a Gaussian clipped at ±k σ has std σ·sqrt(1 − 2kφ(k)/(2Φ(k) − 1)): undo that bias
    k = nsigma
    phi = math.exp(-0.5 * k * k) / math.sqrt(2.0 * math.pi)
    inside = math.erf(k / math.sqrt(2.0))
    return std / math.sqrt(1.0 - 2.0 * k * phi / inside)
