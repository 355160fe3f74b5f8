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

import numpy as np
from numpy.typing import NDArray

from . import kernels
from .coadd import StaticModel, static_sky_model, visit_weights_from_sums
from .config import DcrConfig
from .dcr import VisitShifts, dcr_buffer
from .errors import InputError, SolverError
from .halo import HaloExchanger, NoExchange
from .kernels import fused, moments, regularize
from .kernels.fused import SweepPlan, VisitPass
from .kernels.gaussian import gaussian_filter
from .masks import add_plane, plane_bits
from .reduction import Reducer, SerialReducer, clipped_std, merged_std
from .tiling import Tile
from .update import amplified, clamp_to_previous, next_gain, regularize_frequency, static_share

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

    After construction: ``static`` (the static model), ``visit_weights``, ``variance_scale``,
    ``inverse_weights``, ``nimage``, ``model_weights``, ``mask_planes`` (the warps' own, plus
    a plane for detections made on the static model), and the iterate of the first model.
    """

    def __init__(self, warps: WarpStack, config: DcrConfig, tile: Tile | None = None, reducer: Reducer | None = None,
                 exchanger: HaloExchanger | None = None, buffer: int | None = None,
                 progress: Callable[[int, float, float], None] | None = None, fused: bool = True,
                 resume: SolverState | None = None):  # fmt: skip
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
        self.converge_bits = plane_bits(self.mask_planes, config.convergenceMaskPlanes)
        # order 1: one cache-blocked pass per visit (kernels.fused); order 3: per-shift kernels
        self.fused = fused and self.order == 1
        self._allocate()
        self.good, self.converge_pixels = self._classify()
        self.variance_scale = self._scale_warp_variances() if config.doScaleWarpVariance else np.ones(warps.num_visits)
        self.visit_weights = self._visit_weights()
        self.static = static_sky_model(warps.images, warps.variances, warps.masks, self.good, self.visit_weights,
                                       config.static_statistic, self.mask_planes, config.sigmaClip, config.clipIter,
                                       config.maskPropagationThresholds,
                                       config.calcErrorFromInputVariance)  # fmt: skip
        self.static_image = self.static.image.astype(MODEL_DTYPE)
        self.base_mask = self.static.mask.copy()
        self._detect_if_no_convergence_planes()
        self.background = ((self.base_mask & (self.bad_bits | self.converge_bits)) == 0) & self._edge_distance_ok()
        self.inverse_weights, self.nimage, self.dcr_good = self._coverage()
        self.base_mask |= np.where(self.dcr_good, 0, plane_bits(self.mask_planes, ["NO_DATA"])).astype(np.int32)
        # the model weights M and T·(1 − M)/K, the static model's share of every plane under them (step 7)
        self.model_weights, self.static_share = self._model_weights()
        self.stop_reason: StopReason | None = None
        self.it = self._start(resume)

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

    def _edge_distance_ok(self) -> NDArray[np.bool_]:
        """Outer-box pixels at least ``buffer`` from the patch edge."""
        t = self.tile
        ny, nx = t.patch.shape
        yy = np.arange(t.outer.y0, t.outer.y1)
        xx = np.arange(t.outer.x0, t.outer.x1)
        oky = (yy >= self.buffer) & (yy < ny - self.buffer)
        okx = (xx >= self.buffer) & (xx < nx - self.buffer)
        return oky[:, None] & okx[None, :]

    def background_noise(self, image: NDArray) -> float:
        """Std of ``image`` over background pixels of the patch (merged over tiles)."""
        return merged_std(self.reducer, image, self.background, region=self.inner)

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
            raise InputError(
                f"only {usable} visit(s) have usable pixels ({', '.join(empty[:5])} have none); at least 2 are needed"
            )
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
        modelWeightsWidth, divided by its patch-wide maximum; and T·(1 − M)/K.  (None, None) when
        off or empty."""
        cfg = self.cfg
        if not cfg.useModelWeights:
            return None, None
        if cfg.modelWeightsWidth < 0:
            raise SolverError("modelWeightsWidth must not be negative")
        m = ((self.base_mask & self.converge_bits) != 0).astype(MODEL_DTYPE)
        if cfg.modelWeightsWidth > 0:
            m = gaussian_filter(m, cfg.modelWeightsWidth)
        peak = float(self.reducer.max([np.max(self._inner(m), initial=0.0)])[0])
        if peak <= 0:
            log.warning("no pixel of the static model carries %s; model weights are not applied",
                        "/".join(cfg.convergenceMaskPlanes))  # fmt: skip
            return None, None
        m *= MODEL_DTYPE.type(1.0 / peak)
        return m, static_share(self.static_image, m, self.K)

    def _start(self, resume: SolverState | None) -> _Iterate:
        """The iterate of the first model (T/K in every plane, or the resumed one) and its sweep."""
        t0 = time.perf_counter()
        # the starting model, T/K in every plane, in the first of the two model buffers
        model = self._next_buffer(self._model_buffers, np.empty((self.K, *self.static_image.shape), MODEL_DTYPE))
        model[...] = (self.static_image / self.K)[None]
        if resume is not None:
            model = resume.model
        metric, per_visit, acc = self.sweep(model)
        if resume is None:
            history = [IterationRecord(0, metric, float("nan"), time.perf_counter() - t0, per_visit)]
            it = _Iterate(0, model, acc, per_visit, [metric], [], history)
        else:
            it = _Iterate(resume.iteration, model, acc, per_visit, list(resume.metrics), list(resume.gains),
                          list(resume.history))  # fmt: skip
        if self.cfg.useConvergence and metric == 0.0:
            log.warning("convergence metric is 0 before the first iteration: no pixels carry %s",
                        "/".join(self.cfg.convergenceMaskPlanes))  # fmt: skip
            self.stop_reason = StopReason.ZERO_METRIC
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

        The accumulators are Σ_v reverse-shift_{v,k}(residual_v), (K, ny, nx).
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
        sums = self._sweep_fused(planes, significance, acc) if self.fused else self._sweep_per_shift(planes,
                                                                                                    significance, acc)  # fmt: skip
        total = self.reducer.sum(sums)
        with np.errstate(divide="ignore", invalid="ignore"):
            per_visit = np.where(total[V:] > 0, total[:V] / total[V:], 0.0)
        active = self.visit_weights > 0
        metric = float(per_visit[active].mean()) if np.any(active) else 0.0
        return metric, per_visit, acc

    def _sweep_fused(self, planes: NDArray, significance: NDArray, acc: NDArray) -> NDArray:
        """Order 1: one cache-blocked pass per visit (sets every accumulator pixel); the metric's
        numerator and denominator sums of each visit, (2V,)."""
        V = self.warps.num_visits
        ys, xs = self.inner
        bounds = (ys.start, ys.stop, xs.start, xs.stop)
        visit_sums = self.sweep_plan.run(planes, self.warps.images, self.good, self.converge_pixels, significance,
                                         bounds, self.visit_weights > 0, acc)  # fmt: skip
        sums = np.zeros(2 * V)
        sums[:V], sums[V:] = visit_sums[:, 0], visit_sums[:, 1]
        return sums

    def _sweep_per_shift(self, planes: NDArray, significance: NDArray, acc: NDArray) -> NDArray:
        """Any order, one shift at a time (the reference path of the fused sweep)."""
        w, order, V = self.warps, self.order, self.warps.num_visits
        sums = np.zeros(2 * V)
        acc.fill(0)
        forward = kernels.prefilter_planes(planes, order)
        sig_inner = self._inner(significance)
        template = np.zeros(planes.shape[1:], dtype=np.float64)
        for v in map(int, np.flatnonzero(self.visit_weights > 0)):
            kernels.build_template(forward, w.shifts[v].forward, order, out=template)
            image, good = w.images[v], self.good[v]
            ti, si = self._inner(template), self._inner(image)
            use = self._inner(good) & self._inner(self.converge_pixels[v]) & np.isfinite(ti)
            sums[v] = np.sum(np.abs(si - ti)[use] * sig_inner[use])
            sums[V + v] = np.sum(np.abs(si + ti)[use] * sig_inner[use]) / 2.0
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
        if cfg.regularizeModelIterations > 0:
            for k in range(self.K):
                clamp_to_previous(new[k], model[k], cfg.regularizeModelIterations, width, work.sel, work.scratch)
        if cfg.regularizeModelFrequency > 0:
            noise = self.background_noise(new[0])
            regularize_frequency(new, cfg.regularizeModelFrequency, width, noise, work)
        # steps 6 and 7 in one pass, in place
        regularize.condition_weighted(new, model, gain, self.model_weights, self.static_share, out=new)
        self.exchanger.exchange(new)
        return new

    # -- the loop -----------------------------------------------------------------
    def proceed(self) -> bool:
        """Whether to iterate again; when not, :attr:`stop_reason` says why."""
        if self.stop_reason is not None:
            return False
        cfg, it = self.cfg, self.it
        if it.iteration >= cfg.max_iterations:
            if cfg.useConvergence:
                log.warning("reached maxNumIter = %d before the convergence threshold %g", cfg.max_iterations,
                            cfg.convergenceThreshold)  # fmt: skip
            self.stop_reason = StopReason.MAX_ITERATIONS
            return False
        if cfg.useConvergence and it.iteration >= cfg.min_iterations and it.iteration > 0:
            improvement = (it.metrics[-2] - it.metrics[-1]) / it.metrics[-1]
            if improvement <= cfg.convergenceThreshold:
                self.stop_reason = StopReason.CONVERGED
                return False
        return True

    def step(self) -> bool:
        """One iteration: gain, update, sweep.  Returns whether it was accepted; an iteration that
        ends the run (a zero metric, or divergence: the model before it is kept) is not."""
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
        it.iteration, it.model, it.acc, it.per_visit = n, new, acc, per_visit
        if self.progress is not None:
            self.progress(n, metric, gain)
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
