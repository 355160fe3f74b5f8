"""The static model T as an input (--static-model, manifest static_model), and the LSST fields that
act on the inputs and outputs: select.maxPsfFwhm and doNImage."""

import shutil

import h5py
import numpy as np
import pytest
from astropy.io import fits
from cli_runner import run_cli

from mpidcr.config import DcrConfig
from mpidcr.driver import inputs_from_manifest
from mpidcr.io.manifest import read_manifest
from mpidcr.io.static import read_static_window, scan_static
from mpidcr.io.warps import mask_planes_from_header, write_lsst_warp
from mpidcr.sim.simulate import simulate
from mpidcr.tiling import Box


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    out = tmp_path_factory.mktemp("static")
    info = simulate(out, size=64, num_visits=5, num_science=0, seed=3, engine="numpy")
    return out, info


def _static_from(warp, path, scale=1.0, extra_plane=None, shape=None):
    """A deepCoadd-layout T copied from one warp's pixels (image × scale), optionally with a plane
    the warps do not have, or cut to another shape."""
    with fits.open(warp) as hdul:
        planes = mask_planes_from_header(hdul["MASK"].header)
        image, variance, mask = (hdul[e].data.copy() for e in ("IMAGE", "VARIANCE", "MASK"))
        wcs = hdul["IMAGE"].header
    if extra_plane:
        planes = {**planes, extra_plane: 20}
        mask[0, :] |= 1 << 20
    if shape:
        image, variance, mask = (a[: shape[0], : shape[1]] for a in (image, variance, mask))
    write_lsst_warp(path, image * scale, variance, mask, planes, {}, wcs)
    return path


def test_static_model_is_read_as_given(field, tmp_path):
    out, info = field
    T = _static_from(info["warps"][0], tmp_path / "T.fits", scale=2.0, extra_plane="INEXACT_T")
    cfg = DcrConfig(effectiveWavelength=476.31, bandwidth=147.0)
    inputs = inputs_from_manifest(read_manifest(out / "manifest.toml"), cfg, static_model=str(T))
    assert "INEXACT_T" in inputs.mask_planes and str(T) in inputs.files()
    static = read_static_window(inputs.static, Box(0, 10, 3, 20), inputs.mask_planes)
    expected = 2.0 * fits.getdata(info["warps"][0], "IMAGE")[0:10, 3:20]
    assert np.allclose(static.image, expected) and static.image.dtype == np.float64
    # T's own plane, renumbered into the run's planes, on row 0 only
    bit = 1 << inputs.mask_planes["INEXACT_T"]
    assert np.all(static.mask[0] & bit) and not np.any(static.mask[1:] & bit)


def test_run_starts_from_the_given_static_model(field, tmp_path):
    """With T given, the output's static model, mask and variance are T's, and the iteration starts
    from T/K (a T twice as bright gives a model twice as bright where nothing constrains it)."""
    out, info = field
    T = _static_from(info["warps"][0], tmp_path / "T.fits", scale=1.0)
    model = tmp_path / "m.h5"
    code, _, err = run_cli("run", out / "manifest.toml", "-o", model, "--static-model", T)
    assert code == 0, err
    with h5py.File(model, "r") as f, fits.open(T) as hdul:
        assert np.allclose(f["coadd/static"][...], hdul["IMAGE"].data)
        assert np.allclose(f["coadd/variance"][...], hdul["VARIANCE"].data)
        assert f.attrs["static_model"] == str(T)


def test_an_earlier_model_file_can_be_the_static_model(field, tmp_path):
    out, _ = field
    first = tmp_path / "first.h5"
    assert run_cli("run", out / "manifest.toml", "-o", first)[0] == 0
    info = scan_static(str(first))
    assert info.kind == "hdf5" and info.shape == (64, 64)
    second = tmp_path / "second.h5"
    code, _, err = run_cli("run", out / "manifest.toml", "-o", second, "--static-model", first)
    assert code == 0, err
    with h5py.File(first, "r") as a, h5py.File(second, "r") as b:
        assert np.array_equal(a["coadd/static"][...], b["coadd/static"][...])


def test_manifest_names_the_static_model(field, tmp_path):
    out, info = field
    shutil.copytree(out, tmp_path / "f")
    T = _static_from(info["warps"][0], tmp_path / "f" / "T.fits")
    manifest = tmp_path / "f" / "manifest.toml"
    manifest.write_text('static_model = "T.fits"\n' + manifest.read_text())
    assert read_manifest(manifest).static_model == str(T)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda w, p: _static_from(w, p, shape=(60, 64)), "static model is 60x64, the warps"),
        (lambda w, p: p.write_bytes(b"SIMPLE  = T" + b" " * 2869), "--static-model"),
        (lambda w, p: None, "file not found"),
    ],
)
def test_bad_static_model_is_one_line(field, tmp_path, make, message):
    out, info = field
    T = tmp_path / "T.fits"
    make(info["warps"][0], T)
    code, _, err = run_cli("run", out / "manifest.toml", "-o", tmp_path / "m.h5", "--static-model", T)
    assert code == 2 and len(err) == 1 and str(T) in err[0] and message in err[0], err
    assert not (tmp_path / "m.h5").exists()


def test_static_model_with_nan_is_refused(field, tmp_path):
    out, info = field
    T = _static_from(info["warps"][0], tmp_path / "T.fits")
    with fits.open(T, mode="update") as hdul:
        hdul["IMAGE"].data[5, 7] = np.nan
    code, _, err = run_cli("run", out / "manifest.toml", "-o", tmp_path / "m.h5", "--static-model", T)
    assert code == 2 and len(err) == 1 and "non-finite" in err[0] and "(5, 7)" in err[0], err


def test_do_nimage_false_writes_no_counts(field, tmp_path):
    out, _ = field
    on, off = tmp_path / "on.h5", tmp_path / "off.h5"
    assert run_cli("run", out / "manifest.toml", "-o", on)[0] == 0
    assert run_cli("run", out / "manifest.toml", "-o", off, "--set", "doNImage=false")[0] == 0
    with h5py.File(on, "r") as a, h5py.File(off, "r") as b:
        assert "nimage" in a and "nimage_total" in a
        assert "nimage" not in b and "nimage_total" not in b
        assert np.array_equal(a["model"][...], b["model"][...])
    assert run_cli("export", off, "--fits", tmp_path / "fits")[0] == 0


def test_max_psf_fwhm_leaves_out_wide_visits(field, tmp_path):
    out, _ = field
    shutil.copytree(out, tmp_path / "f")
    wide = sorted((tmp_path / "f" / "warps").glob("*.fits"))[0]
    with fits.open(wide, mode="update") as hdul:
        hdul[0].header["HIERARCH PSF-FWHM"] = 1.4
    cfg = DcrConfig(effectiveWavelength=476.31, bandwidth=147.0, select={"maxPsfFwhm": 1.0})
    inputs = inputs_from_manifest(read_manifest(tmp_path / "f" / "manifest.toml"), cfg)
    assert len(inputs.infos) == 4 and str(wide) not in [i.path for i in inputs.infos]
    code, _, err = run_cli("run", tmp_path / "f" / "manifest.toml", "-o", tmp_path / "m.h5", "--set",
                     "select.maxPsfFwhm=0.1")  # fmt: skip
    assert code == 2 and "leaves 0 of 5 visits" in err[-1]
