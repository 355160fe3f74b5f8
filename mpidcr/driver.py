"""The data flow of a run: inputs → plan → windowed reads → solver → one output file.

The only module that holds the communicator, the decomposition plan and the
model together.  Serial runs use the same path with a one-tile plan.
"""

from __future__ import annotations

import logging
import math
import os
import resource
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from . import __version__
from .config import DcrConfig
from .dcr import Observation, Site, VisitShifts, dcr_buffer, dcr_shifts, subfilter_edges
from .errors import InputError, MpidcrError, Preempted
from .io.checkpoint import inputs_digest, read_checkpoint, write_checkpoint
from .io.manifest import Manifest, WarpEntry
from .io.modelfile import ModelMeta, ModelTile, write_model
from .io.warps import (
    WarpInfo,
    check_consistent,
    observation_or_error,
    pixel_scale_arcsec,
    read_window,
    resolve_geometry,
    scan_warp,
    union_mask_planes,
)
from .parallel.comm import SerialComm, choose_dims
from .reduction import SerialReducer
from .solver import DcrResult, DcrSolver, SolverState, WarpStack, halo_width
from .tiling import Plan, parse_tiles
from .warmup import warm_up

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class RunInputs:
    """Validated inputs of a run, identical on every rank."""

    infos: list[WarpInfo]
    observations: list[Observation]
    shifts: list[VisitShifts]
    mask_planes: dict[str, int]
    shape: tuple[int, int]
    pixel_scale: float
    config: DcrConfig


class TermFlag:
    """Records SIGTERM instead of dying at once, so the iteration can end with a checkpoint."""

    def __init__(self) -> None:
        self.raised = False
        self._previous: Any = None

    @classmethod
    def install(cls) -> TermFlag:
        flag = cls()
        try:
            flag._previous = signal.signal(signal.SIGTERM, flag._handle)
        except ValueError:  # not the main thread (e.g. embedded use): no handler
            flag._previous = None
        return flag

    def _handle(self, signum: int, frame: Any) -> None:
        self.raised = True
        log.warning("SIGTERM received: will checkpoint and stop at the end of this iteration")

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


#: Bytes per outer-box pixel: per visit (image f4, variance f4, mask i4, good and convergence
#: flags), and per sub-filter (float32 model state: two model and two accumulator buffers,
#: inverse weights, amplified planes, output planes; nImage i4; with a share of the per-pixel
#: images: static model, weights, work images).  Measured on 2048×4096 × 12 visits × 3
#: sub-filters: one rank 3.07 GiB (3.17 while numba compiles; this rule: 3.30 GiB), two ranks
#: 1.71 GiB (rule: 1.90 GiB).
BYTES_PER_PIXEL_VISIT = 4 + 4 + 4 + 1 + 1
BYTES_PER_PIXEL_SUBFILTER = 68
#: the interpreter with numpy, scipy, astropy, numba and h5py loaded, and numba's compiler at work
BASELINE_BYTES = 400 * 2**20


def memory_per_rank(plan: Plan, num_visits: int, num_subfilters: int) -> int:
    """Peak bytes a rank of ``plan`` needs (largest outer box), by the rule of docs/performance.md."""
    pixels = max(plan.tile(r).outer.size for r in range(plan.size))
    return BASELINE_BYTES + pixels * (num_visits * BYTES_PER_PIXEL_VISIT + num_subfilters * BYTES_PER_PIXEL_SUBFILTER)


def parse_bytes(text: str) -> int:
    """``"4G"``, ``"500M"``, ``"2.5GB"``, ``"123456"`` → bytes."""
    units = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = t[-1] if t and t[-1] in units else ""
    try:
        return int(float(t[: len(t) - len(unit)]) * units[unit])
    except ValueError:
        raise InputError(f"--max-memory '{text}' is not a size like 4G or 500M") from None


def input_files(inputs: RunInputs) -> list[str]:
    """Every file the run reads, in order (for the checkpoint's input digest)."""
    files: list[str] = []
    for info in inputs.infos:
        files += [f for f in (info.path, info.variance_path, info.mask_path) if f]
    return files


def on_root(comm: Any, fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 and broadcast its result; an MpidcrError there is raised on every rank."""
    outcome: tuple[str, Any] = ("ok", None)
    if comm.rank == 0:
        try:
            outcome = ("ok", fn())
        except MpidcrError as exc:
            outcome = ("error", (type(exc), str(exc)))
    outcome = comm.bcast(outcome, root=0)
    if outcome[0] == "error":
        exc_type, message = outcome[1]
        error = exc_type(message)
        error.collective = True  # every rank raises it: no abort needed, rank 0 reports
        raise error
    return outcome[1]


def prepare_inputs(
    entries: list[WarpEntry],
    config: DcrConfig,
    site: Site | None = None,
    pixel_scale: float | None = None,
) -> RunInputs:
    """Read every warp's headers, resolve metadata and DCR shifts, and validate (before any pixels)."""
    config.validate()
    if len(entries) < 2:
        raise InputError(f"{len(entries)} warp(s) given; at least 2 visits are needed")
    site = site or Site()
    infos = [resolve_geometry(scan_warp(e.path, e.overrides, e.plain), site) for e in entries]
    check_consistent(infos)
    scale = pixel_scale if pixel_scale is not None else pixel_scale_arcsec(infos[0].wcs_header)
    if scale is None:
        raise InputError(f"{infos[0].path}: no celestial WCS to give the pixel scale; pass --pixel-scale")
    notices: set[str] = set()
    observations = [observation_or_error(i, site, notices) for i in infos]
    K = config.num_subfilters
    shifts = []
    for info, obs in zip(infos, observations, strict=True):
        try:
            shifts.append(
                dcr_shifts(
                    obs,
                    config.effectiveWavelength,
                    config.bandwidth,
                    K,
                    scale,
                    config.splitSubfilters,
                    config.splitThreshold,
                )
            )
        except MpidcrError as exc:
            raise InputError(f"{info.path}: {exc}") from None
    return RunInputs(infos, observations, shifts, union_mask_planes(infos), infos[0].shape, scale, config)


def inputs_from_manifest(manifest: Manifest, config: DcrConfig, pixel_scale: float | None = None) -> RunInputs:
    return prepare_inputs(manifest.warps, config, manifest.site, pixel_scale)


def _visits_table(inputs: RunInputs, result: DcrResult) -> np.ndarray:
    K = inputs.config.num_subfilters
    dtype = np.dtype(
        [
            ("visit", "S32"),
            ("file", "S256"),
            ("airmass", "f8"),
            ("elevation", "f8"),
            ("parallactic_angle", "f8"),
            ("rotation_angle", "f8"),
            ("weight", "f8"),
            ("psf_fwhm", "f8"),
            ("max_shift", "f8"),
            ("metric", "f8"),
            ("variance_scale", "f8"),
            ("shift", "f8", (K, 2)),
        ]
    )
    rows = np.zeros(len(inputs.infos), dtype=dtype)
    for v, (info, obs, sh) in enumerate(zip(inputs.infos, inputs.observations, inputs.shifts, strict=True)):
        psf = info.meta.get("psfFwhm")
        rows[v] = (
            info.visit.encode()[:32],
            info.path.encode()[:256],
            obs.airmass,
            obs.elevation,
            obs.parallactic_angle,
            obs.rotation_angle,
            result.visit_weights[v],
            np.nan if psf is None else psf,
            sh.max_abs,
            result.visit_metrics[v] if v < len(result.visit_metrics) else np.nan,
            result.variance_scale[v] if v < len(result.variance_scale) else 1.0,
            sh.mean,
        )
    return rows


def _convergence_table(result: DcrResult) -> np.ndarray:
    dtype = np.dtype([("iteration", "i4"), ("metric", "f8"), ("gain", "f8"), ("seconds", "f8")])
    return np.array([(h.iteration, h.metric, h.gain, h.seconds) for h in result.history], dtype=dtype)


def run(
    inputs: RunInputs,
    output: str,
    comm: Any | None = None,
    tiles: str | None = None,
    output_mode: str = "auto",
    overwrite: bool = False,
    checkpoint: str | None = None,
    checkpoint_every: int = 0,
    resume: str | None = None,
    max_memory: int | None = None,
) -> dict[str, Any]:
    """Build the DCR model of ``inputs`` on all ranks of ``comm`` and write ``output``; returns a summary.

    With ``checkpoint_every`` K > 0 a checkpoint is written every K iterations;
    SIGTERM (what Slurm sends before a kill) makes the run checkpoint at the end
    of the current iteration and stop with :class:`Preempted` (exit code 75).
    ``resume`` continues from such a checkpoint.  ``max_memory`` (bytes per rank) refuses a
    decomposition whose estimated peak memory exceeds it, suggesting a rank count.
    """
    comm = comm or SerialComm()
    checkpoint = checkpoint or f"{output}.ckpt"
    cfg = inputs.config
    t0 = time.perf_counter()

    def check_output() -> None:
        if os.path.exists(output) and not overwrite:
            raise InputError(f"{output}: output file exists (use --overwrite)")
        parent = os.path.dirname(os.path.abspath(output))
        if not os.path.isdir(parent):
            raise InputError(f"{output}: directory {parent} does not exist")

    on_root(comm, check_output)
    max_shift = max(s.max_abs for s in inputs.shifts)
    buffer = dcr_buffer(max_shift)
    halo = halo_width(cfg, buffer)
    try:  # the same on every rank: a collective error, reported once
        dims = parse_tiles(tiles) if tiles else choose_dims(comm.size, inputs.shape)
        if dims[0] * dims[1] != comm.size:
            raise InputError(f"--tiles {dims[0]}x{dims[1]} needs {dims[0] * dims[1]} ranks, not {comm.size}")
        plan = Plan(inputs.shape, dims, halo if comm.size > 1 else 0).validate()
    except MpidcrError as exc:
        exc.collective = True  # type: ignore[attr-defined]
        raise
    if comm.rank == 0:
        log.info(
            "%d visits, patch %dx%d, K=%d, max DCR shift %.2f px (buffer %d), halo %d px, tiles %dx%d on %d rank(s)",
            len(inputs.infos),
            *inputs.shape,
            cfg.num_subfilters,
            max_shift,
            buffer,
            halo,
            *dims,
            comm.size,
        )
    need = memory_per_rank(plan, len(inputs.infos), cfg.num_subfilters)
    if max_memory is not None and max_memory <= BASELINE_BYTES:
        error = InputError(
            f"--max-memory {max_memory / 2**30:.2f} GiB is below the {BASELINE_BYTES / 2**30:.2f} GiB "
            "a rank needs before it holds any pixels"
        )
        error.collective = True  # type: ignore[attr-defined]
        raise error
    if max_memory is not None and need > max_memory:
        ranks = comm.size
        while (
            memory_per_rank(
                Plan(inputs.shape, choose_dims(ranks, inputs.shape), halo), len(inputs.infos), cfg.num_subfilters
            )
            > max_memory
            and ranks < 4096
        ):
            ranks *= 2
        error = InputError(
            f"a rank needs about {need / 2**30:.2f} GiB but --max-memory is "
            f"{max_memory / 2**30:.2f} GiB; use about {ranks} ranks"
        )
        error.collective = True  # type: ignore[attr-defined]
        raise error
    if comm.rank == 0:
        log.info("memory per rank: about %.2f GiB", need / 2**30)
    tile = plan.tile(comm.rank)

    # the numba kernels are compiled (or read back from the on-disk cache) here, after every check
    # that can refuse the run; the timings exclude it
    compile_seconds = warm_up(cfg, tiled=comm.size > 1)
    if comm.rank == 0:
        log.info("kernels ready in %.1f s (compiled, or read back from the on-disk cache)", compile_seconds)
    t_read = time.perf_counter()
    shape = (len(inputs.infos), *tile.outer.shape)
    images, variances, masks = np.empty(shape, np.float32), np.empty(shape, np.float32), np.empty(shape, np.int32)
    for v, info in enumerate(inputs.infos):
        read_window(info, tile.outer, inputs.mask_planes, out=(images[v], variances[v], masks[v]))
    warps = WarpStack(
        images,
        variances,
        masks,
        inputs.mask_planes,
        inputs.shifts,
        np.array([o.airmass for o in inputs.observations]),
        [i.visit for i in inputs.infos],
    )
    read_seconds = time.perf_counter() - t_read

    if comm.size > 1:
        from .parallel.halo import MpiHaloExchanger
        from .parallel.reduce import MpiReducer

        cart = comm.mpi.Create_cart(list(dims), periods=[False, False], reorder=False)
        reducer: Any = MpiReducer(cart)
        exchanger: Any = MpiHaloExchanger(cart, plan, comm.rank)
    else:
        reducer, exchanger = SerialReducer(), None

    config_digest = cfg.digest()
    input_digest = inputs_digest(input_files(inputs))
    state = None
    if resume:
        try:
            state = read_checkpoint(resume, tile.outer, config_digest, input_digest)
        except MpidcrError as exc:  # every rank reads the same attributes: report once
            exc.collective = True  # type: ignore[attr-defined]
            raise
        if comm.rank == 0:
            log.info("resuming from %s at iteration %d", resume, state.iteration)
    term = TermFlag.install()

    def after_iteration(st: SolverState) -> None:
        stop = float(reducer.max([1.0 if term.raised else 0.0])[0]) > 0  # all ranks decide together
        if stop or (checkpoint_every > 0 and st.iteration % checkpoint_every == 0):
            write_checkpoint(
                checkpoint,
                st,
                tile.inner_local,
                tile.inner,
                inputs.shape,
                config_digest,
                input_digest,
                comm,
                output_mode,
            )
            if comm.rank == 0:
                log.info("checkpoint of iteration %d written to %s", st.iteration, checkpoint)
        if stop:
            raise Preempted(
                f"SIGTERM: stopped after iteration {st.iteration}; checkpoint {checkpoint}; "
                f"continue with --resume {checkpoint}"
            )

    def progress(n: int, metric: float, gain: float) -> None:
        log.info("iteration %d/%d: metric %.6g, gain %.3f", n, cfg.max_iterations, metric, gain)

    solver = DcrSolver(warps, cfg, tile=tile, reducer=reducer, exchanger=exchanger, buffer=buffer, progress=progress)
    try:
        result = solver.run(resume=state, after_iteration=after_iteration)
    finally:
        term.restore()
    solve_seconds = time.perf_counter() - t0 - compile_seconds - read_seconds

    t_write = time.perf_counter()
    inner = tile.inner_local
    # views of the inner box in the file's dtypes (a copy only where the dtype differs): copying
    # ~400 MB of fresh pages for 2048x4096 took longer than writing them
    arrays = {
        "model": np.asarray(result.planes[(..., *inner)], np.float32),
        "coadd/image": np.asarray(result.coadd[inner], np.float32),
        "coadd/variance": np.asarray(result.variance[inner], np.float32),
        "coadd/mask": np.asarray(result.mask[inner], np.int32),
        "coadd/static": np.asarray(result.static.image[inner], np.float32),
        "nimage": np.asarray(result.nimage[(..., *inner)], np.int32),
        "nimage_total": np.asarray(result.nimage_total[inner], np.int32),
    }

    def build_meta() -> ModelMeta:
        attrs = {
            "effective_wavelength": float(cfg.effectiveWavelength),
            "bandwidth": float(cfg.bandwidth),
            "subfilter_edges": subfilter_edges(cfg.effectiveWavelength, cfg.bandwidth, cfg.num_subfilters),
            "num_subfilters": cfg.num_subfilters,
            "config": cfg.to_json(),
            "wcs_header": inputs.infos[0].wcs_header,
            "pixel_scale": inputs.pixel_scale,
            "software_version": __version__,
            "num_ranks": comm.size,
            "tile_grid": np.array(dims),
            "halo": halo,
            "buffer": buffer,
            "stop_reason": result.stop_reason,
            "iterations": result.iterations,
            "image_interp_order": int(cfg.imageInterpOrder),
            "accelerate_model": float(cfg.accelerateModel),
        }
        chunk = (
            min(256, max(1, math.ceil(inputs.shape[0] / dims[0]))),
            min(256, max(1, math.ceil(inputs.shape[1] / dims[1]))),
        )
        return ModelMeta(
            inputs.shape,
            cfg.num_subfilters,
            chunk,
            _visits_table(inputs, result),
            _convergence_table(result),
            attrs,
            inputs.mask_planes,
        )

    meta = comm.bcast(build_meta() if comm.rank == 0 else None, root=0)
    mode = write_model(output, ModelTile(tile.inner, arrays), meta, comm, output_mode)
    write_seconds = time.perf_counter() - t_write
    # peak resident memory of the largest rank (ru_maxrss is in KiB on Linux)
    peaks = comm.gather(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    summary = {
        "output": output,
        "iterations": result.iterations,
        "stop_reason": result.stop_reason,
        "metric": result.history[min(result.iterations, len(result.history) - 1)].metric,
        "ranks": comm.size,
        "tiles": dims,
        "halo": halo,
        "output_mode": mode,
        "peak_memory_bytes": max(peaks) if peaks else None,
        "seconds": {
            "compile": compile_seconds,
            "read": read_seconds,
            "solve": solve_seconds,
            "write": write_seconds,
            "total": time.perf_counter() - t0 - compile_seconds,
        },
    }
    if comm.rank == 0:
        log.info(
            "wrote %s (%s): %d iterations, stop: %s, %.1f s",
            output,
            mode,
            result.iterations,
            result.stop_reason,
            summary["seconds"]["total"],
        )
    return summary
