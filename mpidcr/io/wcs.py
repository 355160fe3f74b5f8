"""The patch WCS: the directions of north and east in pixels, the pixel scale, equality of grids.

Thin functions over astropy's :class:`~astropy.wcs.WCS`, taking the WCS as header text (what
:class:`~mpidcr.io.warps.WarpInfo` carries and ranks broadcast).
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any

import numpy as np
from astropy.io import fits

#: cards of an image header that are no part of its WCS's transformation and differ from visit to
#: visit (a plain-layout warp's image header is also its primary: its date, visit, exposure, ...)
_VISIT_CARDS = ("VISIT", "IDNUM", "EXPID", "EXPNUM", "EXPTIME", "AIRMASS", "PARANGLE", "ROTANGLE", "SEEING",
                "FWHM", "OBJECT", "TIME-OBS", "UTC-OBS", "UT", "LST", "HA", "ZD", "ALT", "AZ")  # fmt: skip


def _grid_cards(wcs_header: str) -> str:
    """A header's text without the cards that cannot change its WCS transformation: dates (DATE*,
    MJD*), the telescope's pointing (BORE-*), the common per-visit keywords above, HIERARCH cards (the standard's WCS keywords have at
    most 8 characters), COMMENT and HISTORY.  Any other card is kept, so the result parses to the
    same transformation; warps of one grid then share one text (and one parse)."""
    if len(wcs_header) % 80 or "\n" in wcs_header:  # (not a FITS header's 80-character cards: as it is)
        return wcs_header
    kept = []
    for i in range(0, len(wcs_header), 80):
        card = wcs_header[i : i + 80]
        key = card[:8].rstrip()
        if key.startswith(("DATE", "MJD", "BORE-", "HIERARCH")) or key in _VISIT_CARDS or key in ("COMMENT", "HISTORY"):
            continue
        kept.append(card)
    return "".join(kept)


def _parsed(wcs_header: str) -> tuple[fits.Header, Any] | None:
    """The header and its astropy WCS (two axes) of a header's text, or None if astropy cannot read
    one; a header with alternate WCSs only (afw's pixel origin, key A) has the identity WCS, no
    celestial one, as a header with none.  Parsed from its grid cards (:func:`_grid_cards`), cached:
    every warp of a patch has the same grid, and parsing took 25–30 ms, 2–8 times per warp (the
    functions below); the objects are only read, never changed."""
    return _parsed_grid(_grid_cards(wcs_header))


@functools.lru_cache(maxsize=16)
def _parsed_grid(wcs_header: str) -> tuple[fits.Header, Any] | None:
    from astropy.wcs import WCS

    try:
        with warnings.catch_warnings():  # (astropy's notes on cards it fixes; failures are what count)
            warnings.simplefilter("ignore")
            header = fits.Header.fromstring(wcs_header)
            try:
                return header, WCS(header, naxis=2)
            except KeyError as exc:  # only alternate WCSs (afw's pixel-origin 'A'): no sky WCS at all
                if "No WCS with key ' '" not in str(exc):
                    raise
                return header, WCS(naxis=2)
    except Exception:
        return None


def image_rotation_angle(wcs_header: str, parallactic_angle: float) -> float | None:
    """Rotation angle (deg) that makes θ = q − rot point to the zenith in pixel coordinates.

    Derived from the celestial WCS at the image centre (north and east unit
    vectors in pixels), so it accounts for the WCS's parity; None without a
    celestial WCS.
    """
    parsed = _parsed(wcs_header)
    if parsed is None:
        return None
    header, wcs = parsed
    if not wcs.has_celestial:
        return None
    ny, nx = header.get("NAXIS2", 1), header.get("NAXIS1", 1)
    cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
    ra, dec = wcs.wcs_pix2world([[cx, cy]], 0)[0]
    eps = 1.0 / 3600.0
    north = wcs.wcs_world2pix([[ra, dec + eps]], 0)[0] - [cx, cy]
    east = wcs.wcs_world2pix([[ra + eps / max(math.cos(math.radians(dec)), 1e-6), dec]], 0)[0] - [cx, cy]
    north /= np.hypot(*north)
    east /= np.hypot(*east)
    q = math.radians(parallactic_angle)
    vx, vy = math.cos(q) * north + math.sin(q) * east
    theta = math.degrees(math.atan2(vx, vy))
    return (parallactic_angle - theta + 180.0) % 360.0 - 180.0


def celestial_wcs(wcs_header: str) -> Any:
    """The astropy celestial WCS of a header's text, or None."""
    parsed = _parsed(wcs_header)
    if parsed is None:
        return None
    wcs = parsed[1]
    return wcs.celestial if wcs.has_celestial else None


def pixel_scale_arcsec(wcs_header: str) -> float | None:
    """Mean pixel scale of a celestial WCS in arcsec/pixel, or None."""
    from astropy.wcs.utils import proj_plane_pixel_scales

    parsed = _parsed(wcs_header)
    if parsed is None or not parsed[1].has_celestial:
        return None
    return float(np.mean(proj_plane_pixel_scales(parsed[1].celestial)) * 3600.0)


def wcs_problem(wcs_header: str) -> str | None:
    """Why astropy cannot read a header's WCS (the last line of its message), or None if it can."""
    if _parsed(wcs_header) is not None:
        return None
    from astropy.wcs import WCS

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            WCS(fits.Header.fromstring(wcs_header), naxis=2)
    except Exception as exc:  # (astropy and wcslib raise many kinds)
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        return lines[-1].rstrip(".") if lines else type(exc).__name__
    return "astropy cannot read it"


def same_wcs(header_a: str, header_b: str) -> bool:
    """Whether two headers describe the same WCS (to 1e-9 in every parameter of the transformation;
    dates and other ancillary cards aside).  ValueError (one
    line, astropy's reason) if either cannot be read: the callers name the file."""
    if header_a == header_b:
        return True
    a, b = _parsed(header_a), _parsed(header_b)
    if a is None or b is None:
        raise ValueError(f"WCS cannot be read ({wcs_problem(header_a if a is None else header_b)})")
    from astropy.wcs import WCSCOMPARE_ANCILLARY

    # ancillary cards (DATE-OBS, MJD-OBS, ...) differ between visits on one grid: a plain-layout
    # warp's image header, which holds its WCS, also holds its date
    return bool(a[1].wcs.compare(b[1].wcs, cmp=WCSCOMPARE_ANCILLARY, tolerance=1e-9))
