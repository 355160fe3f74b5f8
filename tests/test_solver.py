"""Pieces of the forward-model iteration, and the whole solver on simulated data."""

import numpy as np
import pytest

from mpidcr import solver as S
from mpidcr import update as U
from mpidcr.config import DcrConfig
from mpidcr.dcr import dcr_shifts
from mpidcr.errors import InputError, SolverError
from mpidcr.kernels import regularize
from mpidcr.sim.field import make_field


# -- conditioning ------------------------------------------------------------------
@pytest.mark.parametrize("gain", [0.1, 0.5, 1.0, 3.7])
def test_conditioning_fixed_point(gain, rng):
    old = rng.normal(size=(3, 10, 10))
    assert np.allclose(U.condition(old.copy(), old, gain), old, rtol=0, atol=1e-14)


def test_conditioning_weighted_mean():
    old = np.full((2, 4, 4), 1.0)
    new = np.full((2, 4, 4), 3.0)
    assert np.allclose(U.condition(new, old, 1.0), 2.0)
    assert np.allclose(U.condition(new, old, 0.5), (0.5 * 3 + 1) / 1.5)
    assert np.allclose(U.condition(new, old, 3.0), (3 * 3 + 1) / 4)


# -- gain --------------------------------------------------------------------------
def test_gain_is_base_for_first_two_steps():
    assert U.next_gain([1.0], [], 0.5, True) == 0.5
    assert U.next_gain([1.0, 0.6], [0.5], 0.5, True) == 0.5
    assert U.next_gain([1.0, 0.6, 0.1], [0.5, 0.5], 0.5, False) == 0.5


def test_gain_follows_perfectly_converging_sequence():
    final, base = 0.2, 0.5
    metrics, gains = [1.0], []
    for _ in range(8):
        g = U.next_gain(metrics, gains, base, True)
        if len(metrics) >= 3:
            # the prediction was exact (δ = 0): the gain moves half-way to 1
            assert g == pytest.approx(max(base, (1.0 + gains[-1]) / 2.0))
        gains.append(g)
        metrics.append((final * g + metrics[-1]) / (1 + g))
    assert gains[-1] > 0.95 and all(np.diff(gains[2:]) > 0)


def test_gain_drops_when_convergence_is_faster_than_predicted():
    final, base = 0.2, 0.3
    metrics, gains = [1.0], []
    for _ in range(4):
        g = U.next_gain(metrics, gains, base, True)
        gains.append(g)
        metrics.append((final * g + metrics[-1]) / (1 + g))
    perfect = U.next_gain(metrics, gains, base, True)
    faster = [*metrics[:-1], metrics[-1] - 0.5 * (metrics[-2] - metrics[-1])]
    dropped = U.next_gain(faster, gains, base, True)
    assert dropped < perfect
    assert dropped >= base


def test_gain_unbalanced_lists():
    with pytest.raises(SolverError, match="one element longer"):
        U.next_gain([1.0, 0.5], [0.5, 0.5], 0.5, True)
    with pytest.raises(SolverError, match="one element longer"):
        U.next_gain([1.0, 0.5, 0.4], [0.5], 0.5, True)


# -- regularization ------------------------------------------------------------------
def test_iteration_clamp_reduces_coherent_outliers_only():
    old = np.full((40, 40), 10.0)
    new = old.copy()
    new[5:12, 5:12] = 100.0  # coherent high group
    new[25:32, 25:32] = 1.0  # coherent low group
    new[20, 5] = 100.0  # isolated noise-like pixels
    new[5, 30] = 1.0
    U.clamp_to_previous(new, old, 2.0, 2)
    # the opening keeps the group's body (its corners fall outside the diamond element)
    assert np.all(new[7:10, 7:10] == 20.0) and np.sum(new[5:12, 5:12] == 20.0) >= 33
    assert np.all(new[27:30, 27:30] == 5.0) and np.sum(new[25:32, 25:32] == 5.0) >= 33
    assert new[20, 5] == 100.0 and new[5, 30] == 1.0


def test_frequency_regularization_reduces_outliers_and_keeps_isolated_pixels(rng):
    yy, xx = np.mgrid[0:48, 0:48]
    source = 50 * np.exp(-((yy - 24) ** 2 + (xx - 24) ** 2) / (2 * 4.0**2)) + 5.0
    planes = np.stack([source, source, source]) + rng.normal(0, 0.01, (3, 48, 48))
    planes[1, 20:29, 20:29] *= 12.0  # one sub-filter wildly off over a coherent region
    before = np.max(planes[1] / planes[0])
    U.regularize_frequency(planes, 4.0, 2, noise=0.01)
    after = np.max(planes[1] / planes[0])
    assert before > 11 and after < 4.5  # sub-filters now differ by at most ~F = 4
    assert np.all(np.isfinite(planes))
    # the limiting step leaves an isolated pixel alone
    image = np.full((30, 30), 10.0)
    image[15, 15] = 1000.0
    smooth = np.full((30, 30), 10.0)
    work = [np.empty(image.shape, np.uint8) for _ in range(2)]
    regularize.clamp_opened(image, smooth, 2.0, False, 0.5, False, 2, *work)  # the limiting step's clamp
    assert image[15, 15] == 1000.0


def test_model_weights_step():
    new = np.full((3, 5, 5), 4.0)
    static = np.full((5, 5), 6.0)
    m = np.zeros((5, 5))
    m[2, 2] = 1.0
    m[0, 0] = 0.5
    out = U.apply_model_weights(new, static, m)
    assert np.all(out[:, 2, 2] == 4.0) and np.all(out[:, 1, 1] == 2.0)
    assert np.allclose(out[:, 0, 0], 0.5 * 4 + 0.5 * 2)


def test_amplified_keeps_mean():
    planes = np.stack([np.full((3, 3), v) for v in (1.0, 2.0, 6.0)])
    out = U.amplified(planes, 3.0)
    assert np.allclose(out.mean(axis=0), 3.0)
    assert np.allclose(out[:, 0, 0], [3 - 6, 3 - 3, 3 + 9])


# -- whole solver ----------------------------------------------------------------------
def _setup(seed=2, visits=9, shape=(80, 80), **cfg):
    f = make_field(shape=shape, num_visits=visits, num_stars=20, seed=seed)
    config = DcrConfig(effectiveWavelength=f.effective_wavelength, bandwidth=f.bandwidth, **cfg).validate()
    shifts = [
        dcr_shifts(
            o,
            f.effective_wavelength,
            f.bandwidth,
            config.num_subfilters,
            f.pixel_scale,
            config.splitSubfilters,
            config.splitThreshold,
        )
        for o in f.observations
    ]
    return f, config, shifts


def _stack(f, shifts, idx):
    return S.WarpStack(
        f.images[idx].copy(),
        f.variances[idx].copy(),
        f.masks[idx].copy(),
        f.mask_planes,
        [shifts[i] for i in idx],
        f.airmass[idx],
    )


@pytest.mark.parametrize("order", [1, 3])
def test_end_to_end_dcr_template_beats_coadd(order):
    f, config, shifts = _setup(imageInterpOrder=order)
    held_out = int(np.argmax(f.airmass))  # airmass 2.0
    assert f.airmass[held_out] >= 1.9
    result = S.solve(_stack(f, shifts, [i for i in range(9) if i != held_out]), config)
    metrics = [h.metric for h in result.history]
    assert result.stop_reason in ("converged", "diverged", "max_iterations")
    assert metrics[result.iterations] < 0.35 * metrics[0]
    template = S.matched_template(result.planes, shifts[held_out], order)
    footprint = f.masks[held_out] != 0
    rms_dcr = np.sqrt(np.mean((f.images[held_out] - template)[footprint] ** 2))
    rms_coadd = np.sqrt(np.mean((f.images[held_out] - result.static.image)[footprint] ** 2))
    assert rms_dcr < 0.4 * rms_coadd
    # outputs are consistent
    assert np.allclose(result.coadd, result.planes.sum(axis=0))
    assert np.array_equal(result.nimage_total, result.nimage.sum(axis=0))
    assert result.nimage.max() <= 8
    assert len(result.history) >= result.iterations + 1


def test_sub_filter_colours_follow_truth():
    f, config, shifts = _setup(seed=4, visits=10)
    result = S.solve(_stack(f, shifts, list(range(10))), config)
    # flux ratio blue/red sub-filter inside 2 px of each bright star vs the truth
    yy, xx = np.mgrid[0:80, 0:80]
    measured, true = [], []
    for y, x, flux in zip(f.star_y, f.star_x, f.star_flux, strict=True):
        if flux.sum() < 800:
            continue
        near = (yy - y) ** 2 + (xx - x) ** 2 < 4.0
        measured.append(np.log(result.planes[0][near].sum() / result.planes[2][near].sum()))
        true.append(np.log(flux[0] / flux[2]))
    slope = np.polyfit(true, measured, 1)[0]
    assert np.corrcoef(true, measured)[0, 1] > 0.8
    assert 0.3 < slope < 1.5


def test_fixed_iterations_without_convergence():
    f, config, shifts = _setup(useConvergence=False, maxNumIter=3)
    result = S.solve(_stack(f, shifts, list(range(9))), config)
    assert result.iterations == 3 and result.stop_reason == "max_iterations"


def test_divergence_restores_last_better_model(monkeypatch):
    f, config, shifts = _setup(minNumIter=1, maxNumIter=6)
    metrics = iter([1.0, 0.5, 0.8])  # second iteration gets worse
    real_sweep = S.DcrSolver.sweep

    def fake_sweep(self, model):
        _, per_visit, acc = real_sweep(self, model)
        return next(metrics), per_visit, acc

    seen = []
    real_update = S.DcrSolver.update

    def spy_update(self, model, acc, gain):
        new = real_update(self, model, acc, gain)
        seen.append(new.copy())
        return new

    monkeypatch.setattr(S.DcrSolver, "sweep", fake_sweep)
    monkeypatch.setattr(S.DcrSolver, "update", spy_update)
    result = S.solve(_stack(f, shifts, list(range(9))), config)
    assert result.stop_reason == "diverged" and result.iterations == 1
    assert np.array_equal(result.raw_model, seen[0])  # model of iteration 1, not 2
    assert [h.metric for h in result.history] == [1.0, 0.5, 0.8]


def test_zero_metric_without_convergence_pixels():
    f, config, shifts = _setup(convergenceMaskPlanes=[])
    result = S.solve(_stack(f, shifts, list(range(9))), config)
    assert result.stop_reason == "zero_metric" and result.iterations == 0
    assert np.allclose(result.raw_model, result.static.image / 3)


def test_detections_on_static_model_when_warps_carry_none(caplog):
    f, config, shifts = _setup()
    with_masks = S.solve(_stack(f, shifts, list(range(8))), config)
    f.masks[:] = 0  # e.g. plain-layout warps without mask files
    import logging

    with caplog.at_level(logging.WARNING, logger="mpidcr"):
        result = S.solve(_stack(f, shifts, list(range(8))), config)
    assert any("no input pixel carries DETECTED" in r.getMessage() for r in caplog.records)
    assert result.stop_reason in ("converged", "diverged", "max_iterations") and result.iterations >= config.min_iterations
    assert np.any(result.mask & (1 << f.mask_planes["DETECTED"]))
    # nearly as good as with the warps' own detection masks on the held-out visit
    template = S.matched_template(result.planes, shifts[8], 1)
    reference = S.matched_template(with_masks.planes, shifts[8], 1)
    fp = f.images[8] > 3.0
    rms = np.sqrt(np.mean((f.images[8] - template)[fp] ** 2))
    rms_ref = np.sqrt(np.mean((f.images[8] - reference)[fp] ** 2))
    rms_coadd = np.sqrt(np.mean((f.images[8] - result.static.image)[fp] ** 2))
    assert rms < 1.5 * rms_ref and rms < 0.5 * rms_coadd


def test_too_few_usable_visits():
    f, config, shifts = _setup()
    stack = _stack(f, shifts, [0, 1])
    stack.masks[1] |= 1 << f.mask_planes["NO_DATA"]
    with pytest.raises(InputError, match=r"only 1 of 2 visit\(s\) have usable pixels \(visit1 has none\)"):
        S.solve(stack, config)


def test_static_statistics_agree_on_clean_data():
    f, config, shifts = _setup()
    idx = list(range(9))
    means = {}
    for stat in ("MEAN", "MEDIAN", "MEANCLIP"):
        cfg = config.copy()
        cfg.statistic = stat
        solver = S.DcrSolver(_stack(f, shifts, idx), cfg)
        means[stat] = solver.static.image
    # sky background: the statistics agree to well within the noise / sqrt(N)
    bg = f.masks.max(axis=0) == 0
    assert np.std((means["MEAN"] - means["MEANCLIP"])[bg]) < 0.17
    assert np.std((means["MEAN"] - means["MEDIAN"])[bg]) < 0.6


def test_meanclip_rejects_a_cosmic_ray():
    f, config, shifts = _setup()
    stack = _stack(f, shifts, list(range(9)))
    stack.images[3, 40, 10] += 500.0
    clipped = config.copy()
    clipped.statistic = "MEANCLIP"
    solver = S.DcrSolver(stack, clipped)
    assert abs(solver.static.image[40, 10]) < 3.0
    cfg = config.copy()
    cfg.statistic = "MEAN"
    stack = _stack(f, shifts, list(range(9)))
    stack.images[3, 40, 10] += 500.0
    solver = S.DcrSolver(stack, cfg)
    assert solver.static.image[40, 10] > 30.0


# -- static sky model options ---------------------------------------------------------------
def _static(images, variances, masks, weights, **kw):
    from mpidcr.coadd import static_sky_model
    from mpidcr.masks import DEFAULT_PLANES

    good = (masks & (1 << DEFAULT_PLANES["NO_DATA"])) == 0
    kw.setdefault("statistic", "MEAN")
    return static_sky_model(
        images, variances, masks, good, np.asarray(weights, float), mask_planes=DEFAULT_PLANES, **kw
    )


def test_static_variance_from_inputs_or_scatter(rng):
    images = rng.normal(10.0, 2.0, size=(400, 4, 4))
    variances = np.full(images.shape, 4.0)
    masks = np.zeros(images.shape, np.int32)
    w = np.ones(400)
    from_inputs = _static(images, variances, masks, w, error_from_input_variance=True)
    assert np.allclose(from_inputs.variance, 4.0 / 400)
    from_scatter = _static(images, variances, masks, w, error_from_input_variance=False)
    assert np.allclose(from_scatter.variance, 4.0 / 400, rtol=0.25)
    # weighted mean with unequal weights
    two = _static(
        np.stack([np.full((2, 2), 1.0), np.full((2, 2), 4.0)]),
        np.ones((2, 2, 2)),
        np.zeros((2, 2, 2), np.int32),
        [3.0, 1.0],
    )
    assert np.allclose(two.image, (3 * 1 + 4) / 4) and np.allclose(two.variance, (9 + 1) / 16)


def test_mask_propagation_thresholds():
    """Judged per pixel: the weight of the left-out inputs carrying the plane over the weight of
    the inputs with data at that pixel (NO_DATA inputs count in neither)."""
    from mpidcr.coadd import static_sky_model
    from mpidcr.masks import DEFAULT_PLANES

    nodata, sat = 1 << DEFAULT_PLANES["NO_DATA"], 1 << DEFAULT_PLANES["SAT"]
    images = np.ones((10, 1, 4))
    masks = np.zeros((10, 1, 4), np.int32)
    masks[0, 0, 0] = sat  # 1 of 10 left-out inputs carries SAT: 10 % of the weight
    masks[:3, 0, 1] = sat  # 30 %
    masks[:2, 0, 3] = sat  # 2 of the 4 inputs with data there: 50 %
    masks[4:, 0, 3] = nodata
    good = (masks & (nodata | sat)) == 0
    out = static_sky_model(images, np.ones_like(images), masks, good, np.ones(10), "MEAN", DEFAULT_PLANES,
                           propagation_thresholds={"SAT": 0.2})  # fmt: skip
    assert not out.mask[0, 0] & sat and out.mask[0, 1] & sat and not out.mask[0, 2] & sat
    assert out.mask[0, 3] & sat  # 2 of 10 visits (20 %, not above) but half of those with data
    assert out.count[0, 1] == 7
    ref = _reference_static(images, masks, good)
    assert np.array_equal(ref, out.mask)


def _reference_static(images, masks, good):
    from reference import static_sky_model_reference

    from mpidcr.masks import DEFAULT_PLANES

    return static_sky_model_reference(images, np.ones_like(images), masks, good, np.ones(10), "MEAN", DEFAULT_PLANES,
                                      propagation_thresholds={"SAT": 0.2})[2]  # fmt: skip


def test_airmass_weighting_and_remove_mask_planes():
    f, config, shifts = _setup()
    cfg = config.copy()
    cfg.doAirmassWeight = True
    cfg.doScaleWarpVariance = False  # weights exactly 1/variance × airmass
    solver = S.DcrSolver(_stack(f, shifts, list(range(9))), cfg)
    base = 1.0 / f.sky_sigma**2
    assert np.allclose(solver.visit_weights, base * f.airmass[:9])
    # removeMaskPlanes clears a plane before coadding
    stack = _stack(f, shifts, list(range(9)))
    stack.masks |= 1 << f.mask_planes["NOT_DEBLENDED"]
    solver = S.DcrSolver(stack, config)
    assert not np.any(solver.warps.masks & (1 << f.mask_planes["NOT_DEBLENDED"]))


def test_fused_sweep_equals_per_shift_sweep():
    f, config, shifts = _setup()
    a = S.solve(_stack(f, shifts, list(range(9))), config, fused=True)
    b = S.solve(_stack(f, shifts, list(range(9))), config, fused=False)
    assert a.iterations == b.iterations and a.stop_reason == b.stop_reason
    # the model state is float32: the per-shift path's float64 templates differ at float32 rounding
    assert np.allclose([h.metric for h in a.history], [h.metric for h in b.history], rtol=1e-5)
    assert np.max(np.abs(a.planes - b.planes)) < 1e-5 * np.max(np.abs(b.planes))


def test_scale_warp_variance():
    f, config, shifts = _setup()
    stack = _stack(f, shifts, list(range(9)))
    stack.variances[2] *= 4.0  # a warp whose variance plane is 4x too large
    stack.variances[5] *= 0.5
    solver = S.DcrSolver(stack, config)
    factors = solver.variance_scale
    assert factors[2] == pytest.approx(0.25, rel=0.1) and factors[5] == pytest.approx(2.0, rel=0.1)
    others = np.delete(factors, [2, 5])
    assert np.all(np.abs(others - 1.0) < 0.1)
    assert np.allclose(solver.warps.variances[2], 4.0 * factors[2] * f.sky_sigma**2)
    # off: variances untouched
    cfg = config.copy()
    cfg.doScaleWarpVariance = False
    stack = _stack(f, shifts, list(range(9)))
    stack.variances[2] *= 4.0
    solver = S.DcrSolver(stack, cfg)
    assert np.allclose(solver.warps.variances[2], 4.0 * f.sky_sigma**2)
    assert solver.visit_weights[2] == pytest.approx(solver.visit_weights[0] / 4.0)


def test_clipped_std_is_unbiased_and_robust(rng):
    from mpidcr.reduction import SerialReducer, clipped_std

    x = rng.normal(0.0, 2.0, 200_000)
    assert clipped_std(SerialReducer(), x) == pytest.approx(2.0, rel=0.01)
    x[:200] = 1e4  # outliers
    assert clipped_std(SerialReducer(), x) == pytest.approx(2.0, rel=0.01)


def test_warm_up_compiles_quietly_and_never_fails(caplog, monkeypatch):
    import logging

    from mpidcr import warmup

    config = _setup()[1]
    before = logging.getLogger("mpidcr").level
    assert warmup.warm_up(config, tiled=False) > 0 and warmup.warm_up(config, tiled=True) > 0
    assert logging.getLogger("mpidcr").level == before
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # the tiny field's warnings are hidden

    def broken(*args, **kwargs):
        raise RuntimeError("no")

    monkeypatch.setattr(warmup, "DcrSolver", broken)
    assert warmup.warm_up(config, tiled=False) >= 0  # a failing warm-up is skipped, not raised
    assert logging.getLogger("mpidcr").level == before


def _kernel_signatures():
    from mpidcr.kernels import signature_counts

    return signature_counts()


@pytest.mark.parametrize("order", [1, 3])
def test_warm_up_compiles_every_kernel_a_run_uses(order):
    """After the warm-up (its own tiny field, not the simulator's), a real solve of a whole patch
    and of a tile with a halo compiles nothing more."""
    from mpidcr import warmup
    from mpidcr.tiling import Plan

    f, config, shifts = _setup(imageInterpOrder=order, visits=6)
    warmup.warm_up(config, tiled=False)
    warmup.warm_up(config, tiled=True)
    before = _kernel_signatures()
    S.solve(_stack(f, shifts, list(range(6))), config)
    tile = Plan((80, 80), (2, 1), 12).tile(0)
    ys, xs = tile.outer.slices()
    stack = _stack(f, shifts, list(range(6)))
    stack.images, stack.variances, stack.masks = (a[:, ys, xs].copy() for a in (stack.images, stack.variances,
                                                                                 stack.masks))  # fmt: skip
    S.DcrSolver(stack, config, tile=tile).run()
    assert _kernel_signatures() == before


@pytest.mark.parametrize("nodes", [[0, 0, 0, 0], [0, 1, 0, 1], [0, 1, 2, 3], [0]])
def test_kernels_are_compiled_once_then_loaded(monkeypatch, nodes):
    """driver.ready_kernels on ranks placed on ``nodes``: the ranks on rank 0's node share the groups
    of kernels (each group compiled by one rank, side by side); then rank 0, then the first rank of
    every other node, then every other rank warm up completely (from the cache by then).  One rank
    alone only warms up."""
    from mpidcr import driver, warmup

    log = []

    class Rank:
        size = len(nodes)

        def __init__(self, rank):
            self.rank = rank

        def node_info(self):
            mine = [r for r in range(self.size) if nodes[r] == nodes[self.rank]]
            return mine.index(self.rank), len(mine), nodes[self.rank] == nodes[0]

        def quiet_barrier(self):
            log.append(("barrier", current.rank))

    monkeypatch.setattr(driver, "warm_part", lambda config, index: log.append(("part", current.rank, index)) or 0.0)
    monkeypatch.setattr(driver, "warm_up", lambda config, tiled, psf_aware: log.append(("warm", current.rank)) or 0.0)
    parts, stage = {}, {}
    for rank in range(len(nodes)):
        current = Rank(rank)
        log.clear()
        driver.ready_kernels(None, current, psf_aware=False)
        for event in log:
            if event[0] == "part":
                assert all(e[0] == "part" for e in log[: log.index(event)])  # before the first barrier
                parts.setdefault(event[2], []).append(rank)
        assert log.count(("warm", rank)) == 1 and log.count(("barrier", rank)) == (4 if len(nodes) > 1 else 0)
        stage[rank] = [e[0] for e in log if e[0] != "part"].index("warm")  # barriers passed before it
    if len(nodes) == 1:
        assert not parts and stage[0] == 0
        return
    assert sorted(parts) == list(range(len(warmup.PARTS)))  # every group compiled, each by one rank
    assert all(len(ranks) == 1 and nodes[ranks[0]] == nodes[0] for ranks in parts.values())
    assert stage[0] == 1
    for rank in range(1, len(nodes)):
        first_on_node = nodes.index(nodes[rank]) == rank
        assert stage[rank] == (2 if first_on_node else 3)


def test_setup_warm_up_fills_an_empty_cache_completely(tmp_path):
    """`python -m mpidcr.warmup` (what `make setup` runs) compiles the groups of warmup.PARTS side by
    side into an empty cache, after which the complete warm-up (every kernel a run, a PSF-aware run
    and a template call) compiles nothing more: the groups are all the work."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "mpidcr.warmup"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "nothing left to compile" in proc.stdout, proc.stdout
    assert any((tmp_path / "cache").rglob("*.nbi"))


def test_a_worse_step_is_never_convergence():
    """Before minNumIter a worse step is allowed to continue; if the run would then stop on it,
    the iterate before it is restored and the stop reason is 'diverged', never 'converged'."""
    f, config, shifts = _setup(minNumIter=3, maxNumIter=9)
    solver = S.DcrSolver(_stack(f, shifts, list(range(9))), config)
    scripted = iter([0.8, 0.7, 0.71])  # iterations 1, 2, 3: the third is worse
    real = solver.sweep

    def sweep(model):
        _, per_visit, acc = real(model)
        return next(scripted), per_visit, acc

    solver.sweep = sweep
    solver.it.metrics[0] = 1.0
    seen = {}
    result = solver.run(hooks=[lambda state: seen.update({state.iteration: state.model.copy()})])
    assert result.stop_reason is S.StopReason.DIVERGED
    assert result.iterations == 2 and solver.it.metrics == [1.0, 0.8, 0.7]
    assert np.array_equal(result.raw_model, seen[2])
    assert [h.metric for h in result.history[1:]] == [0.8, 0.7, 0.71]  # the undone step stays in the history
