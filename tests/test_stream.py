"""The PSF-aware sweep streamed by rows (kernels.stream) against the group-by-group sweep over whole
planes: the same row arithmetic in the same order, so the same bits, for any split of the rows."""

import numba
import numpy as np
import pytest
from test_psf_model import _setup

from mpidcr.kernels.stream import StreamPlan

TWO_WINGS = ((2.2, 4.1), np.array([[0, 0], [0.05, 0.02], [0.1, 0.03], [0.12, 0.0], [0.2, 0.08]]))

#: matching variances (pixels²) and wings: the reference visit unblurred or every visit blurred; one
#: visit per group (its rows wait in its residual ring) or a group of three (in its planes' ring)
CASES = {
    "one Gaussian": ([0.0, 0.3, 1.1, 1.12, 2.4], (), None),
    "two wings, all blurred": ([0.7, 0.3, 1.1, 1.12, 2.4], *TWO_WINGS),
    "a group of three": ([0.0, 1.3, 1.3, 1.31, 2.4], (2.2,), np.array([[0.0], [0.1], [0.12], [0.1], [0.2]])),
}


def _sweeps(solver, model):
    """(metric, per-visit metrics, accumulators, wing accumulators) of the group-by-group sweep and
    of the streamed one."""
    out = []
    for stream in (False, True):
        solver.stream_blur = stream
        metric, per_visit, acc = solver.sweep(model)
        out.append((metric, per_visit.copy(), acc.copy(), solver._wing_acc.copy()))
    return out


def _perturbed(solver, seed=1):
    """The first model with structure of its own: planes that differ, so the sub-filters' sweeps differ."""
    rng = np.random.default_rng(seed)
    model = solver.it.model.copy()
    return (model * rng.uniform(0.5, 1.5, size=model.shape)).astype(model.dtype)


@pytest.mark.parametrize("case", CASES)
def test_streamed_sweep_is_the_group_by_group_sweep_bit_for_bit(case):
    variances, wing_sigmas, wing_weights = CASES[case]
    solver, _ = _setup(variances, wing_sigmas, wing_weights)
    model = _perturbed(solver)
    by_group, streamed = _sweeps(solver, model)
    assert solver._stream is not None  # the streamed path ran
    assert streamed[0] == by_group[0]
    for a, b in zip(streamed[1:], by_group[1:], strict=True):
        assert np.array_equal(a, b)
    assert np.any(streamed[2] != 0) and np.all(np.isfinite(streamed[2]))


def test_inactive_visits_and_runs_of_rows_change_nothing():
    """A visit of weight 0 is left out of both sweeps alike; split into 1, 2 or 3 runs of rows (each
    recomputing the rows it needs beyond its ends), the streamed sweep gives the same bits."""
    variances, wing_sigmas, wing_weights = CASES["two wings, all blurred"]
    solver, _ = _setup(variances, wing_sigmas, wing_weights)
    solver.visit_weights[2] = 0.0
    model = _perturbed(solver, seed=2)
    by_group, streamed = _sweeps(solver, model)
    assert streamed[1][2] == 0.0 and by_group[1][2] == 0.0
    for a, b in zip(streamed[1:], by_group[1:], strict=True):
        assert np.array_equal(a, b)
    plan = solver._stream[1]
    assert not np.any(plan.visits == 2)  # no op for the inactive visit
    ys, xs = solver.inner
    for runs in (2, 3):
        acc = np.empty_like(model)
        wing_acc = np.zeros_like(solver._wing_acc)
        planes = solver._amplified if solver.cfg.accelerateModel != 1.0 else model
        solver.sweep(model)  # (sets the amplified planes and wing Gaussians the plan reads)
        sums = plan.run(planes, solver._wing_planes, solver.warps.images, solver.good, solver.converge_pixels,
                        solver._significance, (ys.start, ys.stop, xs.start, xs.stop), wing_acc, acc, runs=runs)
        for k in range(acc.shape[0]):
            solver._add_wings(acc[k], acc, k)
        assert plan.schedule(runs).owned.shape[0] == runs
        assert np.array_equal(acc, streamed[2])
        assert np.array_equal(wing_acc, streamed[3])
        V = len(variances)
        assert np.array_equal(np.concatenate([sums[:, 0], sums[:, 1]]) / 1.0, _sums(solver, model, V))


def _sums(solver, model, V):
    """The metric's per-visit sums of the group-by-group sweep, (2V,)."""
    solver.stream_blur = False
    planes = solver._amplified if solver.cfg.accelerateModel != 1.0 else model
    return solver._sweep_by_group(planes, solver._significance, np.empty_like(model), solver.inner)


def test_threads_give_the_serial_bits():
    """The threaded twin (runs of rows in parallel, each adding only its own rows to the wing
    accumulators and the metric sums) gives the serial kernel's bits."""
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba allows one thread here")
    variances, wing_sigmas, wing_weights = CASES["two wings, all blurred"]
    solver, _ = _setup(variances, wing_sigmas, wing_weights)
    model = _perturbed(solver, seed=3)
    previous = numba.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            numba.set_num_threads(threads)
            metric, per_visit, acc = solver.sweep(model)
            results.append((metric, per_visit.copy(), acc.copy()))
    finally:
        numba.set_num_threads(previous)
    assert results[0][0] == results[1][0]
    assert np.array_equal(results[0][1], results[1][1]) and np.array_equal(results[0][2], results[1][2])
    assert solver._stream[1].schedule(2).owned.shape[0] == 2


def test_rings_hold_a_few_rows_of_each_buffer():
    """The point of streaming: each intermediate buffer is a ring of a few rows, not a plane.  On a
    256-row field of 16 one-visit groups the rings of a run hold less than a quarter of the rows of
    the 48 planes the group-by-group sweep keeps (their share shrinks as the image grows: the
    rings' rows do not depend on its height), and every ring fewer rows than the image."""
    from mpidcr.config import DcrConfig
    from mpidcr.dcr import dcr_shifts
    from mpidcr.psf import blur_plan
    from mpidcr.sim.field import make_field
    from mpidcr.solver import DcrSolver, WarpStack

    f = make_field(shape=(256, 96), num_visits=16, num_stars=20, seed=5)
    cfg = DcrConfig(effectiveWavelength=f.effective_wavelength, bandwidth=f.bandwidth).validate()
    shifts = [dcr_shifts(o, f.effective_wavelength, f.bandwidth, 3, f.pixel_scale) for o in f.observations]
    stack = WarpStack(f.images, f.variances, f.masks, f.mask_planes, shifts, f.airmass)
    variances = np.linspace(0.0, 4.0, 16)
    blur = blur_plan(variances, cfg.psfTolerance, (3.0,), np.linspace(0.0, 0.2, 16)[:, None])
    solver = DcrSolver(stack, cfg, blur=blur)
    plan = StreamPlan(solver.sweep_plan, blur, 3, (256, 96), np.ones(16, bool))
    schedule = plan.schedule(1)
    assert len(blur.variances) == 16
    assert schedule.pool_rows < 16 * 3 * 256 / 4
    assert np.all(schedule.sizes < 256)


@pytest.mark.parametrize("offset", [2.5, -2.5])
def test_visits_whose_first_or_last_rows_read_nothing(offset):
    """A visit whose every sub-filter samples ``offset`` rows away (all shifts one way) has template
    rows at an edge that read no row of the planes; the schedule must still start its planes' rows
    where its later rows need them (it once started them after the end, and the visit read rows
    never made)."""
    import dataclasses

    from mpidcr import psf as P
    from mpidcr import solver as S
    from mpidcr.config import DcrConfig
    from mpidcr.dcr import dcr_shifts
    from mpidcr.sim.field import make_field

    variances, wing_sigmas, wing_weights = CASES["two wings, all blurred"]
    f = make_field(shape=(72, 80), num_visits=len(variances), num_stars=15, seed=4)
    cfg = DcrConfig(effectiveWavelength=f.effective_wavelength, bandwidth=f.bandwidth).validate()
    shifts = [dcr_shifts(o, f.effective_wavelength, f.bandwidth, 3, f.pixel_scale) for o in f.observations]
    moved = np.array([offset, 0.0])
    shifts[1] = dataclasses.replace(shifts[1], forward=shifts[1].forward + moved, mean=shifts[1].mean + moved)
    stack = S.WarpStack(f.images.copy(), f.variances.copy(), f.masks.copy(), f.mask_planes, shifts, f.airmass)
    solver = S.DcrSolver(stack, cfg, blur=P.blur_plan(np.asarray(variances), cfg.psfTolerance, wing_sigmas,
                                                      wing_weights))  # fmt: skip
    forward = np.stack([s.forward for s in shifts])
    assert np.all(forward[1, ..., 0] * np.sign(offset) > 0)  # every shift of visit 1 one way
    model = _perturbed(solver, seed=4)
    by_group, streamed = _sweeps(solver, model)
    assert streamed[0] == by_group[0]
    for a, b in zip(streamed[1:], by_group[1:], strict=True):
        assert np.array_equal(a, b)
