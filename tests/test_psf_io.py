"""Each visit's PSF from its files (HDU, manifest, header, measured), the model's PSFs, templates
and exports with a PSF HDU, --match-psf, and the PSF-matched evaluation with its dipole count."""

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from astropy.io import fits
from cli_runner import run_cli

from mpidcr import psf as P
from mpidcr.analysis.matching import false_sources, match_known
from mpidcr.config import DcrConfig
from mpidcr.errors import InputError
from mpidcr.io.manifest import read_manifest
from mpidcr.io.products import honest_variance
from mpidcr.io.psf import visit_psf
from mpidcr.io.warps import resolve_geometry, scan_warp
from mpidcr.sim.simulate import simulate


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    out = tmp_path_factory.mktemp("psf")
    info = simulate(out, size=80, num_visits=5, num_science=1, seed=6, engine="numpy")
    return out, info


def _strip_psf(path, drop_fwhm=True, extra=None):
    """Rewrite a warp without its PSF HDU (and without PSF-FWHM)."""
    with fits.open(path) as hdul:
        hdus = [hdul[0].copy()] + [hdul[e].copy() for e in ("IMAGE", "MASK", "VARIANCE")]
    if drop_fwhm:
        for key in ("PSF-FWHM", "SEEING", "FWHM"):
            hdus[0].header.remove(key, ignore_missing=True)
    for key, value in (extra or {}).items():
        hdus[0].header[key] = value
    fits.HDUList(hdus).writeto(path, overwrite=True)


def test_psf_sources_in_order(field, tmp_path):
    out, info = field
    warp = info["warps"][0]
    psf = visit_psf(resolve_geometry(scan_warp(warp), read_manifest(out / "manifest.toml").site), 0.2)
    assert psf.source == "hdu" and psf.image.sum() == pytest.approx(1.0)
    plain = tmp_path / "plain.fits"
    shutil.copy(warp, plain)
    _strip_psf(plain, drop_fwhm=False)
    header = visit_psf(resolve_geometry(scan_warp(plain), read_manifest(out / "manifest.toml").site), 0.2)
    assert header.source == "header" and header.profile == "kolmogorov"
    manifest = visit_psf(resolve_geometry(scan_warp(plain, {"psfFwhm": 1.1, "psfProfile": "moffat", "psfBeta": 3.0}),
                                          read_manifest(out / "manifest.toml").site), 0.2)  # fmt: skip
    assert manifest.source == "manifest" and manifest.profile == "moffat" and manifest.fwhm == 1.1
    _strip_psf(plain, extra={"SEEING": 0.9})
    seeing = visit_psf(resolve_geometry(scan_warp(plain), read_manifest(out / "manifest.toml").site), 0.2)
    assert seeing.source == "header" and seeing.fwhm == 0.9
    _strip_psf(plain)
    assert visit_psf(resolve_geometry(scan_warp(plain), read_manifest(out / "manifest.toml").site), 0.2) is None


def test_psf_image_of_impossible_width_is_refused(field, tmp_path):
    """A PSF HDU that is flat (or all noise) measures as tens of arcsec: one line naming the file,
    as for a header's PSF-FWHM, rather than a blur plan too large for memory."""
    out, info = field
    flat = tmp_path / "flat.fits"
    with fits.open(info["warps"][0]) as hdul:
        hdul["PSF"].data = np.ones((201, 201))
        hdul.writeto(flat)
    with pytest.raises(InputError, match=r"flat\.fits: PSF HDU: FWHM = [0-9.]+ arcsec is outside the physical range"):
        visit_psf(resolve_geometry(scan_warp(flat), read_manifest(out / "manifest.toml").site), 0.2)


def test_use_psf_needs_a_psf_for_every_visit(field, tmp_path):
    out, _ = field
    copy = tmp_path / "f"
    shutil.copytree(out, copy)
    bad = sorted((copy / "warps").glob("*.fits"))[1]
    _strip_psf(bad)
    code, _, err = run_cli("run", copy / "manifest.toml", "-o", tmp_path / "m.h5", "--set", "usePsf=true")
    assert code == 2 and len(err) == 1 and str(bad) in err[0] and "usePsf = true needs one for every visit" in err[0]
    # the constant-PSF model runs without it, and writes no /psf
    code, _, err = run_cli("run", copy / "manifest.toml", "-o", tmp_path / "m.h5")
    assert code == 0, err
    with h5py.File(tmp_path / "m.h5") as f:
        assert "psf" not in f and "psf_static" not in f
    # --measure-psf measures it from the stars
    cfg = DcrConfig(effectiveWavelength=476.31, bandwidth=147.0)
    from mpidcr.driver import prepare_inputs

    manifest = read_manifest(copy / "manifest.toml")
    inputs = prepare_inputs(manifest.warps, cfg, manifest.site, measure_psf=True)
    measured = inputs.psfs[[i.path for i in inputs.infos].index(str(bad))]
    assert measured is not None and measured.source == "measured"


def test_model_psfs_products_and_match(field, tmp_path):
    out, info = field
    model = tmp_path / "m.h5"
    assert run_cli("run", out / "manifest.toml", "-o", model, "--set", "usePsf=false")[0] == 0
    with h5py.File(model) as f:
        assert f["psf"].attrs["kind"] == "coadd" and np.isclose(f["psf"][...].sum(), 1.0)
        assert np.array_equal(f["psf"][...], f["psf_static"][...])
        assert np.all(np.isfinite(f["visits"]["psf_fwhm"]))
    template = tmp_path / "t.fits"
    science = info["science"][0]
    assert run_cli("template", model, science, "-o", template)[0] == 0
    with fits.open(template) as hdul, h5py.File(model) as f:
        assert np.array_equal(hdul["PSF"].data, f["psf"][...])
        plain = hdul["IMAGE"].data.copy()
    matched = tmp_path / "tm.fits"
    assert run_cli("template", model, science, "-o", matched, "--match-psf")[0] == 0
    with fits.open(matched) as hdul, fits.open(science) as sci:
        assert np.allclose(hdul["PSF"].data, sci["PSF"].data / sci["PSF"].data.sum(), rtol=1e-12, atol=1e-15)
        assert hdul["IMAGE"].data.sum() == pytest.approx(plain.sum(), rel=1e-3)
    assert run_cli("export", model, "--fits", tmp_path / "x")[0] == 0
    assert all("PSF" in fits.open(p) for p in (tmp_path / "x").glob("*.fits") if "_nImage_" not in p.name)


def test_psf_aware_model_is_automatic_where_every_visit_has_a_psf(field, tmp_path):
    """usePsf unset: the PSF-aware model when every visit has a PSF and they differ; the
    constant-PSF model when one lacks it, when all are the same (every kernel the identity), or
    under LSST's profile; usePsf=false turns it off."""
    from mpidcr.driver import prepare_inputs

    out, _ = field
    cfg = DcrConfig(effectiveWavelength=476.31, bandwidth=147.0)
    same = read_manifest(out / "manifest.toml")  # the field's visits share one PSF
    assert prepare_inputs(same.warps, cfg, same.site).psf_model is None
    assert prepare_inputs(same.warps, DcrConfig(effectiveWavelength=476.31, bandwidth=147.0, usePsf=True),
                          same.site).psf_model is not None  # fmt: skip
    copy = tmp_path / "f"
    shutil.copytree(out, copy)
    warps = sorted((copy / "warps").glob("*.fits"))
    for path, fwhm in zip(warps, (0.6, 0.75, 0.85, 1.0, 1.1), strict=True):
        _strip_psf(path, extra={"PSF-FWHM": fwhm})
    manifest = read_manifest(copy / "manifest.toml")
    aware = prepare_inputs(manifest.warps, cfg, manifest.site).psf_model
    assert aware is not None and len(aware.kernels) == len(manifest.warps) and len(aware.wing_sigmas) == 1
    for changes in ({"usePsf": False}, {"profile": "lsst"}):
        other = DcrConfig(effectiveWavelength=476.31, bandwidth=147.0, **changes)
        assert prepare_inputs(manifest.warps, other, manifest.site).psf_model is None, changes
    _strip_psf(warps[0])
    manifest = read_manifest(copy / "manifest.toml")
    assert prepare_inputs(manifest.warps, cfg, manifest.site).psf_model is None


def test_psf_aware_model_iterates_longer_by_default(field, tmp_path):
    """maxNumIter unset: 3K for the constant-PSF model (the default), at least 30 for the
    PSF-aware one, whose deconvolution keeps improving its templates."""
    out, _ = field
    code, _, err = run_cli("run", out / "manifest.toml", "-o", tmp_path / "aware.h5", "--set", "usePsf=true",
                           "--set", "useConvergence=false")  # fmt: skip
    assert code == 0, err
    code, _, err = run_cli("run", out / "manifest.toml", "-o", tmp_path / "plain.h5", "--set", "useConvergence=false",
                           "--set", "usePsf=false")  # fmt: skip
    assert code == 0, err
    with h5py.File(tmp_path / "aware.h5") as aware, h5py.File(tmp_path / "plain.h5") as plain:
        assert aware.attrs["psf_aware"] and int(aware.attrs["iterations"]) == 45
        assert not plain.attrs["psf_aware"] and int(plain.attrs["iterations"]) == 9


@pytest.mark.parametrize("wings", [0, 2])
def test_psf_aware_model_runs_and_records_its_reference(field, tmp_path, wings):
    """Kolmogorov PSFs of 0.6-1.1 arcsec (the headers' PSF-FWHM): the reference PSF, each visit's
    kernel and the wing Gaussians in the model file; a --match-psf template made at the science
    visit's PSF through the same kind of kernel, its PSF HDU close to that PSF."""
    out, info = field
    copy = tmp_path / "f"
    shutil.copytree(out, copy)
    paths = [*sorted((copy / "warps").glob("*.fits")), *sorted((copy / "science").glob("*.fits"))]
    for path, fwhm in zip(paths, (0.6, 0.75, 0.85, 1.0, 1.1, 0.95, 0.95, 0.95), strict=False):
        _strip_psf(path, extra={"PSF-FWHM": fwhm})
    model = tmp_path / "aware.h5"
    code, _, err = run_cli("run", copy / "manifest.toml", "-o", model, "--set", f"psfWings={wings}")
    assert code == 0, err
    with h5py.File(model) as f:
        assert f.attrs["psf_aware"] and f["psf"].attrs["kind"] == "reference"
        assert np.all(np.isfinite(f["visits"]["psf_sigma"])) and np.all(f["visits"]["psf_wing"] >= 0)
        assert len(f.attrs.get("psf_wing_sigmas", ())) == wings
        assert (np.max(f["visits"]["psf_wing"]) > 0) == (wings > 0)
    science = copy / "science" / Path(info["science"][0]).name
    matched = tmp_path / "tm.fits"
    assert run_cli("template", model, science, "-o", matched, "--match-psf")[0] == 0
    want = visit_psf(resolve_geometry(scan_warp(str(science)), read_manifest(copy / "manifest.toml").site), 0.2)
    assert want is not None and want.profile == "kolmogorov"
    with fits.open(matched) as hdul:
        size = max(hdul["PSF"].data.shape[0], want.image.shape[0])
        error = np.max(np.abs(P.pad_to(hdul["PSF"].data, size) - P.pad_to(want.image, size))) / want.image.max()
    assert error < (0.005 if wings else 0.05)


def test_evaluate_matches_psfs_and_counts_dipoles(field, tmp_path):
    out, info = field
    model = tmp_path / "m.h5"
    assert run_cli("run", out / "manifest.toml", "-o", model)[0] == 0
    code, text, _ = run_cli("evaluate", model, *info["science"], "--truth", out / "truth.npz")
    assert code == 0 and "dipoles" in text and "removed against the plain coadd" in text
    code, text, _ = run_cli("evaluate", model, *info["science"], "--no-psf-match")
    assert code == 0 and "none (--no-psf-match)" in text
    # the field's warps carry PSFs: by default they are used, with --matching fitted they are not
    code, text, _ = run_cli("evaluate", model, *info["science"], "--matching", "fitted")
    rows = [line for line in text.splitlines() if line[:1].isdigit()]
    assert code == 0 and rows and all("(fitted kernel)" in line for line in rows)
    assert "(PSF kernel)" in run_cli("evaluate", model, *info["science"])[1]


def test_dipoles_and_other_false_sources():
    sig = np.zeros((40, 40))
    sig[5:8, 5:8], sig[5:8, 8:11] = 7.0, -7.0  # a dipole
    sig[20:22, 20:22] = 6.0  # a lone positive
    sig[30, 30] = -9.0  # a lone negative
    sig[35, 5] = 4.0  # below the threshold
    assert false_sources(sig, 5.0) == (1, 2)


def test_known_psfs_are_matched_exactly(rng):
    """One scene seen through two Kolmogorov PSFs: after matching, the difference is noise."""
    scene = np.zeros((64, 64))
    scene[20, 30], scene[40, 22] = 500.0, 800.0
    sharp, broad = P.kolmogorov_image(3.0, 31), P.kolmogorov_image(4.5, 31)
    from scipy.signal import fftconvolve

    a, b = fftconvolve(scene, sharp, mode="same"), fftconvolve(scene, broad, mode="same")
    pair = match_known(a, np.ones_like(a), sharp, b, np.ones_like(b), broad)
    assert pair.how.startswith("template blurred")
    assert np.max(np.abs(pair.science - pair.template)) < 0.02 * b.max()


def test_honest_variance(rng):
    smooth = rng.normal(size=(100, 100)) * 0.5  # noise of std 0.5 under a variance plane of 1
    variance, scale = honest_variance(smooth, np.ones((100, 100)), np.zeros((100, 100), np.int32), {"DETECTED": 5})
    assert scale == pytest.approx(0.25, rel=0.1) and np.allclose(variance, scale)


@pytest.mark.parametrize("sharp", ["template", "science"])
def test_fitted_matching_blurs_the_sharper_image(rng, sharp):
    """Stars seen sharp and quiet (a deep template) and broad and noisy (a science visit), or broad
    and quiet with the science sharp and noisy: the fitted kernel blurs the sharper image.  (Judged
    on raw residuals, the first case, with faint stars, blurred the noisy science image instead.)"""
    from scipy.ndimage import gaussian_filter

    from mpidcr.analysis.matching import match_fitted

    stars = np.zeros((120, 120))
    for y, x in rng.uniform(12, 108, size=(25, 2)):
        stars[int(y), int(x)] = rng.uniform(0.1, 1.0) * (5e3 if sharp == "template" else 2e4)
    narrow, broad = gaussian_filter(stars, 1.2), gaussian_filter(stars, 1.8)
    quiet, noisy = 1.0, 25.0
    if sharp == "template":
        template, t_var = narrow + rng.normal(0, quiet, stars.shape), np.full(stars.shape, quiet**2)
        science, s_var = broad + rng.normal(0, noisy, stars.shape), np.full(stars.shape, noisy**2)
    else:
        template, t_var = broad + rng.normal(0, quiet, stars.shape), np.full(stars.shape, quiet**2)
        science, s_var = narrow + rng.normal(0, noisy, stars.shape), np.full(stars.shape, noisy**2)
    pair = match_fitted(template, t_var, science, s_var, np.ones(stars.shape, bool))
    assert pair.how == f"{sharp} blurred (fitted kernel)"
