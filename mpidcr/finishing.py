"""Finishing steps of the LSST coadd on the model's arrays (no MPI, no files).

* ``doInterp``: each sub-filter plane interpolated over its NO_DATA pixels, row by row, from the
  good pixels on each side (:func:`interpolate_rows`; LSST's defect interpolation works along rows
  too), INTRP set there and the variance made infinite (a value, not a measurement).
* ``doMaskBrightObjects``: circles and boxes on the sky (:mod:`mpidcr.io.regions`) rasterised onto
  the patch (:func:`region_mask`).

Arrays are (y, x).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray


def fallback_value(plane: NDArray, missing: NDArray[np.bool_]) -> float:
    """The value of rows with no good pixel at all: the plane's median over good pixels, at least 0
    (LSST's interpolation fallback)."""
    good = plane[~missing & np.isfinite(plane)]
    return max(float(np.median(good)), 0.0) if good.size else 0.0


def interpolate_rows(plane: NDArray, missing: NDArray[np.bool_], fallback: float) -> NDArray:
    """``plane`` with its ``missing`` pixels replaced, row by row: linear between the nearest good
    pixels on either side, the nearest good pixel's value where there is one on one side only,
    ``fallback`` in rows without any good pixel."""
    out = np.array(plane, copy=True)
    x = np.arange(plane.shape[1])
    for y in np.flatnonzero(missing.any(axis=1)):
        bad = missing[y] | ~np.isfinite(plane[y])
        if bad.all():
            out[y] = fallback
            continue
        out[y, bad] = np.interp(x[bad], x[~bad], plane[y, ~bad])
    return out


# ----------------------------------------------------------------------------- bright objects
@dataclass(frozen=True)
class Circle:
    """A circle on the sky: centre (degrees) and radius (degrees)."""

    ra: float
    dec: float
    radius: float


@dataclass(frozen=True)
class SkyBox:
    """A box on the sky: centre (degrees), width and height (degrees; width along RA), position
    angle of the width from the RA axis, degrees counter-clockwise (ds9's box angle)."""

    ra: float
    dec: float
    width: float
    height: float
    angle: float = 0.0


Region = Circle | SkyBox


def region_mask(regions: list[Region], world_to_pixel, shape: tuple[int, int], pixel_scale: float,
                origin: tuple[int, int] = (0, 0)) -> NDArray[np.bool_]:  # fmt: skip
    """Pixels of a ``shape`` window (its [0, 0] at patch pixel ``origin`` (y, x)) inside any of
    ``regions``.  ``world_to_pixel(ra, dec) -> (x, y)`` maps degrees to patch pixels (0-based);
    sizes become pixels with ``pixel_scale`` (arcsec per pixel); box angles are measured from the
    patch's +x axis (a North-up patch: RA runs along −x, so a box of angle 0 lies along x)."""
    out = np.zeros(shape, dtype=bool)
    yy, xx = np.mgrid[origin[0] : origin[0] + shape[0], origin[1] : origin[1] + shape[1]]
    for region in regions:
        cx, cy = world_to_pixel(region.ra, region.dec)
        if isinstance(region, Circle):
            r = region.radius * 3600.0 / pixel_scale
            out |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
        else:
            half_w = 0.5 * region.width * 3600.0 / pixel_scale
            half_h = 0.5 * region.height * 3600.0 / pixel_scale
            a = math.radians(region.angle)
            u = (xx - cx) * math.cos(a) + (yy - cy) * math.sin(a)
            v = -(xx - cx) * math.sin(a) + (yy - cy) * math.cos(a)
            out |= (np.abs(u) <= half_w + 1e-9) & (np.abs(v) <= half_h + 1e-9)  # (rounding of cos 90°)
    return out
