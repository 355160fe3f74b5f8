"""Finishing steps applied to a model file before it is marked complete (rank 0, whole planes).

Both need whole rows or the whole coadd, which no rank holds, so they run in the writer's
``finish`` hook on the file just written (:func:`mpidcr.io.modelfile.write_collective`): the same
result for any number of ranks.

* :func:`interpolate_no_data` — ``doInterp``: each sub-filter plane interpolated over the pixels
  no visit covers (NO_DATA, no finite variance; :func:`mpidcr.finishing.interpolate_rows`), INTRP
  set and the variance infinite there.
* :func:`measure_coadd_psf` — ``doCalculatePsf``: the PSF measured from the bright isolated stars of
  the coadd (``detectPsfSources.thresholdSigma``, ``measurePsf.stampSize``), or the
  ``modelPsf.defaultFwhm`` Gaussian when too few are found; written as ``/psf``.
"""

from __future__ import annotations

import logging

import h5py
import numpy as np

from ..config import DcrConfig
from ..finishing import fallback_value, interpolate_rows
from ..masks import plane_bits
from ..psf import FWHM_PER_SIGMA, fwhm_pixels, gaussian_image, measure, pad_to

log = logging.getLogger(__name__)


def interpolate_no_data(f: h5py.File, planes: dict[str, int], fallback: float | None = None) -> int:
    """doInterp on an open model file (``fallback``: interpImage.fallbackValue, None: the plane's
    median clipped at 0); returns the number of pixels interpolated."""
    mask = f["coadd/mask"][...]
    variance = f["coadd/variance"][...]
    # NO_DATA where no visit has data (the static coadd's variance is infinite there); mpidcr also
    # marks NO_DATA where the DCR model is undetermined near the edges, which keeps its values
    with np.errstate(invalid="ignore"):
        missing = ((mask & plane_bits(planes, ["NO_DATA"])) != 0) & ~(np.isfinite(variance) & (variance > 0))
    count = int(np.count_nonzero(missing))
    if count == 0:
        return 0
    model = f["model"]
    for k in range(model.shape[0]):
        plane = model[k].astype(np.float64)
        value = fallback_value(plane, missing) if fallback is None else float(fallback)
        model[k] = interpolate_rows(plane, missing, value).astype(model.dtype)
    f["coadd/mask"][...] = mask | np.where(missing, np.int32(1 << planes["INTRP"]), np.int32(0))
    f["coadd/variance"][...] = np.where(missing, np.inf, variance).astype(f["coadd/variance"].dtype)
    log.info("doInterp: %d NO_DATA pixels of each sub-filter plane interpolated (INTRP)", count)
    return count


def measure_coadd_psf(f: h5py.File, config: DcrConfig, pixel_scale: float, planes: dict[str, int]) -> str:
    """doCalculatePsf on an open model file: ``/psf`` measured from the coadd; returns its kind
    (``measured`` or ``model`` for the fallback Gaussian)."""
    image = f["coadd/image"][...].astype(np.float64)
    variance = f["coadd/variance"][...].astype(np.float64)
    mask = f["coadd/mask"][...]
    good = np.isfinite(image) & np.isfinite(variance) & (variance > 0)
    good &= (mask & plane_bits(planes, ["NO_DATA", "BAD", "SAT", "INTRP", "EDGE", "SUSPECT"])) == 0
    size = int(config.measurePsf.stampSize)
    guess = f["psf"].attrs.get("fwhm") if "psf" in f else None
    try:
        stamp = measure(image, variance, good, None if guess is None else float(guess) / pixel_scale,
                        snr=float(config.detectPsfSources.thresholdSigma),
                        min_pixels=int(config.detectPsfSources.minPixels))  # fmt: skip
        psf, kind = _fit_to(stamp, size), "measured"
        fwhm = fwhm_pixels(psf) * pixel_scale
    except ValueError as exc:
        fwhm = float(config.modelPsf.defaultFwhm)
        log.warning("doCalculatePsf: %s; the coadd PSF is modelPsf's %.2f arcsec Gaussian", exc, fwhm)
        psf, kind = gaussian_image(fwhm / pixel_scale / FWHM_PER_SIGMA, size), "model"
    if "psf" in f:
        del f["psf"]
    f.create_dataset("psf", data=psf)
    f["psf"].attrs["fwhm"] = fwhm
    f["psf"].attrs["kind"] = kind
    log.info("doCalculatePsf: the coadd PSF (%s) has FWHM %.3f arcsec", kind, f["psf"].attrs["fwhm"])
    return kind


def _fit_to(stamp: np.ndarray, size: int) -> np.ndarray:
    """A centred odd stamp cropped or padded to ``size`` pixels, unit sum."""
    out = pad_to(stamp, size)
    return out / out.sum()
