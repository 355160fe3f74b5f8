"""Artifact rejection: each step of mpidcr.artifacts against a simple reference, and each field
of the CompareWarp configuration shown to act (find_artifacts on small synthetic warps)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from mpidcr import artifacts as af
from mpidcr.config import DcrConfig
from mpidcr.io.warps import scan_warp, write_lsst_warp
from mpidcr.masks import DEFAULT_PLANES
from mpidcr.parallel.comm import SerialComm
from mpidcr.psf import Psf, gaussian_image
from mpidcr.rejection import find_artifacts, matching
from mpidcr.tiling import Box, Plan

# ----------------------------------------------------------------------------- the steps


def test_psf_match_is_a_gaussian_convolution_where_all_is_good(rng):
    image = rng.normal(size=(40, 50))
    variance = np.full_like(image, 2.0)
    matched, var = af.psf_match(image, variance, np.ones(image.shape, bool), 1.3)
    expected = ndimage.gaussian_filter(image, 1.3, mode="reflect", truncate=af.KERNEL_SIGMAS)
    assert np.allclose(matched, expected, atol=1e-12)
    k = af.gaussian_kernel(1.3)
    assert np.allclose(var[10:30, 10:40], 2.0 * (k**2).sum() ** 2)


def test_psf_match_normalises_over_good_pixels_and_gives_up_where_few_are(rng):
    image = np.full((30, 30), 5.0)
    good = np.ones(image.shape, bool)
    good[:, :15] = False  # left half missing
    matched, _ = af.psf_match(np.where(good, image, 1e6), np.ones_like(image), good, 2.0)
    assert np.allclose(matched[:, 16:], 5.0)  # a flat image stays flat next to missing data
    assert np.all(np.isnan(matched[:, :14]))  # less than half the kernel's weight: no value


def test_candidates_are_both_signs_beyond_the_threshold():
    diff = np.array([[0.0, 8.0, -8.0, 7.0, np.nan]])
    var = np.ones_like(diff)
    assert af.candidate_pixels(diff, var, 7.5).tolist() == [[False, True, True, False, False]]


def test_footprints_drop_small_groups_then_grow_and_merge():
    c = np.zeros((20, 20), bool)
    c[2, 2] = True  # one pixel: below minPixels
    c[10, 5:8] = True  # three pixels
    c[10, 10:12] = c[11, 10:12] = True  # four pixels, 2 px from the three: merge when grown by 1
    labels, n = af.footprints(c, min_pixels=3, grow_radius=0)
    assert n == 2 and labels[2, 2] == 0
    labels, n = af.footprints(c, min_pixels=3, grow_radius=1)
    assert n == 1 and labels[10, 6] == labels[10, 11] > 0


def test_prefilter_keeps_footprints_with_enough_good_pixels():
    labels = np.zeros((10, 10), np.int32)
    labels[0:2, 0:5] = 1  # 10 pixels
    labels[5:7, 0:5] = 2
    good = np.ones((10, 10), bool)
    good[0:2, 0:5] = False
    good[0, 0] = True  # 1 of 10 good: 0.1
    good[5:7, 0:5] = False  # 0 of 10
    assert af.prefilter(labels, 2, good, 0.05).tolist() == [False, True, False]
    assert af.prefilter(labels, 2, good, 0.1).tolist() == [False, False, False]  # must exceed the ratio


@pytest.mark.parametrize("n", [1, 3, 5, 8, 12, 30, 70, 200])
def test_effective_epoch_limit_is_lssts_broken_line(n):
    limits = af.EpochLimits()
    expected = int(min(0.4 * n, 2 + 0.03 * n))
    assert int(limits.limit(np.array([float(n)]))[0]) == expected


def test_transient_footprints_follow_epoch_count_and_spatial_threshold():
    labels = np.zeros((4, 10), np.int32)
    labels[0, :] = 1
    labels[2, :] = 2
    nimage = np.full(labels.shape, 12)  # limit int(min(4.8, 2.36)) = 2
    epochs = np.zeros(labels.shape, np.uint16)
    epochs[0, :6] = 1  # 60 % of footprint 1 in 1..2 epochs
    epochs[0, 6:] = 5
    epochs[2, :4] = 2  # 40 % of footprint 2
    epochs[2, 4:] = 3
    out = af.transient_footprints(labels, 2, epochs, nimage, af.EpochLimits())
    assert out.tolist() == [False, True, False]
    # spatialThreshold 0.3: footprint 2 too; maxNumEpochs 3 (limit 3): footprint 2 entirely
    assert af.transient_footprints(labels, 2, epochs, nimage, af.EpochLimits(spatial=0.3)).tolist()[2]
    assert af.transient_footprints(labels, 2, epochs, nimage, af.EpochLimits(max_num=3, spatial=0.9)).tolist()[2]


def test_contained_in_needs_every_pixel_inside():
    labels = np.zeros((10, 10), np.int32)
    labels[2:4, 2:4] = 1
    labels[6:8, 6:9] = 2
    sources = np.zeros((10, 10), bool)
    sources[1:5, 1:5] = True
    sources[6:8, 6:8] = True  # footprint 2 sticks out by one column
    assert af.contained_in(labels, 2, sources).tolist() == [False, True, False]


def test_find_streaks_finds_a_line_and_not_blobs(rng):
    shape = (200, 200)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    theta = math.radians(30)
    line = np.abs(xx * math.cos(theta) + yy * math.sin(theta) - 120) <= 1.0
    line &= rng.uniform(size=shape) > 0.2  # broken: 80 % of its pixels
    blobs = np.zeros(shape, bool)
    for cy, cx in [(30, 30), (160, 40), (50, 170)]:
        blobs |= (yy - cy) ** 2 + (xx - cx) ** 2 < 64
    streaks = af.find_streaks(line | blobs, min_length=50)
    assert len(streaks) == 1
    s = streaks[0]
    assert abs(math.degrees(s.theta) - 30) <= 1 and abs(s.rho - 120) <= 1.5 and s.t1 - s.t0 > 150
    masked = af.streak_pixels(shape, s, 0.0)
    assert np.count_nonzero(line & masked) >= 0.99 * np.count_nonzero(line)
    assert not (blobs & ~line & masked).sum() > 0.05 * blobs.sum()
    assert af.find_streaks(blobs, min_length=50) == []


def test_matching_sigmas_broader_than_the_worst():
    common, kernels = af.matching_sigmas(np.array([1.0, 2.0, 1.5]))
    assert common > 2.0 and np.allclose(kernels**2, common**2 - np.array([1.0, 4.0, 2.25]))


# ----------------------------------------------------------------------------- find_artifacts on warps

SIZE, VISITS, SIGMA_PSF = 64, 12, 1.5
PLANES = dict(DEFAULT_PLANES)


def _star(y: float, x: float, flux: float, sigma: float = SIGMA_PSF) -> np.ndarray:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    return flux * np.exp(-0.5 * ((yy - y) ** 2 + (xx - x) ** 2) / sigma**2) / (2 * math.pi * sigma**2)


def _write(tmp_path, images, masks=None, tag="w"):
    paths = []
    psf = gaussian_image(SIGMA_PSF, 15)
    for v, image in enumerate(images):
        path = tmp_path / f"{tag}{v}.fits"
        mask = np.zeros(image.shape, np.int32) if masks is None else masks[v]
        meta = {"IDNUM": 100 + v, "BORE-AIRMASS": 1.1, "HIERARCH PSF-FWHM": 0.2 * 2.3548 * SIGMA_PSF}
        write_lsst_warp(path, image, np.ones_like(image), mask, PLANES, meta, None, psf=psf)
        paths.append(str(path))
    return paths


def _find(paths, **config):
    cfg = DcrConfig(effectiveWavelength=480.0, bandwidth=120.0, **config)
    infos = [scan_warp(p) for p in paths]
    planes = dict(PLANES)
    psfs = [Psf(gaussian_image(SIGMA_PSF, 15), 0.2 * 2.3548 * SIGMA_PSF)] * len(paths)
    plan = Plan((SIZE, SIZE), (1, 1), 0)
    masks = find_artifacts(infos, planes, psfs, 0.2, cfg, plan, Box(0, SIZE, 0, SIZE), SerialComm())
    box = Box(0, SIZE, 0, SIZE)
    return [masks.window(v, box) for v in range(len(paths))]


@pytest.fixture
def noise(rng):
    return [rng.normal(size=(SIZE, SIZE)) for _ in range(VISITS)]


def test_a_source_in_fewer_epochs_than_the_limit_is_rejected_one_in_more_is_kept(tmp_path, noise):
    """N = 12: the limit is int(min(0.4·12, 2 + 0.03·12)) = 2.  A transient in 2 visits is CLIPPED
    in both; a variable source in 5 visits is not clipped anywhere."""
    images = [n.copy() for n in noise]
    for v in (3, 7):
        images[v] += _star(20, 20, 400.0)
    for v in (0, 2, 4, 6, 8):
        images[v] += _star(44, 44, 400.0)
    found = _find(_write(tmp_path, images))
    for v in (3, 7):
        assert found[v][0][20, 20]
    assert not any(c[44, 44] for c, _ in found)
    assert sum(int(c.sum()) for v, (c, _) in enumerate(found) if v not in (3, 7)) == 0


def test_max_num_epochs_and_fractions_set_the_limit(tmp_path, noise):
    images = [n.copy() for n in noise]
    for v in (0, 2, 4):  # 3 epochs: kept at the default limit 2, rejected with maxNumEpochs 3
        images[v] += _star(30, 30, 400.0)
    paths = _write(tmp_path, images)
    assert not any(c[30, 30] for c, _ in _find(paths))
    assert all(_find(paths, maxNumEpochs=3)[v][0][30, 30] for v in (0, 2, 4))
    # maxFractionEpochsLow 0.1 → limit int(min(1.2, 2.36)) = 1: 3 epochs kept even with maxNumEpochs 3
    assert not any(c[30, 30] for c, _ in _find(paths, maxNumEpochs=3, maxFractionEpochsLow=0.1))
    # maxFractionEpochsHigh 0.1 → limit int(min(4.8, 2 + 1.2)) = 3
    assert all(_find(paths, maxFractionEpochsHigh=0.1)[v][0][30, 30] for v in (0, 2, 4))


def test_spatial_threshold(tmp_path, noise):
    """A transient on a source that is an outlier in many epochs: its footprint is mostly
    persistent pixels, so it stays below spatialThreshold 0.5 but passes 0.05."""
    images = [n.copy() for n in noise]
    for v in range(VISITS):
        images[v] += _star(32, 32 + (1.0 if v % 2 else -1.0), 3000.0)  # jumps: an outlier everywhere
    images[5] += _star(32, 36, 300.0)
    paths = _write(tmp_path, images)
    assert not _find(paths)[5][0][32, 36]
    assert _find(paths, spatialThreshold=0.05)[5][0][32, 36]


def test_prefilter_fields(tmp_path, noise):
    """A transient inside a BAD region: dropped by doPrefilterArtifacts over BAD; kept when the
    filter is off, when BAD is not a prefilter plane, or when prefilterArtifactsRatio is 1 - ε lower."""
    images = [n.copy() for n in noise]
    images[4] += _star(32, 32, 500.0)
    masks = [np.zeros((SIZE, SIZE), np.int32) for _ in range(VISITS)]
    masks[4][22:43, 22:43] = 1 << PLANES["SUSPECT"]
    paths = _write(tmp_path, images, masks)
    assert not _find(paths)[4][0][32, 32]
    assert _find(paths, doPrefilterArtifacts=False)[4][0][32, 32]
    assert _find(paths, prefilterArtifactsMaskPlanes=["NO_DATA"])[4][0][32, 32]
    masks[4][32, 22:43] = 0  # one good row: ~8 % good > 0.05 → kept
    paths = _write(tmp_path, images, masks, tag="r")
    assert _find(paths)[4][0][32, 32]
    assert not _find(paths, prefilterArtifactsRatio=0.2)[4][0][32, 32]


def test_preserve_contained_by_source(tmp_path, noise):
    """A faint transient on a very bright star, with LSST's threshold (mpidcr's allows for the
    PSF mismatch on bright stars, so does not see it): clipped, unless doPreserveContainedBySource
    keeps candidates inside sources of the static model above detectTemplate.preserveThresholdSigma."""
    images = [n.copy() for n in noise]
    for v in range(VISITS):
        images[v] += _star(32, 32, 20000.0)
    images[6] += _star(33, 33, 150.0)
    paths = _write(tmp_path, images)
    lsst = {"lsstCompat": {"artifactDetection": True}}
    assert _find(paths, **lsst)[6][0][33, 33]
    assert not _find(paths, doPreserveContainedBySource=True, **lsst)[6][0][33, 33]
    assert _find(paths, doPreserveContainedBySource=True, detectTemplate={"preserveThresholdSigma": 1e6},
                 **lsst)[6][0][33, 33]  # fmt: skip
    assert not _find(paths)[6][0][33, 33]  # mpidcr's threshold: psfMismatch 5 % of the star


def test_detect_fields(tmp_path, noise):
    images = [n.copy() for n in noise]
    images[2] += _star(32, 32, 60.0)  # peak ~ 4.2 per pixel: found at threshold 3, not 7.5
    paths = _write(tmp_path, images)
    assert not _find(paths)[2][0][32, 32]
    low = _find(paths, detect={"thresholdSigma": 3.0})[2][0]
    assert low[32, 32]
    assert not _find(paths, detect={"thresholdSigma": 3.0, "minPixels": 500})[2][0][32, 32]
    grown = _find(paths, detect={"thresholdSigma": 3.0, "nSigmaToGrow": 3.0})[2][0]
    assert grown.sum() > low.sum()


def test_streak_fields(tmp_path, noise):
    """A faint trail: doFilterMorphological marks it (streakMaskName, grown by growStreakFp) where
    the epoch filter alone misses parts of it."""
    images = [n.copy() for n in noise]
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    trail = np.abs(yy - 0.5 * xx - 10) < 1.0
    images[8] += np.where(trail, 5.5, 0.0)  # candidates on ~3/4 of it
    paths = _write(tmp_path, images)
    clipped, streak = _find(paths)[8]
    assert streak.sum() > 0 and np.count_nonzero(trail & streak) >= 0.95 * trail.sum()
    assert np.count_nonzero(trail & clipped) == trail.sum()  # streak pixels are CLIPPED too
    off_c, off_s = _find(paths, doFilterMorphological=False)[8]
    assert off_s.sum() == 0 and np.count_nonzero(trail & off_c) < np.count_nonzero(trail & clipped)
    narrow = _find(paths, growStreakFp=0.0)[8][1]
    assert 0 < narrow.sum() < streak.sum()
    assert _find(paths, maskStreaks={"minLengthPixels": 500})[8][1].sum() == 0


def test_matching_uses_the_broadest_psf_and_falls_back_to_model_psf():
    cfg = DcrConfig(effectiveWavelength=480.0, bandwidth=120.0)
    psfs = [Psf(gaussian_image(1.0, 11), 0.2 * 2.3548), None, Psf(gaussian_image(2.0, 15), 0.4 * 2.3548)]
    m = matching(cfg, psfs, 0.2)
    assert m.common > 2.0 and m.kernels[1] == pytest.approx(m.kernels[2])
    none = matching(cfg, [None, None], 0.2)
    assert np.all(none.kernels == 0) and none.common == pytest.approx(0.7 / 0.2 / 2.3548, rel=1e-3)


def test_matching_kernel_size_truncates_the_kernel(rng):
    """matchingKernelSize: the kernel reaches at most size // 2 pixels (an impulse shows its extent)."""
    image = np.zeros((41, 41))
    image[20, 20] = 1.0
    good = np.ones(image.shape, bool)
    wide, _ = af.psf_match(image, np.ones_like(image), good, 3.0, max_radius=10)
    narrow, _ = af.psf_match(image, np.ones_like(image), good, 3.0, max_radius=3)
    assert wide[20, 20 + 10] > 0 and wide[20, 20 + 11] == 0
    assert narrow[20, 23] > 0 and narrow[20, 24] == 0
    cfg = DcrConfig(effectiveWavelength=480.0, bandwidth=120.0, matchingKernelSize=7)
    psfs = [Psf(gaussian_image(1.0, 11), 0.2 * 2.3548), Psf(gaussian_image(4.0, 31), 0.8 * 2.3548)]
    assert matching(cfg, psfs, 0.2).max_radius == 3


# ----------------------------------------------------------------------------- acceptance on a simulated field
@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """One 256² field simulated twice with the same seed: clean, and with 10 cosmic rays in every
    warp and satellite trails in a quarter of them; a model of each (default configuration)."""
    import contextlib
    import io

    from mpidcr.cli import main
    from mpidcr.sim.simulate import simulate

    out = tmp_path_factory.mktemp("rejection")
    for name, cosmic, satellites in (("clean", 0, 0.0), ("artifacts", 10, 0.25)):
        simulate(out / name, size=256, num_visits=12, num_science=2, seed=5, engine="numpy", cosmic_rays=cosmic,
                 satellite_fraction=satellites)  # fmt: skip
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["-q", "run", str(out / name / "manifest.toml"), "-o", str(out / f"{name}.h5")]) == 0
    return out


def test_artifacts_of_a_simulated_field_are_rejected(simulated):
    """≥ 98 % of the cosmic-ray and trail pixels are CLIPPED in their warps, and ≥ 99 % of the
    source-footprint pixels of the same field without artifacts never are."""
    from mpidcr.analysis import artifacts as check

    truth = dict(np.load(simulated / "artifacts" / "truth.npz"))
    visits, masks = check.rejected_masks(str(simulated / "artifacts.h5"))
    result = check.caught(masks, visits, truth)
    assert result["caught"] >= 0.98 and result["trail_caught"] >= 0.98
    detected = check.warp_detected(sorted(str(p) for p in (simulated / "clean" / "warps").glob("*.fits")))
    visits, masks = check.rejected_masks(str(simulated / "clean.h5"))
    clean = check.caught(masks, visits, {"artifacts": np.zeros_like(truth["artifacts"])},
                         [detected[v] for v in visits])  # fmt: skip
    assert clean["source_pixels_clipped"] <= 0.01


def test_trails_do_not_reach_the_model_or_the_differences(simulated):
    """Along every trail path the model's planes are within 3σ of their noise of the clean field's
    model; the PSF-matched differences of the science visits change there by < 1σ (no detection
    appears because of a trail)."""
    from mpidcr.analysis import artifacts as check

    truth = dict(np.load(simulated / "artifacts" / "truth.npz"))
    paths = check.trail_paths(truth)
    assert paths.sum() > 500
    model, clean = str(simulated / "artifacts.h5"), str(simulated / "clean.h5")
    compared = check.compare_on(paths, model, clean)
    assert compared["planes_max"] <= 3.0 and compared["planes_over_3"] == 0
    science = sorted(str(p) for p in (simulated / "artifacts" / "science").glob("*.fits"))
    found = check.detections_on(paths, model, clean, science)
    assert found["max_change_sigma"] < 1.0
    # without rejection the trails are in the model and the differences
    assert compared["planes_max"] < 0.1 * check.compare_on(paths, _without_rejection(simulated), clean)["planes_max"]


def _without_rejection(simulated) -> str:
    import contextlib
    import io

    from mpidcr.cli import main

    out = simulated / "norej.h5"
    if not out.exists():
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["-q", "run", str(simulated / "artifacts" / "manifest.toml"), "-o", str(out),
                         "--set", "doRejectArtifacts=false"]) == 0  # fmt: skip
    return str(out)


def test_clipped_pixels_leave_the_fit_by_default_and_stay_with_lsst_clipped_in_fit(simulated):
    """lsstCompat.clippedInFit: LSST's fit keeps the CLIPPED pixels (only the static model loses
    them), so the trails come back into the model's planes."""
    import contextlib
    import io

    from mpidcr.analysis import artifacts as check
    from mpidcr.cli import main

    out = simulated / "lsstfit.h5"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["-q", "run", str(simulated / "artifacts" / "manifest.toml"), "-o", str(out),
                     "--set", "lsstCompat.clippedInFit=true"]) == 0  # fmt: skip
    truth = dict(np.load(simulated / "artifacts" / "truth.npz"))
    paths = check.trail_paths(truth)
    clean = str(simulated / "clean.h5")
    lsst = check.compare_on(paths, str(out), clean)
    default = check.compare_on(paths, str(simulated / "artifacts.h5"), clean)
    assert lsst["static_max"] == pytest.approx(default["static_max"], rel=0.05)  # the static model: the same
    assert lsst["planes_max"] > 5 * default["planes_max"]


def test_do_reject_artifacts_false_leaves_no_masks(simulated):
    import h5py

    with h5py.File(_without_rejection(simulated)) as f:
        assert "artifacts" not in f
    with h5py.File(simulated / "artifacts.h5") as f:
        assert f["artifacts/clipped"].shape[0] == 12


def test_mpidcr_threshold_allowances(tmp_path, noise):
    """detect.psfMismatch and detect.dcrAllowance raise the threshold on sources only: a faint
    transient on a bright star is found without them (and with lsstCompat.artifactDetection)."""
    images = [n.copy() for n in noise]
    for v in range(VISITS):
        images[v] += _star(32, 32, 20000.0)
    images[6] += _star(33, 33, 150.0)
    images[6] += _star(10, 50, 150.0)  # the same transient on blank sky: found either way
    paths = _write(tmp_path, images)
    default = _find(paths)[6][0]
    assert not default[33, 33] and default[10, 50]
    assert _find(paths, detect={"psfMismatch": 0.0, "dcrAllowance": 0.0})[6][0][33, 33]


def test_refined_epoch_count_sees_a_transient_under_another_visits_artifact():
    """Pixels of a cosmic ray in two visits under a third visit's trail count 3 epochs: not
    transient for LSST's count; mpidcr's refined count drops the trail (found an artifact itself)."""
    from mpidcr.rejection import _transient

    shape = (20, 40)
    trail = np.zeros(shape, np.int32)
    trail[8:12, :] = 1  # visit 0: a long footprint, mostly in 1 epoch
    ray = np.zeros(shape, np.int32)
    ray[7:13, 18:22] = 1  # visits 1 and 2: the same small footprint across the trail
    labelled = {0: (trail, 1, np.array([False, True])), 1: (ray, 1, np.array([False, True])),
                2: (ray.copy(), 1, np.array([False, True]))}  # fmt: skip
    epochs = ((trail > 0).astype(np.uint16) + 2 * (ray > 0)).astype(np.uint16)
    nimage = np.full(shape, 12)
    lsst = _transient(labelled, epochs, nimage, af.EpochLimits(), None, refine=False, comm=SerialComm())
    assert lsst[0][1] and not lsst[1][1] and not lsst[2][1]
    refined = _transient(labelled, epochs, nimage, af.EpochLimits(), None, refine=True, comm=SerialComm())
    assert refined[0][1] and refined[1][1] and refined[2][1]


def test_streak_mask_name_marks_the_warps_as_read_for_the_solve(simulated, tmp_path):
    """streakMaskName: the streak pixels carry that plane in the warps the solver reads, the trail
    itself CLIPPED too."""
    from mpidcr.driver import inputs_from_manifest, read_box
    from mpidcr.io.manifest import read_manifest

    manifest = read_manifest(simulated / "artifacts" / "manifest.toml")
    cfg = DcrConfig(**manifest.band, streakMaskName="SATTRAIL")
    inputs = inputs_from_manifest(manifest, cfg)
    box = Box(0, 256, 0, 256)
    inputs.artifacts = find_artifacts(inputs.infos, inputs.mask_planes, inputs.psfs, inputs.pixel_scale, cfg,
                                      Plan((256, 256), (1, 1), 0), box, SerialComm(), inputs.shifts)  # fmt: skip
    warps = read_box(inputs, box)
    trail, clipped = 1 << inputs.mask_planes["SATTRAIL"], 1 << inputs.mask_planes["CLIPPED"]
    has = (warps.masks & trail) != 0
    truth = dict(np.load(simulated / "artifacts" / "truth.npz"))
    rows = [int(v) - 1000 for v in warps.names]
    on_trails = truth["trails"][rows]
    assert np.count_nonzero(has & on_trails) == on_trails.sum()
    assert np.count_nonzero(on_trails & ((warps.masks & clipped) != 0)) >= 0.99 * on_trails.sum()
    assert has.sum() > 3 * on_trails.sum()  # the grown band: growStreakFp PSF σ each side


def test_psf_matched_warps_given_in_the_manifest(simulated, tmp_path):
    """LSST's psfMatchedWarps given in the manifest (matched by visit id) are used as they are: the
    same warps PSF-matched outside mpidcr give the rejection mpidcr's own matching gives."""
    from astropy.io import fits

    from mpidcr.driver import inputs_from_manifest
    from mpidcr.io.manifest import read_manifest
    from mpidcr.io.warps import psf_hdu

    manifest = read_manifest(simulated / "artifacts" / "manifest.toml")
    cfg = DcrConfig(**manifest.band)
    inputs = inputs_from_manifest(manifest, cfg)
    match = matching(cfg, inputs.psfs, inputs.pixel_scale)
    (tmp_path / "pm").mkdir()
    for v, info in enumerate(inputs.infos):
        with fits.open(info.path) as hdul:
            image, variance = hdul["IMAGE"].data.astype(np.float64), hdul["VARIANCE"].data.astype(np.float64)
            good = np.isfinite(image) & (variance > 0)
            pm, pm_var = af.psf_match(image, variance, good, float(match.kernels[v]), match.max_radius)
            hdul["IMAGE"].data, hdul["VARIANCE"].data = pm.astype(np.float32), pm_var.astype(np.float32)
            hdus = [h.copy() for h in hdul if h.name != "PSF"]
        common = gaussian_image(match.common, 2 * int(4 * match.common) + 1)
        fits.HDUList([*hdus, psf_hdu(common)]).writeto(tmp_path / "pm" / f"pm{v}.fits")
    text = (simulated / "artifacts" / "manifest.toml").read_text().replace('"warps/', f'"{simulated}/artifacts/warps/')
    (tmp_path / "manifest.toml").write_text('psf_matched_warps = "pm/*.fits"\n' + text)
    given = read_manifest(tmp_path / "manifest.toml")
    assert len(given.psf_matched_warps) == 12
    with_pm = inputs_from_manifest(given, cfg)
    box, plan = Box(0, 256, 0, 256), Plan((256, 256), (1, 1), 0)
    own = find_artifacts(inputs.infos, dict(inputs.mask_planes), inputs.psfs, inputs.pixel_scale, cfg, plan, box,
                         SerialComm(), inputs.shifts)  # fmt: skip
    theirs = find_artifacts(with_pm.infos, dict(with_pm.mask_planes), with_pm.psfs, with_pm.pixel_scale, cfg, plan, box,
                            SerialComm(), with_pm.shifts, None, with_pm.psf_matched)  # fmt: skip
    a = np.array([own.window(v, box)[0] for v in range(12)])
    b = np.array([theirs.window(v, box)[0] for v in range(12)])
    assert a.sum() > 1000 and np.count_nonzero(a & b) >= 0.97 * max(a.sum(), b.sum())  # (PSF from its image)
    assert theirs.common_sigma == pytest.approx(own.common_sigma, rel=0.1)
    # a visit without its PSF-matched warp is named
    (tmp_path / "pm" / "pm3.fits").unlink()
    from mpidcr.errors import InputError

    with pytest.raises(InputError, match="no PSF-matched warp of visit"):
        inputs_from_manifest(read_manifest(tmp_path / "manifest.toml"), cfg)
