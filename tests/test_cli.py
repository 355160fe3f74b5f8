"""The command line, called as a function of argv and as a subprocess."""

import json
import subprocess
import sys

import numpy as np
import pytest

from mpidcr import __version__, dcr
from mpidcr.cli import main


def test_version():
    proc = subprocess.run([sys.executable, "-m", "mpidcr", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == f"mpidcr {__version__}"


@pytest.mark.parametrize("command", ["config", "shifts"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert "usage: mpidcr " + command in capsys.readouterr().out


def test_shifts_json_matches_library(capsys):
    argv = [
        "shifts",
        "--wavelength",
        "476.31",
        "--bandwidth",
        "147",
        "--subfilters",
        "3",
        "--elevation",
        "65",
        "--parallactic-angle",
        "-154",
        "--rotation-angle",
        "0",
        "--pixel-scale",
        "0.2",
        "--json",
    ]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    obs = dcr.Observation(elevation=65.0, parallactic_angle=-154.0)
    expected = dcr.dcr_shifts(obs, 476.31, 147.0, 3, 0.2, split_subfilters=False)
    assert np.allclose(out["shifts"], expected.mean)
    assert np.allclose(out["refraction_arcsec"], expected.refraction_arcsec)
    assert len(out["shifts"]) == 3 and len(out["shifts"][0]) == 2
    # blue sub-filter points to the zenith at θ = −154°: dy < 0 (cos), dx < 0 (sin)
    assert out["shifts"][0][0] < 0 and out["shifts"][0][1] < 0


def test_shifts_split_json(capsys):
    argv = [
        "shifts",
        "--wavelength",
        "476.31",
        "--bandwidth",
        "147",
        "--airmass",
        "1.8",
        "--parallactic-angle",
        "30",
        "--split",
        "--split-threshold",
        "0",
        "--json",
        "--temperature",
        "5",
        "--pressure",
        "70000",
        "--humidity",
        "20",
    ]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert np.array(out["shifts"]).shape == (3, 2, 2)
    assert out["weather"] == {"temperature_C": 5.0, "pressure_Pa": 70000.0, "humidity_pct": 20.0}


def test_shifts_bad_wavelength_is_one_line():
    proc = subprocess.run(
        [sys.executable, "-m", "mpidcr", "shifts", "--wavelength", "2100", "--bandwidth", "100", "--elevation", "50"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "outside the refraction model's range" in lines[0]


def test_shifts_text_output(capsys):
    assert main(["shifts", "--wavelength", "620", "--bandwidth", "140", "--elevation", "40"]) == 0
    out = capsys.readouterr().out
    assert sum(line.startswith("sub-filter ") for line in out.splitlines()) == 3


def test_help_and_parser_start_without_numpy():
    """`mpidcr --help` and the parser of every command import neither numpy nor the model readers."""
    code = ("import sys, mpidcr.cli; mpidcr.cli.build_parser().format_help(); "
            "heavy = [m for m in ('numpy', 'numba', 'astropy', 'scipy', 'h5py') if m in sys.modules]; "
            "print(','.join(heavy))")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == ""


def test_shifts_default_site_is_rubin(capsys):
    """The site's defaults are filled in after parsing (the parser is built without numpy)."""
    base = ["shifts", "--wavelength", "476.31", "--bandwidth", "147", "--airmass", "1.4", "--azimuth", "30", "--json"]
    assert main(base) == 0
    default = json.loads(capsys.readouterr().out)
    rubin = dcr.Site()
    assert main([*base, "--latitude", str(rubin.latitude), "--longitude", str(rubin.longitude), "--height",
                 str(rubin.height)]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out) == default
    assert main([*base, "--latitude", "19.8"]) == 0
    assert json.loads(capsys.readouterr().out) != default


def test_kernel_cache_option(tmp_path):
    """--kernel-cache DIR: numba's cache goes there (created); an unusable directory is one line."""
    cache = tmp_path / "kernels" / "node-local"
    code = ("import os, sys; from mpidcr.cli import main; main(sys.argv[1:]); "
            "import mpidcr.kernels, numba; print(os.environ['NUMBA_CACHE_DIR'], numba.config.CACHE_DIR)")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code, "--kernel-cache", str(cache), "config", "--defaults"],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == f"{cache} {cache}" and cache.is_dir()
    blocked = tmp_path / "file"
    blocked.write_text("")
    proc = subprocess.run([sys.executable, "-m", "mpidcr", "--kernel-cache", str(blocked / "sub"), "config"],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"mpidcr: error: --kernel-cache {blocked / 'sub'}: cannot create it "
                                                "(Not a directory)"]  # fmt: skip


def test_json_outputs_are_strict_json():
    """--json prints null where a number is undefined (a model's first iteration has no gain):
    Python's json would write a bare NaN, which jq and most parsers refuse."""
    from mpidcr.cli import json_text

    value = {"gain": float("nan"), "history": [1.0, float("inf"), -float("inf")], "nested": ({"x": 2.5},), "n": 3}
    assert json.loads(json_text(value), parse_constant=lambda c: pytest.fail(f"bare {c}")) == {
        "gain": None, "history": [1.0, None, None], "nested": [{"x": 2.5}], "n": 3}  # fmt: skip
