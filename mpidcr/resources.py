"""The memory a run needs, and the memory the machine and the process limits allow.

The estimate is the rule of docs/performance.md (bytes per pixel of a rank's outer box, per
visit and per sub-filter, plus a baseline for the interpreter and the compiler).  What is
allowed is the smallest of: the node's available memory (``MemAvailable``) and its control
group's remaining limit (what Slurm enforces), each shared by the ranks on the node, and the
process's own ``ulimit -v``.  The check runs before any large array is allocated.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path

from .errors import InputError
from .tiling import Plan

#: Bytes per outer-box pixel: per visit (image f4, variance f4, mask i4, good and convergence
#: flags), and per sub-filter (float32 model state: two model and two accumulator buffers,
#: inverse weights, amplified planes, output planes; nImage i4; with a share of the per-pixel
#: images: static model, weights, work images).  Measured on 2048×4096 × 12 visits × 3
#: sub-filters: one rank 3.07 GiB (3.17 while numba compiles; this rule: 3.30 GiB), two ranks
#: 1.71 GiB (rule: 1.90 GiB).
BYTES_PER_PIXEL_VISIT = 4 + 4 + 4 + 1 + 1
BYTES_PER_PIXEL_SUBFILTER = 68
#: the interpreter with numpy, scipy, astropy, numba and h5py loaded, and numba's compiler at work
BASELINE_BYTES = 400 * 2**20


def memory_per_rank(plan: Plan, num_visits: int, num_subfilters: int, psf_groups: int = 0,
                    psf_wings: int = 0, psf_support: int = 0, psf_streamed: bool = True) -> int:  # fmt: skip
    """Peak bytes a rank of ``plan`` needs (largest outer box), by the rule of docs/performance.md.

    The PSF-aware model (``psf_groups`` blur groups, ``psf_wings`` wing Gaussians, blurs reaching
    ``psf_support`` pixels) adds two scratch images, each wing's planes and accumulators, and
    either the streamed sweep's rings (``psf_streamed``: :func:`stream_ring_rows` rows of the
    tile's width) or, group by group (interpolation order 3), each group's blurred planes and one
    set of accumulators."""
    pixels = max(plan.tile(r).outer.size for r in range(plan.size))
    width = max(plan.tile(r).outer.shape[1] for r in range(plan.size))
    per_pixel = num_visits * BYTES_PER_PIXEL_VISIT + num_subfilters * BYTES_PER_PIXEL_SUBFILTER
    rings = 0
    if psf_groups:
        per_pixel += 8 + 4 * num_subfilters * 2 * psf_wings
        if psf_streamed:
            rings = 4 * width * stream_ring_rows(num_visits, num_subfilters, psf_groups, psf_support)
        else:
            per_pixel += 4 * num_subfilters * (psf_groups + 1)
    return BASELINE_BYTES + pixels * per_pixel + rings


def stream_ring_rows(num_visits: int, num_subfilters: int, groups: int, support: int) -> int:
    """A bound on the rows of the streamed PSF-aware sweep's rings (kernels.stream), one thread:
    K planes for each group's blur step, planes and accumulators and a residual row per visit,
    each holding up to twice the blur's reach and a step of rows (measured: 2 200 rows for 16
    groups reaching 15 px, where this gives 5 300)."""
    return (num_subfilters * (2 * groups + 1) + num_visits) * (2 * support + 16)


def parse_bytes(text: str) -> int:
    """``"4G"``, ``"500M"``, ``"2.5GB"``, ``"123456"`` → bytes."""
    units = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = t[-1] if t and t[-1] in units else ""
    try:
        value = int(float(t[: len(t) - len(unit)]) * units[unit])
    except (ValueError, OverflowError):
        raise InputError(f"--max-memory '{text}' is not a size like 4G or 500M") from None
    if value <= 0:
        raise InputError(f"--max-memory '{text}' must be positive")
    return value


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return None if text in ("", "max") or not text.isdigit() else int(text)


def _meminfo(key: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_limit(hierarchy: str, controllers: str, rel: str) -> tuple[int | None, int | None] | None:
    """(limit, usage) of the memory controller of one /proc/self/cgroup line; None if not it."""
    if hierarchy == "0" and controllers == "":  # v2: one unified hierarchy
        base = Path("/sys/fs/cgroup") / rel
        return _read_int(base / "memory.max"), _read_int(base / "memory.current")
    if "memory" in controllers.split(","):  # v1
        base = Path("/sys/fs/cgroup/memory") / rel
        limit = _read_int(base / "memory.limit_in_bytes")
        return (None if limit is not None and limit >= 2**60 else limit), _read_int(base / "memory.usage_in_bytes")
    return None


def _cgroup_room() -> int | None:
    """Bytes the control group of this process may still allocate (v2 or v1), None if unlimited."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split(":", 2)
        found = _cgroup_limit(parts[0], parts[1], parts[2].lstrip("/")) if len(parts) == 3 else None
        if found is not None and found[0] is not None:
            return max(found[0] - (found[1] or 0), 0)
    return None


def resident_bytes() -> int:
    """Resident memory of this process now."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def node_room() -> tuple[int | None, str]:
    """(bytes, what limits them) still available on this node to all its ranks together."""
    candidates = [(v, name) for v, name in ((_meminfo("MemAvailable"), "MemAvailable"),
                                             (_cgroup_room(), "the cgroup memory limit")) if v is not None]  # fmt: skip
    return min(candidates) if candidates else (None, "")


def process_room() -> int | None:
    """Bytes of address space this process may still map (``ulimit -v``), None if unlimited."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[0])
        used = pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        used = 0
    return max(soft - used, 0)


def memory_problem(need: int, ranks_on_node: int) -> tuple[str, int] | None:
    """Why a rank needing ``need`` bytes (by the rule) cannot run here, with the bytes a rank could
    have (its share of the node, or its ulimit); None when it fits."""
    resident = resident_bytes()
    growth = max(need - resident, 0)
    room, source = node_room()
    if room is not None and growth * ranks_on_node > room:
        text = (
            f"the {ranks_on_node} rank(s) on this node need about {growth * ranks_on_node / 2**30:.2f} GiB more "
            f"but {source} leaves {room / 2**30:.2f} GiB"
        )
        return text, resident + room // ranks_on_node
    proc = process_room()
    if proc is not None and growth > proc:
        return f"a rank needs about {growth / 2**30:.2f} GiB more but ulimit -v leaves {proc / 2**30:.2f} GiB", (
            resident + proc
        )
    return None
