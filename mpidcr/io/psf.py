"""Each visit's PSF, from what its files and the manifest say, in this order:

1. a ``PSF`` image HDU in the warp (EXTNAME or EXTTYPE ``PSF``; odd size, centred, any sum);
2. the manifest: ``psfFwhm`` (arcsec) with ``psfProfile`` (gaussian, moffat, kolmogorov) and ``psfBeta``;
3. the header: ``PSF-FWHM``, else ``SEEING`` or ``FWHM`` (arcsec), as a Kolmogorov profile;
4. with ``--measure-psf``: measured from the warp's bright isolated stars (:func:`mpidcr.psf.measure`).

A visit may have none (the constant-PSF model does not need one).  Axis order ``(y, x)``.
"""

from __future__ import annotations

import warnings

import numpy as np
from astropy.io import fits

from ..dcr import physical_problem
from ..errors import InputError
from ..masks import plane_bits
from ..psf import Psf, checked_image, fwhm_pixels, measure, profile_image
from ..tiling import Box
from .warps import WarpInfo, read_window

#: the profile of a PSF known only by its FWHM (atmospheric seeing)
DEFAULT_PROFILE = "kolmogorov"


def find_psf_hdu(hdul: fits.HDUList) -> fits.ImageHDU | None:
    """The HDU named PSF (EXTNAME) or typed PSF (EXTTYPE), if any."""
    for hdu in hdul[1:]:
        if str(hdu.header.get("EXTNAME", "")).upper() == "PSF" or str(hdu.header.get("EXTTYPE", "")).upper() == "PSF":
            return hdu
    return None


def psf_hdu_image(path: str) -> np.ndarray | None:
    """The checked PSF image of a FITS file's PSF HDU (None if it has none)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with fits.open(path, memmap=False) as hdul:
            hdu = find_psf_hdu(hdul)
            if hdu is None:
                return None
            data = hdu.data
    if data is None:
        raise InputError(f"{path}: the PSF HDU has no image")
    return checked_image(data, f"{path}: PSF HDU")


def visit_psf(info: WarpInfo, pixel_scale: float) -> Psf | None:
    """The visit's PSF from its file, the manifest or the header (None when none says anything)."""
    path = info.image_path or info.path
    image = psf_hdu_image(path)
    if image is not None:
        return Psf(image, _checked_fwhm(fwhm_pixels(image) * pixel_scale, f"{path}: PSF HDU"), "image", "hdu")
    fwhm = info.meta.get("psfFwhm")
    if fwhm is None:
        return None
    profile = info.meta.get("psfProfile") or DEFAULT_PROFILE
    source = "manifest" if "psfFwhm" in info.meta.get("_overrides", ()) else "header"
    image = profile_image(profile, float(fwhm), pixel_scale, info.meta.get("psfBeta"))
    return Psf(image, float(fwhm), profile, source)


def measured_psf(info: WarpInfo, pixel_scale: float, planes: dict[str, int]) -> Psf:
    """The PSF measured from the warp's bright isolated stars (the whole warp is read)."""
    image, variance, mask = read_window(info, Box(0, info.shape[0], 0, info.shape[1]), planes)
    good = np.isfinite(image) & np.isfinite(variance) & (variance > 0)
    good &= (mask & plane_bits(planes, ["NO_DATA", "BAD", "SAT", "CR", "EDGE", "SUSPECT"])) == 0
    guess = info.meta.get("psfFwhm")
    try:
        psf = measure(image, variance, good, None if guess is None else float(guess) / pixel_scale)
    except ValueError as exc:
        raise InputError(f"{info.path}: cannot measure the PSF ({exc})") from None
    return Psf(psf, _checked_fwhm(fwhm_pixels(psf) * pixel_scale, f"{info.path}: measured PSF"), "image", "measured")


def _checked_fwhm(fwhm: float, where: str) -> float:
    """A PSF image's FWHM (arcsec), within the range a header's PSF-FWHM must be in; else
    InputError naming ``where`` (a flat or noise-dominated image measures as huge)."""
    problem = physical_problem("psfFwhm", fwhm)
    if problem:
        raise InputError(f"{where}: FWHM = {fwhm:.3g}{problem}")
    return fwhm
