"""Start-up and compilation: what a user waits for before and around the solve.

- ``mpidcr --help`` (wall, median of 5);
- a warm run (kernels in numba's cache) of a 128² × 6-visit field: wall time of the whole
  command and the run's own phases;
- a cold run: the same with an empty kernel cache (``--kernel-cache`` on a fresh directory), on
  1 rank, and on 4 ranks of a 256² field, where the log says which rank compiled which group of
  kernels (each group once, side by side; the others read them from the cache after it).
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MPIDCR = [sys.executable, "-m", "mpidcr"]


def _wall(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()[-400:]}")
    return time.perf_counter() - t0, done


def _field(workdir: Path, size: int, visits: int) -> Path:
    out = workdir / f"field-{size}-{visits}"
    if not (out / "manifest.toml").exists():
        _wall([*MPIDCR, "simulate", "--engine", "numpy", "--size", str(size), "--visits", str(visits), "--science",
               "0", "--overwrite", str(out)])  # fmt: skip
    return out / "manifest.toml"


def startup(workdir: Path, cold: bool = True) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    out: dict = {"help_s": statistics.median(_wall([*MPIDCR, "--help"])[0] for _ in range(5))}
    # (python -m mpidcr is what the console script runs; its own start is the same)
    small = _field(workdir, 128, 6)
    model = workdir / "model-128.h5"
    runs = []
    for _ in range(3):
        wall, done = _wall([*MPIDCR, "run", str(small), "-o", str(model), "--overwrite", "--json"])
        runs.append((wall, json.loads(done.stdout)["seconds"]))
    wall, phases = sorted(runs, key=lambda r: r[0])[1]
    out["warm_run"] = {"wall_s": wall, "phases_s": phases, "all_walls_s": [r[0] for r in runs]}
    if cold:
        with tempfile.TemporaryDirectory(dir=workdir) as cache:
            wall, done = _wall([*MPIDCR, "--kernel-cache", cache, "run", str(small), "-o", str(model), "--overwrite",
                                "--json"])  # fmt: skip
            out["cold_run_1_rank"] = {"wall_s": wall, "compile_s": json.loads(done.stdout)["seconds"]["compile"]}
        field = _field(workdir, 256, 6)
        with tempfile.TemporaryDirectory(dir=workdir) as cache:
            wall, done = _wall(["mpiexec", "-n", "4", *MPIDCR, "--kernel-cache", cache, "-v", "--log-all-ranks", "run",
                                str(field), "-o", str(workdir / "model-256.h5"), "--overwrite"])  # fmt: skip
            groups = [(int(m.group(1)), int(m.group(2)), float(m.group(3))) for m in
                      re.finditer(r"rank (\d+): kernel group (\d+) ready in ([\d.]+) s", done.stderr)]  # fmt: skip
            ready = re.search(r"kernels ready in ([\d.]+) s", done.stderr)
            out["cold_run_4_ranks"] = {"wall_s": wall, "compile_s": float(ready.group(1)) if ready else None,
                                       "groups": [{"rank": r, "group": g, "seconds": t} for r, g, t in groups],
                                       "groups_compiled_once": sorted(g for _, g, _ in groups) == sorted(
                                           {g for _, g, _ in groups})}  # fmt: skip
    return out


if __name__ == "__main__":
    where = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(os.environ.get("TMPDIR", "/tmp")) / "mpidcr-startup"
    print(json.dumps(startup(where, cold="--no-cold" not in sys.argv), indent=1))
