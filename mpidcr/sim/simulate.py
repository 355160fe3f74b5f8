"""``mpidcr simulate``: simulated warps on disk, with a manifest and the truth.

Writes ``OUTDIR/warps/visit_NNNN.fits`` (LSST layout, a TAN WCS with north up
and east left, the visit metadata in the primary header), held-out
``OUTDIR/science/visit_NNNN.fits``, ``OUTDIR/manifest.toml`` naming the
warps, and ``OUTDIR/truth.npz`` (star positions, flux per sub-filter, the
noiseless sub-filter images).  The image model is that of
:mod:`mpidcr.synthetic`: stars with power-law spectra and real DCR.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from ..dcr import Site
from ..errors import InputError
from ..io.manifest import write_manifest
from ..io.warps import write_lsst_warp
from ..io.wcs import image_rotation_angle
from .field import add_artifacts, make_field

EFFECTIVE_WAVELENGTH = 476.31  # LSST g, nm
BANDWIDTH = 147.0


def tan_wcs_header(shape: tuple[int, int], pixel_scale: float, ra: float = 150.0, dec: float = -30.0) -> fits.Header:
    """A TAN WCS of ``pixel_scale`` arcsec/pixel, north up (+y), east left (−x), centred on (ra, dec)."""
    h = fits.Header()
    h["CTYPE1"], h["CTYPE2"] = "RA---TAN", "DEC--TAN"
    h["CRVAL1"], h["CRVAL2"] = ra, dec
    h["CRPIX1"], h["CRPIX2"] = (shape[1] + 1) / 2.0, (shape[0] + 1) / 2.0
    h["CD1_1"], h["CD1_2"] = -pixel_scale / 3600.0, 0.0
    h["CD2_1"], h["CD2_2"] = 0.0, pixel_scale / 3600.0
    h["CUNIT1"], h["CUNIT2"] = "deg", "deg"
    h["NAXIS1"], h["NAXIS2"] = shape[1], shape[0]
    return h


def simulate(
    outdir: str | os.PathLike,
    size: int | tuple[int, int] = 256,
    num_visits: int = 12,
    num_science: int = 3,
    num_stars: int | None = None,
    airmass_range: tuple[float, float] = (1.0, 2.0),
    seed: int = 1,
    seeing_fwhm_arcsec: float = 0.7,
    pixel_scale: float = 0.2,
    overwrite: bool = False,
    config: dict[str, Any] | None = None,
    engine: str = "numpy",
    seeing_max_arcsec: float | None = None,
    angle_spread: float = 180.0,
    num_galaxies: int = 0,
    cosmic_rays: int = 0,
    satellite_fraction: float = 0.0,
) -> dict[str, Any]:
    """Simulate and write a field; returns paths and counts.

    size : patch side in pixels, or its shape ``(ny, nx)``.

    engine : ``galsim`` (chromatic GalSim rendering through LSST g, see
        :mod:`mpidcr.galsim_field`) or ``numpy`` (power-law stars, fast; the tests' default).
    seeing_max_arcsec : with the galsim engine, seeing is drawn in [seeing, seeing_max].
    angle_spread : parallactic angles are drawn in ±angle_spread degrees.
    num_galaxies : faint chromatic galaxies (galsim engine).
    cosmic_rays, satellite_fraction : transient artifacts (see :func:`synthetic.add_artifacts`),
        recorded in the truth file as ``artifacts`` (V, ny, nx), not masked.
    """
    out = Path(outdir)
    manifest = out / "manifest.toml"
    if manifest.exists() and not overwrite:
        raise InputError(f"{manifest}: exists (use --overwrite)")
    if num_visits < 2:
        raise InputError("--visits must be at least 2")
    shape = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if min(shape) < 16:
        raise InputError(f"--size {shape[0]}x{shape[1]}: the patch must be at least 16 pixels on each side")
    wcs = tan_wcs_header(shape, pixel_scale)
    wcs_text = wcs.tostring()
    stars = num_stars if num_stars is not None else max(10, int(0.0027 * shape[0] * shape[1]))
    total = num_visits + num_science
    if engine == "galsim":
        try:
            from .galsim_field import make_galsim_field
        except ImportError:
            raise InputError(
                "the galsim engine needs GalSim: pip install 'mpidcr[sim]' (or use --engine numpy)"
            ) from None
        field = make_galsim_field(
            shape=shape,
            num_visits=total,
            num_stars=stars,
            airmass_range=airmass_range,
            pixel_scale=pixel_scale,
            seeing_range=(seeing_fwhm_arcsec, seeing_max_arcsec or seeing_fwhm_arcsec),
            angle_spread=angle_spread,
            seed=seed,
            rotation_for=lambda q: image_rotation_angle(wcs_text, q),
            num_galaxies=num_galaxies,
        )
    elif engine == "numpy":
        field = make_field(
            shape=shape,
            num_visits=total,
            num_stars=stars,
            airmass_range=airmass_range,
            effective_wavelength=EFFECTIVE_WAVELENGTH,
            bandwidth=BANDWIDTH,
            pixel_scale=pixel_scale,
            psf_fwhm_pixels=seeing_fwhm_arcsec / pixel_scale,
            seed=seed,
            angle_spread=angle_spread,
            rotation_for=lambda q: image_rotation_angle(wcs_text, q),
        )
    else:
        raise InputError(f"unknown simulation engine '{engine}' (galsim or numpy)")
    if num_galaxies and engine != "galsim":
        raise InputError("--galaxies needs the galsim engine")
    # science visits: spread over the airmass range, starting from the highest (where DCR matters most)
    order = np.argsort(field.airmass)[::-1]
    step = max(1, total // max(num_science, 1))
    science = set(order[::step][:num_science].tolist()) if num_science else set()
    # artifacts only in the warps that build the model; the science visits stay clean
    modelled = [v for v in range(total) if v not in science]
    artifacts = np.zeros(field.images.shape, dtype=bool)
    sub = field.images[modelled]
    artifacts[modelled] = add_artifacts(sub, cosmic_rays, satellite_fraction, seed)
    field.images[modelled] = sub
    (out / "warps").mkdir(parents=True, exist_ok=True)
    if science:
        (out / "science").mkdir(parents=True, exist_ok=True)
    site = Site()
    warp_paths, science_paths = [], []
    for v in range(total):
        obs = field.observations[v]
        w = obs.resolved_weather
        meta = {
            "visit": 1000 + v,
            "airmass": float(field.airmass[v]),
            "elevation": obs.elevation,
            "parallacticAngle": obs.parallactic_angle,
            "rotationAngle": 0.0,
            "latitude": site.latitude,
            "longitude": site.longitude,
            "height": site.height,
            "temperature": w.temperature,
            "pressure": w.pressure,
            "humidity": w.humidity,
            "psfFwhm": float(field.extra["seeing"][v]) if "seeing" in field.extra else seeing_fwhm_arcsec,
            "mjd": 60000.0 + 0.01 * v,
        }
        sub = "science" if v in science else "warps"
        path = out / sub / f"visit_{1000 + v:04d}.fits"
        write_lsst_warp(path, field.images[v], field.variances[v], field.masks[v], field.mask_planes, meta, wcs)
        (science_paths if v in science else warp_paths).append(str(path))
    write_manifest(manifest, warp_paths, field.effective_wavelength, field.bandwidth, site, config)
    extra_truth = {f"star_flux_k{k}": f for k, f in field.extra.get("truth_by_k", {}).items()}
    for key in ("galaxy_y", "galaxy_x", "galaxy_flux", "galaxy_sed"):
        if key in field.extra:
            extra_truth[key] = np.asarray(field.extra[key])
    if artifacts.any():
        extra_truth["artifacts"] = artifacts
    if "sed" in field.extra:
        extra_truth["star_sed"] = np.array(field.extra["sed"])
    np.savez_compressed(
        out / "truth.npz",
        star_y=field.star_y,
        star_x=field.star_x,
        star_flux=field.star_flux,
        subfilter_images=field.true_subfilter_images,
        effective_wavelength=field.effective_wavelength,
        bandwidth=field.bandwidth,
        pixel_scale=pixel_scale,
        psf_sigma_pixels=field.psf_sigma,
        sky_sigma=field.sky_sigma,
        engine=engine,
        **extra_truth,
    )
    return {
        "manifest": str(manifest),
        "warps": warp_paths,
        "science": science_paths,
        "num_visits": len(warp_paths),
        "num_science": len(science_paths),
        "effective_wavelength": field.effective_wavelength,
        "bandwidth": field.bandwidth,
    }
