"""FITS warps: headers and visit metadata, validation, and windowed pixel reads.

Two layouts are understood:

- **lsst**: one file per warp; primary HDU with the visit metadata, then
  ``IMAGE`` (float, with the WCS), ``MASK`` (integer bit mask, plane names from
  ``MP_<NAME> = bit`` keywords) and ``VARIANCE`` extensions;
- **plain**: an image file plus a variance *or* inverse-variance (weight) file
  and an optional mask file, named in the manifest.

Pixels are only ever read as windows (``HDU.section``), so a rank reads its
tile plus halo of every warp and never a whole image.  Axis order ``(y, x)``.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from numpy.typing import NDArray

from ..dcr import (
    MIN_ELEVATION_DEG,
    PHYSICAL_RANGES,
    Observation,
    Site,
    Weather,
    elevation_from_airmass,
    parallactic_angle_from_altaz,
    physical_problem,
)
from ..errors import InputError, PhysicsError
from ..masks import add_plane
from ..tiling import Box
from .paths import regular_file_problem

log = logging.getLogger(__name__)

#: Metadata fields: our name → (FITS keyword, unit) of the primary header.
KEYWORDS: dict[str, tuple[str, str]] = {
    "airmass": ("BORE-AIRMASS", ""),
    "elevation": ("BORE-ALT", "deg"),
    "azimuth": ("BORE-AZ", "deg"),
    "rotationAngle": ("BORE-ROTANG", "deg"),
    "latitude": ("OBS-LAT", "deg"),
    "longitude": ("OBS-LONG", "deg"),
    "height": ("OBS-ELEV", "m"),
    "temperature": ("AIRTEMP", "degC"),
    "pressure": ("AIRPRESS", "Pa"),
    "humidity": ("HUMIDITY", "%"),
    "parallacticAngle": ("PARANGLE", "deg"),
    "psfFwhm": ("PSF-FWHM", "arcsec"),
    "visit": ("VISIT", ""),
    "mjd": ("MJD-OBS", "d"),
}


@dataclass
class ReadStats:
    """Windows and bytes read from warp files by this process (for tests and logs)."""

    windows: list[tuple[str, Box]] = field(default_factory=list)
    bytes: int = 0

    def reset(self) -> None:
        self.windows.clear()
        self.bytes = 0


READ_STATS = ReadStats()


@dataclass
class WarpInfo:
    """Everything known about one warp before its pixels are read (picklable, broadcast to ranks)."""

    path: str
    layout: str
    shape: tuple[int, int]
    mask_planes: dict[str, int]
    wcs_header: str
    meta: dict[str, Any]
    image_path: str = ""
    variance_path: str = ""
    variance_is_weight: bool = False
    mask_path: str = ""

    @property
    def visit(self) -> str:
        return str(self.meta.get("visit", Path(self.path).stem))

    def observation(self, site_defaults: Site, notices: set[str] | None = None) -> Observation:
        """Observation of this visit; missing weather → standard atmosphere (logged once per visit)."""
        m = self.meta
        site = Site(
            latitude=site_defaults.latitude if m.get("latitude") is None else m["latitude"],
            longitude=site_defaults.longitude if m.get("longitude") is None else m["longitude"],
            height=site_defaults.height if m.get("height") is None else m["height"],
        )
        std = Weather.standard(site.height)
        missing = [k for k in ("temperature", "pressure", "humidity") if m.get(k) is None]
        if missing and notices is not None and self.path not in notices:
            notices.add(self.path)
            log.info("%s: no %s; using the standard atmosphere at %.0f m", self.path, "/".join(missing), site.height)
        weather = Weather(
            temperature=std.temperature if m.get("temperature") is None else m["temperature"],
            pressure=std.pressure if m.get("pressure") is None else m["pressure"],
            humidity=std.humidity if m.get("humidity") is None else m["humidity"],
        )
        return Observation(
            elevation=m["elevation"],
            parallactic_angle=m["parallacticAngle"],
            rotation_angle=m["rotationAngle"],
            weather=weather,
            site=site,
        )


def _file_problem(path: str) -> str | None:
    """A one-line description of why ``path`` cannot be read as FITS, or None."""
    problem = regular_file_problem(path)
    if problem:
        return problem
    try:
        size = os.path.getsize(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # we report the problem ourselves, in one line
            hdul = fits.open(path, memmap=False, lazy_load_hdus=False)
        with hdul:
            for i, hdu in enumerate(hdul):
                info = hdu.fileinfo()
                if info is not None and info["datLoc"] + info["datSpan"] > size:
                    return f"truncated (HDU {i} needs {info['datLoc'] + info['datSpan']} bytes, file has {size})"
    except Exception as exc:  # astropy raises many types for broken files
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return f"unreadable FITS ({text})"
    return None


def _finite_number(value: Any, what: str) -> float:
    """``value`` as a finite float, else InputError ``"<what> = value is not a number"`` / ``"<what> is nan"``."""
    if isinstance(value, bool):
        raise InputError(f"{what} = {value!r} is not a number")
    try:
        out = float(value)
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"{what} = {str(value)[:40]!r} is not a number") from None
    if not math.isfinite(out):
        raise InputError(f"{what} is {value}")
    return out


def header_value(header: fits.Header, key: str, path: str) -> Any:
    """``header[key]`` (None when absent); InputError naming the card when it cannot be parsed."""
    if key not in header:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # astropy warns about the card before failing on it
            return header[key]
    except Exception:  # astropy's VerifyError and ValueError for unparsable cards
        try:
            image = header.cards[key].image.strip()
        except Exception:
            image = key
        raise InputError(f"{path}: header card {image[:60]!r} cannot be parsed") from None


def _header_number(header: fits.Header, key: str, path: str, name: str) -> float | None:
    value = header_value(header, key, path)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return _finite_number(value, f"{path}: header keyword {key} ({name})")


def mask_planes_from_header(header: fits.Header) -> dict[str, int]:
    """``MP_<NAME> = bit`` keywords → {NAME: bit}."""
    return {k[3:]: int(header[k]) for k in header if k.startswith("MP_")}


def _find_hdu(hdul: fits.HDUList, name: str) -> fits.ImageHDU | None:
    try:
        return hdul[name]
    except KeyError:
        return None


def scan_warp(
    path: str | os.PathLike, overrides: dict[str, Any] | None = None, plain: dict[str, str] | None = None
) -> WarpInfo:
    """Read the headers of one warp and resolve its visit metadata; InputError naming file and field."""
    path = str(path)
    overrides = dict(overrides or {})
    files = [path] if plain is None else [v for v in plain.values() if v]
    for f in files:
        problem = _file_problem(f)
        if problem:
            raise InputError(f"{f}: {problem}")
    if plain is None:
        with fits.open(path, memmap=False) as hdul:
            primary = hdul[0].header
            img = _find_hdu(hdul, "IMAGE")
            if img is None:
                raise InputError(
                    f"{path}: no IMAGE extension (expected IMAGE, MASK, VARIANCE, or name the files in a manifest)"
                )
            for ext in ("MASK", "VARIANCE"):
                if _find_hdu(hdul, ext) is None:
                    raise InputError(f"{path}: no {ext} extension")
                if hdul[ext].header.get("NAXIS1") != img.header.get("NAXIS1") or hdul[ext].header.get(
                    "NAXIS2"
                ) != img.header.get("NAXIS2"):
                    raise InputError(f"{path}: {ext} extension has a different shape from IMAGE")
            shape = (int(img.header["NAXIS2"]), int(img.header["NAXIS1"]))
            planes = mask_planes_from_header(hdul["MASK"].header)
            wcs_header = img.header.tostring()
        info = WarpInfo(path=path, layout="lsst", shape=shape, mask_planes=planes, wcs_header=wcs_header, meta={})
    else:
        image_path = plain["image"]
        with fits.open(image_path, memmap=False) as hdul:
            hdu = next((h for h in hdul if h.header.get("NAXIS", 0) == 2), None)
            if hdu is None:
                raise InputError(f"{image_path}: no 2-D image HDU")
            primary = hdul[0].header if hdul[0].header.get("NAXIS", 0) == 0 else hdu.header
            shape = (int(hdu.header["NAXIS2"]), int(hdu.header["NAXIS1"]))
            wcs_header = hdu.header.tostring()
        planes = {}
        if plain.get("mask"):
            with fits.open(plain["mask"], memmap=False) as hdul:
                planes = mask_planes_from_header(next(h for h in hdul if h.header.get("NAXIS", 0) == 2).header)
        info = WarpInfo(
            path=image_path,
            layout="plain",
            shape=shape,
            mask_planes=planes,
            wcs_header=wcs_header,
            meta={},
            image_path=image_path,
            variance_path=plain.get("variance") or plain.get("weight") or "",
            variance_is_weight=bool(plain.get("weight")),
            mask_path=plain.get("mask") or "",
        )
        if not info.variance_path:
            raise InputError(f"{image_path}: the manifest names no variance or weight file for this image")
    info.meta = visit_metadata(primary, path, overrides)
    return info


def _checked(name: str, value: float, what: str) -> float:
    if name in PHYSICAL_RANGES:
        problem = physical_problem(name, value)
        if problem:
            raise InputError(f"{what} = {value:g}{problem}")
    return value


def visit_metadata(header: fits.Header, path: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The visit metadata of a primary ``header`` (:data:`KEYWORDS`), with manifest ``overrides``.

    Numbers are checked: finite, and site and weather values within their physical ranges
    (with a unit hint, e.g. ``AIRPRESS = 743: Pa expected, this looks like hPa``).  InputError
    naming ``path``, the keyword and the value otherwise.  ``"_overrides"`` lists the fields the
    manifest set.
    """
    overrides = dict(overrides or {})
    meta: dict[str, Any] = {}
    for name, (key, _unit) in KEYWORDS.items():
        if name == "visit":
            visit = header_value(header, key, path)
            if visit is not None and str(visit).strip():
                meta["visit"] = str(visit).strip()
            continue
        value = _header_number(header, key, path, name)
        meta[name] = None if value is None else _checked(name, value, f"{path}: header keyword {key} ({name})")
    for name, value in overrides.items():
        if name not in KEYWORDS:
            raise InputError(f"{path}: unknown per-visit override '{name}' (known: {', '.join(KEYWORDS)})")
        if name == "visit":
            meta[name] = str(value)
            continue
        number = _finite_number(value, f"{path}: override {name}")
        meta[name] = _checked(name, number, f"{path}: override {name}")
    meta["_overrides"] = sorted(overrides)
    return meta


def resolve_geometry(info: WarpInfo, site: Site) -> WarpInfo:
    """Fill elevation, parallactic angle and the image rotation angle; InputError if impossible."""
    m = dict(info.meta)
    path = info.path
    if m.get("elevation") is None:
        if m.get("airmass") is None:
            raise InputError(f"{path}: no elevation (BORE-ALT) and no airmass (BORE-AIRMASS)")
        if m["airmass"] < 1.0:
            raise InputError(f"{path}: airmass (BORE-AIRMASS) = {m['airmass']} is below 1")
        m["elevation"] = elevation_from_airmass(m["airmass"])
    if not 0.0 < m["elevation"] <= 90.0:
        raise InputError(f"{path}: elevation (BORE-ALT) = {m['elevation']} deg is not in (0, 90]")
    if m["elevation"] < MIN_ELEVATION_DEG:
        raise InputError(
            f"{path}: elevation (BORE-ALT/BORE-AIRMASS) = {m['elevation']:.3g} deg is below {MIN_ELEVATION_DEG:g} deg, "
            "where the refraction formula (Stone 1996) is no longer valid"
        )
    if m.get("airmass") is not None and m["airmass"] < 1.0:
        raise InputError(f"{path}: airmass (BORE-AIRMASS) = {m['airmass']} is below 1")
    m["airmass"] = 1.0 / math.sin(math.radians(m["elevation"])) if m.get("airmass") is None else m["airmass"]
    if m.get("parallacticAngle") is None:
        lat = site.latitude if m.get("latitude") is None else m["latitude"]
        if m.get("azimuth") is None:
            raise InputError(f"{path}: no parallactic angle (PARANGLE) and no azimuth (BORE-AZ) to compute it")
        m["parallacticAngle"] = float(parallactic_angle_from_altaz(m["azimuth"], m["elevation"], lat))
    # precedence: manifest override > the WCS of the warp > BORE-ROTANG > 0
    if "rotationAngle" not in m.get("_overrides", ()):
        rot = image_rotation_angle(info.wcs_header, m["parallacticAngle"])
        m["rotationAngle"] = rot if rot is not None else (m.get("rotationAngle") or 0.0)
    return replace(info, meta=m)


def image_rotation_angle(wcs_header: str, parallactic_angle: float) -> float | None:
    """Rotation angle (deg) that makes θ = q − rot point to the zenith in pixel coordinates.

    Derived from the celestial WCS at the image centre (north and east unit
    vectors in pixels), so it accounts for the WCS's parity; None without a
    celestial WCS.
    """
    from astropy.wcs import WCS

    try:
        header = fits.Header.fromstring(wcs_header)
        wcs = WCS(header, naxis=2)
    except Exception:
        return None
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


def pixel_scale_arcsec(wcs_header: str) -> float | None:
    """Mean pixel scale of a celestial WCS in arcsec/pixel, or None."""
    from astropy.wcs import WCS
    from astropy.wcs.utils import proj_plane_pixel_scales

    try:
        wcs = WCS(fits.Header.fromstring(wcs_header), naxis=2)
    except Exception:
        return None
    if not wcs.has_celestial:
        return None
    return float(np.mean(proj_plane_pixel_scales(wcs.celestial)) * 3600.0)


def same_wcs(header_a: str, header_b: str) -> bool:
    """Whether two headers describe the same WCS (to 1e-9 in every parameter)."""
    from astropy.wcs import WCS

    a = WCS(fits.Header.fromstring(header_a), naxis=2)
    b = WCS(fits.Header.fromstring(header_b), naxis=2)
    return bool(a.wcs.compare(b.wcs, tolerance=1e-9))


def check_consistent(infos: list[WarpInfo]) -> None:
    """All warps on one grid: same shape and the same WCS; InputError naming the first odd one."""
    ref = infos[0]
    for info in infos[1:]:
        if info.shape != ref.shape:
            raise InputError(
                f"{info.path}: shape {info.shape[0]}x{info.shape[1]} differs from {ref.path} "
                f"({ref.shape[0]}x{ref.shape[1]}); warps must share the patch grid"
            )
        if not same_wcs(info.wcs_header, ref.wcs_header):
            raise InputError(f"{info.path}: WCS differs from {ref.path}; warps must share the patch grid")


def union_mask_planes(infos: list[WarpInfo]) -> dict[str, int]:
    """One name → bit mapping covering every warp's planes (first warp's bits win), with NO_DATA
    always present (missing pixels are marked with it)."""
    planes: dict[str, int] = {}
    for info in infos:
        for name, bit in sorted(info.mask_planes.items(), key=lambda kv: kv[1]):
            add_plane(planes, name, bit)
    add_plane(planes, "NO_DATA")
    return planes


def _section(path: str, hdu: str | int, box: Box, out: NDArray) -> NDArray:
    """Read ``box`` of an image HDU into ``out`` (converting from FITS big-endian in the copy)."""
    with fits.open(path, memmap=True, lazy_load_hdus=True) as hdul:
        data = hdul[hdu].section[box.y0 : box.y1, box.x0 : box.x1]
        np.copyto(out, data, casting="unsafe")
    READ_STATS.windows.append((path, box))
    READ_STATS.bytes += data.nbytes
    return out


def _first_image_hdu(path: str) -> int:
    with fits.open(path, memmap=True, lazy_load_hdus=True) as hdul:
        for i, h in enumerate(hdul):
            if h.header.get("NAXIS", 0) == 2:
                return i
    raise InputError(f"{path}: no 2-D image HDU")


def read_window(info: WarpInfo, box: Box, planes: dict[str, int],
                out: tuple[NDArray, NDArray, NDArray] | None = None) -> tuple[NDArray, NDArray, NDArray]:  # fmt: skip
    """(image, variance, mask) of ``box`` from one warp: float32, float32, int32 with ``planes`` bits.

    ``out``: three (ny, nx) arrays of those dtypes to read into (e.g. slices of the tile's warp
    stacks, so no copy is made afterwards); returned.
    """
    if out is None:
        out = (np.empty(box.shape, np.float32), np.empty(box.shape, np.float32), np.empty(box.shape, np.int32))
    image, variance, mask = out
    try:
        if info.layout == "lsst":
            _section(info.path, "IMAGE", box, image)
            _section(info.path, "MASK", box, mask)
            _section(info.path, "VARIANCE", box, variance)
        else:
            _section(info.image_path, _first_image_hdu(info.image_path), box, image)
            _section(info.variance_path, _first_image_hdu(info.variance_path), box, variance)
            if info.variance_is_weight:
                with np.errstate(divide="ignore"):
                    variance[...] = np.where(variance > 0, 1.0 / variance, np.inf)
            if info.mask_path:
                _section(info.mask_path, _first_image_hdu(info.mask_path), box, mask)
            else:
                mask[...] = 0
    except InputError:
        raise
    except Exception as exc:
        raise InputError(
            f"{info.path}: cannot read pixels ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
        ) from None
    own = info.mask_planes
    if own and any(planes.get(n) != b for n, b in own.items()):
        raw = mask.copy()
        mask[...] = 0
        for name, bit in own.items():
            mask |= np.where((raw >> bit) & 1, np.int32(1 << planes[name]), np.int32(0))
    return image, variance, mask


def observation_or_error(info: WarpInfo, site: Site, notices: set[str]) -> Observation:
    try:
        return info.observation(site, notices)
    except PhysicsError as exc:
        raise InputError(f"{info.path}: {exc}") from None


# --------------------------------------------------------------------------- writing
def _set_long(header: fits.Header, key: str, value: Any) -> None:
    """Set a keyword, as a HIERARCH card when it is longer than 8 characters or has '-' (LSST style)."""
    if len(key) > 8 or "-" in key:
        header.append(fits.Card(f"HIERARCH {key}", value), end=True)
    else:
        header[key] = value


def write_lsst_warp(
    path: str | os.PathLike,
    image: NDArray,
    variance: NDArray,
    mask: NDArray,
    mask_planes: dict[str, int],
    meta: dict[str, Any],
    wcs_header: fits.Header | None = None,
    overwrite: bool = True,
) -> None:
    """Write a warp in the LSST layout (primary metadata + IMAGE, MASK, VARIANCE)."""
    primary = fits.PrimaryHDU()
    for name, value in meta.items():
        if name in KEYWORDS and value is not None:
            _set_long(primary.header, KEYWORDS[name][0], value)
    header = fits.Header()
    if wcs_header is not None:
        for card in wcs_header.cards:
            if card.keyword not in ("NAXIS", "NAXIS1", "NAXIS2", "SIMPLE", "BITPIX", "EXTEND", "PCOUNT", "GCOUNT"):
                header.append(card)
    img = fits.ImageHDU(np.asarray(image, dtype=np.float32), header=header, name="IMAGE")
    msk = fits.ImageHDU(np.asarray(mask, dtype=np.int32), name="MASK")
    for name, bit in mask_planes.items():
        _set_long(msk.header, f"MP_{name}", bit)
    var = fits.ImageHDU(np.asarray(variance, dtype=np.float32), name="VARIANCE")
    tmp = f"{path}.tmp"
    fits.HDUList([primary, img, msk, var]).writeto(tmp, overwrite=True)
    if os.path.exists(path) and not overwrite:
        os.remove(tmp)
        raise InputError(f"{path}: exists (use --overwrite)")
    os.replace(tmp, path)
