"""The PSF-aware forward model: blur plans, the blurred sweep against a brute-force reference, the
adjoint, and the PSF machinery (images, matching kernels, measurement)."""

import math

import numpy as np
import pytest
from reference import blur_step_reference

from mpidcr import kernels
from mpidcr import psf as P
from mpidcr import solver as S
from mpidcr.config import DcrConfig
from mpidcr.dcr import dcr_shifts
from mpidcr.kernels.gaussian import blur_step
from mpidcr.sim.field import make_field
from mpidcr.update import amplified


@pytest.mark.parametrize("variance", [0.0, 0.13, 0.5])
def test_blur_step_matches_scipy(rng, variance):
    image = rng.normal(size=(37, 53))
    out = np.empty_like(image)
    assert np.allclose(blur_step(image, variance, out), blur_step_reference(image, variance), atol=1e-12)
    assert out.sum() == pytest.approx(image.sum())  # flux kept, edges mirrored


def test_blur_plan_groups_and_steps():
    variances = np.array([0.0, 0.04, 1.3, 1.36, 4.9, 2.0, 0.09])
    plan = P.blur_plan(variances, 0.05)
    for v, g in zip(variances, plan.group_of, strict=True):
        assert abs(v - plan.variances[g]) <= 0.05 + 1e-12
    assert list(plan.variances) == sorted(plan.variances)
    total = 0.0
    for g, steps in enumerate(plan.steps):
        assert all(0 < s <= P.MAX_STEP_VARIANCE for s in steps)
        total += sum(steps)
        assert total == pytest.approx(plan.variances[g])
    assert plan.support == sum(len(s) for s in plan.steps)


def test_steps_compose_to_the_variance(rng):
    """Variances add under convolution: the steps of one group blur a point by exactly its variance."""
    plan = P.blur_plan(np.array([2.7]), 0.0)
    point = np.zeros((41, 41))
    point[20, 20] = 1.0
    for v in plan.steps[0]:
        point = blur_step(point, v, np.empty_like(point))
    yy, xx = np.mgrid[-20:21, -20:21]
    assert (point * yy**2).sum() == pytest.approx(2.7) and (point * xx**2).sum() == pytest.approx(2.7)


def _setup(variances):
    f = make_field(shape=(72, 80), num_visits=len(variances), num_stars=15, seed=4)
    cfg = DcrConfig(effectiveWavelength=f.effective_wavelength, bandwidth=f.bandwidth).validate()
    shifts = [dcr_shifts(o, f.effective_wavelength, f.bandwidth, 3, f.pixel_scale, cfg.splitSubfilters,
                         cfg.splitThreshold) for o in f.observations]  # fmt: skip
    stack = S.WarpStack(f.images.copy(), f.variances.copy(), f.masks.copy(), f.mask_planes, shifts, f.airmass)
    return S.DcrSolver(stack, cfg, psf_variances=np.asarray(variances)), cfg


def _reference_blur(image, steps, reverse=False):
    for v in (reversed(steps) if reverse else steps):
        image = blur_step_reference(image, v)
    return image


def test_blurred_sweep_equals_the_visit_by_visit_reference():
    """acc = Σ_v B_vᵀ Sᵀ((s_v − B_v S ŷ)·g_v) and the metric sums of templates B_v S ŷ, computed
    visit by visit in float64 with the scipy twins."""
    variances = [0.0, 0.3, 1.1, 1.12, 2.4]
    solver, cfg = _setup(variances)
    model = solver.it.model
    _, _, acc = solver.sweep(model)
    plan = solver.blur
    planes = amplified(model.astype(np.float64), cfg.accelerateModel)
    expected = np.zeros_like(planes)
    for v in range(len(variances)):
        g = plan.group_of[v]
        steps = [s for group in plan.steps[: g + 1] for s in group]
        blurred = np.stack([_reference_blur(p, steps) for p in planes])
        template = kernels.build_template(kernels.prefilter_planes(blurred, 1), solver.warps.shifts[v].forward, 1)
        residual = np.where(solver.good[v], solver.warps.images[v] - template, 0.0)
        back = np.zeros_like(planes)
        kernels.accumulate_reverse(residual, solver.warps.shifts[v].mean, 1, back)
        expected += np.stack([_reference_blur(b, steps, reverse=True) for b in back])
    scale = np.abs(expected).max()
    assert np.max(np.abs(acc - expected)) < 2e-5 * scale


def test_blur_and_its_adjoint(rng):
    """⟨B x, y⟩ = ⟨x, Bᵀ y⟩ for the steps of a plan (each step is its own adjoint)."""
    steps = P.blur_plan(np.array([1.7]), 0.0).steps[0]
    x, y = rng.normal(size=(30, 44)), rng.normal(size=(30, 44))
    assert np.vdot(_reference_blur(x, steps), y) == pytest.approx(np.vdot(x, _reference_blur(y, steps, True)))


def test_zero_variances_are_the_constant_psf_model():
    blurred, _ = _setup([0.0, 0.0, 0.0, 0.0])
    plain, _ = _setup([0.0, 0.0, 0.0, 0.0])
    plain = S.DcrSolver(S.WarpStack(*_fresh_arrays(), plain.warps.mask_planes, plain.warps.shifts,
                                    plain.warps.airmass), plain.cfg)  # fmt: skip
    a, b = blurred.sweep(blurred.it.model), plain.sweep(plain.it.model)
    assert a[0] == b[0] and np.array_equal(a[2], b[2])


def _fresh_arrays():
    f = make_field(shape=(72, 80), num_visits=4, num_stars=15, seed=4)
    return f.images.copy(), f.variances.copy(), f.masks.copy()


def test_psf_aware_fit_beats_the_constant_psf_fit_on_blurred_visits():
    """Visits blurred to different PSFs: the PSF-aware model's metric ends lower."""
    f = make_field(shape=(72, 80), num_visits=6, num_stars=15, seed=4)
    from scipy.ndimage import gaussian_filter

    sigmas = [0.0, 0.6, 1.0, 1.4, 1.8, 2.2]
    images = np.stack([gaussian_filter(f.images[v], s) if s else f.images[v] for v, s in enumerate(sigmas)])
    cfg = DcrConfig(effectiveWavelength=f.effective_wavelength, bandwidth=f.bandwidth).validate()
    shifts = [dcr_shifts(o, f.effective_wavelength, f.bandwidth, 3, f.pixel_scale) for o in f.observations]

    def solve(variances):
        stack = S.WarpStack(images.astype(np.float32), f.variances.copy(), f.masks.copy(), f.mask_planes, shifts,
                            f.airmass)  # fmt: skip
        return S.DcrSolver(stack, cfg, psf_variances=variances).run()

    aware, constant = solve(np.array(sigmas) ** 2), solve(None)
    assert aware.history[aware.iterations].metric < 0.7 * constant.history[constant.iterations].metric


@pytest.mark.parametrize("profile", P.PROFILES)
def test_profiles_have_the_fwhm_asked_for(profile):
    image = P.profile_image(profile, 1.0, 0.2)
    assert image.sum() == pytest.approx(1.0) and image.shape[0] % 2 == 1
    # FWHM from the area above half the peak, to a pixel's resolution
    assert abs(P.fwhm_pixels(image) - 5.0) < 0.5


def test_kolmogorov_matches_galsim():
    galsim = pytest.importorskip("galsim")
    ours = P.kolmogorov_image(4.0, 33)
    theirs = galsim.Kolmogorov(fwhm=0.8).drawImage(nx=33, ny=33, scale=0.2).array
    assert np.max(np.abs(ours - theirs / theirs.sum())) < 1e-3 * ours.max()


def test_matching_sigma_between_gaussians_is_analytic():
    a, b = P.gaussian_image(1.5, 41), P.gaussian_image(2.5, 41)
    assert P.matching_sigma(a, b) == pytest.approx(2.0, abs=0.03)
    assert P.matching_sigma(b, a) == 0.0
    model = P.PsfModel.of([P.Psf(b, 1.0, "gaussian"), P.Psf(a, 0.6, "gaussian")])
    assert model.reference.image is a and model.sigmas[1] == 0.0
    assert model.sigmas[0] == pytest.approx(math.sqrt(2.5**2 - 1.5**2), rel=1e-3)


def test_measured_psf_of_a_star_field(rng):
    """Stars drawn with a known Gaussian PSF: the measured PSF has its size."""
    sigma = 1.8
    image = rng.normal(size=(200, 200))
    yy, xx = np.mgrid[:200, :200]
    for y, x in rng.uniform(20, 180, size=(12, 2)):
        image += 3000.0 * np.exp(-0.5 * ((yy - y) ** 2 + (xx - x) ** 2) / sigma**2) / (2 * np.pi * sigma**2)
    psf = P.measure(image, np.ones_like(image), np.ones_like(image, bool), 4.2, snr=20)
    truth = P.pad_to(P.gaussian_image(sigma, 41), psf.shape[0])
    assert np.max(np.abs(psf - truth / truth.sum())) < 0.05 * truth.max()


def test_a_bad_psf_image_is_refused():
    with pytest.raises(Exception, match="odd-sized square"):
        P.checked_image(np.ones((4, 4)), "x.fits: PSF HDU")
    off = np.zeros((11, 11))
    off[5, 8] = 1.0
    with pytest.raises(Exception, match="not centred"):
        P.checked_image(off, "x.fits: PSF HDU")
