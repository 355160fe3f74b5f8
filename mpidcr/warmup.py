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
from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from .config import DcrConfig
from .dcr import Observation, dcr_shifts
from .kernels.fused import SweepPlan, VisitPass
from .masks import DEFAULT_PLANES
from .psf import BlurPlan, blur_plan
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
    psf_aware : the run uses the PSF-aware model (its blur and mixing kernels).
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
        blur = _tiny_blur(cfg) if psf_aware else None
        DcrSolver(tiny_field(cfg), cfg, tile=tile, blur=blur).run()
    except Exception as exc:  # a warm-up must never stop a run: the kernels then compile in it
        quiet.setLevel(level)  # so that the debug line below can be seen
        log.debug("kernel warm-up skipped (%s: %s); kernels compile during the run", type(exc).__name__, exc)
    finally:
        quiet.setLevel(level)
    return time.perf_counter() - t0


def _part_static(config: DcrConfig) -> None:
    """The construction's kernels: classification, warp-variance and visit-weight moments, the static
    model, detection on it, the model weights' Gaussian."""
    from . import kernels
    from .coadd import static_sky_model
    from .kernels import moments
    from .kernels.gaussian import gaussian_filter
    from .masks import plane_bits
    from .reduction import SerialReducer, clipped_std, merged_std

    w = tiny_field(config)
    planes = w.mask_planes
    region = (slice(0, _SIZE), slice(0, _SIZE))
    bad, converge = plane_bits(planes, config.badMaskPlanes), plane_bits(planes, config.convergenceMaskPlanes)
    good, _ = kernels.classify_pixels(w.images, w.variances, w.masks, 0, bad, converge,
                                      plane_bits(planes, ["NO_DATA"]), 1e30)  # fmt: skip
    snr = np.empty(w.images.shape[1:], w.images.dtype)
    np.divide(w.images[0], np.sqrt(w.variances[0]), out=snr)
    clipped_std(SerialReducer(), snr, select=good[0], masks=w.masks[0], excluded=bad, region=region)
    moments.selected_sums(w.variances[0], good[0], region=region)
    static = static_sky_model(w.images, w.variances, w.masks, good, np.ones(w.num_visits), config.static_statistic,
                              planes, config.sigmaClip, config.clipIter, config.maskPropagationThresholds,
                              config.calcErrorFromInputVariance)  # fmt: skip
    kernels.binary_dilation_diamond(static.image > 1.0, 2)
    merged_std(SerialReducer(), static.image.astype(np.float32), good[0], region=region)
    gaussian_filter((static.image > 1.0).astype(np.float32), max(float(config.modelWeightsWidth), 1.0))


def _tiny_plan(config: DcrConfig) -> tuple[WarpStack, NDArray[np.bool_], SweepPlan]:
    """The tiny field, all its pixels good, and its sweep plan."""
    w = tiny_field(config)
    return w, np.ones(w.images.shape, np.bool_), SweepPlan([VisitPass(w.images.shape[1:], s.forward, s.mean)
                                                            for s in w.shifts])  # fmt: skip


def _part_sweep(config: DcrConfig) -> None:
    """The sweep (at order 1; other orders sweep per shift: the solve warms them)."""
    w, good, plan = _tiny_plan(config)
    K = config.num_subfilters
    planes = np.repeat(w.images[:1], K, axis=0)
    acc = np.empty(planes.shape, planes.dtype)
    plan.run(planes, w.images, good, good, np.ones(planes.shape[1:], planes.dtype), (0, _SIZE, 0, _SIZE),
             np.ones(w.num_visits, np.bool_), acc)  # fmt: skip


def _part_coverage(config: DcrConfig) -> None:
    """The coverage pass (the update's weights and nImage)."""
    from .kernels import fused

    w, good, plan = _tiny_plan(config)
    shape = (config.num_subfilters, *w.images.shape[1:])
    fused.coverage(plan, good, np.ones(w.num_visits, np.bool_), np.empty(shape, np.float32), np.empty(shape, np.int32),
                   np.empty(shape[1:], np.bool_))  # fmt: skip


def _part_update(config: DcrConfig) -> None:
    """The update's passes: the step, the clamps and openings, the frequency regularization's
    Gaussians, conditioning with model weights and flux, the amplified planes."""
    from .kernels import regularize
    from .update import clamp_to_previous, regularize_frequency

    w = tiny_field(config)
    K = config.num_subfilters
    model = np.repeat(w.images[:1], K, axis=0)
    new = regularize.apply_update(model, model, np.ones_like(model), np.empty_like(model))
    work = regularize.FrequencyWork(model.shape[1:], model.dtype)
    width = max(int(config.regularizationWidth), 1)
    clamp_to_previous(new[0], model[0], 2.0, width, work.sel, work.scratch)
    regularize_frequency(new, 4.0, width, 1.0, work, keep_flux=True, defer_flux=True)
    regularize_frequency(new, 4.0, width, 1.0, work, model, "constant")
    weights = np.ones(model.shape[1:], model.dtype)
    regularize.condition_weighted(new, model, 0.5, weights, weights, out=new, flux=work.flux)
    regularize.condition_weighted(new, model, 0.5, None, None, out=new)
    regularize.amplify(model, 3.0, np.empty_like(model), np.empty(model.shape[1:], model.dtype), 1.0)


def _part_stream(config: DcrConfig) -> None:
    """The PSF-aware sweep streamed by rows (the solve's; kernels.stream)."""
    from .kernels.stream import StreamPlan

    w, good, plan = _tiny_plan(config)
    K = config.num_subfilters
    blur = _tiny_blur(config)
    planes = np.repeat(w.images[:1], K, axis=0)
    J = len(blur.wing_sigmas)
    wing_planes = np.repeat(planes[:, None], J, axis=1)
    stream = StreamPlan(plan, blur, K, w.images.shape[1:], np.ones(w.num_visits, np.bool_))
    stream.run(planes, wing_planes, w.images, good, good, np.ones(planes.shape[1:], planes.dtype), (0, _SIZE, 0, _SIZE),
               np.zeros_like(wing_planes), np.empty_like(planes))  # fmt: skip


def _tiny_blur(config: DcrConfig) -> BlurPlan:
    """Four blur groups with a wing (the mixing kernels), the first one blurred too (its own steps)."""
    return blur_plan(np.linspace(0.2, 1.0, 4), config.psfTolerance, (1.5,), np.linspace(0.0, 0.2, 4)[:, None])


def _part_psf(config: DcrConfig) -> None:
    """The PSF-aware model's blur steps and wing mixing, the artifact rejection's PSF matching, and
    the templates' shifts at orders 1 and 3."""
    from .kernels.gaussian import (
        blur_step,
        blur_step_gather,
        blur_step_mix,
        correlate_separable,
        mix_blurs,
        spread_blurs,
    )
    from .solver import MODEL_DTYPE, matched_template

    w = tiny_field(config)
    blur_step(w.images[0], 0.3, np.empty_like(w.images[0]))
    plane = w.images[0].astype(MODEL_DTYPE)
    wings = plane[None].copy()  # a plane's wings, (J, ny, nx), as the solver passes them
    weights = np.array([0.1])
    mix_blurs(plane, 0.9, wings, weights, np.empty_like(plane))
    spread_blurs(plane.copy(), 0.9, weights, wings, np.empty_like(plane), False)
    blur_step_mix(plane, 0.3, np.empty_like(plane), 0.9, wings, weights, np.empty_like(plane))
    blur_step_gather(plane, plane.copy(), 0.3, 0.9, wings, weights, np.empty_like(plane))
    correlate_separable(w.images[0].astype(np.float64), np.array([0.25, 0.5, 0.25]))
    planes = np.repeat(w.images[:1], config.num_subfilters, axis=0)
    for order in (1, 3):
        matched_template(planes, w.shifts[0], order)


#: The kernels in groups that share no kernel, so that several processes can compile them side
#: by side (largest first); a solve afterwards compiles nothing more (tests/test_solver.py)
PARTS: tuple[Callable[[DcrConfig], None], ...] = (_part_sweep, _part_stream, _part_static, _part_coverage, _part_update,
                                                  _part_psf)


def warm_part(config: DcrConfig, index: int) -> float:
    """Compile or load one of :data:`PARTS` (never raises: a part left undone compiles later)."""
    t0 = time.perf_counter()
    try:
        PARTS[index](config)
    except Exception as exc:
        log.debug("kernel warm-up part %d skipped (%s: %s)", index, type(exc).__name__, exc)
    return time.perf_counter() - t0


def warm_all(config: DcrConfig | None = None) -> dict[str, float]:
    """Compile (or load) every kernel the commands call with ``config`` (default: the default
    configuration): a solve, a PSF-aware solve, and the PSF blur, PSF matching and templates
    (:func:`_part_psf`).  ``make setup`` runs it (``python -m mpidcr.warmup``), so that a first
    run on a new install reads machine code from the cache instead of compiling.  Returns
    seconds per part."""
    cfg = config or _default_config()
    seconds = {"solve": warm_up(cfg, tiled=False), "psf-aware solve": warm_up(cfg, tiled=False, psf_aware=True)}
    t0 = time.perf_counter()
    _part_psf(cfg)
    seconds["psf and templates"] = time.perf_counter() - t0
    return seconds


def _default_config() -> DcrConfig:
    return DcrConfig(effectiveWavelength=476.31, bandwidth=147.0).validate()


def main(argv: list[str] | None = None) -> None:
    """``python -m mpidcr.warmup``: fill numba's cache (NUMBA_CACHE_DIR, or next to the sources).
    The groups of :data:`PARTS` are compiled side by side in one process per core, then
    :func:`warm_all` checks that nothing is left (``--part N``: one group, in this process)."""
    import os
    import subprocess
    import sys
    from concurrent.futures import ThreadPoolExecutor

    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--part"]:
        warm_part(_default_config(), int(args[1]))
        return
    where = os.environ.get("NUMBA_CACHE_DIR") or "next to the installed sources"
    t0 = time.perf_counter()
    workers = min(os.cpu_count() or 1, len(PARTS))
    if workers > 1:
        command = [sys.executable, "-m", "mpidcr.warmup", "--part"]
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda i: subprocess.run([*command, str(i)], check=False), range(len(PARTS))))
    from .kernels import signature_counts

    config = _default_config()
    for index in range(len(PARTS)):  # (loaded from the cache if compiled by the processes above)
        warm_part(config, index)
    before = signature_counts()
    parts = warm_all(config)
    added = {name: n - before.get(name, 0) for name, n in signature_counts().items() if n > before.get(name, 0)}
    left = "nothing left to compile" if not added else f"compiled after the groups: {added}"
    detail = ", ".join(f"{name} {s:.1f} s" for name, s in parts.items())
    print(f"[warmup] kernels compiled or loaded in {time.perf_counter() - t0:.1f} s with {workers} process(es) "
          f"(then: {detail}; {left}); cache: {where}")


if __name__ == "__main__":
    main()
