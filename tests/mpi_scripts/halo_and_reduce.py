"""Run under mpiexec: the halo exchange and the reducers against a global array, for every tile
grid of this rank count.  Prints one JSON line per grid on rank 0: {"grid", "halo_ok", "sum_ok", ...}."""

import json

import numpy as np

from mpidcr.parallel.comm import get_comm
from mpidcr.reduction import merged_std
from mpidcr.tiling import Plan

comm = get_comm()
size = comm.size
shape = (37, 29)  # uneven splits on purpose
grids = [(py, size // py) for py in range(1, size + 1) if size % py == 0]
rng = np.random.default_rng(7)
truth = rng.normal(size=(3, *shape)).astype(np.float32)  # the same on every rank (same seed)
select = rng.random(shape) > 0.3
for grid in grids:
    for halo in (1, 4):
        plan = Plan(shape, grid, halo)
        tile = plan.tile(comm.rank)
        reducer, exchanger = comm.decompose(plan)
        ys, xs = tile.outer.slices()
        local = truth[:, ys, xs].copy()
        inner = tile.inner_local
        ghost = np.ones(local.shape[1:], dtype=bool)
        ghost[inner] = False
        local[:, ghost] = np.nan  # ghost pixels are unknown until the exchange
        exchanger.exchange(local)
        halo_ok = bool(np.array_equal(local, truth[:, ys, xs]))
        total = reducer.sum([float(np.sum(truth[0][tile.inner.slices()], dtype=np.float64)), 1.0])
        peak = reducer.max([float(np.max(truth[1][tile.inner.slices()]))])
        std = merged_std(reducer, truth[2][ys, xs], select[ys, xs], region=inner)
        ok = comm.mpi.allreduce(halo_ok)  # every rank's halo
        if comm.rank == 0:
            ref = np.float64(truth[0]).sum()
            print(json.dumps({
                "grid": list(grid), "halo": halo, "halo_ok": bool(ok == size),
                "sum_err": float(abs(total[0] - ref) / abs(ref)), "ranks": float(total[1]),
                "max_ok": bool(peak[0] == np.max(truth[1])),
                "std_err": float(abs(std - np.std(np.float64(truth[2][select])))),
            }), flush=True)
