"""Numba kernels: numpy in, numpy out; each has a reference twin in tests/reference.py."""

from .morphology import binary_opening_diamond
from .shift import (
    accumulate_reverse,
    add_shifted,
    build_template,
    prefilter,
    prefilter_planes,
    shift_image,
    tap_table,
)
from .stack import stack_quantiles

__all__ = [
    "accumulate_reverse",
    "add_shifted",
    "binary_opening_diamond",
    "build_template",
    "prefilter",
    "prefilter_planes",
    "shift_image",
    "stack_quantiles",
    "tap_table",
]
