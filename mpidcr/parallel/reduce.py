"""Patch-wide reductions over MPI (the :class:`mpidcr.reduction.Reducer` interface).

Every rank calls every reduction, also ranks whose tile holds no valid pixels:
they contribute the identity (0 for sums, −inf for maxima).
"""

from __future__ import annotations

import numpy as np
from mpi4py import MPI
from numpy.typing import ArrayLike, NDArray


class MpiReducer:
    """Allreduce-based sums and maxima of small float64 arrays."""

    def __init__(self, comm: MPI.Comm):
        self.comm = comm

    def sum(self, values: ArrayLike) -> NDArray[np.float64]:
        send = np.ascontiguousarray(values, dtype=np.float64)
        recv = np.empty_like(send)
        self.comm.Allreduce(send, recv, op=MPI.SUM)
        return recv

    def max(self, values: ArrayLike) -> NDArray[np.float64]:
        send = np.ascontiguousarray(values, dtype=np.float64)
        recv = np.empty_like(send)
        self.comm.Allreduce(send, recv, op=MPI.MAX)
        return recv
