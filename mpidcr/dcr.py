"""Atmospheric refraction and the DCR shifts of sub-filters (SPEC §1).

Units: wavelengths in nm, angles in degrees at the interface (radians inside),
refraction in arcsec unless a name says otherwise, shifts in pixels as numpy
``(dy, dx)`` pairs (axis order ``(y, x)``).

The refraction formula is Stone (1996, PASP 108, 1051) with the water-vapour
pressure from the dew point (Stone eqs. 18 & 20) and the Owens (1967)
coefficients as printed in the papers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .errors import PhysicsError

#: Validity range of the refraction formula, nm (open interval).
WAVELENGTH_MIN_NM = 230.2
WAVELENGTH_MAX_NM = 2058.6
#: Lowest elevation (deg) at which the refraction formula is used.  Stone's two-term series in
#: tan z loses accuracy towards the horizon (its tan³z term is 4 % of the first at 10°, 17 % at
#: 5°) and its DCR turns over near 3.6° (1.8″ at 2° against 8.7″ at 3°), so lower elevations
#: (airmass above 5.76) are refused rather than silently mis-modelled.
MIN_ELEVATION_DEG = 10.0

#: Physical ranges of site and weather values: name → (low, high, unit).  Values outside are
#: refused, with a hint when they look like another unit.
PHYSICAL_RANGES: dict[str, tuple[float, float, str]] = {
    "temperature": (-90.0, 60.0, "°C"),
    "pressure": (10_000.0, 120_000.0, "Pa"),
    "humidity": (0.0, 100.0, "%"),
    "latitude": (-90.0, 90.0, "deg"),
    "longitude": (-360.0, 360.0, "deg"),
    "height": (-500.0, 9_000.0, "m"),
    "psfFwhm": (0.01, 30.0, "arcsec"),
    "zeroPoint": (0.0, 50.0, "mag"),
}
_UNIT_HINTS: dict[str, tuple[tuple[float, float, str], ...]] = {
    "temperature": ((173.15, 333.15, "this looks like kelvin"),),
    "pressure": (
        (100.0, 1_200.0, "this looks like hPa (mbar)"),
        (10.0, 120.0, "this looks like kPa"),
        (0.1, 1.2, "this looks like bar or atm"),
    ),
}

_G = 9.80665  # m s^-2
_M_AIR = 0.0289644  # kg/mol
_R_GAS = 8.31447  # J/(mol K)
_ARCSEC_PER_RAD = 180.0 / math.pi * 3600.0


def physical_problem(name: str, value: float) -> str | None:
    """Why ``value`` of site/weather quantity ``name`` (a key of :data:`PHYSICAL_RANGES`) is
    impossible, as text to follow ``"<field> = value"`` (e.g. ``": Pa expected, this looks like
    hPa (mbar)"``), or None when it is within range."""
    lo, hi, unit = PHYSICAL_RANGES[name]
    if not math.isfinite(value):
        return " is not a finite number"
    if lo <= value <= hi:
        return None
    for a, b, hint in _UNIT_HINTS.get(name, ()):
        if a <= value <= b:
            return f": {unit} expected, {hint}"
    return f" {unit} is outside the physical range [{lo:g}, {hi:g}] {unit}"


def check_elevation(elevation: float) -> None:
    """PhysicsError unless ``elevation`` (deg) is within [MIN_ELEVATION_DEG, 90]."""
    if not math.isfinite(elevation) or elevation > 90.0 or elevation <= 0.0:
        raise PhysicsError(f"elevation {elevation} deg is outside (0, 90]")
    if elevation < MIN_ELEVATION_DEG:
        raise PhysicsError(
            f"elevation {elevation:g} deg (airmass {1 / math.sin(math.radians(elevation)):.2f}) is below "
            f"{MIN_ELEVATION_DEG:g} deg, where the refraction formula (Stone 1996) is no longer valid"
        )


@dataclass(frozen=True)
class Site:
    """An observatory (default: Rubin Observatory, Cerro Pachón).

    Parameters
    ----------
    latitude : float
        Geodetic latitude, degrees (north positive).
    longitude : float
        Degrees (east positive).
    height : float
        Metres above sea level.
    """

    latitude: float = -30.2446  # Rubin Observatory, Cerro Pachón
    longitude: float = -70.7494
    height: float = 2662.75


@dataclass(frozen=True)
class Weather:
    """Surface weather at the time of a visit.

    Parameters
    ----------
    temperature : float
        Air temperature, °C.
    pressure : float
        Air pressure, Pa.
    humidity : float
        Relative humidity, percent (0–100).
    """

    temperature: float
    pressure: float
    humidity: float = 40.0

    @classmethod
    def standard(cls, height: float) -> Weather:
        """A standard atmosphere at ``height`` metres: 19 °C − 6.5 °C/km, barometric pressure, 40 %."""
        t_c = 19.0 - 6.5e-3 * height
        t_k = t_c + 273.15
        p = 101325.0 * math.exp(-_G * _M_AIR * height / (_R_GAS * t_k))
        return cls(temperature=t_c, pressure=p, humidity=40.0)


@dataclass(frozen=True)
class Observation:
    """What the DCR of one visit depends on.

    Parameters
    ----------
    elevation : float
        Telescope elevation (altitude) of the field centre, degrees.
    parallactic_angle : float
        Degrees, the angle from celestial north to the zenith direction measured through east.
    rotation_angle : float
        Sky rotation angle of the image axes, degrees: the position angle of the image +y axis
        (so the zenith lies at ``parallactic_angle − rotation_angle`` from +y, towards +x).
    weather : Weather or None
        Surface weather; None means a standard atmosphere at the site.
    site : Site
        The observatory.
    """

    elevation: float
    parallactic_angle: float
    rotation_angle: float = 0.0
    weather: Weather | None = None
    site: Site = field(default_factory=Site)

    @property
    def airmass(self) -> float:
        """sec(z), the plane-parallel airmass."""
        return 1.0 / math.sin(math.radians(self.elevation))

    @property
    def resolved_weather(self) -> Weather:
        """The weather, or a standard atmosphere at the site's height when none was given."""
        return self.weather if self.weather is not None else Weather.standard(self.site.height)


def elevation_from_airmass(airmass: float) -> float:
    """Elevation in degrees of a plane-parallel ``airmass`` (≥ 1)."""
    if not airmass >= 1.0:
        raise PhysicsError(f"airmass {airmass} is below 1")
    return math.degrees(math.asin(1.0 / airmass))


def water_vapour_pressure(humidity: float, temperature: float) -> float:
    """Partial pressure of water vapour in Pa from relative humidity (%) and temperature (°C).

    Via the dew point (Stone 1996 eqs. 18 and 20).  0 for 0 % humidity.
    """
    fraction = humidity / 100.0
    if fraction <= 0.0:  # (also a humidity so small that the fraction underflows)
        return 0.0
    x = math.log(fraction)
    t = temperature
    td = 238.3 * ((t + 238.3) * x + 17.2694 * t) / ((t + 238.3) * (17.2694 - x) - 17.2694 * t)
    mmhg = 4.50874 + 0.341724 * td + 0.0106778 * td**2 + 0.184889e-3 * td**3 + 0.238294e-5 * td**4 + 0.203447e-7 * td**5
    return mmhg * 133.32239


def check_wavelength(wavelength: ArrayLike, what: str = "wavelength") -> NDArray[np.float64]:
    """Return ``wavelength`` as an array, or raise PhysicsError outside (230.2, 2058.6) nm."""
    lam = np.asarray(wavelength, dtype=np.float64)
    bad = ~((lam > WAVELENGTH_MIN_NM) & (lam < WAVELENGTH_MAX_NM))
    if np.any(bad):
        worst = float(np.atleast_1d(lam)[np.atleast_1d(bad)][0])
        raise PhysicsError(
            f"{what} {worst:g} nm is outside the refraction model's range ({WAVELENGTH_MIN_NM}, {WAVELENGTH_MAX_NM}) nm"
        )
    return lam


#: The refraction formulas: Stone (1996) and Owens (1967) as published, and afw's implementation
#: (the LSST stack's), which adds the tan³z term and has 7.75141e-4 for Owens' 7.75141e4.
REFRACTION_FORMULAS = ("stone", "afw")


def refractivity(wavelength: ArrayLike, weather: Weather, formula: str = "stone") -> NDArray[np.float64]:
    """n − 1 of moist air at ``wavelength`` (nm), Stone (1996) eq. 13 with Owens' densities
    (``formula="afw"``: with afw's water-vapour coefficient, see :data:`REFRACTION_FORMULAS`)."""
    lam = check_wavelength(wavelength)
    t_k = weather.temperature + 273.15
    p = weather.pressure / 100.0  # mbar
    pw = water_vapour_pressure(weather.humidity, weather.temperature) / 100.0  # mbar
    ps = p - pw
    sigma2 = (1000.0 / lam) ** 2  # µm^-2
    ds = (1.0 + ps * (57.90e-8 - 9.3250e-4 / t_k + 0.25844 / t_k**2)) * ps / t_k
    cubic = 7.75141e-4 if formula == "afw" else 7.75141e4
    dw = (1.0 + pw * (1.0 + 3.7e-4 * pw) * (-2.37321e-3 + 2.23366 / t_k - 710.792 / t_k**2 + cubic / t_k**3)) * pw / t_k
    n1e8 = (2371.34 + 683939.7 / (130.0 - sigma2) + 4547.3 / (38.9 - sigma2)) * ds + (
        6487.31 + 58.058 * sigma2 - 0.71150 * sigma2**2 + 0.08851 * sigma2**3
    ) * dw
    return n1e8 * 1e-8


def refraction(
    wavelength: ArrayLike,
    elevation: ArrayLike,
    weather: Weather | None = None,
    site: Site | None = None,
    formula: str = "stone",
) -> NDArray[np.float64]:
    """Atmospheric refraction R (arcsec) at ``wavelength`` (nm) and ``elevation`` (deg).

    Broadcasts over both arguments.  Stone (1996) eq. 10 with κ and β of eqs. 6–7;
    ``formula="afw"``: afw's variant (:data:`REFRACTION_FORMULAS`).
    """
    site = site or Site()
    weather = weather or Weather.standard(site.height)
    elev = np.asarray(elevation, dtype=np.float64)
    for e in np.unique(elev):
        check_elevation(float(e))
    if formula not in REFRACTION_FORMULAS:
        raise PhysicsError(f"unknown refraction formula '{formula}' (one of {', '.join(REFRACTION_FORMULAS)})")
    n1 = refractivity(wavelength, weather, formula)
    phi = math.radians(site.latitude)
    kappa = 1.0 + 0.005302 * math.sin(phi) ** 2 - 0.00000583 * math.sin(2 * phi) ** 2 - 0.000000315 * site.height
    beta = 4.5908e-6 * (weather.temperature + 273.15)
    tan_z = np.tan(np.radians(90.0 - elev))
    sign = 1.0 if formula == "afw" else -1.0
    r = kappa * n1 * (1.0 - beta) * tan_z + sign * kappa * n1 * (beta - n1 / 2.0) * tan_z**3
    return r * _ARCSEC_PER_RAD


def differential_refraction(
    wavelength: ArrayLike,
    reference_wavelength: float,
    elevation: ArrayLike,
    weather: Weather | None = None,
    site: Site | None = None,
    formula: str = "stone",
) -> NDArray[np.float64]:
    """R(λ) − R(λ_ref) in arcsec; positive (towards the zenith) for λ bluer than λ_ref."""
    return (refraction(wavelength, elevation, weather, site, formula)
            - refraction(reference_wavelength, elevation, weather, site, formula))  # fmt: skip


def subfilter_edges(effective_wavelength: float, bandwidth: float, num_subfilters: int) -> NDArray[np.float64]:
    """The K+1 wavelength edges (nm) of K equal sub-bands of ``[λeff − bw/2, λeff + bw/2]``, blue first."""
    if num_subfilters < 1:
        raise PhysicsError("the number of sub-filters must be at least 1")
    if not bandwidth > 0:
        raise PhysicsError(f"bandwidth {bandwidth} nm must be positive")
    edges = np.linspace(effective_wavelength - bandwidth / 2, effective_wavelength + bandwidth / 2, num_subfilters + 1)
    check_wavelength(edges, "sub-filter edge")
    return edges


#: Where a split sub-filter's two shifts sit in its refraction span [a0, a1], as the fraction q
#: from a0 (and 1 − q): LSST's 1/4 and 3/4 (the midpoints of the two halves), or mpidcr's default,
#: the two-point Gauss–Legendre nodes ½ ∓ 1/(2√3).  The average of the two shifted copies then has
#: the variance of the light spread evenly over the span, (a1 − a0)²/12 — LSST's nodes give
#: (a1 − a0)²/16, a quarter less of the elongation a star's sub-band light shows at high airmass.
SPLIT_NODE_LSST = 0.25
SPLIT_NODE_GAUSS = 0.5 - 0.5 / math.sqrt(3.0)


@dataclass(frozen=True)
class VisitShifts:
    """The DCR shifts of one visit, in pixels, numpy ``(dy, dx)`` order.

    forward : (K, 2, 2) — for sub-filter k the two shifts ``forward[k, j]``
        whose shifted copies the forward model averages; when the sub-filter
        is not split both rows are the mean shift.
    mean : (K, 2) — the mean shift per sub-filter; the reverse (residual)
        shift is ``-mean``.
    split : (K,) bool — whether sub-filter k uses two distinct shifts.
    refraction_arcsec : (K+1,) ΔR at the sub-filter edges, arcsec.
    """

    forward: NDArray[np.float64]
    mean: NDArray[np.float64]
    split: NDArray[np.bool_]
    refraction_arcsec: NDArray[np.float64]

    @property
    def max_abs(self) -> float:
        """Largest absolute shift component, pixels."""
        return float(np.max(np.abs(self.forward)))


def zenith_direction(parallactic_angle: float, rotation_angle: float) -> tuple[float, float]:
    """Unit vector (dy, dx) towards the zenith in the image plane.

    θ = parallactic angle − rotation angle (degrees); θ = 0 points along +y.
    """
    theta = math.radians(parallactic_angle - rotation_angle)
    return math.cos(theta), math.sin(theta)


def dcr_shifts(
    obs: Observation,
    effective_wavelength: float,
    bandwidth: float,
    num_subfilters: int,
    pixel_scale: float,
    split_subfilters: bool = True,
    split_threshold: float = 0.1,
    formula: str = "stone",
    lsst_unsplit: bool = False,
    split_node: float = SPLIT_NODE_GAUSS,
) -> VisitShifts:
    """Per sub-filter DCR shifts (pixels) of one visit, SPEC §1.

    pixel_scale : arcsec per pixel.  A split sub-filter's two shifts lie at the fractions
    ``split_node`` and 1 − ``split_node`` of the span between its edges' refractions
    (:data:`SPLIT_NODE_GAUSS` by default, LSST's :data:`SPLIT_NODE_LSST` = 1/4); a sub-filter
    is split only when the two shifts differ by at least ``split_threshold`` pixels in some
    component.
    formula : the refraction formula (:data:`REFRACTION_FORMULAS`).
    lsst_unsplit : a sub-filter below the threshold is shifted as LSST's ``applyDcr`` does it,
        by (mean(dy₀, dx₀), mean(dy₁, dx₁)) — an average that mixes the axes — instead of by its
        mean shift.  The reverse (mean) shift is unchanged.
    """
    if not pixel_scale > 0:
        raise PhysicsError(f"pixel scale {pixel_scale} arcsec must be positive")
    edges = subfilter_edges(effective_wavelength, bandwidth, num_subfilters)
    dr = differential_refraction(edges, effective_wavelength, obs.elevation, obs.resolved_weather, obs.site, formula)
    a = dr / pixel_scale
    uy, ux = zenith_direction(obs.parallactic_angle, obs.rotation_angle)
    unit = np.array([uy, ux])
    a0, a1 = a[:-1], a[1:]
    mean = ((a0 + a1) / 2)[:, None] * unit
    forward = np.repeat(mean[:, None, :], 2, axis=1)
    split = np.zeros(num_subfilters, dtype=bool)
    if split_subfilters:
        q = float(split_node)
        s0 = ((1.0 - q) * a0 + q * a1)[:, None] * unit
        s1 = (q * a0 + (1.0 - q) * a1)[:, None] * unit
        split = np.max(np.abs(s1 - s0), axis=1) >= split_threshold
        forward[split, 0] = s0[split]
        forward[split, 1] = s1[split]
        if lsst_unsplit:
            mixed = np.stack([s0.mean(axis=1), s1.mean(axis=1)], axis=1)  # (K, 2): (mean of s0, mean of s1)
            forward[~split] = mixed[~split][:, None, :]
    return VisitShifts(forward=forward, mean=mean, split=split, refraction_arcsec=dr)


def dcr_buffer(max_shift: float) -> int:
    """Buffer in pixels around a region for shifts up to ``max_shift`` pixels: ceil(max) + 1."""
    return math.ceil(max_shift) + 1


def lsst_buffer(shifts: Sequence[VisitShifts]) -> int:
    """The LSST task's bufferSize: :func:`dcr_buffer` of the largest component of the visits'
    mean (unsplit) shifts."""
    return dcr_buffer(max((float(np.max(np.abs(s.mean))) for s in shifts), default=0.0))


def parallactic_angle_from_hour_angle(
    hour_angle: ArrayLike, declination: ArrayLike, latitude: float
) -> NDArray[np.float64]:
    """Parallactic angle (deg) from hour angle (deg, west positive), declination and latitude (deg)."""
    import erfa

    return np.degrees(erfa.hd2pa(np.radians(hour_angle), np.radians(declination), math.radians(latitude)))


def parallactic_angle_from_altaz(azimuth: ArrayLike, elevation: ArrayLike, latitude: float) -> NDArray[np.float64]:
    """Parallactic angle (deg) from azimuth (deg, north through east), elevation and latitude (deg)."""
    import erfa

    phi = math.radians(latitude)
    ha, dec = erfa.ae2hd(np.radians(azimuth), np.radians(elevation), phi)
    return np.degrees(erfa.hd2pa(ha, dec, phi))


def parallactic_angle_afw(hour_angle: float, declination: float, latitude: float) -> float:
    """Parallactic angle (deg) as afw's VisitInfo computes it: atan2(sin H, cos δ tan φ − sin δ cos H)
    from the hour angle H (deg; ERA + longitude − RA, with the ICRS RA), the declination and the
    latitude (deg).  No precession or nutation is applied: it differs from ERFA's by up to ~30″."""
    h, d, p = (math.radians(v) for v in (hour_angle, declination, latitude))
    return math.degrees(math.atan2(math.sin(h), math.cos(d) * math.tan(p) - math.sin(d) * math.cos(h)))


#: The time afw's parallactic angle is computed at when a visit gives none: J2000.0 (TT), the epoch
#: of the LSST tests' visits
J2000_MJD_TT = 51544.5


def parallactic_angle_lsst(azimuth: float, elevation: float, site: Site, mjd: float | None = None,
                           scale: str = "tai") -> float:  # fmt: skip
    """Parallactic angle (deg) of a pointing at ``azimuth``/``elevation`` (deg) as the LSST stack
    gets it: the ICRS position of the pointing at the visit's time (astropy, no refraction), the
    Earth rotation angle of that time (UT1), and :func:`parallactic_angle_afw`.

    mjd : the visit's time (MJD in ``scale``); None: J2000.0 (TT).
    """
    import warnings

    import astropy.units as u
    import erfa
    from astropy.coordinates import AltAz, EarthLocation, SkyCoord
    from astropy.time import Time
    from astropy.utils.exceptions import AstropyWarning

    time = Time(J2000_MJD_TT, format="mjd", scale="tt") if mjd is None else Time(mjd, format="mjd", scale=scale)
    location = EarthLocation(lat=site.latitude * u.deg, lon=site.longitude * u.deg, height=site.height * u.m)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyWarning)  # e.g. a time beyond the IERS tables
        warnings.simplefilter("ignore", erfa.ErfaWarning)
        icrs = SkyCoord(AltAz(az=azimuth * u.deg, alt=elevation * u.deg, obstime=time, location=location)).icrs
        ut1 = time.ut1
    era = math.degrees(erfa.era00(ut1.jd1, ut1.jd2))
    geodetic = location.to_geodetic()
    hour_angle = era + geodetic.lon.degree - icrs.ra.degree
    return parallactic_angle_afw(hour_angle, icrs.dec.degree, geodetic.lat.degree)
