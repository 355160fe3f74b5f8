"""Per-iteration cost of mpidcr's shift kernels vs the scipy.ndimage reference path.

One iteration's shift work on one tile: for every visit the forward template
(K sub-filters, split into two shifts each) and the reverse shift of the
residual into every sub-filter accumulator.  The reference path is what an
LSST-style implementation does: one ``scipy.ndimage.shift`` per visit,
sub-filter and split shift.
"""

from __future__ import annotations

import time

import numpy as np
from scipy import ndimage

from mpidcr import kernels


def make_case(size: int, visits: int, K: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    planes = rng.normal(size=(K, size, size)).astype(np.float64)
    images = rng.normal(size=(visits, size, size)).astype(np.float32)
    fwd = rng.uniform(-3, 3, size=(visits, K, 2, 2))
    mean = fwd.mean(axis=2)
    return planes, images, fwd, mean


def fused_iteration(planes, images, fwd, mean, order, plan=None, flags=None, buffers=None):
    """The solver's shift work of one iteration.  Order 1: the all-visit sweep in the solver's
    precision (float32 model, float32 accumulators); ``flags``: the good-pixel and convergence
    flags and ``buffers``: (accumulators, significance), which the solver makes once per run and
    reuses (allocated here when not given).  Order 3: the per-shift kernels (float64, spline
    prefilter)."""
    if order == 1 and plan is not None:
        model = planes.astype(np.float32) if planes.dtype != np.float32 else planes
        good = np.ones(images.shape, dtype=bool) if flags is None else flags
        if buffers is None:  # the sweep sets every accumulator pixel
            buffers = (np.empty_like(model), np.ones(model.shape[1:], dtype=np.float32))
        acc, sig = buffers
        inner = (0, model.shape[1], 0, model.shape[2])
        plan.run(model, images, good, good, sig, inner, np.ones(images.shape[0], dtype=bool), acc)
        return acc
    coeffs = kernels.prefilter_planes(planes, order)
    acc = np.zeros_like(planes)
    template = np.zeros(planes.shape[1:])
    for v in range(images.shape[0]):
        kernels.build_template(coeffs, fwd[v], order, out=template)
        residual = images[v] - template
        kernels.accumulate_reverse(residual, mean[v], order, acc)
    return acc


def reference_iteration(planes, images, fwd, mean, order):
    acc = np.zeros_like(planes)
    for v in range(images.shape[0]):
        template = np.zeros(planes.shape[1:])
        for k in range(planes.shape[0]):
            for j in range(2):
                template += ndimage.shift(planes[k], fwd[v, k, j], order=order, mode="constant") / 2
        residual = images[v] - template
        for k in range(planes.shape[0]):
            acc[k] += ndimage.shift(residual, -mean[v, k], order=order, mode="constant")
    return acc


def bench(size=1024, visits=12, K=3, orders=(1, 3), repeats=3):
    planes, images, fwd, mean = make_case(size, visits, K)
    mpix = size * size / 1e6
    rows = []
    from mpidcr.kernels.fused import SweepPlan, VisitPass

    passes = SweepPlan([VisitPass(planes.shape[1:], fwd[v], mean[v]) for v in range(visits)])
    small = SweepPlan([VisitPass((64, 64), fwd[v], mean[v]) for v in range(visits)])
    for order in orders:
        fused_iteration(planes[:, :64, :64].copy(), images[:, :64, :64].copy(), fwd, mean, order, small)  # warm up
        model = planes.astype(np.float32) if order == 1 else planes  # the solver's model state
        flags = np.ones(images.shape, dtype=bool)
        buffers = (np.empty(planes.shape, np.float32), np.ones(planes.shape[1:], np.float32)) if order == 1 else None
        t = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            a = fused_iteration(model, images, fwd, mean, order, passes, flags, buffers)
            t.append(time.perf_counter() - t0)
        t_fused = min(t)
        t0 = time.perf_counter()
        b = reference_iteration(planes, images, fwd, mean, order)
        t_ref = time.perf_counter() - t0
        err = float(np.max(np.abs(a - b)) / np.max(np.abs(b)))
        rows.append(
            {
                "order": order,
                "size": size,
                "visits": visits,
                "subfilters": K,
                "fused_s": t_fused,
                "reference_s": t_ref,
                "ratio": t_ref / t_fused,
                "fused_ms_per_mpix_visit": 1e3 * t_fused / (mpix * visits),
                "reference_ms_per_mpix_visit": 1e3 * t_ref / (mpix * visits),
                "max_rel_diff": err,
            }
        )
    return rows


if __name__ == "__main__":
    import json

    print(json.dumps(bench(size=512, repeats=1), indent=1))
