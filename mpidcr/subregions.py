"""LSST's subregion-sequential solve (``lsstCompat.subregions``, part of ``--profile lsst``).

The LSST task does not fit the patch at once.  It cuts it into ``subregionSize`` blocks (width
``subregionSize[0]``, height ``subregionSize[1]``; rows of blocks outer) and solves them one after
another, each over the block grown by the DCR buffer and clipped to the patch (its *dcrBBox*), with
its own metric (over the block, from templates of the block alone), gain history, iteration count
and model-weight normalisation.  Only the block is written back, so a later block starts from the
earlier blocks' results in the ring around it.  The coverage (dcrWeights) and the metric's noise
are the whole patch's.

Here every rank holds the patch-wide arrays (the model, T, the coverage), as the LSST task holds
them.  Each block is solved by as many ranks as its box can be split among (tiles at least twice
the halo); the others wait.  The result depends on ``subregionSize``, never on the rank count.
There are no checkpoints in this mode: a SIGTERM stops the run (exit 75) without one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray

from .coadd import StaticModel
from .driver import Layout, RunInputs, read_box, read_static, read_tile, stop_point
from .errors import DecompositionError, InputError, Preempted
from .kernels import moments
from .parallel.comm import Comm
from .preemption import STOP
from .solver import DcrResult, DcrSolver, IterationRecord, SolverState, StopReason, Subregion, WarpStack
from .tiling import Box, Plan, Tile, choose_dims

log = logging.getLogger(__name__)

#: The table of blocks in a model file written in this mode (``/subregions``); ``first_row`` and
#: ``rows`` locate the block's updates in ``/convergence`` (row 0 of a block: its initial metric)
SUBREGION_DTYPE = np.dtype([("block", "i4"), ("y0", "i4"), ("y1", "i4"), ("x0", "i4"), ("x1", "i4"),
                            ("ranks", "i4"), ("iterations", "i4"), ("stop_reason", "S16"),
                            ("initial_metric", "f8"), ("final_metric", "f8"), ("first_row", "i4"),
                            ("rows", "i4"), ("seconds", "f8")])  # fmt: skip


def subregion_boxes(shape: tuple[int, int], size: tuple[int, int]) -> list[Box]:
    """The blocks of a patch of ``shape`` (ny, nx) for ``subregionSize`` = (width, height), in
    LSST's order: rows of blocks (y) outer, x inner; the last row and column may be smaller."""
    ny, nx = shape
    width, height = int(size[0]), int(size[1])
    return [Box(y0, min(y0 + height, ny), x0, min(x0 + width, nx))
            for y0 in range(0, ny, height) for x0 in range(0, nx, width)]  # fmt: skip


def block_ranks(size: int, shape: tuple[int, int], halo: int) -> tuple[int, tuple[int, int]]:
    """The most ranks (≤ ``size``) a box of ``shape`` can be split among, and their tile grid."""
    for n in range(size, 1, -1):
        try:
            dims = choose_dims(n, shape)
            Plan(shape, dims, halo).validate()
        except DecompositionError:
            continue
        return n, dims
    return 1, (1, 1)


@dataclass
class PatchArrays:
    """The patch-wide arrays every rank holds, from the patch-wide pass (axis order (…, y, x)).

    static : T as given (or built from the warps); base_mask : T's mask with the planes the run
    adds (the detection fallback); inverse_weights, nimage (K, ny, nx) and determined: the
    coverage; background : pixels whose noise the metric measures (not bad, not a source, at
    least the DCR buffer from the patch edge).
    """

    static: StaticModel
    base_mask: NDArray
    inverse_weights: NDArray
    nimage: NDArray
    determined: NDArray
    background: NDArray
    visit_weights: NDArray
    variance_scale: NDArray
    mask_planes: dict[str, int]
    converge_from_static: bool

    def static_on(self, box: Box, mask: NDArray | None = None) -> StaticModel:
        """T on ``box`` (with ``mask`` instead of T's own, if given)."""
        ys, xs = box.slices()
        s = self.static
        return StaticModel(s.image[ys, xs].copy(), s.variance[ys, xs].copy(),
                           (s.mask if mask is None else mask)[ys, xs].copy(), s.count[ys, xs].copy())  # fmt: skip


def assemble(comm: Comm, tile: Tile, arrays: dict[str, NDArray]) -> dict[str, NDArray]:
    """Patch-wide copies, on every rank, of outer-box ``arrays`` (…, y, x) from every rank's inner box."""
    inner = tile.inner_local
    pieces = comm.allgather((tile.inner, {k: np.ascontiguousarray(a[(..., *inner)]) for k, a in arrays.items()}))
    ny, nx = tile.patch.shape
    out = {k: np.empty((*a.shape[:-2], ny, nx), a.dtype) for k, a in arrays.items()}
    for box, part in pieces:
        for k, a in part.items():
            out[k][(..., *box.slices())] = a
    return out


def patch_arrays(solver: DcrSolver, tile: Tile, comm: Comm) -> PatchArrays:
    """What the blocks need of the patch-wide pass, on every rank."""
    s = solver
    full = assemble(comm, tile, {"image": s.static.image, "variance": s.static.variance, "mask": s.static.mask,
                                 "count": s.static.count, "base_mask": s.base_mask, "inverse": s.inverse_weights,
                                 "nimage": s.nimage, "determined": s.dcr_good,
                                 "background": s.background})  # fmt: skip
    static = StaticModel(full["image"], full["variance"], full["mask"], full["count"])
    return PatchArrays(static, full["base_mask"], full["inverse"], full["nimage"], full["determined"],
                       full["background"], np.array(s.visit_weights), np.array(s.variance_scale),
                       dict(s.mask_planes), s.detected_on_static)  # fmt: skip


def _edge_mask(box: Box, shape: tuple[int, int], distance: int) -> NDArray[np.bool_]:
    """Pixels of ``box`` at least ``distance`` from the edge of a patch of ``shape``."""
    yy = np.arange(box.y0, box.y1)
    xx = np.arange(box.x0, box.x1)
    oky = (yy >= distance) & (yy < shape[0] - distance)
    okx = (xx >= distance) & (xx < shape[1] - distance)
    return oky[:, None] & okx[None, :]


def outside_moments(plane: NDArray, background: NDArray, grown: Box) -> tuple[float, float, float]:
    """(count, Σ, Σ²) of ``plane`` over ``background`` pixels outside ``grown`` (patch arrays)."""
    select = background.copy()
    select[grown.slices()] = False
    n, total, squares = moments.selected_sums(np.ascontiguousarray(plane), select)
    return float(n), float(total), float(squares)


@dataclass
class BlockOutcome:
    """What one block's solve did (the same on every rank)."""

    history: list[IterationRecord]
    stop_reason: str
    iterations: int
    ranks: int
    seconds: float


def _stop_hook(comm: Comm, index: int) -> Callable[[SolverState], None]:
    def hook(state: SolverState) -> None:
        if comm.any_rank(STOP.requested):
            raise Preempted(f"SIGTERM in subregion {index + 1} after update {state.iteration}: the subregion "
                            "solve keeps no checkpoint; rerun the same command")  # fmt: skip

    return hook


#: called on the ranks solving a block after each of its updates: (block index, update, this
#: rank's share of the block (patch coordinates), its raw model values (K, h, w))
Observer = Callable[[int, int, Box, NDArray], None]


def solve_block(index: int, block: Box, buffer: int, halo: int, inputs: RunInputs, arrays: PatchArrays,
                model: NDArray, comm: Comm, observer: Observer | None = None) -> BlockOutcome:  # fmt: skip
    """Solve one block (collective over ``comm``; its first ranks take part), writing its pixels of
    ``model`` (K, ny, nx) on every rank."""
    t0 = time.perf_counter()
    patch = Box(0, inputs.shape[0], 0, inputs.shape[1])
    grown = block.grow(buffer, patch)
    ranks, dims = block_ranks(comm.size, grown.shape, halo)
    sub = comm.split(comm.rank < ranks)
    piece: tuple = ("idle",)
    if sub is not None:
        try:
            piece = _solve_on(sub, index, block, grown, dims, buffer, halo, inputs, arrays, model, observer)
        except Preempted as exc:
            piece = ("stopped", str(exc))
    comm.quiet_barrier()  # the ranks without a share of this block wait without spinning
    pieces = comm.allgather(piece)
    stopped = next((p[1] for p in pieces if p[0] == "stopped"), None)
    if stopped is not None:
        raise Preempted(stopped)
    for p in pieces:
        if p[0] == "block":
            model[(slice(None), *p[1].slices())] = p[2]
    history, reason, iterations = pieces[0][3]
    return BlockOutcome(history, reason, iterations, ranks, time.perf_counter() - t0)


def _solve_on(sub: Comm, index: int, block: Box, grown: Box, dims: tuple[int, int], buffer: int, halo: int,
              inputs: RunInputs, arrays: PatchArrays, model: NDArray, observer: Observer | None) -> tuple:  # fmt: skip
    """The block's solve on the ranks of ``sub``: ("block", box, raw model values, (history, stop
    reason, iterations)) of this rank's share of the block."""
    plan = Plan(grown.shape, dims, halo if sub.size > 1 else 0)
    local = plan.tile(sub.rank)  # in the grown box's coordinates
    outer = Box(local.outer.y0 + grown.y0, local.outer.y1 + grown.y0, local.outer.x0 + grown.x0,
                local.outer.x1 + grown.x0)  # fmt: skip
    ys, xs = outer.slices()
    warps = read_box(inputs, outer)
    warps = WarpStack(warps.images, warps.variances, warps.masks, dict(arrays.mask_planes), warps.shifts,
                      warps.airmass, warps.names)  # fmt: skip
    region = Subregion(
        inner=Box(block.y0 - grown.y0, block.y1 - grown.y0, block.x0 - grown.x0, block.x1 - grown.x0),
        inverse_weights=arrays.inverse_weights[:, ys, xs],
        nimage=arrays.nimage[:, ys, xs],
        determined=arrays.determined[ys, xs],
        metric_edge=_edge_mask(outer, inputs.shape, buffer),
        outside_noise=outside_moments(model[1], arrays.background, grown),
        visit_weights=arrays.visit_weights,
        variance_scale=arrays.variance_scale,
        converge_from_static=arrays.converge_from_static,
    )
    reducer, exchanger = sub.decompose(plan)

    def progress(n: int, metric: float, gain: float) -> None:
        log.debug("subregion %d update %d: metric %.6g, gain %.3f", index + 1, n, metric, gain)

    solver = DcrSolver(warps, inputs.config, tile=local, reducer=reducer, exchanger=exchanger, buffer=buffer,
                       progress=progress, static=arrays.static_on(outer, arrays.base_mask), region=region,
                       initial=np.ascontiguousarray(model[:, ys, xs]))  # fmt: skip
    mine = block.intersect(Box(local.inner.y0 + grown.y0, local.inner.y1 + grown.y0, local.inner.x0 + grown.x0,
                                local.inner.x1 + grown.x0))  # fmt: skip
    hooks = [_stop_hook(sub, index)]
    if observer is not None:
        hooks.append(lambda state: observer(index, state.iteration, mine, state.model[(slice(None), *mine.slices(outer))]))
    result = solver.run(hooks=hooks)
    values = result.raw_model[(slice(None), *mine.slices(outer))].copy() if mine.size else None
    info = (result.history, result.stop_reason.value, result.iterations) if sub.rank == 0 else None
    return ("block", mine, values, info) if mine.size else ("idle", None, None, info)


#: the run's stop reason from its blocks': the first of these any block has
_REASON_ORDER = (StopReason.DIVERGED, StopReason.MAX_ITERATIONS, StopReason.CONVERGED, StopReason.ZERO_METRIC)


@dataclass
class SubregionOutcome:
    """The subregion solve's result: the model on this rank's tile as the writer takes it, the
    table of blocks, and the whole-patch metrics before and after (LSST's initial and final
    convergence)."""

    result: DcrResult
    blocks: np.ndarray
    initial_metric: float
    final_metric: float


def solve_in_subregions(inputs: RunInputs, layout: Layout, comm: Comm,
                        observer: Observer | None = None) -> SubregionOutcome:  # fmt: skip
    """The LSST task's block-by-block solve of the patch (see the module docstring); ``observer``
    sees every update of every block (tests, diagnostics)."""
    cfg = inputs.config
    if cfg.num_subfilters < 2:
        raise InputError("the subregion solve needs at least 2 sub-filters")
    reducer, exchanger = comm.decompose(layout.plan)
    # the patch-wide pass: T, the coverage, the visit weights and the initial convergence
    whole = DcrSolver(read_tile(inputs, layout.tile), cfg, tile=layout.tile, reducer=reducer, exchanger=exchanger,
                      buffer=layout.buffer, static=read_static(inputs, layout.tile.outer))  # fmt: skip
    initial_metric = whole.it.metrics[0]
    arrays = patch_arrays(whole, layout.tile, comm)
    del whole
    model = np.empty((cfg.num_subfilters, *inputs.shape), np.float32)
    model[...] = (arrays.static.image.astype(np.float32) / cfg.num_subfilters)[None]
    boxes = subregion_boxes(inputs.shape, cfg.subregionSize)
    if comm.rank == 0:
        log.info("initial convergence of the patch %.6g; %d subregion(s) of %dx%d px (width x height), DCR buffer "
                 "%d px", initial_metric, len(boxes), *cfg.subregionSize, layout.buffer)  # fmt: skip
    rows: list[tuple] = []
    history: list[IterationRecord] = []
    for index, block in enumerate(boxes):
        stop_point(comm, f"before subregion {index + 1}")
        out = solve_block(index, block, layout.buffer, layout.halo, inputs, arrays, model, comm, observer)
        metrics = [h.metric for h in out.history]
        rows.append((index, block.y0, block.y1, block.x0, block.x1, out.ranks, out.iterations, out.stop_reason,
                     metrics[0], metrics[-1], len(history), len(out.history), out.seconds))  # fmt: skip
        history += out.history
        if comm.rank == 0:
            log.info("subregion %d/%d (y %d-%d, x %d-%d, %d rank(s)): %d updates, %s, metric %.6g -> %.6g, %.1f s",
                     index + 1, len(boxes), block.y0, block.y1, block.x0, block.x1, out.ranks, out.iterations,
                     out.stop_reason, metrics[0], metrics[-1], out.seconds)  # fmt: skip
    # LSST's final convergence, over the whole patch; its solver also gives the model as written
    tile = layout.tile
    ys, xs = tile.outer.slices()
    final = DcrSolver(read_tile(inputs, tile), cfg, tile=tile, reducer=reducer, exchanger=exchanger,
                      buffer=layout.buffer, static=arrays.static_on(tile.outer),
                      initial=np.ascontiguousarray(model[:, ys, xs]))  # fmt: skip
    final_metric = final.it.metrics[0]
    present = {row[7] for row in rows}
    final.stop_reason = next((r for r in _REASON_ORDER if r.value in present), StopReason.CONVERGED)
    result = replace(final.result(), history=history, iterations=sum(row[6] for row in rows))
    if comm.rank == 0:
        log.info("final convergence of the patch %.6g", final_metric)
    return SubregionOutcome(result, np.array(rows, dtype=SUBREGION_DTYPE), initial_metric, final_metric)
