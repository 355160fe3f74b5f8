"""Simulations with GalSim (chromatic, independent refraction) and the science evaluation."""

import numpy as np
import pytest
from astropy.io import fits

from mpidcr.cli import main

galsim = pytest.importorskip("galsim")


@pytest.fixture(scope="module")
def gfield(tmp_path_factory):
    from mpidcr.sim.simulate import simulate

    out = tmp_path_factory.mktemp("galsim")
    info = simulate(out, size=112, num_visits=8, num_science=2, seed=4, engine="galsim")
    return out, info


def test_galsim_band_and_truth(gfield):
    out, info = gfield
    from mpidcr.sim.galsim_field import lsst_g_band

    _, lam, bw = lsst_g_band()
    assert info["effective_wavelength"] == pytest.approx(lam) and 470 < lam < 490 and 110 < bw < 150
    truth = np.load(out / "truth.npz")
    for k in range(2, 6):
        assert truth[f"star_flux_k{k}"].shape[1] == k
        # the sub-band fluxes of a star add up to the same total for every K
        assert np.allclose(truth[f"star_flux_k{k}"].sum(axis=1), truth["star_flux_k2"].sum(axis=1), rtol=1e-3)
    seds = set(truth["star_sed"].tolist())
    assert len(seds) >= 5 and any(s.startswith("blackbody") for s in seds)


def test_galsim_dcr_direction_matches_mpidcr():
    """A hot and a cool star at airmass 2: GalSim's DCR separates them along the zenith direction that
    mpidcr derives from the WCS and the parallactic angle, by the amount mpidcr's refraction predicts."""
    from mpidcr.dcr import refraction, zenith_direction
    from mpidcr.io.wcs import image_rotation_angle
    from mpidcr.sim.galsim_field import lsst_g_band, make_galsim_field, sed_pool
    from mpidcr.sim.simulate import tan_wcs_header

    wcs = tan_wcs_header((64, 64), 0.2).tostring()
    stars = {"positions": [(20.0, 20.0), (44.0, 44.0)], "sed_names": ["blackbody_30000K", "blackbody_3000K"]}
    kw = dict(
        shape=(64, 64),
        num_visits=1,
        flux_range=(5e4, 5e4),
        sky_sigma=1e-6,
        rotation_for=lambda a: image_rotation_angle(wcs, a),
        **stars,
    )
    flat = make_galsim_field(airmass_range=(1.0, 1.0), seed=3, **kw)
    tilted = make_galsim_field(airmass_range=(2.0, 2.0), seed=3, **kw)
    obs = tilted.observations[0]
    uy, ux = zenith_direction(obs.parallactic_angle, obs.rotation_angle)
    yy, xx = np.mgrid[0:64, 0:64]

    def centroid(img, y, x):
        near = np.hypot(yy - y, xx - x) < 6
        w = np.clip(img, 0, None) * near
        return np.array([(w * yy).sum(), (w * xx).sum()]) / w.sum()

    moved = [
        (centroid(tilted.images[0], y, x) - centroid(flat.images[0], y, x)) @ np.array([uy, ux])
        for y, x in stars["positions"]
    ]
    # mpidcr's prediction from the photon-weighted mean wavelength of each star through the band
    bp, _, _ = lsst_g_band()
    wave = np.linspace(bp.blue_limit, bp.red_limit, 400)
    seds = dict(sed_pool())
    lam = [np.sum(wave * seds[n](wave) * bp(wave)) / np.sum(seds[n](wave) * bp(wave)) for n in stars["sed_names"]]
    predicted = (
        refraction(lam[0], obs.elevation, obs.resolved_weather)
        - refraction(lam[1], obs.elevation, obs.resolved_weather)
    ) / 0.2
    print(
        f"hot-cool separation along the zenith: GalSim {moved[0] - moved[1]:.3f} px, mpidcr {float(predicted):.3f} px"
    )
    assert moved[0] - moved[1] > 0  # the hot star moved further towards the zenith
    assert moved[0] - moved[1] == pytest.approx(float(predicted), rel=0.25)


def test_evaluate_on_galsim_field(gfield, tmp_path, capsys):
    out, info = gfield
    model = tmp_path / "model.h5"
    assert main(["-q", "run", str(out / "manifest.toml"), "-o", str(model)]) == 0
    capsys.readouterr()
    assert (
        main(
            [
                "evaluate",
                str(model),
                *info["science"],
                "--truth",
                str(out / "truth.npz"),
                "--json",
                "--png",
                str(tmp_path / "res.png"),
            ]
        )
        == 0
    )
    import json

    text = capsys.readouterr().out
    result = json.loads(text[: text.rindex("}") + 1])
    for v in result["visits"]:
        if v["airmass"] >= 1.2:
            assert v["rms_dcr"] < v["rms_coadd"]
            assert v["false_pos_dcr"] + v["false_neg_dcr"] < v["false_pos_coadd"] + v["false_neg_coadd"]
    c = result["colours"]
    assert c["slope"] > 0.3 and c["scatter"] < 0.1
    assert (tmp_path / "res.png").read_bytes()[:4] == b"\x89PNG"
    # the truth keeps each science visit's image before the noise: the template's star flux is
    # compared with it (only the template's noise is left), and the noise is what the warp adds
    truth = np.load(out / "truth.npz")
    for path in info["science"]:
        visit = fits.getheader(path)["VISIT"]
        clean = truth[f"noiseless_{visit}"]
        assert 0.7 < np.std(fits.getdata(path, "IMAGE") - clean) < 1.3  # the simulation's sky sigma is 1
    assert result["template_flux"]["reference"] == "noiseless"
    assert all(v["star_flux_reference"] == "noiseless" for v in result["visits"])


def test_count_detections():
    from mpidcr.analysis.evaluate import count_detections

    sig = np.zeros((20, 20))
    sig[2:4, 2:4] = 6.0
    sig[10, 10] = 5.0
    sig[15, 15] = -7.0
    sig[5, 15] = 4.9
    assert count_detections(sig) == (2, 1)


def test_galaxies_and_artifacts(tmp_path):
    from astropy.io import fits

    from mpidcr.sim.simulate import simulate

    info = simulate(
        tmp_path,
        size=64,
        num_visits=4,
        num_science=1,
        num_stars=5,
        engine="galsim",
        seed=3,
        num_galaxies=4,
        cosmic_rays=6,
        satellite_fraction=1.0,
    )
    truth = np.load(tmp_path / "truth.npz")
    assert truth["galaxy_y"].shape == (4,) and all(str(s).startswith("CWW") for s in truth["galaxy_sed"])
    art = truth["artifacts"]
    per_visit = art.sum(axis=(1, 2))
    assert np.count_nonzero(per_visit) == 4  # every modelled warp, not the science visit
    sci_index = [i for i in range(5) if per_visit[i] == 0]
    assert len(sci_index) == 1
    # a satellite trail crosses each modelled warp: a long line of +30 counts
    assert per_visit.max() > 64
    # artifacts are left unmasked in the warps
    warp = fits.getdata(info["warps"][0], "MASK")
    assert not np.any(warp & (1 << 9))  # no CLIPPED plane set


def test_galaxies_need_galsim_engine(tmp_path):
    from mpidcr.errors import InputError
    from mpidcr.sim.simulate import simulate

    with pytest.raises(InputError, match="--galaxies needs the galsim engine"):
        simulate(tmp_path, size=32, num_visits=2, num_science=0, engine="numpy", num_galaxies=3)


def test_gaussian_seeing_profile(tmp_path):
    """--seeing-profile gaussian: every visit seen through a Gaussian of its seeing (its PSF HDU
    has the Gaussian's second moment), the default Kolmogorov has far broader wings."""
    from mpidcr.psf import second_moment_sigma
    from mpidcr.sim.simulate import simulate

    sigmas = {}
    for profile in ("gaussian", "kolmogorov"):
        info = simulate(tmp_path / profile, size=48, num_visits=2, num_science=0, seed=3, engine="galsim",
                        seeing_fwhm_arcsec=0.8, seeing_profile=profile)  # fmt: skip
        sigmas[profile] = second_moment_sigma(fits.getdata(info["warps"][0], "PSF"))
    expected = np.sqrt((0.8 / 0.2 / 2.3548) ** 2 + 1 / 12)  # pixel-integrated Gaussian, pixels
    assert sigmas["gaussian"] == pytest.approx(expected, rel=0.03)
    assert sigmas["kolmogorov"] > 1.15 * expected
    from mpidcr.errors import InputError

    with pytest.raises(InputError, match="--seeing-profile moffat"):
        simulate(tmp_path / "bad", size=48, num_visits=2, engine="galsim", seeing_profile="moffat")
