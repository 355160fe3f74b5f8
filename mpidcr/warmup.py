"""Compile the numba kernels once, before a run, so that compilation is not billed to the solve.

numba compiles a kernel at its first call for the argument types of that call, or loads the
machine code from its on-disk cache (``cache=True``; first run on a machine: ~30 s, later runs:
~1 s).  :func:`warm_up` solves a tiny simulated field with the run's configuration and tile
layout, which calls every kernel the run will call with the same argument types; the driver
reports its time as ``seconds.compile``.
"""

from __future__ import annotations

import logging
import time

from .config import DcrConfig
from .dcr import dcr_shifts
from .solver import DcrSolver, WarpStack
from .synthetic import make_field
from .tiling import Box, Tile

log = logging.getLogger(__name__)

_SIZE = 64  # pixels on a side: larger than any halo of a default configuration, so every path runs


def warm_up(config: DcrConfig, tiled: bool) -> float:
    """Run every kernel a solve of ``config`` uses on a tiny field; returns the seconds it took.

    tiled : the run's tiles have a halo (several ranks): the inner-box views are then strided
        arrays, a different argument type from the whole-patch arrays of a one-rank run.
    """
    t0 = time.perf_counter()
    cfg = config.copy()
    cfg.maxNumIter = 1
    cfg.minNumIter = 1
    K = cfg.num_subfilters
    field = make_field(
        shape=(_SIZE, _SIZE),
        num_visits=4,
        num_stars=6,
        num_subfilters=K,
        effective_wavelength=cfg.effectiveWavelength,
        bandwidth=cfg.bandwidth,
        seed=0,
    )
    shifts = [
        dcr_shifts(
            o, cfg.effectiveWavelength, cfg.bandwidth, K, field.pixel_scale, cfg.splitSubfilters, cfg.splitThreshold
        )
        for o in field.observations
    ]
    warps = WarpStack(field.images, field.variances, field.masks, dict(field.mask_planes), shifts, field.airmass)
    patch = Box(0, _SIZE, 0, _SIZE)
    tile = Tile((0, 0), Box(4, _SIZE - 4, 0, _SIZE), patch, patch) if tiled else Tile.whole((_SIZE, _SIZE))
    quiet = logging.getLogger("mpidcr")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the tiny field's own warnings (few iterations, few sources) are noise
    try:
        DcrSolver(warps, cfg, tile=tile).run()
    except Exception as exc:  # a warm-up must never stop a run: the kernels then compile in it
        quiet.setLevel(level)  # so that the debug line below can be seen
        log.debug("kernel warm-up skipped (%s: %s); kernels compile during the run", type(exc).__name__, exc)
    finally:
        quiet.setLevel(level)
    return time.perf_counter() - t0
