"""With --profile lsst, the LSST stack's own reference values hold (afw's test of its refraction,
ip_diffim's testDcrCalculation and testRotationAngle, drp_tasks' gain); the default profile keeps
the published physics (tests/test_physics.py checks it against ERFA/astropy)."""

import contextlib
import io
import json
import math

import numpy as np
import pytest

from mpidcr.cli import main
from mpidcr.dcr import Observation, Site, Weather, dcr_shifts, parallactic_angle_lsst, refraction
from mpidcr.update import LSST_GAIN_WINDOW, next_gain

#: the site and weather of afw's and ip_diffim's tests
SITE = Site(latitude=-30.244639, longitude=-70.749417, height=2663.0)

#: afw tests/test_refraction.py: refraction (arcsec) at elevation 30°, T 20 °C, P 73892 Pa, RH 10 %
AFW_REFRACTION = {370: 73.04868430514726, 480: 71.74884360909664, 620: 71.02058121935002,
                  860: 70.51172189207065, 960: 70.40446894800584, 1025: 70.35113687114644}  # fmt: skip

#: ip_diffim testDcrCalculation: (dy, dx) of the three sub-filters of g, az 30°, el 65°, rotation 0
DCR_CALCULATION = [(-0.587550080368824, -0.28495575189083666), (-0.019158809951774006, -0.009291825969480522),
                   (0.38855779160585996, 0.18844653649028056)]  # fmt: skip


@pytest.mark.parametrize(("wavelength", "expected"), sorted(AFW_REFRACTION.items()))
def test_afw_refraction_values(wavelength, expected):
    weather = Weather(temperature=20.0, pressure=73892.0, humidity=10.0)
    assert float(refraction(wavelength, 30.0, weather, SITE, formula="afw")) == pytest.approx(expected, rel=1e-9)


def test_published_refraction_differs_from_afw():
    """The default is Stone's formula as published (− tan³z term, 7.75141e4): not afw's values."""
    weather = Weather(temperature=20.0, pressure=73892.0, humidity=10.0)
    stone = float(refraction(480.0, 30.0, weather, SITE))
    assert abs(stone - AFW_REFRACTION[480]) > 1e-3


def _ip_diffim_observation(azimuth: float, elevation: float) -> Observation:
    weather = Weather(temperature=20.0, pressure=73892.0, humidity=40.0)
    return Observation(elevation=elevation, parallactic_angle=parallactic_angle_lsst(azimuth, elevation, SITE),
                       rotation_angle=0.0, weather=weather, site=SITE)  # fmt: skip


def test_ip_diffim_dcr_calculation():
    obs = _ip_diffim_observation(30.0, 65.0)
    shifts = dcr_shifts(obs, 476.31, 147.0, 3, 0.2, split_subfilters=False, formula="afw")
    for (dy, dx), expected in zip(shifts.mean, DCR_CALCULATION, strict=True):
        assert dy == pytest.approx(expected[0], rel=1e-6, abs=1e-8)
        assert dx == pytest.approx(expected[1], rel=1e-6, abs=1e-8)


def test_ip_diffim_rotation_angle():
    angle = math.radians(parallactic_angle_lsst(130.0, 70.0, SITE)) - 0.0
    assert abs(angle - -1.0848032636337364) < math.radians(0.001 / 3600.0)


def test_shifts_command_reproduces_ip_diffim():
    """``mpidcr shifts --profile lsst --azimuth 30 --elevation 65`` as ip_diffim's test sets it up."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["shifts", "--profile", "lsst", "--wavelength", "476.31", "--bandwidth", "147", "--azimuth", "30",
                     "--elevation", "65", "--rotation-angle", "0", "--pixel-scale", "0.2", "--latitude", "-30.244639",
                     "--longitude", "-70.749417", "--height", "2663", "--temperature", "20", "--pressure", "73892",
                     "--humidity", "40", "--json"])  # fmt: skip
    assert code == 0
    shifts = np.array(json.loads(out.getvalue())["shifts"])
    assert np.allclose(shifts, DCR_CALCULATION, rtol=1e-6, atol=1e-8)


def test_lsst_gain_reference():
    """drp_tasks' calculateGain: the median of at most the last 4 estimates."""
    metrics = [1.0, 0.8, 0.6, 0.55, 0.52, 0.50, 0.495]
    gains = [0.5, 0.6, 0.55, 0.7, 0.65, 0.8]
    assert next_gain(metrics, gains, 0.5, True, LSST_GAIN_WINDOW) == 0.6678278688524573
    assert next_gain(metrics, gains, 0.5, True) == pytest.approx(0.64625)  # mpidcr's window of 5
