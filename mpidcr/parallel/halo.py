"""Halo exchange between neighbouring tiles of a :class:`mpidcr.tiling.Plan`.

For every neighbour (up to 8) the exchanger precomputes, once, the part of
this rank's inner box that lies in the neighbour's outer box (sent) and the
part of the neighbour's inner box that lies in this rank's outer box
(received), and preallocates contiguous buffers for them.  ``exchange``
posts non-blocking receives and sends, then copies the received pixels into
the ghost region.  Patch edges need nothing: outer boxes are clipped there,
exactly as in a one-process run.
"""

from __future__ import annotations

import numpy as np
from mpi4py import MPI
from numpy.typing import NDArray

from ..tiling import Box, Plan

_TAG = 7101


class MpiHaloExchanger:
    """Refresh the ghost pixels of outer-box arrays ``(..., ny, nx)`` from their owners."""

    def __init__(self, comm: MPI.Comm, plan: Plan, rank: int):
        self.comm = comm
        self.plan = plan
        self.tile = plan.tile(rank)
        self.links: list[tuple[int, tuple[slice, slice], tuple[slice, slice]]] = []
        iy, ix = self.tile.index
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                ny_, nx_ = iy + dy, ix + dx
                if (dy, dx) == (0, 0) or not (0 <= ny_ < plan.dims[0] and 0 <= nx_ < plan.dims[1]):
                    continue
                other_rank = plan.rank_of(ny_, nx_)
                other = plan.tile(other_rank)
                send_box = self.tile.inner.intersect(other.outer)
                recv_box = other.inner.intersect(self.tile.outer)
                if _empty(send_box) and _empty(recv_box):
                    continue
                self.links.append((other_rank, send_box.slices(self.tile.outer), recv_box.slices(self.tile.outer)))
        self._buffers: dict[tuple[tuple[int, ...], np.dtype], list[tuple[NDArray, NDArray]]] = {}

    def _bufs(self, lead: tuple[int, ...], dtype: np.dtype) -> list[tuple[NDArray, NDArray]]:
        key = (lead, dtype)
        if key not in self._buffers:
            bufs = []
            for _, s, r in self.links:
                sshape = (*lead, s[0].stop - s[0].start, s[1].stop - s[1].start)
                rshape = (*lead, r[0].stop - r[0].start, r[1].stop - r[1].start)
                bufs.append((np.empty(sshape, dtype), np.empty(rshape, dtype)))
            self._buffers[key] = bufs
        return self._buffers[key]

    def exchange(self, array: NDArray) -> None:
        """In place: ghost pixels of ``array`` (outer box, C-contiguous) ← owners' values."""
        if not self.links:
            return
        lead = tuple(array.shape[:-2])
        bufs = self._bufs(lead, array.dtype)
        requests = []
        for (other, _, _), (_, rbuf) in zip(self.links, bufs, strict=True):
            requests.append(self.comm.Irecv(rbuf, source=other, tag=_TAG))
        for (other, s, _), (sbuf, _) in zip(self.links, bufs, strict=True):
            sbuf[...] = array[(..., *s)]
            requests.append(self.comm.Isend(sbuf, dest=other, tag=_TAG))
        MPI.Request.Waitall(requests)
        for (_, _, r), (_, rbuf) in zip(self.links, bufs, strict=True):
            array[(..., *r)] = rbuf


def _empty(box: Box) -> bool:
    return box.y1 <= box.y0 or box.x1 <= box.x0
