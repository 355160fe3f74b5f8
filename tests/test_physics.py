"""Refraction, DCR shifts and parallactic angles against hand calculations and astropy/ERFA."""

import math
import warnings

import numpy as np
import pytest

from mpidcr import dcr
from mpidcr.errors import PhysicsError


def _stone_by_hand(lam_nm, elev_deg, t_c, p_pa, rh, lat_deg, h_m):
    """Stone (1996) written out term by term, independently of mpidcr.dcr."""
    T = t_c + 273.15
    x = math.log(rh / 100)
    td = 238.3 * ((t_c + 238.3) * x + 17.2694 * t_c) / ((t_c + 238.3) * (17.2694 - x) - 17.2694 * t_c)
    pw_mmhg = (
        4.50874 + 0.341724 * td + 0.0106778 * td**2 + 0.184889e-3 * td**3 + 0.238294e-5 * td**4 + 0.203447e-7 * td**5
    )
    Pw = pw_mmhg * 133.32239 / 100.0
    P = p_pa / 100.0
    Ps = P - Pw
    s2 = (1000.0 / lam_nm) ** 2
    Ds = (1 + Ps * (57.90e-8 - 9.3250e-4 / T + 0.25844 / T**2)) * Ps / T
    Dw = (1 + Pw * (1 + 3.7e-4 * Pw) * (-2.37321e-3 + 2.23366 / T - 710.792 / T**2 + 7.75141e4 / T**3)) * Pw / T
    n1 = (
        (2371.34 + 683939.7 / (130 - s2) + 4547.3 / (38.9 - s2)) * Ds
        + (6487.31 + 58.058 * s2 - 0.71150 * s2**2 + 0.08851 * s2**3) * Dw
    ) * 1e-8
    phi = math.radians(lat_deg)
    kappa = 1 + 0.005302 * math.sin(phi) ** 2 - 0.00000583 * math.sin(2 * phi) ** 2 - 0.000000315 * h_m
    beta = 4.5908e-6 * T
    tz = math.tan(math.radians(90 - elev_deg))
    return math.degrees(kappa * n1 * (1 - beta) * tz - kappa * n1 * (beta - n1 / 2) * tz**3) * 3600


@pytest.mark.parametrize(
    "case",
    [
        (500.0, 45.0, 10.0, 75000.0, 30.0, -30.0, 2650.0),
        (380.0, 30.0, 0.0, 70000.0, 80.0, 19.8, 4200.0),
        (900.0, 75.0, 25.0, 101325.0, 10.0, 52.0, 0.0),
    ],
)
def test_refraction_by_hand(case):
    lam, el, t, p, rh, lat, h = case
    got = dcr.refraction(lam, el, dcr.Weather(t, p, rh), dcr.Site(latitude=lat, height=h))
    assert got == pytest.approx(_stone_by_hand(*case), rel=1e-12)


def test_refraction_magnitude_sea_level():
    # ~58 arcsec at 45 degrees for visible light and sea-level pressure (textbook value)
    r = dcr.refraction(550.0, 45.0, dcr.Weather(15.0, 101325.0, 0.0), dcr.Site(latitude=0.0, height=0.0))
    assert 55.0 < float(r) < 61.0


def test_refraction_vectorised_and_monotonic():
    lam = np.array([400.0, 500.0, 600.0])
    el = np.array([[30.0], [60.0]])
    r = dcr.refraction(lam, el)
    assert r.shape == (2, 3)
    assert np.all(np.diff(r, axis=1) < 0)  # bluer refracts more
    assert np.all(r[0] > r[1])  # lower elevation refracts more


def test_standard_atmosphere():
    w0 = dcr.Weather.standard(0.0)
    assert w0.temperature == pytest.approx(19.0)
    assert w0.pressure == pytest.approx(101325.0)
    w = dcr.Weather.standard(2662.75)
    assert w.temperature == pytest.approx(19.0 - 6.5 * 2.66275)
    assert 70000 < w.pressure < 76000
    assert w.humidity == 40.0


@pytest.mark.parametrize("lam", [230.0, 2100.0, -5.0])
def test_wavelength_outside_model(lam):
    with pytest.raises(PhysicsError, match="outside the refraction model"):
        dcr.refraction(lam, 45.0)


def test_band_outside_model():
    with pytest.raises(PhysicsError, match="sub-filter edge"):
        dcr.subfilter_edges(300.0, 200.0, 3)


def test_bad_elevation():
    with pytest.raises(PhysicsError, match="elevation"):
        dcr.refraction(500.0, -1.0)


@pytest.mark.parametrize("elevation", [30.0, 40.0, 55.0, 70.0, 85.0])
def test_differential_refraction_agrees_with_astropy(elevation):
    from astropy import units as u
    from astropy.coordinates import AltAz, EarthLocation, SkyCoord
    from astropy.time import Time
    from astropy.utils import iers

    iers.conf.auto_download = False
    site = dcr.Site()
    weather = dcr.Weather(temperature=8.0, pressure=74000.0, humidity=35.0)
    loc = EarthLocation(lat=site.latitude * u.deg, lon=site.longitude * u.deg, height=site.height * u.m)
    t = Time("2025-06-01T03:00:00")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        true = SkyCoord(alt=elevation * u.deg, az=130 * u.deg, frame=AltAz(obstime=t, location=loc))
        alts = []
        for wl in (405.0, 552.0):
            frame = AltAz(
                obstime=t,
                location=loc,
                pressure=weather.pressure * u.Pa,
                temperature=weather.temperature * u.deg_C,
                relative_humidity=weather.humidity / 100,
                obswl=wl * u.nm,
            )
            alts.append(true.transform_to(frame).alt.to_value(u.arcsec))
    astropy_dr = alts[0] - alts[1]
    ours = float(dcr.differential_refraction(405.0, 552.0, elevation, weather, site))
    assert abs(ours - astropy_dr) < 0.01


def test_blue_towards_zenith_red_away(rng):
    for _ in range(50):
        obs = dcr.Observation(
            elevation=float(rng.uniform(25, 89)),
            parallactic_angle=float(rng.uniform(-180, 180)),
            rotation_angle=float(rng.uniform(-180, 180)),
        )
        s = dcr.dcr_shifts(obs, 476.31, 147.0, 3, 0.2, split_subfilters=False)
        uy, ux = dcr.zenith_direction(obs.parallactic_angle, obs.rotation_angle)
        along = s.mean @ np.array([uy, ux])
        assert along[0] > 0 and along[-1] < 0
        amp = np.hypot(s.mean[:, 0], s.mean[:, 1])
        assert np.argmax(amp) == 0
        # perpendicular component is zero: shifts lie along the zenith direction
        assert np.allclose(s.mean @ np.array([-ux, uy]), 0.0, atol=1e-12)


def test_zenith_direction_convention():
    assert dcr.zenith_direction(0.0, 0.0) == pytest.approx((1.0, 0.0))
    assert dcr.zenith_direction(90.0, 0.0) == pytest.approx((0.0, 1.0), abs=1e-15)
    assert dcr.zenith_direction(30.0, 30.0) == pytest.approx((1.0, 0.0))


def test_split_shifts_and_threshold():
    obs = dcr.Observation(elevation=40.0, parallactic_angle=20.0)
    s = dcr.dcr_shifts(obs, 476.31, 147.0, 3, 0.2, split_subfilters=True, split_threshold=0.0)
    edges = dcr.subfilter_edges(476.31, 147.0, 3)
    a = dcr.differential_refraction(edges, 476.31, 40.0, obs.resolved_weather, obs.site) / 0.2
    u = np.array(dcr.zenith_direction(20.0, 0.0))
    lsst = dcr.dcr_shifts(obs, 476.31, 147.0, 3, 0.2, split_subfilters=True, split_threshold=0.0,
                          split_node=dcr.SPLIT_NODE_LSST)  # fmt: skip
    for k in range(3):
        assert np.allclose(lsst.forward[k, 0], (0.75 * a[k] + 0.25 * a[k + 1]) * u)
        assert np.allclose(lsst.forward[k, 1], (0.25 * a[k] + 0.75 * a[k + 1]) * u)
        assert np.allclose(s.mean[k], (a[k] + a[k + 1]) / 2 * u)
        # mpidcr's nodes: the two shifts' mean and variance are those of the span [a_k, a_k+1]
        # covered evenly (Gauss-Legendre), LSST's have 3/4 of its variance
        pos = s.forward[k] @ u
        span = a[k + 1] - a[k]
        assert pos.mean() == pytest.approx((a[k] + a[k + 1]) / 2, abs=1e-12)
        assert pos.var() == pytest.approx(span**2 / 12, rel=1e-12)
        assert (lsst.forward[k] @ u).var() == pytest.approx(0.75 * span**2 / 12, rel=1e-12)
    assert s.split.all()
    big = dcr.dcr_shifts(obs, 476.31, 147.0, 3, 0.2, split_subfilters=True, split_threshold=100.0)
    assert not big.split.any()
    assert np.allclose(big.forward[:, 0], big.mean) and np.allclose(big.forward[:, 1], big.mean)


def test_buffer():
    assert dcr.dcr_buffer(0.0) == 1
    assert dcr.dcr_buffer(2.0) == 3
    assert dcr.dcr_buffer(2.01) == 4


def test_elevation_from_airmass():
    assert dcr.elevation_from_airmass(1.0) == pytest.approx(90.0)
    assert dcr.elevation_from_airmass(2.0) == pytest.approx(30.0)
    with pytest.raises(PhysicsError):
        dcr.elevation_from_airmass(0.9)


def test_parallactic_angle(rng):
    lat = -30.2446
    for _ in range(30):
        ha = float(rng.uniform(-80, 80))
        dec = float(rng.uniform(-80, 20))
        # independent spherical-trigonometry formula
        h, d, p = map(math.radians, (ha, dec, lat))
        expected = math.degrees(math.atan2(math.sin(h), math.tan(p) * math.cos(d) - math.sin(d) * math.cos(h)))
        assert float(dcr.parallactic_angle_from_hour_angle(ha, dec, lat)) == pytest.approx(expected, abs=1e-9)
        # the alt-az route gives the same angle
        sin_alt = math.sin(d) * math.sin(p) + math.cos(d) * math.cos(p) * math.cos(h)
        alt = math.asin(sin_alt)
        az = math.atan2(-math.cos(d) * math.sin(h), math.sin(d) * math.cos(p) - math.cos(d) * math.sin(p) * math.cos(h))
        q = float(dcr.parallactic_angle_from_altaz(math.degrees(az), math.degrees(alt), lat))
        assert q == pytest.approx(expected, abs=1e-7)
    # on the meridian: zenith due north of the object (dec < lat) → 0; due south (dec > lat) → 180
    assert float(dcr.parallactic_angle_from_hour_angle(0.0, -60.0, lat)) == pytest.approx(0.0, abs=1e-9)
    assert abs(float(dcr.parallactic_angle_from_hour_angle(0.0, 0.0, lat))) == pytest.approx(180.0)
