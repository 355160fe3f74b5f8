"""Numba kernels: numpy in, numpy out; each has a reference twin in tests/reference.py."""

from .shift import (
    accumulate_reverse,
    add_shifted,
    build_template,
    prefilter,
    prefilter_planes,
    shift_image,
    tap_table,
)

__all__ = [
    "accumulate_reverse",
    "add_shifted",
    "build_template",
    "prefilter",
    "prefilter_planes",
    "shift_image",
    "tap_table",
]
