"""Bad inputs to the commands that use a model (template, export, evaluate, inspect) and to
simulate: exit 2 and one line naming the file (or option) and what is wrong, never a traceback.
(mpidcr run's bad inputs: tests/test_io.py, tests/test_psf_io.py, tests/reliability.)"""

import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
from astropy.io import fits
from cli_runner import run_cli

from mpidcr.sim.simulate import simulate


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    out = tmp_path_factory.mktemp("bad_inputs")
    info = simulate(out / "field", size=64, num_visits=5, num_science=1, seed=5, engine="numpy")
    model = out / "model.h5"
    code, _, err = run_cli("run", out / "field" / "manifest.toml", "-o", model, "--set", "maxNumIter=3")
    assert code == 0, err
    return out, model, info["science"][0]


def _one_line_error(args, *phrases):
    code, _, err = run_cli(*map(str, args))
    assert code == 2 and len(err) == 1 and err[0].startswith("mpidcr: error: "), err
    for phrase in phrases:
        assert str(phrase) in err[0], err[0]
    return err[0]


def _model_copy(made, tmp_path, edit):
    _, model, _ = made
    copy = tmp_path / "edited.h5"
    shutil.copy(model, copy)
    with h5py.File(copy, "r+") as f:
        edit(f)
    return copy


def test_truncated_model(made, tmp_path):
    _, model, science = made
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    for args in (("template", truncated, science, "-o", tmp_path / "t.fits"), ("export", truncated, "--fits", tmp_path),
                 ("evaluate", truncated, science), ("inspect", truncated)):  # fmt: skip
        _one_line_error(args, truncated, "not a readable mpidcr model file")


def test_model_without_its_grid(made, tmp_path):
    _, _, science = made
    edited = _model_copy(made, tmp_path, lambda f: f.attrs.__delitem__("wcs_header"))
    _one_line_error(("template", edited, science, "-o", tmp_path / "t.fits"), edited, "'wcs_header' missing")


def test_model_with_a_garbled_wcs(made, tmp_path):
    """astropy's warnings about the cards are not printed (a real process: astropy's logger keeps
    the stderr it started with): one line."""
    _, _, science = made
    edited = _model_copy(made, tmp_path, lambda f: f.attrs.__setitem__("wcs_header", "garbage"))
    proc = subprocess.run([sys.executable, "-m", "mpidcr", "-q", "template", str(edited), str(science), "-o",
                           str(tmp_path / "t.fits")], capture_output=True, text=True)  # fmt: skip
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1, err
    assert err[0].startswith(f"mpidcr: error: {edited}") and "no celestial WCS" in err[0], err


def test_export_into_a_file(made, tmp_path):
    _, model, science = made
    _one_line_error(("export", model, "--fits", science), science, "is not a directory")


def test_evaluate_truth_files(made, tmp_path):
    out, model, science = made
    _one_line_error(("evaluate", model, science, "--truth", tmp_path / "none.npz"), "none.npz: truth file not found")
    _one_line_error(("evaluate", model, science, "--truth", science), science, "not an .npz archive")
    partial = tmp_path / "partial.npz"
    np.savez(partial, star_y=np.zeros(3))
    _one_line_error(("evaluate", model, science, "--truth", partial), partial, "no star_x")
    # the simulation's own truth file is accepted
    code, _, err = run_cli("evaluate", model, science, "--truth", out / "field" / "truth.npz")
    assert code == 0, err


@pytest.mark.parametrize("edit, phrase", [
    (lambda h: [setattr(h[e], "data", h[e].data[:30, :30]) for e in ("IMAGE", "MASK", "VARIANCE")],
     "shape 30x30 differs from the model's 64x64"),
    (lambda h: setattr(h["IMAGE"], "data", h["IMAGE"].data * np.nan), "no usable pixel to difference"),
])  # fmt: skip
def test_evaluate_science_warps(made, tmp_path, edit, phrase):
    _, model, science = made
    bad = tmp_path / "science.fits"
    with fits.open(science) as hdul:
        edit(hdul)
        hdul.writeto(bad)
    _one_line_error(("evaluate", model, bad), bad, phrase)


@pytest.mark.parametrize("options, phrase", [
    (("--airmass-min", "2", "--airmass-max", "1.5"), "need 1 <= min <= max"),
    (("--airmass-max", "40"), "elevation >= 10 deg"),
    (("--seeing", "-1"), "--seeing -1 arcsec is outside the physical range"),
    (("--seeing", "0.8", "--seeing-max", "0.7"), "--seeing-max 0.7 is below --seeing 0.8"),
    (("--science", "-1"), "--science -1: must not be negative"),
    (("--stars", "0"), "--stars 0: at least 1"),
    (("--satellites", "1.5"), "a fraction of the visits"),
])  # fmt: skip
def test_simulate_ranges(tmp_path, options, phrase):
    _one_line_error(("simulate", tmp_path / "sim", "--engine", "numpy", "--size", "32", *options), phrase)
    assert not (tmp_path / "sim" / "manifest.toml").exists()


def test_simulate_seeing_above_the_default_maximum(tmp_path):
    """--seeing alone above the default --seeing-max (1.1) means constant seeing, not an error."""
    code, _, err = run_cli("simulate", tmp_path / "sim", "--engine", "numpy", "--size", "32", "--visits", "2",
                           "--science", "0", "--seeing", "1.3")  # fmt: skip
    assert code == 0, err


def test_negative_template_border(made):
    """--border grows the science exposure's bbox: a negative one is refused (it shrank the grid
    until numpy failed on a negative shape)."""
    from mpidcr.errors import InputError
    from mpidcr.io.detector import output_grid
    from mpidcr.io.warps import scan_warp

    _, _, science = made
    info = scan_warp(science, {"airmass": 1.0, "parallacticAngle": 0.0})
    _, shape, xy0 = output_grid(info, 3)
    assert shape == (info.shape[0] + 6, info.shape[1] + 6) and xy0 == (info.xy0[0] - 3, info.xy0[1] - 3)
    with pytest.raises(InputError, match="border -1: the template grows"):
        output_grid(info, -1)


def test_inspect_json_is_strict(made):
    """A model's history starts with an iteration without a gain: null in --json, not a bare NaN."""
    import json

    _, model, _ = made
    code, out, err = run_cli("inspect", model, "--json")
    assert code == 0, err
    parsed = json.loads(out, parse_constant=lambda c: pytest.fail(f"bare {c} in --json"))
    assert parsed
