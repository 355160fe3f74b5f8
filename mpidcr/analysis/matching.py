"""PSF matching of a template and a science image before differencing, as image differencing does.

With both PSFs known, the sharper image is blurred to the broader with the kernel that takes
one PSF image to the other (:func:`mpidcr.psf.matching_kernel`).  Without them, a matching kernel is fitted
(Alard & Lupton 1998): a sum of Gaussians of a few widths times low-order polynomials, plus a
constant background, whose coefficients minimise ‖source ⊗ kernel + b − target‖² over the good
pixels (linear least squares); both directions are fitted and the better one is used.  Images are
(y, x); variances follow the blur as white noise does (× Σ kernel²).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage
from scipy.signal import fftconvolve

from ..psf import matching_kernel, pad_to, second_moment_sigma

#: the Alard–Lupton bases: (σ in pixels, polynomial degree)
AL_BASES = ((0.7, 4), (1.5, 3), (3.0, 2))


@dataclass
class MatchedPair:
    """A template and a science image on one PSF, the variance of their difference, and how."""

    template: NDArray
    science: NDArray
    variance: NDArray
    how: str  # e.g. "template blurred 1.23 px", "science blurred (fitted kernel)", "none"
    science_kernel: NDArray | None = None  # the kernel the science image was blurred with, if it was

    def science_like(self, image: NDArray) -> NDArray:
        """Another image of the science visit (e.g. a simulation's before its noise) brought to
        the pair's PSF exactly as the science image was."""
        return image if self.science_kernel is None else fftconvolve(image, self.science_kernel, mode="same")


def _blur(image: NDArray, variance: NDArray, kernel: NDArray) -> tuple[NDArray, NDArray]:
    blurred = fftconvolve(image, kernel, mode="same")
    return blurred, variance * float((kernel**2).sum())


def match_known(template: NDArray, t_var: NDArray, t_psf: NDArray, science: NDArray, s_var: NDArray,
                s_psf: NDArray) -> MatchedPair:  # fmt: skip
    """Blur the sharper of the two to the other's PSF with the kernel of their PSF images
    (:func:`mpidcr.psf.matching_kernel`); nothing when the PSFs are the same."""
    if np.array_equal(pad_to(t_psf, s_psf.shape[0]), s_psf) if t_psf.shape[0] <= s_psf.shape[0] else False:
        return MatchedPair(template, science, t_var + s_var, "none (same PSF)")
    if second_moment_sigma(s_psf) >= second_moment_sigma(t_psf):
        template, t_var = _blur(template, t_var, matching_kernel(t_psf, s_psf))
        return MatchedPair(template, science, t_var + s_var, "template blurred (PSF kernel)")
    kernel = matching_kernel(s_psf, t_psf)
    science, s_var = _blur(science, s_var, kernel)
    return MatchedPair(template, science, t_var + s_var, "science blurred (PSF kernel)", kernel)


def _bases(half: int) -> list[NDArray]:
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float64)
    out = []
    for sigma, degree in AL_BASES:
        g = np.exp(-0.5 * (yy**2 + xx**2) / sigma**2)
        for i in range(degree + 1):
            for j in range(degree + 1 - i):
                b = g * (xx / half) ** i * (yy / half) ** j
                out.append(b / np.abs(b).sum())
    return out


def fit_kernel(source: NDArray, target: NDArray, good: NDArray, half: int = 8) -> tuple[NDArray, float]:
    """The Alard–Lupton kernel taking ``source`` to ``target`` (and its residual χ² per pixel)."""
    bases = _bases(half)
    use = good & np.isfinite(source) & np.isfinite(target)
    inner = np.zeros_like(use)
    inner[half:-half, half:-half] = True
    use &= inner
    columns = [fftconvolve(source, b, mode="same")[use] for b in bases] + [np.ones(int(use.sum()))]
    design = np.stack(columns, axis=1)
    coeffs, *_ = np.linalg.lstsq(design, target[use], rcond=None)
    residual = target[use] - design @ coeffs
    kernel = sum(c * b for c, b in zip(coeffs[:-1], bases, strict=True))
    return np.asarray(kernel), float(np.mean(residual**2))


def match_fitted(template: NDArray, t_var: NDArray, science: NDArray, s_var: NDArray, good: NDArray) -> MatchedPair:
    """Fit a matching kernel both ways and blur the image for which it fits better, judged against
    the noise each fit should leave: a fit's mean squared residual over the variance of target −
    kernel ⊗ source (var_target + Σk²·var_source).  (Raw residuals favour blurring the noisier
    image, whose noise the blur smooths away, even where that means deconvolving: with a
    PSF-aware model's sharp, quiet template it blurred the broad science images towards it.)"""
    k_ts, chi_ts = fit_kernel(template, science, good)
    k_st, chi_st = fit_kernel(science, template, good)
    use = good & np.isfinite(t_var) & np.isfinite(s_var)
    tv, sv = (float(np.mean(t_var[use])), float(np.mean(s_var[use]))) if use.any() else (1.0, 1.0)
    if chi_ts / (sv + float((k_ts**2).sum()) * tv) <= chi_st / (tv + float((k_st**2).sum()) * sv):
        blurred, t_var = _blur(template, t_var, k_ts)
        return MatchedPair(blurred, science, t_var + s_var, "template blurred (fitted kernel)")
    blurred, s_var = _blur(science, s_var, k_st)
    return MatchedPair(template, blurred, t_var + s_var, "science blurred (fitted kernel)", k_st)


def false_sources(significance: NDArray, threshold: float) -> tuple[int, int]:
    """(dipoles, other false sources) among the ≥ threshold footprints of a difference image: a
    dipole is a positive and a negative footprint that touch (one 8-connected group of both signs)."""
    pos, neg = significance >= threshold, significance <= -threshold
    labels, count = ndimage.label(pos | neg, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return 0, 0
    has_pos = ndimage.maximum(pos, labels, index=np.arange(1, count + 1))
    has_neg = ndimage.maximum(neg, labels, index=np.arange(1, count + 1))
    dipoles = int(np.count_nonzero(np.asarray(has_pos) & np.asarray(has_neg)))
    return dipoles, count - dipoles
