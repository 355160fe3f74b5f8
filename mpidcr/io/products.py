"""Products made from a model file: FITS export and DCR-matched templates.

FITS products use the warp layout (primary header + IMAGE with the WCS, MASK
with ``MP_<NAME>`` keywords, VARIANCE), so DS9, astropy and the LSST tools
open them as they open warps.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from numpy.typing import NDArray

from ..config import DcrConfig
from ..dcr import Observation, Site, VisitShifts, check_elevation, dcr_shifts, elevation_from_airmass
from ..errors import InputError
from ..kernels.gaussian import blur_step, gaussian_filter
from ..psf import (
    WING_TRUNCATE,
    MatchingKernel,
    Psf,
    blur_plan,
    fit_matching,
    matching_kernel,
    matching_sigma,
    pad_to,
    wing_radius,
)
from ..solver import matched_template
from .modelfile import ModelFile, read_model
from .outputs import write_fits
from .paths import check_output_path
from .psf import visit_psf
from .warps import WarpInfo, image_header, observation_or_error, resolve_geometry, scan_warp, write_lsst_warp
from .wcs import same_wcs


def model_config(model: ModelFile) -> DcrConfig:
    return DcrConfig.from_dict(json.loads(model.attrs["config"]))


def _wcs(model: ModelFile) -> fits.Header:
    with warnings.catch_warnings():  # (astropy's notes on non-standard cards; the WCS itself is checked)
        warnings.simplefilter("ignore")
        return fits.Header.fromstring(model.attrs["wcs_header"])


def export_fits(model_path: str, outdir: str, overwrite: bool = False) -> list[str]:
    """The model as afw-layout Exposure files named after LSST's datasets: per sub-filter k,
    ``<stem>_dcrCoadd_subfilter<k>.fits`` (IMAGE/MASK/VARIANCE with EXTNAME and EXTTYPE, MP_* planes,
    the patch WCS and xy0, a PSF HDU when known) and ``<stem>_dcrCoadd_nImage_subfilter<k>.fits``
    (the visits contributing to it, with doNImage); and the full-band ``<stem>_coadd.fits``.  Each
    reads back as mpidcr's inputs or static model.  Returns the paths."""
    model = read_model(model_path)
    out = Path(outdir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a directory (--fits names the directory to write into)")
    out.mkdir(parents=True, exist_ok=True)
    K = model.model.shape[0]
    edges = np.asarray(model.attrs["subfilter_edges"])
    wcs = _wcs(model)
    x0, y0 = (int(v) for v in model.attrs.get("xy0", (0, 0)))
    xy0 = (x0, y0)
    written = []
    stem = Path(model_path).stem
    for k in range(K):
        path = out / f"{stem}_dcrCoadd_subfilter{k}.fits"
        _refuse_existing(path, overwrite)
        meta = {"WAVE-LO": float(edges[k]), "WAVE-HI": float(edges[k + 1]), "SUBFILT": k, "NSUBFILT": K}
        _write_product(path, model.model[k], model.variance / K, model.mask, model.mask_planes, wcs, meta, model.psf,
                       xy0)  # fmt: skip
        written.append(str(path))
        if model.nimage is not None:
            path = out / f"{stem}_dcrCoadd_nImage_subfilter{k}.fits"
            _refuse_existing(path, overwrite)
            hdu = fits.PrimaryHDU(np.asarray(model.nimage[k], np.int32), header=image_header(wcs))
            hdu.header["EXTTYPE"] = "IMAGE"
            hdu.header.update({"SUBFILT": k, "NSUBFILT": K, "ORIGIN": "mpidcr"})
            write_fits(str(path), fits.HDUList([hdu]))
            written.append(str(path))
    path = out / f"{stem}_coadd.fits"
    _refuse_existing(path, overwrite)
    _write_product(path, model.coadd, model.variance, model.mask, model.mask_planes, wcs,
                   {"WAVE-LO": float(edges[0]), "WAVE-HI": float(edges[-1]), "NSUBFILT": K}, model.psf, xy0)  # fmt: skip
    written.append(str(path))
    return written


def _refuse_existing(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise InputError(f"{path}: exists (use --overwrite)")


def _write_product(
    path: Path,
    image: NDArray,
    variance: NDArray,
    mask: NDArray,
    planes: dict[str, int],
    wcs: fits.Header,
    extra: dict[str, Any],
    psf: NDArray | None = None,
    xy0: tuple[int, int] = (0, 0),
) -> None:
    write_lsst_warp(path, image, variance, mask, planes, {}, wcs, psf=psf, xy0=xy0)
    with fits.open(path, mode="update") as hdul:
        for key, value in extra.items():
            hdul[0].header[key] = value
        hdul[0].header["ORIGIN"] = "mpidcr"


def template_config(model: ModelFile, profile: str | None = None) -> DcrConfig:
    """The model's configuration, with ``profile`` (mpidcr or lsst) instead of its own if given:
    what decides how its templates are made."""
    cfg = model_config(model)
    if profile is not None:
        cfg.profile = profile
    return cfg


def visit_shifts_for(model: ModelFile, obs: Observation, profile: str | None = None) -> VisitShifts:
    cfg = template_config(model, profile)
    options = cfg.shift_options()
    if cfg.lsst("templates"):  # LSST's buildMatchedExposure: sub-filters always split
        options.update(split_subfilters=True, split_threshold=0.0)
    return dcr_shifts(obs, cfg.effectiveWavelength, cfg.bandwidth, cfg.num_subfilters,
                      float(model.attrs["pixel_scale"]), **options)  # fmt: skip


def observation_for_warp(path: str, overrides: dict[str, Any] | None = None, site: Site | None = None,
                         cfg: DcrConfig | None = None) -> tuple[WarpInfo, Observation]:  # fmt: skip
    """A warp's observing conditions, its angles resolved as ``cfg`` (LSST's or mpidcr's) asks."""
    lsst_angles, lsst_rotation = (cfg.lsst("parallacticAngle"), cfg.lsst("rotationDirection")) if cfg else (False, False)
    info = resolve_geometry(scan_warp(path, overrides or {}), site or Site(), lsst_angles, lsst_rotation)
    return info, observation_or_error(info, site or Site(), set())


def template_for(model: ModelFile, obs: Observation, profile: str | None = None) -> NDArray[np.float64]:
    """The DCR-matched template of the model for a visit observed as ``obs``, (ny, nx), at the
    PSF of the model's planes; made as the model's profile (or ``profile``) says: spline order
    templateInterpOrder (1, as the fit; LSST's: 3, and sub-filters always split)."""
    return template_at(model, obs, profile)[0]


def template_at(model: ModelFile, obs: Observation, profile: str | None = None,
                psf: Psf | None = None) -> tuple[NDArray[np.float64], NDArray | None]:  # fmt: skip
    """(template, its PSF image or None if unknown).  With ``psf`` (the science visit's), the
    template is brought to it where that PSF is the broader: a PSF-aware model's planes are
    blurred by the matching kernel before the shifts (forward-modelled at that PSF), a
    constant-PSF model's template is blurred after them."""
    cfg = template_config(model, profile)
    order = 3 if cfg.lsst("templates") else int(cfg.templateInterpOrder)
    planes = model.model.astype(np.float64)
    shifts = visit_shifts_for(model, obs, profile)
    if psf is None or model.psf is None:
        return matched_template(planes, shifts, order), model.psf
    sigma = matching_sigma(model.psf, psf.image)
    if sigma == 0.0:  # the science visit is the sharper: the template stays at the model's PSF
        return matched_template(planes, shifts, order), model.psf
    if model.attrs.get("psf_aware", False):
        wing_sigmas = tuple(float(w) for w in np.atleast_1d(model.attrs.get("psf_wing_sigmas", ())))
        if not wing_sigmas:  # a single Gaussian, as the model was fitted
            kernel = MatchingKernel(sigma**2)
        else:  # the model's wing Gaussians, weighted for this PSF
            kernel = fit_matching(model.psf, psf.image, wing_sigmas)
        steps = blur_plan(np.array([kernel.variance]), 0.0).steps[0]
        blurred = np.stack([_blurred(p, steps) for p in planes]) * kernel.core_weight
        for w, s in zip(kernel.weights, wing_sigmas, strict=True):
            blurred += w * np.stack([gaussian_filter(p, s, truncate=WING_TRUNCATE) for p in planes])
        # the template's PSF: the model's through the same kernel (≈ the science PSF)
        reach = max([len(steps), *(wing_radius(s) for s in wing_sigmas)])
        size = max(model.psf.shape[0], psf.image.shape[0]) + 2 * reach
        return matched_template(blurred, shifts, order), kernel.apply(pad_to(model.psf, size | 1), wing_sigmas)
    from scipy.signal import fftconvolve

    image = matching_kernel(model.psf, psf.image)
    return fftconvolve(matched_template(planes, shifts, order), image, mode="same"), psf.image


def _template_conditions(model: ModelFile, warp_path: str | None, overrides: dict[str, Any],
                         profile: str | None = None) -> tuple[Observation, dict[str, Any]]:  # fmt: skip
    """The observation a template is made for, from a warp on the model's grid or from the
    overrides alone (elevation or airmass, parallactic angle); and the metadata to record."""
    if warp_path is not None:
        info, obs = observation_for_warp(warp_path, overrides, cfg=template_config(model, profile))
        if info.shape != tuple(model.model.shape[1:]):
            raise InputError(f"{warp_path}: shape {info.shape} differs from the model's {model.model.shape[1:]}")
        try:  # (the warp's WCS was read by its scan: an unreadable one here is the model's)
            same = same_wcs(info.wcs_header, model.attrs["wcs_header"])
        except ValueError as exc:
            raise InputError(f"{model.path}: {exc}") from None
        if not same:
            raise InputError(
                f"{warp_path}: WCS differs from the model's ({model.path}); warp it onto the patch grid first"
            )
        return obs, {k: v for k, v in info.meta.items() if not k.startswith("_")}
    if "elevation" not in overrides and "airmass" not in overrides:
        raise InputError("give a warp or --elevation/--airmass and --parallactic-angle")
    if "parallacticAngle" not in overrides:
        raise InputError("give --parallactic-angle (deg)")
    elevation = overrides.get("elevation") or elevation_from_airmass(overrides["airmass"])
    check_elevation(elevation)
    obs = Observation(elevation, overrides["parallacticAngle"], overrides.get("rotationAngle", 0.0))
    meta = {"elevation": elevation, "airmass": obs.airmass, "parallacticAngle": obs.parallactic_angle,
            "rotationAngle": obs.rotation_angle}  # fmt: skip
    return obs, meta


def honest_variance(template: NDArray, variance: NDArray, mask: NDArray,
                    planes: dict[str, int]) -> tuple[NDArray, float]:  # fmt: skip
    """The template's VARIANCE plane: var(T) scaled so that its median over the background pixels
    (no DETECTED, NO_DATA, BAD, SAT) is the template's noise there, measured robustly
    (1.4826 × the median absolute deviation).  var(T) overstates it (~1.7×): the shifts'
    interpolation and the regularizations smooth the noise.  Returns (variance, the scale)."""
    from ..masks import plane_bits

    background = ((mask & plane_bits(planes, ["DETECTED", "NO_DATA", "BAD", "SAT"])) == 0)
    background &= np.isfinite(template) & np.isfinite(variance) & (variance > 0)
    if np.count_nonzero(background) < 100:
        return variance, 1.0
    values = template[background]
    mad = 1.4826 * float(np.median(np.abs(values - np.median(values))))
    scale = mad**2 / float(np.median(variance[background]))
    if not np.isfinite(scale) or scale <= 0:
        return variance, 1.0
    return variance * scale, scale


def _blurred(image: NDArray, steps: tuple[float, ...]) -> NDArray:
    """``image`` through the forward model's 3-tap blur ``steps``."""
    for variance in steps:
        image = blur_step(image, variance, np.empty_like(image))
    return image


def write_template(
    model_path: str,
    warp_path: str | None,
    output: str,
    overrides: dict[str, Any] | None = None,
    overwrite: bool = False,
    profile: str | None = None,
    match_psf: bool = False,
) -> dict[str, Any]:
    """Write the DCR-matched template for ``warp_path``'s conditions (or for ``overrides`` alone),
    made as the model's profile (or ``profile``) says, with its PSF as an HDU when known;
    ``match_psf``: at the science warp's PSF (:func:`template_at`)."""
    check_output_path(output, [model_path] + ([warp_path] if warp_path else []), overwrite, "template")
    model = read_model(model_path)
    obs, meta = _template_conditions(model, warp_path, dict(overrides or {}), profile)
    science_psf = None
    if match_psf:
        if warp_path is None:
            raise InputError("--match-psf needs the science warp (its PSF)")
        if model.psf is None:
            raise InputError(f"{model_path}: the model has no PSF (its visits had none), so --match-psf cannot act")
        science_psf = visit_psf(resolve_geometry(scan_warp(warp_path), Site()), float(model.attrs["pixel_scale"]))
        if science_psf is None:
            raise InputError(f"{warp_path}: no PSF (no PSF HDU, no PSF-FWHM/SEEING/FWHM keyword) for --match-psf")
    template, psf = template_at(model, obs, profile, science_psf)
    variance, _ = honest_variance(template, model.variance, model.mask, model.mask_planes)
    write_lsst_warp(output, template, variance, model.mask, model.mask_planes, meta, _wcs(model), psf=psf)
    return {
        "output": output,
        "elevation": obs.elevation,
        "parallactic_angle": obs.parallactic_angle,
        "rotation_angle": obs.rotation_angle,
    }
