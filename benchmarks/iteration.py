"""A whole iteration of mpidcr's solver against the same iteration written with numpy and scipy.

An iteration = the model update (SPEC §2 steps 3–7: the update, the clamp to the previous
model, the frequency regularization with its flux restored, conditioning and model weights)
and the sweep (the amplified planes, every visit's template, metric sums, residual and reverse
shifts).  The reference is what a straightforward implementation does: float64 numpy, one
``scipy.ndimage.shift`` per visit, sub-filter and split shift, ``scipy.ndimage`` Gaussians and
binary openings (the test twins of ``tests/reference.py``).  mpidcr's is ``DcrSolver.update``
and ``DcrSolver.sweep`` on the solver's own buffers, as a run calls them.  Both start from the
same state (the solver's first model and accumulators), and the models they make are compared.

Run as ``python benchmarks/iteration.py [SIZE]`` or through ``make bench``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from reference import (
    apply_thresholds_reference,
    regularize_frequency_reference,
    reverse_reference,
    template_reference,
)

from mpidcr.config import DcrConfig
from mpidcr.dcr import dcr_shifts
from mpidcr.sim.field import make_field
from mpidcr.solver import DcrSolver, WarpStack


def _std(values: np.ndarray, select: np.ndarray) -> float:
    v = values[select & np.isfinite(values)]
    return float(v.std()) if v.size else 0.0


def reference_update(solver: DcrSolver, model: np.ndarray, acc: np.ndarray, gain: float) -> np.ndarray:
    """Steps 3–7 in float64 numpy/scipy (the default configuration's path)."""
    cfg, K = solver.cfg, solver.K
    width = int(cfg.regularizationWidth)
    model = model.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        new = model + acc * solver.inverse_weights
    new = np.where(np.isfinite(new), new, model)
    f = cfg.regularizeModelIterations
    for k in range(K):
        apply_thresholds_reference(new[k], np.abs(model[k]) * f, model[k] / f, width)
    noise = _std(new[0], solver.freq_background)
    before = new.sum(axis=0)
    regularize_frequency_reference(new, cfg.regularizeModelFrequency, width, noise)
    new += (before - new.sum(axis=0)) / K
    new = (gain * new + model) / (1.0 + gain)
    if solver.model_weights is not None:
        new = new * solver.model_weights + solver.static_share
    return new


def reference_sweep(solver: DcrSolver, model: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The amplified planes, then per visit: template, metric sums, residual, reverse shifts."""
    w = solver.warps
    noise = _std(model[1], solver.background)
    mean = model.mean(axis=0)
    planes = (model - mean) * solver.cfg.accelerateModel + mean
    significance = np.abs(mean) + 3.0 * noise
    acc = np.zeros_like(planes)
    sums = np.zeros((w.num_visits, 2))
    for v in range(w.num_visits):
        template = template_reference(planes, w.shifts[v].forward, 1)
        image = w.images[v].astype(np.float64)
        use = solver.good[v] & solver.converge_pixels[v]
        sums[v] = (np.sum(np.abs(image - template)[use] * significance[use]),
                   np.sum(np.abs(image + template)[use] * significance[use]) / 2)  # fmt: skip
        residual = np.where(solver.good[v], image - template, 0.0)
        acc += reverse_reference(residual, w.shifts[v].mean, 1)
    return acc, sums


def field_solver(shape: tuple[int, int], visits: int = 12, seed: int = 3) -> DcrSolver:
    """The solver of a simulated field of ``shape`` (ny, nx) and ``visits`` visits (default configuration)."""
    f = make_field(shape=shape, num_visits=visits, num_stars=int(0.0027 * shape[0] * shape[1]), seed=seed)
    cfg = DcrConfig(effectiveWavelength=f.effective_wavelength, bandwidth=f.bandwidth).validate()
    shifts = [dcr_shifts(o, f.effective_wavelength, f.bandwidth, 3, f.pixel_scale) for o in f.observations]
    return DcrSolver(WarpStack(f.images, f.variances, f.masks, f.mask_planes, shifts, f.airmass), cfg)


def iteration(shape: tuple[int, int], visits: int = 12, repeats: int = 5, gain: float = 0.5) -> dict:
    """Times (s) of mpidcr's update and sweep (median of ``repeats``, after one untimed iteration
    that touches the buffers) and of the reference iteration (once), and the largest difference
    of the models they make relative to the model's peak."""
    solver = field_solver(shape, visits)
    model, acc = solver.it.model.copy(), solver.it.acc.copy()
    update, sweep = [], []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        new = solver.update(model, acc, gain)
        t1 = time.perf_counter()
        solver.sweep(new)
        update.append(t1 - t0)
        sweep.append(time.perf_counter() - t1)
    # the sweep proper (the all-visit kernel) inside the sweep phase
    active = solver.visit_weights > 0
    kernel = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        solver._sweep_visits(new, solver._significance, solver._acc_buffers[0], solver.inner, active)
        kernel.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    ref_new = reference_update(solver, model, acc, gain)
    t1 = time.perf_counter()
    reference_sweep(solver, ref_new)
    t2 = time.perf_counter()
    mine = solver.update(model, acc, gain)
    diff = float(np.max(np.abs(mine - ref_new)) / np.max(np.abs(ref_new)))
    t_update, t_sweep, t_kernel = (float(np.median(t[1:] if len(t) > repeats else t)) for t in (update, sweep, kernel))
    whole = t_update + t_sweep
    return {
        "shape": list(shape), "visits": visits, "subfilters": solver.K,
        "update_s": t_update, "sweep_phase_s": t_sweep, "sweep_kernel_s": t_kernel, "iteration_s": whole,
        "reference_update_s": t1 - t0, "reference_sweep_s": t2 - t1, "reference_iteration_s": t2 - t0,
        "ratio": (t2 - t0) / whole, "non_sweep_share": 1.0 - t_kernel / whole,
        "ns_per_pixel_visit": 1e9 * whole / (shape[0] * shape[1] * visits), "max_rel_diff": diff,
    }  # fmt: skip


def profile(shape: tuple[int, int], visits: int = 12, repeats: int = 5) -> list[tuple[str, float, int]]:
    """Where an iteration's time goes: cProfile's own time per function over ``repeats``
    iterations (after one untimed), per iteration, largest first: (function, seconds, calls)."""
    import cProfile
    import pstats

    solver = field_solver(shape, visits)
    model, acc = solver.it.model.copy(), solver.it.acc.copy()
    solver.sweep(solver.update(model, acc, 0.5))
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(repeats):
        solver.sweep(solver.update(model, acc, 0.5))
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    rows = [(f"{Path(file).stem}.{name}", tt / repeats, calls // repeats)
            for (file, _, name), (_, calls, tt, _, _) in stats.items()]  # fmt: skip
    return sorted(rows, key=lambda r: -r[1])


if __name__ == "__main__":
    import json

    size = int(sys.argv[1]) if len(sys.argv) > 1 else 512
    if "--profile" in sys.argv:
        rows = profile((size, size))
        total = sum(r[1] for r in rows)
        for name, seconds, calls in rows[:20]:
            print(f"{seconds * 1e3:8.2f} ms {100 * seconds / total:5.1f} % {calls:4d} calls  {name}")
        print(f"{total * 1e3:8.2f} ms per iteration")
    else:
        print(json.dumps(iteration((size, size)), indent=1))
