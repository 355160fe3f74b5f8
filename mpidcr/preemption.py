"""SIGTERM as a request to stop cleanly (what Slurm and most batch systems send before a kill).

The command line installs the handler first thing, so a signal at any moment of a run is
recorded rather than fatal.  The driver asks, at the boundaries of its phases and after every
iteration, whether any rank has seen it (``comm.any_rank``, one reduction), and then stops
with a checkpoint and exit code 75 — except during the final write, which is finished instead.
A library caller that does not install the handler never sees a stop.
"""

from __future__ import annotations

import logging
import signal
from typing import Any

log = logging.getLogger(__name__)


class StopRequest:
    """Whether SIGTERM has arrived in this process (one instance, :data:`STOP`)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def install(self) -> None:
        """Record SIGTERM instead of dying (main thread only; idempotent)."""
        if self._installed:
            return
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
            self._installed = True
        except ValueError:  # not the main thread: keep the default behaviour
            pass

    def _handle(self, signum: int, frame: Any) -> None:
        if not self.requested:
            log.warning("SIGTERM received: the run will stop at the next safe point (checkpoint, exit 75)")
        self.requested = True

    def restore(self) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)
            self._installed = False
        self.requested = False


STOP = StopRequest()

