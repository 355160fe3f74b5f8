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


def test_tap_table_rejects_unknown_order():
    with pytest.raises(ValueError, match="order 2"):
        kernels.tap_table(10, 0.5, 2)


def test_stack_quantiles_match_numpy(rng):
    stack = rng.normal(size=(9, 20, 30))
    use = rng.uniform(size=stack.shape) > 0.3
    use[:, 0, 0] = False  # a pixel without inputs
    use[:, 1, 1] = False
    use[4, 1, 1] = True  # a pixel with one input
    fast = kernels.stack_quantiles(stack, use, [0.25, 0.5, 0.75])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ref = np.nanpercentile(np.where(use, stack, np.nan), [25, 50, 75], axis=0)
    assert np.allclose(fast, ref, equal_nan=True, rtol=0, atol=1e-12)
    assert np.all(np.isnan(fast[:, 0, 0])) and np.all(fast[:, 1, 1] == stack[4, 1, 1])


@pytest.mark.parametrize("split", [True, False])
def test_fused_visit_pass_matches_per_shift_path(split, rng):
    from mpidcr.kernels.fused import VisitPass

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
    template, residual, acc = np.zeros((ny, nx)), np.zeros((ny, nx)), np.ones((K, ny, nx))
    diff, ref = vp.run(planes, image, good, converge, significance, inner, template, residual, acc)

    t_ref = template_reference(planes, forward, 1)
    r_ref = np.where(good, image - t_ref, 0.0)
    acc_ref = 1.0 + reverse_reference(r_ref, mean, 1)
    assert np.max(np.abs(template - t_ref)) < 1e-10 * np.max(np.abs(t_ref))
    assert np.max(np.abs(acc - acc_ref)) < 1e-10 * np.max(np.abs(acc_ref))
    sl = (slice(5, 50), slice(3, 70))
    use = (good & converge)[sl]
    assert diff == pytest.approx(np.sum(np.abs(image - t_ref)[sl][use] * significance[sl][use]), rel=1e-10)
    assert ref == pytest.approx(np.sum(np.abs(image + t_ref)[sl][use] * significance[sl][use]) / 2, rel=1e-10)


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
    acc = np.zeros((K, ny, nx))
    sums = SweepPlan(passes, block=block).run(planes, images, goods, converges, sig, inner, active, acc)
    assert np.max(np.abs(acc - expected)) < 1e-10 * np.max(np.abs(expected))
    assert np.allclose(sums, expected_sums, rtol=1e-10, atol=0)
