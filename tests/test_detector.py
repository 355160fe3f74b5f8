"""Templates on a science exposure's own pixels (rotated 30°, offset, across two patches), checked
against an independent resampling, for flux, and for a step at the patch boundary."""

from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from mpidcr.cli import main
from mpidcr.dcr import Site
from mpidcr.io.detector import edge_width, patch_template
from mpidcr.io.modelfile import read_model
from mpidcr.io.warps import mask_planes_from_header, scan_warp, write_lsst_warp
from mpidcr.sim.simulate import simulate

#: the two patches' columns of the simulated 256² field (overlapping by 32)
PATCHES = {"A": (0, 144), "B": (112, 256)}
SCIENCE_SHAPE = (100, 120)


def _cli(*args):
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(["-q", *map(str, args)])
    return code, err.getvalue()


def _copy_primary(source: fits.Header, path: Path) -> None:
    with fits.open(path, mode="update") as out:
        for card in source.cards:
            if card.keyword not in ("SIMPLE", "BITPIX", "NAXIS", "EXTEND", "COMMENT", ""):
                out[0].header[card.keyword] = card.value


@pytest.fixture(scope="module")
def tract(tmp_path_factory):
    """A 256² field cut into two overlapping patches (their own WCS and xy0), a model of each and of
    the whole field, and a science exposure on a WCS rotated by 30° and offset, across the boundary."""
    out = tmp_path_factory.mktemp("tract")
    info = simulate(out / "full", size=256, num_visits=10, num_science=1, seed=9, engine="numpy")
    band = (out / "full" / "manifest.toml").read_text().split("[[warps]]")[0]
    for name, (x0, x1) in PATCHES.items():
        (out / name / "warps").mkdir(parents=True)
        lines = [band]
        for w in info["warps"]:
            with fits.open(w) as h:
                header = h["IMAGE"].header.copy()
                header["CRPIX1"] -= x0
                path = out / name / "warps" / Path(w).name
                write_lsst_warp(path, h["IMAGE"].data[:, x0:x1], h["VARIANCE"].data[:, x0:x1], h["MASK"].data[:, x0:x1],
                                mask_planes_from_header(h["MASK"].header), {}, header, psf=h["PSF"].data, xy0=(x0, 0))  # fmt: skip
                _copy_primary(h[0].header, path)
            lines += ["[[warps]]", f'path = "warps/{Path(w).name}"', ""]
        (out / name / "manifest.toml").write_text("\n".join(lines))
    for name in ("A", "B", "full"):
        assert _cli("run", out / name / "manifest.toml", "-o", out / f"{name}.h5")[0] == 0
    # the science exposure: the first science visit's conditions, on a WCS rotated by 30° about the
    # full field's pixel (128, 120) and put at its own pixel (60, 50) with xy0 (1000, 2000)
    with fits.open(info["science"][0]) as h:
        primary, wcs = h[0].header.copy(), WCS(h["IMAGE"].header).celestial
    angle = math.radians(30.0)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    science = WCS(naxis=2)
    science.wcs.ctype = list(wcs.wcs.ctype)
    science.wcs.cd = wcs.pixel_scale_matrix @ rotation
    science.wcs.crval = [float(v) for v in wcs.all_pix2world(128.0, 120.0, 0)]
    science.wcs.crpix = [61.0, 51.0]
    ny, nx = SCIENCE_SHAPE
    path = out / "science.fits"
    write_lsst_warp(path, np.zeros((ny, nx)), np.ones((ny, nx)), np.zeros((ny, nx), np.int32), {"NO_DATA": 8}, {},
                    science.to_header(), xy0=(1000, 2000))  # fmt: skip
    _copy_primary(primary, path)
    return out, science


#: points per science pixel side of the independent resampling
SUBSAMPLE = 16


def _resampled(model_path: Path, science: WCS, info, margin: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The independent path: a patch's template on its grid (piecewise constant over its pixels),
    averaged over 16×16 points of every science pixel mapped back with astropy's WCS; (template,
    variance, usable: all points on the patch, ``margin`` pixels from its edges)."""
    model = read_model(str(model_path))
    template, variance = patch_template(model, info, None, Site())
    wcs = WCS(fits.Header.fromstring(model.attrs["wcs_header"])).celestial
    yy, xx = np.mgrid[0 : SCIENCE_SHAPE[0], 0 : SCIENCE_SHAPE[1]]
    offsets = (np.arange(SUBSAMPLE) + 0.5) / SUBSAMPLE - 0.5
    t, v = np.zeros(SCIENCE_SHAPE), np.zeros(SCIENCE_SHAPE)
    usable = np.ones(SCIENCE_SHAPE, bool)
    ny, nx = template.shape
    for dy in offsets:
        for dx in offsets:
            x, y = wcs.all_world2pix(*science.all_pix2world(xx + dx, yy + dy, 0), 0)
            ix, iy = np.rint(x).astype(int), np.rint(y).astype(int)
            usable &= (ix >= margin) & (ix < nx - margin) & (iy >= margin) & (iy < ny - margin)
            ix, iy = np.clip(ix, 0, nx - 1), np.clip(iy, 0, ny - 1)
            t += np.nan_to_num(template[iy, ix]) / SUBSAMPLE**2
            v += np.nan_to_num(variance[iy, ix], nan=1e30) / SUBSAMPLE**2
    return t, v, usable


def test_detector_template_equals_an_independent_resampling(tract, tmp_path):
    out, science = tract
    code, err = _cli("template", out / "A.h5", out / "B.h5", out / "science.fits", "-o", tmp_path / "t.fits")
    assert code == 0, err
    with fits.open(tmp_path / "t.fits") as h:
        image, variance, mask = h["IMAGE"].data.astype(np.float64), h["VARIANCE"].data, h["MASK"].data
        header = h["IMAGE"].header
        assert "PSF" in h and (header["CRVAL1A"], header["CRVAL2A"]) == (1000, 2000)
    assert image.shape == SCIENCE_SHAPE and np.all(np.isfinite(image)) and not mask.any()
    info = scan_warp(out / "science.fits")
    margin = edge_width(read_model(str(out / "A.h5"))) + 1
    parts = [_resampled(out / f"{name}.h5", science, info, margin) for name in ("A", "B")]
    weights = [np.where(u, v**-0.5, 0.0) for _, v, u in parts]
    reference = sum(w * t for w, (t, _, _) in zip(weights, parts, strict=True)) / sum(weights)
    noise = np.sqrt(np.median(variance))
    # both patches cover the boundary region; each alone its own side
    assert parts[0][2].any() and parts[1][2].any() and (parts[0][2] & parts[1][2]).any()
    inner = np.zeros(SCIENCE_SHAPE, bool)
    inner[2:-2, 2:-2] = True
    difference = (image - reference)[inner] / noise
    assert np.sqrt(np.mean(difference**2)) < 0.3 and np.max(np.abs(difference)) < 3.0


def test_detector_template_conserves_flux_and_has_no_step(tract, tmp_path):
    """Against the whole field's model (no patch boundary): the template's counts over its inner
    pixels equal the integral of the patch-grid template over the same sky to 0.1 %, and no step
    between the columns of patch A, the overlap and patch B."""
    out, science = tract
    assert _cli("template", out / "full.h5", out / "science.fits", "-o", tmp_path / "w.fits")[0] == 0
    assert _cli("template", out / "A.h5", out / "B.h5", out / "science.fits", "-o", tmp_path / "t.fits")[0] == 0
    whole_image = fits.getdata(tmp_path / "w.fits", "IMAGE").astype(np.float64)
    with fits.open(tmp_path / "t.fits") as h:
        image, noise = h["IMAGE"].data.astype(np.float64), np.sqrt(np.median(h["VARIANCE"].data))
    info = scan_warp(out / "science.fits")
    model = read_model(str(out / "full.h5"))
    template, _ = patch_template(model, info, None, Site())
    wcs = WCS(fits.Header.fromstring(model.attrs["wcs_header"])).celestial
    # the patch template's integral over the science pixels [m, n − m): each patch pixel's
    # 8×8 sub-pixels counted where they fall
    m, ny, nx = 5, *SCIENCE_SHAPE
    py, px = np.mgrid[0 : template.shape[0], 0 : template.shape[1]]
    integral = 0.0
    for dy in (np.arange(8) + 0.5) / 8 - 0.5:
        for dx in (np.arange(8) + 0.5) / 8 - 0.5:
            x, y = science.all_world2pix(*wcs.all_pix2world(px + dx, py + dy, 0), 0)
            inside = (x >= m - 0.5) & (x < nx - m - 0.5) & (y >= m - 0.5) & (y < ny - m - 0.5)
            integral += np.nansum(np.where(inside, template, 0.0)) / 64
    assert whole_image[m : ny - m, m : nx - m].sum() == pytest.approx(integral, rel=1e-3)
    # columns of the whole field: A alone (x < 112), the overlap (112–144), B alone (x ≥ 144)
    yy, xx = np.mgrid[0:ny, 0:nx]
    x_full, _ = wcs.all_world2pix(*science.all_pix2world(xx, yy, 0), 0)
    steps = [float(np.median((image - whole_image)[(x_full >= lo) & (x_full < hi)]))
             for lo, hi in ((96, 112), (112, 144), (144, 160))]  # fmt: skip
    assert max(steps) - min(steps) < noise


def test_template_errors(tract, tmp_path):
    out, _ = tract
    code, err = _cli("template", out / "A.h5", out / "B.h5", "-o", tmp_path / "t.fits", "--airmass", "1.2")
    assert code == 2 and "several models need the science exposure" in err
    far = tmp_path / "far.fits"
    with fits.open(out / "science.fits") as h:
        h["IMAGE"].header["CRVAL1"] += 1.0
        h.writeto(far)
    code, err = _cli("template", out / "A.h5", far, "-o", tmp_path / "f.fits")
    assert code == 2 and "none of the 1 models' patches overlaps it" in err
