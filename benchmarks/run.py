"""`make bench`: a whole iteration and the sweep vs their scipy references, start-up and compilation,
the PSF-aware model's cost, and strong scaling of `mpidcr run`.

Writes benchmarks/results/bench.json and prints a table.  Not part of the tests: timings on a
shared 2-core machine are noisy, so they are compared as ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from contention import ceilings
from iteration import iteration
from kernels import bench
from psf_cost import psf_cost
from scaling import scaling
from startup import startup

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    info = {"python": platform.python_version(), "machine": platform.machine(), "cores": os.cpu_count()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (OSError, ValueError):
        pass
    import numba
    import numpy

    info["numpy"], info["numba"] = numpy.__version__, numba.__version__
    return info


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--kernel-size", type=int, default=1024)
    p.add_argument("--shape", default="2048x4096", help="end-to-end patch NYxNX (default 2048x4096)")
    p.add_argument("--skip-scaling", action="store_true")
    p.add_argument("--skip-cold", action="store_true", help="no cold-cache runs (each compiles for about a minute)")
    a = p.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"machine": machine()}
    ny, nx = (int(v) for v in a.shape.lower().split("x"))
    out["iteration"] = []
    print(f"{'field':>14} {'mpidcr ms':>9} {'update ms':>9} {'sweep ms':>8} {'scipy ms':>9} {'ratio':>6} "
          f"{'not sweep':>9} {'max rel diff':>12}")
    for shape in ((512, 512), (1024, 1024), (ny, nx)):
        r = iteration(shape)
        out["iteration"].append(r)
        print(f"{f'{shape[0]}x{shape[1]}x12':>14} {r['iteration_s'] * 1e3:>9.1f} {r['update_s'] * 1e3:>9.1f} "
              f"{r['sweep_kernel_s'] * 1e3:>8.1f} {r['reference_iteration_s'] * 1e3:>9.0f} {r['ratio']:>6.1f} "
              f"{100 * r['non_sweep_share']:>8.0f}% {r['max_rel_diff']:>12.1e}")
    out["startup"] = su = startup(RESULTS / "startup", cold=not a.skip_cold)
    w = su["warm_run"]
    print(f"\nmpidcr --help {su['help_s']:.2f} s; warm run of 128x128x6: {w['wall_s']:.2f} s wall (kernels "
          f"{w['phases_s']['compile']:.2f} s, read+solve+write {w['phases_s']['total']:.2f} s)")
    if "cold_run_1_rank" in su:
        c1, c4 = su["cold_run_1_rank"], su["cold_run_4_ranks"]
        groups = ", ".join(f"group {g['group']} by rank {g['rank']} {g['seconds']:.1f} s" for g in c4["groups"])
        print(f"cold kernel cache: 1 rank compiles in {c1['compile_s']:.1f} s; 4 ranks in {c4['compile_s']:.1f} s "
              f"({groups}; each group once: {c4['groups_compiled_once']})")
    out["kernels"] = bench(size=a.kernel_size, visits=12, K=3)
    print(f"{'order':>5} {'mpidcr ms/Mpix/visit':>21} {'scipy ms/Mpix/visit':>20} {'ratio':>7} {'max rel diff':>13}")
    for r in out["kernels"]:
        print(
            f"{r['order']:>5} {r['fused_ms_per_mpix_visit']:>21.2f} {r['reference_ms_per_mpix_visit']:>20.1f} "
            f"{r['ratio']:>7.1f} {r['max_rel_diff']:>13.1e}"
        )
    out["psf"] = [psf_cost(visits=v) for v in (16, 48)]
    for r in out["psf"]:
        print(f"\nPSF-aware iteration / constant-PSF iteration, {r['size']}² x {r['visits']} visits "
              f"(Kolmogorov 0.6-1.2 arcsec): with wings ({r['groups']} blur groups, support {r['blur_support']} px) "
              f"{r['psf_aware_s'] * 1e3:.1f} / {r['constant_s'] * 1e3:.1f} ms = {r['ratio']:.2f}; one Gaussian "
              f"({r['groups_no_wings']} groups) {r['psf_aware_s_no_wings'] * 1e3:.1f} ms = {r['ratio_no_wings']:.2f}")
    if not a.skip_scaling:
        out["scaling"] = scaling(RESULTS / f"scaling-data-{ny}x{nx}", (ny, nx))
        print(
            f"\n{'ranks':>5} {'tiles':>6} {'iter':>5} {'compile s':>9} {'read s':>7} {'solve s':>8} {'write s':>8} "
            f"{'total s':>8} {'peak GiB':>9} {'efficiency':>10}"
        )
        for r in out["scaling"]["runs"]:
            print(
                f"{r['ranks']:>5} {r['tiles'][0]}x{r['tiles'][1]:<4} {r['iterations']:>5} {r['compile_s']:>9.2f} "
                f"{r['read_s']:>7.2f} {r['solve_s']:>8.2f} {r['write_s']:>8.2f} {r['total_s']:>8.2f} "
                f"{r['peak_memory_gib']:>9.2f} {r['efficiency']:>10.2f}"
            )
        # what the machine allows two ranks, measured right after the runs (it drifts)
        out["contention"] = c = ceilings(2)
        print(
            f"\nmachine ceiling for 2 ranks (same work alone vs together): compute {c['compute']['ceiling']:.2f}, "
            f"memory stream {c['stream']['ceiling']:.2f}"
        )
    (RESULTS / "bench.json").write_text(json.dumps(out, indent=1))
    print(f"\nwrote {RESULTS / 'bench.json'}")


if __name__ == "__main__":
    main()
