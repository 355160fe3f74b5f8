"""Chromatic simulated fields with GalSim: real bandpass, real SEDs, GalSim's own DCR.

Each star has a spectrum drawn from GalSim's shipped SEDs and blackbodies of
3000–30000 K; each visit renders every star as
``ChromaticAtmosphere(Kolmogorov PSF, zenith and parallactic angle, weather) ⊗ SED``
integrated through LSST's g bandpass (GalSim's ``LSST_g.dat``), then adds sky
noise.  The refraction is GalSim's, not mpidcr's, so the solver is tested
against an independent model of the atmosphere.

Image axes: GalSim draws with ``PixelScale`` (u = +x, v = +y); GalSim's east is
−u, so the images are north up, east left — the TAN WCS of
:func:`mpidcr.simulate.tan_wcs_header`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..dcr import Observation, Site, Weather, elevation_from_airmass, subfilter_edges, water_vapour_pressure
from ..masks import DEFAULT_PLANES, plane_bits
from .field import SyntheticField

log = logging.getLogger(__name__)

_HC_OVER_K_NM_K = 1.438777e7  # h c / k in nm·K
BLACKBODY_TEMPERATURES = (3000, 3500, 4000, 5000, 6000, 7500, 10000, 15000, 20000, 30000)
SHIPPED_SEDS = (("vega.txt", "nm"), ("CWW_E_ext.sed", "Ang"), ("CWW_Sbc_ext.sed", "Ang"), ("CWW_Im_ext.sed", "Ang"))


def lsst_g_band() -> tuple[Any, float, float]:
    """GalSim's LSST g bandpass, its effective wavelength and its half-maximum width (nm)."""
    import galsim

    bp = galsim.Bandpass("LSST_g.dat", wave_type="nm").thin(rel_err=1e-3)
    w = np.array(bp.wave_list)
    t = bp(w)
    half = w[t >= 0.5 * t.max()]
    return bp, float(bp.effective_wavelength), float(half.max() - half.min())


def sed_pool() -> list[tuple[str, Any]]:
    """(name, galsim.SED) for the blackbodies and the shipped SEDs."""
    import galsim

    pool = []
    wave = np.linspace(300.0, 1200.0, 1801)
    for temp in BLACKBODY_TEMPERATURES:
        flambda = wave**-5 / np.expm1(_HC_OVER_K_NM_K / (wave * temp))
        table = galsim.LookupTable(wave, flambda / flambda.max(), interpolant="linear")
        pool.append((f"blackbody_{temp}K", galsim.SED(table, wave_type="nm", flux_type="flambda")))
    for name, unit in SHIPPED_SEDS:
        pool.append((name, galsim.SED(name, wave_type=unit, flux_type="flambda")))
    return pool


@dataclass
class _Sources:
    """The stars (positions, total flux, SED index) and galaxies (positions, flux, SED, profile)."""

    ys: NDArray
    xs: NDArray
    total: NDArray
    which: NDArray
    gy: NDArray
    gx: NDArray
    gflux: NDArray
    gsed: NDArray
    profiles: list[Any]


def _sources(rng: np.random.Generator, seed: int, shape: tuple[int, int], num_stars: int, num_galaxies: int,
             flux_range: tuple[float, float], edge: int, pool: list[tuple[str, Any]],
             positions: list[tuple[float, float]] | None, sed_names: list[str] | None) -> _Sources:  # fmt: skip
    import galsim

    ny, nx = shape
    ys = rng.uniform(edge, ny - edge, num_stars)
    xs = rng.uniform(edge, nx - edge, num_stars)
    total = np.exp(rng.uniform(np.log(flux_range[0]), np.log(flux_range[1]), num_stars))
    which = rng.integers(0, len(pool), num_stars)
    if positions is not None:  # explicit stars (tests): positions (y, x) and, in order, SED names
        ys, xs = (np.array(c, dtype=float) for c in zip(*positions, strict=True))
        num_stars = len(positions)
        total = total[:num_stars] if total.size >= num_stars else np.full(num_stars, flux_range[1])
    names = [n for n, _ in pool]
    if sed_names is not None:
        which = np.array([names.index(n) for n in sed_names])
    # faint chromatic galaxies (their own random stream, so adding them leaves the stars unchanged)
    grng = np.random.default_rng(seed + 7919)
    galaxy_seds = [names.index(n) for n, _ in SHIPPED_SEDS if n.startswith("CWW")]
    gy = grng.uniform(edge, ny - edge, num_galaxies)
    gx = grng.uniform(edge, nx - edge, num_galaxies)
    gflux = grng.uniform(100.0, 600.0, num_galaxies)
    gsed = grng.choice(galaxy_seds, num_galaxies) if num_galaxies else np.zeros(0, dtype=int)
    profiles = [
        galsim.Exponential(half_light_radius=float(grng.uniform(0.3, 1.0))).shear(
            e1=float(grng.uniform(-0.3, 0.3)), e2=float(grng.uniform(-0.3, 0.3))
        )
        for _ in range(num_galaxies)
    ]
    return _Sources(ys, xs, total, which, gy, gx, gflux, gsed, profiles)


def _truth_by_k(seds: list[Any], bandpass: Any, lam_eff: float, bandwidth: float) -> dict[int, NDArray]:
    """Flux of each star in mpidcr's K equal sub-bands, K = 2..5."""
    truth = {}
    for K in range(2, 6):
        edges = subfilter_edges(lam_eff, bandwidth, K)
        flux = np.zeros((len(seds), K))
        for k in range(K):
            lo, hi = max(edges[k], bandpass.blue_limit), min(edges[k + 1], bandpass.red_limit)
            if hi <= lo:
                continue
            sub = bandpass.truncate(blue_limit=lo, red_limit=hi)
            flux[:, k] = [s.calculateFlux(sub) for s in seds]
        truth[K] = flux
    return truth


def _draw(clean: Any, source: Any, cx: float, cy: float, half: int) -> None:
    """Add ``source`` centred at 1-based (cx, cy) to ``clean`` within a stamp of half-width ``half``."""
    import galsim

    bounds = galsim.BoundsI(int(cx) - half, int(cx) + half, int(cy) - half, int(cy) + half) & clean.bounds
    sub = clean[bounds]
    offset = galsim.PositionD(cx - sub.true_center.x, cy - sub.true_center.y)
    source.drawImage(image=sub, offset=offset, add_to_image=True)


def _render_visit(psf: Any, src: _Sources, pool: list[tuple[str, Any]], bandpass: Any, shape: tuple[int, int],
                  pixel_scale: float, stamp: int) -> NDArray:  # fmt: skip
    """The noiseless image of every source seen through one visit's chromatic ``psf``."""
    import galsim

    ny, nx = shape
    clean = galsim.ImageD(nx, ny, scale=pixel_scale)  # GalSim pixels are 1-based
    # A point source's image is its SED's effective PSF (chromatic atmosphere integrated
    # through the bandpass), the same wherever it lies: draw it once per SED, oversampled ×2,
    # then place every star as an interpolated image.
    effective = {}
    for j in sorted(set(src.which.tolist()) | set(src.gsed.tolist())):
        chromatic = galsim.Convolve(psf, galsim.DeltaFunction() * pool[j][1].withFlux(1.0, bandpass))
        fine = chromatic.drawImage(bandpass, nx=4 * stamp, ny=4 * stamp, scale=pixel_scale / 2, method="no_pixel")
        effective[j] = galsim.InterpolatedImage(fine)
    for i in range(len(src.ys)):
        _draw(clean, effective[src.which[i]].withFlux(float(src.total[i])), src.xs[i] + 1.0, src.ys[i] + 1.0,
              stamp // 2)  # fmt: skip
    for i in range(len(src.gy)):  # galaxy ⊗ its SED's effective PSF
        galaxy = galsim.Convolve(effective[src.gsed[i]], src.profiles[i]).withFlux(float(src.gflux[i]))
        _draw(clean, galaxy, src.gx[i] + 1.0, src.gy[i] + 1.0, stamp)
    return clean.array.copy()


#: the seeing profiles a field can be simulated with (the CLI's --seeing-profile lists them too)
SEEING_PROFILES = ("kolmogorov", "gaussian")


def _seeing(profile: str, fwhm: float) -> Any:
    """GalSim's seeing profile of FWHM ``fwhm`` (arcsec): Kolmogorov (the atmosphere's), or
    Gaussian (for which the PSF-aware model's Gaussian matching kernels are exact)."""
    import galsim

    if profile not in SEEING_PROFILES:
        raise ValueError(f"seeing profile {profile!r}: one of {', '.join(SEEING_PROFILES)}")
    return galsim.Kolmogorov(fwhm=fwhm) if profile == "kolmogorov" else galsim.Gaussian(fwhm=fwhm)


def _seeing_image(seeing: float, pixel_scale: float, size: int, profile: str = "kolmogorov") -> NDArray:
    """The visit's PSF without DCR: seeing of FWHM ``seeing`` (arcsec) at the effective
    wavelength, drawn with the pixel as the field is; unit sum."""
    image = _seeing(profile, seeing).drawImage(nx=size, ny=size, scale=pixel_scale).array.astype(np.float64)
    return image / image.sum()


def _atmosphere(seeing: float, base_wavelength: float, obs: Observation, profile: str = "kolmogorov") -> Any:
    """GalSim's chromatic atmosphere of one visit: seeing (FWHM, arcsec; Kolmogorov by default) and DCR."""
    import galsim

    weather = obs.resolved_weather
    return galsim.ChromaticAtmosphere(
        _seeing(profile, seeing),
        base_wavelength=base_wavelength,
        zenith_angle=(90.0 - obs.elevation) * galsim.degrees,
        parallactic_angle=obs.parallactic_angle * galsim.degrees,
        pressure=weather.pressure / 1000.0,
        temperature=weather.temperature + 273.15,
        H2O_pressure=water_vapour_pressure(weather.humidity, weather.temperature) / 1000.0,
    )


def make_galsim_field(
    shape: tuple[int, int] = (128, 128),
    num_visits: int = 8,
    num_stars: int = 30,
    airmass_range: tuple[float, float] = (1.0, 2.0),
    pixel_scale: float = 0.2,
    seeing_range: tuple[float, float] = (0.7, 0.7),
    angle_spread: float = 180.0,
    sky_sigma: float = 1.0,
    flux_range: tuple[float, float] = (300.0, 3000.0),
    seed: int = 1,
    edge: int = 8,
    rotation_for: Callable[[float], float] | None = None,
    site: Site | None = None,
    positions: list[tuple[float, float]] | None = None,
    sed_names: list[str] | None = None,
    num_galaxies: int = 0,
    seeing_profile: str = "kolmogorov",
    keep_noiseless: Callable[[NDArray], Iterable[int]] | None = None,
) -> SyntheticField:
    """Simulate warps of a star field with GalSim's chromatic atmosphere (see module docstring).

    ``seeing_profile`` is the seeing's shape, ``kolmogorov`` or ``gaussian``.  ``keep_noiseless``
    picks, from the visits' airmasses, the visits whose images before the noise are kept
    (``extra["noiseless"]``, by visit index; e.g. the science visits).

    ``num_galaxies`` adds faint chromatic galaxies: sheared exponential profiles (half-light
    radius 0.3–1.0″, flux 100–600) with the CWW galaxy SEDs, seen through the same atmosphere.
    """
    site = site or Site()
    rng = np.random.default_rng(seed)
    bandpass, lam_eff, bandwidth = lsst_g_band()
    pool = sed_pool()
    src = _sources(rng, seed, shape, num_stars, num_galaxies, flux_range, edge, pool, positions, sed_names)
    seds = [pool[i][1].withFlux(float(f), bandpass) for i, f in zip(src.which, src.total, strict=True)]
    truth_by_k = _truth_by_k(seds, bandpass, lam_eff, bandwidth)
    airmass = np.linspace(airmass_range[0], airmass_range[1], num_visits)
    rng.shuffle(airmass)
    kept = set(keep_noiseless(airmass)) if keep_noiseless is not None else set()
    seeing = rng.uniform(seeing_range[0], seeing_range[1], num_visits)
    weather = Weather.standard(site.height)
    planes = dict(DEFAULT_PLANES)
    det = plane_bits(planes, ["DETECTED"])
    images, variances, masks, observations, psfs = [], [], [], [], []
    noiseless: dict[int, NDArray] = {}
    stamp = math.ceil(6 * max(seeing_range) / pixel_scale) | 1
    psf_stamp = math.ceil(8 * max(seeing_range) / pixel_scale) | 1
    for v in range(num_visits):
        q = float(rng.uniform(-angle_spread, angle_spread))
        rot = float(rng.uniform(-10, 10)) if rotation_for is None else float(rotation_for(q))
        elevation = elevation_from_airmass(float(airmass[v]))
        observations.append(Observation(elevation, q, rot, weather, site))
        psf = _atmosphere(float(seeing[v]), lam_eff, observations[-1], seeing_profile)
        arr = _render_visit(psf, src, pool, bandpass, shape, pixel_scale, stamp)
        psfs.append(_seeing_image(float(seeing[v]), pixel_scale, psf_stamp, seeing_profile))
        log.info("rendered visit %d/%d with GalSim (airmass %.2f, %d stars, %d galaxies)", v + 1, num_visits,
                 airmass[v], len(src.ys), num_galaxies)  # fmt: skip
        if v in kept:
            noiseless[v] = arr.astype(np.float32)
        images.append((arr + rng.normal(0.0, sky_sigma, shape)).astype(np.float32))
        variances.append(np.full(shape, sky_sigma**2, dtype=np.float32))
        masks.append(np.where(arr > 2.0 * sky_sigma, det, 0).astype(np.int32))
    K = 3
    return SyntheticField(
        images=np.stack(images),
        variances=np.stack(variances),
        masks=np.stack(masks),
        observations=observations,
        airmass=airmass,
        true_subfilter_images=np.zeros((K, *shape)),
        star_y=src.ys,
        star_x=src.xs,
        star_flux=truth_by_k[K],
        effective_wavelength=lam_eff,
        bandwidth=bandwidth,
        pixel_scale=pixel_scale,
        psf_sigma=float(np.mean(seeing)) / pixel_scale / 2.3548,
        sky_sigma=sky_sigma,
        mask_planes=planes,
        extra={
            "truth_by_k": truth_by_k,
            "sed": [pool[i][0] for i in src.which],
            "seeing": seeing,
            "psf_images": psfs,
            "star_total": src.total,  # each star's flux through the whole bandpass, as drawn
            "noiseless": noiseless,  # the kept visits' images before the noise
            "galaxy_y": src.gy,
            "galaxy_x": src.gx,
            "galaxy_flux": src.gflux,
            "galaxy_sed": [pool[i][0] for i in src.gsed],
        },
    )
