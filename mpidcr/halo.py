"""The halo refresh as an interface of the numerical core (the MPI implementation is in ``parallel``)."""

from __future__ import annotations

from typing import Protocol

from numpy.typing import NDArray


class HaloExchanger(Protocol):
    """Refreshes the ghost pixels of outer-box arrays ``(..., ny, nx)`` from their owners."""

    def exchange(self, array: NDArray) -> None: ...


class NoExchange:
    """The halo exchange of a single tile covering the patch: nothing to do."""

    def exchange(self, array: NDArray) -> None:
        return None
