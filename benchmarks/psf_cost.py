"""The cost of an iteration of the PSF-aware model against the constant-PSF one (same field).

A 512² field of 16 (or more) visits; the PSF-aware model's matching kernels those of Kolmogorov seeing of
0.6–1.2″ at 0.2″/px (docs/validation.md), with the default wing Gaussians (psfWings) and without.
An iteration = the update and the sweep; the median of a few, the three models timed in turn."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from mpidcr.config import DcrConfig
from mpidcr.dcr import dcr_shifts
from mpidcr.psf import Psf, PsfModel, kolmogorov_image
from mpidcr.sim.field import make_field
from mpidcr.solver import DcrSolver, WarpStack


def _iteration(solver: DcrSolver) -> Callable[[], float]:
    """One timed iteration of ``solver`` (the update and the sweep), from the same start each time."""
    model, acc = solver.it.model.copy(), solver.it.acc.copy()

    def once() -> float:
        t0 = time.perf_counter()
        new = solver.update(model, acc, 0.5)
        solver.sweep(new)
        return time.perf_counter() - t0

    return once


def psf_cost(size: int = 512, visits: int = 16, repeats: int = 15) -> dict:
    """The iteration's seconds for the constant-PSF model and the PSF-aware one (with the default wings
    and without), run in turn round after round so that the machine's drifts hit all three alike
    (timed one after the other, the ratio moved by ±0.3 from run to run); medians of ``repeats``
    rounds after a warm-up round."""
    f = make_field(shape=(size, size), num_visits=visits, num_stars=int(0.0027 * size * size), seed=3)
    cfg = DcrConfig(effectiveWavelength=f.effective_wavelength, bandwidth=f.bandwidth).validate()
    shifts = [dcr_shifts(o, f.effective_wavelength, f.bandwidth, 3, f.pixel_scale) for o in f.observations]

    def solver(psfs: PsfModel | None) -> DcrSolver:
        stack = WarpStack(f.images.copy(), f.variances.copy(), f.masks.copy(), f.mask_planes, shifts, f.airmass)
        if psfs is None:
            return DcrSolver(stack, cfg)
        return DcrSolver(stack, cfg, blur=psfs.plan(cfg.psfTolerance))

    seeing = [Psf(kolmogorov_image(fwhm, 41), 0.2 * fwhm, "kolmogorov") for fwhm in np.linspace(3.0, 6.0, visits)]
    solvers = {"constant": solver(None)}
    for label, wings in (("", int(cfg.psfWings)), ("_no_wings", 0)):
        solvers[label] = solver(PsfModel.of(seeing, wings=wings))
    runs = {label: _iteration(s) for label, s in solvers.items()}
    times: dict[str, list[float]] = {label: [] for label in runs}
    for _ in range(repeats + 1):
        for label, once in runs.items():
            times[label].append(once())
    seconds = {label: float(np.median(t[1:])) for label, t in times.items()}
    constant = seconds.pop("constant")
    out: dict = {"size": size, "visits": visits, "constant_s": constant}
    for label, aware in seconds.items():
        blur = solvers[label].blur
        assert blur is not None
        out.update({f"groups{label}": len(blur.variances), f"blur_support{label}": blur.support,
                    f"psf_aware_s{label}": aware, f"ratio{label}": aware / constant})  # fmt: skip
    return out


if __name__ == "__main__":
    import sys

    for visits in map(int, sys.argv[1:] or ["16"]):
        print(psf_cost(visits=visits))
