"""Integer bit masks with named planes, as in LSST exposures (``MP_<NAME> = bit``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
from numpy.typing import NDArray

#: The planes of a default LSST mask, name → bit.
DEFAULT_PLANES: dict[str, int] = {
    "BAD": 0,
    "SAT": 1,
    "INTRP": 2,
    "CR": 3,
    "EDGE": 4,
    "DETECTED": 5,
    "DETECTED_NEGATIVE": 6,
    "SUSPECT": 7,
    "NO_DATA": 8,
    "CLIPPED": 9,
    "CROSSTALK": 10,
    "NOT_DEBLENDED": 11,
    "UNMASKEDNAN": 12,
    "SENSOR_EDGE": 13,
    "INEXACT_PSF": 14,
    "REJECTED": 15,
    "STREAK": 16,
}


def plane_bits(planes: Mapping[str, int], names: Iterable[str]) -> int:
    """OR of the bits of ``names`` that exist in ``planes`` (unknown names contribute nothing)."""
    bits = 0
    for name in names:
        if name in planes:
            bits |= 1 << planes[name]
    return bits


def has_any(mask: NDArray, bits: int) -> NDArray[np.bool_]:
    """Pixels of ``mask`` with any of ``bits`` set."""
    return (mask & bits) != 0
