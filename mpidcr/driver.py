"""The data flow of a run, in phases: claim outputs → decompose → compile → read → solve → write.

The only module that holds the communicator, the decomposition and the model together; serial
runs take the same path with a one-tile plan.  :func:`run` calls the phases in order and times
each (:class:`RunSummary`).  Everything that can refuse a run (paths, locks, disk space,
decomposition, memory) is checked before any pixel is read, on rank 0 where it concerns files,
and reported once; a SIGTERM is honoured at the phase boundaries and after every iteration
(exit 75), except during the final write, which is finished.
"""

from __future__ import annotations

import logging
import os
import resource
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import h5py
import numpy as np
from numpy.typing import NDArray

from . import __version__
from .coadd import StaticModel
from .config import DcrConfig
from .dcr import Observation, Site, VisitShifts, dcr_buffer, dcr_shifts, lsst_buffer, subfilter_edges
from .errors import InputError, MpidcrError, Preempted
from .finishing import Region, region_mask
from .halo import halo_width
from .io.checkpoint import inputs_digest, read_checkpoint, verify_checkpoint, write_checkpoint
from .io.finish import interpolate_no_data, measure_coadd_psf
from .io.manifest import Manifest, WarpEntry
from .io.modelfile import ModelMeta, ModelTile, chunk_shape, model_file_bytes, write_model
from .io.outputs import OutputLock, SpaceReservation, free_bytes
from .io.paths import check_output_path, same_file
from .io.psf import measured_psf, visit_psf
from .io.regions import read_regions
from .io.static import StaticInfo, check_static_grid, read_static_window, scan_static, static_files, static_mask_planes
from .io.warps import (
    WarpInfo,
    check_consistent,
    observation_or_error,
    read_window,
    resolve_geometry,
    scan_warp,
    union_mask_planes,
)
from .io.wcs import celestial_wcs, pixel_scale_arcsec
from .masks import add_plane
from .parallel.comm import Comm, SerialComm
from .preemption import STOP
from .psf import BlurPlan, Psf, PsfModel, fwhm_pixels, weighted_sum
from .rejection import ArtifactMasks, find_artifacts
from .resources import BASELINE_BYTES, memory_per_rank, memory_problem
from .solver import DcrResult, DcrSolver, SolverState, WarpStack, history_table
from .tiling import Box, Plan, Tile, choose_dims, parse_tiles
from .warmup import PARTS, warm_part, warm_up

if TYPE_CHECKING:
    from .subregions import SubregionOutcome

log = logging.getLogger(__name__)
T = TypeVar("T")


# ----------------------------------------------------------------------------- records
@dataclass
class RunInputs:
    """Validated inputs of a run, identical on every rank.

    ``sources``: other files the run reads (manifest, configuration file), never to be written.
    ``static``: the static model T given with ``--static-model`` (None: the coadd of the warps).
    ``psfs``: each visit's PSF (None where unknown); ``psf_model``: the PSF-aware model's reference
    PSF and matching variances (None: the constant-PSF model).
    """

    infos: list[WarpInfo]
    observations: list[Observation]
    shifts: list[VisitShifts]
    mask_planes: dict[str, int]
    shape: tuple[int, int]
    pixel_scale: float
    config: DcrConfig
    sources: list[str] = field(default_factory=list)
    static: StaticInfo | None = None
    psfs: list[Psf | None] = field(default_factory=list)
    psf_model: PsfModel | None = None
    bright_objects: list[Region] = field(default_factory=list)  # doMaskBrightObjects' regions
    flux_scales: NDArray | None = None  # scaleZeroPoint: each visit's factor (None: all 1)
    psf_matched: list[WarpInfo] | None = None  # LSST's PSF-matched warps, one per visit (None: made here)
    artifacts: ArtifactMasks | None = None  # set by the rejection phase

    @property
    def blur(self) -> BlurPlan | None:
        """The PSF-aware model's blur plan (None: the constant-PSF model)."""
        if self.psf_model is None:
            return None
        return self.psf_model.plan(self.config.psfTolerance)

    def files(self) -> list[str]:
        """Every pixel file the run reads, in order (for the resume digest)."""
        out: list[str] = []
        for info in [*self.infos, *(self.psf_matched or [])]:
            out += [f for f in (info.path, info.variance_path, info.mask_path) if f]
        return out + static_files(self.static)


@dataclass(frozen=True)
class RunOptions:
    """How to run: output, decomposition, checkpoints and limits (the ``mpidcr run`` options).

    checkpoint_every : write a checkpoint every so many iterations (0: only on SIGTERM).
    max_memory : bytes a rank may use (None: what the machine allows).
    """

    output: str
    tiles: str | None = None
    output_mode: str = "auto"
    overwrite: bool = False
    checkpoint: str | None = None
    checkpoint_every: int = 0
    resume: str | None = None
    max_memory: int | None = None

    @property
    def checkpoint_path(self) -> str:
        return self.checkpoint or f"{self.output}.ckpt"


@dataclass(frozen=True)
class Layout:
    """The decomposition of a run: plan, this rank's tile, DCR buffer and halo (pixels)."""

    plan: Plan
    tile: Tile
    buffer: int
    halo: int
    max_shift: float


@dataclass
class RunSummary:
    """What a run did: its result, decomposition and the seconds of each phase."""

    output: str
    iterations: int
    stop_reason: str
    metric: float
    ranks: int
    tiles: tuple[int, int]
    halo: int
    output_mode: str
    peak_memory_bytes: int | None
    seconds: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class PhaseTimer:
    """Wall-clock seconds of named phases."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0


# ----------------------------------------------------------------------------- collective helpers
def _collective(error: MpidcrError) -> MpidcrError:
    error.collective = True  # type: ignore[attr-defined]  # every rank raises it: rank 0 reports
    return error


def on_root(comm: Comm, fn: Callable[[], T]) -> T:
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
        raise _collective(exc_type(message))
    return outcome[1]


def stop_point(comm: Comm, where: str) -> None:
    """Raise Preempted on every rank if any rank has received SIGTERM (a collective call)."""
    if comm.any_rank(STOP.requested):
        raise Preempted(f"SIGTERM {where}: nothing to checkpoint yet; rerun the same command")


# ----------------------------------------------------------------------------- inputs
def _check_unique_visits(infos: list[WarpInfo]) -> None:
    """Two files of one visit (same explicit visit id) cannot both be used."""
    seen: dict[str, str] = {}
    for info in infos:
        visit = info.meta.get("visit")
        if visit is None:
            continue
        if visit in seen:
            raise InputError(f"{info.path}: visit {visit} is also given by {seen[visit]}; each visit may appear once")
        seen[visit] = info.path


def select_visits(infos: list[WarpInfo], max_psf_fwhm: float | None) -> list[WarpInfo]:
    """select.maxPsfFwhm: leave out visits whose PSF FWHM (PSF-FWHM, arcsec) is above it (each
    named in a warning); every visit must then carry PSF-FWHM, and at least 2 must remain."""
    if max_psf_fwhm is None:
        return infos
    kept = []
    for info in infos:
        fwhm = info.meta.get("psfFwhm")
        if fwhm is None:
            raise InputError(f"{info.path}: no PSF FWHM (PSF-FWHM keyword or psfFwhm in the manifest), which "
                             f"select.maxPsfFwhm = {max_psf_fwhm} needs")  # fmt: skip
        if fwhm > max_psf_fwhm:
            log.warning("%s: PSF FWHM %.3g arcsec is above select.maxPsfFwhm = %g; visit left out", info.path, fwhm,
                        max_psf_fwhm)  # fmt: skip
        else:
            kept.append(info)
    if len(kept) < 2:
        raise InputError(f"select.maxPsfFwhm = {max_psf_fwhm} arcsec leaves {len(kept)} of {len(infos)} visits; "
                         "at least 2 are needed")  # fmt: skip
    return kept


def prepare_inputs(
    entries: list[WarpEntry],
    config: DcrConfig,
    site: Site | None = None,
    pixel_scale: float | None = None,
    sources: list[str] | None = None,
    static_model: str | None = None,
    measure_psf: bool = False,
    bright_object_mask: str | None = None,
    psf_matched_warps: list[str] | None = None,
) -> RunInputs:
    """Read every warp's headers (and the static model's, if given), resolve metadata and DCR
    shifts, and validate (before any pixels)."""
    config.validate()
    if len(entries) < 2:
        raise InputError(f"{len(entries)} warp(s) given; at least 2 visits are needed")
    site = site or Site()
    angles, rotation = config.lsst("parallacticAngle"), config.lsst("rotationDirection")
    infos = [resolve_geometry(scan_warp(e.path, e.overrides, e.plain), site, angles, rotation) for e in entries]
    _check_unique_visits(infos)
    infos = select_visits(infos, config.select.maxPsfFwhm)
    check_consistent(infos)
    scale = pixel_scale if pixel_scale is not None else pixel_scale_arcsec(infos[0].wcs_header)
    if scale is None:
        raise InputError(f"{infos[0].path}: no celestial WCS to give the pixel scale; pass --pixel-scale")
    notices: set[str] = set()
    observations = [observation_or_error(i, site, notices) for i in infos]
    cfg = config
    shifts = []
    for info, obs in zip(infos, observations, strict=True):
        try:
            shifts.append(dcr_shifts(obs, cfg.effectiveWavelength, cfg.bandwidth, cfg.num_subfilters, scale,
                                     **cfg.shift_options()))  # fmt: skip
        except MpidcrError as exc:
            raise InputError(f"{info.path}: {exc}") from None
    planes = union_mask_planes(infos)
    static = None
    if static_model:
        static = scan_static(static_model)
        check_static_grid(static, infos[0])
        planes = static_mask_planes(static, planes)
    psfs = visit_psfs(infos, scale, planes, measure_psf)
    return RunInputs(infos, observations, shifts, planes, infos[0].shape, scale, config, list(sources or []),
                     static, psfs, psf_model(config, infos, psfs), bright_objects(config, bright_object_mask),
                     zero_point_scales(infos, float(config.scaleZeroPoint.zeroPoint)),
                     psf_matched_infos(infos, psf_matched_warps or []))  # fmt: skip


def psf_matched_infos(infos: list[WarpInfo], paths: list[str]) -> list[WarpInfo] | None:
    """The PSF-matched warp of each visit (by visit id), on the warps' grid; None when none is
    given (artifact rejection then PSF-matches the warps itself)."""
    if not paths:
        return None
    by_visit: dict[str, WarpInfo] = {}
    for path in paths:
        info = scan_warp(path)
        if info.visit in by_visit:
            raise InputError(f"{path}: a second PSF-matched warp of visit {info.visit} ({by_visit[info.visit].path})")
        check_consistent([infos[0], info])
        by_visit[info.visit] = info
    missing = [info for info in infos if info.visit not in by_visit]
    if missing:
        raise InputError(f"{missing[0].path}: no PSF-matched warp of visit {missing[0].visit} among the "
                         f"{len(paths)} psf_matched_warps; give one for every visit or none")  # fmt: skip
    return [by_visit[info.visit] for info in infos]


def zero_point_scales(infos: list[WarpInfo], target: float) -> NDArray | None:
    """scaleZeroPoint: each warp scaled by 10^(0.4 (target − its zero point)) when every warp has a
    zero point (MAGZERO, ZEROPT, MAGZPT, PHOTZP or FLUXMAG0; or zeroPoint in the manifest); None
    (no scaling: LSST's warps are calibrated already) when none has; an error naming the first
    warp without one when only some have."""
    points = [info.meta.get("zeroPoint") for info in infos]
    if all(p is None for p in points):
        return None
    missing = [info.path for info, p in zip(infos, points, strict=True) if p is None]
    if missing:
        raise InputError(f"{missing[0]}: no photometric zero point (MAGZERO, ZEROPT, MAGZPT, PHOTZP, FLUXMAG0 or "
                         f"zeroPoint in the manifest) while {len(infos) - len(missing)} other warps have one")  # fmt: skip
    scales = np.array([10.0 ** (0.4 * (target - float(info.meta["zeroPoint"]))) for info in infos])
    log.info("scaleZeroPoint: warps scaled to zero point %.3f (factors %.4g to %.4g)", target, scales.min(),
             scales.max())  # fmt: skip
    return scales


def bright_objects(config: DcrConfig, path: str | None) -> list[Region]:
    """doMaskBrightObjects' regions (a file is required when it is on; one without it is unused)."""
    if not config.doMaskBrightObjects:
        if path:
            log.warning("%s: doMaskBrightObjects is false, so the bright-object regions are not used", path)
        return []
    if not path:
        raise InputError("doMaskBrightObjects = true needs the bright-object regions: --bright-object-mask FILE or "
                         "bright_object_mask = \"FILE\" in the manifest")  # fmt: skip
    return read_regions(path)


def visit_psfs(infos: list[WarpInfo], pixel_scale: float, planes: dict[str, int], measure: bool) -> list[Psf | None]:
    """Each visit's PSF (io/psf.py's order), measured from its stars where none is given and
    ``measure`` asks for it."""
    psfs: list[Psf | None] = []
    for info in infos:
        psf = visit_psf(info, pixel_scale)
        if psf is None and measure:
            psf = measured_psf(info, pixel_scale, planes)
            log.info("%s: PSF measured from its stars, FWHM %.3f arcsec", info.path, psf.fwhm)
        psfs.append(psf)
    return psfs


def psf_model(config: DcrConfig, infos: list[WarpInfo], psfs: list[Psf | None]) -> PsfModel | None:
    """The PSF-aware model's reference PSF and matching kernels when usePsf asks for it (unset:
    when every visit has a PSF, under mpidcr's profile, without LSST's subregions); None for the
    constant-PSF model."""
    missing = [info.path for info, psf in zip(infos, psfs, strict=True) if psf is None]
    if config.usePsf and missing:
        raise InputError(f"{missing[0]}: no PSF (no PSF HDU, no psfFwhm in the manifest, no PSF-FWHM/SEEING/FWHM "
                         "keyword); usePsf = true needs one for every visit (or --measure-psf)")  # fmt: skip
    if config.usePsf and config.lsst("subregions"):
        raise InputError("usePsf = true and lsstCompat.subregions: the PSF-aware model is one global fit; "
                         "set lsstCompat.subregions=false")  # fmt: skip
    automatic = config.usePsf is None  # wherever every visit has a PSF, but not in LSST's own behaviour
    use = (not missing and config.profile != "lsst" and not config.lsst("subregions")) if automatic else config.usePsf
    if not use:
        if len(missing) == len(infos):
            log.info("no visit has a PSF: the constant-PSF model, and products without a PSF")
        elif missing:
            log.info("%d of %d visits have no PSF (first: %s): the constant-PSF model", len(missing), len(infos),
                     missing[0])  # fmt: skip
        return None
    model = PsfModel.of([p for p in psfs if p is not None], wings=int(config.psfWings))
    if automatic:
        if not np.any(model.variances) and not np.any(model.wing_weights):
            log.info("every visit has the same PSF: the constant-PSF model (the same forward model)")
            return None
        log.info("every visit has a PSF: the PSF-aware model (usePsf=false for the constant-PSF one)")
    return model


def inputs_from_manifest(manifest: Manifest, config: DcrConfig, pixel_scale: float | None = None,
                         sources: list[str] | None = None, static_model: str | None = None,
                         measure_psf: bool = False, bright_object_mask: str | None = None) -> RunInputs:  # fmt: skip
    """The inputs a manifest names (``static_model`` and ``bright_object_mask``, e.g. from the
    command line, win over its own)."""
    extra = ([manifest.source] if manifest.source else []) + list(sources or [])
    return prepare_inputs(manifest.warps, config, manifest.site, pixel_scale, extra,
                          static_model or manifest.static_model or None, measure_psf,
                          bright_object_mask or manifest.bright_object_mask or None,
                          manifest.psf_matched_warps)  # fmt: skip


# ----------------------------------------------------------------------------- phase: claim outputs
class OutputClaim:
    """Rank 0's hold on the output for the duration of a run: its lock and a space reservation."""

    def __init__(self, lock: OutputLock | None = None, reservation: SpaceReservation | None = None):
        self.lock, self.reservation = lock, reservation

    def release_space(self) -> None:
        if self.reservation is not None:
            self.reservation.release()

    def close(self) -> None:
        self.release_space()
        if self.lock is not None:
            self.lock.release()


def claim_outputs(inputs: RunInputs, options: RunOptions, comm: Comm) -> OutputClaim:
    """Check the output and checkpoint paths and lock the output (rank 0).

    Refused, before any work: an output that is an input, a directory, unwritable or existing
    without ``overwrite``; a checkpoint path equal to the output or naming an input; a locked
    output (another run writes it).
    """
    claim = OutputClaim()

    def check() -> None:
        sources = inputs.files() + inputs.sources
        check_output_path(options.output, sources, options.overwrite)
        ckpt = options.checkpoint_path
        if same_file(ckpt, options.output):
            raise InputError(f"{ckpt}: the checkpoint path is the output path; give another --checkpoint")
        resumed = options.resume
        check_output_path(ckpt, [s for s in sources if not (resumed and same_file(s, resumed))], True, "checkpoint")
        claim.lock = OutputLock(options.output).acquire()

    on_root(comm, check)
    return claim


def reserve_space(inputs: RunInputs, options: RunOptions, claim: OutputClaim, comm: Comm) -> None:
    """Allocate the model file's bytes beside the output until the write (rank 0): a file system
    too full for the model, or a quota, is found now rather than after the solve."""

    def reserve() -> None:
        need = model_file_bytes(inputs.shape, inputs.config.num_subfilters, len(inputs.infos))
        directory = os.path.dirname(os.path.abspath(options.output))
        claim.reservation = SpaceReservation(directory, need, options.output)

    on_root(comm, reserve)


# ----------------------------------------------------------------------------- phase: decompose
def decompose(inputs: RunInputs, options: RunOptions, comm: Comm) -> Layout:
    """The tile grid, this rank's tile, the halo, and the memory check (collective errors)."""
    cfg = inputs.config
    max_shift = max(s.max_abs for s in inputs.shifts)
    blur = inputs.blur
    halo = halo_width(cfg, dcr_buffer(max_shift), blur.support if blur else 0)
    # the DCR buffer of the metric's noise region (and of LSST's subregion boxes): LSST's task takes
    # it from the mean shifts (its bufferSize), mpidcr from the largest shift
    lsst = cfg.lsst("iterationControl") or cfg.lsst("subregions")
    buffer = lsst_buffer(inputs.shifts) if lsst else dcr_buffer(max_shift)
    try:  # the same on every rank: a collective error, reported once
        dims = parse_tiles(options.tiles) if options.tiles else choose_dims(comm.size, inputs.shape)
        if dims[0] * dims[1] != comm.size:
            raise InputError(f"--tiles {dims[0]}x{dims[1]} needs {dims[0] * dims[1]} ranks, not {comm.size}")
        plan = Plan(inputs.shape, dims, halo if comm.size > 1 else 0).validate()
        need = memory_per_rank(plan, len(inputs.infos), cfg.num_subfilters, *_psf_sizes(blur, cfg))
        _check_memory_limit(inputs, plan, need, options.max_memory)
    except MpidcrError as exc:
        raise _collective(exc) from None
    _check_machine_memory(inputs, plan, need, comm)
    if comm.rank == 0:
        log.info(
            "%d visits, patch %dx%d, K=%d, max DCR shift %.2f px (buffer %d), halo %d px, tiles %dx%d on %d "
            "rank(s), about %.2f GiB per rank",
            len(inputs.infos), *inputs.shape, cfg.num_subfilters, max_shift, buffer, halo, *dims, comm.size,
            need / 2**30,
        )  # fmt: skip
    return Layout(plan, plan.tile(comm.rank), buffer, halo, max_shift)


def _check_machine_memory(inputs: RunInputs, plan: Plan, need: int, comm: Comm) -> None:
    """Refuse (on every rank) a plan whose ranks would not fit in their node's memory or ulimit."""
    problem = memory_problem(need, comm.node_size())
    if not comm.any_rank(problem is not None):
        return
    text, allowed = on_root(comm, lambda: problem or ("another node is short of memory", need))
    hint = f" (ranks of at most {allowed / 2**30:.1f} GiB: about {ranks_within(inputs, plan, allowed)} of them)"
    raise _collective(InputError(f"not enough memory for this decomposition: {text}; use more nodes or ranks"
                                 f"{hint if allowed > BASELINE_BYTES else ''}"))  # fmt: skip


def _check_memory_limit(inputs: RunInputs, plan: Plan, need: int, max_memory: int | None) -> None:
    """``--max-memory``: refuse a plan needing more per rank, suggesting a rank count."""
    if max_memory is None:
        return
    if max_memory <= BASELINE_BYTES:
        raise InputError(
            f"--max-memory {max_memory / 2**30:.2f} GiB is below the {BASELINE_BYTES / 2**30:.2f} GiB "
            "a rank needs before it holds any pixels"
        )
    if need <= max_memory:
        return
    raise InputError(
        f"a rank needs about {need / 2**30:.2f} GiB but --max-memory is {max_memory / 2**30:.2f} GiB; "
        f"use about {ranks_within(inputs, plan, max_memory)} ranks"
    )


def ranks_within(inputs: RunInputs, plan: Plan, limit: int) -> int:
    """The smallest power-of-two multiple of ``plan``'s rank count whose ranks need at most ``limit`` bytes."""
    V, K = len(inputs.infos), inputs.config.num_subfilters
    ranks = plan.size
    while ranks < 4096 and memory_per_rank(Plan(inputs.shape, choose_dims(ranks, inputs.shape), plan.halo), V, K,
                                           *_psf_sizes(inputs.blur, inputs.config)) > limit:  # fmt: skip
        ranks *= 2
    return ranks


def _psf_sizes(blur: BlurPlan | None, config: DcrConfig) -> tuple[int, int, int, bool]:
    """(blur groups, wings, the blurs' reach in pixels, streamed sweep) of the PSF-aware model for the
    memory rule ((0, 0, 0, True): the constant-PSF model)."""
    if blur is None:
        return 0, 0, 0, True
    return len(blur.variances), len(blur.wing_sigmas), blur.support, int(config.imageInterpOrder) == 1


# ----------------------------------------------------------------------------- phase: read
def ready_kernels(config: DcrConfig, comm: Comm, psf_aware: bool) -> None:
    """Compile the kernels a run of ``config`` calls, or read them back from the on-disk kernel cache,
    so that each is compiled once and never by every rank at the same time.  First the ranks on
    rank 0's node share the groups of kernels (:data:`mpidcr.warmup.PARTS`) and compile them side
    by side; then rank 0, then the first rank of every other node (whose cache may be node-local,
    ``--kernel-cache``), then every other rank, warm up completely — by then mostly reading from
    the cache.  Waiting ranks sleep (no spinning), leaving the cores to the compiling ones.  One
    rank alone only warms up: the groups would compile nothing side by side, and from a warm cache
    loading them (templates, the PSF blur, order 3) took 0.45 s of kernels a run may not call."""
    node_rank, node_size, with_root = comm.node_info()
    if with_root and comm.size > 1:
        for index in range(node_rank, len(PARTS), node_size):
            seconds = warm_part(config, index)
            log.debug("rank %d: kernel group %d ready in %.2f s", comm.rank, index, seconds)
    if comm.size > 1:
        comm.quiet_barrier()
    stages = (comm.rank == 0, comm.rank != 0 and node_rank == 0, node_rank != 0)
    for mine in stages:
        if mine:
            seconds = warm_up(config, tiled=comm.size > 1, psf_aware=psf_aware)
            log.debug("rank %d: kernels compiled or loaded in %.2f s", comm.rank, seconds)
        if comm.size > 1:
            comm.quiet_barrier()


def read_tile(inputs: RunInputs, tile: Tile) -> WarpStack:
    """Every warp's window of this rank's outer box (no whole image is ever read)."""
    return read_box(inputs, tile.outer)


def read_box(inputs: RunInputs, box: Box) -> WarpStack:
    """Every warp's window of ``box`` (patch coordinates)."""
    shape = (len(inputs.infos), *box.shape)
    try:
        images, variances = np.empty(shape, np.float32), np.empty(shape, np.float32)
        masks = np.empty(shape, np.int32)
    except MemoryError:
        raise InputError(
            f"not enough memory for this rank's {shape[0]} warp windows of {shape[1]}x{shape[2]} pixels; "
            "use more ranks"
        ) from None
    for v, info in enumerate(inputs.infos):
        read_window(info, box, inputs.mask_planes, out=(images[v], variances[v], masks[v]))
        if inputs.flux_scales is not None:
            images[v] *= np.float32(inputs.flux_scales[v])
            variances[v] *= np.float32(inputs.flux_scales[v] ** 2)
        if inputs.artifacts is not None:  # the rejection phase's CLIPPED and streak pixels
            clipped, streak = inputs.artifacts.window(v, box)
            masks[v] |= np.where(clipped, np.int32(1 << inputs.mask_planes["CLIPPED"]), np.int32(0))
            masks[v] |= np.where(streak, np.int32(1 << inputs.mask_planes[inputs.config.streakMaskName]), np.int32(0))
    airmass = np.array([o.airmass for o in inputs.observations])
    return WarpStack(images, variances, masks, dict(inputs.mask_planes), inputs.shifts, airmass,
                     [i.visit for i in inputs.infos])  # fmt: skip


def read_static(inputs: RunInputs, box: Box) -> StaticModel | None:
    """The given static model T on ``box`` (None when T is to be the coadd of the warps)."""
    return None if inputs.static is None else read_static_window(inputs.static, box, inputs.mask_planes)


# ----------------------------------------------------------------------------- phase: solve
class CheckpointSchedule:
    """Called after every iteration: a checkpoint every ``every`` iterations, and on SIGTERM a
    checkpoint and :class:`Preempted` (exit 75) on every rank.

    The input digest (file contents, shared out over the ranks) is computed when first needed.
    A periodic checkpoint that cannot be written (no space, a write error) is skipped with a
    warning and the run goes on.
    """

    def __init__(self, path: str, every: int, inputs: RunInputs, layout: Layout, comm: Comm, mode: str):
        self.path, self.every, self.inputs, self.layout, self.comm, self.mode = path, every, inputs, layout, comm, mode
        self.config_digest = inputs.config.digest()
        self._input_digest: str | None = None

    def input_digest(self) -> str:
        if self._input_digest is None:
            self._input_digest = inputs_digest(self.inputs.files(), self.comm)
        return self._input_digest

    def __call__(self, state: SolverState) -> None:
        stop = self.comm.any_rank(STOP.requested)
        written, why = False, "no checkpoint was due"
        if stop or (self.every > 0 and state.iteration % self.every == 0):
            written, why = self.write(state)
        if stop:
            if written:
                raise Preempted(
                    f"SIGTERM: stopped after iteration {state.iteration}; checkpoint {self.path}; "
                    f"continue with --resume {self.path}"
                )
            raise Preempted(f"SIGTERM: stopped after iteration {state.iteration}, but {why}; rerun from the start")

    def write(self, state: SolverState) -> tuple[bool, str]:
        """Write the checkpoint of ``state``; (written, why not)."""
        K = state.model.shape[0]
        need = K * self.inputs.shape[0] * self.inputs.shape[1] * state.model.dtype.itemsize + 2**20
        free = on_root(self.comm, lambda: free_bytes(os.path.dirname(os.path.abspath(self.path))))
        if free < need:
            why = f"the checkpoint could not be written ({free / 2**20:.1f} MiB free, {need / 2**20:.1f} needed)"
            log.warning("iteration %d: %s", state.iteration, why)
            return False, why
        tile = self.layout.tile
        try:
            write_checkpoint(self.path, state, tile.inner_local, tile.inner, self.inputs.shape, self.config_digest,
                             self.input_digest(), self.comm, self.mode)  # fmt: skip
        except InputError as exc:
            why = f"the checkpoint could not be written ({exc})"
            log.warning("iteration %d: %s; the run goes on", state.iteration, why)
            return False, why
        if self.comm.rank == 0:
            log.info("checkpoint of iteration %d written to %s", state.iteration, self.path)
        return True, ""


def resume_state(path: str, schedule: CheckpointSchedule, tile: Tile, comm: Comm) -> SolverState:
    """The checkpointed state of this rank's tile, after rank 0 has verified the checkpoint."""
    digest = schedule.input_digest()
    iteration = on_root(comm, lambda: verify_checkpoint(path, schedule.config_digest, digest))
    if comm.rank == 0:
        log.info("resuming from %s at iteration %d", path, iteration)
    return read_checkpoint(path, tile.outer)


def solve_tile(inputs: RunInputs, warps: WarpStack, static: StaticModel | None, layout: Layout, options: RunOptions,
               comm: Comm) -> DcrResult:  # fmt: skip
    """Iterate the model of this rank's tile to the end condition (checkpoints on schedule)."""
    cfg = inputs.config
    reducer, exchanger = comm.decompose(layout.plan)
    schedule = CheckpointSchedule(options.checkpoint_path, options.checkpoint_every, inputs, layout, comm,
                                  options.output_mode)  # fmt: skip
    state = resume_state(options.resume, schedule, layout.tile, comm) if options.resume else None

    def progress(n: int, metric: float, gain: float) -> None:
        log.info("iteration %d/%d: metric %.6g, gain %.3f", n, solver.max_iterations, metric, gain)

    solver = DcrSolver(warps, cfg, tile=layout.tile, reducer=reducer, exchanger=exchanger, buffer=layout.buffer,
                       progress=progress, resume=state, static=static, blur=inputs.blur)  # fmt: skip
    return solver.run(hooks=[schedule])


# ----------------------------------------------------------------------------- phase: write
#: The visits table: one row per visit (shift: per sub-filter mean shift (dy, dx), pixels)
VISIT_COLUMNS: list[tuple[str, Any]] = [
    ("visit", object),  # variable-length UTF-8 in the file
    ("file", object),
    ("airmass", "f8"),
    ("elevation", "f8"),
    ("parallactic_angle", "f8"),
    ("rotation_angle", "f8"),
    ("weight", "f8"),
    ("psf_fwhm", "f8"),  # arcsec
    ("psf_sigma", "f8"),  # the PSF-aware model's matching kernel: its core's σ, pixels
    ("psf_wing", "f8"),  # and the total weight of its wing Gaussians (attrs psf_wing_sigmas)
    ("max_shift", "f8"),
    ("metric", "f8"),
    ("variance_scale", "f8"),
]


def visits_table(inputs: RunInputs, result: DcrResult) -> np.ndarray:
    import h5py

    K = inputs.config.num_subfilters
    text = h5py.string_dtype("utf-8")
    dtype = np.dtype([(n, text if t is object else t) for n, t in VISIT_COLUMNS] + [("shift", "f8", (K, 2))])
    rows = np.zeros(len(inputs.infos), dtype=dtype)
    for v, (info, obs, sh) in enumerate(zip(inputs.infos, inputs.observations, inputs.shifts, strict=True)):
        known = inputs.psfs[v] if inputs.psfs else None
        psf = known.fwhm if known is not None else info.meta.get("psfFwhm")
        sigma = float(inputs.psf_model.sigmas[v]) if inputs.psf_model is not None else np.nan
        wing = float(sum(inputs.psf_model.kernels[v].weights)) if inputs.psf_model is not None else np.nan
        rows[v] = (
            info.visit,
            info.path,
            obs.airmass,
            obs.elevation,
            obs.parallactic_angle,
            obs.rotation_angle,
            result.visit_weights[v],
            np.nan if psf is None else psf,
            sigma,
            wing,
            sh.max_abs,
            result.visit_metrics[v] if v < len(result.visit_metrics) else np.nan,
            result.variance_scale[v] if v < len(result.variance_scale) else 1.0,
            sh.mean,
        )
    return rows


def _model_meta(inputs: RunInputs, result: DcrResult, layout: Layout, comm: Comm,
                extra: SubregionOutcome | None) -> ModelMeta:  # fmt: skip
    cfg, dims = inputs.config, layout.plan.dims
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
        "halo": layout.halo,
        "buffer": layout.buffer,
        "stop_reason": result.stop_reason.value,
        "iterations": result.iterations,
        "image_interp_order": int(cfg.imageInterpOrder),
        "accelerate_model": float(cfg.accelerateModel),
        "profile": str(cfg.profile),
        "static_model": inputs.static.path if inputs.static is not None else "",
        "xy0": np.array(inputs.infos[0].xy0),  # afw's pixel origin (x0, y0) of the patch
    }
    tables, table_attrs = {}, {}
    if extra is not None:  # the subregion solve: its blocks, the whole patch's metric before and after
        tables["subregions"] = extra.blocks
        attrs.update(initial_metric=extra.initial_metric, final_metric=extra.final_metric)
    psf, static_psf = model_psf(inputs, result), coadd_psf(inputs, result)
    if psf is not None:
        tables["psf"] = psf.image
        table_attrs["psf"] = {"fwhm": psf.fwhm, "kind": psf.source}
    if static_psf is not None:
        tables["psf_static"] = static_psf.image
        table_attrs["psf_static"] = {"fwhm": static_psf.fwhm, "kind": "coadd"}
    attrs["psf_aware"] = inputs.psf_model is not None
    if inputs.psf_model is not None and inputs.psf_model.wing_sigmas:  # pixels; the templates' kernels use them
        attrs["psf_wing_sigmas"] = np.array(inputs.psf_model.wing_sigmas)
    if inputs.artifacts is not None:  # each visit's rejected pixels, bit-packed (np.unpackbits(row, count=ny*nx))
        tables["artifacts/clipped"] = np.stack(inputs.artifacts.clipped)
        tables["artifacts/streak"] = np.stack(inputs.artifacts.streak)
        table_attrs["artifacts/clipped"] = {"common_psf_sigma": inputs.artifacts.common_sigma,
                                            "pixels": np.array([c for c, _ in inputs.artifacts.counts])}  # fmt: skip
    return ModelMeta(inputs.shape, cfg.num_subfilters, chunk_shape(inputs.shape, dims), visits_table(inputs, result),
                     history_table(result.history), attrs, result.mask_planes, tables, bool(cfg.doNImage),
                     table_attrs)  # fmt: skip


def model_psf(inputs: RunInputs, result: DcrResult) -> Psf | None:
    """The PSF of the model's planes: the PSF-aware model's reference, else the visit PSFs weighted
    as the coadd weights them (LSST's CoaddPsf); None unless every visit has one."""
    if inputs.psf_model is not None:
        ref = inputs.psf_model.reference
        return Psf(ref.image, ref.fwhm, ref.profile, "reference")
    return coadd_psf(inputs, result)


def coadd_psf(inputs: RunInputs, result: DcrResult) -> Psf | None:
    """The PSF of the static coadd: the visit PSFs weighted as the coadd weights them (None
    unless every visit has one)."""
    if not inputs.psfs or any(p is None for p in inputs.psfs):
        return None
    weights = np.asarray(result.visit_weights, dtype=np.float64)
    if not np.any(weights > 0):
        return None
    image = weighted_sum([p.image for p in inputs.psfs if p is not None], weights)
    return Psf(image, fwhm_pixels(image) * inputs.pixel_scale, "image", "coadd")


def write_output(inputs: RunInputs, result: DcrResult, layout: Layout, options: RunOptions, comm: Comm,
                 extra: SubregionOutcome | None = None) -> str:  # fmt: skip
    """Write the model file (collectively or through rank 0); returns the output mode used."""
    inner = layout.tile.inner_local
    # views of the inner box in the file's dtypes (a copy only where the dtype differs): copying
    # ~400 MB of fresh pages for 2048x4096 took longer than writing them
    arrays: dict[str, NDArray[Any]] = {
        "model": np.asarray(result.planes[(..., *inner)], np.float32),
        "coadd/image": np.asarray(result.coadd[inner], np.float32),
        "coadd/variance": np.asarray(result.variance[inner], np.float32),
        "coadd/mask": np.asarray(result.mask[inner], np.int32),
        "coadd/static": np.asarray(result.static.image[inner], np.float32),
    }
    if inputs.config.doNImage:
        arrays["nimage"] = np.asarray(result.nimage[(..., *inner)], np.int32)
        arrays["nimage_total"] = np.asarray(result.nimage_total[inner], np.int32)
    planes = output_planes(inputs, result)
    if inputs.bright_objects:  # doMaskBrightObjects, on this rank's box
        arrays["coadd/mask"] = arrays["coadd/mask"] | bright_object_bits(inputs, layout.tile.inner, planes)
    meta = comm.bcast(_model_meta(inputs, result, layout, comm, extra) if comm.rank == 0 else None, root=0)
    meta.mask_planes = planes
    return write_model(options.output, ModelTile(layout.tile.inner, arrays), meta, comm, options.output_mode,
                       finish=finishing(inputs, planes))  # fmt: skip


def output_planes(inputs: RunInputs, result: DcrResult) -> dict[str, int]:
    """The output mask's planes: the solver's, with INTRP (doInterp) and brightObjectMaskName."""
    planes = dict(result.mask_planes)
    if inputs.config.doInterp:
        add_plane(planes, "INTRP")
    if inputs.bright_objects:
        add_plane(planes, inputs.config.brightObjectMaskName)
    return planes


def bright_object_bits(inputs: RunInputs, box: Box, planes: dict[str, int]) -> NDArray[np.int32]:
    """brightObjectMaskName over ``box`` where a bright-object region lies."""
    wcs = celestial_wcs(inputs.infos[0].wcs_header)
    if wcs is None:
        raise InputError(f"{inputs.infos[0].path}: no celestial WCS to place the bright-object regions on")

    def world_to_pixel(ra: float, dec: float) -> tuple[float, float]:
        x, y = wcs.all_world2pix(ra, dec, 0)
        return float(x), float(y)

    inside = region_mask(inputs.bright_objects, world_to_pixel, box.shape, inputs.pixel_scale, (box.y0, box.x0))
    return np.where(inside, np.int32(1 << planes[inputs.config.brightObjectMaskName]), np.int32(0))


def finishing(inputs: RunInputs, planes: dict[str, int]) -> Callable[[h5py.File], None] | None:
    """The finishing steps that need whole planes, run by the writer on rank 0 (io/finish.py)."""
    cfg = inputs.config
    measure = cfg.doCalculatePsf and inputs.psf_model is None
    if cfg.doCalculatePsf and not measure:
        log.warning("doCalculatePsf: the PSF-aware model's planes have the reference PSF; it is not measured")
    if not (cfg.doInterp or measure):
        return None

    def finish(f: h5py.File) -> None:
        if cfg.doInterp:
            interpolate_no_data(f, planes, cfg.interpImage.fallbackValue)
        if measure:
            measure_coadd_psf(f, cfg, inputs.pixel_scale, planes)

    return finish


# ----------------------------------------------------------------------------- the run
def run(inputs: RunInputs, options: RunOptions, comm: Comm | None = None) -> RunSummary:
    """Build the DCR model of ``inputs`` on all ranks of ``comm`` and write ``options.output``.

    With ``checkpoint_every`` K > 0 a checkpoint is written every K iterations; SIGTERM (what
    Slurm sends before a kill) makes the run checkpoint at the end of the current iteration and
    stop with :class:`Preempted` (exit code 75); ``resume`` continues from such a checkpoint.
    With lsstCompat.subregions the LSST task's block-by-block solve runs instead
    (:mod:`mpidcr.subregions`; no checkpoints).
    """
    comm = comm or SerialComm()
    timer = PhaseTimer()
    subregions = inputs.config.lsst("subregions")
    if subregions and (options.resume or options.checkpoint_every):
        flag = "--resume" if options.resume else "--checkpoint-every"
        raise _collective(InputError(f"{flag}: the subregion solve (lsstCompat.subregions, --profile lsst) keeps no "
                                     "checkpoints; set lsstCompat.subregions=false to checkpoint"))  # fmt: skip
    with timer.phase("check"):
        claim = claim_outputs(inputs, options, comm)
    extra = None
    try:
        with timer.phase("decompose"):
            layout = decompose(inputs, options, comm)
            reserve_space(inputs, options, claim, comm)
        stop_point(comm, "before the kernels were ready")
        # the numba kernels are compiled (or read back from the on-disk cache) here, after every
        # check that can refuse the run
        with timer.phase("compile"):
            ready_kernels(inputs.config, comm, psf_aware=inputs.psf_model is not None)
        if comm.rank == 0:
            log.info("kernels ready in %.1f s (compiled, or read back from the on-disk cache)", timer.seconds["compile"])
        if inputs.config.doRejectArtifacts:
            with timer.phase("reject"):
                inputs.artifacts = find_artifacts(inputs.infos, inputs.mask_planes, inputs.psfs, inputs.pixel_scale,
                                                  inputs.config, layout.plan, layout.tile.inner, comm,
                                                  inputs.shifts, inputs.flux_scales, inputs.psf_matched)  # fmt: skip
            stop_point(comm, "while artifacts were sought")
        if subregions:
            from .subregions import solve_in_subregions  # (it builds on this module's phases)

            with timer.phase("solve"):  # it reads the warps block by block
                extra = solve_in_subregions(inputs, layout, comm)
            result, metric = extra.result, extra.final_metric
        else:
            if comm.rank == 0:
                log.info("reading %d warp windows of %dx%d pixels per rank", len(inputs.infos), *layout.tile.outer.shape)
            with timer.phase("read"):
                warps = read_tile(inputs, layout.tile)
                static = read_static(inputs, layout.tile.outer)
            stop_point(comm, "while the warps were read")
            with timer.phase("solve"):
                result = solve_tile(inputs, warps, static, layout, options, comm)
            metric = result.history[min(result.iterations, len(result.history) - 1)].metric
        if comm.rank == 0:
            claim.release_space()  # the reserved bytes are now the model file's
        with timer.phase("write"):  # a SIGTERM now is answered after the write: the model is complete
            mode = write_output(inputs, result, layout, options, comm, extra)
    finally:
        claim.close()
    if STOP.requested and comm.rank == 0:
        log.warning("SIGTERM arrived after the last iteration: the model was written and is complete")
    return _summary(result, metric, layout, mode, options, timer, comm)


def _summary(result: DcrResult, metric: float, layout: Layout, mode: str, options: RunOptions, timer: PhaseTimer,
             comm: Comm) -> RunSummary:  # fmt: skip
    # peak resident memory of the largest rank (ru_maxrss is in KiB on Linux)
    peaks = comm.gather(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    seconds = dict(timer.seconds)
    seconds["total"] = sum(v for k, v in seconds.items() if k != "compile")
    summary = RunSummary(
        output=options.output,
        iterations=result.iterations,
        stop_reason=result.stop_reason.value,
        metric=metric,
        ranks=comm.size,
        tiles=layout.plan.dims,
        halo=layout.halo,
        output_mode=mode,
        peak_memory_bytes=max(peaks) if peaks else None,
        seconds=seconds,
    )
    if comm.rank == 0:
        log.info("wrote %s (%s): %d iterations, stop: %s, %.1f s", options.output, mode, result.iterations,
                 result.stop_reason.value, seconds["total"])  # fmt: skip
    return summary
