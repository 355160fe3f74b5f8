"""Kernels with a row-parallel loop, compiled twice: serial for one thread, ``parallel=True`` for more.

numba's parallel backend (``parallel=True``) triples a kernel's compile time, and mpidcr's default
layout is one single-threaded MPI rank per core, where ``prange`` runs as ``range`` anyway.  So a
:func:`threadable` kernel is a serial dispatcher and a threaded twin compiled from the same
source; a call goes to the twin only while numba has more than one thread (``mpidcr run
--threads N``), and a run without threads never compiles or loads it.  Both do the same
arithmetic in the same order on every pixel, so their results are identical.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import numba


def threadable(**options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: ``numba.njit(cache=True, nogil=True, **options)`` serial, and the same with
    ``parallel=True`` for several threads.  The decorated callable has ``.serial`` and
    ``.threaded``; the twin has its own name, so numba caches the two apart."""

    def wrap(py_func: Callable[..., Any]) -> Callable[..., Any]:
        serial = numba.njit(cache=True, nogil=True, **options)(py_func)
        twin = types.FunctionType(py_func.__code__, py_func.__globals__, py_func.__name__ + "_threaded",
                                  py_func.__defaults__, py_func.__closure__)  # fmt: skip
        twin.__qualname__ = py_func.__qualname__ + "_threaded"
        twin.__doc__ = py_func.__doc__
        threaded = numba.njit(cache=True, nogil=True, parallel=True, **options)(twin)

        def call(*args: Any) -> Any:
            return (threaded if numba.get_num_threads() > 1 else serial)(*args)

        call.__name__, call.__qualname__, call.__doc__ = py_func.__name__, py_func.__qualname__, py_func.__doc__
        call.serial, call.threaded = serial, threaded  # type: ignore[attr-defined]
        return call

    return wrap
