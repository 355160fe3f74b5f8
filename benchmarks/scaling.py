"""Strong scaling of ``mpidcr run``: the same patch on 1 and 2 ranks (this machine has 2 cores).

Simulates a patch (default 2048x2048, 12 visits), then runs a fixed number of
iterations (useConvergence=false) so both runs do the same work, and reports
the wall time of each phase and the parallel efficiency t1 / (N · tN).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


def run(n: int, manifest: Path, out: Path, iterations: int) -> dict:
    cmd = [
        shutil.which("mpiexec") or "mpiexec",
        "-n",
        str(n),
        sys.executable,
        "-m",
        "mpidcr",
        "-q",
        "run",
        str(manifest),
        "-o",
        str(out),
        "--overwrite",
        "--json",
        "--set",
        "useConvergence=false",
        "--set",
        f"maxNumIter={iterations}",
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(proc.stderr)
    summary = json.loads(proc.stdout)
    summary["wall_with_startup"] = wall
    return summary


def scaling(workdir: Path, size: int = 2048, visits: int = 12, iterations: int = 6, ranks=(1, 2)) -> dict:
    from mpidcr.simulate import simulate

    workdir.mkdir(parents=True, exist_ok=True)
    manifest = workdir / "manifest.toml"
    if not manifest.exists():
        t0 = time.perf_counter()
        simulate(workdir, size=size, num_visits=visits, num_science=0, num_stars=size * size // 2000, seed=3)
        print(f"simulated {size}x{size} x {visits} visits in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    results = {n: run(n, manifest, workdir / f"model_{n}.h5", iterations) for n in ranks}
    t1 = results[ranks[0]]["seconds"]["total"]
    table = []
    for n, r in results.items():
        s = r["seconds"]
        table.append(
            {
                "ranks": n,
                "tiles": r["tiles"],
                "read_s": s["read"],
                "solve_s": s["solve"],
                "write_s": s["write"],
                "total_s": s["total"],
                "wall_with_startup_s": r["wall_with_startup"],
                "efficiency": t1 / (n * s["total"]) * ranks[0],
            }
        )
    return {"size": size, "visits": visits, "iterations": iterations, "runs": table}


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--visits", type=int, default=12)
    p.add_argument("--iterations", type=int, default=6)
    p.add_argument("--workdir", default="benchmarks/results/scaling-data")
    a = p.parse_args()
    print(json.dumps(scaling(Path(a.workdir), a.size, a.visits, a.iterations), indent=1))
