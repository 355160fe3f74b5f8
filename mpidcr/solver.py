"""The forward-model iteration of a DCR sky model (SPEC §2), on one tile.

Plain functions on numpy arrays.  Axis order: model planes ``(K, y, x)``,
warp stacks ``(V, y, x)``.  The solver runs on a tile's *outer* box (see
:mod:`mpidcr.tiling`); every patch-wide quantity goes through a
:class:`~mpidcr.reduction.Reducer` over the *inner* box, and the model's
ghost pixels are refreshed by a :class:`HaloExchanger` after each update.
With the serial defaults (whole patch, :class:`SerialReducer`,
:class:`NoExchange`) this is the complete single-process algorithm.

Each iteration streams every warp once: the template of the current model
gives at the same time the visit's convergence-metric sums and its residual,
whose reverse shifts accumulate into the per-sub-filter update.
"""

from __future__ import annotations

import logging
import math
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

log = logging.getLogger(__name__)

#: Pixel values beyond this magnitude (image or variance) are missing data, like NaN: some
#: pipelines mark blank pixels with ±1e30, and float32 sums overflow near 3e38.
MAX_PIXEL_MAGNITUDE = 1e30

#: Precision of the model state, the warps' pixels and the per-iteration arrays.  The inputs are
#: float32 and every per-pixel quantity of an iteration is a short sum (K·V terms at most), so
#: float32 loses nothing measurable while halving memory and traffic; patch-wide sums (metric,
#: noise, weights) are float64.
MODEL_DTYPE = np.dtype(np.float32)


# ----------------------------------------------------------------------------- inputs
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


# ----------------------------------------------------------------------------- pieces
def clamp_to_previous(new: NDArray, old: NDArray, factor: float, width: int, sel: NDArray | None = None,
                      scratch: NDArray | None = None) -> None:  # fmt: skip
    """Step 4: limit ``new`` (ny, nx) to [old/f, |old|·f] (in place) where coherent groups exceed it.

    ``sel``, ``scratch``: optional uint8 work images of the same shape.
    """
    sel = np.empty(new.shape, np.uint8) if sel is None else sel
    scratch = np.empty(new.shape, np.uint8) if scratch is None else scratch
    regularize.clamp_opened(new, old, factor, True, 1.0 / factor, False, width, sel, scratch)


def regularize_frequency(planes: NDArray, factor: float, width: int, noise: float,
                         work: regularize.FrequencyWork | None = None) -> None:  # fmt: skip
    """Step 5 (in place on ``planes`` (K, ny, nx)): limit the sub-filters' departure from their mean.

    With ref = mean of the planes (0 where not positive), smooth = G_w(ref) + 3·noise/(2w):
    clamp each plane to [smooth/√f, smooth·√f] on coherent groups, then replace it by
    ratio·ref with ratio = (G_w(plane) + 3·noise/(2w))/smooth sharpened as
    ratio + 3·(ratio − G_{w/3}(ratio)).  ``noise`` is the background std of plane 0; G_σ is a
    Gaussian (scipy's, reflect, truncate 4).  ``work``: preallocated work images.
    """
    work = work or regularize.FrequencyWork(planes.shape[1:], planes.dtype)
    regularize.regularize_frequency(planes, factor, width, noise, work)


def condition(new: NDArray, old: NDArray, gain: float) -> NDArray:
    """Step 6: the gain-weighted mean (g·new + old)/(1 + g) (the solver fuses it with step 7)."""
    return regularize.condition_weighted(new, old, gain, None, None, out=np.empty_like(new))


def static_share(static: NDArray, weights: NDArray, num_subfilters: int) -> NDArray:
    """T·(1 − M)/K: what the static model contributes to every plane under model weights M (step 7)."""
    return (static * (1 - weights) / num_subfilters).astype(weights.dtype)


def apply_model_weights(new: NDArray, static: NDArray, weights: NDArray) -> NDArray:
    """Step 7: new·M + T·(1 − M)/K for planes ``new`` (K, ny, nx) (the solver fuses it with step 6)."""
    share = static_share(static, weights, new.shape[0])
    return regularize.condition_weighted(new, new, 0.0, weights, share, out=np.empty_like(new))


def next_gain(metrics: Sequence[float], gains: Sequence[float], base_gain: float, progressive: bool) -> float:
    """Gain of the next iteration from the metric and gain histories (SPEC §2 'Gain').

    ``metrics`` must have exactly one element more than ``gains``.
    """
    n = len(metrics)
    if n != len(gains) + 1:
        raise SolverError(f"the metric history ({n}) must be one element longer than the gain history ({len(gains)})")
    if not progressive or n < 3:
        return base_gain
    est = np.array([((1 + gains[i]) * metrics[i + 1] - metrics[i]) / gains[i] for i in range(n - 1)])
    est[est < 0] = 0.0
    final = float(np.median(est[-5:]))
    g_last, c_prev, c_new = gains[-1], metrics[-2], metrics[-1]
    predicted = (final * g_last + c_prev) / (1.0 + g_last)
    denom = (c_prev - final) / (1.0 + g_last)
    if denom == 0:
        return base_gain
    delta = (predicted - c_new) / denom
    return max(base_gain, ((1.0 - abs(delta)) + g_last) / 2.0)


def amplified(planes: NDArray, accelerate: float, out: NDArray | None = None) -> NDArray:
    """(y_k − ȳ)·A + ȳ: the planes as the forward model and the output use them (into ``out``)."""
    if accelerate == 1.0:
        return planes
    out = np.empty(planes.shape, planes.dtype) if out is None else out
    return regularize.amplify(np.ascontiguousarray(planes), accelerate, out)


# ----------------------------------------------------------------------------- outputs
@dataclass
class IterationRecord:
    """One entry of the convergence history (iteration 0 is the initial model)."""

    iteration: int
    metric: float
    gain: float
    seconds: float
    visit_metrics: NDArray


@dataclass
class DcrResult:
    """A solved DCR model on a tile's outer box (slice with ``tile.inner_local`` for owned pixels).

    planes : (K, ny, nx) sub-filter planes as written, (y_k − ȳ)·A + ȳ.
    coadd : (ny, nx) their sum; variance : coadd variance; plane_variance : per plane.
    mask : base mask (static model's, NO_DATA where the model is undetermined).
    nimage : (K, ny, nx) inputs per sub-filter; nimage_total : their sum.
    """

    planes: NDArray
    coadd: NDArray
    variance: NDArray
    plane_variance: NDArray
    mask: NDArray
    nimage: NDArray
    nimage_total: NDArray
    static: StaticModel
    raw_model: NDArray
    history: list[IterationRecord]
    visit_weights: NDArray
    shifts: Sequence[VisitShifts]
    mask_planes: dict[str, int]
    stop_reason: str
    iterations: int
    buffer: int
    tile: Tile
    visit_metrics: NDArray = field(default_factory=lambda: np.zeros(0))
    variance_scale: NDArray = field(default_factory=lambda: np.zeros(0))


@dataclass
class SolverState:
    """What is needed to continue an iteration exactly: the raw model (outer box) and the histories."""

    iteration: int
    model: NDArray
    metrics: list[float]
    gains: list[float]
    history: list[IterationRecord]


# ----------------------------------------------------------------------------- solver
class DcrSolver:
    """Holds one tile's state through the iteration; :meth:`run` does everything.

    Parameters
    ----------
    warps : the tile's warps (outer box).
    config : a validated :class:`DcrConfig`.
    tile : geometry; default the whole patch.
    reducer, exchanger : patch-wide reductions and halo refresh; serial defaults.
    buffer : DCR buffer in pixels; default from the largest shift of all visits.
    progress : called as ``progress(iteration, metric, gain)`` after each iteration.
    fused : at order 1, use the one-pass-per-visit kernel (False: the per-shift kernels, for tests).
    """

    def __init__(
        self,
        warps: WarpStack,
        config: DcrConfig,
        tile: Tile | None = None,
        reducer: Reducer | None = None,
        exchanger: HaloExchanger | None = None,
        buffer: int | None = None,
        progress: Callable[[int, float, float], None] | None = None,
        fused: bool = True,
    ):
        self.warps = warps
        self.cfg = config
        self.tile = tile or Tile.whole(warps.images.shape[1:])
        if self.tile.outer.shape != tuple(warps.images.shape[1:]):
            raise SolverError(
                f"warps of shape {warps.images.shape[1:]} do not fill the tile's outer box {self.tile.outer.shape}"
            )
        self.reducer = reducer or SerialReducer()
        self.exchanger = exchanger or NoExchange()
        self.progress = progress
        self.order = int(config.imageInterpOrder)
        self.K = config.num_subfilters
        max_shift = max((s.max_abs for s in warps.shifts), default=0.0)
        self.buffer = dcr_buffer(max_shift) if buffer is None else int(buffer)
        self.inner = self.tile.inner_local
        planes = warps.mask_planes
        self.bad_bits = plane_bits(planes, config.badMaskPlanes)
        self.converge_bits = plane_bits(planes, config.convergenceMaskPlanes)
        remove = plane_bits(planes, config.removeMaskPlanes)
        warps.images = np.ascontiguousarray(warps.images, dtype=MODEL_DTYPE)
        warps.variances = np.ascontiguousarray(warps.variances)
        warps.masks = np.ascontiguousarray(warps.masks, dtype=np.int32)
        # Good-pixel indicators g_v (bad pixels' values are set to 0) and convergence pixels, in one
        # pass that also clears the removeMaskPlanes bits and marks missing (non-finite) pixels NO_DATA
        self.good, self.converge_pixels = kernels.classify_pixels(
            warps.images, warps.variances, warps.masks, remove, self.bad_bits, self.converge_bits,
            plane_bits(planes, ["NO_DATA"]), MAX_PIXEL_MAGNITUDE,
        )  # fmt: skip
        # order 1: one cache-blocked pass per visit (kernels.fused); order 3: per-shift kernels
        self.fused = fused and self.order == 1
        self._amplified: NDArray | None = None
        self._significance: NDArray | None = None
        # two buffers each for the accumulators and the model: an iteration needs the current
        # ones and writes the next ones, so alternating between two avoids allocating (and
        # page-faulting) two image stacks per iteration
        self._acc_buffers: list[NDArray] = []
        self._model_buffers: list[NDArray] = []
        if self.fused:
            shape = warps.images.shape[1:]
            self.sweep_plan = SweepPlan([VisitPass(shape, s.forward, s.mean) for s in warps.shifts])

    # -- helpers ----------------------------------------------------------------
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

    def _inner(self, a: NDArray) -> NDArray:
        return a[(..., *self.inner)]

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

    # -- initialisation -----------------------------------------------------------
    def scale_warp_variances(self) -> NDArray:
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
                log.warning(
                    "%s: variance scale factor %.3g is beyond scaleWarpVariance.limit = %g; clamped",
                    w.names[v],
                    factor,
                    limit,
                )
                factor = min(max(factor, 1.0 / limit), limit)
            factors[v] = factor
            w.variances[v] *= np.float32(factor)
        log.debug("warp variance scale factors: %s", np.array2string(factors, precision=3))
        return factors

    def initialise(self) -> None:
        cfg, w = self.cfg, self.warps
        V = w.num_visits
        self.variance_scale = self.scale_warp_variances() if cfg.doScaleWarpVariance else np.ones(V)
        # Σ variance and the number of good pixels of each visit (good variances are finite)
        sums = [moments.selected_sums(w.variances[v], self.good[v], region=self.inner) for v in range(V)]
        tot = self.reducer.sum([s for _, s, _ in sums] + [float(n) for n, _, _ in sums])
        self.visit_weights = visit_weights_from_sums(tot[:V], tot[V:], w.airmass if cfg.doAirmassWeight else None)
        empty = [w.names[v] for v in np.flatnonzero(self.visit_weights <= 0)]
        usable = V - len(empty)
        if usable < 2:
            raise InputError(
                f"only {usable} visit(s) have usable pixels ({', '.join(empty[:5])} have none); at least 2 are needed"
            )
        for name in empty:
            log.warning("%s: no usable pixel (all masked, NaN or without variance): visit left out of the model", name)

        self.static = static_sky_model(
            w.images,
            w.variances,
            w.masks,
            self.good,
            self.visit_weights,
            cfg.static_statistic,
            w.mask_planes,
            cfg.sigmaClip,
            cfg.clipIter,
            cfg.maskPropagationThresholds,
            cfg.calcErrorFromInputVariance,
        )
        K = self.K
        self.static_image = self.static.image.astype(MODEL_DTYPE)
        # the starting model, T/K in every plane, in the first of the two model buffers
        self.model = self._next_buffer(self._model_buffers, np.empty((K, *self.static_image.shape), MODEL_DTYPE))
        self.model[...] = (self.static_image / K)[None]
        self.base_mask = self.static.mask.copy()
        self._detect_if_no_convergence_planes()
        self.background = ((self.base_mask & (self.bad_bits | self.converge_bits)) == 0) & self._edge_distance_ok()

        # dcrWeights and nImage from the reverse-shifted good-pixel indicators.
        shape = self.model.shape
        if self.fused:
            self.inverse_weights = np.empty(shape, MODEL_DTYPE)
            self.nimage = np.empty(shape, np.int32)
            self.dcr_good = np.empty(shape[1:], np.bool_)
            fused.coverage(self.sweep_plan, self.good, self.visit_weights > 0, self.inverse_weights, self.nimage,
                           self.dcr_good)  # fmt: skip
        else:
            coverage = np.zeros(shape, dtype=np.float64)
            nimage = np.zeros(shape, dtype=np.int32)
            for v in range(V):
                if self.visit_weights[v] <= 0:
                    continue
                coeffs = kernels.prefilter(self.good[v].astype(np.float64), self.order)
                for k in range(K):
                    shifted = np.zeros(shape[1:], dtype=np.float64)
                    kernels.add_shifted(shifted, coeffs, -w.shifts[v].mean[k], self.order)
                    coverage[k] += shifted
                    nimage[k] += np.rint(shifted).astype(np.int32)
            self.dcr_good = np.all(coverage > 1.0, axis=0)
            with np.errstate(divide="ignore"):
                self.inverse_weights = np.where(self.dcr_good[None], 1.0 / coverage, 0.0).astype(MODEL_DTYPE)
            self.nimage = np.where(self.dcr_good[None], nimage, 0)
        nodata = plane_bits(w.mask_planes, ["NO_DATA"])
        self.base_mask |= np.where(self.dcr_good, 0, nodata).astype(np.int32)

        if cfg.useModelWeights:
            if cfg.modelWeightsWidth < 0:
                raise SolverError("modelWeightsWidth must not be negative")
            m = ((self.base_mask & self.converge_bits) != 0).astype(MODEL_DTYPE)
            if cfg.modelWeightsWidth > 0:
                m = gaussian_filter(m, cfg.modelWeightsWidth)
            peak = float(self.reducer.max([np.max(self._inner(m), initial=0.0)])[0])
            if peak > 0:
                m *= MODEL_DTYPE.type(1.0 / peak)
                self.model_weights: NDArray | None = m
            else:
                log.warning(
                    "no pixel of the static model carries %s; model weights are not applied",
                    "/".join(cfg.convergenceMaskPlanes),
                )
                self.model_weights = None
        else:
            self.model_weights = None
        # T·(1 − M)/K, the static model's share of every plane under the model weights (step 7)
        self.static_share = (
            None if self.model_weights is None else static_share(self.static_image, self.model_weights, K)
        )
        self._work = regularize.FrequencyWork(self.model.shape[1:], MODEL_DTYPE)

    def _detect_if_no_convergence_planes(self) -> None:
        """Warps without DETECTED (or whatever convergenceMaskPlanes names) would leave the metric
        and the model weights empty: detect sources on the static model instead (pixels above
        detectTemplate.thresholdSigma of its noise, grown by detectTemplate.growRadius) and mark
        them in the static model's mask and as every warp's convergence pixels."""
        cfg = self.cfg
        planes = self.warps.mask_planes
        carried = self._inner(self.base_mask & self.converge_bits) != 0
        if float(self.reducer.max([1.0 if carried.any() else 0.0])[0]) > 0 or not cfg.convergenceMaskPlanes:
            return
        name = cfg.convergenceMaskPlanes[0]
        bit = np.int32(1 << add_plane(planes, name))
        self.converge_bits |= int(bit)
        with np.errstate(divide="ignore", invalid="ignore"):
            significance = self.static.image / np.sqrt(self.static.variance)
        sources = np.isfinite(significance) & (significance >= cfg.detectTemplate.thresholdSigma)
        sources = kernels.binary_dilation_diamond(sources, int(cfg.detectTemplate.growRadius))
        self.base_mask |= np.where(sources, bit, np.int32(0))
        self.converge_pixels[:] = sources[None]
        count = float(self.reducer.sum([np.count_nonzero(self._inner(sources))])[0])
        log.warning(
            "no input pixel carries %s: marked %d pixels above %.1f sigma of the static model as %s instead",
            "/".join(cfg.convergenceMaskPlanes),
            int(count),
            cfg.detectTemplate.thresholdSigma,
            name,
        )

    # -- one pass over the warps --------------------------------------------------
    def sweep(self, model: NDArray) -> tuple[float, NDArray, NDArray]:
        """Templates of ``model`` for every visit → (metric, per-visit metrics, update accumulators).

        The accumulators are Σ_v reverse-shift_{v,k}(residual_v), (K, ny, nx).
        """
        w, order = self.warps, self.order
        V = w.num_visits
        noise = self.background_noise(model[1])
        if self._amplified is None:  # reused: fresh pages cost faults each time
            self._amplified = np.empty(model.shape, model.dtype)
            self._significance = np.empty(model.shape[1:], model.dtype)
        # one pass: the amplified planes and the metric's significance |ȳ| + 3·noise
        accelerate = self.cfg.accelerateModel
        model = np.ascontiguousarray(model)  # (a no-op for the solver's own buffers)
        regularize.amplify(model, accelerate, self._amplified, self._significance, 3.0 * noise)
        planes = model if accelerate == 1.0 else self._amplified
        significance = self._significance
        if float(self.reducer.max([np.max(self._inner(significance), initial=0.0)])[0]) == 0.0:
            significance = np.ones_like(significance)
        acc = self._next_buffer(self._acc_buffers, model)
        sums = np.zeros(2 * V)
        if self.fused:  # the sweep sets every accumulator pixel
            ys, xs = self.inner
            bounds = (ys.start, ys.stop, xs.start, xs.stop)
            visit_sums = self.sweep_plan.run(planes, w.images, self.good, self.converge_pixels, significance, bounds,
                                             self.visit_weights > 0, acc)  # fmt: skip
            sums[:V], sums[V:] = visit_sums[:, 0], visit_sums[:, 1]
        else:
            acc.fill(0)
            forward = kernels.prefilter_planes(planes, order)
            sig_inner = self._inner(significance)
            template = np.zeros(model.shape[1:], dtype=np.float64)
            for v in range(V):
                if self.visit_weights[v] <= 0:
                    continue
                kernels.build_template(forward, w.shifts[v].forward, order, out=template)
                image = w.images[v]
                good = self.good[v]
                ti, si = self._inner(template), self._inner(image)
                use = self._inner(good) & self._inner(self.converge_pixels[v]) & np.isfinite(ti)
                sums[v] = np.sum(np.abs(si - ti)[use] * sig_inner[use])
                sums[V + v] = np.sum(np.abs(si + ti)[use] * sig_inner[use]) / 2.0
                residual = np.where(good, image - template, 0.0)
                kernels.accumulate_reverse(residual, w.shifts[v].mean, order, acc)
        total = self.reducer.sum(sums)
        with np.errstate(divide="ignore", invalid="ignore"):
            per_visit = np.where(total[V:] > 0, total[:V] / total[V:], 0.0)
        active = self.visit_weights > 0
        metric = float(per_visit[active].mean()) if np.any(active) else 0.0
        return metric, per_visit, acc

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
    def run(
        self,
        resume: SolverState | None = None,
        after_iteration: Callable[[SolverState], None] | None = None,
    ) -> DcrResult:
        """Iterate to the end condition; optionally from a checkpointed ``resume`` state.

        ``after_iteration(state)`` is called after every accepted iteration (the
        driver writes checkpoints and honours SIGTERM there; it may raise to stop).
        """
        cfg = self.cfg
        t0 = time.perf_counter()
        self.initialise()
        model = self.model if resume is None else resume.model
        metric, per_visit, acc = self.sweep(model)
        if resume is None:
            history = [IterationRecord(0, metric, float("nan"), time.perf_counter() - t0, per_visit)]
            metrics, gains, n = [metric], [], 0
        else:
            history, metrics, gains, n = (
                list(resume.history),
                list(resume.metrics),
                list(resume.gains),
                resume.iteration,
            )
        min_it, max_it = cfg.min_iterations, cfg.max_iterations
        stop = "max_iterations"
        if cfg.useConvergence and metric == 0.0:
            stop = "zero_metric"
            log.warning(
                "convergence metric is 0 before the first iteration: no pixels carry %s",
                "/".join(cfg.convergenceMaskPlanes),
            )
        else:
            while n < max_it:
                if cfg.useConvergence and n >= min_it and n > 0:
                    improvement = (metrics[-2] - metrics[-1]) / metrics[-1]
                    if improvement <= cfg.convergenceThreshold:
                        stop = "converged"
                        break
                t_it = time.perf_counter()
                gain = next_gain(metrics, gains, cfg.base_gain, cfg.useProgressiveGain)
                new = self.update(model, acc, gain)
                new_metric, new_per_visit, new_acc = self.sweep(new)
                n += 1
                record = IterationRecord(n, new_metric, gain, time.perf_counter() - t_it, new_per_visit)
                if cfg.useConvergence:
                    if new_metric == 0.0:
                        log.warning("convergence metric became 0 at iteration %d (no valid data); stopping", n)
                        model, acc, metric, per_visit = new, new_acc, new_metric, new_per_visit
                        history.append(record)
                        stop = "zero_metric"
                        break
                    if new_metric > metrics[-1] and n > min_it:
                        log.warning(
                            "iteration %d diverged (metric %.6g > %.6g); keeping the model of iteration %d",
                            n,
                            new_metric,
                            metrics[-1],
                            n - 1,
                        )
                        history.append(record)
                        n -= 1
                        stop = "diverged"
                        break
                gains.append(gain)
                metrics.append(new_metric)
                model, acc, metric, per_visit = new, new_acc, new_metric, new_per_visit
                history.append(record)
                if self.progress is not None:
                    self.progress(n, new_metric, gain)
                if after_iteration is not None:
                    after_iteration(SolverState(n, model, metrics, gains, history))
            else:
                if cfg.useConvergence:
                    log.warning(
                        "reached maxNumIter = %d before the convergence threshold %g", max_it, cfg.convergenceThreshold
                    )
        return self._result(model, history, stop, n, per_visit)

    def _result(
        self, model: NDArray, history: list[IterationRecord], stop: str, n: int, per_visit: NDArray
    ) -> DcrResult:
        planes = amplified(model, self.cfg.accelerateModel)
        # every plane carries 1/K of the coadd's variance: a read-only broadcast view, not K copies
        plane_var = np.broadcast_to((self.static.variance / self.K)[None], (self.K, *self.static.variance.shape))
        return DcrResult(
            planes=planes,
            coadd=planes.sum(axis=0),
            variance=self.static.variance,
            plane_variance=plane_var,
            mask=self.base_mask,
            nimage=self.nimage,
            nimage_total=self.nimage.sum(axis=0),
            static=self.static,
            raw_model=model,
            history=history,
            visit_weights=self.visit_weights,
            shifts=self.warps.shifts,
            mask_planes=dict(self.warps.mask_planes),
            stop_reason=stop,
            iterations=n,
            buffer=self.buffer,
            tile=self.tile,
            visit_metrics=per_visit,
            variance_scale=self.variance_scale,
        )


def solve(warps: WarpStack, config: DcrConfig, **kwargs: object) -> DcrResult:
    """Build the DCR model of ``warps`` with ``config`` (see :class:`DcrSolver`)."""
    return DcrSolver(warps, config, **kwargs).run()  # type: ignore[arg-type]


def matched_template(planes: NDArray, shifts: VisitShifts, order: int) -> NDArray[np.float64]:
    """DCR-matched template of a visit from output ``planes`` (already amplified), (ny, nx)."""
    return kernels.build_template(kernels.prefilter_planes(planes, order), shifts.forward, order)


def gaussian_radius(sigma: float) -> int:
    """Half-width in pixels of scipy's Gaussian filter of ``sigma`` (truncate = 4)."""
    return int(4.0 * float(sigma) + 0.5) if sigma > 0 else 0


#: Pixels the order-3 spline prefilter needs for its edge effect to decay below 1e-7 (|z|^n, z = √3 − 2).
PREFILTER_MARGIN = math.ceil(math.log(1e-7) / math.log(2.0 - math.sqrt(3.0)))


def halo_width(config: DcrConfig, buffer: int) -> int:
    """Ghost pixels a tile needs so that one iteration computes its inner box exactly.

    One iteration chains: forward shift (template) → reverse shift (update),
    each ``buffer`` + the interpolation support (order 3: + prefilter margin);
    the iteration clamp's opening (2·regularizationWidth); the frequency
    regularization (smoothing, opening, smoothing, sharpening).  The model
    weights' Gaussian is computed once from exact data, so it only needs to fit.
    """
    order = int(config.imageInterpOrder)
    support = 1 if order == 1 else 2 + PREFILTER_MARGIN
    width = int(config.regularizationWidth)
    halo = 2 * (buffer + support)
    if config.regularizeModelIterations > 0:
        halo += 2 * width
    if config.regularizeModelFrequency > 0:
        halo += 2 * gaussian_radius(width) + 2 * width + gaussian_radius(width / 3.0)
    if config.useModelWeights:
        # the model weights smooth the static mask, which may carry detections grown on the static model
        halo = max(halo, gaussian_radius(config.modelWeightsWidth) + int(config.detectTemplate.growRadius))
    return halo
