"""Communicators: mpi4py's COMM_WORLD (duplicated once) or a serial stand-in.

Everything above this layer receives a :class:`Comm` and never touches
``MPI.COMM_WORLD``.  :class:`SerialComm` has the same small interface for
one-process runs and for machines without mpi4py.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np

from ..halo import HaloExchanger, NoExchange
from ..reduction import Reducer, SerialReducer
from ..tiling import Box, Plan

log = logging.getLogger(__name__)


#: MPI tag of the tile bands that travel to rank 0 on the gather output path
TILE_BAND_TAG = 7201


class Comm(Protocol):
    """What the driver and the writers need of a communicator (:class:`SerialComm`, :class:`MpiComm`)."""

    rank: int
    size: int
    mpi: Any  # the underlying mpi4py communicator (None for SerialComm)

    def bcast(self, obj: Any, root: int = 0) -> Any: ...
    def gather(self, obj: Any, root: int = 0) -> list[Any] | None: ...
    def allgather(self, obj: Any) -> list[Any]: ...
    def allreduce_sum(self, array: Any) -> Any: ...
    def split(self, member: bool) -> Comm | None: ...
    def barrier(self) -> None: ...
    def quiet_barrier(self) -> None: ...
    def abort(self, code: int) -> None: ...
    def node_size(self) -> int: ...
    def node_info(self) -> tuple[int, int, bool]: ...
    def any_rank(self, flag: bool) -> bool: ...
    def decompose(self, plan: Plan) -> tuple[Reducer, HaloExchanger]: ...
    def send_tile_chunks(self, box: Box, arrays: dict[str, Any], dest: int, max_bytes: int) -> None: ...
    def recv_tile_chunks(self, source: int) -> Iterator[tuple[Box, dict[str, Any]]]: ...


class SerialComm:
    """A communicator of one process."""

    rank = 0
    size = 1
    mpi = None  # no underlying mpi4py communicator

    def bcast(self, obj: Any, root: int = 0) -> Any:
        return obj

    def barrier(self) -> None:
        return None

    def quiet_barrier(self) -> None:
        return None

    def abort(self, code: int) -> None:
        sys.exit(code)

    def gather(self, obj: Any, root: int = 0) -> list[Any]:
        return [obj]

    def allgather(self, obj: Any) -> list[Any]:
        return [obj]

    def allreduce_sum(self, array: Any) -> Any:
        return array.copy()

    def split(self, member: bool) -> SerialComm | None:
        return self if member else None

    def node_size(self) -> int:
        return 1

    def node_info(self) -> tuple[int, int, bool]:
        return 0, 1, True

    def any_rank(self, flag: bool) -> bool:
        return bool(flag)

    def decompose(self, plan: Plan) -> tuple[Reducer, HaloExchanger]:
        """The reductions and halo refresh of a one-tile plan: identities."""
        return SerialReducer(), NoExchange()

    def send_tile_chunks(self, box: Box, arrays: dict[str, Any], dest: int, max_bytes: int) -> None:
        raise RuntimeError("a one-process communicator has no other rank to send to")

    def recv_tile_chunks(self, source: int) -> Iterator[tuple[Box, dict[str, Any]]]:
        raise RuntimeError("a one-process communicator has no other rank to receive from")


class MpiComm:
    """A thin wrapper of an mpi4py communicator (duplicated, so mpidcr's messages never mix with the caller's)."""

    def __init__(self, mpi_comm: Any):
        self.mpi = mpi_comm.Dup()
        self.rank = self.mpi.Get_rank()
        self.size = self.mpi.Get_size()

    def bcast(self, obj: Any, root: int = 0) -> Any:
        return self.mpi.bcast(obj, root=root)

    def barrier(self) -> None:
        self.mpi.Barrier()

    def quiet_barrier(self) -> None:
        """A barrier in which waiting ranks sleep instead of spinning (they leave the cores to the
        ranks still working, e.g. while a few ranks solve a small block)."""
        request = self.mpi.Ibarrier()
        while not request.Test():
            time.sleep(0.002)

    def abort(self, code: int) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        self.mpi.Abort(code)

    def gather(self, obj: Any, root: int = 0) -> list[Any] | None:
        return self.mpi.gather(obj, root=root)

    def allgather(self, obj: Any) -> list[Any]:
        return self.mpi.allgather(obj)

    def allreduce_sum(self, array: Any) -> Any:
        """The element-wise sum over the ranks of a numpy array (integers: exact in any order)."""
        from mpi4py import MPI

        send = np.ascontiguousarray(array)
        out = np.empty_like(send)
        self.mpi.Allreduce(send, out, op=MPI.SUM)
        return out

    def split(self, member: bool) -> MpiComm | None:
        """The communicator of the ranks that pass ``member`` True, in rank order (None on the
        others); a collective call."""
        from mpi4py import MPI

        part = self.mpi.Split(0 if member else MPI.UNDEFINED, self.rank)
        if part == MPI.COMM_NULL:
            return None
        try:
            return MpiComm(part)
        finally:
            part.Free()

    def node_size(self) -> int:
        """Ranks of this communicator that share this rank's node (its memory); a collective call."""
        return self.node_info()[1]

    def node_info(self) -> tuple[int, int, bool]:
        """(this rank's number among the ranks of its node, their number, whether rank 0 is one of
        them); a collective call."""
        from mpi4py import MPI

        local = self.mpi.Split_type(MPI.COMM_TYPE_SHARED)
        try:
            return int(local.Get_rank()), int(local.Get_size()), bool(local.allreduce(self.rank == 0, op=MPI.LOR))
        finally:
            local.Free()

    def any_rank(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any rank (a collective call)."""
        from mpi4py import MPI

        return bool(self.mpi.allreduce(bool(flag), op=MPI.LOR))

    def decompose(self, plan: Plan) -> tuple[Reducer, HaloExchanger]:
        """A Cartesian communicator for ``plan``'s tile grid, its reducer and its halo exchanger."""
        from .halo import MpiHaloExchanger
        from .reduce import MpiReducer

        cart = self.mpi.Create_cart(list(plan.dims), periods=[False, False], reorder=False)
        return MpiReducer(cart), MpiHaloExchanger(cart, plan, self.rank)

    def send_tile_chunks(self, box: Box, arrays: dict[str, Any], dest: int, max_bytes: int) -> None:
        """Send a tile's arrays to ``dest`` as row bands of at most ~``max_bytes``, then an end marker."""
        ny = box.y1 - box.y0
        row_bytes = sum(a.nbytes for a in arrays.values()) / max(ny, 1)
        rows = max(1, int(max_bytes // max(row_bytes, 1)))
        for y in range(0, ny, rows):
            band = Box(box.y0 + y, min(box.y0 + y + rows, box.y1), box.x0, box.x1)
            part = {k: a[..., y : y + rows, :] for k, a in arrays.items()}
            self.mpi.send((band, part), dest=dest, tag=TILE_BAND_TAG)
        self.mpi.send(None, dest=dest, tag=TILE_BAND_TAG)

    def recv_tile_chunks(self, source: int) -> Iterator[tuple[Box, dict[str, Any]]]:
        """Yield (box, arrays) bands sent by :meth:`send_tile_chunks` from ``source``."""
        while True:
            item = self.mpi.recv(source=source, tag=TILE_BAND_TAG)
            if item is None:
                return
            yield item


def get_comm(serial: bool = False) -> SerialComm | MpiComm:
    """The world communicator: MpiComm under mpiexec/srun, SerialComm for one process or without mpi4py."""
    if serial:
        return SerialComm()
    try:
        from mpi4py import MPI
    except ImportError:
        return SerialComm()
    world = MPI.COMM_WORLD
    if world.Get_size() == 1:
        return SerialComm()
    return MpiComm(world)


def install_abort_hook(comm: Comm) -> None:
    """On an uncaught exception in a multi-rank run, print it and abort every rank (no hang)."""
    if comm.size == 1:
        return
    previous = sys.excepthook

    def hook(exc_type: Any, exc: BaseException, tb: Any) -> None:
        sys.stderr.write(f"[rank {comm.rank}] uncaught {exc_type.__name__}; aborting all ranks\n")
        previous(exc_type, exc, tb)
        comm.abort(1)

    sys.excepthook = hook
