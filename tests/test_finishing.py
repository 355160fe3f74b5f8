"""The LSST coadd's finishing steps and mask propagation: doInterp, doMaskBrightObjects (and the
region files), doCalculatePsf, scaleZeroPoint, REJECTED/CLIPPED/SENSOR_EDGE/INEXACT_PSF."""

from __future__ import annotations

import contextlib
import io

import h5py
import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from mpidcr.cli import main
from mpidcr.coadd import propagate_rejections
from mpidcr.errors import InputError
from mpidcr.finishing import Circle, SkyBox, fallback_value, interpolate_rows, region_mask
from mpidcr.io.regions import parse_regions
from mpidcr.masks import DEFAULT_PLANES
from mpidcr.sim.simulate import simulate


def _cli(*args):
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(["-q", *map(str, args)])
    return code, err.getvalue()


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    out = tmp_path_factory.mktemp("finishing")
    info = simulate(out, size=64, num_visits=6, num_science=0, seed=11, engine="numpy")
    return out, info


# ----------------------------------------------------------------------------- doInterp
def test_interpolate_rows_linear_one_sided_and_fallback():
    plane = np.array([[1.0, 9.0, 9.0, 4.0, 5.0], [9.0, 2.0, 3.0, 9.0, 9.0], [9.0, 9.0, 9.0, 9.0, 9.0]])
    missing = np.array([[0, 1, 1, 0, 0], [1, 0, 0, 1, 1], [1, 1, 1, 1, 1]], bool)
    out = interpolate_rows(plane, missing, fallback=-7.0)
    assert np.allclose(out[0], [1, 2, 3, 4, 5])  # linear between the good pixels on each side
    assert np.allclose(out[1], [2, 2, 3, 3, 3])  # one-sided at the edges: the nearest good value
    assert np.allclose(out[2], -7.0)  # nothing in the row: the fallback
    assert fallback_value(np.array([[-5.0, -3.0, 100.0]]), np.array([[0, 0, 1]], bool)) == 0.0  # median ≥ 0


def test_do_interp_fills_no_data_with_intrp_and_infinite_variance(field, tmp_path):
    """Warps with a NaN block in every visit: the model is undetermined there (NO_DATA); doInterp
    fills each plane row by row, sets INTRP and makes the variance infinite."""
    _, info = field
    warps = []
    for i, path in enumerate(info["warps"]):
        with fits.open(path) as hdul:
            hdul["IMAGE"].data[20:30, 10:40] = np.nan
            hdul.writeto(tmp_path / f"w{i}.fits")
        warps.append(str(tmp_path / f"w{i}.fits"))
    base = ["--effective-wavelength", "476.31", "--bandwidth", "147.0"]
    runs = {}
    for flag in ("true", "false"):
        model = tmp_path / f"m-{flag}.h5"
        code, err = _cli("run", "--warps", *warps, *base, "-o", model, "--set", f"doInterp={flag}")
        assert code == 0, err
        with h5py.File(model) as f:
            planes = {k[3:]: int(v) for k, v in f["coadd/mask"].attrs.items() if k.startswith("MP_")}
            runs[flag] = (f["model"][...], f["coadd/mask"][...], f["coadd/variance"][...], planes)
    model, mask, variance, planes = runs["true"]
    raw, raw_mask, raw_variance, _ = runs["false"]
    # no visit covers these: NO_DATA with infinite variance (NO_DATA where the DCR model is only
    # undetermined, near the edges, keeps its values)
    nodata = ((raw_mask & (1 << planes["NO_DATA"])) != 0) & ~np.isfinite(raw_variance)
    assert nodata[20:30, 10:40].all() and nodata.sum() < 400
    intrp = (mask & (1 << planes["INTRP"])) != 0
    assert np.array_equal(intrp, nodata) and np.all(np.isinf(variance[nodata]))
    for k in range(model.shape[0]):
        row = 24
        good = ~nodata[row]
        x = np.arange(model.shape[2])
        expected = np.interp(x[~good], x[good], raw[k, row, good])
        assert np.allclose(model[k, row, ~good], expected, rtol=1e-5, atol=1e-6)
        assert np.array_equal(model[k][~nodata], raw[k][~nodata])  # nothing else changes


# ----------------------------------------------------------------------------- bright objects
def test_region_files_as_lsst_and_ds9_write_them():
    text = """# BRIGHT STAR CATALOG: test
# PATCH: 5,4
wcs; fk5
circle(150.0, 2.0, 36")  # ID: 1, mag: 9.0
box(150.01,2.01,72",36",30.0)  # ID: 2, mag: 10
fk5; circle(10:00:00.0, +02:00:00, 0.5')
"""
    regions = parse_regions(text, "bright.reg")
    assert regions[0] == Circle(150.0, 2.0, 0.01)
    assert regions[1] == SkyBox(150.01, 2.01, 0.02, 0.01, 30.0)
    assert regions[2].ra == pytest.approx(150.0) and regions[2].radius == pytest.approx(0.5 / 60)
    with pytest.raises(InputError, match=r"bright.reg:1: region frame 'image'"):
        parse_regions("image; circle(10, 10, 5)", "bright.reg")
    with pytest.raises(InputError, match=r"bright.reg:2: 'polygon'"):
        parse_regions("fk5\npolygon(1, 2, 3, 4, 5, 6)", "bright.reg")


def test_region_mask_circles_and_rotated_boxes():
    shape = (60, 60)

    def ident(ra, dec):  # (ra, dec) are pixel x, y here; 1 arcsec pixels
        return ra, dec

    circle = region_mask([Circle(30.0, 20.0, 5.0 / 3600)], ident, shape, 1.0)
    yy, xx = np.mgrid[0:60, 0:60]
    assert np.array_equal(circle, (yy - 20) ** 2 + (xx - 30) ** 2 <= 25)
    box = region_mask([SkyBox(30.0, 30.0, 20.0 / 3600, 4.0 / 3600, 90.0)], ident, shape, 1.0)
    assert box[20:41, 30].all() and not box[30, 25] and box.sum() == pytest.approx(21 * 5, abs=6)
    window = region_mask([Circle(30.0, 20.0, 5.0 / 3600)], ident, (10, 10), 1.0, origin=(15, 25))
    assert np.array_equal(window, circle[15:25, 25:35])


def test_do_mask_bright_objects(field, tmp_path):
    out, info = field
    header = fits.getheader(info["warps"][0], "IMAGE")
    ra, dec = WCS(header).celestial.all_pix2world(40.0, 25.0, 0)
    reg = tmp_path / "bright.reg"
    reg.write_text(f"fk5\ncircle({float(ra)}, {float(dec)}, 2.1\")  # ID: 7\n")
    model = tmp_path / "m.h5"
    code, err = _cli("run", out / "manifest.toml", "-o", model, "--bright-object-mask", reg, "--set",
                     "doMaskBrightObjects=true")  # fmt: skip
    assert code == 0, err
    with h5py.File(model) as f:
        mask = f["coadd/mask"][...]
        bit = 1 << int(f["coadd/mask"].attrs["MP_BRIGHT_OBJECT"])
        scale = float(f.attrs["pixel_scale"])
    yy, xx = np.mgrid[0:64, 0:64]
    expected = (yy - 25) ** 2 + (xx - 40) ** 2 <= (2.1 / scale) ** 2
    assert np.array_equal((mask & bit) != 0, expected)
    code, err = _cli("run", out / "manifest.toml", "-o", tmp_path / "n.h5", "--set", "doMaskBrightObjects=true")
    assert code != 0 and "needs the bright-object regions" in err


# ----------------------------------------------------------------------------- doCalculatePsf
def test_do_calculate_psf_measures_the_coadd_psf(field, tmp_path):
    """The simulated warps' pixels replaced by isolated Gaussian stars (σ 1.5 px) and noise: the
    measured coadd PSF has their FWHM; with no star bright enough, modelPsf's Gaussian."""
    _, info = field
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:64, 0:64]
    stars = sum(3000.0 * np.exp(-0.5 * ((yy - y) ** 2 + (xx - x) ** 2) / 1.5**2) / (2 * np.pi * 1.5**2)
                for y, x in [(16, 16), (16, 47), (47, 16), (47, 47)])  # fmt: skip
    warps = []
    for i, path in enumerate(info["warps"]):
        with fits.open(path) as hdul:
            hdul["IMAGE"].data = (stars + rng.normal(size=(64, 64))).astype(np.float32)
            hdul["VARIANCE"].data = np.ones((64, 64), np.float32)
            hdul["MASK"].data = np.zeros((64, 64), np.int32)
            hdul.writeto(tmp_path / f"s{i}.fits")
        warps.append(str(tmp_path / f"s{i}.fits"))
    base = ["--effective-wavelength", "476.31", "--bandwidth", "147.0"]
    model = tmp_path / "m.h5"
    code, err = _cli("run", "--warps", *warps, *base, "-o", model, "--set", "doCalculatePsf=true", "--set",
                     "measurePsf.stampSize=21")  # fmt: skip
    assert code == 0, err
    with h5py.File(model) as f:
        psf, kind, fwhm = f["psf"][...], f["psf"].attrs["kind"], float(f["psf"].attrs["fwhm"])
        scale = float(f.attrs["pixel_scale"])
    assert kind == "measured" and psf.shape == (21, 21) and abs(psf.sum() - 1) < 1e-9
    assert fwhm == pytest.approx(2.3548 * 1.5 * scale, rel=0.1)
    code, err = _cli("run", "--warps", *warps, *base, "-o", tmp_path / "n.h5", "--set", "doCalculatePsf=true",
                     "--set", "detectPsfSources.thresholdSigma=1e9", "--set", "modelPsf.defaultFwhm=0.9")  # fmt: skip
    assert code == 0, err
    with h5py.File(tmp_path / "n.h5") as f:
        assert f["psf"].attrs["kind"] == "model" and float(f["psf"].attrs["fwhm"]) == pytest.approx(0.9, rel=0.02)
    # detectPsfSources.minPixels: a star must cover that many pixels
    code, err = _cli("run", "--warps", *warps, *base, "-o", tmp_path / "p.h5", "--set", "doCalculatePsf=true",
                     "--set", "detectPsfSources.minPixels=400")  # fmt: skip
    with h5py.File(tmp_path / "p.h5") as f:
        assert f["psf"].attrs["kind"] == "model"


# ----------------------------------------------------------------------------- scaleZeroPoint
def test_scale_zero_point(field, tmp_path):
    """A warp stored at another zero point (pixels × 10^(0.4 Δ), MAGZERO + Δ) gives the same model;
    one warp without a zero point among others with one is refused naming it."""
    _, info = field
    warps = []
    for i, path in enumerate(info["warps"]):
        with fits.open(path) as hdul:
            delta = 0.5 * i
            hdul["IMAGE"].data *= np.float32(10 ** (0.4 * delta))
            hdul["VARIANCE"].data *= np.float32(10 ** (0.8 * delta))
            hdul[0].header["MAGZERO"] = 27.0 + delta
            hdul.writeto(tmp_path / f"z{i}.fits")
        warps.append(str(tmp_path / f"z{i}.fits"))
    base = ["--effective-wavelength", "476.31", "--bandwidth", "147.0", "--set", "doRejectArtifacts=false"]
    assert _cli("run", "--warps", *warps, *base, "-o", tmp_path / "z.h5")[0] == 0
    assert _cli("run", "--warps", *info["warps"], *base, "-o", tmp_path / "o.h5")[0] == 0
    with h5py.File(tmp_path / "z.h5") as a, h5py.File(tmp_path / "o.h5") as b:
        assert np.allclose(a["model"][...], b["model"][...], rtol=1e-4, atol=1e-4 * np.abs(b["model"][...]).max())
    with fits.open(warps[2], mode="update") as hdul:
        del hdul[0].header["MAGZERO"]
    code, err = _cli("run", "--warps", *warps, *base, "-o", tmp_path / "y.h5")
    assert code != 0 and f"{warps[2]}: no photometric zero point" in err


# ----------------------------------------------------------------------------- mask propagation
def test_propagate_rejections_as_lssts_coadd():
    p = DEFAULT_PLANES
    bit = {n: 1 << p[n] for n in ("BAD", "SAT", "EDGE", "CLIPPED", "NO_DATA", "REJECTED", "SENSOR_EDGE", "INEXACT_PSF")}
    masks = np.zeros((3, 1, 5), np.int32)
    masks[0, 0, 0] = bit["BAD"]  # left out for BAD: REJECTED
    masks[1, 0, 1] = bit["EDGE"]  # EDGE: SENSOR_EDGE
    masks[2, 0, 2] = bit["CLIPPED"]  # CLIPPED: CLIPPED
    masks[0, 0, 3] = bit["NO_DATA"] | bit["BAD"]  # no data: nothing
    masks[1, 0, 4] = bit["BAD"]  # BAD but used (not in bad_bits here): nothing
    used = np.ones((3, 1, 5), bool)
    used[0, 0, 0] = used[1, 0, 1] = used[2, 0, 2] = used[0, 0, 3] = False
    bad_bits = bit["BAD"] | bit["EDGE"] | bit["CLIPPED"] | bit["NO_DATA"]
    out = propagate_rejections(masks, used, p, bad_bits)[0]
    assert out[0] == bit["REJECTED"] | bit["INEXACT_PSF"]
    assert out[1] == bit["SENSOR_EDGE"] | bit["INEXACT_PSF"]
    assert out[2] == bit["CLIPPED"] | bit["INEXACT_PSF"]
    assert out[3] == 0 and out[4] == 0
