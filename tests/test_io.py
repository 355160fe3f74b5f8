"""FITS warps in, HDF5 model out, FITS products; every bad input is a one-line error and no output."""

from pathlib import Path

import h5py
import numpy as np
import pytest
from astropy.io import fits
from cli_runner import run_cli

from mpidcr.cli import main
from mpidcr.config import DcrConfig
from mpidcr.driver import prepare_inputs
from mpidcr.io.manifest import WarpEntry, read_manifest
from mpidcr.io.modelfile import read_model
from mpidcr.io.warps import READ_STATS, read_window, resolve_geometry, scan_warp
from mpidcr.io.wcs import image_rotation_angle, same_wcs, wcs_problem
from mpidcr.sim.simulate import simulate, tan_wcs_header
from mpidcr.solver import DcrSolver, WarpStack
from mpidcr.tiling import Box


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    out = tmp_path_factory.mktemp("field")
    info = simulate(out, size=96, num_visits=6, num_science=1, seed=11)
    return out, info


def test_metadata_roundtrip(field):
    out, info = field
    warp = scan_warp(info["warps"][0])
    assert warp.layout == "lsst" and warp.shape == (96, 96)
    assert {"DETECTED", "NO_DATA"} <= set(warp.mask_planes)
    hdr = fits.getheader(info["warps"][0], 0)
    assert warp.meta["airmass"] == pytest.approx(hdr["BORE-AIRMASS"])
    assert warp.meta["parallacticAngle"] == pytest.approx(hdr["PARANGLE"])
    resolved = resolve_geometry(warp, read_manifest(out / "manifest.toml").site)
    assert resolved.meta["elevation"] == pytest.approx(hdr["BORE-ALT"])


def test_rotation_from_wcs_matches_simulation():
    # north up, east left: the zenith at parallactic angle q lies at (cos q, −sin q) in (dy, dx)
    wcs = tan_wcs_header((64, 64), 0.2).tostring()
    from mpidcr.dcr import zenith_direction

    for q in (-150.0, -30.0, 0.0, 45.0, 120.0):
        rot = image_rotation_angle(wcs, q)
        assert np.allclose(zenith_direction(q, rot), (np.cos(np.radians(q)), -np.sin(np.radians(q))), atol=1e-6)


def test_same_wcs_and_unreadable_wcs():
    header = tan_wcs_header((64, 64), 0.2)
    moved = header.copy()
    moved["CRVAL1"] += 1e-3
    broken = header.copy()
    broken["CTYPE1"] = "RA---XYZ"
    assert same_wcs(header.tostring(), header.copy().tostring())
    assert not same_wcs(header.tostring(), moved.tostring())
    # another visit on the same grid: its date is no part of the grid
    later = header.copy()
    later["MJD-OBS"], later["DATE-OBS"] = 60000.02, "2023-02-25T00:28:48"
    earlier = header.copy()
    earlier["MJD-OBS"], earlier["DATE-OBS"] = 60000.0, "2023-02-25T00:00:00"
    assert same_wcs(earlier.tostring(), later.tostring())
    # and its visit's cards are no part of it either: warps of one grid share one parse
    from mpidcr.io import wcs as W

    def visit_header(v, crpix1):
        h = header.copy()
        h["MJD-OBS"], h["VISIT"], h["PARANGLE"], h["BORE-ALT"] = 60000.0 + v, 1000 + v, 10.0 * v, 40.0 + v
        h["HIERARCH BORE-AIRMASS"] = 1.1 + v
        h["CRPIX1"] = crpix1  # a card of the transformation: kept
        return h.tostring()

    W._parsed_grid.cache_clear()
    assert all(W._parsed(visit_header(v, 32.0 + v)) is not None for v in range(3))
    assert W._parsed_grid.cache_info().misses == 3  # three grids
    W._parsed_grid.cache_clear()
    same_grid = [visit_header(v, 32.0) for v in range(3)]
    assert all(same_wcs(same_grid[0], text) for text in same_grid[1:])
    assert W._parsed_grid.cache_info().misses == 1  # one grid, one parse
    assert wcs_problem(header.tostring()) is None
    assert "XYZ" in wcs_problem(broken.tostring())
    for a, b in ((header, broken), (broken, header)):
        with pytest.raises(ValueError, match=r"WCS cannot be read.*XYZ"):
            same_wcs(a.tostring(), b.tostring())
    # no sky WCS, only afw's pixel origin (WCS key A): readable, no celestial WCS, no rotation
    origin = fits.Header({"NAXIS": 2, "NAXIS1": 64, "NAXIS2": 64, "CTYPE1A": "LINEAR", "CTYPE2A": "LINEAR",
                          "CRVAL1A": 10.0, "CRVAL2A": 0.0, "CRPIX1A": 1.0, "CRPIX2A": 1.0})  # fmt: skip
    moved_origin = origin.copy()
    moved_origin["CRVAL1A"] = 20.0
    assert wcs_problem(origin.tostring()) is None and image_rotation_angle(origin.tostring(), 30.0) is None
    assert same_wcs(origin.tostring(), moved_origin.tostring())  # (bboxes are compared as xy0, apart)


def test_static_model_with_unreadable_wcs():
    from mpidcr.errors import InputError
    from mpidcr.io.static import StaticInfo, check_static_grid
    from mpidcr.io.warps import WarpInfo

    header = tan_wcs_header((64, 64), 0.2)
    broken = header.copy()
    broken["CTYPE2"] = "DEC--XYZ"
    warp = WarpInfo("w.fits", "lsst", (64, 64), {}, header.tostring(), {})
    check_static_grid(StaticInfo("t.fits", "fits", (64, 64), {}, header.tostring()), warp)
    with pytest.raises(InputError, match=r"^t\.fits: static model's WCS cannot be read \(.*XYZ"):
        check_static_grid(StaticInfo("t.fits", "fits", (64, 64), {}, broken.tostring()), warp)


def test_window_read(field):
    _, info = field
    warp = scan_warp(info["warps"][1])
    READ_STATS.reset()
    image, variance, mask = read_window(warp, Box(10, 30, 40, 90), warp.mask_planes)
    full = fits.getdata(info["warps"][1], "IMAGE")
    assert np.array_equal(image, full[10:30, 40:90]) and variance.shape == mask.shape == (20, 50)
    assert READ_STATS.bytes == 20 * 50 * 12


def test_full_roundtrip_model_export_template(field, tmp_path):
    out, info = field
    model_path = tmp_path / "model.h5"
    # (artifact rejection off: the solver below is run on the warps as they are)
    assert main(["-q", "run", str(out / "manifest.toml"), "-o", str(model_path), "--set", "doRejectArtifacts=false"]) == 0
    model = read_model(str(model_path))
    assert model.model.shape == (3, 96, 96) and model.model.dtype == np.float32
    assert np.allclose(model.coadd, model.model.sum(axis=0), rtol=1e-5, atol=1e-4)
    assert len(model.visits) == 6 and model.attrs["complete"]
    assert model.visits["shift"].shape == (6, 3, 2)

    # export → astropy
    assert main(["-q", "export", str(model_path), "--fits", str(tmp_path / "fits")]) == 0
    for k in range(3):
        with fits.open(tmp_path / "fits" / f"model_dcrCoadd_subfilter{k}.fits") as hdul:
            assert np.array_equal(hdul["IMAGE"].data, model.model[k])
            assert hdul["IMAGE"].header["CTYPE1"] == "RA---TAN"
            assert hdul["MASK"].header["MP_DETECTED"] == model.mask_planes["DETECTED"]
    coadd = fits.getdata(tmp_path / "fits" / "model_coadd.fits", "IMAGE")
    assert np.array_equal(coadd, model.coadd)

    # the template of a modelled visit equals the solver's own forward model for that visit
    entries = [WarpEntry(path=p) for p in info["warps"]]
    cfg = DcrConfig(effectiveWavelength=476.31, bandwidth=147.0)
    inputs = prepare_inputs(entries, cfg, read_manifest(out / "manifest.toml").site)
    warps = [read_window(i, Box(0, 96, 0, 96), inputs.mask_planes) for i in inputs.infos]
    stack = WarpStack(
        *(np.stack([w[j] for w in warps]) for j in range(3)),
        inputs.mask_planes,
        inputs.shifts,
        np.array([o.airmass for o in inputs.observations]),
    )
    solver = DcrSolver(stack, cfg)
    result = solver.run()
    from mpidcr import kernels
    from mpidcr.update import amplified

    v = 2
    order = cfg.templateInterpOrder  # templates: as the fit shifts (imageInterpOrder) by default
    assert order == cfg.imageInterpOrder == 1
    forward = kernels.build_template(
        kernels.prefilter_planes(amplified(result.raw_model, cfg.accelerateModel), order), inputs.shifts[v].forward,
        order,
    )
    assert main(["-q", "template", str(model_path), info["warps"][v], "-o", str(tmp_path / "t.fits")]) == 0
    template = fits.getdata(tmp_path / "t.fits", "IMAGE")
    assert np.max(np.abs(template - forward)) < 1e-5 * np.max(np.abs(forward))
    # and on the held-out science visit it beats the plain coadd
    sci = info["science"][0]
    assert main(["-q", "template", str(model_path), sci, "-o", str(tmp_path / "s.fits")]) == 0
    s = fits.getdata(sci, "IMAGE")
    fp = fits.getdata(sci, "MASK") != 0
    t = fits.getdata(tmp_path / "s.fits", "IMAGE")
    assert np.sqrt(np.mean((s - t)[fp] ** 2)) < 0.5 * np.sqrt(np.mean((s - model.coadd)[fp] ** 2))


def test_inspect_and_quicklooks(field, tmp_path, capsys):
    out, _ = field
    model_path = tmp_path / "m.h5"
    assert main(["-q", "run", str(out / "manifest.toml"), "-o", str(model_path)]) == 0
    capsys.readouterr()
    assert main(["inspect", str(model_path), "--png", str(tmp_path / "png")]) == 0
    text = capsys.readouterr().out
    assert "K=3 sub-filters" in text and "flux per sub-filter" in text
    for name in ("rgb", "convergence", "nimage"):
        png = tmp_path / "png" / f"m_{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_without_manifest(field, tmp_path):
    out, _ = field
    code, _, err = run_cli(
        "run",
        "--warps",
        str(out / "warps" / "*.fits"),
        "--effective-wavelength",
        476.31,
        "--bandwidth",
        147,
        "-o",
        tmp_path / "w.h5",
    )
    assert code == 0, err
    assert read_model(str(tmp_path / "w.h5")).visits.shape == (6,)


# -- bad input -----------------------------------------------------------------------
def _copy_warp(src, dst, edit=None, data_edit=None):
    with fits.open(src) as hdul:
        if edit:
            edit(hdul[0].header)
        if data_edit:
            data_edit(hdul)
        hdul.writeto(dst, overwrite=True)


def _manifest(tmp_path, warps, extra=""):
    lines = ["[band]", "effectiveWavelength = 476.31", "bandwidth = 147.0", ""]
    for w in warps:
        lines += ["[[warps]]", f'path = "{w}"', ""]
    (tmp_path / "m.toml").write_text("\n".join(lines) + extra)
    return tmp_path / "m.toml"


def _bad(tmp_path, warps, pattern, extra="", args=()):
    out = tmp_path / "out.h5"
    code, _, err = run_cli("run", _manifest(tmp_path, warps, extra), "-o", out, *args)
    assert code == 2
    assert len(err) == 1 and err[0].startswith("mpidcr: error: "), err
    assert pattern in err[0], err[0]
    assert not out.exists() and not Path(f"{out}.tmp").exists()
    return err[0]


def test_bad_missing_metadata(field, tmp_path):
    _, info = field
    bad = tmp_path / "bad.fits"

    def strip(h):
        for key in ("BORE-AIRMASS", "BORE-ALT"):
            del h[key]

    _copy_warp(info["warps"][0], bad, strip)
    msg = _bad(tmp_path, [bad, *info["warps"][1:]], "no elevation (BORE-ALT), no airmass (BORE-AIRMASS)")
    assert str(bad) in msg


def test_bad_parallactic_angle_missing(field, tmp_path):
    _, info = field
    bad = tmp_path / "bad.fits"
    _copy_warp(info["warps"][0], bad, lambda h: h.remove("PARANGLE"))
    _bad(tmp_path, [bad, *info["warps"][1:]], "no parallactic angle (PARANGLE), no azimuth (BORE-AZ) and no AVG-ERA")


def test_parallactic_angle_from_azimuth(field, tmp_path):
    _, info = field
    ok = tmp_path / "az.fits"

    def edit(h):
        h.remove("PARANGLE")
        h["HIERARCH BORE-AZ"] = 120.0

    _copy_warp(info["warps"][0], ok, edit)
    warp = resolve_geometry(scan_warp(ok), read_manifest(field[0] / "manifest.toml").site)
    from mpidcr.dcr import parallactic_angle_from_altaz

    assert warp.meta["parallacticAngle"] == pytest.approx(
        float(parallactic_angle_from_altaz(120.0, warp.meta["elevation"], -30.2446))
    )


def test_bad_elevation_and_airmass(field, tmp_path):
    _, info = field
    bad = tmp_path / "bad.fits"
    _copy_warp(info["warps"][0], bad, lambda h: h.set("BORE-ALT", -3.0))
    _bad(tmp_path, [bad, *info["warps"][1:]], "elevation (BORE-ALT) = -3.0 deg is not in (0, 90]")
    bad2 = tmp_path / "bad2.fits"

    def edit(h):
        h.remove("BORE-ALT")
        h.set("BORE-AIRMASS", 0.8)

    _copy_warp(info["warps"][0], bad2, edit)
    _bad(tmp_path, [bad2, *info["warps"][1:]], "airmass (BORE-AIRMASS) = 0.8 is below 1")


def test_bad_nan_metadata(field, tmp_path):
    _, info = field
    warps = info["warps"]
    lines = ["[band]", "effectiveWavelength = 476.31", "bandwidth = 147.0", ""]
    lines += ["[[warps]]", f'path = "{warps[0]}"', "airmass = nan", ""]
    for w in warps[1:]:
        lines += ["[[warps]]", f'path = "{w}"', ""]
    (tmp_path / "m.toml").write_text("\n".join(lines))
    code, _, err = run_cli("run", tmp_path / "m.toml", "-o", tmp_path / "o.h5")
    assert code == 2 and len(err) == 1 and "override airmass is nan" in err[0] and warps[0] in err[0]


def test_bad_shape_and_wcs(field, tmp_path):
    _, info = field
    small = tmp_path / "small.fits"

    def crop(hdul):
        for ext in ("IMAGE", "MASK", "VARIANCE"):
            hdul[ext].data = hdul[ext].data[:80, :80]

    _copy_warp(info["warps"][0], small, data_edit=crop)
    _bad(tmp_path, [*info["warps"][1:], small], "shape 80x80 differs from")
    moved = tmp_path / "moved.fits"

    def shift_wcs(hdul):
        hdul["IMAGE"].header["CRVAL1"] += 0.01

    _copy_warp(info["warps"][0], moved, data_edit=shift_wcs)
    _bad(tmp_path, [*info["warps"][1:], moved], "WCS differs from")


@pytest.mark.parametrize("value", ["x", 70, -1, 2.5])
def test_bad_mask_plane_bit(field, tmp_path, value):
    _, info = field
    bad = tmp_path / "bits.fits"

    def edit(hdul):
        hdul["MASK"].header["MP_BAD"] = value

    _copy_warp(info["warps"][0], bad, data_edit=edit)
    err = _bad(tmp_path, [*info["warps"][1:], bad], f"{bad}: MASK header keyword MP_BAD = {value!r} is not")
    assert "0 to 31" in err


def test_bad_image_dimensions(field, tmp_path):
    _, info = field
    cube = tmp_path / "cube.fits"

    def edit(hdul):
        hdul["VARIANCE"].data = hdul["VARIANCE"].data[None]

    _copy_warp(info["warps"][0], cube, data_edit=edit)
    _bad(tmp_path, [*info["warps"][1:], cube], f"{cube}: VARIANCE extension has NAXIS = 3")


@pytest.mark.parametrize("first", [False, True])
def test_bad_unreadable_wcs(field, tmp_path, first):
    """A WCS astropy cannot read is one line naming the file and astropy's reason, whether the warp
    is the grid's reference (first) or compared with it."""
    _, info = field
    broken = tmp_path / "broken.fits"

    def break_wcs(hdul):
        hdul["IMAGE"].header["CTYPE1"] = "RA---XYZ"

    _copy_warp(info["warps"][0], broken, data_edit=break_wcs)
    warps = [broken, *info["warps"][1:]] if first else [*info["warps"][1:], broken]
    err = _bad(tmp_path, warps, str(broken))
    assert "WCS" in err and "XYZ" in err, err


def test_bad_truncated_and_unreadable(field, tmp_path):
    _, info = field
    trunc = tmp_path / "trunc.fits"
    data = Path(info["warps"][0]).read_bytes()
    trunc.write_bytes(data[: len(data) - 20000])
    _bad(tmp_path, [trunc, *info["warps"][1:]], "truncated")
    junk = tmp_path / "junk.fits"
    junk.write_text("not a fits file at all")
    _bad(tmp_path, [junk, *info["warps"][1:]], "unreadable FITS")
    _bad(tmp_path, [tmp_path / "missing.fits", *info["warps"][1:]], "file not found")


def test_bad_too_few_visits(field, tmp_path):
    _, info = field
    _bad(tmp_path, info["warps"][:1], "at least 2 visits")
    # two warps, one entirely NO_DATA
    dead = tmp_path / "dead.fits"

    def kill(hdul):
        hdul["MASK"].data[:] = 1 << int(hdul["MASK"].header["MP_NO_DATA"])

    _copy_warp(info["warps"][0], dead, data_edit=kill)
    _bad(tmp_path, [dead, info["warps"][1]], "only 1 of 2 visit(s) have usable pixels (")


def test_bad_band(field, tmp_path):
    _, info = field
    code, _, err = run_cli("run", "--warps", info["warps"][0], "--warps", info["warps"][1], "-o", tmp_path / "o.h5")
    assert code == 2 and err == [
        "mpidcr: error: configuration field 'effectiveWavelength' is required (in nm); "
        "set it in the manifest or with --set effectiveWavelength=..."
    ]
    code, _, err = run_cli(
        "run",
        "--warps",
        info["warps"][0],
        "--warps",
        info["warps"][1],
        "-o",
        tmp_path / "o.h5",
        "--effective-wavelength",
        2000,
        "--bandwidth",
        300,
    )
    assert code == 2 and "outside the refraction model's range" in err[0]


def test_existing_output_needs_overwrite(field, tmp_path):
    out, _ = field
    target = tmp_path / "exists.h5"
    target.write_text("keep me")
    code, _, err = run_cli("run", out / "manifest.toml", "-o", target)
    assert code == 2 and err == [f"mpidcr: error: {target}: output file exists (use --overwrite)"]
    assert target.read_text() == "keep me"


def test_incomplete_model_file_refused(tmp_path):
    with h5py.File(tmp_path / "half.h5", "w") as f:
        f["model"] = np.zeros((3, 4, 4))
    code, _, err = run_cli("inspect", tmp_path / "half.h5")
    assert code == 2 and "incomplete model file" in err[0]


def test_plain_layout_with_weight_files(field, tmp_path):
    out, info = field
    lines = ["[band]", "effectiveWavelength = 476.31", "bandwidth = 147.0", ""]
    for i, path in enumerate(info["warps"]):
        with fits.open(path) as hdul:
            meta = hdul[0].header
            wcs = hdul["IMAGE"].header.copy()
            # the image's header holds its WCS and, as other pipelines write it, its date: the grid
            # is the same for all (astropy's WCS comparison counts the date unless told not to)
            wcs["MJD-OBS"] = 60000.0 + 0.02 * i
            wcs["DATE-OBS"] = f"2023-02-25T0{i}:00:00"
            img = fits.PrimaryHDU(hdul["IMAGE"].data, header=wcs)
            fits.PrimaryHDU(hdul["IMAGE"].data, header=wcs).writeto(tmp_path / f"img{i}.fits")
            fits.PrimaryHDU(1.0 / hdul["VARIANCE"].data).writeto(tmp_path / f"wht{i}.fits")
            msk = fits.PrimaryHDU(hdul["MASK"].data)
            for k, v in hdul["MASK"].header.items():
                if k.startswith("MP_"):
                    msk.header[f"HIERARCH {k}"] = v
            msk.writeto(tmp_path / f"msk{i}.fits")
            del img
        lines += [
            "[[warps]]",
            f'image = "img{i}.fits"',
            f'weight = "wht{i}.fits"',
            f'mask = "msk{i}.fits"',
            f"airmass = {meta['BORE-AIRMASS']}",
            f"parallacticAngle = {meta['PARANGLE']}",
            "",
        ]
    (tmp_path / "plain.toml").write_text("\n".join(lines))
    assert main(["-q", "run", str(tmp_path / "plain.toml"), "-o", str(tmp_path / "plain.h5")]) == 0
    assert main(["-q", "run", str(out / "manifest.toml"), "-o", str(tmp_path / "lsst.h5")]) == 0
    plain, lsst = read_model(str(tmp_path / "plain.h5")), read_model(str(tmp_path / "lsst.h5"))
    # same pixels, same geometry; weather from the site default instead of the headers → tiny DCR change
    assert plain.attrs["iterations"] == lsst.attrs["iterations"]
    assert np.max(np.abs(plain.model - lsst.model)) < 2e-2 * np.max(lsst.model)
    # a variance and a weight for one image, or a variance of another shape: one line each
    last = len(info["warps"]) - 1  # (its entry replaced: the last 7 lines)
    both = [*lines[:-7], "[[warps]]", f'image = "img{last}.fits"', f'variance = "wht{last}.fits"',
            f'weight = "wht{last}.fits"', ""]  # fmt: skip
    (tmp_path / "both.toml").write_text("\n".join(both))
    code, _, err = run_cli("run", tmp_path / "both.toml", "-o", tmp_path / "both.h5")
    assert code == 2 and len(err) == 1 and "give 'variance' or 'weight' (inverse variance), not both" in err[0], err
    fits.PrimaryHDU(np.ones((10, 12), np.float32)).writeto(tmp_path / "small.fits")
    small = [*lines[:-7], "[[warps]]", f'image = "img{last}.fits"', 'variance = "small.fits"', ""]
    (tmp_path / "small.toml").write_text("\n".join(small))
    code, _, err = run_cli("run", tmp_path / "small.toml", "-o", tmp_path / "small.h5")
    assert code == 2 and len(err) == 1 and f"{tmp_path / 'small.fits'}: the variance is 10x12, its image" in err[0], err


def test_template_from_command_line_metadata(field, tmp_path):
    out, info = field
    model_path = tmp_path / "m.h5"
    assert main(["-q", "run", str(out / "manifest.toml"), "-o", str(model_path)]) == 0
    warp = resolve_geometry(scan_warp(info["warps"][3]), read_manifest(out / "manifest.toml").site)
    m = warp.meta
    assert (
        main(
            [
                "-q",
                "template",
                str(model_path),
                "-o",
                str(tmp_path / "a.fits"),
                "--elevation",
                str(m["elevation"]),
                "--parallactic-angle",
                str(m["parallacticAngle"]),
                "--rotation-angle",
                str(m["rotationAngle"]),
            ]
        )
        == 0
    )
    assert main(["-q", "template", str(model_path), info["warps"][3], "-o", str(tmp_path / "b.fits")]) == 0
    a, b = fits.getdata(tmp_path / "a.fits", "IMAGE"), fits.getdata(tmp_path / "b.fits", "IMAGE")
    assert np.max(np.abs(a - b)) < 2e-3 * np.max(np.abs(b))  # weather: standard atmosphere vs header values
    code, _, err = run_cli("template", model_path, "-o", tmp_path / "c.fits", "--airmass", 1.3)
    assert code == 2 and err == ["mpidcr: error: give --parallactic-angle (deg)"]


def test_max_memory_refuses_with_a_rank_suggestion(field, tmp_path):
    out, _ = field
    code, _, err = run_cli("run", out / "manifest.toml", "-o", tmp_path / "m.h5", "--max-memory", "401M")
    assert code == 2 and len(err) == 1
    assert "a rank needs about" in err[0] and "use about" in err[0] and "ranks" in err[0]
    assert not (tmp_path / "m.h5").exists()
    code, _, err = run_cli("run", out / "manifest.toml", "-o", tmp_path / "m.h5", "--max-memory", "100M")
    assert code == 2 and len(err) == 1 and "below the" in err[0] and "before it holds any pixels" in err[0]
    code, _, err = run_cli("run", out / "manifest.toml", "-o", tmp_path / "m.h5", "--max-memory", "lots")
    assert code == 2 and "is not a size like 4G" in err[0]
    code, _, _ = run_cli("run", out / "manifest.toml", "-o", tmp_path / "m.h5", "--max-memory", "4G")
    assert code == 0


def test_visits_table_records_variance_scale(field, tmp_path):
    out, _info = field
    import shutil

    scaled = tmp_path / "scaled"
    shutil.copytree(out, scaled)
    first = sorted((scaled / "warps").glob("*.fits"))[0]
    with fits.open(first, mode="update") as hdul:
        hdul["VARIANCE"].data *= 4.0
    assert main(["-q", "run", str(scaled / "manifest.toml"), "-o", str(tmp_path / "m.h5")]) == 0
    visits = read_model(str(tmp_path / "m.h5")).visits
    row = next(i for i, f in enumerate(visits["file"]) if f.decode().endswith(first.name))
    assert visits["variance_scale"][row] == pytest.approx(0.25, rel=0.1)
    others = np.delete(visits["variance_scale"], row)
    assert np.all(np.abs(others - 1.0) < 0.1)


def test_template_for_a_warp_off_the_patch_is_refused(field, tmp_path):
    """A science warp on another grid gets its template on its own pixels (tests/test_detector.py);
    one the patch does not overlap at all is one line."""
    out, info = field
    model_path = tmp_path / "m.h5"
    assert main(["-q", "run", str(out / "manifest.toml"), "-o", str(model_path)]) == 0
    moved = tmp_path / "moved.fits"

    def shift_wcs(hdul):
        hdul["IMAGE"].header["CRVAL2"] += 0.01

    _copy_warp(info["science"][0], moved, data_edit=shift_wcs)
    code, _, err = run_cli("template", model_path, moved, "-o", tmp_path / "t.fits")
    assert code == 2 and len(err) == 1 and "none of the 1 models' patches overlaps it" in err[0]
    assert not (tmp_path / "t.fits").exists()


def test_manifest_and_configuration_with_a_byte_order_mark(tmp_path):
    """Some editors start UTF-8 files with a byte-order mark; tomllib calls it an invalid statement."""
    from mpidcr.io.configfile import read_config_file

    bom = b"\xef\xbb\xbf"
    manifest = tmp_path / "m.toml"
    manifest.write_bytes(bom + b'[band]\neffectiveWavelength = 476.31\nbandwidth = 147.0\n[[warps]]\npath = "w.fits"\n')
    assert read_manifest(manifest).band["effectiveWavelength"] == 476.31
    config = tmp_path / "c.toml"
    config.write_bytes(bom + b"maxNumIter = 7\n")
    assert read_config_file(str(config))["maxNumIter"] == 7
