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


def _setup(variances, wing_sigmas=(), wing_weights=None):
    f = make_field(shape=(72, 80), num_visits=len(variances), num_stars=15, seed=4)
    cfg = DcrConfig(effectiveWavelength=f.effective_wavelength, bandwidth=f.bandwidth).validate()
    shifts = [dcr_shifts(o, f.effective_wavelength, f.bandwidth, 3, f.pixel_scale, cfg.splitSubfilters,
                         cfg.splitThreshold) for o in f.observations]  # fmt: skip
    stack = S.WarpStack(f.images.copy(), f.variances.copy(), f.masks.copy(), f.mask_planes, shifts, f.airmass)
    solver = S.DcrSolver(stack, cfg, blur=P.blur_plan(np.asarray(variances), cfg.psfTolerance, wing_sigmas,
                                                      wing_weights))  # fmt: skip
    return solver, cfg


def _reference_blur(image, steps, reverse=False):
    for v in (reversed(steps) if reverse else steps):
        image = blur_step_reference(image, v)
    return image


def _reference_kernel(image, steps, core, wings, reverse=False):
    """c·(steps) + Σ_j w_j·Gaussian(σ_j) with scipy (each Gaussian symmetric: its own adjoint)."""
    from scipy.ndimage import gaussian_filter

    out = core * _reference_blur(image, steps, reverse)
    for w, sigma in wings:
        out += w * gaussian_filter(image, sigma, mode="reflect", truncate=P.WING_TRUNCATE)
    return out


WING_CASES = {
    "one Gaussian": ((), None),
    "two wings": ((2.2, 4.1), np.array([[0, 0], [0.05, 0.02], [0.1, 0.03], [0.12, 0.0], [0.2, 0.08]])),
}


#: the visits' matching variances: with the reference PSF's visit (group 0 not blurred), and without
#: it (group 0 has steps of its own); 2.4 after 1.12 takes three steps
VARIANCE_CASES = {"with the reference": [0.0, 0.3, 1.1, 1.12, 2.4], "all blurred": [0.7, 0.3, 1.1, 1.12, 2.4]}


@pytest.mark.parametrize("variance_case", VARIANCE_CASES)
@pytest.mark.parametrize("case", WING_CASES)
def test_blurred_sweep_equals_the_visit_by_visit_reference(case, variance_case):
    """acc = Σ_v K_vᵀ Sᵀ((s_v − K_v S ŷ)·g_v) and the metric sums of templates K_v S ŷ, computed
    visit by visit in float64 with the scipy twins; K_v the group's steps, and with wings its
    core weight times them plus the weighted wing Gaussians."""
    variances = VARIANCE_CASES[variance_case]
    wing_sigmas, wing_weights = WING_CASES[case]
    solver, cfg = _setup(variances, wing_sigmas, wing_weights)
    model = solver.it.model
    _, _, acc = solver.sweep(model)
    plan = solver.blur
    assert plan.support == (max(len(sum(plan.steps, ())), 12) if wing_sigmas else len(sum(plan.steps, ())))
    planes = amplified(model.astype(np.float64), cfg.accelerateModel)
    expected = np.zeros_like(planes)
    for v in range(len(variances)):
        g = plan.group_of[v]
        steps = [s for group in plan.steps[: g + 1] for s in group]
        wings = list(zip(plan.wing_weights[g], wing_sigmas, strict=True)) if wing_sigmas else []
        core = plan.core_weight(g)
        blurred = np.stack([_reference_kernel(p, steps, core, wings) for p in planes])
        template = kernels.build_template(kernels.prefilter_planes(blurred, 1), solver.warps.shifts[v].forward, 1)
        residual = np.where(solver.good[v], solver.warps.images[v] - template, 0.0)
        back = np.zeros_like(planes)
        kernels.accumulate_reverse(residual, solver.warps.shifts[v].mean, 1, back)
        expected += np.stack([_reference_kernel(b, steps, core, wings, reverse=True) for b in back])
    scale = np.abs(expected).max()
    assert np.max(np.abs(acc - expected)) < 2e-5 * scale


def test_group_wing_weights_are_their_visits_mean():
    weights = np.array([[0.1, 0.0], [0.3, 0.1], [0.0, 0.2]])
    plan = P.blur_plan(np.array([1.0, 1.05, 3.0]), 0.05, (2.0, 4.0), weights)
    assert plan.group_of == (0, 0, 1)
    assert plan.wing_weights[0] == pytest.approx((0.2, 0.05)) and plan.wing_weights[1] == pytest.approx((0.0, 0.2))
    assert plan.core_weight(0) == pytest.approx(0.75) and plan.support == 12  # the σ = 4 wing's radius, 3σ
    with pytest.raises(ValueError, match="wing weights"):
        P.blur_plan(np.array([1.0]), 0.05, (2.0,), np.array([[1.2]]))


def _aperture(image, radius):
    half = image.shape[0] // 2
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1]
    return image[np.hypot(yy, xx) <= radius].sum()


def test_kolmogorov_matching_kernels_need_wings():
    """Kolmogorov seeing of 0.6 arcsec matched to 1.2 arcsec (0.2 arcsec/px): a single Gaussian puts
    several % too much light in the core; the kernel with wing Gaussians matches the broad PSF to a
    fraction of that, in the residual and in aperture flux, with the solver's own discrete kernels."""
    sharp, broad = P.kolmogorov_image(3.0, 61), P.kolmogorov_image(6.0, 61)
    fwhm = P.fwhm_pixels(broad)
    single = P.fit_matching(sharp, broad)
    assert single.weights == ()
    errors = {}
    for wings in (0, 1, 2):
        sigmas = tuple(m * math.sqrt(single.variance) for m in P.WING_MULTIPLES.get(wings, ()))
        kernel = P.fit_matching(sharp, broad, sigmas)
        model = kernel.apply(sharp, sigmas)
        errors[wings] = (np.sqrt(((model - broad) ** 2).sum()), _aperture(model, fwhm) / _aperture(broad, fwhm) - 1)
        assert all(w >= 0 for w in kernel.weights) and sum(kernel.weights) <= 1
    assert errors[0][1] > 0.03  # the core too bright within one FWHM of radius
    assert errors[1][0] < errors[0][0] / 4 and abs(errors[1][1]) < 0.01
    assert errors[2][0] < errors[1][0] and abs(errors[2][1]) < 0.01


def test_psf_model_wings():
    """Kolmogorov visits get shared wing Gaussians, weighted more for broader visits; Gaussian
    visits need none (the core is exact); the reference's kernel is the identity."""
    psfs = [P.Psf(P.kolmogorov_image(f, 51), f * 0.2, "kolmogorov") for f in (3.0, 4.0, 5.5)]
    model = P.PsfModel.of(psfs, wings=1)
    assert len(model.wing_sigmas) == 1 and model.wing_sigmas[0] > max(model.sigmas)
    weights = model.wing_weights[:, 0]
    assert weights[0] == 0 and model.variances[0] == 0 and 0 < weights[1] < weights[2] < 0.5
    assert model.plan(0.05).wing_sigmas == model.wing_sigmas
    assert P.PsfModel.of(psfs, wings=0).wing_sigmas == ()
    gaussians = [P.Psf(P.gaussian_image(s, 31), s, "gaussian") for s in (1.2, 1.8)]
    assert P.PsfModel.of(gaussians, wings=2).wing_sigmas == ()


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
        blur = None if variances is None else P.blur_plan(variances, cfg.psfTolerance)
        return S.DcrSolver(stack, cfg, blur=blur).run()

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


@pytest.mark.parametrize("add", [True, False])
def test_mixing_kernels_equal_numpy(rng, add):
    """mix_blurs and spread_blurs (one blocked pass each) against plain numpy in float32; the
    spread with add=False may write into its own input (the broadest group's accumulators)."""
    from mpidcr.kernels.gaussian import mix_blurs, spread_blurs

    core = rng.normal(size=(3, 50, 97)).astype(np.float32)
    wings = rng.normal(size=(2, 3, 50, 97)).astype(np.float32)
    w = np.array([0.15, 0.05])
    out = mix_blurs(core, 0.8, wings, w, np.empty_like(core))
    expected = np.float32(0.8) * core + np.float32(0.15) * wings[0] + np.float32(0.05) * wings[1]
    assert np.allclose(out, expected, rtol=1e-6, atol=1e-6)
    group, total, wing_acc = core.copy(), rng.normal(size=core.shape).astype(np.float32), wings.copy()
    want_wings = wings + w[:, None, None, None].astype(np.float32) * group
    want_total = (total if add else 0) + np.float32(0.8) * group
    spread_blurs(group, 0.8, w, wing_acc, total if add else group, add)
    assert np.allclose(wing_acc, want_wings, rtol=1e-6, atol=1e-6)
    assert np.allclose(total if add else group, want_total, rtol=1e-6, atol=1e-6)


def test_wing_kernel_is_the_solvers_gaussian():
    from mpidcr.kernels.gaussian import gaussian_weights

    for sigma in (0.7, 2.2, 4.5):
        assert np.array_equal(P.wing_kernel(sigma), gaussian_weights(sigma, P.WING_TRUNCATE))


def test_memory_rule_counts_the_psf_aware_buffers():
    """What the memory rule adds for the PSF-aware model (blur groups, then wings) is what the
    solver allocates for it: streamed, its scratch images, wings and rings (the rule's bound on the
    rings at most 3× theirs); group by group, also each group's planes and one set of
    accumulators, to within the 8 bytes per pixel of per-pixel work images."""
    from mpidcr.resources import memory_per_rank, stream_ring_rows
    from mpidcr.tiling import Plan

    def psf_bytes(solver, streamed):
        solver.stream_blur = streamed
        solver.sweep(solver.it.model)
        names = ("_blur_scratch", "_wing_planes", "_wing_acc") + (() if streamed else ("_blurred", "_group_acc"))
        rings = solver._stream[1].schedule(1).pool.nbytes if streamed else 0
        return sum(getattr(solver, n).nbytes for n in names), rings

    variances = [0.0, 0.3, 1.1, 1.12, 2.4]
    plain, _ = _setup(variances)
    winged, _ = _setup(variances, *WING_CASES["two wings"])
    shape = plain.warps.images.shape[1:]
    pixels = shape[0] * shape[1]
    plan = Plan(shape, (1, 1), 0)
    groups = len(plain.blur.variances)
    constant = memory_per_rank(plan, 5, 3)
    for streamed in (False, True):
        for solver, wings in ((plain, 0), (winged, 2)):
            images, rings = psf_bytes(solver, streamed)
            support = solver.blur.support
            rule = memory_per_rank(plan, 5, 3, groups, wings, support, streamed) - constant
            ring_rule = 4 * shape[1] * stream_ring_rows(5, 3, groups, support) if streamed else 0
            assert 0 <= rule - ring_rule - images <= 8 * pixels
            assert rings <= ring_rule <= 3 * rings
        assert psf_bytes(winged, streamed)[0] - psf_bytes(plain, streamed)[0] == pixels * 4 * 3 * 2 * 2


@pytest.mark.parametrize("variance", [0.0, 0.2, 0.5])
@pytest.mark.parametrize("wings", [0, 2])
def test_fused_blur_steps_equal_numpy(rng, variance, wings):
    """blur_step_mix and blur_step_gather (one pass each) against the scipy step and numpy in
    float32; the gather also into its own ``add`` input, as the solver calls it."""
    from mpidcr.kernels.gaussian import blur_step_gather, blur_step_mix

    image = rng.normal(size=(37, 61)).astype(np.float32)
    wing = rng.normal(size=(wings, 37, 61)).astype(np.float32)
    w = np.array([0.15, 0.05][:wings])
    stepped = blur_step_reference(image.astype(np.float64), variance)
    core, mixed = np.empty_like(image), np.empty_like(image)
    blur_step_mix(image, variance, core, 0.8, wing, w, mixed)
    assert np.allclose(core, stepped, rtol=1e-5, atol=1e-5)
    assert np.allclose(mixed, 0.8 * stepped + np.tensordot(w, wing, axes=1), rtol=1e-5, atol=1e-5)
    for into_add in (False, True):
        add = rng.normal(size=image.shape).astype(np.float32)
        acc = rng.normal(size=wing.shape).astype(np.float32)
        want_acc = acc + w[:, None, None] * add
        want = stepped + 0.8 * add
        out = add if into_add else np.empty_like(image)
        blur_step_gather(image, add, variance, 0.8, acc, w, out)
        assert np.allclose(acc, want_acc, rtol=1e-5, atol=1e-5)
        assert np.allclose(out, want, rtol=1e-5, atol=1e-5)
