"""`make bench`: kernel speed vs the scipy reference, and strong scaling of `mpidcr run`.

Writes benchmarks/results/bench.json and prints a table.  Not part of the tests: timings on a
shared 2-core machine are noisy, so they are compared as ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kernels import bench
from scaling import scaling

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--kernel-size", type=int, default=1024)
    p.add_argument("--scaling-size", type=int, default=2048)
    p.add_argument("--skip-scaling", action="store_true")
    a = p.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine()}}
    out["kernels"] = bench(size=a.kernel_size, visits=12, K=3)
    print(f"{'order':>5} {'fused ms/Mpix/visit':>20} {'scipy ms/Mpix/visit':>20} {'ratio':>7} {'max rel diff':>13}")
    for r in out["kernels"]:
        print(
            f"{r['order']:>5} {r['fused_ms_per_mpix_visit']:>20.2f} {r['reference_ms_per_mpix_visit']:>20.1f} "
            f"{r['ratio']:>7.1f} {r['max_rel_diff']:>13.1e}"
        )
    if not a.skip_scaling:
        out["scaling"] = scaling(RESULTS / "scaling-data", size=a.scaling_size)
        print(f"\n{'ranks':>5} {'read s':>8} {'solve s':>8} {'write s':>8} {'total s':>8} {'efficiency':>10}")
        for r in out["scaling"]["runs"]:
            print(
                f"{r['ranks']:>5} {r['read_s']:>8.2f} {r['solve_s']:>8.2f} {r['write_s']:>8.2f} "
                f"{r['total_s']:>8.2f} {r['efficiency']:>10.2f}"
            )
    (RESULTS / "bench.json").write_text(json.dumps(out, indent=1))
    print(f"\nwrote {RESULTS / 'bench.json'}")


if __name__ == "__main__":
    main()
