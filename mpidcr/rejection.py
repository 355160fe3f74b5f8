"""CompareWarp artifact rejection over the ranks: which pixels of which warp are transient artifacts.

The numerical steps are :mod:`mpidcr.artifacts`; this module runs them where the data are.

* Per-pixel work on each rank's tile: its window of every warp (inner box grown by the PSF-matching
  and smoothing kernels' radii, read from the files), each warp PSF-matched, their clipped mean
  (MEANCLIP, 2.5σ, 3 passes, as LSST's ``assembleStaticSkyModel`` of CompareWarp), the candidate
  pixels, nImage and the sources of that model — all on the inner box, bit for bit what one rank
  computes for the whole patch.
* Footprints cross tiles, so each visit's candidates (and its prefilter mask) go whole to one owner
  rank (visit v: rank v mod size), which labels, grows and prefilters them; the epoch count is the
  sum over the owners (integers: exact); each owner then filters its visits' footprints, finds their
  streaks, and broadcasts the result, which every rank keeps bit-packed for the whole patch.

The result, :class:`ArtifactMasks`, adds CLIPPED (and ``streakMaskName``) bits to the warp windows
as they are read for the solve (:func:`mpidcr.driver.read_box`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from . import artifacts as af
from .coadd import static_sky_model, visit_weights_from_sums
from .config import DcrConfig
from .dcr import VisitShifts
from .io.warps import WarpInfo, read_window
from .masks import add_plane, plane_bits
from .parallel.comm import Comm
from .psf import FWHM_PER_SIGMA, Psf
from .tiling import Box, Plan

log = logging.getLogger(__name__)

#: LSST's CompareWarp static model of the PSF-matched warps: MEANCLIP, 2.5σ, 3 passes
CLIP_SIGMA, CLIP_ITERATIONS = 2.5, 3


@dataclass
class ArtifactMasks:
    """Each visit's rejected pixels over the whole patch, bit-packed: ``clipped`` (CLIPPED: the
    transient footprints and the streaks' cores, the trail ± one PSF σ; out of the static model and
    the fit) and ``streak`` (streakMaskName: the streaks grown by growStreakFp PSF σ; out of the
    static model); per-visit pixel counts of both."""

    shape: tuple[int, int]
    clipped: list[NDArray[np.uint8]]
    streak: list[NDArray[np.uint8]]
    counts: list[tuple[int, int]] = field(default_factory=list)
    common_sigma: float = 0.0

    def _unpack(self, packed: NDArray[np.uint8], box: Box) -> NDArray[np.bool_]:
        whole = np.unpackbits(packed, count=self.shape[0] * self.shape[1]).reshape(self.shape)
        return whole[box.slices()].astype(bool)

    def window(self, visit: int, box: Box) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
        """(clipped, streak) pixels of visit ``visit`` in ``box``."""
        return self._unpack(self.clipped[visit], box), self._unpack(self.streak[visit], box)


@dataclass(frozen=True)
class Matching:
    """The common PSF σ and each visit's matching-kernel σ (pixels), and where they came from."""

    common: float
    kernels: NDArray[np.float64]
    how: str
    max_radius: int = 10  # matchingKernelSize // 2

    @property
    def halo(self) -> int:
        """Pixels of a window beyond its inner box: the matching kernel's and the smoothing's radius."""
        return (af.kernel_radius(float(self.kernels.max(initial=0.0)), self.max_radius)
                + af.kernel_radius(self.common))  # fmt: skip


def given_matching(config: DcrConfig, psf_matched: list[WarpInfo], psfs: list[Psf | None],
                   pixel_scale: float) -> Matching:  # fmt: skip
    """The PSF matching of given PSF-matched warps: no kernels; their common PSF from the first
    one's PSF (HDU, manifest, header), else what mpidcr would have matched to."""
    from .io.psf import visit_psf

    known = visit_psf(psf_matched[0], pixel_scale)
    common = known.fwhm / pixel_scale / FWHM_PER_SIGMA if known is not None else matching(config, psfs, pixel_scale).common
    return Matching(common, np.zeros(len(psf_matched)), "the given PSF-matched warps", int(config.matchingKernelSize) // 2)


def matching(config: DcrConfig, psfs: list[Psf | None], pixel_scale: float) -> Matching:
    """The PSF matching of the warps: each visit's PSF FWHM (PSF HDU, manifest, header) as a
    Gaussian; visits without one take the broadest known; with none known, every visit is taken
    at modelPsf.defaultFwhm (so not matched at all, a warning says so)."""
    fwhms = [p.fwhm for p in psfs if p is not None]
    if not fwhms:
        fallback = float(config.modelPsf.defaultFwhm)
        log.warning("artifact rejection: no visit has a PSF, so the warps are not PSF-matched (all taken at "
                    "modelPsf.defaultFwhm = %.2f arcsec); give PSFs or psfFwhm for a better rejection", fallback)  # fmt: skip
        how = "none known"
    else:
        fallback, how = max(fwhms), "per-visit PSFs"
        if len(fwhms) < len(psfs):
            how = f"{len(fwhms)} of {len(psfs)} visits' PSFs (the others at the broadest)"
    sigmas = np.array([(p.fwhm if p is not None else fallback) for p in psfs]) / pixel_scale / FWHM_PER_SIGMA
    radius = int(config.matchingKernelSize) // 2
    if not fwhms:
        return Matching(float(sigmas.max()), np.zeros(len(psfs)), how, radius)
    common, kernels = af.matching_sigmas(sigmas)
    return Matching(common, kernels, how, radius)


@dataclass
class _TileResult:
    """One rank's inner-box results: per visit the candidates and the prefilter's good pixels;
    nImage; the static model's sources."""

    candidates: list[NDArray[np.bool_]]
    prefilter_good: list[NDArray[np.bool_]]
    nimage: NDArray[np.uint16]
    sources: NDArray[np.bool_]


def _tile_pass(infos: list[WarpInfo], planes: dict[str, int], config: DcrConfig, match: Matching, inner: Box,
               patch: Box, comm: Comm, plan: Plan, dcr_half_spans: NDArray, flux_scales: NDArray | None = None,
               psf_matched: list[WarpInfo] | None = None) -> _TileResult:  # fmt: skip
    """PSF-match every warp on this rank's window, their clipped mean, and the candidates,
    nImage and sources on the inner box.  ``dcr_half_spans``: half of each visit's DCR across the
    band, pixels (mpidcr's threshold allows a source's colour to move it that far)."""
    window = inner.grow(match.halo, patch)
    local = inner.slices(window)
    V = len(infos)
    bad = plane_bits(planes, config.badMaskPlanes)
    prefilter_bits = plane_bits(planes, config.prefilterArtifactsMaskPlanes)
    matched = np.empty((V, *window.shape), np.float32)
    matched_var = np.empty((V, *window.shape), np.float32)
    masks = np.empty((V, *window.shape), np.int32)
    prefilter_good = []
    sums = np.zeros(2 * V)
    for v, info in enumerate(infos):
        image, variance, mask = read_window(info, window, planes)
        if flux_scales is not None:  # scaleZeroPoint
            image, variance = image * flux_scales[v], variance * flux_scales[v] ** 2
        with np.errstate(invalid="ignore"):
            good = np.isfinite(image) & np.isfinite(variance) & (variance > 0) & ((mask & bad) == 0)
        if psf_matched is not None:  # given (LSST's psfMatchedWarps): read, not made
            pm_image, pm_var, pm_mask = read_window(psf_matched[v], window, planes)
            scale = 1.0 if flux_scales is None else flux_scales[v]
            with np.errstate(invalid="ignore"):
                pm_good = np.isfinite(pm_image) & np.isfinite(pm_var) & (pm_var > 0) & ((pm_mask & bad) == 0)
            matched[v] = np.where(pm_good, pm_image * scale, np.nan)
            matched_var[v] = np.where(pm_good, pm_var * scale**2, np.nan)
        else:
            matched[v], matched_var[v] = af.psf_match(image, variance, good, float(match.kernels[v]),
                                                      match.max_radius)  # fmt: skip
        masks[v] = mask
        prefilter_good.append((mask[local] & prefilter_bits) == 0)
        inner_good = good[local]
        sums[v], sums[V + v] = float(variance[local][inner_good].sum(dtype=np.float64)), float(inner_good.sum())
    # the visits' weights: inverse mean variance of their good pixels (patch-wide)
    reducer, _ = comm.decompose(plan)
    total = reducer.sum(sums)
    weights = visit_weights_from_sums(total[:V], total[V:], None)
    finite = np.isfinite(matched) & np.isfinite(matched_var)
    static = static_sky_model(np.where(finite, matched, 0.0).astype(np.float32),
                              np.where(finite, matched_var, 0.0).astype(np.float32), masks, finite, weights,
                              "MEANCLIP", planes, CLIP_SIGMA, CLIP_ITERATIONS)  # fmt: skip
    threshold = float(config.detect.thresholdSigma)
    candidates = []
    nimage = np.zeros(inner.shape, np.uint16)
    model, model_var = static.image[local].astype(np.float64), static.variance[local].astype(np.float64)
    allowance = None
    if not config.lsst("artifactDetection"):
        slope = af.gradient_magnitude(static.image)[local]
        allowance = (float(config.detect.psfMismatch) * model) ** 2
    for v in range(V):
        diff = matched[v][local].astype(np.float64) - model
        var = matched_var[v][local].astype(np.float64) + model_var
        if allowance is not None:
            var = var + allowance + (float(config.detect.dcrAllowance) * dcr_half_spans[v] * slope) ** 2
        candidates.append(af.candidate_pixels(diff, var, threshold) & finite[v][local])
        nimage += (finite[v][local] & ((masks[v][local] & bad) == 0)).astype(np.uint16)
    if config.doPreserveContainedBySource:
        sources = af.source_footprints(static.image, static.variance, match.common,
                                       float(config.detectTemplate.preserveThresholdSigma), 0.0)[local]  # fmt: skip
    else:
        sources = np.zeros(inner.shape, dtype=bool)
    return _TileResult(candidates, prefilter_good, nimage, sources)


def _assemble(parts: list[tuple[Box, NDArray]], shape: tuple[int, int], dtype: type) -> NDArray:
    """A whole-patch array from (inner box, bit-packed or plain array) parts."""
    out: NDArray = np.zeros(shape, dtype)
    for box, data in parts:
        if data.dtype == np.uint8 and dtype is bool:
            data = np.unpackbits(data, count=box.size).reshape(box.shape).astype(bool)
        out[box.slices()] = data
    return out


def _pack(a: NDArray[np.bool_]) -> NDArray[np.uint8]:
    return np.packbits(a.ravel())


def _transient(labelled: dict[int, tuple[NDArray, int, NDArray]], epochs: NDArray, nimage: NDArray,
               limits: af.EpochLimits, sources: NDArray | None, refine: bool, comm: Comm,
               max_passes: int = 5) -> dict[int, NDArray[np.bool_]]:  # fmt: skip
    """Per owned visit, which of its footprints are artifacts (LSST's filter, then
    ``doPreserveContainedBySource`` with ``sources``).  With ``refine`` (mpidcr), passes follow in
    which another visit's footprints already found to be artifacts no longer count as epochs in
    which a pixel is an outlier (a cosmic ray under another visit's satellite trail is still a
    transient), until nothing changes."""
    def judge(counts: dict[int, NDArray]) -> dict[int, NDArray[np.bool_]]:
        out = {}
        for v, (labels, n, keep) in labelled.items():
            artifact = af.transient_footprints(labels, n, counts[v], nimage, limits) & keep
            if sources is not None:
                artifact &= ~af.contained_in(labels, n, sources)
            out[v] = artifact
        return out

    found = judge({v: epochs for v in labelled})
    for _ in range(max_passes if refine else 0):
        own = {v: af.select_labels(labels, found[v]).astype(np.uint16) for v, (labels, _, _) in labelled.items()}
        explained = comm.allreduce_sum(sum(own.values(), np.zeros(epochs.shape, np.uint16)))
        again = judge({v: epochs - explained + own[v] for v in labelled})
        changed = any(int(np.count_nonzero(again[v] != found[v])) for v in labelled)
        found = again
        if not comm.any_rank(changed):
            break
    return found


def find_artifacts(infos: list[WarpInfo], planes: dict[str, int], psfs: list[Psf | None], pixel_scale: float,
                   config: DcrConfig, plan: Plan, rank_inner: Box, comm: Comm,
                   shifts: list[VisitShifts] | None = None, flux_scales: NDArray | None = None,
                   psf_matched: list[WarpInfo] | None = None) -> ArtifactMasks:  # fmt: skip
    """Every visit's transient artifacts and streaks (module docstring); collective.  Adds the
    CLIPPED and ``streakMaskName`` planes to ``planes``.  ``shifts``: the visits' DCR shifts (for
    the DCR allowance of the candidate threshold; None: none); ``flux_scales``: scaleZeroPoint's
    factors (None: 1); ``psf_matched``: each visit's given PSF-matched warp (None: made here)."""
    add_plane(planes, "CLIPPED")
    add_plane(planes, config.streakMaskName)
    shape = plan.shape
    patch = Box(0, shape[0], 0, shape[1])
    V = len(infos)
    match = matching(config, psfs, pixel_scale) if psf_matched is None else \
        given_matching(config, psf_matched, psfs, pixel_scale)  # fmt: skip
    spans = np.zeros(V) if shifts is None else np.array(
        [abs(s.refraction_arcsec[0] - s.refraction_arcsec[-1]) / 2.0 / pixel_scale for s in shifts])
    tile = _tile_pass(infos, planes, config, match, rank_inner, patch, comm, plan, spans, flux_scales, psf_matched)
    # nImage and the sources, whole, on every rank
    shared = comm.allgather((rank_inner, tile.nimage, _pack(tile.sources)))
    nimage = _assemble([(b, n) for b, n, _ in shared], shape, np.uint16)
    sources = _assemble([(b, s) for b, _, s in shared], shape, bool)
    sources = af.grow(sources, af.grow_radius(float(config.detectTemplate.nSigmaToGrow), match.common))
    # each visit's candidates go whole to its owner
    mine: dict[int, tuple[NDArray, NDArray]] = {}
    for v in range(V):
        owner = v % comm.size
        parts = comm.gather((rank_inner, _pack(tile.candidates[v]), _pack(tile.prefilter_good[v])), root=owner)
        if comm.rank == owner and parts is not None:
            mine[v] = (_assemble([(b, c) for b, c, _ in parts], shape, bool),
                       _assemble([(b, g) for b, _, g in parts], shape, bool))  # fmt: skip
    del tile
    grow = af.grow_radius(float(config.detect.nSigmaToGrow), match.common)
    labelled: dict[int, tuple[NDArray, int, NDArray]] = {}
    epochs = np.zeros(shape, np.uint16)
    for v, (candidates, good) in mine.items():
        labels, n = af.footprints(candidates, int(config.detect.minPixels), grow)
        keep = af.prefilter(labels, n, good, float(config.prefilterArtifactsRatio)) if config.doPrefilterArtifacts \
            else np.r_[False, np.ones(n, dtype=bool)]  # fmt: skip
        labelled[v] = (labels, n, keep)
        epochs += af.select_labels(labels, keep).astype(np.uint16)
    epochs = comm.allreduce_sum(epochs)
    limits = af.EpochLimits(int(config.maxNumEpochs), float(config.maxFractionEpochsLow),
                            float(config.maxFractionEpochsHigh), float(config.spatialThreshold))  # fmt: skip
    streak_extra = int(float(config.growStreakFp) * match.common)
    artifacts = _transient(labelled, epochs, nimage, limits, sources if config.doPreserveContainedBySource else None,
                           refine=not config.lsst("artifactDetection"), comm=comm)  # fmt: skip
    results: dict[int, tuple[NDArray, NDArray]] = {}
    for v, (labels, _, keep) in labelled.items():
        clipped = af.select_labels(labels, artifacts[v])
        streak = np.zeros(shape, dtype=bool)
        if config.doFilterMorphological:
            for s in af.find_streaks(af.select_labels(labels, keep), int(config.maskStreaks.minLengthPixels)):
                core = af.streak_pixels(shape, s, match.common)
                if config.doPreserveContainedBySource and not (core & ~sources).any():
                    continue  # (LSST: a streak inside a source of the static model stays)
                clipped |= core  # the trail itself and one PSF σ around it
                streak |= af.streak_pixels(shape, s, streak_extra)
        results[v] = (_pack(clipped), _pack(streak))
    clipped_all, streak_all, counts = [], [], []
    for v in range(V):
        packed = comm.bcast(results.get(v), root=v % comm.size)
        clipped_all.append(packed[0])
        streak_all.append(packed[1])
        counts.append((int(np.unpackbits(packed[0]).sum()), int(np.unpackbits(packed[1]).sum())))
    out = ArtifactMasks(shape, clipped_all, streak_all, counts, match.common)
    if comm.rank == 0:
        total, on_streaks = sum(c for c, _ in counts), sum(n for _, n in counts)
        log.info("artifact rejection (PSF matching to sigma %.2f px from %s): %d pixels CLIPPED in %d of %d visits "
                 "(%d in grown streaks)", match.common, match.how, total, sum(1 for c, _ in counts if c), V,
                 on_streaks)  # fmt: skip
        for info, (c, n) in zip(infos, counts, strict=True):
            if c:
                log.debug("%s: %d pixels CLIPPED (%d streak)", info.path, c, n)
        # (streaks are wide by design: growStreakFp PSF widths on each side)
        if math.prod(shape) and total > 0.05 * V * math.prod(shape):
            log.warning("artifact rejection clipped %.1f %% of all pixels: check the variance planes and PSFs",
                        100.0 * total / (V * math.prod(shape)))  # fmt: skip
    return out
