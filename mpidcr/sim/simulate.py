"""``mpidcr simulate``: simulated warps on disk, with a manifest and the truth.

Writes ``OUTDIR/warps/visit_NNNN.fits`` (LSST layout, a TAN WCS with north up
and east left, the visit metadata in the primary header), held-out
``OUTDIR/science/visit_NNNN.fits``, ``OUTDIR/manifest.toml`` naming the
warps, and ``OUTDIR/truth.npz`` (star positions, flux per sub-filter, the
noiseless sub-filter images).  The image model is that of
:mod:`mpidcr.synthetic`: stars with power-law spectra and real DCR.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from numpy.typing import NDArray

from ..dcr import MIN_ELEVATION_DEG, Site, physical_problem
from ..errors import InputError
from ..io.manifest import write_manifest
from ..io.warps import write_lsst_warp
from ..io.wcs import image_rotation_angle
from .field import TRAIL, SyntheticField, add_artifacts, make_field
from .galsim_field import SEEING_PROFILES

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


def _check_request(manifest: Path, size: int | tuple[int, int], num_visits: int, overwrite: bool,
                   num_galaxies: int, engine: str, seeing_profile: str = "kolmogorov") -> tuple[int, int]:  # fmt: skip
    """The patch shape; InputError for a request that cannot be simulated."""
    if manifest.exists() and not overwrite:
        raise InputError(f"{manifest}: exists (use --overwrite)")
    if num_visits < 2:
        raise InputError("--visits must be at least 2")
    shape = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if min(shape) < 16:
        raise InputError(f"--size {shape[0]}x{shape[1]}: the patch must be at least 16 pixels on each side")
    if num_galaxies and engine != "galsim":
        raise InputError("--galaxies needs the galsim engine")
    if seeing_profile not in SEEING_PROFILES:
        raise InputError(f"--seeing-profile {seeing_profile}: one of {', '.join(SEEING_PROFILES)}")
    return shape


def _check_ranges(airmass_range: tuple[float, float], seeing: float, seeing_max: float | None, counts: dict[str, int],
                  satellite_fraction: float, angle_spread: float) -> None:  # fmt: skip
    """InputError naming the option for a value outside what can be observed or drawn."""
    low, high = airmass_range
    top = 1.0 / math.sin(math.radians(MIN_ELEVATION_DEG))
    if not 1.0 <= low <= high <= top:
        raise InputError(f"--airmass-min {low:g} --airmass-max {high:g}: need 1 <= min <= max <= {top:.2f} "
                         f"(elevation >= {MIN_ELEVATION_DEG:g} deg)")  # fmt: skip
    for option, value in (("--seeing", seeing), ("--seeing-max", seeing_max)):
        problem = None if value is None else physical_problem("psfFwhm", value)
        if problem:
            raise InputError(f"{option} {value:g}{problem}")
    if seeing_max is not None and seeing_max < seeing:
        raise InputError(f"--seeing-max {seeing_max:g} is below --seeing {seeing:g}")
    for option, count in counts.items():
        if count < 0:
            raise InputError(f"{option} {count}: must not be negative")
    if not 0.0 <= satellite_fraction <= 1.0:
        raise InputError(f"--satellites {satellite_fraction:g}: a fraction of the visits, in [0, 1]")
    if not 0.0 <= angle_spread <= 180.0:
        raise InputError(f"--angle-spread {angle_spread:g}: degrees in [0, 180]")


def _rotation(wcs_text: str) -> Callable[[float], float]:
    """The image rotation angle (deg) for a parallactic angle on the simulated WCS."""

    def rotation(parallactic_angle: float) -> float:
        angle = image_rotation_angle(wcs_text, parallactic_angle)
        if angle is None:  # pragma: no cover - the simulated WCS is always celestial
            raise InputError("the simulated WCS is not celestial")
        return angle

    return rotation


def _render(engine: str, seeing: tuple[float, float], **kwargs: Any) -> SyntheticField:
    """The field, rendered by GalSim (chromatic, through LSST g) or in numpy (power-law stars)."""
    if engine == "galsim":
        try:
            from .galsim_field import make_galsim_field
        except ImportError:
            raise InputError(
                "the galsim engine needs GalSim: pip install 'mpidcr[sim]' (or use --engine numpy)"
            ) from None
        return make_galsim_field(seeing_range=seeing, **kwargs)
    if engine == "numpy":
        kwargs.pop("num_galaxies")
        kwargs.pop("seeing_profile")  # the numpy engine's PSF is always a Gaussian
        kwargs.pop("keep_noiseless")
        return make_field(effective_wavelength=EFFECTIVE_WAVELENGTH, bandwidth=BANDWIDTH,
                          psf_fwhm_pixels=seeing[0] / kwargs["pixel_scale"], **kwargs)  # fmt: skip
    raise InputError(f"unknown simulation engine '{engine}' (galsim or numpy)")


def _science_visits(airmass: NDArray, num_science: int) -> set[int]:
    """Held-out visits spread over the airmass range, starting from the highest (where DCR matters most)."""
    if not num_science:
        return set()
    order = np.argsort(airmass)[::-1]
    step = max(1, len(airmass) // max(num_science, 1))
    return set(order[::step][:num_science].tolist())


def _write_visits(out: Path, field: SyntheticField, science: set[int], wcs: fits.Header,
                  seeing: float) -> tuple[list[str], list[str]]:  # fmt: skip
    """Every visit as an LSST-layout warp (warps/ or science/); (warp paths, science paths)."""
    (out / "warps").mkdir(parents=True, exist_ok=True)
    if science:
        (out / "science").mkdir(parents=True, exist_ok=True)
    site = Site()
    warp_paths: list[str] = []
    science_paths: list[str] = []
    for v, obs in enumerate(field.observations):
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
            "psfFwhm": float(field.extra["seeing"][v]) if "seeing" in field.extra else seeing,
            "mjd": 60000.0 + 0.01 * v,
        }
        folder = "science" if v in science else "warps"
        path = out / folder / f"visit_{1000 + v:04d}.fits"
        write_lsst_warp(path, field.images[v], field.variances[v], field.masks[v], field.mask_planes, meta, wcs,
                        psf=_visit_psf(field, v))  # fmt: skip
        (science_paths if v in science else warp_paths).append(str(path))
    return warp_paths, science_paths


def _visit_psf(field: SyntheticField, v: int) -> NDArray:
    """Visit v's PSF image without DCR: GalSim's seeing, or the numpy engine's sampled Gaussian."""
    if "psf_images" in field.extra:
        return np.asarray(field.extra["psf_images"][v])
    r = max(5, int(np.ceil(4 * field.psf_sigma)))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    image = np.exp(-0.5 * (yy**2 + xx**2) / field.psf_sigma**2)
    return image / image.sum()


def _write_truth(path: Path, field: SyntheticField, artifacts: NDArray, pixel_scale: float, engine: str) -> None:
    """``truth.npz``: star positions and fluxes, noiseless sub-filter images, artifacts, SEDs, and
    (GalSim engine) each science visit's image before the noise, ``noiseless_<visit id>``."""
    extra = {f"star_flux_k{k}": f for k, f in field.extra.get("truth_by_k", {}).items()}
    for v, image in sorted(field.extra.get("noiseless", {}).items()):
        extra[f"noiseless_{1000 + v}"] = np.asarray(image)
    for key in ("galaxy_y", "galaxy_x", "galaxy_flux", "galaxy_sed", "star_total"):
        if key in field.extra:
            extra[key] = np.asarray(field.extra[key])
    if artifacts.any():  # (V, ny, nx) every artifact pixel; the satellite trails' alone
        extra["artifacts"] = artifacts > 0
        extra["trails"] = artifacts == TRAIL
    if "sed" in field.extra:
        extra["star_sed"] = np.array(field.extra["sed"])
    np.savez_compressed(path, star_y=field.star_y, star_x=field.star_x, star_flux=field.star_flux,
                        subfilter_images=field.true_subfilter_images, effective_wavelength=field.effective_wavelength,
                        bandwidth=field.bandwidth, pixel_scale=pixel_scale, psf_sigma_pixels=field.psf_sigma,
                        sky_sigma=field.sky_sigma, engine=engine, **extra)  # fmt: skip


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
    seeing_profile: str = "kolmogorov",
) -> dict[str, Any]:
    """Simulate and write a field; returns paths and counts.

    size : patch side in pixels, or its shape ``(ny, nx)``.

    engine : ``galsim`` (chromatic GalSim rendering through LSST g, see
        :mod:`mpidcr.galsim_field`) or ``numpy`` (power-law stars, fast; the tests' default).
    seeing_max_arcsec : with the galsim engine, seeing is drawn in [seeing, seeing_max].
    seeing_profile : with the galsim engine, ``kolmogorov`` (the atmosphere's) or ``gaussian``
        (for which the PSF-aware model's Gaussian matching kernels are exact).
    angle_spread : parallactic angles are drawn in ±angle_spread degrees.
    num_galaxies : faint chromatic galaxies (galsim engine).
    cosmic_rays, satellite_fraction : transient artifacts (see :func:`synthetic.add_artifacts`),
        recorded in the truth file as ``artifacts`` (V, ny, nx), not masked.
    """
    out = Path(outdir)
    manifest = out / "manifest.toml"
    shape = _check_request(manifest, size, num_visits, overwrite, num_galaxies, engine, seeing_profile)
    _check_ranges(airmass_range, seeing_fwhm_arcsec, seeing_max_arcsec,
                  {"--science": num_science, "--galaxies": num_galaxies, "--cosmic-rays": cosmic_rays},
                  satellite_fraction, angle_spread)  # fmt: skip
    if num_stars is not None and num_stars < 1:
        raise InputError(f"--stars {num_stars}: at least 1")
    wcs = tan_wcs_header(shape, pixel_scale)
    total = num_visits + num_science
    field = _render(engine, shape=shape, num_visits=total,
                    num_stars=num_stars if num_stars is not None else max(10, int(0.0027 * shape[0] * shape[1])),
                    airmass_range=airmass_range, pixel_scale=pixel_scale, seeing=(seeing_fwhm_arcsec,
                    seeing_max_arcsec or seeing_fwhm_arcsec), angle_spread=angle_spread, seed=seed,
                    rotation_for=_rotation(wcs.tostring()), num_galaxies=num_galaxies,
                    seeing_profile=seeing_profile,
                    keep_noiseless=lambda airmass: _science_visits(airmass, num_science))  # fmt: skip
    science = _science_visits(field.airmass, num_science)
    # artifacts only in the warps that build the model; the science visits stay clean
    modelled = [v for v in range(total) if v not in science]
    artifacts = np.zeros(field.images.shape, dtype=np.uint8)
    images = field.images[modelled]
    artifacts[modelled] = add_artifacts(images, cosmic_rays, satellite_fraction, seed)
    field.images[modelled] = images
    warp_paths, science_paths = _write_visits(out, field, science, wcs, seeing_fwhm_arcsec)
    write_manifest(manifest, warp_paths, field.effective_wavelength, field.bandwidth, Site(), config)
    _write_truth(out / "truth.npz", field, artifacts, pixel_scale, engine)
    return {
        "manifest": str(manifest),
        "warps": warp_paths,
        "science": science_paths,
        "num_visits": len(warp_paths),
        "num_science": len(science_paths),
        "effective_wavelength": field.effective_wavelength,
        "bandwidth": field.bandwidth,
    }
