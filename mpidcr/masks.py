"""Integer bit masks with named planes, as in LSST exposures (``MP_<NAME> = bit``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .errors import InputError

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


#: Bits of an int32 mask that can carry planes (the sign bit is left alone)
MASK_BITS = 31


def add_plane(planes: dict[str, int], name: str, bit: int | None = None) -> int:
    """Add plane ``name`` to ``planes`` (in place) at ``bit`` or, if that is taken or None, at the
    lowest free bit; returns its bit.  An existing plane keeps its bit."""
    if name in planes:
        return planes[name]
    used = set(planes.values())
    if bit is None or bit in used:
        free = [b for b in range(MASK_BITS) if b not in used]
        if not free:
            raise InputError(f"no free mask bit for plane {name}: all {MASK_BITS} bits are in use")
        bit = free[0]
    planes[name] = bit
    return bit
