"""Rank-aware logging through the standard :mod:`logging` module.

By default only rank 0 logs (INFO); ``all_ranks`` lets every rank log, each
line prefixed with ``[rank/size]``.  Nothing here imports MPI: the caller
passes the rank and size.
"""

from __future__ import annotations

import logging
import sys


def setup_logging(rank: int = 0, size: int = 1, level: int = logging.INFO, all_ranks: bool = False) -> None:
    """Configure the ``mpidcr`` logger for this process."""
    logger = logging.getLogger("mpidcr")
    for h in list(logger.handlers):
        logger.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    prefix = f"[{rank}/{size}] " if size > 1 and all_ranks else ""
    handler.setFormatter(logging.Formatter(f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(level if (rank == 0 or all_ranks) else logging.ERROR)


class Progress:
    """Progress of a long loop, logged on rank 0: ``label i/n (eta)``; silent elsewhere."""

    def __init__(self, total: int, label: str, logger: logging.Logger, every: int = 1):
        import time

        self.total, self.label, self.log, self.every = total, label, logger, max(every, 1)
        self._t0 = time.perf_counter()
        self._time = time.perf_counter

    def step(self, i: int, detail: str = "") -> None:
        if i % self.every and i != self.total:
            return
        elapsed = self._time() - self._t0
        eta = elapsed / i * (self.total - i) if i else float("nan")
        self.log.info("%s %d/%d  %s  (%.1f s, ≤%.0f s left)", self.label, i, self.total, detail, elapsed, eta)
