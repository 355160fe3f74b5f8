"""The cost of an iteration of the PSF-aware model against the constant-PSF one (same field).

A 512² field of 16 visits; the PSF-aware model's matching variances spread over 0–4.9 px² (the
0.6–1.2″ seeing of docs/validation.md).  An iteration = the update and the sweep; the median of
a few, after a warm-up."""

from __future__ import annotations

import time

import numpy as np

from mpidcr.config import DcrConfig
from mpidcr.dcr import dcr_shifts
from mpidcr.sim.field import make_field
from mpidcr.solver import DcrSolver, WarpStack


def _iteration_seconds(solver: DcrSolver, repeats: int) -> float:
    model, acc = solver.it.model.copy(), solver.it.acc.copy()
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        new = solver.update(model, acc, 0.5)
        solver.sweep(new)
        times.append(time.perf_counter() - t0)
    return float(np.median(times[1:]))


def psf_cost(size: int = 512, visits: int = 16, repeats: int = 5) -> dict:
    f = make_field(shape=(size, size), num_visits=visits, num_stars=int(0.0027 * size * size), seed=3)
    cfg = DcrConfig(effectiveWavelength=f.effective_wavelength, bandwidth=f.bandwidth).validate()
    shifts = [dcr_shifts(o, f.effective_wavelength, f.bandwidth, 3, f.pixel_scale) for o in f.observations]

    def solver(variances: np.ndarray | None) -> DcrSolver:
        stack = WarpStack(f.images.copy(), f.variances.copy(), f.masks.copy(), f.mask_planes, shifts, f.airmass)
        return DcrSolver(stack, cfg, psf_variances=variances)

    variances = np.linspace(0.0, 4.9, visits)
    constant = _iteration_seconds(solver(None), repeats)
    aware_solver = solver(variances)
    aware = _iteration_seconds(aware_solver, repeats)
    return {"size": size, "visits": visits, "groups": len(aware_solver.blur.variances),
            "blur_steps": aware_solver.blur.support, "constant_s": constant, "psf_aware_s": aware,
            "ratio": aware / constant}  # fmt: skip


if __name__ == "__main__":
    print(psf_cost())
