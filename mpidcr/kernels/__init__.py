"""Numba kernels: numpy in, numpy out; each has a reference twin in tests/reference.py.

Threading inside a rank is opt-in (``mpidcr run --threads N`` or ``MPIDCR_THREADS``): the
default layout is one single-threaded MPI rank per core.
"""

import os

import numba

from .morphology import binary_dilation_diamond
from .shift import (
    accumulate_reverse,
    add_shifted,
    build_template,
    prefilter,
    prefilter_planes,
    shift_image,
    tap_table,
)
from .stack import classify_pixels, static_stack

__all__ = [
    "accumulate_reverse",
    "add_shifted",
    "binary_dilation_diamond",
    "build_template",
    "classify_pixels",
    "prefilter",
    "prefilter_planes",
    "shift_image",
    "static_stack",
    "tap_table",
]


def set_threads(count: int) -> int:
    """Use ``count`` numba threads in the kernels (1 = off); returns the number in effect."""
    from ..errors import ConfigError

    limit = numba.config.NUMBA_NUM_THREADS
    if not 1 <= count <= limit:
        raise ConfigError(f"--threads {count} must be between 1 and {limit} (NUMBA_NUM_THREADS)")
    numba.set_num_threads(count)
    return count


set_threads(min(int(os.environ.get("MPIDCR_THREADS", "1")), numba.config.NUMBA_NUM_THREADS))


def signature_counts() -> dict[str, int]:
    """How many specialisations every kernel of this package has in this process (compiled or
    loaded from the cache), by ``module.name`` (``.serial``/``.threaded`` for threadable ones)."""
    import importlib
    import pkgutil

    counts: dict[str, int] = {}
    for module in pkgutil.iter_modules(__path__):
        mod = importlib.import_module(f"{__name__}.{module.name}")
        for name, obj in vars(mod).items():
            if isinstance(obj, numba.core.dispatcher.Dispatcher):
                counts[f"{module.name}.{name}"] = len(obj.signatures)
            for twin in ("serial", "threaded"):  # threads.threadable
                if isinstance(getattr(obj, twin, None), numba.core.dispatcher.Dispatcher):
                    counts[f"{module.name}.{name}.{twin}"] = len(getattr(obj, twin).signatures)
    return counts
