"""Artifact rejection as LSST's CompareWarp coadd does it, on numpy arrays (no MPI, no files).

The steps, each a plain function (:mod:`mpidcr.rejection` runs them over the ranks):

1. every warp convolved to one common PSF broader than the worst visit's (:func:`psf_match`: a
   Gaussian kernel per visit, normalised over the good pixels it covers), and the clipped mean of
   those PSF-matched warps (the static model of this step);
2. candidates: pixels of a PSF-matched warp minus that model beyond ``detect.thresholdValue`` σ
   of their own noise, either sign (:func:`candidate_pixels`), grouped into footprints of at least
   ``detect.minPixels`` pixels and grown by ``detect.nSigmaToGrow`` PSF σ (:func:`footprints`);
3. ``doPrefilterArtifacts``: footprints with no more than ``prefilterArtifactsRatio`` of their
   pixels good in ``prefilterArtifactsMaskPlanes`` are dropped (:func:`prefilter`);
4. the epoch count (per pixel, the number of visits whose footprints cover it) and nImage (the
   number of visits with data there); a footprint is an artifact when more than ``spatialThreshold``
   of its pixels are outliers in at least one and at most ``effective_epoch_limit`` epochs
   (:func:`transient_footprints`);
5. ``doPreserveContainedBySource``: artifacts lying wholly inside a source detected on the
   static model are kept (:func:`contained_in`);
6. ``doFilterMorphological``: straight streaks among the candidates (:func:`find_streaks`, a Hough
   transform), grown by ``growStreakFp`` PSF σ.

Arrays are (y, x); PSF widths in pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from .kernels.gaussian import correlate_separable

#: Gaussian kernels reach this many σ (scipy's default truncation)
KERNEL_SIGMAS = 4.0
#: A PSF-matched pixel needs at least this share of its kernel's weight on good pixels
MIN_KERNEL_COVERAGE = 0.5
#: 8-connectivity of footprints (as afw's FootprintSet)
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


# ----------------------------------------------------------------------------- PSF matching
def kernel_radius(sigma: float, max_radius: int | None = None) -> int:
    """Half-width in pixels of the Gaussian kernel of ``sigma`` pixels (0 for no kernel), as
    scipy.ndimage.gaussian_filter truncates it, at most ``max_radius``."""
    r = int(KERNEL_SIGMAS * sigma + 0.5) if sigma > 0 else 0
    return r if max_radius is None else min(r, max_radius)


def gaussian_kernel(sigma: float, max_radius: int | None = None) -> NDArray[np.float64]:
    """The normalised 1-D Gaussian of ``sigma`` pixels on [−r, r] (``[1.0]`` for σ = 0)."""
    r = kernel_radius(sigma, max_radius)
    if r == 0:
        return np.ones(1)
    x = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def matching_sigmas(psf_sigmas: NDArray) -> tuple[float, NDArray[np.float64]]:
    """The common PSF σ (10 % broader than the worst visit's, and at least 0.5 pixel in quadrature
    above it) and each visit's matching-kernel σ = √(σ_common² − σ_v²), pixels."""
    sigmas = np.asarray(psf_sigmas, dtype=np.float64)
    worst = float(sigmas.max())
    common = math.sqrt(worst**2 + max(0.25, 0.21 * worst**2))
    return common, np.sqrt(np.maximum(common**2 - sigmas**2, 0.0))


def _separable(image: NDArray, kernel: NDArray) -> NDArray[np.float64]:
    """``image`` correlated with ``kernel`` along y then x; reflected at the array's edges (the
    patch's edges: a tile's window reaches the kernel's radius beyond its inner box)."""
    return correlate_separable(np.asarray(image, np.float64), kernel)


def smooth(image: NDArray, sigma: float) -> NDArray[np.float64]:
    """``image`` convolved with a Gaussian of ``sigma`` pixels."""
    return _separable(image, gaussian_kernel(sigma))


def psf_match(image: NDArray, variance: NDArray, good: NDArray[np.bool_], sigma: float,
              max_radius: int | None = None) -> tuple[NDArray[np.float64], NDArray[np.float64]]:  # fmt: skip
    """One warp convolved with a Gaussian of ``sigma`` pixels (its kernel at most ``max_radius``
    pixels from the centre: matchingKernelSize // 2), normalised over its good pixels:
    image Σk·g·I / Σk·g and variance Σk²·g·V / (Σk·g)²; NaN where good pixels carry less than
    half the kernel's weight (as a PSF-matched warp loses the kernel's width around missing data)."""
    kernel = gaussian_kernel(sigma, max_radius)
    g = good.astype(np.float64)
    weight = _separable(g, kernel)
    with np.errstate(invalid="ignore", divide="ignore"):
        matched = _separable(np.where(good, image, 0.0), kernel) / weight
        var = _separable(np.where(good, variance, 0.0), kernel**2) / weight**2
    missing = weight < MIN_KERNEL_COVERAGE
    matched[missing] = np.nan
    var[missing] = np.nan
    return matched, var


# ----------------------------------------------------------------------------- candidates
def gradient_magnitude(image: NDArray) -> NDArray[np.float64]:
    """|∇image| by central differences (one-sided at the edges), per pixel."""
    gy, gx = np.gradient(np.asarray(image, np.float64))
    return np.hypot(gy, gx)


def candidate_pixels(difference: NDArray, variance: NDArray, threshold: float) -> NDArray[np.bool_]:
    """Pixels of a warp − model difference beyond ``threshold`` times their own σ, either sign
    (LSST's ``pixel_stdev`` threshold, no smoothing); NaN never."""
    with np.errstate(invalid="ignore"):
        return np.abs(difference) >= threshold * np.sqrt(variance)


def disk(radius: int) -> NDArray[np.bool_]:
    """A filled disk of ``radius`` pixels (isotropic growing)."""
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return (yy**2 + xx**2) <= radius**2 + 0.5


def grow(selection: NDArray[np.bool_], radius: int) -> NDArray[np.bool_]:
    """``selection`` dilated by a disk of ``radius`` pixels."""
    if radius <= 0 or not selection.any():
        return selection.copy()
    return ndimage.binary_dilation(selection, structure=disk(radius))


def footprints(candidates: NDArray[np.bool_], min_pixels: int, grow_radius: int) -> tuple[NDArray[np.int32], int]:
    """Label the 8-connected groups of ``candidates`` with at least ``min_pixels`` pixels, grown by
    ``grow_radius`` (groups that touch after growing merge): (labels 1..n, 0 elsewhere; n)."""
    labels, n = ndimage.label(candidates, structure=EIGHT_CONNECTED)
    if n == 0:
        return labels.astype(np.int32), 0
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    kept = sizes >= min_pixels
    kept[0] = False
    selection = grow(kept[labels], grow_radius)
    labels, n = ndimage.label(selection, structure=EIGHT_CONNECTED)
    return labels.astype(np.int32), int(n)


def _labelled(labels: NDArray) -> tuple[NDArray[np.intp], NDArray]:
    """(flat indices of the labelled pixels, their labels): footprints cover a small share of a
    warp, so per-label sums over these alone skip the background's pixels."""
    flat = labels.ravel()
    inside = np.flatnonzero(flat)
    return inside, flat[inside]


def _per_label(labels: NDArray, n: int, values: NDArray | None = None,
               labelled: tuple[NDArray[np.intp], NDArray] | None = None) -> NDArray[np.float64]:  # fmt: skip
    """Σ ``values`` (or the pixel count) of each label 1..n; index 0 (the background) is 0.
    ``labelled``: :func:`_labelled` of ``labels``, when several sums share it."""
    inside, lab = _labelled(labels) if labelled is None else labelled
    weights = None if values is None else np.asarray(values).ravel()[inside].astype(np.float64)
    return np.bincount(lab, weights=weights, minlength=n + 1).astype(np.float64)


def prefilter(labels: NDArray, n: int, good: NDArray[np.bool_], ratio: float) -> NDArray[np.bool_]:
    """doPrefilterArtifacts: keep (per label 0..n; index 0 is False) the footprints whose share of
    pixels without any ``prefilterArtifactsMaskPlanes`` bit exceeds ``ratio``."""
    labelled = _labelled(labels)
    area = _per_label(labels, n, labelled=labelled)
    good_area = _per_label(labels, n, good, labelled)
    with np.errstate(invalid="ignore", divide="ignore"):
        keep = good_area / area > ratio
    keep[0] = False
    return keep


def select_labels(labels: NDArray, keep: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """The pixels of the labels marked in ``keep`` (indexed by label; 0 never)."""
    keep = np.asarray(keep, dtype=bool).copy()
    keep[0] = False
    return keep[labels]


# ----------------------------------------------------------------------------- the epoch filter
@dataclass(frozen=True)
class EpochLimits:
    """The effective epoch limit of a footprint seen in N epochs (on average):
    int(min(max_fraction_low·N, max_num + max_fraction_high·N)); ``spatial`` the share of its
    pixels that must be outliers in 1..limit epochs for it to be an artifact."""

    max_num: int = 2
    max_fraction_low: float = 0.4
    max_fraction_high: float = 0.03
    spatial: float = 0.5

    def limit(self, mean_epochs: NDArray) -> NDArray[np.int64]:
        low = self.max_fraction_low * np.asarray(mean_epochs, np.float64)
        high = self.max_num + self.max_fraction_high * np.asarray(mean_epochs, np.float64)
        return np.floor(np.minimum(low, high)).astype(np.int64)


def transient_footprints(labels: NDArray, n: int, epoch_count: NDArray, nimage: NDArray,
                         limits: EpochLimits) -> NDArray[np.bool_]:  # fmt: skip
    """Per label 0..n: is the footprint an artifact?  Its effective limit comes from the mean
    nImage over its pixels; it is one when more than ``limits.spatial`` of its pixels are outliers
    in at least one and at most that many epochs (a source that is there in more epochs stays)."""
    labelled = _labelled(labels)
    inside, lab = labelled
    area = _per_label(labels, n, labelled=labelled)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_n = _per_label(labels, n, nimage, labelled) / area
    limit = limits.limit(np.nan_to_num(mean_n))
    epochs = np.asarray(epoch_count).ravel()[inside]
    transient = (epochs > 0) & (epochs <= limit[lab])  # on the labelled pixels, in their order
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.bincount(lab, weights=transient.astype(np.float64), minlength=n + 1) / area
    out = share > limits.spatial
    out[0] = False
    return out


def contained_in(labels: NDArray, n: int, sources: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """Per label 0..n: does the footprint lie wholly inside ``sources`` (one connected source:
    a connected footprint inside the union of disjoint sources lies in one of them)."""
    outside = _per_label(labels, n, ~sources)
    out = outside == 0
    out[0] = False
    return out


def source_footprints(image: NDArray, variance: NDArray, sigma: float, threshold: float,
                      grow_sigmas: float) -> NDArray[np.bool_]:  # fmt: skip
    """Sources of the static model (``detectTemplate``): the PSF-smoothed model at least
    ``threshold`` times its own σ (positive only), grown by ``grow_sigmas`` PSF σ."""
    kernel = gaussian_kernel(sigma)
    finite = np.isfinite(image) & np.isfinite(variance)
    smoothed = _separable(np.where(finite, image, 0.0), kernel)
    noise = np.sqrt(_separable(np.where(finite, variance, 0.0), kernel**2))
    with np.errstate(invalid="ignore", divide="ignore"):
        detected = smoothed >= threshold * noise
    detected &= noise > 0
    return grow(detected, grow_radius(grow_sigmas, sigma))


def grow_radius(n_sigma: float, sigma: float) -> int:
    """LSST's footprint growth: int(nSigmaToGrow · σ + 0.5) pixels."""
    return int(n_sigma * sigma + 0.5)


# ----------------------------------------------------------------------------- streaks
@dataclass(frozen=True)
class Streak:
    """A straight streak: the line x·cos θ + y·sin θ = ρ, its extent along the line (t) and its
    half-width, pixels."""

    theta: float
    rho: float
    t0: float
    t1: float
    half_width: float


def _line_coordinates(ys: NDArray, xs: NDArray, theta: float) -> tuple[NDArray, NDArray]:
    """(ρ, t): distance of each pixel's line through the origin, and position along the line."""
    c, s = math.cos(theta), math.sin(theta)
    return xs * c + ys * s, -xs * s + ys * c


def elongated(candidates: NDArray[np.bool_], min_extent: float = 8.0, min_ratio: float = 3.0) -> NDArray[np.bool_]:
    """The 8-connected groups of ``candidates`` that look like pieces of a line: at least
    ``min_extent`` pixels long (4σ of the major axis) and ``min_ratio`` times longer than wide
    (second moments); compact groups (sources, their DCR dipoles) are left to the epoch filter."""
    labels, n = ndimage.label(candidates, structure=EIGHT_CONNECTED)
    if n == 0:
        return np.zeros_like(candidates)
    yy, xx = np.nonzero(labels)
    lab = labels[yy, xx]
    count = np.bincount(lab, minlength=n + 1).astype(np.float64)
    count[0] = 1.0
    my, mx = np.bincount(lab, yy, n + 1) / count, np.bincount(lab, xx, n + 1) / count
    dy, dx = yy - my[lab], xx - mx[lab]
    syy = np.bincount(lab, dy * dy, n + 1) / count + 1.0 / 12
    sxx = np.bincount(lab, dx * dx, n + 1) / count + 1.0 / 12
    sxy = np.bincount(lab, dx * dy, n + 1) / count
    half_trace, det = (syy + sxx) / 2, syy * sxx - sxy**2
    root = np.sqrt(np.maximum(half_trace**2 - det, 0.0))
    major, minor = np.sqrt(half_trace + root), np.sqrt(np.maximum(half_trace - root, 1e-12))
    keep = (4.0 * major >= min_extent) & (major >= min_ratio * minor)
    keep[0] = False
    return keep[labels]


def _hough_votes(ys: NDArray, xs: NDArray, cos_t: NDArray, sin_t: NDArray, offset: float, rho_bins: int,
                 chunk: int = 4096) -> NDArray[np.int64]:  # fmt: skip
    """Hough accumulator (angle, ρ rounded to whole pixels) of the pixels (ys, xs), in chunks."""
    angles = len(cos_t)
    votes = np.zeros(angles * rho_bins, dtype=np.int64)
    rows = np.arange(angles)[:, None] * rho_bins
    for i in range(0, len(ys), chunk):
        y, x = ys[i : i + chunk], xs[i : i + chunk]
        cells = rows + np.rint(np.outer(cos_t, x) + np.outer(sin_t, y) + offset).astype(np.int64)
        votes += np.bincount(cells.ravel(), minlength=angles * rho_bins)
    return votes.reshape(angles, rho_bins)


def find_streaks(candidates: NDArray[np.bool_], min_length: int, angles: int = 360, band: float = 1.5,
                 max_streaks: int = 20, min_fill: float = 0.5, max_tries: int = 200) -> list[Streak]:  # fmt: skip
    """Straight streaks among the line-like pieces of ``candidates`` (:func:`elongated`), by a
    Hough transform: the line with the most such pixels within ``band`` of it is a streak when
    they span at least ``min_length`` pixels along it (gaps under min_length/4) and fill at least
    ``min_fill`` of that span; a streak is the whole line across the image (a satellite does not
    stop inside a patch; LSST's maskStreaks masks the whole line too).  Its pixels are removed
    and the next line sought."""
    ys, xs = np.nonzero(elongated(candidates))
    if len(ys) < min_length * min_fill:
        return []
    ys, xs = ys.astype(np.float64), xs.astype(np.float64)
    thetas = np.arange(angles) * (math.pi / angles)
    cos_t, sin_t = np.cos(thetas), np.sin(thetas)
    offset = math.ceil(math.hypot(*candidates.shape)) + 1
    rho_bins = 2 * offset + 2
    votes = _hough_votes(ys, xs, cos_t, sin_t, offset, rho_bins)
    alive = np.ones(len(ys), dtype=bool)
    streaks: list[Streak] = []
    for _ in range(max_tries):
        if len(streaks) >= max_streaks:
            break
        best = int(np.argmax(votes))
        a, r = divmod(best, rho_bins)
        if votes[a, r] < min_length * min_fill:
            break
        votes[a, r] = 0  # (tried)
        theta, rho = float(thetas[a]), float(r - offset)
        rho_all, t_all = _line_coordinates(ys, xs, theta)
        near = alive & (np.abs(rho_all - rho) <= band)
        if np.count_nonzero(near) < min_length * min_fill:
            continue
        # a streak when its longest run (gaps under min_length / 4 pixels) is at least min_length
        # long and filled; then, as a satellite crosses the whole field, the whole line is masked
        # (its parts on sources, hidden by their noise, too)
        t = np.sort(t_all[near])
        gaps = np.flatnonzero(np.diff(t) > max(2.0, min_length / 4))
        starts = np.concatenate(([0], gaps + 1))
        stops = np.concatenate((gaps, [len(t) - 1]))
        i = int(np.argmax(t[stops] - t[starts]))
        t0, t1 = float(t[starts[i]]), float(t[stops[i]])
        inside = near & (t_all >= t0) & (t_all <= t1)
        run_ok = t1 - t0 >= min_length and np.count_nonzero(inside) >= min_fill * (t1 - t0)
        # or its pixels over their whole extent (a short trail across a corner, broken by a source)
        extent = float(t[-1] - t[0])
        if not run_ok and not (extent >= min_length and len(t) >= min_fill * extent):
            continue
        t0, t1 = -math.inf, math.inf
        # half-width: the offsets from the line still filled along half of its pixels' extent
        length = float(t[stops[i]] - t[starts[i]]) if run_ok else extent
        along = alive.copy()
        distance = np.abs(rho_all - rho)
        half_width = band
        for d in range(2, 30):
            if np.count_nonzero(along & (distance > d - 1) & (distance <= d)) < 0.5 * length:
                break
            half_width = float(d)
        taken = along & (distance <= half_width)
        streaks.append(Streak(theta, rho, t0, t1, half_width))
        votes -= _hough_votes(ys[taken], xs[taken], cos_t, sin_t, offset, rho_bins)  # they vote no more
        alive &= ~taken
    return streaks


def streak_pixels(shape: tuple[int, int], streak: Streak, extra: float) -> NDArray[np.bool_]:
    """The pixels within the streak's half-width + ``extra`` of its line, over its extent + ``extra``
    (the whole line for a streak found by :func:`find_streaks`)."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    rho, t = _line_coordinates(yy.astype(np.float64), xx.astype(np.float64), streak.theta)
    return ((np.abs(rho - streak.rho) <= streak.half_width + extra + 0.5)
            & (t >= streak.t0 - extra) & (t <= streak.t1 + extra))  # fmt: skip
