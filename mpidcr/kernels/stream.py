"""The PSF-aware sweep streamed by rows: every blur group's planes, visits and adjoint in one pass.

The PSF-aware sweep (docs/physics.md) blurs the K model planes to each of G blur groups (a chain
of 3-tap steps, plus the wing Gaussians' mix), runs each group's visits over its planes, and
takes the groups' accumulators back through the adjoint steps (Horner, from the broadest group
down).  Done group after group over whole planes, each group's K planes and K accumulators go
out to memory and come back (2·G·K planes per sweep): at 16 groups that traffic, not the
arithmetic, made the iteration 2.8× the constant-PSF one.

Here every stage of that computation is an *op* producing rows of one buffer from rows of
others: load the planes, each blur step, each group's mix, each visit's template and residual
rows (with its metric sums), each group's accumulator rows, each adjoint step (the last of a
group's adding the group's accumulators and gathering its wing accumulators), and the store of
the finished accumulator rows.  A buffer is a *ring* of rows (row y in slot y mod its size)
holding only the rows its consumers still need.  The ops run in turn, each advancing as far as
its consumers need for the next ``block`` output rows (a schedule computed once from the shift
tables), so every intermediate row is made once and read while still in cache; only the planes,
the wing planes, the warps and the accumulators themselves touch memory.

Each output row is computed by the same row functions as the group-by-group path
(:mod:`mpidcr.kernels.gaussian`, :mod:`mpidcr.kernels.fused`), in the same order, so the two
agree bit for bit (the tests compare them).  With several threads, the rows are split into runs
of whole metric blocks; a run recomputes the few intermediate rows beyond its ends that it needs
(the same values), and adds to the wing accumulators and the metric sums only for its own rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numba
import numpy as np
from numpy.typing import NDArray

from .fused import SweepPlan, _flags, _forward_span, _reverse_row, _reverse_rows
from .gaussian import _mix_row, _step_weights, step_rows
from .threads import threadable

if TYPE_CHECKING:
    from ..psf import BlurPlan

#: what an op does (see the module docstring)
LOAD, STEP, MIX, RESIDUAL, ACCUMULATE, GATHER, STORE = range(7)


@numba.njit(cache=True, nogil=True, inline="always")
def _add_wing_share(rows, weights, d):  # pragma: no cover - compiled
    """rows[j] += weights[j]·d for each wing j (``rows``: one image row of each wing's accumulators)."""
    for j in range(rows.shape[0]):
        wj = rows.dtype.type(weights[j])
        w_row = rows[j]
        for x in range(d.shape[0]):
            w_row[x] += wj * d[x]


# fmt: off
@threadable()
def _stream(planes, wing_planes, images, goods, converges, significance, inner, ftabs, rtabs, fpairs, rpairs,
            kinds, outs, ins, adds, step_a, step_b, cores, groups, visits, wings_on, offsets, sizes, members,
            member_start, residual_of, wing_weights, starts, targets, owned, block, pool, work, done, counted,
            partial, wing_acc, acc):  # pragma: no cover - compiled
    K, ny, nx = planes.shape
    nops = kinds.shape[0]
    nsteps = targets.shape[1]
    fiy, fwy, fix, fwx, fxa, fxb, foff, fva, fvb, fscale = ftabs
    riy, rwy, rix, rwx, rxa, rxb, roff, rva, rvb = rtabs
    real = pool.dtype.type
    for c in numba.prange(starts.shape[0]):
        mem = pool[c]
        t0 = work[c, 0, :nx]
        t1 = work[c, 1, :nx]
        scaled = work[c, 2, :nx]
        pad = work[c, 3]
        mine0 = owned[c, 0]
        mine1 = owned[c, 1]
        for o in range(nops):
            done[c, o] = starts[c, o] - 1
        for i in range(nsteps):
            for o in range(nops):
                a = done[c, o] + 1
                t = targets[c, i, o]
                if t < a:
                    continue
                done[c, o] = t
                kind = kinds[o]
                off = offsets[outs[o]]
                n = sizes[outs[o]]
                if kind == LOAD:
                    for k in range(K):
                        for y in range(a, t + 1):
                            mem[off + k * n + y % n, :] = planes[k, y]
                elif kind in (STEP, GATHER):
                    src = offsets[ins[o]]
                    m = sizes[ins[o]]
                    wa = real(step_a[o])
                    wb = real(step_b[o])
                    cc = real(cores[o])
                    g = groups[o]
                    for k in range(K):
                        base = src + k * m
                        for y in range(a, t + 1):
                            orow = mem[off + k * n + y % n]
                            if kind == GATHER:  # the arithmetic of gaussian._step_gather
                                d = mem[offsets[adds[o]] + k * sizes[adds[o]] + y % sizes[adds[o]]]
                                if wings_on[o] and mine0 <= y < mine1:
                                    _add_wing_share(wing_acc[k, :, y], wing_weights[g], d)
                                for x in range(nx):
                                    scaled[x] = cc * d[x]
                            up = mem[base + max(y - 1, 0) % m]
                            down = mem[base + min(y + 1, ny - 1) % m]
                            step_rows(up, mem[base + y % m], down, pad, wa, wb, orow)
                            if kind == GATHER:
                                for x in range(nx):
                                    orow[x] += scaled[x]
                elif kind == MIX:
                    src = offsets[ins[o]]
                    m = sizes[ins[o]]
                    cc = real(cores[o])
                    ww = wing_weights[groups[o]]
                    for k in range(K):
                        for y in range(a, t + 1):
                            _mix_row(mem[src + k * m + y % m], cc, wing_planes[k], ww, y, mem[off + k * n + y % n])
                elif kind == RESIDUAL:
                    v = visits[o]
                    src = offsets[ins[o]]
                    m = sizes[ins[o]]
                    view = mem[src : src + K * m].reshape((K, m, nx))
                    ftab = (fiy[v], fwy[v], fix[v], fwx[v], fxa[v], fxb[v], foff[v], fva[v], fvb[v], fscale[v])
                    counted[c, v] = _forward_span(a, t, view, images[v], goods[v], converges[v], significance, inner,
                                                  ftab, fpairs[v], t0, t1, mem[off : off + n], mine0, mine1,
                                                  counted[c, v], block, partial[:, v])
                elif kind == ACCUMULATE:
                    view = mem[off : off + K * n].reshape((K, n, nx))
                    for k in range(K):
                        for y in range(a, t + 1):
                            view[k, y % n, :] = 0
                    g = groups[o]
                    for e in range(member_start[g], member_start[g + 1]):
                        v = members[e]
                        rb = residual_of[v]
                        ring = mem[offsets[rb] : offsets[rb] + sizes[rb]]
                        rtab = (riy[v], rwy[v], rix[v], rwx[v], rxa[v], rxb[v], roff[v], rva[v], rvb[v])
                        y = a
                        while y <= t:
                            if y < t:
                                _reverse_rows(y, ring, rtab, rpairs[v], view, y % n, (y + 1) % n)
                                y += 2
                            else:
                                _reverse_row(y, ring, rtab, view, y % n)
                                y += 1
                    if wings_on[o]:  # the broadest group: the arithmetic of gaussian._spread
                        cc = real(cores[o])
                        for k in range(K):
                            for y in range(a, t + 1):
                                row = view[k, y % n]
                                if mine0 <= y < mine1:
                                    _add_wing_share(wing_acc[k, :, y], wing_weights[g], row)
                                for x in range(nx):
                                    row[x] = cc * row[x]
                else:  # STORE
                    src = offsets[ins[o]]
                    m = sizes[ins[o]]
                    for k in range(K):
                        for y in range(a, t + 1):
                            acc[k, y, :] = mem[src + k * m + y % m]
    sums = np.zeros((images.shape[0], 2))
    for bi in range(partial.shape[0]):  # in block order, so the sums do not depend on the thread count
        sums += partial[bi]
    return sums
# fmt: on


@dataclass(frozen=True)
class _Op:
    """One op: ``kind`` makes rows of buffer ``out`` from rows of ``src`` (and ``add``, a GATHER's
    group accumulators; -1: none); a STEP's or GATHER's 3-tap weights (a, b, a); the core weight
    and group of a MIX, ACCUMULATE or GATHER, and whether it adds to the wing accumulators
    (``wings``); a RESIDUAL's visit."""

    kind: int
    out: int
    src: int = -1
    add: int = -1
    a: float = 0.0
    b: float = 0.0
    core: float = 1.0
    group: int = -1
    visit: int = -1
    wings: bool = False


class _Graph:
    """The ops and buffers of one streamed sweep, in an order where every op comes after the ops
    whose buffers it reads."""

    def __init__(self) -> None:
        self.ops: list[_Op] = []
        self.planes: list[int] = []  # per buffer: rows per row of the image (K, or 1 for a residual)

    def buffer(self, planes: int) -> int:
        self.planes.append(planes)
        return len(self.planes) - 1

    def op(self, kind: int, out: int, src: int = -1, add: int = -1, *, step: float | None = None, core: float = 1.0,
           group: int = -1, visit: int = -1, wings: bool = False) -> None:  # fmt: skip
        a, b = _step_weights(step) if step is not None else (0.0, 0.0)
        self.ops.append(_Op(kind, out, src, add, a, b, core, group, visit, wings))


def _read_bounds(index: NDArray, weight: NDArray, ny: int) -> tuple[NDArray, NDArray]:
    """Per output row y, the lowest and highest input row any used shift reads (both taps of
    every shift whose weights are not both 0): (ny,) each; rows that read nothing get (ny, −1)."""
    used = np.any(weight != 0.0, axis=2)  # (S, ny)
    lo = np.where(used[..., None], index, ny).min(axis=(0, 2))
    hi = np.where(used[..., None], index, -1).max(axis=(0, 2))
    return lo, hi


class StreamPlan:
    """The ops, ring buffers and schedule of the streamed PSF-aware sweep of one solver (its
    shifts, blur plan and active visits are fixed); :meth:`run` does one sweep.

    ``blur`` is the :class:`mpidcr.psf.BlurPlan`; ``active``: the visits the sweep runs.
    ``rows_per_step``: output rows each step of the schedule makes (the rings hold a few more).
    """

    def __init__(self, sweep: SweepPlan, blur: BlurPlan, K: int, shape: tuple[int, int], active: NDArray,
                 rows_per_step: int = 8):  # fmt: skip
        ny, nx = shape
        self.K, self.shape = K, (ny, nx)
        self.block = sweep.block_rows(nx)
        self.sweep = sweep
        G = len(blur.variances)
        J = len(blur.wing_sigmas)
        mixed = [blur.has_wings(g) for g in range(G)]
        group_of = np.asarray(blur.group_of)
        active = np.asarray(active, dtype=bool)
        graph = _Graph()
        # the forward chain: planes, each group's steps, its mix (or its last step's rows themselves)
        head = graph.buffer(K)
        graph.op(LOAD, head)
        stacks = []
        mix_op = {}
        for g in range(G):
            for variance in blur.steps[g]:
                out = graph.buffer(K)
                graph.op(STEP, out, head, step=variance)
                head = out
            if mixed[g]:
                stack = graph.buffer(K)
                mix_op[g] = len(graph.ops)
                graph.op(MIX, stack, head, core=blur.core_weight(g), group=g)
            else:
                stack = head
            stacks.append(stack)
        # each group's visits and accumulators, broadest first; the adjoint steps between groups
        residual_of = np.full(len(group_of), -1, dtype=np.int64)
        running = -1
        # where a group's rows wait for the adjoint (the forward chain runs ahead of it by twice the
        # blur still to come): in its residual rings (one row per visit, made as soon as its planes
        # are) when it has fewer visits than planes, else in its planes' ring (K rows, made on demand)
        self.eager: list[int] = []
        visits_of = [list(map(int, np.flatnonzero(active & (group_of == g)))) for g in range(G)]
        for g in range(G - 1, -1, -1):
            visits_g = visits_of[g]
            early = len(visits_g) < K
            if early and mixed[g]:
                self.eager.append(mix_op[g])
            for v in visits_g:
                residual_of[v] = graph.buffer(1)
                if early:
                    self.eager.append(len(graph.ops))
                graph.op(RESIDUAL, int(residual_of[v]), stacks[g], visit=v)
            group_acc = graph.buffer(K)
            last = g == G - 1
            graph.op(ACCUMULATE, group_acc, group=g, core=blur.core_weight(g),
                     wings=last and mixed[g])  # fmt: skip
            if last:
                running = group_acc
                continue
            steps = blur.steps[g + 1][::-1]
            for i, variance in enumerate(steps):
                out = graph.buffer(K)
                if i < len(steps) - 1:
                    graph.op(STEP, out, running, step=variance)
                else:  # the last step adds the group's accumulators and gathers its wings' share
                    graph.op(GATHER, out, running, group_acc, step=variance, group=g,
                             core=blur.core_weight(g), wings=mixed[g])  # fmt: skip
                running = out
        for variance in blur.steps[0][::-1]:
            out = graph.buffer(K)
            graph.op(STEP, out, running, step=variance)
            running = out
        graph.op(STORE, graph.buffer(0), running)
        self.eager.sort()  # (op order is an order of dependencies)
        self.graph = graph
        self.group_of = group_of
        self.residual_of = residual_of
        # the active visits group after group, group g's at [member_start[g], member_start[g + 1])
        self.members = np.array([v for visits in visits_of for v in visits], dtype=np.int64)
        self.member_start = np.cumsum([0, *map(len, visits_of)], dtype=np.int64)
        self.wing_weights = np.array(blur.wing_weights if J else np.zeros((G, 0)), dtype=np.float64).reshape(G, J)
        self.stacks = stacks
        self.rows_per_step = max(1, int(rows_per_step))
        self._read_tables(sweep, ny)
        self._schedules: dict[int, _Schedule] = {}
        ops = graph.ops
        # the ops as arrays, for the kernel
        self.kinds, self.outs, self.ins, self.adds, self.groups, self.visits = (
            np.array([getattr(p, key) for p in ops], dtype=np.int64) for key in ("kind", "out", "src", "add", "group", "visit")
        )
        self.step_a, self.step_b, self.cores = (np.array([getattr(p, key) for p in ops]) for key in ("a", "b", "core"))
        self.wings_on = np.array([p.wings for p in ops], dtype=np.bool_)

    # -- the schedule -------------------------------------------------------------
    def _window(self, o: int, src: int, a: int, b: int) -> tuple[int, int]:
        """Rows of buffer ``src`` op ``o`` reads to make its rows [a, b] (lo > hi: none)."""
        p = self.graph.ops[o]
        ny = self.shape[0]
        if p.kind in (STEP, GATHER) and src == p.src:
            return max(a - 1, 0), min(b + 1, ny - 1)
        if b < 0:  # rows above the image (the schedule's warm-up): as far above row 0's reach
            hi = self._window(o, src, 0, 0)[1] + b
            return min(a, hi), hi
        if p.kind == RESIDUAL:
            v = p.visit
            return int(self._f_lo[v][a]), int(self._f_hi[v][b])
        if p.kind == ACCUMULATE:  # every residual row of its own rows too: they carry the metric
            v = self._visit_of_buffer[src]
            return min(a, int(self._r_lo[v][a])), max(b, int(self._r_hi[v][b]))
        return a, b

    def _reach(self, o: int, made: int) -> int:
        """The last row eager op ``o`` can make once its input has rows up to ``made``."""
        p = self.graph.ops[o]
        if p.kind == RESIDUAL:  # the rows whose template taps all lie at or below ``made``
            return int(np.searchsorted(self._f_hi[p.visit], made, side="right")) - 1
        return made

    def _readers(self) -> list[list[int]]:
        """Per buffer, the ops that read it (:meth:`_sources` turned around)."""
        readers: list[list[int]] = [[] for _ in self.graph.planes]
        for o in range(len(self.graph.ops)):
            for src in self._sources(o):
                readers[src].append(o)
        return readers

    def _read_tables(self, sweep: SweepPlan, ny: int) -> None:
        fiy, fwy, fscale = sweep.ftabs[0], sweep.ftabs[1], sweep.ftabs[9]
        riy, rwy = sweep.rtabs[0], sweep.rtabs[1]
        self._f_lo, self._f_hi, self._r_lo, self._r_hi = {}, {}, {}, {}
        for v in map(int, self.members):
            lo, hi = _read_bounds(fiy[v], fwy[v] * fscale[v][:, None, None], ny)
            # over a run of rows [a, b]: the lowest row any row ≥ a reads, the highest any row ≤ b reads
            self._f_lo[v], self._f_hi[v] = np.minimum.accumulate(lo[::-1])[::-1], np.maximum.accumulate(hi)
            lo, hi = _read_bounds(riy[v], rwy[v], ny)
            self._r_lo[v], self._r_hi[v] = np.minimum.accumulate(lo[::-1])[::-1], np.maximum.accumulate(hi)
        self._visit_of_buffer = {int(b): v for v, b in enumerate(self.residual_of) if b >= 0}

    def schedule(self, threads: int) -> _Schedule:
        """The schedule for ``threads`` runs of rows (made on first use)."""
        if threads not in self._schedules:
            self._schedules[threads] = self._schedule(threads)
        return self._schedules[threads]

    def _schedule(self, threads: int) -> _Schedule:
        ny = self.shape[0]
        ops, nops = self.graph.ops, len(self.graph.ops)
        producer = {p.out: o for o, p in enumerate(ops)}
        readers = self._readers()
        nblocks = -(-ny // self.block)
        chunks = max(1, min(int(threads), nblocks))
        bounds = [(c * nblocks // chunks * self.block, min((c + 1) * nblocks // chunks * self.block, ny))
                  for c in range(chunks)]  # fmt: skip
        step = self.rows_per_step
        sizes = np.ones(len(self.graph.planes), dtype=np.int64)
        all_starts, all_targets = [], []
        for c0, c1 in bounds:

            def wanted(last: int) -> NDArray:
                """The last row each op must have made for the output rows up to ``last``."""
                want = np.full(nops, np.iinfo(np.int64).min // 2, dtype=np.int64)
                want[nops - 1] = last
                for o in range(nops - 2, -1, -1):
                    for r in readers[ops[o].out]:
                        want[o] = max(want[o], self._window(r, ops[o].out, int(want[r]), int(want[r]))[1])
                return want

            total = wanted(c1 - 1)
            # each op's first row: the lowest any reader reads over all of its rows (a reader's first
            # rows may read nothing, e.g. a visit whose shifts all sample above row 0)
            start = np.full(nops, ny, dtype=np.int64)
            start[nops - 1] = c0
            for o in range(nops - 2, -1, -1):
                for r in readers[ops[o].out]:
                    if total[r] >= start[r]:
                        lo, hi = self._window(r, ops[o].out, int(start[r]), int(total[r]))
                        if lo <= hi:
                            start[o] = min(start[o], lo)

            # a warm-up: the output's schedule starts early (making nothing) so that every op reaches its
            # lead over the output a step of rows at a time; starting them all at once would fill each
            # ring with an op's whole lead
            lead = int(np.max(wanted(c0) - start)) + step
            previous = start - 1
            targets = []
            last = c0 - lead
            while previous[nops - 1] < c1 - 1:
                last = min(last + step, c1 - 1)
                target = np.maximum(previous, np.minimum(wanted(last), ny - 1))
                target = np.where(target >= start, target, start - 1)
                for o in self.eager:  # as far as their input allows (topological order: inputs already set)
                    if start[o] <= total[o]:
                        target[o] = max(target[o], min(int(total[o]), self._reach(o, int(target[producer[ops[o].src]]))))
                # ring sizes: what a reader reads this step must still be in its source's ring
                for o in range(nops):
                    if target[o] <= previous[o]:
                        continue
                    for src in self._sources(o):
                        lo, hi = self._window(o, src, int(previous[o]) + 1, int(target[o]))
                        if lo <= hi:
                            made = int(target[producer[src]])
                            if hi > made or lo < start[producer[src]]:
                                raise AssertionError("internal error: the streamed sweep's schedule reads rows not made")
                            sizes[src] = max(sizes[src], made - lo + 1)
                targets.append(target)
                previous = target
            all_starts.append(start)
            all_targets.append(np.array(targets))
        nsteps = max(len(t) for t in all_targets)
        starts = np.array(all_starts, dtype=np.int64)
        # runs of fewer steps repeat their last (an op makes nothing when its target is done)
        targets = np.array([np.concatenate([t, np.repeat(t[-1:], nsteps - len(t), axis=0)]) for t in all_targets],
                           dtype=np.int64)  # fmt: skip
        offsets = np.zeros(len(sizes), dtype=np.int64)
        rows = np.array(self.graph.planes, dtype=np.int64) * sizes
        offsets[1:] = np.cumsum(rows)[:-1]
        # the visits read their group's planes from a ring: their row taps, taken modulo its size
        fiy = self.sweep.ftabs[0].copy()
        for v in range(fiy.shape[0]):
            fiy[v] %= sizes[self.stacks[self.group_of[v]]]
        return _Schedule(starts, targets, np.array(bounds, dtype=np.int64), sizes, offsets, int(rows.sum()),
                         (fiy, *self.sweep.ftabs[1:]))  # fmt: skip

    def _sources(self, o: int) -> list[int]:
        """The buffers op ``o`` reads."""
        p = self.graph.ops[o]
        out = [b for b in (p.src, p.add) if b >= 0]
        if p.kind == ACCUMULATE:
            g = p.group
            out += [int(self.residual_of[v]) for v in self.members[self.member_start[g] : self.member_start[g + 1]]]
        return out

    def run(self, planes: NDArray, wing_planes: NDArray, images: NDArray, goods: NDArray, converges: NDArray,
            significance: NDArray, inner: tuple[int, int, int, int], wing_acc: NDArray, acc: NDArray,
            runs: int | None = None) -> NDArray:  # fmt: skip
        """One PSF-aware sweep of the planes (K, ny, nx) and their wing Gaussians ``wing_planes`` (K,
        J, ny, nx): sets ``acc`` to Σ_g c_g·B_gᵀ acc_g (the adjoint before the wings), adds Σ_g
        w_gj·acc_g to ``wing_acc`` (K, J, ny, nx; zeroed by the caller), and returns the (V, 2)
        metric sums over the ``inner`` box (y0, y1, x0, x1), as :meth:`SweepPlan.run` does.

        ``runs``: runs of rows (default numba's thread count: one per thread); the result does not
        depend on it."""
        plan = self.schedule(numba.get_num_threads() if runs is None else max(1, int(runs)))
        chunks = plan.starts.shape[0]
        nx = self.shape[1]
        nblocks = -(-self.shape[0] // self.block)
        V = images.shape[0]
        if plan.pool is None or plan.pool.dtype != planes.dtype:
            # kept from sweep to sweep: allocating and zeroing the rings each time cost more than a tenth
            # of the sweep; zeros at first, model values after, so a stray read never sees NaN
            plan.pool = np.zeros((chunks, plan.pool_rows, nx), dtype=planes.dtype)
        pool = plan.pool
        work = np.empty((chunks, 4, nx + 2), dtype=planes.dtype)
        done = np.empty((chunks, len(self.kinds)), dtype=np.int64)
        counted = np.full((chunks, V), -1, dtype=np.int64)
        partial = np.zeros((nblocks, V, 2))
        sweep = self.sweep
        return _stream(planes, wing_planes, images, _flags(goods), _flags(converges), significance,
                       np.asarray(inner, dtype=np.int64), plan.ftabs, sweep.rtabs, sweep.fpairs, sweep.rpairs,
                       self.kinds, self.outs, self.ins, self.adds, self.step_a, self.step_b, self.cores, self.groups,
                       self.visits, self.wings_on, plan.offsets, plan.sizes, self.members, self.member_start,
                       self.residual_of, self.wing_weights, plan.starts, plan.targets, plan.owned, self.block, pool,
                       work, done, counted, partial, wing_acc, acc)  # fmt: skip


@dataclass
class _Schedule:
    """When each op makes which rows, for one split of the rows into runs, and where its rings lie.

    ``starts`` (runs, ops): each op's first row; ``targets`` (runs, steps, ops): the last row it
    has made after each step; ``owned`` (runs, 2): each run's own rows [start, stop); ``sizes``
    and ``offsets`` (buffers): each ring's rows per plane and its first row in the pool of
    ``pool_rows`` rows; ``ftabs``: the visits' forward tap tables with their row taps taken
    modulo their group's ring; ``pool``: the rings, (runs, pool_rows, nx), made at the first sweep."""

    starts: NDArray
    targets: NDArray
    owned: NDArray
    sizes: NDArray
    offsets: NDArray
    pool_rows: int
    ftabs: tuple
    pool: NDArray | None = None

