"""Compile the numba kernels once, before a run, so that compilation is not billed to the solve.

numba compiles a kernel at its first call for the argument types of that call, or loads the
machine code from its on-disk cache (``cache=True``).  :func:`warm_up` solves a tiny field with
the run's configuration and tile layout, which calls every kernel the run will call with the
same argument types (float32 images and variances, int32 masks, the same array layouts); the
driver reports its time as ``seconds.compile``.  The field is a few Gaussian blobs drawn here —
a production run never imports the simulator.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from .config import DcrConfig
from .dcr import Observation, dcr_shifts
from .masks import DEFAULT_PLANES
from .solver import DcrSolver, WarpStack
from .tiling import Box, Tile

log = logging.getLogger(__name__)

_SIZE = 64  # pixels on a side: larger than any halo of a default configuration, so every path runs
_PIXEL_SCALE = 0.2  # arcsec


def tiny_field(config: DcrConfig, num_visits: int = 4) -> WarpStack:
    """``num_visits`` warps of 64×64 pixels: eight Gaussian blobs on unit noise, DETECTED where
    they rise above it, seen at four elevations and parallactic angles."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:_SIZE, :_SIZE]
    blobs = np.zeros((_SIZE, _SIZE))
    for y, x in rng.uniform(8, _SIZE - 8, size=(8, 2)):
        blobs += 50.0 * np.exp(-0.5 * ((yy - y) ** 2 + (xx - x) ** 2) / 1.5**2)
    images = (blobs + rng.normal(size=(num_visits, _SIZE, _SIZE))).astype(np.float32)
    variances = np.ones_like(images)
    detected = np.int32(1 << DEFAULT_PLANES["DETECTED"])
    masks = np.where(blobs > 1.0, detected, np.int32(0)).astype(np.int32)[None].repeat(num_visits, axis=0)
    observations = [Observation(elevation=40.0 + 45.0 * v / max(num_visits - 1, 1), parallactic_angle=-60.0 + 80.0 * v)
                    for v in range(num_visits)]  # fmt: skip
    K = config.num_subfilters
    shifts = [dcr_shifts(o, config.effectiveWavelength, config.bandwidth, K, _PIXEL_SCALE, **config.shift_options())
              for o in observations]
    airmass = np.array([o.airmass for o in observations])
    return WarpStack(images, variances, masks, dict(DEFAULT_PLANES), shifts, airmass)


def warm_up(config: DcrConfig, tiled: bool, psf_aware: bool = False) -> float:
    """Run every kernel a solve of ``config`` uses on a tiny field; returns the seconds it took.

    tiled : the run's tiles have a halo (several ranks): the inner-box views are then strided
        arrays, a different argument type from the whole-patch arrays of a one-rank run.
    psf_aware : the run uses the PSF-aware model (its blur kernel).
    """
    t0 = time.perf_counter()
    cfg = config.copy()
    cfg.maxNumIter = 1
    cfg.minNumIter = 1
    patch = Box(0, _SIZE, 0, _SIZE)
    tile = Tile((0, 0), Box(4, _SIZE - 4, 0, _SIZE), patch, patch) if tiled else Tile.whole((_SIZE, _SIZE))
    quiet = logging.getLogger("mpidcr")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the tiny field's own warnings (few iterations, few sources) are noise
    try:
        variances = np.linspace(0.0, 0.8, 4) if psf_aware else None
        DcrSolver(tiny_field(cfg), cfg, tile=tile, psf_variances=variances).run()
    except Exception as exc:  # a warm-up must never stop a run: the kernels then compile in it
        quiet.setLevel(level)  # so that the debug line below can be seen
        log.debug("kernel warm-up skipped (%s: %s); kernels compile during the run", type(exc).__name__, exc)
    finally:
        quiet.setLevel(level)
    return time.perf_counter() - t0


def warm_all(config: DcrConfig | None = None) -> dict[str, float]:
    """Compile (or load) every kernel the commands call with ``config`` (default: the default
    configuration): a solve, the PSF-aware solve's blur, and templates at interpolation orders 1
    and 3.  ``make setup`` runs it (``python -m mpidcr.warmup``), so that a first run on a new
    install reads machine code from the cache instead of compiling.  Returns seconds per part."""
    from .solver import matched_template

    cfg = config or DcrConfig(effectiveWavelength=476.31, bandwidth=147.0).validate()
    seconds = {"solve": warm_up(cfg, tiled=False), "psf-aware solve": warm_up(cfg, tiled=False, psf_aware=True)}
    t0 = time.perf_counter()
    field = tiny_field(cfg)
    planes = np.repeat(field.images[:1], cfg.num_subfilters, axis=0).astype(np.float32)
    for order in (1, 3):
        matched_template(planes, field.shifts[0], order)
    seconds["templates"] = time.perf_counter() - t0
    return seconds


def main() -> None:
    """``python -m mpidcr.warmup``: fill numba's cache (NUMBA_CACHE_DIR, or next to the sources)."""
    import os

    where = os.environ.get("NUMBA_CACHE_DIR") or "next to the installed sources"
    t0 = time.perf_counter()
    parts = warm_all()
    detail = ", ".join(f"{name} {s:.1f} s" for name, s in parts.items())
    print(f"[warmup] kernels compiled or loaded in {time.perf_counter() - t0:.1f} s ({detail}); cache: {where}")


if __name__ == "__main__":
    main()
