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
