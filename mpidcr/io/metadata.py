"""Visit metadata: the header keywords of a warp, checked, and the pointing and weather they give.

Plain functions on FITS headers and dictionaries (``meta``: our field names, see
:data:`KEYWORDS`); every problem is an InputError naming the file, the keyword and the value.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any

from astropy.io import fits

from ..dcr import (
    MIN_ELEVATION_DEG,
    PHYSICAL_RANGES,
    Observation,
    Site,
    Weather,
    elevation_from_airmass,
    parallactic_angle_afw,
    parallactic_angle_from_altaz,
    parallactic_angle_from_hour_angle,
    parallactic_angle_lsst,
    physical_problem,
)
from ..errors import InputError
from .wcs import image_rotation_angle

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
    "zeroPoint": ("MAGZERO", "mag"),
    "visit": ("VISIT", ""),
    "mjd": ("MJD-OBS", "d"),
    "era": ("AVG-ERA", "deg"),
    "ra": ("BORE-RA", "deg"),
    "dec": ("BORE-DEC", "deg"),
}


#: header keywords read for the PSF FWHM (arcsec) when PSF-FWHM is absent
PSF_FWHM_ALTERNATIVES = ("SEEING", "FWHM")
#: header keywords read for the photometric zero point (AB mag of 1 count) when MAGZERO is absent;
#: FLUXMAG0 (counts of a magnitude-0 source) gives 2.5 log10(FLUXMAG0)
ZERO_POINT_ALTERNATIVES = ("ZEROPT", "MAGZPT", "PHOTZP")
#: header keywords of the visit id, in order: VISIT, afw's IDNUM (its visit id), afw's EXPID
VISIT_KEYS = ("VISIT", "IDNUM", "EXPID")


def _afw_mjd(header: fits.Header, path: str) -> float | None:
    """The visit's MJD (UTC) when MJD-OBS is absent: afw's MJD-AVG-UT1, else DATE-AVG in TIMESYS
    (TAI by default, as afw writes it)."""
    value = _header_number(header, "MJD-AVG-UT1", path, "mjd")
    if value is not None:
        return value
    date = header_value(header, "DATE-AVG", path)
    if not date or not str(date).strip():
        return None
    from astropy.time import Time

    scale = str(header.get("TIMESYS", "TAI")).strip().lower() or "tai"
    try:
        return float(Time(str(date).strip().rstrip("Z"), format="isot", scale=scale).utc.mjd)
    except Exception:
        raise InputError(f"{path}: header keyword DATE-AVG = {date!r} (TIMESYS {scale.upper()}) is not a date") from None


_TRANSLATED: set[str] = set()  # visits whose translation was logged


def translated_metadata(header: fits.Header, path: str) -> dict[str, Any]:
    """The visit metadata of a raw instrument header (DECam, HSC, MegaPrime, SuprimeCam, and
    whatever astro-metadata-translator knows) through that package, if it is installed and
    recognises the header; {} otherwise.  What was translated is logged once per visit."""
    try:
        from astro_metadata_translator import ObservationInfo
    except ImportError:
        return {}
    _sites_offline()
    quiet = logging.getLogger("astro_metadata_translator")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        info = ObservationInfo(dict(header), filename=path, pedantic=False)
    except Exception:
        return {}
    finally:
        quiet.setLevel(level)
    out: dict[str, Any] = {}
    if info.altaz_begin is not None:
        out["elevation"], out["azimuth"] = float(info.altaz_begin.alt.deg), float(info.altaz_begin.az.deg)
    if info.boresight_airmass is not None and info.boresight_airmass >= 1.0:
        out["airmass"] = float(info.boresight_airmass)
    if info.location is not None:
        geodetic = info.location.to_geodetic()
        out.update(latitude=float(geodetic.lat.deg), longitude=float(geodetic.lon.deg),
                   height=float(geodetic.height.to_value("m")))  # fmt: skip
    if info.temperature is not None:
        out["temperature"] = float(info.temperature.to_value("deg_C", equivalencies=_temperature()))
    if info.pressure is not None:
        out["pressure"] = float(info.pressure.to_value("Pa"))
    if info.relative_humidity is not None:
        out["humidity"] = float(info.relative_humidity)
    if info.boresight_rotation_angle is not None:
        out["rotationAngle"] = float(info.boresight_rotation_angle.deg)
    if info.tracking_radec is not None:
        out["ra"], out["dec"] = float(info.tracking_radec.ra.deg), float(info.tracking_radec.dec.deg)
    if info.datetime_begin is not None:
        end = info.datetime_end or info.datetime_begin
        out["mjd"] = float((info.datetime_begin.utc.mjd + end.utc.mjd) / 2)
    visit = info.visit_id if info.visit_id is not None else info.exposure_id
    if visit is not None:
        out["visit"] = str(visit)
    for name in ("latitude", "height", "temperature", "pressure", "humidity"):
        if name in out and physical_problem(name, out[name]):
            del out[name]  # (a translator's placeholder: the site's defaults then apply)
    if out and path not in _TRANSLATED:
        _TRANSLATED.add(path)
        log.info("%s: %s header translated (astro-metadata-translator): %s", path, info.instrument,
                 ", ".join(f"{k} {v:.6g}" if isinstance(v, float) else f"{k} {v}" for k, v in out.items()))  # fmt: skip
    return out


def _sites_offline() -> None:
    """Some translators (SDSS) look their observatory up in astropy's site list, which astropy
    downloads; without a network that is an error, not the unknown site on which they fall back
    to the location they know.  So, once, an unreachable list is replaced by an empty one."""
    try:
        from astropy.coordinates import EarthLocation
        from astropy.coordinates.sites import SiteRegistry

        if EarthLocation._site_registry is None:
            try:
                EarthLocation._get_site_registry()
            except Exception:
                registry = SiteRegistry()  # (an empty registry counts as "not loaded yet")
                registry.add_site(["mpidcr-offline-placeholder"], EarthLocation.from_geocentric(0, 0, 0, unit="m"))
                EarthLocation._site_registry = registry
                log.info("astropy's list of observatories cannot be downloaded: translators use the sites they know")
    except (ImportError, AttributeError):  # (astropy's private registry changed: nothing to do)
        return


def _temperature() -> Any:
    from astropy import units as u

    return u.temperature()


#: manifest-only fields describing a visit's PSF beyond its FWHM
PSF_SHAPE_OVERRIDES = ("psfProfile", "psfBeta")


def _psf_shape(name: str, value: Any, path: str) -> Any:
    """psfProfile (gaussian, moffat, kolmogorov) or psfBeta (Moffat β > 1), checked."""
    from ..psf import PROFILES

    if name == "psfProfile":
        if not isinstance(value, str) or value.lower() not in PROFILES:
            raise InputError(f"{path}: override psfProfile = {value!r}; expected one of {', '.join(PROFILES)}")
        return value.lower()
    beta = _finite_number(value, f"{path}: override psfBeta")
    if not beta > 1.0:
        raise InputError(f"{path}: override psfBeta = {beta} must be above 1 (a Moffat profile's β)")
    return beta


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
            for visit_key in VISIT_KEYS:  # VISIT; afw's IDNUM (the visit), else its EXPID (the exposure)
                visit = header_value(header, visit_key, path)
                if visit is not None and str(visit).strip():
                    meta["visit"] = str(visit).strip()
                    break
            continue
        if name in overrides:  # the manifest's value replaces the header's, which is not judged
            meta[name] = None
            continue
        value = _header_number(header, key, path, name)
        meta[name] = None if value is None else _checked(name, value, f"{path}: header keyword {key} ({name})")
    if meta.get("mjd") is None and "mjd" not in overrides:
        meta["mjd"] = _afw_mjd(header, path)
    if all(meta.get(k) is None for k in ("elevation", "airmass", "parallacticAngle", "azimuth")):
        # no LSST pointing keys: a raw instrument header?  (astro-metadata-translator, optional)
        for name, value in translated_metadata(header, path).items():
            if name not in overrides:
                meta[name] = value
    # other names of the seeing (arcsec) and of the zero point
    for name, alternatives in (("psfFwhm", PSF_FWHM_ALTERNATIVES), ("zeroPoint", ZERO_POINT_ALTERNATIVES)):
        for key in alternatives if meta.get(name) is None else ():
            value = _header_number(header, key, path, name)
            # (instrument headers write 0 for "not measured": such a value is no value)
            if value is not None and not physical_problem(name, value):
                meta[name] = value
                break
    if meta.get("zeroPoint") is None:
        flux0 = _header_number(header, "FLUXMAG0", path, "zeroPoint")
        if flux0 is not None and flux0 > 0:  # (afw writes 0 for "no calibration")
            meta["zeroPoint"] = 2.5 * math.log10(flux0)
    for name, value in overrides.items():
        if name in PSF_SHAPE_OVERRIDES:
            meta[name] = _psf_shape(name, value, path)
            continue
        if name not in KEYWORDS:
            known = ", ".join([*KEYWORDS, *PSF_SHAPE_OVERRIDES])
            raise InputError(f"{path}: unknown per-visit override '{name}' (known: {known})")
        if name == "visit":
            meta[name] = str(value)
            continue
        number = _finite_number(value, f"{path}: override {name}")
        meta[name] = _checked(name, number, f"{path}: override {name}")
    meta["_overrides"] = sorted(overrides)
    return meta


def _elevation_and_airmass(m: dict[str, Any], path: str, site: Site | None = None) -> tuple[float, float]:
    """Elevation (deg) from BORE-ALT, else from BORE-AIRMASS, else from the hour angle (AVG-ERA +
    OBS-LONG − BORE-RA), BORE-DEC and the latitude; and the airmass (given, or sec z)."""
    airmass = m.get("airmass")
    if airmass is not None and airmass < 1.0:
        raise InputError(f"{path}: airmass (BORE-AIRMASS) = {airmass} is below 1")
    elevation = m.get("elevation")
    if elevation is None and airmass is None and site is not None and all(m.get(k) is not None for k in ("era", "ra", "dec")):
        latitude = math.radians(site.latitude if m.get("latitude") is None else m["latitude"])
        longitude = site.longitude if m.get("longitude") is None else m["longitude"]
        hour_angle = math.radians(m["era"] + longitude - m["ra"])
        dec = math.radians(m["dec"])
        sin_alt = math.sin(latitude) * math.sin(dec) + math.cos(latitude) * math.cos(dec) * math.cos(hour_angle)
        elevation = math.degrees(math.asin(max(-1.0, min(1.0, sin_alt))))
    if elevation is None:
        if airmass is None:
            raise InputError(f"{path}: no elevation (BORE-ALT), no airmass (BORE-AIRMASS) and no AVG-ERA/BORE-RA/"
                             "BORE-DEC to compute it; give elevation or airmass in the manifest")  # fmt: skip
        elevation = elevation_from_airmass(airmass)
    if not 0.0 < elevation <= 90.0:
        raise InputError(f"{path}: elevation (BORE-ALT) = {elevation} deg is not in (0, 90]")
    if elevation < MIN_ELEVATION_DEG:
        raise InputError(
            f"{path}: elevation (BORE-ALT/BORE-AIRMASS) = {elevation:.3g} deg is below {MIN_ELEVATION_DEG:g} deg, "
            "where the refraction formula (Stone 1996) is no longer valid"
        )
    return elevation, (1.0 / math.sin(math.radians(elevation)) if airmass is None else airmass)


def _parallactic_angle(m: dict[str, Any], path: str, site: Site, lsst: bool) -> float:
    """PARANGLE; else from the hour angle (AVG-ERA + OBS-LONG − BORE-RA) and BORE-DEC; else from
    BORE-AZ, the elevation and the latitude.  ``lsst``: the last two as the LSST stack computes
    them (afw's formula; az/alt through ICRS at MJD-OBS), else with ERFA."""
    if m.get("parallacticAngle") is not None:
        return float(m["parallacticAngle"])
    latitude = site.latitude if m.get("latitude") is None else m["latitude"]
    longitude = site.longitude if m.get("longitude") is None else m["longitude"]
    if all(m.get(k) is not None for k in ("era", "ra", "dec")):
        hour_angle = m["era"] + longitude - m["ra"]
        if lsst:
            return parallactic_angle_afw(hour_angle, m["dec"], latitude)
        return float(parallactic_angle_from_hour_angle(hour_angle, m["dec"], latitude))
    if m.get("azimuth") is None:
        raise InputError(
            f"{path}: no parallactic angle (PARANGLE), no azimuth (BORE-AZ) and no AVG-ERA/BORE-RA/BORE-DEC to compute it"
        )
    if lsst:
        height = site.height if m.get("height") is None else m["height"]
        return parallactic_angle_lsst(m["azimuth"], m["elevation"], Site(latitude, longitude, height), m.get("mjd"),
                                      "utc")  # fmt: skip
    return float(parallactic_angle_from_altaz(m["azimuth"], m["elevation"], latitude))


def resolve_pointing(meta: dict[str, Any], wcs_header: str, path: str, site: Site, lsst_angles: bool = False,
                     lsst_rotation: bool = False) -> dict[str, Any]:  # fmt: skip
    """``meta`` with elevation, airmass, parallactic angle and the image rotation angle filled in
    (from whichever of them the header or the manifest gave); InputError naming ``path`` if impossible.

    lsst_angles : the parallactic angle as the LSST stack computes it (lsstCompat.parallacticAngle).
    lsst_rotation : the rotation angle is BORE-ROTANG (0 without it), not derived from the WCS
        (lsstCompat.rotationDirection).
    """
    m = dict(meta)
    m["elevation"], m["airmass"] = _elevation_and_airmass(m, path, site)
    m["parallacticAngle"] = _parallactic_angle(m, path, site, lsst_angles)
    # precedence: manifest override > the WCS of the warp > BORE-ROTANG > 0
    if lsst_rotation:
        m["rotationAngle"] = m.get("rotationAngle") or 0.0
    elif "rotationAngle" not in m.get("_overrides", ()):
        rot = image_rotation_angle(wcs_header, m["parallacticAngle"])
        m["rotationAngle"] = rot if rot is not None else (m.get("rotationAngle") or 0.0)
    return m


def _given(meta: dict[str, Any], name: str, default: float) -> float:
    return default if meta.get(name) is None else float(meta[name])


def observation(meta: dict[str, Any], path: str, site_defaults: Site, notices: set[str] | None = None) -> Observation:
    """The Observation of a visit's resolved ``meta``; missing weather → a standard atmosphere
    (logged once per visit, tracked in ``notices``)."""
    site = Site(latitude=_given(meta, "latitude", site_defaults.latitude),
                longitude=_given(meta, "longitude", site_defaults.longitude),
                height=_given(meta, "height", site_defaults.height))  # fmt: skip
    std = Weather.standard(site.height)
    missing = [k for k in ("temperature", "pressure", "humidity") if meta.get(k) is None]
    if missing and notices is not None and path not in notices:
        notices.add(path)
        log.info("%s: no %s; using the standard atmosphere at %.0f m", path, "/".join(missing), site.height)
    weather = Weather(temperature=_given(meta, "temperature", std.temperature),
                      pressure=_given(meta, "pressure", std.pressure),
                      humidity=_given(meta, "humidity", std.humidity))  # fmt: skip
    return Observation(meta["elevation"], meta["parallacticAngle"], meta["rotationAngle"], weather, site)
