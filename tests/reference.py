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
