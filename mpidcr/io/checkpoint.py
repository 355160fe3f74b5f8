"""Checkpoints of a running iteration, and reading them back to resume.

A checkpoint holds the raw model planes (in the solver's precision, float32, so a resumed run
continues bit for bit), the iteration number, the metric and gain histories with the
per-iteration records, and two digests that a resume must match: of the
configuration and of the input file list (paths, sizes, modification
times).  It is written collectively like the model file, under a temporary
name renamed when complete.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import h5py
import numpy as np

from ..errors import InputError
from ..solver import IterationRecord, SolverState
from ..tiling import Box
from .modelfile import DatasetSpec, write_collective

FORMAT = "mpidcr-checkpoint-1"


def inputs_digest(paths: list[str]) -> str:
    """SHA-256 over the input files' paths, sizes and modification times."""
    h = hashlib.sha256()
    for p in paths:
        st = os.stat(p)
        h.update(f"{os.path.abspath(p)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def write_checkpoint(
    path: str,
    state: SolverState,
    inner: tuple[slice, slice],
    box: Box,
    shape: tuple[int, int],
    config_digest: str,
    input_digest: str,
    comm: Any,
    mode: str = "auto",
) -> str:
    """Write ``state`` (this rank's ``inner`` part of the model, at ``box``) to ``path``; all ranks call."""
    K = state.model.shape[0]
    ny, nx = shape
    layout = {"model_raw": DatasetSpec((K, ny, nx), state.model.dtype, (1, min(256, ny), min(256, nx)))}
    arrays = {"model_raw": np.ascontiguousarray(state.model[(..., *inner)])}
    V = len(state.history[0].visit_metrics)
    records = np.array(
        [(r.iteration, r.metric, r.gain, r.seconds) for r in state.history],
        dtype=[("iteration", "i4"), ("metric", "f8"), ("gain", "f8"), ("seconds", "f8")],
    )
    visit_metrics = np.array([np.asarray(r.visit_metrics, dtype=np.float64) for r in state.history]).reshape(-1, V)
    tables = {
        "metrics": np.asarray(state.metrics, dtype=np.float64),
        "gains": np.asarray(state.gains, dtype=np.float64),
        "history": records,
        "history_visit_metrics": visit_metrics,
    }
    attrs = {
        "format": FORMAT,
        "iteration": state.iteration,
        "config_digest": config_digest,
        "inputs_digest": input_digest,
    }
    return write_collective(path, layout, box, arrays, tables, attrs, comm, mode)


def read_checkpoint(path: str, outer: Box, config_digest: str, input_digest: str) -> SolverState:
    """This rank's window of a checkpoint as a SolverState; InputError if it does not match the run."""
    if not os.path.exists(path):
        raise InputError(f"{path}: checkpoint not found")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"{path}: not a readable checkpoint ({str(exc).splitlines()[0]})") from None
    with f:
        if f.attrs.get("format") != FORMAT or not f.attrs.get("complete", False):
            raise InputError(f"{path}: not a complete mpidcr checkpoint")
        if f.attrs["config_digest"] != config_digest:
            raise InputError(f"{path}: checkpoint was made with a different configuration; resume with the same one")
        if f.attrs["inputs_digest"] != input_digest:
            raise InputError(f"{path}: checkpoint was made from different input files; resume with the same warps")
        ys, xs = outer.slices()
        model = f["model_raw"][:, ys, xs]
        hist = f["history"][...]
        vm = f["history_visit_metrics"][...]
        history = [
            IterationRecord(int(r["iteration"]), float(r["metric"]), float(r["gain"]), float(r["seconds"]), vm[i])
            for i, r in enumerate(hist)
        ]
        return SolverState(
            int(f.attrs["iteration"]),
            model,
            [float(m) for m in f["metrics"][...]],
            [float(g) for g in f["gains"][...]],
            history,
        )
