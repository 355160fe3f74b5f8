"""Patch-wide reductions, as an interface the numerical core calls.

Every quantity the solver needs over the whole patch (metric sums, noise
levels, counts, maxima) is a reduction of per-tile partial results.  Classified:

- sums and counts (metric numerators/denominators, visit variance sums) → ``sum``;
- maxima (model-weight normalisation, significance) → ``max``;
- standard deviations (noise levels) → merged moments: per tile
  (count, mean, M2), combined exactly by :func:`merged_std`;
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


def merged_std(reducer: Reducer, values: NDArray) -> float:
    """Population standard deviation of ``values`` pooled over all tiles (0 if empty).

    Each tile contributes (n, n·mean) then its M2 about the global mean
    ``M2_r + n_r (mean_r − mean)²`` (Chan et al.'s merge), so the result does
    not depend on how the pixels are split.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    n_local = float(v.size)
    mean_local = float(v.mean()) if v.size else 0.0
    n, total = reducer.sum([n_local, n_local * mean_local])
    if n == 0:
        return 0.0
    mean = total / n
    m2_local = float(np.sum((v - mean_local) ** 2)) + n_local * (mean_local - mean) ** 2
    m2 = float(reducer.sum([m2_local])[0])
    return float(np.sqrt(m2 / n))


def clipped_std(reducer: Reducer, values: NDArray, nsigma: float = 3.0, iterations: int = 3) -> float:
    """Standard deviation after ``iterations`` passes of rejecting values beyond ``nsigma`` of the
    pooled mean; every pass is a merged-moments reduction, so the result does not depend on the tiles."""
    v = np.asarray(values, dtype=np.float64).ravel()
    keep = np.ones(v.size, dtype=bool)
    std = merged_std(reducer, v)
    for _ in range(iterations):
        n, total = reducer.sum([float(keep.sum()), float(v[keep].sum())])
        if n == 0 or std == 0:
            break
        keep = np.abs(v - total / n) <= nsigma * std
        std = merged_std(reducer, v[keep])
    # a Gaussian clipped at ±k σ has std σ·sqrt(1 − 2kφ(k)/(2Φ(k) − 1)): undo that bias
    k = nsigma
    phi = math.exp(-0.5 * k * k) / math.sqrt(2.0 * math.pi)
    inside = math.erf(k / math.sqrt(2.0))
    return std / math.sqrt(1.0 - 2.0 * k * phi / inside)
