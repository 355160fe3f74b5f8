"""Files written by LSST's afw, read as afw reads them (EXTTYPE, archive HDUs, uint16 masks with
BZERO, xy0, tile compression, its visit metadata), and products LSST tools can read (dcrCoadd)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import h5py
import numpy as np
import pytest
from astropy.io import fits
from astropy.time import Time

from mpidcr.cli import main
from mpidcr.errors import InputError
from mpidcr.io.warps import check_consistent, read_window, scan_warp
from mpidcr.io.wcs import same_wcs
from mpidcr.tiling import Box

AFW = Path(__file__).resolve().parents[2] / "shared" / "data" / "afw"
HSC = AFW / "HSC-0908120-056-small.fits"
V2 = AFW / "exposure-version-2.fits"
needs_afw = pytest.mark.skipif(not HSC.exists(), reason="../shared/data/afw/ is absent")
POINTING = {"airmass": 1.3, "parallacticAngle": 35.0}


def _cli(*args):
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(["-q", *map(str, args)])
    return code, err.getvalue()


@needs_afw
def test_hsc_calexp_reads_as_astropy_sees_its_hdus():
    """No EXTNAME: IMAGE/MASK/VARIANCE found by EXTTYPE, archive HDUs skipped, the uint16 mask with
    BZERO 32768 and its MP_* planes, the TAN-SIP WCS and xy0 (from the A WCS / LTV)."""
    info = scan_warp(HSC, POINTING)
    with fits.open(HSC) as hdul:
        assert all("EXTNAME" not in h.header for h in hdul[1:])
        image, mask, variance = hdul[1].data, hdul[2].data, hdul[3].data
        header = hdul[1].header
        assert mask.dtype == np.uint16 and hdul[2].header["BZERO"] == 32768
        planes = {k[3:]: v for k, v in hdul[2].header.items() if k.startswith("MP_")}
    assert info.hdus == {"IMAGE": 1, "MASK": 2, "VARIANCE": 3} and info.shape == (200, 200)
    assert info.mask_planes == planes and "DETECTED" in planes
    assert info.xy0 == (round(header["CRVAL1A"]), round(header["CRVAL2A"])) == (-round(header["LTV1"]), -round(header["LTV2"]))
    assert same_wcs(info.wcs_header, header.tostring())
    img, var, msk = read_window(info, Box(0, 200, 0, 200), dict(info.mask_planes))
    assert np.array_equal(img, image) and np.array_equal(var, variance) and np.array_equal(msk, mask.astype(np.int32))
    window = read_window(info, Box(50, 90, 120, 170), dict(info.mask_planes))[2]
    assert np.array_equal(window, mask[50:90, 120:170].astype(np.int32))


@needs_afw
def test_exposure_version_2_metadata_as_afw_writes_it():
    """afw's primary-header visit keys: EXPID as the visit id (no IDNUM here), DATE-AVG in TAI as
    the time, BORE-RA/BORE-DEC, OBS-*; an impossible header value (OBS-LAT = 123.45 in afw's test
    file) is one line naming it, and a manifest override replaces it."""
    with pytest.raises(InputError, match=r"exposure-version-2.fits: header keyword OBS-LAT \(latitude\) = 123.45"):
        scan_warp(V2)
    info = scan_warp(V2, {"latitude": -30.0, **POINTING})
    assert info.visit == "12345" and info.xy0 == (0, 0)
    assert info.meta["latitude"] == -30.0 and info.meta["longitude"] == -12.345 and info.meta["height"] == 2000.0
    assert info.meta["ra"] == 30.0 and info.meta["dec"] == 40.0
    expected = Time("2020-01-20T12:34:56", format="isot", scale="tai").utc.mjd
    assert info.meta["mjd"] == pytest.approx(expected, abs=1e-9)
    img = read_window(info, Box(0, 10, 0, 10), dict(info.mask_planes))[0]
    assert np.array_equal(img, fits.getdata(V2, 1))


def _copies(tmp_path, n=4):
    """Copies of the HSC calexp as the visits of one patch, each with its own noise and IDNUM."""
    rng = np.random.default_rng(3)
    paths = []
    for v in range(n):
        with fits.open(HSC) as hdul:
            hdul[0].header["IDNUM"] = 900 + v
            hdul[1].data = hdul[1].data + rng.normal(0, 1, hdul[1].data.shape).astype(np.float32)
            hdul.writeto(tmp_path / f"calexp{v}.fits")
        paths.append(tmp_path / f"calexp{v}.fits")
    return paths


@needs_afw
def test_a_run_on_copies_of_the_hsc_file_with_manifest_metadata(tmp_path):
    paths = _copies(tmp_path)
    lines = ["[band]", "effectiveWavelength = 616.0", "bandwidth = 140.0", ""]
    for v, p in enumerate(paths):
        lines += ["[[warps]]", f'path = "{p.name}"', f"airmass = {1.1 + 0.2 * v}", f"parallacticAngle = {-60 + 40 * v}", ""]
    (tmp_path / "manifest.toml").write_text("\n".join(lines))
    code, err = _cli("run", tmp_path / "manifest.toml", "-o", tmp_path / "m.h5")
    assert code == 0, err
    with h5py.File(tmp_path / "m.h5") as f:
        assert f.attrs["complete"] and list(f.attrs["xy0"]) == [100, 100]
        assert sorted(v.decode() for v in f["visits"]["visit"]) == ["900", "901", "902", "903"]
        assert np.isfinite(f["model"][...]).all()
    # without the pointing, one line names the missing key
    lines = ["[band]", "effectiveWavelength = 616.0", "bandwidth = 140.0", ""]
    lines += [x for p in paths for x in ("[[warps]]", f'path = "{p.name}"', "")]
    (tmp_path / "bare.toml").write_text("\n".join(lines))
    code, err = _cli("run", tmp_path / "bare.toml", "-o", tmp_path / "n.h5")
    assert code == 2 and "calexp0.fits: no elevation (BORE-ALT), no airmass (BORE-AIRMASS)" in err


@needs_afw
def test_tile_compressed_and_bbox_checks(tmp_path):
    """An fpack-style tile-compressed copy reads the same; warps whose bbox origin differs are
    refused naming both files."""
    with fits.open(HSC) as hdul:
        hdus = [fits.PrimaryHDU(header=hdul[0].header)]
        for i in (1, 2, 3):
            data = hdul[i].data.astype(np.int32) if i == 2 else hdul[i].data
            lossless = {"compression_type": "RICE_1"} if i == 2 else {"compression_type": "GZIP_2", "quantize_level": 0}
            comp = fits.CompImageHDU(data, header=hdul[i].header, **lossless)
            hdus.append(comp)
        fits.HDUList(hdus).writeto(tmp_path / "calexp.fits.fz")
    packed, plain = scan_warp(tmp_path / "calexp.fits.fz", POINTING), scan_warp(HSC, POINTING)
    a = read_window(packed, Box(20, 60, 30, 90), dict(plain.mask_planes))
    b = read_window(plain, Box(20, 60, 30, 90), dict(plain.mask_planes))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    with fits.open(HSC) as hdul:
        for i in (1, 2, 3):
            hdul[i].header["CRVAL1A"] = 300
            hdul[i].header["LTV1"] = -300
        hdul.writeto(tmp_path / "moved.fits")
    moved = scan_warp(tmp_path / "moved.fits", POINTING)
    with pytest.raises(InputError, match=r"moved.fits: bbox origin xy0 \(300, 100\) differs from .*HSC-0908120-056"):
        check_consistent([plain, moved])


def test_export_is_afw_layout_and_reads_back(tmp_path):
    """dcrCoadd_subfilter<k> and dcrCoadd_nImage_subfilter<k>: EXTNAME and EXTTYPE, MP_* planes,
    the WCS and xy0; they read back through mpidcr's reader, and the coadd serves as a static model."""
    from mpidcr.sim.simulate import simulate

    info = simulate(tmp_path / "f", size=64, num_visits=5, num_science=0, seed=4, engine="numpy")
    assert _cli("run", tmp_path / "f" / "manifest.toml", "-o", tmp_path / "m.h5")[0] == 0
    assert _cli("export", tmp_path / "m.h5", "--fits", tmp_path / "x")[0] == 0
    with h5py.File(tmp_path / "m.h5") as f:
        model, nimage, mask = f["model"][...], f["nimage"][...], f["coadd/mask"][...]
    for k in range(model.shape[0]):
        path = tmp_path / "x" / f"m_dcrCoadd_subfilter{k}.fits"
        with fits.open(path) as hdul:
            assert [h.header.get("EXTTYPE") for h in hdul[1:4]] == ["IMAGE", "MASK", "VARIANCE"]
            assert [h.name for h in hdul[1:4]] == ["IMAGE", "MASK", "VARIANCE"]
            assert hdul[1].header["CRVAL1A"] == 0 and hdul[1].header["LTV1"] == 0
        back = scan_warp(path, POINTING)
        img, _, msk = read_window(back, Box(0, 64, 0, 64), dict(back.mask_planes))
        assert np.array_equal(img, model[k]) and np.array_equal(msk, mask)
        assert np.array_equal(fits.getdata(tmp_path / "x" / f"m_dcrCoadd_nImage_subfilter{k}.fits"), nimage[k])
    code, err = _cli("run", tmp_path / "f" / "manifest.toml", "-o", tmp_path / "s.h5", "--static-model",
                     tmp_path / "x" / "m_coadd.fits")  # fmt: skip
    assert code == 0, err
    assert info["warps"]


def test_unquoted_warps_list_and_empty_detected_plane(tmp_path):
    """``--warps warps/*.fits`` expanded by the shell is a list; a DETECTED plane that exists but is
    empty in every warp falls back to detection on the static model (with the usual notice)."""
    from mpidcr.sim.simulate import simulate

    info = simulate(tmp_path / "f", size=64, num_visits=5, num_science=0, seed=6, engine="numpy")
    for path in info["warps"]:
        with fits.open(path, mode="update") as hdul:
            hdul["MASK"].data[:] &= ~np.int32(1 << int(hdul["MASK"].header["MP_DETECTED"]))
    proc = __import__("subprocess").run(
        [__import__("sys").executable, "-m", "mpidcr", "run", "--warps", *info["warps"], "--effective-wavelength",
         "476.31", "--bandwidth", "147", "-o", str(tmp_path / "m.h5")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "no input pixel carries DETECTED" in proc.stderr
    with h5py.File(tmp_path / "m.h5") as f:
        assert f.attrs["iterations"] >= 2 and f.attrs["stop_reason"] != "zero_metric"
