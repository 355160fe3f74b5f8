"""The forward-model iteration of a DCR sky model (SPEC §2), on one tile.

Plain functions on numpy arrays.  Axis order: model planes ``(K, y, x)``, warp stacks
``(V, y, x)``.  The solver runs on a tile's *outer* box (see :mod:`mpidcr.tiling`); every
patch-wide quantity goes through a :class:`~mpidcr.reduction.Reducer` over the *inner* box, and
the model's ghost pixels are refreshed by a :class:`~mpidcr.halo.HaloExchanger` after each
update.  With the serial defaults (whole patch, :class:`SerialReducer`, :class:`NoExchange`)
this is the complete single-process algorithm.

The shape is that of Dedalus' solvers: construction prepares everything (static model, weights,
coverage, the first sweep), :meth:`DcrSolver.proceed` says whether to iterate again (and why
not: :class:`StopReason`), :meth:`DcrSolver.step` does one iteration, and :meth:`DcrSolver.run`
is the loop, calling hooks (progress, checkpoints) after each accepted iteration.  Each
iteration streams every warp once: the template of the current model gives at the same time
the visit's convergence-metric sums and its residual, whose reverse shifts accumulate into the
per-sub-filter update.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from . import kernels
from .coadd import StaticModel, propagate_rejections, static_sky_model, visit_weights_from_sums
from .config import DcrConfig
from .dcr import VisitShifts, dcr_buffer
from .errors import InputError, SolverError
from .halo import HaloExchanger, NoExchange
from .kernels import fused, moments, regularize
from .kernels.fused import SweepPlan, VisitPass
from .kernels.gaussian import blur_step, blur_step_gather, blur_step_mix, gaussian_filter, mix_blurs, spread_blurs
from .kernels.stream import StreamPlan
from .masks import add_plane, plane_bits
from .psf import WING_TRUNCATE, BlurPlan
from .reduction import Reducer, SerialReducer, clipped_std, merged_std
from .tiling import Box, Tile
from .update import (
    LSST_GAIN_WINDOW,
    amplified,
    clamp_to_previous,
    next_gain,
    regularize_frequency,
    static_share,
)

log = logging.getLogger(__name__)

#: Pixel values beyond this magnitude (image or variance) are missing data, like NaN: some
#: pipelines mark blank pixels with ±1e30, and float32 sums overflow near 3e38.
MAX_PIXEL_MAGNITUDE = 1e30

#: Precision of the model state, the warps' pixels and the per-iteration arrays.  The inputs are
#: float32 and every per-pixel quantity of an iteration is a short sum (K·V terms at most), so
#: float32 loses nothing measurable while halving memory and traffic; patch-wide sums (metric,
#: noise, weights) are float64.
MODEL_DTYPE = np.dtype(np.float32)

#: The convergence history as a table (model files and checkpoints)
HISTORY_DTYPE = np.dtype([("iteration", "i4"), ("metric", "f8"), ("gain", "f8"), ("seconds", "f8")])


# ----------------------------------------------------------------------------- records
@dataclass
class WarpStack:
    """The warps of one tile and what the solver needs to know of each visit.

    images, variances : (V, ny, nx) float32 (image units, image units²).
    masks : (V, ny, nx) int32 bit masks with ``mask_planes`` (name → bit).
    shifts : per visit DCR shifts (pixels).
    airmass : (V,).
    """

    images: NDArray
    variances: NDArray
    masks: NDArray
    mask_planes: dict[str, int]
    shifts: Sequence[VisitShifts]
    airmass: NDArray
    names: Sequence[str] = ()

    def __post_init__(self) -> None:
        v = self.images.shape[0]
        if self.variances.shape != self.images.shape or self.masks.shape != self.images.shape:
            raise InputError("images, variances and masks must have the same (V, ny, nx) shape")
        if len(self.shifts) != v or len(self.airmass) != v:
            raise InputError(f"{v} warps but {len(self.shifts)} shift sets and {len(self.airmass)} airmasses")
        if not self.names:
            self.names = [f"visit{i}" for i in range(v)]

    @property
    def num_visits(self) -> int:
        return int(self.images.shape[0])


class StopReason(str, enum.Enum):
    """Why the iteration ended (its value is what logs, ``--json`` and model files show)."""

    CONVERGED = "converged"  # the relative improvement fell below convergenceThreshold
    MAX_ITERATIONS = "max_iterations"  # maxNumIter reached
    DIVERGED = "diverged"  # an iteration made the metric worse: the model before it is kept
    ZERO_METRIC = "zero_metric"  # no pixel to measure the metric on


@dataclass
class IterationRecord:
    """One entry of the convergence history (iteration 0 is the initial model)."""

    iteration: int
    metric: float
    gain: float
    seconds: float
    visit_metrics: NDArray


def history_table(history: Sequence[IterationRecord]) -> np.ndarray:
    """The history as a :data:`HISTORY_DTYPE` table."""
    return np.array([(h.iteration, h.metric, h.gain, h.seconds) for h in history], dtype=HISTORY_DTYPE)


@dataclass
class SolverState:
    """What is needed to continue an iteration exactly: the raw model (outer box) and the histories."""

    iteration: int
    model: NDArray
    metrics: list[float]
    gains: list[float]
    history: list[IterationRecord]


@dataclass
class Subregion:
    """One block of LSST's subregion-sequential solve (lsstCompat.subregions), as the solver of its
    grown box sees it: the solver's patch is the block grown by the DCR buffer (LSST's dcrBBox).

    inner : the block in the solver's patch coordinates; only it is updated (the ring around it
        keeps the values it started with, as LSST assigns only the block back).
    inverse_weights, nimage, determined : the whole patch's coverage (LSST computes it once, on the
        patch) on this tile's outer box.
    metric_edge : outer-box pixels at least the DCR buffer from the whole patch's edge.
    outside_noise : (count, sum, sum of squares about 0) of model plane 1's background outside the
        solver's patch: LSST's metric takes its noise over the whole patch.
    visit_weights, variance_scale : the whole patch's (a block may hold no pixel of some visit).
    converge_from_static : the convergence pixels of every visit are the static mask's (the
        patch-wide pass found no input carrying convergenceMaskPlanes and detected on T).
    """

    inner: Box
    inverse_weights: NDArray
    nimage: NDArray
    determined: NDArray
    metric_edge: NDArray
    outside_noise: tuple[float, float, float]
    visit_weights: NDArray
    variance_scale: NDArray
    converge_from_static: bool = False


def metric_sums(image: NDArray, template: NDArray, use: NDArray, significance: NDArray) -> tuple[float, float]:
    """One visit's metric terms over ``use`` pixels with a finite template:
    (Σ|image − template|·s, Σ|image + template|·s / 2)."""
    use = use & np.isfinite(template)
    s = significance[use]
    return float(np.sum(np.abs(image - template)[use] * s)), float(np.sum(np.abs(image + template)[use] * s) / 2.0)


@dataclass
class BlockView:
    """The block-only metric of a subregion on one tile: LSST builds those templates from the model
    cropped to the block, so a shift reads zeros beyond the block's edges and samples falling
    outside it are zero (scipy's mode 'constant').  The part of the tile's outer box inside the
    block is that crop here: its edges are the block's where they are, a halo's elsewhere.

    box : slices of the crop in the outer box; sums : slices of the block's share of the inner
    box in the crop (empty if none); images, good, converge : (V, h, w) copies on the crop.
    """

    box: tuple[slice, slice]
    sums: tuple[slice, slice]
    images: NDArray
    good: NDArray
    converge: NDArray

    @classmethod
    def of(cls, block: Box, tile: Tile, images: NDArray, good: NDArray, converge: NDArray) -> BlockView:
        crop = block.intersect(tile.outer)
        box = crop.slices(tile.outer)
        mine = block.intersect(tile.inner)
        if mine.size == 0:
            mine = Box(crop.y0, crop.y0, crop.x0, crop.x0)
        sel = (slice(None), *box)
        return cls(box, mine.slices(crop), np.ascontiguousarray(images[sel]), np.ascontiguousarray(good[sel]),
                   np.ascontiguousarray(converge[sel]))  # fmt: skip

    def metric_sums(self, planes: NDArray, significance: NDArray, shifts: Sequence[VisitShifts], active: NDArray,
                    order: int) -> NDArray:  # fmt: skip
        """The (2V,) metric sums of every visit (zeros for inactive ones) over the block's share."""
        V = len(shifts)
        sums = np.zeros(2 * V)
        forward = kernels.prefilter_planes(np.ascontiguousarray(planes[(slice(None), *self.box)]), order)
        sig = significance[self.box][self.sums]
        template = np.zeros(forward.shape[1:], dtype=np.float64)
        for v in map(int, np.flatnonzero(active)):
            kernels.build_template(forward, shifts[v].forward, order, out=template)
            sums[v], sums[V + v] = metric_sums(self.images[v][self.sums], template[self.sums],
                                               self.good[v][self.sums] & self.converge[v][self.sums], sig)  # fmt: skip
        return sums


#: LSST measures the frequency regularization's noise this many pixels inside its box
LSST_NOISE_MARGIN = 5


@dataclass
class DcrResult:
    """A solved DCR model on a tile's outer box (slice with ``tile.inner_local`` for owned pixels).

    planes : (K, ny, nx) sub-filter planes as written, (y_k − ȳ)·A + ȳ.
    coadd : (ny, nx) their sum; variance : coadd variance.
    mask : base mask (static model's, NO_DATA where the model is undetermined).
    nimage : (K, ny, nx) inputs per sub-filter; nimage_total : their sum.
    raw_model : the iterated planes before amplification.
    """

    planes: NDArray
    coadd: NDArray
    variance: NDArray
    mask: NDArray
    nimage: NDArray
    nimage_total: NDArray
    static: StaticModel
    raw_model: NDArray
    history: list[IterationRecord]
    visit_weights: NDArray
    mask_planes: dict[str, int]
    stop_reason: StopReason
    iterations: int
    visit_metrics: NDArray = field(default_factory=lambda: np.zeros(0))
    variance_scale: NDArray = field(default_factory=lambda: np.zeros(0))


@dataclass
class _Iterate:
    """The accepted model and what the next iteration needs of it."""

    iteration: int
    model: NDArray
    acc: NDArray  # the reverse-shifted residuals of ``model`` (K, ny, nx)
    per_visit: NDArray
    metrics: list[float]
    gains: list[float]
    history: list[IterationRecord]
    # the iterate before this one (iteration, model, acc, per-visit metrics): its arrays stay
    # valid in the other work buffers until the next update, so a worse step can be undone
    previous: tuple[int, NDArray, NDArray, NDArray] | None = None


#: A hook called after every accepted iteration (the driver's checkpoint schedule, progress)
Hook = Callable[[SolverState], None]


# ----------------------------------------------------------------------------- solver
class DcrSolver:
    """One tile's DCR model through the iteration.

    Parameters
    ----------
    warps : the tile's warps (outer box); classified in place (bad pixels set to 0).
    config : a validated :class:`DcrConfig`.
    tile : geometry; default the whole patch.
    reducer, exchanger : patch-wide reductions and halo refresh; serial defaults.
    buffer : DCR buffer in pixels; default from the largest shift of all visits.
    progress : called as ``progress(iteration, metric, gain)`` after each accepted iteration.
    fused : at order 1, use the one-pass-per-visit kernel (False: the per-shift kernels, for tests).
    resume : continue from a checkpointed state instead of the static model.
    static : the static model T (the LSST task's deepCoadd); default: the coadd of the warps.
    region : a block of LSST's subregion-sequential solve (:class:`Subregion`).
    initial : the starting planes (K, ny, nx) instead of T/K in each.
    blur : the PSF-aware forward model's blur plan (:meth:`mpidcr.psf.PsfModel.plan`): each visit's
        template blurred from the reference PSF to its own; None: the constant-PSF model.

    After construction: ``static`` (the static model), ``visit_weights``, ``variance_scale``,
    ``inverse_weights``, ``nimage``, ``model_weights``, ``mask_planes`` (the warps' own, plus
    a plane for detections made on the static model), and the iterate of the first model.
    """

    def __init__(self, warps: WarpStack, config: DcrConfig, tile: Tile | None = None, reducer: Reducer | None = None,
                 exchanger: HaloExchanger | None = None, buffer: int | None = None,
                 progress: Callable[[int, float, float], None] | None = None, fused: bool = True,
                 resume: SolverState | None = None, static: StaticModel | None = None,
                 region: Subregion | None = None, initial: NDArray | None = None,
                 blur: BlurPlan | None = None):  # fmt: skip
        self.warps, self.cfg = warps, config
        self.tile = tile or Tile.whole(warps.images.shape[1:])
        self.reducer = reducer or SerialReducer()
        self.exchanger = exchanger or NoExchange()
        self.progress = progress
        self.order = int(config.imageInterpOrder)
        self.K = config.num_subfilters
        self.buffer = dcr_buffer(max((s.max_abs for s in warps.shifts), default=0.0)) if buffer is None else int(buffer)
        self.inner = self.tile.inner_local
        self.mask_planes = dict(warps.mask_planes)
        self.bad_bits = plane_bits(self.mask_planes, config.badMaskPlanes)
        # artifact rejection's pixels: CLIPPED (transients, and streaks' cores) out of the static
        # model and, unless lsstCompat.clippedInFit (LSST keeps them there), out of the fit; the
        # streaks' grown wings (streakMaskName) out of the static model only
        clipped = plane_bits(self.mask_planes, ["CLIPPED"])
        self.static_only_bits = plane_bits(self.mask_planes, [config.streakMaskName]) & ~clipped
        if config.lsst("clippedInFit"):
            self.static_only_bits |= clipped
        else:
            self.bad_bits |= clipped
        self.converge_bits = plane_bits(self.mask_planes, config.convergenceMaskPlanes)
        # order 1: one cache-blocked pass per visit (kernels.fused); order 3: per-shift kernels
        self.fused = fused and self.order == 1
        self.lsst_loop, self.lsst_freq = config.lsst("iterationControl"), config.lsst("frequencyRegularization")
        self.region = region
        # the PSF-aware forward model: each visit's template blurred from the reference PSF to its own
        self.blur = blur
        #: the PSF-aware sweep streamed by rows (kernels.stream); False: group by group over whole
        #: planes (the same bits; the tests' reference)
        self.stream_blur = True
        self._stream: tuple[bytes, StreamPlan] | None = None
        if blur is not None and len(blur.group_of) != warps.num_visits:
            raise SolverError(f"the blur plan has {len(blur.group_of)} visits, the warps {warps.num_visits}")
        if self.blur is not None and region is not None:
            raise SolverError("the PSF-aware model and LSST's subregion solve do not go together")
        #: maxNumIter, or its default for this model (more for the PSF-aware one)
        self.max_iterations = config.max_iterations_for(psf_aware=self.blur is not None)
        self._allocate()
        self.good, self.converge_pixels = self._classify()
        if region is not None:  # a block: the patch-wide pass's
            self.variance_scale, self.visit_weights = region.variance_scale, region.visit_weights
        else:
            self.variance_scale = (self._scale_warp_variances() if config.doScaleWarpVariance
                                   else np.ones(warps.num_visits))  # fmt: skip
            self.visit_weights = self._visit_weights()
        # the static model T: given (the LSST task's deepCoadd), or the weighted coadd of the warps
        self.static = static if static is not None else self._static_model()
        self.static_image = self.static.image.astype(MODEL_DTYPE)
        self.base_mask = self.static.mask.copy()
        self.detected_on_static = False
        if region is None:  # (a block takes the patch-wide pass's decision)
            self._detect_if_no_convergence_planes()
        elif region.converge_from_static:
            self.converge_pixels[:] = ((self.base_mask & self.converge_bits) != 0)[None]
        quiet = ((self.base_mask & (self.bad_bits | self.converge_bits)) == 0)
        edge = self._edge_distance_ok(self.buffer) if region is None else region.metric_edge
        self.background = quiet & edge  # the metric's noise (and mpidcr's frequency regularization's)
        self.freq_background = quiet & self._edge_distance_ok(LSST_NOISE_MARGIN) if self.lsst_freq else self.background
        if region is None:
            self.inverse_weights, self.nimage, self.dcr_good = self._coverage()
        else:
            self.inverse_weights, self.nimage, self.dcr_good = region.inverse_weights, region.nimage, region.determined
        if not config.lsst("outputMask"):
            self.base_mask |= np.where(self.dcr_good, 0, plane_bits(self.mask_planes, ["NO_DATA"])).astype(np.int32)
        # the model weights M and T·(1 − M)/K, the static model's share of every plane under them (step 7)
        self.model_weights, self.static_share = self._model_weights()
        if resume is not None:
            initial = resume.model
        self._frozen, self._block_view = self._block_arrays(initial)
        self.stop_reason: StopReason | None = None
        self._improvement = 1.0  # LSST's convergence check of the last update (its loop runs on it)
        self.it = self._start(resume, initial)

    # -- construction, step by step --------------------------------------------------
    def _allocate(self) -> None:
        """The sweep plan and the work buffers, reused by every iteration."""
        shape = self.warps.images.shape[1:]
        if self.tile.outer.shape != tuple(shape):
            raise SolverError(f"warps of shape {shape} do not fill the tile's outer box {self.tile.outer.shape}")
        if self.fused:
            self.sweep_plan = SweepPlan([VisitPass(shape, s.forward, s.mean) for s in self.warps.shifts])
        # two buffers each for the accumulators and the model: an iteration needs the current
        # ones and writes the next ones, so alternating between two avoids allocating (and
        # page-faulting) two image stacks per iteration
        self._acc_buffers: list[NDArray] = []
        self._model_buffers: list[NDArray] = []
        self._amplified = np.empty((self.K, *shape), MODEL_DTYPE)
        self._significance = np.empty(shape, MODEL_DTYPE)
        self._work = regularize.FrequencyWork(shape, MODEL_DTYPE)
        if self.blur is not None:  # two scratch images (the group-by-group path's planes: on first use)
            self._blurred: NDArray | None = None
            self._group_acc: NDArray | None = None
            self._blur_scratch = np.empty((2, *shape), MODEL_DTYPE)
            self._scratch_pair = (self._blur_scratch[0], self._blur_scratch[1])  # (views compared by identity)
            # the wing Gaussians of the planes and their accumulators, (K, J, ny, nx): plane k's wings
            # are one contiguous block for the fused kernels (none without wings)
            J = len(self.blur.wing_sigmas)
            self._wing_planes = np.zeros((self.K, J, *shape), MODEL_DTYPE)
            self._wing_acc = np.zeros((self.K, J, *shape), MODEL_DTYPE)

    def _inner(self, a: NDArray) -> NDArray:
        return a[(..., *self.inner)]

    def _classify(self) -> tuple[NDArray, NDArray]:
        """Good-pixel indicators g_v (bad pixels' values are set to 0) and convergence pixels, in
        one pass that also clears the removeMaskPlanes bits and marks missing pixels NO_DATA."""
        w, planes = self.warps, self.mask_planes
        w.images = np.ascontiguousarray(w.images, dtype=MODEL_DTYPE)
        w.variances = np.ascontiguousarray(w.variances)
        w.masks = np.ascontiguousarray(w.masks, dtype=np.int32)
        remove = plane_bits(planes, self.cfg.removeMaskPlanes)
        nodata = plane_bits(planes, ["NO_DATA"])
        return kernels.classify_pixels(w.images, w.variances, w.masks, remove, self.bad_bits, self.converge_bits,
                                       nodata, MAX_PIXEL_MAGNITUDE)  # fmt: skip

    def _static_model(self) -> StaticModel:
        """The weighted coadd of the warps' good pixels (rejected pixels left out), with LSST's
        mask propagation (:func:`mpidcr.coadd.propagate_rejections`)."""
        cfg, w = self.cfg, self.warps
        good = self.good
        if self.static_only_bits:
            good = good & ((w.masks & self.static_only_bits) == 0)
        static = static_sky_model(w.images, w.variances, w.masks, good, self.visit_weights, cfg.static_statistic,
                                  self.mask_planes, cfg.sigmaClip, cfg.clipIter, cfg.maskPropagationThresholds,
                                  cfg.calcErrorFromInputVariance)  # fmt: skip
        static.mask |= propagate_rejections(w.masks, good, self.mask_planes, plane_bits(self.mask_planes,
                                                                                        cfg.badMaskPlanes))
        return static

    def _edge_distance_ok(self, distance: int) -> NDArray[np.bool_]:
        """Outer-box pixels at least ``distance`` from the (solver's) patch edge."""
        t = self.tile
        ny, nx = t.patch.shape
        yy = np.arange(t.outer.y0, t.outer.y1)
        xx = np.arange(t.outer.x0, t.outer.x1)
        oky = (yy >= distance) & (yy < ny - distance)
        okx = (xx >= distance) & (xx < nx - distance)
        return oky[:, None] & okx[None, :]

    def background_noise(self, image: NDArray) -> float:
        """Std of ``image`` over background pixels of the patch (merged over tiles; in a subregion,
        with the background outside the solver's box): the convergence metric's noise."""
        extra = None if self.region is None else self.region.outside_noise
        return merged_std(self.reducer, image, self.background, region=self.inner, extra=extra)

    def _scale_warp_variances(self) -> NDArray:
        """doScaleWarpVariance: scale each warp's variance so that image/√variance has unit
        variance over its background (good pixels without the scaleWarpVariance mask planes;
        3σ-clipped, so faint wings and cosmic rays do not inflate it).

        Returns the factors, one per visit (merged over tiles; 1 where no background).
        """
        cfg, w = self.cfg, self.warps
        excluded = plane_bits(w.mask_planes, cfg.scaleWarpVariance.maskPlanes) | self.bad_bits
        limit = float(cfg.scaleWarpVariance.limit)
        factors = np.ones(w.num_visits)
        snr = np.empty(w.images.shape[1:], w.images.dtype)  # one work image for all visits
        for v in range(w.num_visits):
            # std of image/√variance over good pixels without the excluded planes; the ratio is
            # computed once (NaN or ±inf where the variance is not positive: never selected),
            # not in each of the four clipping passes
            with np.errstate(invalid="ignore", divide="ignore"):
                np.sqrt(w.variances[v], out=snr)
                np.divide(w.images[v], snr, out=snr)
            std = clipped_std(self.reducer, snr, select=self.good[v], masks=w.masks[v], excluded=excluded,
                              region=self.inner)  # fmt: skip
            factor = std**2
            if not np.isfinite(factor) or factor <= 0:
                continue
            if factor > limit or factor < 1.0 / limit:
                log.warning("%s: variance scale factor %.3g is beyond scaleWarpVariance.limit = %g; clamped",
                            w.names[v], factor, limit)  # fmt: skip
                factor = min(max(factor, 1.0 / limit), limit)
            factors[v] = factor
            w.variances[v] *= np.float32(factor)
        log.debug("warp variance scale factors: %s", np.array2string(factors, precision=3))
        return factors

    def _visit_weights(self) -> NDArray:
        """Inverse mean variance of each visit's good pixels (× airmass with doAirmassWeight);
        visits without a usable pixel get 0 (a warning), fewer than two usable is an error."""
        w, V = self.warps, self.warps.num_visits
        # Σ variance and the number of good pixels of each visit (good variances are finite)
        sums = [moments.selected_sums(w.variances[v], self.good[v], region=self.inner) for v in range(V)]
        tot = self.reducer.sum([s for _, s, _ in sums] + [float(n) for n, _, _ in sums])
        weights = visit_weights_from_sums(tot[:V], tot[V:], w.airmass if self.cfg.doAirmassWeight else None)
        empty = [w.names[int(v)] for v in np.flatnonzero(weights <= 0)]
        usable = V - len(empty)
        if usable < 2:
            none = f" ({', '.join(empty[:5])} {'has' if len(empty) == 1 else 'have'} none)" if empty else ""
            raise InputError(f"only {usable} of {V} visit(s) have usable pixels{none}; at least 2 are needed")
        for name in empty:
            log.warning("%s: no usable pixel (all masked, NaN or without variance): visit left out of the model", name)
        return weights

    def _detect_if_no_convergence_planes(self) -> None:
        """Warps without DETECTED (or whatever convergenceMaskPlanes names) would leave the metric
        and the model weights empty: detect sources on the static model instead (pixels above
        detectTemplate.thresholdSigma of its noise, grown by detectTemplate.growRadius) and mark
        them in the static model's mask and as every warp's convergence pixels."""
        cfg = self.cfg
        carried = self._inner(self.base_mask & self.converge_bits) != 0
        if float(self.reducer.max([1.0 if carried.any() else 0.0])[0]) > 0 or not cfg.convergenceMaskPlanes:
            return
        name = cfg.convergenceMaskPlanes[0]
        bit = np.int32(1 << add_plane(self.mask_planes, name))
        self.converge_bits |= int(bit)
        with np.errstate(divide="ignore", invalid="ignore"):
            significance = self.static.image / np.sqrt(self.static.variance)
        sources = np.isfinite(significance) & (significance >= cfg.detectTemplate.thresholdSigma)
        sources = kernels.binary_dilation_diamond(sources, int(cfg.detectTemplate.growRadius))
        self.base_mask |= np.where(sources, bit, np.int32(0))
        self.converge_pixels[:] = sources[None]
        self.detected_on_static = True
        count = float(self.reducer.sum([np.count_nonzero(self._inner(sources))])[0])
        log.warning("no input pixel carries %s: marked %d pixels above %.1f sigma of the static model as %s instead",
                    "/".join(cfg.convergenceMaskPlanes), int(count), cfg.detectTemplate.thresholdSigma, name)  # fmt: skip

    def _coverage(self) -> tuple[NDArray, NDArray, NDArray]:
        """dcrWeights and nImage from the reverse-shifted good-pixel indicators: (inverse weights
        1/W_k, nImage_k, pixels determined in every sub-filter)."""
        shape = (self.K, *self.warps.images.shape[1:])
        active = self.visit_weights > 0
        if self.fused:
            inverse = np.empty(shape, MODEL_DTYPE)
            nimage = np.empty(shape, np.int32)
            determined = np.empty(shape[1:], np.bool_)
            fused.coverage(self.sweep_plan, self.good, active, inverse, nimage, determined)
            return inverse, nimage, determined
        coverage = np.zeros(shape, dtype=np.float64)
        counts = np.zeros(shape, dtype=np.int32)
        for v in map(int, np.flatnonzero(active)):
            coeffs = kernels.prefilter(self.good[v].astype(np.float64), self.order)
            for k in range(self.K):
                shifted = np.zeros(shape[1:], dtype=np.float64)
                kernels.add_shifted(shifted, coeffs, -self.warps.shifts[v].mean[k], self.order)
                coverage[k] += shifted
                counts[k] += np.rint(shifted).astype(np.int32)
        determined = np.all(coverage > 1.0, axis=0)
        with np.errstate(divide="ignore"):
            inverse = np.where(determined[None], 1.0 / coverage, 0.0).astype(MODEL_DTYPE)
        return inverse, np.where(determined[None], counts, 0), determined

    def _model_weights(self) -> tuple[NDArray | None, NDArray | None]:
        """useModelWeights: M = 1 on the base mask's convergence planes, Gaussian-smoothed by
        modelWeightsWidth, divided by its patch-wide maximum, then 1 again on those planes' pixels
        (LSST's stays below 1 on compact sources, which pulls their colours towards grey and their
        templates 1 % bright: docs/validation.md); and T·(1 − M)/K.  (None, None) when off or empty."""
        cfg = self.cfg
        if not cfg.useModelWeights:
            return None, None
        if cfg.modelWeightsWidth < 0:
            raise SolverError("modelWeightsWidth must not be negative")
        sources = ((self.base_mask & self.converge_bits) != 0).astype(MODEL_DTYPE)
        m = gaussian_filter(sources, cfg.modelWeightsWidth) if cfg.modelWeightsWidth > 0 else sources.copy()
        peak = float(self.reducer.max([np.max(self._inner(m), initial=0.0)])[0])
        if peak <= 0:
            log.warning("no pixel of the static model carries %s; model weights are not applied",
                        "/".join(cfg.convergenceMaskPlanes))  # fmt: skip
            return None, None
        m *= MODEL_DTYPE.type(1.0 / peak)
        if not cfg.lsst("modelWeights"):  # the sources themselves are the model's: M = 1 on them
            np.maximum(m, sources, out=m)
        return m, static_share(self.static_image, m, self.K)

    def _block_arrays(self, initial: NDArray | None) -> tuple[Any, Any]:
        """For a subregion that is not the whole solver patch: the ring outside the block with the
        values it keeps, (pixels, (K, n) values), and the view of the block-only metric
        (:class:`BlockView`).  (None, None) otherwise."""
        region = self.region
        shape = self.warps.images.shape[1:]
        if region is None or region.inner == self.tile.patch:
            return None, None
        block = np.zeros(shape, dtype=np.bool_)
        block[region.inner.intersect(self.tile.outer).slices(self.tile.outer)] = True
        start = (self.static_image / self.K)[None] if initial is None else initial
        frozen = (~block, np.ascontiguousarray(np.broadcast_to(start, (self.K, *shape))[:, ~block]))
        return frozen, BlockView.of(region.inner, self.tile, self.warps.images, self.good, self.converge_pixels)

    def _start(self, resume: SolverState | None, initial: NDArray | None) -> _Iterate:
        """The iterate of the first model (T/K in every plane, the given one, or the resumed one)
        and its sweep."""
        t0 = time.perf_counter()
        # the starting model, T/K in every plane, in the first of the two model buffers
        model = self._next_buffer(self._model_buffers, np.empty((self.K, *self.static_image.shape), MODEL_DTYPE))
        model[...] = (self.static_image / self.K)[None] if initial is None else initial
        metric, per_visit, acc = self.sweep(model)
        if resume is None:
            history = [IterationRecord(0, metric, float("nan"), time.perf_counter() - t0, per_visit)]
            it = _Iterate(0, model, acc, per_visit, [metric], [], history)
        else:
            it = _Iterate(resume.iteration, model, acc, per_visit, list(resume.metrics), list(resume.gains),
                          list(resume.history))  # fmt: skip
        if self.cfg.useConvergence and metric == 0.0 and not self.lsst_loop:  # (LSST's loop runs regardless)
            log.warning("convergence metric is 0 before the first iteration: no pixels carry %s",
                        "/".join(self.cfg.convergenceMaskPlanes))  # fmt: skip
            self.stop_reason = StopReason.ZERO_METRIC
        if len(it.metrics) >= 2:
            self._improvement = (it.metrics[-2] - it.metrics[-1]) / it.metrics[-1]
        return it

    @staticmethod
    def _next_buffer(buffers: list[NDArray], like: NDArray, avoid: NDArray | None = None) -> NDArray:
        """Two buffers shaped like ``like``, handed out in turn (allocated on first use): the
        result of one call stays valid through the next call.  ``avoid`` must not be returned."""
        if len(buffers) < 2:
            buffers.append(np.empty(like.shape, like.dtype))
        else:
            buffers.append(buffers.pop(0))
        out = buffers[-1]
        if avoid is not None and np.shares_memory(out, avoid):
            raise SolverError("internal error: a work buffer would overwrite the array it is computed from")
        return out

    # -- one pass over the warps --------------------------------------------------
    def sweep(self, model: NDArray) -> tuple[float, NDArray, NDArray]:
        """Templates of ``model`` for every visit → (metric, per-visit metrics, update accumulators).

        The accumulators are Σ_v reverse-shift_{v,k}(residual_v), (K, ny, nx).  In a subregion
        (LSST's blocks), the metric compares the visits with templates made from the block alone
        (zeros around it), over the block, as LSST's task does.
        """
        V = self.warps.num_visits
        noise = self.background_noise(model[1])
        # one pass: the amplified planes and the metric's significance |ȳ| + 3·noise
        accelerate = self.cfg.accelerateModel
        model = np.ascontiguousarray(model)  # (a no-op for the solver's own buffers)
        regularize.amplify(model, accelerate, self._amplified, self._significance, 3.0 * noise)
        planes = model if accelerate == 1.0 else self._amplified
        significance = self._significance
        if float(self.reducer.max([np.max(self._inner(significance), initial=0.0)])[0]) == 0.0:
            significance = np.ones_like(significance)
        acc = self._next_buffer(self._acc_buffers, model)
        sums = self._visit_sums(planes, significance, acc, self.inner)
        if self._block_view is not None:  # the metric from the block alone, over the block
            sums = self._block_view.metric_sums(planes, significance, self.warps.shifts, self.visit_weights > 0,
                                                self.order)  # fmt: skip
        total = self.reducer.sum(sums)
        with np.errstate(divide="ignore", invalid="ignore"):
            per_visit = np.where(total[V:] > 0, total[:V] / total[V:], 0.0)
        active = self.visit_weights > 0
        if self.lsst_loop:  # LSST averages over every visit
            metric = float(per_visit.mean())
        else:
            metric = float(per_visit[active].mean()) if np.any(active) else 0.0
        return metric, per_visit, acc

    def _visit_sums(self, planes: NDArray, significance: NDArray, acc: NDArray,
                    region: tuple[slice, slice]) -> NDArray:  # fmt: skip
        """One pass over the visits: ``acc`` set, the metric sums over ``region`` returned."""
        if self.blur is not None:
            return self._sweep_blurred(planes, significance, acc, region)
        return self._sweep_visits(planes, significance, acc, region, self.visit_weights > 0)

    def _sweep_visits(self, planes: NDArray, significance: NDArray, acc: NDArray, region: tuple[slice, slice],
                      active: NDArray) -> NDArray:  # fmt: skip
        if self.fused:
            return self._sweep_fused(planes, significance, acc, region, active)
        return self._sweep_per_shift(planes, significance, acc, region, active)

    def _blur_forward(self, planes: NDArray, stack: NDArray) -> None:
        """Every group's view of the planes into ``stack`` (G, K, ny, nx): group g's core B_g p (the steps
        of groups 0..g applied in turn, each group's from the previous group's core) and, with
        wings, c_g·B_g p + Σ_j w_gj·W_j p, mixed in the pass of the group's last step.  Plane by
        plane, so the chain of cores needs two scratch images only."""
        blur = self.blur
        assert blur is not None
        for k in range(self.K):
            current = planes[k]
            for g, steps in enumerate(blur.steps):
                mixed = blur.has_wings(g)
                weights = np.array(blur.wing_weights[g]) if mixed else None
                for i, variance in enumerate(steps):
                    last = i == len(steps) - 1
                    spare = self._free_scratch(current)
                    if last and mixed:
                        blur_step_mix(current, variance, spare, blur.core_weight(g), self._wing_planes[k], weights,
                                      stack[g, k])  # fmt: skip
                    elif last:  # the group sees its core itself, and the next group's chain starts there
                        spare = stack[g, k]
                        blur_step(current, variance, spare)
                    else:
                        blur_step(current, variance, spare)
                    current = spare
                if not steps:  # no blur of its own (the reference PSF's group)
                    if mixed:
                        mix_blurs(current, blur.core_weight(g), self._wing_planes[k], weights, stack[g, k])
                    else:
                        stack[g, k] = current

    def _blur_back(self, running: NDArray, group: NDArray, g: int) -> NDArray:
        """One Horner step of the adjoint at group g < last: ``group = S_{g+1}ᵀ running + c_g·group``
        (S_{g+1} the steps of group g + 1, applied in reverse order; the last of them in the pass
        that adds the group) and ``wing_acc += w_g·group`` (before).  Returns ``group``, the new
        running sum (``running`` is then free)."""
        blur = self.blur
        assert blur is not None
        steps = blur.steps[g + 1]
        mixed = blur.has_wings(g)
        c = blur.core_weight(g)
        weights = np.array(blur.wing_weights[g]) if mixed else np.zeros(0)
        for k in range(self.K):
            current = running[k]
            # a group without wings hands them nothing: no wing accumulators, no pass over them
            wing_acc = self._wing_acc[k] if mixed else self._wing_acc[k, :0]
            for i, variance in enumerate(reversed(steps)):
                if i == len(steps) - 1:
                    blur_step_gather(current, group[k], variance, c, wing_acc, weights, group[k])
                else:
                    spare = self._free_scratch(current)
                    blur_step(current, variance, spare)
                    current = spare
            if not steps:  # (groups' variances increase, so a later group always has steps)
                spread_blurs(group[k], c, weights, wing_acc, running[k], add=True)
                group[k] = running[k]
        return group

    def _sweep_blurred(self, planes: NDArray, significance: NDArray, acc: NDArray,
                       region: tuple[slice, slice]) -> NDArray:  # fmt: skip
        """The PSF-aware sweep: every group's visits see the planes blurred to the group's PSF
        (B_g = the steps of groups 0..g; with wings, c_g·B_g + Σ_j w_gj·W_j, W_j the wing
        Gaussians), and their reverse-shifted residuals are blurred back with the adjoint:
        acc = Σ_g c_g·B_gᵀ acc_g, accumulated from the broadest group down (Horner), so each step
        is applied once each way, plus Σ_j W_jᵀ (Σ_g w_gj·acc_g).  Streamed by rows
        (:mod:`mpidcr.kernels.stream`) where it can be, else group by group over whole planes
        (the same bits)."""
        blur = self.blur
        assert blur is not None
        for k in range(self.K):
            for j, sigma in enumerate(blur.wing_sigmas):
                gaussian_filter(planes[k], sigma, out=self._wing_planes[k, j], truncate=WING_TRUNCATE)
        self._wing_acc.fill(0)
        stream = self._stream_plan()
        if stream is None:
            return self._sweep_by_group(planes, significance, acc, region)
        ys, xs = region
        sums = stream.run(planes, self._wing_planes, self.warps.images, self.good, self.converge_pixels,
                          significance, (ys.start, ys.stop, xs.start, xs.stop), self._wing_acc, acc)  # fmt: skip
        for k in range(self.K):
            self._add_wings(acc[k], acc, k)
        return np.concatenate([sums[:, 0], sums[:, 1]])

    def _sweep_by_group(self, planes: NDArray, significance: NDArray, acc: NDArray,
                        region: tuple[slice, slice]) -> NDArray:  # fmt: skip
        """The PSF-aware sweep group by group over whole planes: every group's planes into
        ``_blurred``, a fused sweep of each group's visits, the adjoint steps between them."""
        blur = self.blur
        assert blur is not None
        if self._blurred is None or self._group_acc is None:  # the planes each group sees; one group's accumulators
            self._blurred = np.empty((len(blur.variances), *planes.shape), MODEL_DTYPE)
            self._group_acc = np.empty(planes.shape, MODEL_DTYPE)
        self._blur_forward(planes, self._blurred)
        sums = np.zeros(2 * self.warps.num_visits)
        active = self.visit_weights > 0
        last = len(blur.steps) - 1
        # the running sum alternates between ``acc`` and the group buffer: each Horner step writes
        # into the buffer of the group it adds
        running, spare = acc, self._group_acc
        for g in range(last, -1, -1):
            target = running if g == last else spare
            sums += self._sweep_visits(self._blurred[g], significance, target, region, active & blur.members(g))
            if g == last:
                if blur.has_wings(g):  # running = c_g·acc_g, the wings' accumulators w_g·acc_g
                    for k in range(self.K):
                        spread_blurs(target[k], blur.core_weight(g), np.array(blur.wing_weights[g]),
                                     self._wing_acc[k], target[k], add=False)  # fmt: skip
            else:
                running, spare = self._blur_back(running, spare, g), running
        self._finish_back(running, acc)
        return sums

    def _finish_back(self, running: NDArray, acc: NDArray) -> None:
        """acc = B_0ᵀ running + Σ_j W_jᵀ wing_acc_j (group 0's own steps, if any, then the wings)."""
        blur = self.blur
        assert blur is not None
        for k in range(self.K):
            current = running[k]
            for variance in reversed(blur.steps[0]):
                spare = self._free_scratch(current)
                blur_step(current, variance, spare)
                current = spare
            if not blur.wing_sigmas:
                if blur.steps[0] or running is not acc:
                    acc[k] = current
                continue
            self._add_wings(current, acc, k)

    def _add_wings(self, current: NDArray, acc: NDArray, k: int) -> None:
        """acc[k] = current + Σ_j W_jᵀ wing_acc[k, j] (``current``: plane k's image, may be acc[k])."""
        blur = self.blur
        assert blur is not None
        for j, sigma in enumerate(blur.wing_sigmas):
            wing = gaussian_filter(self._wing_acc[k, j], sigma, out=self._free_scratch(current), truncate=WING_TRUNCATE)
            np.add(current, wing, out=acc[k])
            current = acc[k]

    def _stream_plan(self) -> StreamPlan | None:
        """The streamed PSF-aware sweep's plan for the active visits (made on first use); None where
        the group-by-group path is used: order 3 (no fused sweep), ``stream_blur`` off, or a group
        after the first without blur steps of its own (blur_plan never makes one)."""
        blur = self.blur
        assert blur is not None
        if not (self.fused and self.stream_blur) or any(not steps for steps in blur.steps[1:]):
            return None
        active = self.visit_weights > 0
        if self._stream is None or self._stream[0] != active.tobytes():
            plan = StreamPlan(self.sweep_plan, blur, self.K, self.warps.images.shape[1:], active)
            self._stream = (active.tobytes(), plan)
        return self._stream[1]

    def _free_scratch(self, current: NDArray) -> NDArray:
        """The scratch image that ``current`` is not."""
        first, second = self._scratch_pair
        return second if current is first else first

    def _sweep_fused(self, planes: NDArray, significance: NDArray, acc: NDArray,
                     region: tuple[slice, slice], active: NDArray) -> NDArray:  # fmt: skip
        """Order 1: one cache-blocked pass per visit (sets every accumulator pixel); the metric's
        numerator and denominator sums of each visit over ``region``, (2V,)."""
        V = self.warps.num_visits
        ys, xs = region
        bounds = (ys.start, ys.stop, xs.start, xs.stop)
        visit_sums = self.sweep_plan.run(planes, self.warps.images, self.good, self.converge_pixels, significance,
                                         bounds, active, acc)  # fmt: skip
        sums = np.zeros(2 * V)
        sums[:V], sums[V:] = visit_sums[:, 0], visit_sums[:, 1]
        return sums

    def _sweep_per_shift(self, planes: NDArray, significance: NDArray, acc: NDArray,
                         region: tuple[slice, slice], active: NDArray) -> NDArray:  # fmt: skip
        """Any order, one shift at a time (the reference path of the fused sweep)."""
        w, order, V = self.warps, self.order, self.warps.num_visits
        sums = np.zeros(2 * V)
        acc.fill(0)
        forward = kernels.prefilter_planes(planes, order)
        sig = significance[region]
        template = np.zeros(planes.shape[1:], dtype=np.float64)
        for v in map(int, np.flatnonzero(active)):
            kernels.build_template(forward, w.shifts[v].forward, order, out=template)
            image, good = w.images[v], self.good[v]
            sums[v], sums[V + v] = metric_sums(image[region], template[region], good[region] &
                                               self.converge_pixels[v][region], sig)  # fmt: skip
            residual = np.where(good, image - template, 0.0)
            kernels.accumulate_reverse(residual, w.shifts[v].mean, order, acc)
        return sums

    def update(self, model: NDArray, acc: NDArray, gain: float) -> NDArray:
        """Steps 3–7 of one iteration, then the halo refresh; returns the new model."""
        cfg = self.cfg
        new = regularize.apply_update(
            model, acc, self.inverse_weights, self._next_buffer(self._model_buffers, model, avoid=model)
        )
        width = int(cfg.regularizationWidth)
        work = self._work
        flux = None
        if cfg.regularizeModelIterations > 0:
            for k in range(self.K):
                clamp_to_previous(new[k], model[k], cfg.regularizeModelIterations, width, work.sel, work.scratch)
        if cfg.regularizeModelFrequency > 0:
            noise = merged_std(self.reducer, new[0], self.freq_background, region=self.inner)
            if self.lsst_freq:  # LSST's: the previous planes as reference, zero-padded Gaussians
                regularize_frequency(new, cfg.regularizeModelFrequency, width, noise, work, model, "constant")
            else:  # the flux the regularization moved is given back in the conditioning pass
                regularize_frequency(new, cfg.regularizeModelFrequency, width, noise, work, keep_flux=True,
                                     defer_flux=True)  # fmt: skip
                flux = work.flux
        # steps 6 and 7 in one pass, in place
        regularize.condition_weighted(new, model, gain, self.model_weights, self.static_share, out=new, flux=flux)
        if self._frozen is not None:  # a subregion: only the block changes, the ring keeps its values
            where, values = self._frozen
            new[:, where] = values
        self.exchanger.exchange(new)
        return new

    # -- the loop -----------------------------------------------------------------
    def proceed(self) -> bool:
        """Whether to iterate again; when not, :attr:`stop_reason` says why."""
        if self.stop_reason is not None:
            return False
        cfg, it = self.cfg, self.it
        if self.lsst_loop:  # LSST: while the improvement exceeds the threshold or n ≤ minNumIter
            if self._improvement > cfg.convergenceThreshold or it.iteration <= cfg.min_iterations:
                return True
            self.stop_reason = StopReason.CONVERGED
            return False
        if it.iteration >= self.max_iterations:
            if cfg.useConvergence:
                log.warning("reached maxNumIter = %d before the convergence threshold %g", self.max_iterations,
                            cfg.convergenceThreshold)  # fmt: skip
            self.stop_reason = StopReason.MAX_ITERATIONS
            return False
        if cfg.useConvergence and it.iteration >= cfg.min_iterations and it.iteration > 0:
            improvement = (it.metrics[-2] - it.metrics[-1]) / it.metrics[-1]
            if improvement < 0:  # a worse step is never convergence: undo it
                self._undo_last_step()
                return False
            if improvement <= cfg.convergenceThreshold:
                self.stop_reason = StopReason.CONVERGED
                return False
        return True

    def _undo_last_step(self) -> None:
        """The last accepted iteration made the metric worse (allowed before minNumIter): go back
        to the iterate before it and end as diverged."""
        it = self.it
        n, worse, better = it.iteration, it.metrics[-1], it.metrics[-2]
        log.warning("iteration %d made the metric worse (%.6g > %.6g); keeping the model of iteration %d", n,
                    worse, better, n - 1)  # fmt: skip
        if it.previous is not None:
            it.iteration, it.model, it.acc, it.per_visit = it.previous
            it.previous = None
            it.metrics.pop()
            it.gains.pop()
        self.stop_reason = StopReason.DIVERGED

    def step(self) -> bool:
        """One iteration: gain, update, sweep.  Returns whether it was accepted; an iteration that
        ends the run (a zero metric, or divergence: the model before it is kept) is not."""
        if self.lsst_loop:
            return self._step_lsst()
        cfg, it = self.cfg, self.it
        t0 = time.perf_counter()
        gain = next_gain(it.metrics, it.gains, cfg.base_gain, cfg.useProgressiveGain)
        new = self.update(it.model, it.acc, gain)
        metric, per_visit, acc = self.sweep(new)
        n = it.iteration + 1
        it.history.append(IterationRecord(n, metric, gain, time.perf_counter() - t0, per_visit))
        if cfg.useConvergence and metric == 0.0:
            log.warning("convergence metric became 0 at iteration %d (no valid data); stopping", n)
            it.iteration, it.model, it.acc, it.per_visit = n, new, acc, per_visit
            self.stop_reason = StopReason.ZERO_METRIC
            return False
        if cfg.useConvergence and metric > it.metrics[-1] and n > cfg.min_iterations:
            log.warning("iteration %d diverged (metric %.6g > %.6g); keeping the model of iteration %d", n, metric,
                        it.metrics[-1], n - 1)  # fmt: skip
            self.stop_reason = StopReason.DIVERGED
            return False
        it.gains.append(gain)
        it.metrics.append(metric)
        it.previous = (it.iteration, it.model, it.acc, it.per_visit)
        it.iteration, it.model, it.acc, it.per_visit = n, new, acc, per_visit
        if self.progress is not None:
            self.progress(n, metric, gain)
        return True

    def _step_lsst(self) -> bool:
        """One update of LSST's loop: every update is kept.  It ends the run on a zero metric, on a
        worse metric after more than minNumIter updates (the worse model kept), and after the
        update that follows the (maxNumIter + 1)-th, so between minNumIter + 1 and maxNumIter + 2
        updates run.  The gain: the median of at most the last 4 estimates."""
        cfg, it = self.cfg, self.it
        t0 = time.perf_counter()
        progressive = cfg.useProgressiveGain and cfg.useConvergence
        gain = next_gain(it.metrics, it.gains, cfg.base_gain, progressive, LSST_GAIN_WINDOW)
        new = self.update(it.model, it.acc, gain)
        metric, per_visit, acc = self.sweep(new)
        n = it.iteration  # LSST's modelIter: the updates done before this one
        it.history.append(IterationRecord(n + 1, metric, gain, time.perf_counter() - t0, per_visit))
        it.iteration, it.model, it.acc, it.per_visit = n + 1, new, acc, per_visit
        if cfg.useConvergence and metric == 0.0:
            log.warning("convergence metric became 0 at update %d (no valid data); stopping", n + 1)
            self.stop_reason = StopReason.ZERO_METRIC
        elif cfg.useConvergence:
            self._improvement = (it.metrics[-1] - metric) / metric
            if self._improvement < 0 and n > cfg.min_iterations:
                log.warning("update %d diverged (metric %.6g > %.6g); the LSST task keeps this model", n + 1, metric,
                            it.metrics[-1])  # fmt: skip
                self.stop_reason = StopReason.DIVERGED
        it.gains.append(gain)
        it.metrics.append(metric)
        if self.stop_reason is None and n > self.max_iterations:
            if cfg.useConvergence:
                log.warning("reached maxNumIter = %d (%d updates, LSST's count) before the convergence threshold %g",
                            self.max_iterations, n + 1, cfg.convergenceThreshold)  # fmt: skip
            self.stop_reason = StopReason.MAX_ITERATIONS
        if self.progress is not None:
            self.progress(n + 1, metric, gain)
        return True

    def state(self) -> SolverState:
        """The accepted state, as a checkpoint holds it."""
        it = self.it
        return SolverState(it.iteration, it.model, it.metrics, it.gains, it.history)

    def run(self, hooks: Sequence[Hook] = ()) -> DcrResult:
        """Iterate to the end condition, calling every hook after each accepted iteration (a hook
        may raise to stop the run, as the driver's checkpoint schedule does on SIGTERM)."""
        while self.proceed():
            if self.step():
                for hook in hooks:
                    hook(self.state())
        return self.result()

    def result(self) -> DcrResult:
        """The model as written: the amplified planes, their sum, the masks and the history."""
        it = self.it
        planes = amplified(it.model, self.cfg.accelerateModel)
        assert self.stop_reason is not None, "result() before the iteration ended"
        return DcrResult(
            planes=planes,
            coadd=planes.sum(axis=0),
            variance=self.static.variance,
            mask=self.base_mask,
            nimage=self.nimage,
            nimage_total=self.nimage.sum(axis=0),
            static=self.static,
            raw_model=it.model,
            history=it.history,
            visit_weights=self.visit_weights,
            mask_planes=dict(self.mask_planes),
            stop_reason=self.stop_reason,
            iterations=it.iteration,
            visit_metrics=it.per_visit,
            variance_scale=self.variance_scale,
        )


def solve(warps: WarpStack, config: DcrConfig, **kwargs: object) -> DcrResult:
    """Build the DCR model of ``warps`` with ``config`` (see :class:`DcrSolver`)."""
    return DcrSolver(warps, config, **kwargs).run()  # type: ignore[arg-type]


def matched_template(planes: NDArray, shifts: VisitShifts, order: int) -> NDArray[np.float64]:
    """DCR-matched template of a visit from output ``planes`` (already amplified), (ny, nx)."""
    return kernels.build_template(kernels.prefilter_planes(planes, order), shifts.forward, order)
