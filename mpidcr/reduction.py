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
