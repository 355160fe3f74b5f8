"""Point-spread functions: images, their sizes, the kernels that match one to another.

A PSF is an odd-sized square image, centred, of unit sum, axis order ``(y, x)``, in the pixels of the
patch.  Visits carry one each (a ``PSF`` HDU, a profile and FWHM from the manifest or the header, or
measured from stars: :mod:`mpidcr.io.psf`); the model carries the PSF of its planes.

The PSF-aware forward model (docs/physics.md) blurs a model made at a reference PSF to each visit's
PSF with a *matching kernel*: a Gaussian core (exact, σ² = σ_v² − σ_ref², between two Gaussians)
plus wing Gaussians shared by all visits, whose weights are fitted to the PSF images (a seeing
PSF's kernel to a broader one has wings no single Gaussian has).  Every term is separable and
symmetric (its own adjoint), so the forward blur and the reverse step are cheap passes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from .errors import InputError

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))

#: PSF profiles a manifest or header may name
PROFILES = ("gaussian", "moffat", "kolmogorov")

#: Moffat β when none is given (a typical seeing profile)
DEFAULT_BETA = 3.5


@dataclass(frozen=True)
class Psf:
    """A visit's or a model's PSF: ``image`` (odd square, centred, unit sum, float64), its FWHM
    (arcsec), how it was described and where it came from (hdu, manifest, header, measured, model)."""

    image: NDArray[np.float64]
    fwhm: float
    profile: str = "image"
    source: str = ""

    @property
    def sigma_pixels(self) -> float:
        """σ of the image's second moments, pixels."""
        return second_moment_sigma(self.image)


def _grid(size: int) -> tuple[NDArray, NDArray]:
    half = size // 2
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1]
    return yy.astype(np.float64), xx.astype(np.float64)


def stamp_size(fwhm_pixels: float, wings: float = 3.0) -> int:
    """An odd stamp side holding ``wings`` FWHM on each side of the centre (at least 11)."""
    return max(11, 2 * math.ceil(wings * fwhm_pixels) + 1)


def gaussian_profile(sigma: float, size: int) -> NDArray[np.float64]:
    """A 1-D Gaussian of σ pixels integrated over each of ``size`` pixels (odd; error functions), unit sum."""
    from scipy.special import erf

    half = size // 2
    edges = (np.arange(-half, half + 2) - 0.5) / (math.sqrt(2.0) * max(sigma, 1e-6))
    profile = np.diff(erf(edges))
    return profile / profile.sum()


def gaussian_image(sigma: float, size: int) -> NDArray[np.float64]:
    """A circular Gaussian of σ pixels integrated over each pixel (error functions), unit sum."""
    profile = gaussian_profile(sigma, size)
    image = np.outer(profile, profile)
    return image / image.sum()


def moffat_image(fwhm: float, beta: float, size: int, oversample: int = 5) -> NDArray[np.float64]:
    """A circular Moffat profile of FWHM (pixels) and β, averaged over each pixel, unit sum."""
    alpha = fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))
    half = size // 2
    sub = (np.arange(size * oversample) + 0.5) / oversample - half - 0.5
    yy, xx = np.meshgrid(sub, sub, indexing="ij")
    fine = (1.0 + (xx**2 + yy**2) / alpha**2) ** (-beta)
    image = fine.reshape(size, oversample, size, oversample).mean(axis=(1, 3))
    return image / image.sum()


def kolmogorov_image(fwhm: float, size: int) -> NDArray[np.float64]:
    """Long-exposure Kolmogorov seeing of FWHM (pixels) convolved with the pixel, unit sum: the
    optical transfer function exp(−3.44 (λ f / r₀)^(5/3)) × the pixel's sinc, by FFT on a padded grid."""
    n = 8 * size
    f = np.fft.fftfreq(n)
    fy, fx = np.meshgrid(f, f, indexing="ij")
    scale = fwhm / 0.975863  # λ/r₀ in pixels (FWHM = 0.9759 λ/r₀)
    otf = np.exp(-3.44 * (np.hypot(fy, fx) * scale) ** (5.0 / 3.0)) * np.sinc(fy) * np.sinc(fx)
    image = np.fft.fftshift(np.fft.ifft2(otf).real)
    c, half = n // 2, size // 2
    image = image[c - half : c + half + 1, c - half : c + half + 1]
    image = np.clip(image, 0.0, None)
    return image / image.sum()


def profile_image(profile: str, fwhm: float, pixel_scale: float, beta: float | None = None,
                  size: int | None = None) -> NDArray[np.float64]:  # fmt: skip
    """The image of a PSF ``profile`` (gaussian, moffat, kolmogorov) of FWHM (arcsec)."""
    fwhm_pixels = fwhm / pixel_scale
    size = size or stamp_size(fwhm_pixels, 4.0 if profile != "gaussian" else 3.0)
    if profile == "gaussian":
        return gaussian_image(fwhm_pixels / FWHM_PER_SIGMA, size)
    if profile == "moffat":
        return moffat_image(fwhm_pixels, beta or DEFAULT_BETA, size)
    if profile == "kolmogorov":
        return kolmogorov_image(fwhm_pixels, size)
    raise InputError(f"unknown PSF profile '{profile}' (one of {', '.join(PROFILES)})")


def checked_image(image: NDArray, where: str) -> NDArray[np.float64]:
    """A PSF image as given, checked: 2-D, odd square, finite, positive sum, centred (centroid
    within half a pixel of the middle); returned as float64 of unit sum.  InputError naming ``where``."""
    a = np.asarray(image, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] % 2 == 0:
        raise InputError(f"{where}: a PSF image must be an odd-sized square, not {'x'.join(map(str, a.shape))}")
    if not np.all(np.isfinite(a)):
        raise InputError(f"{where}: the PSF image has non-finite pixels")
    total = float(a.sum())
    if not total > 0:
        raise InputError(f"{where}: the PSF image does not sum to a positive value")
    a = a / total
    yy, xx = _grid(a.shape[0])
    cy, cx = float((a * yy).sum()), float((a * xx).sum())
    if abs(cy) > 0.5 or abs(cx) > 0.5:
        raise InputError(f"{where}: the PSF image is not centred (centroid off by ({cy:.2f}, {cx:.2f}) px)")
    return a


def second_moment_sigma(image: NDArray) -> float:
    """σ (pixels) of a PSF image's second moments about its centroid: √((Ixx + Iyy)/2)."""
    yy, xx = _grid(image.shape[0])
    w = image / image.sum()
    cy, cx = (w * yy).sum(), (w * xx).sum()
    return float(math.sqrt(max(((w * ((yy - cy) ** 2 + (xx - cx) ** 2)).sum()) / 2.0, 0.0)))


#: sub-pixels per pixel side of :func:`fwhm_pixels`' interpolated image
FWHM_UPSAMPLING = 8


def fwhm_pixels(image: NDArray) -> float:
    """The FWHM (pixels) of a PSF image: the diameter of the area above half its peak, measured on
    the image interpolated (cubic splines) to 1/8 pixel.  (Counting whole pixels was off by −4 to
    +15 % depending on the width.)  The PSF as sampled: a Gaussian of σ ≥ 1 px reads 3–8 % above
    2.3548 σ, its pixels' own width included."""
    from scipy import ndimage

    fine = ndimage.zoom(np.asarray(image, dtype=np.float64), FWHM_UPSAMPLING, order=3)
    area = float(np.count_nonzero(fine >= 0.5 * float(fine.max()))) / FWHM_UPSAMPLING**2
    return 2.0 * math.sqrt(area / math.pi)


def pad_to(image: NDArray, size: int) -> NDArray:
    """A centred odd image padded (or cut) to ``size``."""
    n = image.shape[0]
    if n == size:
        return image
    if n > size:
        c = (n - size) // 2
        return image[c : c + size, c : c + size]
    out = np.zeros((size, size), image.dtype)
    c = (size - n) // 2
    out[c : c + n, c : c + n] = image
    return out


def matching_sigma(reference: NDArray, target: NDArray) -> float:
    """σ (pixels) of the Gaussian g minimising ‖reference ⊗ g − target‖² (0 if the target is no
    broader than the reference)."""
    size = max(reference.shape[0], target.shape[0])
    ref, tgt = pad_to(reference, size), pad_to(target, size)
    s_ref, s_tgt = second_moment_sigma(ref), second_moment_sigma(tgt)
    if s_tgt <= s_ref:  # (the reference itself, or an equal PSF: no fit, and no scipy.optimize import)
        return 0.0
    from scipy.optimize import minimize_scalar

    guess = math.sqrt(s_tgt**2 - s_ref**2)

    def cost(sigma: float) -> float:
        if sigma < 1e-3:
            return float(((ref - tgt) ** 2).sum())
        blurred = _separable(ref, gaussian_profile(sigma, size))  # separable: two 1-D passes, no FFT
        return float(((blurred / blurred.sum() - tgt) ** 2).sum())

    result = minimize_scalar(cost, bounds=(0.0, 2.0 * guess + 1.0), method="bounded",
                             options={"xatol": 1e-4})  # fmt: skip
    return float(result.x) if cost(float(result.x)) < cost(0.0) else 0.0


def weighted_sum(images: list[NDArray], weights: NDArray) -> NDArray[np.float64]:
    """Σ w_v P_v / Σ w_v over PSF images of any odd sizes (LSST's CoaddPsf, spatially constant)."""
    size = max(i.shape[0] for i in images)
    total = np.zeros((size, size))
    for image, w in zip(images, weights, strict=True):
        total += float(w) * pad_to(image / image.sum(), size)
    return total / total.sum()


def measure(image: NDArray, variance: NDArray, good: NDArray, fwhm_guess: float | None = None,
            min_stars: int = 3, max_stars: int = 50, snr: float = 30.0,
            min_pixels: int = 1) -> NDArray[np.float64]:  # fmt: skip
    """A PSF image measured from the bright isolated stars of one image (pixels, (y, x)).

    Stars: local maxima at least ``snr`` times the noise, with only good pixels in their stamp
    (radius 2.5 FWHM, the guess or 3 px), and no other peak above 1 % of theirs within 1.5 radii.  Each stamp loses its
    background (the median of its border), is re-centred on its centroid with an order-3 spline
    shift and normalised; the PSF is the median of the stamps.  A star also needs ``min_pixels``
    pixels of its stamp above snr/10 times the noise.  ValueError if fewer than ``min_stars`` qualify.
    """
    from scipy import ndimage

    noise = float(np.sqrt(np.median(variance[good]))) if np.any(good) else 0.0
    if not noise > 0:
        raise ValueError("no good pixels to measure the noise on")
    radius = math.ceil(2.5 * (fwhm_guess or 3.0))
    size = 2 * radius + 1
    clean = np.where(good, image, 0.0)
    peaks = (clean == ndimage.maximum_filter(clean, size=5)) & (clean > snr * noise)
    ys, xs = np.nonzero(peaks)
    heights = clean[ys, xs]
    order = np.argsort(heights)[::-1]
    ny, nx = image.shape
    stamps: list[NDArray] = []
    for i in order:
        y, x, h = int(ys[i]), int(xs[i]), float(heights[i])
        if not (radius + 2 <= y < ny - radius - 2 and radius + 2 <= x < nx - radius - 2):
            continue
        reach = int(1.5 * radius) + 2
        near = (np.abs(ys - y) <= reach) & (np.abs(xs - x) <= reach) & (heights > 0.01 * h)
        if np.count_nonzero(near) > 1 or not np.all(good[y - radius - 2 : y + radius + 3, x - radius - 2 : x + radius + 3]):
            continue
        stamp = image[y - radius - 2 : y + radius + 3, x - radius - 2 : x + radius + 3].astype(np.float64)
        border = np.concatenate([stamp[0], stamp[-1], stamp[1:-1, 0], stamp[1:-1, -1]])
        stamp = stamp - np.median(border)
        if np.count_nonzero(stamp > 0.1 * snr * noise) < min_pixels:
            continue
        core = stamp[2:-2, 2:-2]
        yy, xx = _grid(size)
        w = np.clip(core, 0.0, None) * (np.hypot(yy, xx) <= radius / 1.5)
        cy, cx = (w * yy).sum() / w.sum(), (w * xx).sum() / w.sum()
        shifted = ndimage.shift(stamp, (-cy, -cx), order=3, mode="nearest")[2:-2, 2:-2]
        stamps.append(shifted / shifted.sum())
        if len(stamps) >= max_stars:
            break
    if len(stamps) < min_stars:
        raise ValueError(f"{len(stamps)} bright isolated stars (at least {min_stars} needed above {snr:g} sigma)")
    psf = np.median(np.array(stamps), axis=0)
    psf = np.clip(psf, 0.0, None)
    return checked_image(psf, "measured PSF")


#: the wing Gaussians are cut at this many σ (scipy's truncate): their reach adds to the halo, so
#: 3σ rather than the regularization's 4σ (the wings carry ~10 % of a kernel; 3σ loses 0.3 % of that)
WING_TRUNCATE = 3.0

#: the wing Gaussians' σ as multiples of the broadest visit's single-Gaussian matching σ, for one
#: and for two wings (chosen on Kolmogorov seeing of 0.6-1.2 arcsec at 0.2 arcsec/px: one wing
#: cuts the matching residual 5x, two wings 12x; docs/physics.md)
WING_MULTIPLES: dict[int, tuple[float, ...]] = {1: (2.0,), 2: (1.15, 2.3)}


def core_kernel(variance: float) -> NDArray[np.float64]:
    """The 1-D kernel of the forward model's core blur of ``variance`` (pixels², per axis): the
    3-tap steps (each ≤ 0.5 px²) the solver applies for it, composed."""
    kernel = np.ones(1)
    if variance > 0:
        n = math.ceil(variance / MAX_STEP_VARIANCE - 1e-12)
        v = variance / n
        for _ in range(n):
            kernel = np.convolve(kernel, [v / 2.0, 1.0 - v, v / 2.0])
    return kernel


def wing_kernel(sigma: float) -> NDArray[np.float64]:
    """The 1-D kernel of a wing Gaussian of ``sigma`` pixels, as the solver's Gaussian filter
    (scipy's) applies it: sampled, truncated at radius int(WING_TRUNCATE·σ + 0.5), unit sum."""
    radius = wing_radius(sigma)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def wing_radius(sigma: float) -> int:
    """Pixels a wing Gaussian of ``sigma`` reaches."""
    return int(WING_TRUNCATE * float(sigma) + 0.5)


def _separable(image: NDArray, kernel_1d: NDArray) -> NDArray:
    """``image`` convolved with ``kernel_1d`` along y and x (zeros beyond the stamp)."""
    from scipy import ndimage

    out = ndimage.convolve1d(image, kernel_1d, axis=0, mode="constant")
    return ndimage.convolve1d(out, kernel_1d, axis=1, mode="constant")


@dataclass(frozen=True)
class MatchingKernel:
    """A matching kernel from the planes' PSF to a visit's: ``(1 − Σ w)·core + Σ_j w_j·wing_j``,
    the core the 3-tap steps of ``variance`` (pixels², per axis), wing j a Gaussian of the model's
    ``wing_sigmas[j]``.  A seeing PSF's matching kernel to a broader seeing PSF has the wings of a
    seeing profile (Kolmogorov's transfer functions multiply into another one's), which no single
    Gaussian has; the wings give them to it, and every term stays separable and its own adjoint."""

    variance: float
    weights: tuple[float, ...] = ()

    @property
    def sigma(self) -> float:
        return math.sqrt(self.variance)

    @property
    def core_weight(self) -> float:
        """The core's share of the kernel, 1 − Σ_j w_j."""
        return 1.0 - sum(self.weights)

    def apply(self, image: NDArray, wing_sigmas: tuple[float, ...]) -> NDArray[np.float64]:
        """``image`` convolved with the kernel (zeros beyond its edges): a stamp-sized reference."""
        image = np.asarray(image, dtype=np.float64)
        out = self.core_weight * _separable(image, core_kernel(self.variance))
        for w, s in zip(self.weights, wing_sigmas, strict=True):
            if w:
                out += w * _separable(image, wing_kernel(s))
        return out


def fit_matching(reference: NDArray, target: NDArray, wing_sigmas: tuple[float, ...] = (),
                 single: float | None = None) -> MatchingKernel:  # fmt: skip
    """The matching kernel (core variance, wing weights) minimising ‖reference ⊗ k − target‖²
    over the PSF images, with the forward model's own discrete kernels.  The identity when the
    target is no broader than the reference.  For a core variance the wing weights are a
    non-negative linear least-squares fit (their sum at most 1); the variance is a bounded scalar
    search around the single Gaussian's σ (``single``: :func:`matching_sigma`, if already known)."""
    single = matching_sigma(reference, target) if single is None else single
    if single == 0.0:
        return MatchingKernel(0.0, tuple(0.0 for _ in wing_sigmas))
    from scipy.optimize import minimize_scalar, nnls

    top = 1.5 * single**2 + 0.5  # the core of a fit with wings is narrower than the single Gaussian
    size = max(reference.shape[0], target.shape[0]) + 2 * (len(core_kernel(top)) // 2)
    if wing_sigmas:
        size = max(size, max(reference.shape[0], target.shape[0]) + 2 * (len(wing_kernel(max(wing_sigmas))) // 2))
    ref = pad_to(reference / reference.sum(), size | 1)
    tgt = pad_to(target / target.sum(), size | 1).ravel()
    wings = [_separable(ref, wing_kernel(s)).ravel() for s in wing_sigmas]

    def fit(variance: float) -> tuple[float, tuple[float, ...]]:
        core = _separable(ref, core_kernel(variance)).ravel()
        if not wings:
            return float(((core - tgt) ** 2).sum()), ()
        basis = np.stack([w - core for w in wings], axis=1)
        weights, _ = nnls(basis, tgt - core)
        if weights.sum() > 1.0:
            weights = weights / weights.sum()
        model = core + basis @ weights
        return float(((model - tgt) ** 2).sum()), tuple(float(w) for w in weights)

    result = minimize_scalar(lambda v: fit(v)[0], bounds=(0.0, top), method="bounded",
                             options={"xatol": 1e-4})  # fmt: skip
    variance = float(result.x)
    return MatchingKernel(variance, fit(variance)[1])


@dataclass(frozen=True)
class PsfModel:
    """The PSF-aware model: its planes are at the ``reference`` PSF (the sharpest visit's), and
    visit v's template is the planes blurred by ``kernels[v]`` (its matching kernel: a Gaussian core
    of ``sigmas[v]`` pixels — analytic between two Gaussians, least squares otherwise — and, with
    wings, weights of the Gaussians of ``wing_sigmas`` pixels)."""

    reference: Psf
    kernels: tuple[MatchingKernel, ...]
    wing_sigmas: tuple[float, ...] = ()

    @property
    def sigmas(self) -> NDArray[np.float64]:
        """The core σ of each visit's kernel, pixels."""
        return np.array([k.sigma for k in self.kernels])

    @property
    def variances(self) -> NDArray[np.float64]:
        return np.array([k.variance for k in self.kernels])

    @property
    def wing_weights(self) -> NDArray[np.float64]:
        """(visits, wings): each visit's weights of the wing Gaussians."""
        return np.array([k.weights for k in self.kernels]).reshape(len(self.kernels), len(self.wing_sigmas))

    def plan(self, tolerance: float) -> BlurPlan:
        """The forward model's blur plan for these kernels (visits grouped within ``tolerance``)."""
        return blur_plan(self.variances, tolerance, self.wing_sigmas, self.wing_weights)

    @classmethod
    def of(cls, psfs: list[Psf], wings: int = 0) -> PsfModel:
        """The reference (the sharpest PSF) and every visit's matching kernel to it; ``wings`` (0, 1
        or 2) wing Gaussians shared by all visits, at :data:`WING_MULTIPLES` times the broadest
        visit's single-Gaussian σ (none when every PSF is a Gaussian: the core is then exact)."""
        sizes = [p.sigma_pixels for p in psfs]
        reference = psfs[int(np.argmin(sizes))]
        analytic = [p.profile == "gaussian" and reference.profile == "gaussian" for p in psfs]
        keys = [_image_key(p.image) for p in psfs]  # visits of the same PSF image share one fit
        singles = []
        fitted_to: dict[bytes, float] = {}
        for p, key, size, exact in zip(psfs, keys, sizes, analytic, strict=True):
            if exact:  # pixel-integrated: σ² − σ_ref² exact
                singles.append(math.sqrt(max(size**2 - reference.sigma_pixels**2, 0.0)))
                continue
            if key not in fitted_to:
                fitted_to[key] = matching_sigma(reference.image, p.image)
            singles.append(fitted_to[key])
        broadest = max(singles)
        if wings not in (0, *WING_MULTIPLES):
            raise ValueError(f"wings must be 0 or one of {sorted(WING_MULTIPLES)}, not {wings}")
        if not wings or all(analytic) or broadest == 0.0:
            return cls(reference, tuple(MatchingKernel(s**2) for s in singles))
        wing_sigmas = tuple(m * broadest for m in WING_MULTIPLES[wings])
        kernels: dict[bytes, MatchingKernel] = {}
        fitted = []
        for p, key, s, exact in zip(psfs, keys, singles, analytic, strict=True):
            if exact:
                fitted.append(MatchingKernel(s**2, tuple(0.0 for _ in wing_sigmas)))
                continue
            if key not in kernels:
                kernels[key] = fit_matching(reference.image, p.image, wing_sigmas, single=s)
            fitted.append(kernels[key])
        return cls(reference, tuple(fitted), wing_sigmas)


def _image_key(image: NDArray) -> bytes:
    """A PSF image as a dictionary key: visits with identical PSF images need one fit."""
    a = np.ascontiguousarray(image, dtype=np.float64)
    return a.shape[0].to_bytes(4, "little") + a.tobytes()


# ----------------------------------------------------------------------------- the forward model's blurs
#: the largest variance (pixels², per axis) one 3-tap blur step adds (the kernel (1/4, 1/2, 1/4))
MAX_STEP_VARIANCE = 0.5


@dataclass(frozen=True)
class BlurPlan:
    """How the PSF-aware forward model blurs the planes to each visit's PSF.

    Visits whose matching variances (pixels²) lie within 2·tolerance share one blur: group ``g``
    blurs by ``variances[g]`` (increasing).  ``steps[g]`` are the 3-tap steps (each ≤ 0.5 px²) from
    group g − 1's blur to group g's (group 0: from none), so the planes of every group are made
    from the previous group's with a few cheap passes, and the reverse step applies the same steps
    in the opposite order (each step is its own adjoint).  ``group_of`` gives each visit's group.

    With wings, group g's kernel is ``(1 − Σ_j wing_weights[g][j])·(its steps) + Σ_j
    wing_weights[g][j]·Gaussian(wing_sigmas[j])`` (the mean of its visits' weights); the wing
    Gaussians blur the unblurred planes once per sweep, whatever the number of groups.
    """

    variances: tuple[float, ...]
    steps: tuple[tuple[float, ...], ...]
    group_of: tuple[int, ...]
    wing_sigmas: tuple[float, ...] = ()
    wing_weights: tuple[tuple[float, ...], ...] = ()

    @property
    def support(self) -> int:
        """Pixels the broadest blur reaches: one per step, or a wing Gaussian's radius."""
        ladder = sum(len(s) for s in self.steps)
        return max([ladder, *(wing_radius(s) for s in self.wing_sigmas)])

    def core_weight(self, group: int) -> float:
        """The weight of group ``group``'s core blur (1 without wings)."""
        return 1.0 - sum(self.wing_weights[group]) if self.wing_sigmas else 1.0

    def has_wings(self, group: int) -> bool:
        """Whether group ``group``'s kernel has wings (else it is its core blur alone)."""
        return bool(self.wing_sigmas) and any(self.wing_weights[group])

    def members(self, group: int) -> NDArray[np.bool_]:
        return np.array([g == group for g in self.group_of], dtype=np.bool_)


def blur_plan(variances: NDArray, tolerance: float, wing_sigmas: tuple[float, ...] = (),
              wing_weights: NDArray | None = None) -> BlurPlan:  # fmt: skip
    """Group the visits' matching variances (pixels², ≥ 0) and lay out the steps between groups;
    with ``wing_sigmas`` (pixels), each group's wing weights are the mean of its visits' rows of
    ``wing_weights`` (visits, wings)."""
    v = np.asarray(variances, dtype=np.float64)
    if v.ndim != 1 or not np.all(np.isfinite(v)) or np.any(v < 0):
        raise ValueError("matching variances must be finite and non-negative")
    weights = np.zeros((len(v), len(wing_sigmas))) if wing_weights is None else np.asarray(wing_weights, float)
    if weights.shape != (len(v), len(wing_sigmas)) or np.any(weights < 0) or np.any(weights.sum(axis=1) > 1 + 1e-9):
        raise ValueError("wing weights must be (visits, wings), non-negative, summing to at most 1 per visit")
    if any(not s > 0 for s in wing_sigmas):
        raise ValueError("wing sigmas must be positive")
    order = np.argsort(v, kind="stable")
    group_of = np.zeros(len(v), dtype=np.int64)
    centres: list[float] = []
    start = 0
    while start < len(order):
        stop = start
        while stop + 1 < len(order) and v[order[stop + 1]] <= v[order[start]] + 2.0 * tolerance:
            stop += 1
        members = order[start : stop + 1]
        group_of[members] = len(centres)
        centres.append(float((v[members].min() + v[members].max()) / 2.0))
        start = stop + 1
    steps = []
    previous = 0.0
    for centre in centres:
        gap = centre - previous
        n = math.ceil(gap / MAX_STEP_VARIANCE - 1e-12) if gap > 0 else 0
        steps.append(tuple([gap / n] * n) if n else ())
        previous = centre
    group_weights = tuple(tuple(float(w) for w in weights[group_of == g].mean(axis=0)) for g in range(len(centres)))
    return BlurPlan(tuple(centres), tuple(steps), tuple(int(g) for g in group_of), tuple(float(s) for s in wing_sigmas),
                    group_weights if wing_sigmas else ())  # fmt: skip


def matching_kernel(sharp: NDArray, broad: NDArray, size: int | None = None) -> NDArray[np.float64]:
    """The kernel k with sharp ⊗ k ≈ broad, from the PSF images themselves: the ratio of their
    transfer functions (Wiener-regularised where the sharp one has no power), as an odd square of
    ``size`` (default the whole working grid, twice the larger PSF: the kernel's wings matter), unit sum.  Exact for any pair of profiles where the Gaussian
    matching kernel is an approximation."""
    n = 2 * max(sharp.shape[0], broad.shape[0]) + 1
    a = np.fft.fft2(np.fft.ifftshift(pad_to(sharp / sharp.sum(), n)))
    b = np.fft.fft2(np.fft.ifftshift(pad_to(broad / broad.sum(), n)))
    eps = 1e-6 * float(np.max(np.abs(a)) ** 2)
    kernel = np.fft.fftshift(np.fft.ifft2(b * np.conj(a) / (np.abs(a) ** 2 + eps)).real)
    kernel = pad_to(kernel, size or n)
    return kernel / kernel.sum()
