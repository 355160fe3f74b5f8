"""Run with or without mpiexec: mpidcr's LSST-profile solve with every update recorded.

argv: MANIFEST STATIC_MODEL OUT.npz [NAME=VALUE ...] (configuration overrides).  Rank 0 writes,
for every block b and every update n, ``b{b}_u{n}`` = the block's raw model (K, h, w) assembled
from all ranks, ``b{b}_box`` = (y0, y1, x0, x1), ``b{b}_metrics`` = (metric, gain) of every update (0: the
initial model), ``b{b}_ranks`` = the ranks that solved it, and ``blocks`` = the number of blocks.  With
lsstCompat.subregions false, the whole-patch solver runs instead and is recorded as block 0.
"""

import sys

import numpy as np

from mpidcr.driver import RunOptions, decompose, inputs_from_manifest, read_static, read_tile
from mpidcr.io.configfile import load_config
from mpidcr.io.manifest import read_manifest
from mpidcr.parallel.comm import get_comm
from mpidcr.solver import DcrSolver
from mpidcr.subregions import solve_in_subregions
from mpidcr.tiling import Box
from mpidcr.warmup import warm_up

manifest_path, static_path, out_path, *sets = sys.argv[1:]
comm = get_comm()
manifest = read_manifest(manifest_path)
base = dict(manifest.config)
base.update(manifest.band)
cfg = load_config(None, ["profile=lsst", *sets], base=base)
inputs = inputs_from_manifest(manifest, cfg, static_model=static_path)
layout = decompose(inputs, RunOptions(output=out_path + ".unused.h5"), comm)
warm_up(cfg, tiled=comm.size > 1)
records: dict[tuple[int, int], list] = {}
boxes: dict[int, Box] = {}
metrics: dict[int, list] = {}
ranks: dict[int, int] = {}


def observe(block, update, box, values):
    records.setdefault((block, update), []).append((box, np.array(values)))


if cfg.lsst("subregions"):
    outcome = solve_in_subregions(inputs, layout, comm, observer=observe)
    history = outcome.result.history
    for row in outcome.blocks:
        boxes[int(row["block"])] = Box(int(row["y0"]), int(row["y1"]), int(row["x0"]), int(row["x1"]))
        rows = history[int(row["first_row"]) : int(row["first_row"]) + int(row["rows"])]
        metrics[int(row["block"])] = [(h.metric, h.gain) for h in rows]
        ranks[int(row["block"])] = int(row["ranks"])
else:
    tile = layout.tile
    reducer, exchanger = comm.decompose(layout.plan)
    solver = DcrSolver(read_tile(inputs, tile), cfg, tile=tile, reducer=reducer, exchanger=exchanger,
                       buffer=layout.buffer, static=read_static(inputs, tile.outer))
    inner = tile.inner_local
    result = solver.run(hooks=[lambda state: observe(0, state.iteration, tile.inner,
                                                     state.model[(slice(None), *inner)])])
    metrics[0] = [(h.metric, h.gain) for h in result.history]
    ranks[0] = comm.size
    boxes[0] = Box(0, inputs.shape[0], 0, inputs.shape[1])

everything = comm.gather(records)
if comm.rank == 0:
    merged: dict[tuple[int, int], list] = {}
    for part in everything:
        for key, pieces in part.items():
            merged.setdefault(key, []).extend(pieces)
    out = {"blocks": np.array(len(boxes))}
    for (block, update), pieces in merged.items():
        box = boxes[block]
        planes = np.full((cfg.num_subfilters, *box.shape), np.nan, np.float64)
        for piece_box, values in pieces:
            planes[(slice(None), *piece_box.slices(box))] = values
        out[f"b{block}_u{update}"] = planes
    for block, box in boxes.items():
        out[f"b{block}_box"] = np.array([box.y0, box.y1, box.x0, box.x1])
        out[f"b{block}_metrics"] = np.array(metrics[block])  # (metric, gain) of update 0, 1, ...
        out[f"b{block}_ranks"] = np.array(ranks[block])
    np.savez(out_path, **out)
