"""Products made from a model file: FITS export and DCR-matched templates.

FITS products use the warp layout (primary header + IMAGE with the WCS, MASK
with ``MP_<NAME>`` keywords, VARIANCE), so DS9, astropy and the LSST tools
open them as they open warps.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from numpy.typing import NDArray

from ..config import DcrConfig
from ..dcr import Observation, Site, VisitShifts, check_elevation, dcr_shifts, elevation_from_airmass
from ..errors import InputError
from ..solver import matched_template
from .modelfile import ModelFile, read_model
from .paths import check_output_path
from .warps import WarpInfo, observation_or_error, resolve_geometry, scan_warp, write_lsst_warp
from .wcs import same_wcs


def model_config(model: ModelFile) -> DcrConfig:
    return DcrConfig.from_dict(json.loads(model.attrs["config"]))


def _wcs(model: ModelFile) -> fits.Header:
    return fits.Header.fromstring(model.attrs["wcs_header"])


def export_fits(model_path: str, outdir: str, overwrite: bool = False) -> list[str]:
    """One FITS file per sub-filter plane and one for the full-band coadd; returns the paths."""
    model = read_model(model_path)
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    K = model.model.shape[0]
    edges = np.asarray(model.attrs["subfilter_edges"])
    wcs = _wcs(model)
    written = []
    stem = Path(model_path).stem
    for k in range(K):
        path = out / f"{stem}_subfilter{k}.fits"
        _refuse_existing(path, overwrite)
        meta = {"WAVE-LO": float(edges[k]), "WAVE-HI": float(edges[k + 1]), "SUBFILT": k, "NSUBFILT": K}
        _write_product(path, model.model[k], model.variance / K, model.mask, model.mask_planes, wcs, meta)
        written.append(str(path))
    path = out / f"{stem}_coadd.fits"
    _refuse_existing(path, overwrite)
    _write_product(
        path,
        model.coadd,
        model.variance,
        model.mask,
        model.mask_planes,
        wcs,
        {"WAVE-LO": float(edges[0]), "WAVE-HI": float(edges[-1]), "NSUBFILT": K},
    )
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
) -> None:
    write_lsst_warp(path, image, variance, mask, planes, {}, wcs)
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
    """The DCR-matched template of the model for a visit observed as ``obs``, (ny, nx); made as
    the model's profile (or ``profile``) says: spline order templateInterpOrder (LSST's: 3, and
    sub-filters always split)."""
    cfg = template_config(model, profile)
    order = 3 if cfg.lsst("templates") else int(cfg.templateInterpOrder)
    return matched_template(model.model.astype(np.float64), visit_shifts_for(model, obs, profile), order)


def _template_conditions(model: ModelFile, warp_path: str | None, overrides: dict[str, Any],
                         profile: str | None = None) -> tuple[Observation, dict[str, Any]]:  # fmt: skip
    """The observation a template is made for, from a warp on the model's grid or from the
    overrides alone (elevation or airmass, parallactic angle); and the metadata to record."""
    if warp_path is not None:
        info, obs = observation_for_warp(warp_path, overrides, cfg=template_config(model, profile))
        if info.shape != tuple(model.model.shape[1:]):
            raise InputError(f"{warp_path}: shape {info.shape} differs from the model's {model.model.shape[1:]}")
        if not same_wcs(info.wcs_header, model.attrs["wcs_header"]):
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


def write_template(
    model_path: str,
    warp_path: str | None,
    output: str,
    overrides: dict[str, Any] | None = None,
    overwrite: bool = False,
    profile: str | None = None,
) -> dict[str, Any]:
    """Write the DCR-matched template for ``warp_path``'s conditions (or for ``overrides`` alone),
    made as the model's profile (or ``profile``) says."""
    check_output_path(output, [model_path] + ([warp_path] if warp_path else []), overwrite, "template")
    model = read_model(model_path)
    obs, meta = _template_conditions(model, warp_path, dict(overrides or {}), profile)
    template = template_for(model, obs, profile)
    write_lsst_warp(output, template, model.variance, model.mask, model.mask_planes, meta, _wcs(model))
    return {
        "output": output,
        "elevation": obs.elevation,
        "parallactic_angle": obs.parallactic_angle,
        "rotation_angle": obs.rotation_angle,
    }
