"""What the machine itself allows N ranks: the same fixed work in 1 and in N concurrent processes.

Parallel efficiency t1 / (N · tN) can only reach 1 when N processes run as fast together as one
alone.  On a shared or virtual machine they may not: two vCPUs can be hyperthreads of one core,
or the clock drops when both are busy.  This measures that ceiling with two loops and no
communication at all, each process timing its own copy after a barrier:

* ``compute``: the fused sweep's inner loop (a 4-tap float32 row update) on rows that stay in
  L1 cache: arithmetic and load throughput only;
* ``stream``: scaling a 256 MiB float32 array in place: memory bandwidth.

The ceiling of a workload is t_alone / t_together (the slowest process); an MPI code doing the same
per-rank work cannot beat it.  Run as ``mpiexec -n N python contention.py``; prints JSON on rank 0.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def row_updates(out, a, b, repeats):  # pragma: no cover - compiled
    """``repeats`` times: out = (out + 0.1·a[j] + 0.2·a[j+1] + 0.3·b[j] + 0.4·b[j+1]) · 0.5."""
    c0, c1, c2, c3 = np.float32(0.1), np.float32(0.2), np.float32(0.3), np.float32(0.4)
    half = np.float32(0.5)
    for _ in range(repeats):
        for j in range(out.shape[0]):
            out[j] = (out[j] + c0 * a[j] + c1 * a[j + 1] + c2 * b[j] + c3 * b[j + 1]) * half


def timed(comm, work) -> float:
    """Seconds of ``work()`` on this process, all processes starting together."""
    comm.Barrier()
    t0 = time.perf_counter()
    work()
    return time.perf_counter() - t0


def measure(comm, repeats: int = 5) -> dict:
    n = 1024
    out = np.zeros(n, np.float32)
    a = np.ones(n + 1, np.float32)
    b = np.ones(n + 1, np.float32)
    row_updates(out, a, b, 1)  # compile (or load from the cache)
    big = np.ones(64 * 2**20, np.float32)
    scale = np.float32(1.0000001)

    def stream() -> None:
        for _ in range(5):
            np.multiply(big, scale, out=big)

    result = {}
    for name, work in (("compute", lambda: row_updates(out, a, b, 1_000_000)), ("stream", stream)):
        best = float(np.median([timed(comm, work) for _ in range(repeats)]))  # each process: median of the repeats
        times = comm.gather(best, root=0)
        if comm.rank == 0:
            result[name] = {"seconds": times, "slowest": max(times)}
    return result


def ceilings(ranks: int = 2, repeats: int = 3) -> dict:
    """Run this file on 1 and on ``ranks`` processes, alternating ``repeats`` times; the median
    ceiling t_alone / t_together of each workload (1 = the processes do not slow each other)."""
    mpiexec = shutil.which("mpiexec") or "mpiexec"
    runs: dict[int, list[dict]] = {1: [], ranks: []}
    for _ in range(repeats):
        for n in (1, ranks):
            proc = subprocess.run([mpiexec, "-n", str(n), sys.executable, __file__], capture_output=True, text=True,
                                  env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True)  # fmt: skip
            runs[n].append(json.loads(proc.stdout))
    out: dict = {"processes": ranks}
    for name in ("compute", "stream"):
        alone = float(np.median([r[name]["slowest"] for r in runs[1]]))
        together = float(np.median([r[name]["slowest"] for r in runs[ranks]]))
        out[name] = {"alone_s": alone, "together_s": together, "ceiling": alone / together}
    return out


if __name__ == "__main__":
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    r = measure(comm)
    if comm.rank == 0:
        print(json.dumps({"processes": comm.size, **r}))
