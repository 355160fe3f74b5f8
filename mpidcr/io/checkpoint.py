"""Checkpoints of a running iteration, and reading them back to resume.

A checkpoint holds the raw model planes (in the solver's precision, float32, so a resumed run
continues bit for bit), the iteration number, the metric and gain histories with the
per-iteration records, and two digests that a resume must match: of the configuration and of
the *contents* of the input files (so a run directory moved elsewhere still resumes, and a warp
whose pixels changed does not).  A SHA-256 checksum of everything it holds is stored in it and
verified before a resume.  It is written like the model file: under an exclusive temporary
name, renamed when complete.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from typing import TYPE_CHECKING

import h5py
import numpy as np

from ..errors import InputError
from ..solver import IterationRecord, SolverState, history_table
from ..tiling import Box
from .modelfile import DatasetSpec, chunk_shape, write_collective
from .paths import require_regular_file

if TYPE_CHECKING:
    from ..parallel.comm import Comm

log = logging.getLogger(__name__)

FORMAT = "mpidcr-checkpoint-2"
_READ_BLOCK = 8 * 2**20
_DIGESTED_ATTRS = ("format", "iteration", "config_digest", "inputs_digest")


def file_digest(path: str) -> str:
    """SHA-256 of a file's contents, read in blocks of 8 MiB."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_READ_BLOCK):
            h.update(block)
    return h.hexdigest()


def inputs_digest(paths: list[str], comm: Comm) -> str:
    """SHA-256 over the contents of ``paths`` in order (not their names or times).

    The files are shared out over the ranks (file i is hashed by rank i mod size), so each byte
    is read once; every rank returns the same digest.  The cost is logged on rank 0.
    """
    t0 = time.perf_counter()
    mine = {i: file_digest(p) for i, p in enumerate(paths) if i % comm.size == comm.rank}
    parts = comm.gather(mine, root=0)
    digest = None
    if comm.rank == 0:
        merged: dict[int, str] = {}
        for part in parts or [mine]:
            merged.update(part)
        h = hashlib.sha256()
        for i in range(len(paths)):
            h.update(merged[i].encode())
        digest = h.hexdigest()
        nbytes = sum(os.path.getsize(p) for p in paths)
        log.info(
            "input digest: %d files, %.1f MiB hashed in %.2f s on %d rank(s)",
            len(paths),
            nbytes / 2**20,
            time.perf_counter() - t0,
            comm.size,
        )
    return comm.bcast(digest, root=0)


def checkpoint_checksum(f: h5py.File) -> str:
    """SHA-256 of a checkpoint's datasets and identifying attributes (model read plane by plane)."""
    h = hashlib.sha256()
    for key in _DIGESTED_ATTRS:
        h.update(f"{key}={f.attrs[key]}\n".encode())
    model = f["model_raw"]
    for k in range(model.shape[0]):
        h.update(np.ascontiguousarray(model[k]).tobytes())
    for name in ("metrics", "gains", "history", "history_visit_metrics"):
        h.update(np.ascontiguousarray(f[name][...]).tobytes())
    return h.hexdigest()


def write_checkpoint(
    path: str,
    state: SolverState,
    inner: tuple[slice, slice],
    box: Box,
    shape: tuple[int, int],
    config_digest: str,
    input_digest: str,
    comm: Comm,
    mode: str = "auto",
) -> str:
    """Write ``state`` (this rank's ``inner`` part of the model, at ``box``) to ``path``; all ranks call."""
    K = state.model.shape[0]
    ny, nx = shape
    layout = {"model_raw": DatasetSpec((K, ny, nx), state.model.dtype, (1, *chunk_shape(shape)))}
    arrays = {"model_raw": np.ascontiguousarray(state.model[(..., *inner)])}
    V = len(state.history[0].visit_metrics)
    records = history_table(state.history)
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

    def add_checksum(f: h5py.File) -> None:
        f.attrs["checksum"] = checkpoint_checksum(f)

    return write_collective(path, layout, box, arrays, tables, attrs, comm, mode, finish=add_checksum)


def verify_checkpoint(path: str, config_digest: str, input_digest: str) -> int:
    """Check that ``path`` is a complete, intact checkpoint of this run; returns its iteration.

    InputError naming the file and the problem otherwise (made on one rank and broadcast by the
    caller).
    """
    require_regular_file(path, "checkpoint")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"{path}: not a readable checkpoint ({str(exc).splitlines()[0]})") from None
    with f:
        if f.attrs.get("format") != FORMAT or not f.attrs.get("complete", False):
            raise InputError(f"{path}: not a complete mpidcr checkpoint (of this version)")
        try:
            actual = checkpoint_checksum(f)
        except (OSError, KeyError, ValueError) as exc:
            raise InputError(f"{path}: checkpoint is damaged ({str(exc).splitlines()[0]})") from None
        if actual != f.attrs.get("checksum"):
            raise InputError(f"{path}: checkpoint is damaged (its checksum does not match its contents)")
        if f.attrs["config_digest"] != config_digest:
            raise InputError(f"{path}: checkpoint was made with a different configuration; resume with the same one")
        if f.attrs["inputs_digest"] != input_digest:
            raise InputError(
                f"{path}: checkpoint was made from different input files (their contents differ); "
                "resume with the same warps"
            )
        return int(f.attrs["iteration"])


def read_checkpoint(path: str, outer: Box) -> SolverState:
    """This rank's window of a (verified) checkpoint as a SolverState."""
    with h5py.File(path, "r") as f:
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
