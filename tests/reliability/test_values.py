"""Physically impossible values and sizes that cannot be meant: one line naming the field, with units."""

import pytest

from .helpers import assert_one_line_error, cli, edit_warp, warps_of


@pytest.mark.parametrize(
    "key, value, fragments",
    [
        ("AIRPRESS", -5.0, ["AIRPRESS (pressure) = -5", "outside the physical range"]),
        ("AIRPRESS", 743.0, ["AIRPRESS (pressure) = 743: Pa expected, this looks like hPa"]),
        ("AIRTEMP", -300.0, ["AIRTEMP (temperature) = -300", "outside the physical range"]),
        ("AIRTEMP", 285.0, ["AIRTEMP (temperature) = 285: °C expected, this looks like kelvin"]),
        ("HUMIDITY", 250.0, ["HUMIDITY (humidity) = 250 %", "[0, 100]"]),
        ("OBS-LAT", 120.0, ["OBS-LAT (latitude) = 120"]),
        ("BORE-ALT", 2.0, ["= 2 deg is below 10 deg", "refraction formula"]),
    ],
)
def test_impossible_header_values(field_copy, tmp_path, capsys, key, value, fragments):
    warp = warps_of(field_copy)[2]

    def edit(h):
        h[f"HIERARCH {key}" if "-" in key else key] = value
        if key == "BORE-ALT":
            del h["BORE-AIRMASS"]

    edit_warp(warp, header=edit)
    code, _, err = cli(capsys, "run", field_copy / "manifest.toml", "-o", tmp_path / "m.h5")
    assert_one_line_error(code, err, str(warp), *fragments)
    assert not (tmp_path / "m.h5").exists()


@pytest.mark.parametrize(
    "site, fragment",
    [
        ("latitude = 120", "[site] latitude = 120 deg is outside the physical range [-90, 90]"),
        ('latitude = "north"', "[site] latitude = 'north' is not a number"),
        ("height = nan", "[site] height = nan is not a finite number"),
    ],
)
def test_impossible_site(field_copy, tmp_path, capsys, site, fragment):
    manifest = field_copy / "manifest.toml"
    text = manifest.read_text()
    start = text.index("[site]")
    end = text.index("\n\n", start)
    manifest.write_text(text[:start] + "[site]\n" + site + text[end:])
    code, _, err = cli(capsys, "run", manifest, "-o", tmp_path / "m.h5")
    assert_one_line_error(code, err, str(manifest), fragment)


@pytest.mark.parametrize(
    "text, fragment",
    [
        ('band = [1, 2]\n[[warps]]\npath = "a.fits"\n', "[band] must be a table"),
        ('site = "Rubin"\n[[warps]]\npath = "a.fits"\n', "[site] must be a table"),
        ("[[warps]]\npath = 5\n", "'path' must be a file name or pattern (a string), not 5"),
        ('[[warps]]\nimage = "a.fits"\nweight = ["b"]\n', "'weight' must be a file name"),
        ("warps = 5\n", "'warps' must be a list"),
        ("warps = [5]\n", "expected a path or a table, not int"),
        ('[[warps]]\npath = "a.fits"\nparallacticAngle = "west"\n', "override parallacticAngle = 'west' is not a number"),
        ('[[warps]]\npath = "a.fits"\nairmass = true\n', "override airmass = True is not a number"),
    ],
)
def test_manifest_type_errors(field, tmp_path, capsys, text, fragment):
    import shutil

    shutil.copy(field[1]["warps"][0], tmp_path / "a.fits")
    shutil.copy(field[1]["warps"][1], tmp_path / "b.fits")
    manifest = tmp_path / "m.toml"
    second = '[[warps]]\npath = "b.fits"\n' if text.startswith("[[warps]]") else ""
    manifest.write_text(text + second + '[config]\neffectiveWavelength = 476.31\nbandwidth = 147.0\n')
    code, _, err = cli(capsys, "run", manifest, "-o", tmp_path / "m.h5")
    line = assert_one_line_error(code, err, fragment)
    assert str(manifest) in line or "a.fits" in line


@pytest.mark.parametrize(
    "setting, fragment",
    [
        ("regularizationWidth=100000", "'regularizationWidth' = 100000 is out of range; expected a value in [1, 64]"),
        ("dcrNumSubfilters=1000", "'dcrNumSubfilters' = 1000 is out of range; expected a value in [2, 32]"),
        ("maxNumIter=1000000", "'maxNumIter' = 1000000 is out of range"),
        ("modelWeightsWidth=1e9", "'modelWeightsWidth' = 1000000000.0 is out of range"),
    ],
)
def test_sizes_that_cannot_be_meant(field, tmp_path, capsys, setting, fragment):
    code, _, err = cli(capsys, "run", field[0] / "manifest.toml", "-o", tmp_path / "m.h5", "--set", setting)
    assert_one_line_error(code, err, fragment)


def test_shifts_command_refuses_impossible_weather(capsys):
    base = ["shifts", "--wavelength", "476.31", "--bandwidth", "147", "--elevation", "60"]
    code, _, err = cli(capsys, *base, "--pressure", "743")
    assert_one_line_error(code, err, "--pressure = 743: Pa expected, this looks like hPa")
    code, _, err = cli(capsys, *base[:-2], "--elevation", "5")
    assert_one_line_error(code, err, "below 10 deg")
