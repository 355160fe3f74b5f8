"""Templates on a science exposure's own pixels, from one or many patch models (a tract).

As LSST's GetDcrTemplateTask: every model whose patch overlaps the science exposure's bbox (grown
by ``border`` pixels, LSST's ``templateBorderSize``) forward-models its DCR-matched template on its
patch grid for the science visit's conditions — the DCR direction from that *patch's* WCS — which
is resampled onto the science WCS with ``reproject.reproject_exact`` (by the sky areas the pixels
share: the counts are conserved), and overlapping patches are averaged with weights var^-1/2
(LSST's).  Pixels no patch covers are
NO_DATA (NaN image, infinite variance).  Arrays are (y, x).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from astropy.io import fits
from numpy.typing import NDArray

from ..dcr import Site
from ..errors import InputError
from ..masks import DEFAULT_PLANES, plane_bits
from .modelfile import ModelFile, read_model
from .warps import WarpInfo, observation_or_error, resolve_geometry, scan_warp
from .wcs import celestial_wcs

log = logging.getLogger(__name__)

#: a resampled pixel counts when the patch covers at least this share of it
MIN_COVERAGE = 0.99


@dataclass
class DetectorTemplate:
    """A template on the science exposure's grid (grown by ``border``): image, variance (inf where
    NO_DATA), mask (NO_DATA), its WCS header, xy0, PSF and the models used."""

    image: NDArray[np.float64]
    variance: NDArray[np.float64]
    mask: NDArray[np.int32]
    wcs_header: fits.Header
    xy0: tuple[int, int]
    psf: NDArray | None
    models: list[str]
    meta: dict[str, Any]


def output_grid(info: WarpInfo, border: int) -> tuple[Any, tuple[int, int], tuple[int, int]]:
    """The science exposure's celestial WCS grown by ``border`` pixels on every side: (WCS,
    shape (ny, nx), xy0 (x0, y0)); ``border`` ≥ 0."""
    if border < 0:
        raise InputError(f"border {border}: the template grows the science exposure's bbox; give 0 or more pixels")
    wcs = celestial_wcs(info.wcs_header)
    if wcs is None:
        raise InputError(f"{info.path}: no celestial WCS to put the template on")
    grown = wcs.deepcopy()
    grown.wcs.crpix = grown.wcs.crpix + border
    shape = (info.shape[0] + 2 * border, info.shape[1] + 2 * border)
    return grown, shape, (info.xy0[0] - border, info.xy0[1] - border)


def _pixel_area(wcs: Any) -> float:
    """A pixel's sky area in the tangent plane (square degrees): the same over a patch to < 1e-6."""
    from astropy.wcs.utils import proj_plane_pixel_area

    return float(proj_plane_pixel_area(wcs))


def _overlaps(model_wcs: Any, model_shape: tuple[int, int], wcs: Any, shape: tuple[int, int]) -> bool:
    """Whether the output grid's footprint (its edge pixels' sky positions) falls on the patch."""
    ny, nx = shape
    edge = np.concatenate([np.stack([np.arange(nx), np.zeros(nx)]), np.stack([np.arange(nx), np.full(nx, ny - 1)]),
                           np.stack([np.zeros(ny), np.arange(ny)]), np.stack([np.full(ny, nx - 1), np.arange(ny)])],
                          axis=1)  # fmt: skip
    x, y = model_wcs.all_world2pix(*wcs.all_pix2world(edge[0], edge[1], 0), 0)
    inside_box = (x.min() < model_shape[1]) and (x.max() > -1) and (y.min() < model_shape[0]) and (y.max() > -1)
    return bool(inside_box)


def patch_template(model: ModelFile, info: WarpInfo, profile: str | None, site: Site) -> tuple[NDArray, NDArray]:
    """One patch's template for the science visit ``info`` on the patch grid (the DCR direction from
    the patch's WCS) and its variance; NaN where the patch has no data."""
    from .products import honest_variance, template_at, template_config

    cfg = template_config(model, profile)
    meta = {k: v for k, v in info.meta.items() if k != "rotationAngle" or "rotationAngle" in info.meta.get("_overrides", ())}
    on_patch = resolve_geometry(replace(info, wcs_header=model.attrs["wcs_header"], meta=meta), site,
                                cfg.lsst("parallacticAngle"), cfg.lsst("rotationDirection"))  # fmt: skip
    obs = observation_or_error(on_patch, site, set())
    template, _ = template_at(model, obs, profile)
    variance, _ = honest_variance(template, model.variance.astype(np.float64), model.mask, model.mask_planes)
    missing = ((model.mask & plane_bits(model.mask_planes, ["NO_DATA"])) != 0) | ~np.isfinite(variance)
    # a patch's outer DCR buffer is poorly constrained (shifted data leave it): left to the
    # neighbouring patch, as LSST's overlapping patch borders are
    edge = edge_width(model)
    if edge:
        missing[:edge] = missing[-edge:] = True
        missing[:, :edge] = missing[:, -edge:] = True
    return np.where(missing, np.nan, template), np.where(missing, np.nan, variance)


def edge_width(model: ModelFile) -> int:
    """Pixels at a patch's edges a detector-frame template does not use: its DCR buffer."""
    return int(model.attrs.get("buffer", 0))


def detector_template(model_paths: list[str], science_path: str, overrides: dict[str, Any] | None = None,
                      profile: str | None = None, border: int = 0, site: Site | None = None) -> DetectorTemplate:  # fmt: skip
    """The DCR-matched template of ``science_path``'s visit on its own pixels (module docstring)."""
    from reproject import reproject_exact
    from scipy import ndimage

    site = site or Site()
    info = scan_warp(science_path, overrides or {})
    wcs, shape, xy0 = output_grid(info, int(border))
    weight_sum = np.zeros(shape)
    weighted = np.zeros(shape)
    weighted_var = np.zeros(shape)
    used, psf = [], None
    for path in model_paths:
        model = read_model(path)
        model_wcs = celestial_wcs(model.attrs["wcs_header"])
        if model_wcs is None:
            raise InputError(f"{path}: the model has no celestial WCS")
        if not _overlaps(model_wcs, model.model.shape[1:], wcs, shape):
            log.info("%s: its patch does not overlap %s", path, science_path)
            continue
        template, variance = patch_template(model, info, profile, site)
        # counts per pixel, resampled by the areas the pixels share (reproject_exact): the counts
        # are conserved; × the ratio of the pixels' areas where the scales differ.  (The variance is
        # resampled the same way: an upper bound, the overlaps' weights are not squared.)
        area = _pixel_area(wcs) / _pixel_area(model_wcs)
        image_out, cover = reproject_exact((np.nan_to_num(template), model_wcs), wcs, shape_out=shape)
        var_out, _ = reproject_exact((np.nan_to_num(variance, nan=np.inf), model_wcs), wcs, shape_out=shape)
        # a resampled pixel must not share area with a pixel without data
        reach = ndimage.binary_dilation(np.isnan(template), iterations=1)
        missing, _ = reproject_exact((reach.astype(np.float64), model_wcs), wcs, shape_out=shape)
        image_out, var_out = image_out * area, var_out * area**2
        cover = np.where(np.nan_to_num(missing, nan=1.0) > 0, 0.0, cover)
        good = (cover >= MIN_COVERAGE) & np.isfinite(image_out) & np.isfinite(var_out) & (var_out > 0)
        if not good.any():
            continue
        w = np.where(good, 1.0 / np.sqrt(np.where(good, var_out, 1.0)), 0.0)
        weight_sum += w
        weighted += w * np.where(good, image_out, 0.0)
        weighted_var += w**2 * np.where(good, var_out, 0.0)
        used.append(path)
        psf = psf if psf is not None else model.psf
    if not used:
        raise InputError(f"{science_path}: none of the {len(model_paths)} models' patches overlaps it")
    covered = weight_sum > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        image = np.where(covered, weighted / weight_sum, np.nan)
        variance = np.where(covered, weighted_var / weight_sum**2, np.inf)
    mask = np.where(covered, 0, np.int32(plane_bits(DEFAULT_PLANES, ["NO_DATA"]))).astype(np.int32)
    header = wcs.to_header(relax=True)
    meta = {k: v for k, v in info.meta.items() if not k.startswith("_")}
    log.info("template of %s on its %dx%d pixels (border %d) from %d of %d patch models", science_path, shape[1],
             shape[0], border, len(used), len(model_paths))  # fmt: skip
    return DetectorTemplate(image, variance, mask, header, xy0, psf, used, meta)


def on_model_grid(model_path: str, science_path: str) -> bool:
    """Whether the science file lies on the model's patch grid (same shape, WCS and xy0): then the
    template is the patch template itself."""
    from .modelfile import model_grid
    from .wcs import same_wcs

    info = scan_warp(science_path, {"airmass": 1.0, "parallacticAngle": 0.0})  # (only its grid matters here)
    shape, wcs_header, xy0 = model_grid(model_path)
    try:  # (the science warp's WCS was read by its scan: an unreadable one here is the model's)
        same = same_wcs(info.wcs_header, wcs_header)
    except ValueError as exc:
        raise InputError(f"{model_path}: {exc}") from None
    return info.shape == shape and tuple(info.xy0) == xy0 and same


def write_detector_template(model_paths: list[str], science_path: str, output: str,
                            overrides: dict[str, Any] | None = None, overwrite: bool = False,
                            profile: str | None = None, border: int = 0) -> dict[str, Any]:  # fmt: skip
    """:func:`detector_template` written in the warp layout (NO_DATA plane, the science WCS and
    xy0, a PSF HDU when the models have one)."""
    from .paths import check_output_path
    from .warps import write_lsst_warp

    check_output_path(output, [*model_paths, science_path], overwrite, "template")
    t = detector_template(model_paths, science_path, overrides, profile, border)
    planes = {"NO_DATA": DEFAULT_PLANES["NO_DATA"]}
    write_lsst_warp(output, t.image, t.variance, t.mask, planes, t.meta, t.wcs_header, psf=t.psf, xy0=t.xy0)
    return {"output": output, "models": t.models}
