"""Numba shift kernels against their scipy.ndimage twins."""

import numpy as np
import pytest
from reference import reverse_reference, shift_reference, template_reference

from mpidcr import kernels


@pytest.mark.parametrize("order", [1, 3])
def test_shift_matches_scipy(order, rng):
    worst = 0.0
    for trial in range(60):
        shape = (int(rng.integers(20, 70)), int(rng.integers(20, 70)))
        img = rng.normal(size=shape) * rng.uniform(0.1, 100)
        s = rng.uniform(-6, 6, 2)
        if trial % 10 == 0:
            s[0] = 0.0  # pure x shifts, and below pure y shifts
        if trial % 10 == 1:
            s[1] = 0.0
        fast = kernels.shift_image(img, s, order)
        ref = shift_reference(img, s, order)
        worst = max(worst, np.max(np.abs(fast - ref)) / np.max(np.abs(ref)))
    assert worst < 1e-5


@pytest.mark.parametrize("order", [1, 3])
@pytest.mark.parametrize("shift", [(2, -3), (0, 5), (-6, 0), (1, 1)])
def test_integer_shift_is_translation(order, shift, rng):
    img = rng.normal(size=(40, 50))
    out = kernels.shift_image(img, shift, order)
    dy, dx = shift
    expected = np.zeros_like(img)
    expected[max(dy, 0) : img.shape[0] + min(dy, 0), max(dx, 0) : img.shape[1] + min(dx, 0)] = img[
        max(-dy, 0) : img.shape[0] - max(dy, 0), max(-dx, 0) : img.shape[1] - max(dx, 0)
    ]
    if order == 1:
        assert np.array_equal(out, expected)
    else:  # cubic: B-spline interpolation reproduces samples to rounding
        assert np.max(np.abs(out - expected)) < 1e-12 * np.max(np.abs(img))


def test_zero_shift_is_identity(rng):
    img = rng.normal(size=(33, 31))
    for order in (1, 3):
        assert np.allclose(kernels.shift_image(img, (0.0, 0.0), order), img, atol=1e-12)


@pytest.mark.parametrize("order", [1, 3])
def test_template_builder_matches_reference(order, rng):
    planes = rng.normal(size=(3, 48, 52))
    shifts = rng.uniform(-6, 6, size=(3, 2, 2))
    shifts[1, 1] = shifts[1, 0]  # an unsplit sub-filter
    fast = kernels.build_template(kernels.prefilter_planes(planes, order), shifts, order)
    ref = template_reference(planes, shifts, order)
    assert np.max(np.abs(fast - ref)) < 1e-5 * np.max(np.abs(ref))


@pytest.mark.parametrize("order", [1, 3])
def test_reverse_accumulator_matches_reference(order, rng):
    residual = rng.normal(size=(45, 41))
    mean = rng.uniform(-6, 6, size=(4, 2))
    acc = np.ones((4, 45, 41))
    kernels.accumulate_reverse(residual, mean, order, acc)
    ref = 1.0 + reverse_reference(residual, mean, order)
    assert np.max(np.abs(acc - ref)) < 1e-5 * np.max(np.abs(ref))


@pytest.mark.parametrize("order", [1, 3])
@pytest.mark.parametrize("shift", [-0.34, 0.1, 2.6, -3.2])
def test_shifts_use_the_vectorised_interior(order, shift, rng):
    """Every column but the few at the edges goes through the vectorised loop: at order 3 the
    mirrored taps of the first column once made the interior empty (the whole image through the
    scalar edge path, 10× slower), with the same result."""
    from mpidcr.kernels.shift import _interior

    n = 64
    xa, xb, offset = _interior(*kernels.tap_table(n, shift, order))
    assert xb - xa >= n - abs(shift) - 4 and offset == int(np.floor(-shift)) - (1 if order == 3 else 0)
    img = rng.normal(size=(20, n))
    assert np.max(np.abs(kernels.shift_image(img, (0.0, shift), order) - shift_reference(img, (0.0, shift), order))) < 1e-9


def test_tap_table_rejects_unknown_order():
    with pytest.raises(ValueError, match="order 2"):
        kernels.tap_table(10, 0.5, 2)


@pytest.mark.parametrize("from_input_variance", [True, False])
@pytest.mark.parametrize("statistic", ["MEAN", "MEDIAN", "MEANCLIP"])
def test_static_stack_matches_numpy_twin(statistic, from_input_variance, rng):
    """The per-pixel static-model kernel against whole-stack numpy (nanpercentile quantiles):
    outliers to clip, masked inputs, empty pixels, a zero-weight visit, mask propagation."""
    from reference import static_sky_model_reference

    from mpidcr.coadd import static_sky_model
    from mpidcr.masks import DEFAULT_PLANES

    V, ny, nx = 9, 23, 31
    images = rng.normal(5.0, 1.0, size=(V, ny, nx)).astype(np.float32)
    images[rng.uniform(size=images.shape) < 0.05] += 40.0  # cosmic rays
    variances = rng.uniform(0.5, 2.0, size=images.shape).astype(np.float32)
    sat, nodata = 1 << DEFAULT_PLANES["SAT"], 1 << DEFAULT_PLANES["NO_DATA"]
    masks = np.where(rng.uniform(size=images.shape) < 0.1, sat, 0).astype(np.int32)
    masks |= np.where(rng.uniform(size=images.shape) < 0.2, 1 << DEFAULT_PLANES["DETECTED"], 0).astype(np.int32)
    good = (rng.uniform(size=images.shape) > 0.15) & ((masks & sat) == 0)
    good[:, 0, 0] = False  # no input at all
    good[:, 1, 1] = False
    good[2, 1, 1] = True  # a single input
    weights = rng.uniform(0.5, 2.0, size=V)
    weights[4] = 0.0
    args = (images, variances, masks, good, weights, statistic, DEFAULT_PLANES, 3.0, 2, {"SAT": 0.1},
            from_input_variance)  # fmt: skip
    fast = static_sky_model(*args)
    image, variance, mask, count = static_sky_model_reference(*args)
    assert np.array_equal(fast.count, count) and np.array_equal(fast.mask, mask)
    assert np.allclose(fast.image, image, rtol=1e-12, atol=1e-12)
    assert np.allclose(fast.variance, variance, rtol=1e-12, atol=0)
    assert fast.mask[0, 0] & nodata and fast.image[0, 0] == 0 and np.isinf(fast.variance[0, 0])
    if statistic == "MEANCLIP":  # the clip did something
        assert np.any(fast.count < good.sum(axis=0) - (good[4]))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("split", [True, False])
def test_fused_visit_pass_matches_per_shift_path(split, dtype, rng):
    """The fused pass (in the model's precision) against scipy.ndimage shifts in float64."""
    from mpidcr.kernels.fused import VisitPass

    tol = 1e-10 if dtype == np.float64 else 2e-6
    ny, nx, K = 57, 73, 3
    planes = rng.normal(size=(K, ny, nx)) + 2.0
    image = rng.normal(size=(ny, nx)).astype(np.float32)
    good = rng.uniform(size=(ny, nx)) > 0.1
    converge = rng.uniform(size=(ny, nx)) > 0.5
    significance = rng.uniform(0.5, 2.0, size=(ny, nx))
    forward = rng.uniform(-4, 4, size=(K, 2, 2))
    if not split:
        forward[:, 1] = forward[:, 0]
    mean = forward.mean(axis=1)
    inner = (5, 50, 3, 70)
    vp = VisitPass((ny, nx), forward, mean, block=8)
    template, residual = np.zeros((ny, nx), dtype), np.zeros((ny, nx), dtype)
    acc = np.ones((K, ny, nx), dtype)
    diff, ref = vp.run(planes.astype(dtype), image, good, converge, significance.astype(dtype), inner, template,
                       residual, acc)  # fmt: skip

    t_ref = template_reference(planes, forward, 1)
    r_ref = np.where(good, image - t_ref, 0.0)
    acc_ref = 1.0 + reverse_reference(r_ref, mean, 1)
    assert np.max(np.abs(template - t_ref)) < tol * np.max(np.abs(t_ref))
    assert np.max(np.abs(acc - acc_ref)) < tol * np.max(np.abs(acc_ref))
    sl = (slice(5, 50), slice(3, 70))
    use = (good & converge)[sl]
    assert diff == pytest.approx(np.sum(np.abs(image - t_ref)[sl][use] * significance[sl][use]), rel=tol)
    assert ref == pytest.approx(np.sum(np.abs(image + t_ref)[sl][use] * significance[sl][use]) / 2, rel=tol)


def test_sweep_pass_threads_match_one_thread(rng):
    import numba

    from mpidcr.kernels.fused import SweepPlan, VisitPass

    ny, nx, K, V = 70, 65, 3, 4
    planes = rng.normal(size=(K, ny, nx))
    images = rng.normal(size=(V, ny, nx)).astype(np.float32)
    goods = rng.uniform(size=(V, ny, nx)) > 0.1
    sig = rng.uniform(0.5, 2, size=(ny, nx))
    forward = rng.uniform(-4, 4, size=(V, K, 2, 2))
    plan = SweepPlan([VisitPass((ny, nx), forward[v], forward[v].mean(axis=1)) for v in range(V)], block=8)
    results = []
    previous = numba.get_num_threads()
    try:
        for threads in (1, 2):
            numba.set_num_threads(threads)
            acc = np.zeros((K, ny, nx))
            sums = plan.run(planes, images, goods, goods, sig, (0, ny, 0, nx), np.ones(V, bool), acc)
            results.append((acc, sums))
    finally:
        numba.set_num_threads(previous)
    assert np.array_equal(results[0][0], results[1][0])  # blocks own disjoint rows: no reordering
    assert np.array_equal(results[0][1], results[1][1])  # sums added in block order
    # two threads split the blocks into two chunks, each with its own residual rings: still the
    # per-visit twin's result
    expected = np.zeros((K, ny, nx))
    for v in range(V):
        t, r = np.zeros((ny, nx)), np.zeros((ny, nx))
        VisitPass((ny, nx), forward[v], forward[v].mean(axis=1)).run(
            planes, images[v], goods[v], goods[v], sig, (0, ny, 0, nx), t, r, expected
        )
    assert np.max(np.abs(results[1][0] - expected)) < 1e-10 * np.max(np.abs(expected))


@pytest.mark.parametrize("integer_rows", [False, True])
@pytest.mark.parametrize("block", [1, 7, 32])
def test_sweep_pass_equals_visit_passes(block, integer_rows, rng):
    from mpidcr.kernels.fused import SweepPlan, VisitPass

    ny, nx, K, V = 61, 53, 3, 5
    planes = rng.normal(size=(K, ny, nx)) + 1.0
    images = rng.normal(size=(V, ny, nx)).astype(np.float32)
    goods = rng.uniform(size=(V, ny, nx)) > 0.1
    converges = rng.uniform(size=(V, ny, nx)) > 0.4
    sig = rng.uniform(0.5, 2, size=(ny, nx))
    forward = rng.uniform(-5, 5, size=(V, K, 2, 2))
    forward[1, :, 1] = forward[1, :, 0]  # an unsplit visit
    if integer_rows:  # whole-pixel shifts along y: one of the two row taps has weight 0
        forward[..., 0] = np.round(forward[..., 0])
    passes = [VisitPass((ny, nx), forward[v], forward[v].mean(axis=1)) for v in range(V)]
    active = np.array([True, True, False, True, True])
    inner = (4, 57, 2, 50)
    expected = np.zeros((K, ny, nx))
    expected_sums = np.zeros((V, 2))
    for v in range(V):
        if active[v]:
            t, r = np.zeros((ny, nx)), np.zeros((ny, nx))
            expected_sums[v] = passes[v].run(planes, images[v], goods[v], converges[v], sig, inner, t, r, expected)
    acc = np.full((K, ny, nx), np.nan)  # the sweep sets every accumulator pixel
    sums = SweepPlan(passes, block=block).run(planes, images, goods, converges, sig, inner, active, acc)
    assert np.max(np.abs(acc - expected)) < 1e-10 * np.max(np.abs(expected))
    assert np.allclose(sums, expected_sums, rtol=1e-10, atol=0)


# -- morphology, Gaussian smoothing and the model update -----------------------------------------
def test_numba_opening_equals_scipy(rng):
    from reference import diamond
    from scipy import ndimage

    from mpidcr.kernels.morphology import open_in_place

    for width in (1, 2, 3):
        for density in (0.1, 0.4, 0.7, 0.97):
            sel = rng.uniform(size=(60, 70)) > density  # groups, isolated pixels, edges, sparse rows
            full = ndimage.binary_opening(sel, structure=diamond(width))
            inplace = sel.astype(np.uint8)
            open_in_place(inplace, width, np.full_like(inplace, 7))  # garbage in the scratch must not leak
            assert np.array_equal(inplace.astype(bool), full)
            grown = ndimage.binary_dilation(sel, structure=diamond(width))
            assert np.array_equal(kernels.binary_dilation_diamond(sel, width), grown)
    empty = np.zeros((5, 5), np.uint8)
    open_in_place(empty, 2, np.ones_like(empty))
    assert not empty.any()


@pytest.mark.parametrize("shape", [(40, 57), (5, 3), (1, 9)])
@pytest.mark.parametrize("sigma", [2.0, 2.0 / 3.0, 3.0])
def test_gaussian_filter_matches_scipy(shape, sigma, rng):
    from scipy import ndimage

    from mpidcr.kernels.gaussian import gaussian_filter

    image = rng.normal(size=shape)
    for mode in ("reflect", "constant"):  # mode 'constant' (zeros beyond the edges) is LSST's
        ref = ndimage.gaussian_filter(image, sigma, mode=mode, truncate=4.0)
        assert np.max(np.abs(gaussian_filter(image, sigma, mode=mode) - ref)) < 1e-13 * np.max(np.abs(ref)), mode
        single = gaussian_filter(image.astype(np.float32), sigma, mode=mode)
        assert single.dtype == np.float32 and np.max(np.abs(single - ref)) < 2e-6 * np.max(np.abs(ref))
    with pytest.raises(ValueError, match="in place"):
        gaussian_filter(image, sigma, out=image)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_frequency_regularization_matches_numpy_twin(dtype, rng):
    from reference import regularize_frequency_reference

    from mpidcr.update import regularize_frequency

    yy, xx = np.mgrid[0:48, 0:52]
    source = 50 * np.exp(-((yy - 24) ** 2 + (xx - 20) ** 2) / (2 * 4.0**2)) + 5.0
    planes = np.stack([source, source * 0.8, source * 1.1]) + rng.normal(0, 0.5, (3, 48, 52))
    planes[1, 20:29, 14:23] *= 12.0  # one sub-filter far off on a coherent region: clamped
    planes[2, 5, 40] = -300.0  # an isolated pixel: left to the ratio step
    expected = planes.copy()
    regularize_frequency_reference(expected, 4.0, 2, 0.3)
    fast = planes.astype(dtype)
    regularize_frequency(fast, 4.0, 2, 0.3)
    tol = 1e-10 if dtype == np.float64 else 1e-5
    assert np.max(np.abs(fast - expected)) < tol * np.max(np.abs(expected))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_iteration_clamp_matches_numpy_twin(dtype, rng):
    from reference import apply_thresholds_reference

    from mpidcr.update import clamp_to_previous

    old = rng.uniform(-2, 10, size=(50, 60))
    new = old * rng.uniform(0.2, 3.5, size=old.shape)
    new[10:20, 10:20] = 60.0
    expected = new.copy()
    apply_thresholds_reference(expected, np.abs(old) * 2.0, old / 2.0, 2)
    fast = new.astype(dtype)
    clamp_to_previous(fast, old.astype(dtype), 2.0, 2)
    assert np.allclose(fast, expected, rtol=1e-6 if dtype == np.float32 else 1e-12, atol=0)
    assert not np.allclose(expected, new)  # the clamp did something


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_gaussian_post_operations_match_scipy(dtype, rng):
    """The frequency regularization's ratio and sharpening, fused into the smoothing, against
    scipy's Gaussian followed by the plain formulas."""
    from scipy import ndimage

    from mpidcr.kernels.gaussian import gaussian_filter, gaussian_ratio, gaussian_sharpen

    tol = 1e-12 if dtype == np.float64 else 1e-5
    image = rng.normal(1.0, 0.5, size=(37, 45))
    denominator = rng.uniform(0.5, 2.0, size=image.shape)
    denominator[3, 4] = 0.0  # a ratio that is not finite becomes 1
    smoothed = ndimage.gaussian_filter(image, 2.0, mode="reflect", truncate=4.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = (smoothed + 0.1) / denominator
    ratio = np.where(np.isfinite(ratio), ratio, 1.0)
    got = gaussian_ratio(image.astype(dtype), 2.0, 0.1, denominator.astype(dtype), np.empty(image.shape, dtype))
    assert got[3, 4] == 1.0 and np.allclose(got, ratio, rtol=tol, atol=0)
    sharpened = (image + 3 * (image - ndimage.gaussian_filter(image, 2 / 3, mode="reflect"))) * denominator
    got = gaussian_sharpen(image.astype(dtype), 2 / 3, denominator.astype(dtype), np.empty(image.shape, dtype))
    assert np.allclose(got, sharpened, rtol=10 * tol, atol=10 * tol)
    got = gaussian_filter(image.astype(dtype), 2.0, add=0.25)
    assert np.allclose(got, smoothed + 0.25, rtol=tol, atol=0)
    assert np.array_equal(gaussian_filter(image, 0.0), image)  # sigma 0: the identity, as scipy


def test_opening_works_on_each_bit(rng):
    from reference import diamond
    from scipy import ndimage

    from mpidcr.kernels.morphology import open_in_place

    bits = [rng.uniform(size=(40, 50)) > p for p in (0.1, 0.25)]
    sel = (bits[0].astype(np.uint8) | (bits[1].astype(np.uint8) << 1)).astype(np.uint8)
    open_in_place(sel, 2, np.full_like(sel, 255))  # garbage scratch
    for b, plane in enumerate(bits):
        expected = ndimage.binary_opening(plane, structure=diamond(2))
        assert np.array_equal((sel >> b) & 1, expected) and expected.any()


@pytest.mark.parametrize("scales", [(2.0, 0.5), (0.5, 2.0)])  # ordered limits (one pass), and not (two)
def test_clamp_equals_two_scipy_clamps(scales, rng):
    """The two-bit clamp against scipy: the upper clamp on its opened selection, then the lower."""
    from reference import apply_thresholds_reference

    from mpidcr.kernels.regularize import clamp_opened

    base = rng.uniform(-1, 4, size=(45, 52)).astype(np.float32)
    image = (base * rng.uniform(0.1, 4.0, size=base.shape)).astype(np.float32)
    image[5:15, 5:15] = 30.0
    image[25:35, 30:40] = -20.0
    expected = image.copy()
    apply_thresholds_reference(expected, np.abs(base) * np.float32(scales[0]), base * np.float32(scales[1]), 2)
    fused = image.copy()
    work = [np.full(base.shape, 255, np.uint8) for _ in range(2)]  # garbage work images
    clamp_opened(fused, base, scales[0], True, scales[1], False, 2, *work)
    assert np.array_equal(fused, expected) and not np.array_equal(expected, image)


def test_update_passes_match_formulas(rng):
    from mpidcr.kernels import regularize

    model = rng.normal(size=(3, 20, 30)).astype(np.float32)
    acc = rng.normal(size=model.shape).astype(np.float32)
    inv = rng.uniform(0, 1, size=model.shape).astype(np.float32)
    acc[1, 3, 4] = np.inf  # a non-finite update keeps the model's value
    out = regularize.apply_update(model, acc, inv, np.empty_like(model))
    expected = model + inv * acc
    expected[1, 3, 4] = model[1, 3, 4]
    assert np.allclose(out, expected, rtol=1e-6)
    weights = rng.uniform(0, 1, size=(20, 30)).astype(np.float32)
    static = rng.normal(size=(20, 30)).astype(np.float32)
    share = static * (1 - weights) / 3
    got = regularize.condition_weighted(out, model, 0.7, weights, share, out=np.empty_like(model))
    formula = ((0.7 * out + model) / 1.7) * weights + share
    assert np.allclose(got, formula, rtol=1e-5, atol=1e-6)
    plain = regularize.condition_weighted(out, model, 0.7, None, None, out=np.empty_like(model))
    assert np.allclose(plain, (0.7 * out + model) / 1.7, rtol=1e-6)
    # in place (the solver's call, a loop of its own) gives the same bits as into another array
    flux = rng.normal(size=(20, 30)).astype(np.float32)
    for w, s in ((weights, share), (None, None)):
        for f in (flux, None):
            separate = regularize.condition_weighted(out, model, 0.7, w, s, out=np.empty_like(model), flux=f)
            inplace = out.copy()
            regularize.condition_weighted(inplace, model, 0.7, w, s, out=inplace, flux=f)
            assert np.array_equal(inplace, separate)
    with pytest.raises(ValueError, match="overlap"):
        regularize.condition_weighted(out, model, 0.7, None, None, out=out[::-1])


def test_coverage_pass_matches_scipy_shifts(rng):
    """dcrWeights and nImage: Σ_v reverse-shift(good_v) and Σ_v rint(reverse-shift(good_v))."""
    from mpidcr.kernels.fused import SweepPlan, VisitPass, coverage

    ny, nx, K, V = 45, 51, 3, 4
    goods = rng.uniform(size=(V, ny, nx)) > 0.2
    forward = rng.uniform(-4, 4, size=(V, K, 2, 2))
    forward[2, :, :, 0] = np.round(forward[2, :, :, 0])  # whole-pixel rows
    plan = SweepPlan([VisitPass((ny, nx), forward[v], forward[v].mean(axis=1)) for v in range(V)])
    active = np.array([True, True, True, False])
    inv, nim = np.full((K, ny, nx), np.nan, np.float32), np.full((K, ny, nx), -1, np.int32)
    determined = np.zeros((ny, nx), bool)
    coverage(plan, goods, active, inv, nim, determined)
    expected_cov, expected_nim = np.zeros((K, ny, nx)), np.zeros((K, ny, nx), np.int32)
    for v in range(3):
        shifted = reverse_reference(goods[v].astype(float), forward[v].mean(axis=1), 1)
        expected_cov += shifted
        expected_nim += np.rint(shifted).astype(np.int32)
    expected_determined = np.all(expected_cov > 1.0, axis=0)
    # a coverage within rounding of 1 may go either way
    assert np.mean(determined == expected_determined) > 0.999 and 0.2 < determined.mean() < 1
    both = determined & expected_determined
    assert np.allclose(inv[:, both], 1.0 / expected_cov[:, both], rtol=1e-6)  # float32
    assert np.all(inv[:, ~determined] == 0) and np.all(nim[:, ~determined] == 0)
    # rint of values within rounding of .5 may go either way
    assert np.mean(nim[:, both] == expected_nim[:, both]) > 0.999


def test_classify_pixels(rng):
    images = rng.normal(size=(3, 8, 9)).astype(np.float32)
    variances = np.ones_like(images)
    masks = rng.integers(0, 16, size=images.shape).astype(np.int32)
    images[0, 1, 1] = np.nan
    variances[1, 2, 2] = np.inf
    variances[2, 3, 3] = np.nan
    images[2, 4, 4] = 3e38  # not data: beyond the magnitude limit
    missing = ~np.isfinite(images) | ~np.isfinite(variances) | (np.abs(images) > 1e30)
    expected_masks = (masks & ~np.int32(4)) | np.where(missing, 32, 0).astype(np.int32)
    good_ref = ((expected_masks & 1) == 0) & ~missing
    img_ref = np.where(good_ref, images, 0)
    var_ref = np.where(good_ref, variances, 0)
    good, converge = kernels.classify_pixels(images, variances, masks, 4, 1, 2 | 4, 32, 1e30)
    assert np.array_equal(good, good_ref) and np.array_equal(images, img_ref)
    assert np.array_equal(variances, var_ref) and np.array_equal(masks, expected_masks)
    assert np.array_equal(masks, expected_masks) and np.array_equal(converge, (expected_masks & 2) != 0)


def test_selected_sums_match_numpy(rng):
    from mpidcr.kernels.moments import selected_sums

    values = rng.normal(size=(30, 41)).astype(np.float32)
    select = rng.uniform(size=values.shape) > 0.2
    values[3, 3], values[4, 4], values[5, 5] = np.nan, np.inf, -np.inf
    v = values.astype(np.float64)
    use = select & np.isfinite(v) & (v >= -1.5) & (v <= 2.0)
    n, total, m2 = selected_sums(values, select, -1.5, 2.0, 0.25)
    assert n == use.sum() and total == pytest.approx(v[use].sum(), rel=1e-12)
    assert m2 == pytest.approx(((v[use] - 0.25) ** 2).sum(), rel=1e-12)
    everything = select & np.isfinite(v)  # no window: infinities are still left out
    assert selected_sums(values, select)[0] == everything.sum()


def test_sorting_network_sorts(rng):
    from mpidcr.kernels.stack import sorting_network

    for n in range(1, 20):
        network = sorting_network(n)
        assert np.all(network[:, 0] < network[:, 1]) and (n < 2 or network.max() == n - 1)
        keys = rng.integers(0, 4, size=(200, n))  # many ties
        for a, b in network:
            lo, hi = np.minimum(keys[:, a], keys[:, b]), np.maximum(keys[:, a], keys[:, b])
            keys[:, a], keys[:, b] = lo, hi
        assert np.all(np.diff(keys, axis=1) >= 0)
    assert len(sorting_network(12)) == 41


def test_selected_sums_leave_out_excluded_mask_bits(rng):
    from mpidcr.kernels.moments import selected_sums

    values = rng.normal(size=(20, 30)).astype(np.float32)
    select = rng.uniform(size=values.shape) > 0.1
    masks = rng.integers(0, 8, size=values.shape).astype(np.int32)
    use = select & ((masks & 0b101) == 0)
    n, total, _ = selected_sums(values, select, masks=masks, excluded=0b101)
    assert n == use.sum() and total == pytest.approx(values[use].astype(float).sum(), rel=1e-12)


def test_flux_given_back_in_the_conditioning_pass(rng):
    """The solver gives back the flux the frequency regularization moved inside its conditioning
    pass (mpidcr.update.regularize_frequency with defer_flux): bit for bit numpy's steps one at a
    time, with and without model weights; the reference pass's sums are numpy's sum over the planes."""
    from mpidcr.kernels import regularize

    K, ny, nx = 3, 23, 31
    planes = rng.normal(5, 2, size=(K, ny, nx)).astype(np.float32)
    old = rng.normal(5, 2, size=(K, ny, nx)).astype(np.float32)
    flux = (planes.sum(axis=0) + rng.normal(size=(ny, nx))).astype(np.float32)
    weights = rng.uniform(0, 1, size=(ny, nx)).astype(np.float32)
    share = rng.normal(size=(ny, nx)).astype(np.float32)
    expected = planes.copy()
    step = flux - expected.sum(axis=0)
    step *= np.float32(1.0 / K)
    expected += step[None]
    restored = planes.copy()
    regularize.restore_flux(restored, flux)
    assert np.array_equal(restored, expected)
    assert np.allclose(restored.sum(axis=0), flux, rtol=1e-5)
    for w, s in ((weights, share), (None, None)):
        one_at_a_time = regularize.condition_weighted(expected, old, 0.7, w, s, out=np.empty_like(planes))
        fused = planes.copy()
        regularize.condition_weighted(fused, old, 0.7, w, s, out=fused, flux=flux)
        assert np.array_equal(fused, one_at_a_time)
    work = regularize.FrequencyWork((ny, nx), np.float32)
    regularize._plane_mean_positive(planes, work.ref, work.flux, True)
    assert np.array_equal(work.flux, planes.sum(axis=0))
    with pytest.raises(ValueError, match="reference"):
        regularize.regularize_frequency(planes, 4.0, 2, 1.0, work, reference=old, flux=work.flux)


@pytest.mark.parametrize("kernel", ["gaussian", "static_stack"])
def test_threaded_twin_matches_serial_kernel(kernel, rng):
    """A threadable kernel runs its parallel=True twin with several numba threads and the serial
    dispatcher with one; rows are independent, so the results are identical."""
    import numba

    from mpidcr.coadd import static_sky_model
    from mpidcr.kernels import gaussian, stack
    from mpidcr.masks import DEFAULT_PLANES

    images = rng.normal(5.0, 1.0, size=(7, 37, 41)).astype(np.float32)
    good = rng.uniform(size=images.shape) > 0.1

    def call():
        if kernel == "gaussian":
            return (gaussian.gaussian_filter(images[0], 2.0),)
        m = static_sky_model(images, np.ones_like(images), np.zeros(images.shape, np.int32), good, np.ones(7),
                             "MEANCLIP", DEFAULT_PLANES, 3.0, 2, {}, True)  # fmt: skip
        return m.image, m.variance, m.mask

    twin = gaussian._gaussian if kernel == "gaussian" else stack._static_stack
    previous = numba.get_num_threads()
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba allows one thread here")
    try:
        numba.set_num_threads(1)
        serial = call()
        numba.set_num_threads(2)
        threaded = call()
    finally:
        numba.set_num_threads(previous)
    assert twin.threaded.signatures and twin.serial.signatures
    for a, b in zip(serial, threaded, strict=True):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("shape, radius", [((40, 37), 6), ((9, 11), 7), ((64, 80), 1)])
def test_separable_correlation_matches_scipy(shape, radius, rng):
    """The PSF matching's correlation (the Gaussian kernel's loop with any symmetric kernel) against
    scipy.ndimage.correlate1d along y then x, mode 'reflect' — also with a kernel longer than the
    image, where the mirroring repeats."""
    from scipy import ndimage

    from mpidcr.kernels.gaussian import correlate_separable

    image = rng.normal(size=shape)
    x = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * (x / (0.4 * radius + 0.3)) ** 2)
    weights /= weights.sum()
    expected = ndimage.correlate1d(ndimage.correlate1d(image, weights, axis=0, mode="reflect"), weights, axis=1,
                                   mode="reflect")  # fmt: skip
    assert np.allclose(correlate_separable(image, weights), expected, rtol=1e-13, atol=1e-13)
    with pytest.raises(ValueError, match="symmetric"):
        correlate_separable(image, np.array([0.2, 0.3, 0.5]))
