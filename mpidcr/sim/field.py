"""Small synthetic DCR data sets with known truth, in pure numpy (no GalSim).

Stars with power-law spectra F(λ) ∝ (λ/λeff)^α are rendered as circular
Gaussians at the position their refraction moves them to, integrated over
``samples_per_subfilter`` wavelengths per sub-band, so the data carry real
DCR rather than the solver's own sub-filter shifts.  Used by the tests, the
benchmarks and ``mpidcr simulate --engine numpy``.  Axis order ``(y, x)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..dcr import Observation, differential_refraction, elevation_from_airmass, subfilter_edges, zenith_direction
from ..masks import DEFAULT_PLANES, plane_bits


@dataclass
class SyntheticField:
    """A simulated patch: warps (V, ny, nx), their visit conditions, and the truth."""

    images: NDArray[np.float32]
    variances: NDArray[np.float32]
    masks: NDArray[np.int32]
    observations: list[Observation]
    airmass: NDArray[np.float64]
    true_subfilter_images: NDArray[np.float64]  # (K, ny, nx) noiseless, unshifted
    star_y: NDArray[np.float64]
    star_x: NDArray[np.float64]
    star_flux: NDArray[np.float64]  # (N, K) flux per sub-filter
    effective_wavelength: float
    bandwidth: float
    pixel_scale: float
    psf_sigma: float
    sky_sigma: float
    mask_planes: dict[str, int]
    extra: dict[str, Any] = field(default_factory=dict)


def _render(ny: int, nx: int, ys: NDArray, xs: NDArray, fluxes: NDArray, sigma: float) -> NDArray[np.float64]:
    out = np.zeros((ny, nx))
    r = int(np.ceil(5 * sigma))
    norm = 1.0 / (2 * np.pi * sigma**2)
    for y, x, f in zip(ys, xs, fluxes, strict=True):
        iy, ix = round(y), round(x)
        y0, y1 = max(iy - r, 0), min(iy + r + 1, ny)
        x0, x1 = max(ix - r, 0), min(ix + r + 1, nx)
        if y0 >= y1 or x0 >= x1:
            continue
        gy = np.exp(-0.5 * ((np.arange(y0, y1) - y) / sigma) ** 2)
        gx = np.exp(-0.5 * ((np.arange(x0, x1) - x) / sigma) ** 2)
        out[y0:y1, x0:x1] += f * norm * gy[:, None] * gx[None, :]
    return out


def make_field(
    shape: tuple[int, int] = (96, 96),
    num_visits: int = 8,
    num_stars: int = 25,
    num_subfilters: int = 3,
    airmass_range: tuple[float, float] = (1.0, 2.0),
    effective_wavelength: float = 476.31,
    bandwidth: float = 147.0,
    pixel_scale: float = 0.2,
    psf_fwhm_pixels: float = 3.0,
    sky_sigma: float = 1.0,
    flux_range: tuple[float, float] = (300.0, 3000.0),
    samples_per_subfilter: int = 5,
    seed: int = 1,
    edge: int = 8,
    rotation_for: Callable[[float], float] | None = None,
    angle_spread: float = 180.0,
) -> SyntheticField:
    """Simulate ``num_visits`` warps of a star field with DCR, Gaussian noise and DETECTED masks.

    ``rotation_for(q)`` gives the image rotation angle for parallactic angle q
    (e.g. derived from a WCS); default a random angle in ±10°.
    """
    rng = np.random.default_rng(seed)
    ny, nx = shape
    ys = rng.uniform(edge, ny - edge, num_stars)
    xs = rng.uniform(edge, nx - edge, num_stars)
    alpha = rng.uniform(-4.0, 4.0, num_stars)
    total = np.exp(rng.uniform(np.log(flux_range[0]), np.log(flux_range[1]), num_stars))
    edges = subfilter_edges(effective_wavelength, bandwidth, num_subfilters)
    # fine wavelength samples (midpoints of equal bins) per sub-filter
    fine = np.concatenate(
        [
            edges[k] + (np.arange(samples_per_subfilter) + 0.5) * (edges[k + 1] - edges[k]) / samples_per_subfilter
            for k in range(num_subfilters)
        ]
    )
    sed = (fine[None, :] / effective_wavelength) ** alpha[:, None]
    sed = sed / sed.sum(axis=1, keepdims=True) * total[:, None]  # (N, K·S) flux per fine sample
    flux_k = sed.reshape(num_stars, num_subfilters, samples_per_subfilter).sum(axis=2)
    sigma = psf_fwhm_pixels / 2.3548
    truth = np.stack([_render(ny, nx, ys, xs, flux_k[:, k], sigma) for k in range(num_subfilters)])

    airmass = np.linspace(airmass_range[0], airmass_range[1], num_visits)
    rng.shuffle(airmass)
    planes = dict(DEFAULT_PLANES)
    det = plane_bits(planes, ["DETECTED"])
    images, variances, masks, obs_list = [], [], [], []
    for v in range(num_visits):
        q = float(rng.uniform(-angle_spread, angle_spread))
        rot = float(rng.uniform(-10, 10)) if rotation_for is None else float(rotation_for(q))
        obs = Observation(elevation=elevation_from_airmass(float(airmass[v])), parallactic_angle=q, rotation_angle=rot)
        obs_list.append(obs)
        dr = differential_refraction(fine, effective_wavelength, obs.elevation, obs.resolved_weather, obs.site)
        uy, ux = zenith_direction(obs.parallactic_angle, obs.rotation_angle)
        clean = np.zeros(shape)
        for s in range(fine.size):
            off = dr[s] / pixel_scale
            clean += _render(ny, nx, ys + off * uy, xs + off * ux, sed[:, s], sigma)
        noisy = clean + rng.normal(0.0, sky_sigma, shape)
        images.append(noisy.astype(np.float32))
        variances.append(np.full(shape, sky_sigma**2, dtype=np.float32))
        masks.append(np.where(clean > 2.0 * sky_sigma, det, 0).astype(np.int32))
    return SyntheticField(
        images=np.stack(images),
        variances=np.stack(variances),
        masks=np.stack(masks),
        observations=obs_list,
        airmass=airmass,
        true_subfilter_images=truth,
        star_y=ys,
        star_x=xs,
        star_flux=flux_k,
        effective_wavelength=effective_wavelength,
        bandwidth=bandwidth,
        pixel_scale=pixel_scale,
        psf_sigma=sigma,
        sky_sigma=sky_sigma,
        mask_planes=planes,
    )


#: the kinds of artifact in :func:`add_artifacts`'s result
COSMIC_RAY, TRAIL = 1, 2


def add_artifacts(images: NDArray, cosmic_rays: int, satellite_fraction: float, seed: int) -> NDArray[np.uint8]:
    """Add transient artifacts in place: per visit ``cosmic_rays`` short tracks (1–4 pixels,
    100–1000 counts per pixel) and, in a ``satellite_fraction`` of the visits, one straight trail
    (2 pixels wide, 30 counts per pixel) across the patch.  Returns the affected pixels
    (V, ny, nx): :data:`COSMIC_RAY`, :data:`TRAIL` (where both, the trail), 0 elsewhere; they are
    not masked — catching them is artifact rejection's job."""
    rng = np.random.default_rng(seed + 104729)
    nv, ny, nx = images.shape
    hit = np.zeros(images.shape, dtype=np.uint8)
    for v in range(nv):
        for _ in range(cosmic_rays):
            y, x = int(rng.integers(0, ny)), int(rng.integers(0, nx))
            dy, dx = (int(d) for d in rng.integers(-1, 2, 2))
            for step in range(int(rng.integers(1, 5))):
                yy, xx = y + step * dy, x + step * dx
                if 0 <= yy < ny and 0 <= xx < nx:
                    images[v, yy, xx] += rng.uniform(100.0, 1000.0)
                    hit[v, yy, xx] = COSMIC_RAY
        if rng.uniform() < satellite_fraction:
            angle = rng.uniform(0, np.pi)
            y0, x0 = rng.uniform(0, ny), rng.uniform(0, nx)
            yy, xx = np.mgrid[0:ny, 0:nx]
            distance = np.abs((yy - y0) * np.cos(angle) - (xx - x0) * np.sin(angle))
            trail = distance < 1.0
            images[v][trail] += 30.0
            hit[v][trail] = TRAIL
    return hit
