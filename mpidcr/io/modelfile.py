"""The HDF5 model file: one file per patch, written collectively or through rank 0.

Schema (axis order ``(subfilter, y, x)``)::

    /model               (K, ny, nx) float32  sub-filter planes (y_k − ȳ)·A + ȳ
    /coadd/image         (ny, nx)    float32  full-band coadd = Σ_k model
    /coadd/variance      (ny, nx)    float32
    /coadd/mask          (ny, nx)    int32    attrs: MP_<NAME> = bit
    /coadd/static        (ny, nx)    float32  the static sky model T (plain weighted coadd)
    /nimage              (K, ny, nx) int32    inputs per sub-filter
    /nimage_total        (ny, nx)    int32
    /visits              table: visit, file, airmass, elevation, parallactic_angle,
                         rotation_angle, weight, psf_fwhm, max_shift, metric,
                         and the per-sub-filter mean shifts (K, 2) in pixels
    /convergence         table: iteration, metric, gain, seconds
    attrs                effective_wavelength, bandwidth, subfilter_edges, config (JSON),
                         wcs_header, software_version, num_ranks, tile_grid, halo,
                         stop_reason, iterations, pixel_scale, complete (written last)

Image datasets are chunked by tile, so a rank's window is a few chunks.  The
file is written as ``<name>.tmp`` and renamed after a final barrier; readers
refuse files whose ``complete`` attribute is missing.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np
from numpy.typing import NDArray

from ..errors import InputError
from ..tiling import Box

log = logging.getLogger(__name__)

IMAGE_DATASETS: dict[str, tuple[np.dtype, bool]] = {
    # name: (dtype, has a leading sub-filter axis)
    "model": (np.dtype(np.float32), True),
    "coadd/image": (np.dtype(np.float32), False),
    "coadd/variance": (np.dtype(np.float32), False),
    "coadd/mask": (np.dtype(np.int32), False),
    "coadd/static": (np.dtype(np.float32), False),
    "nimage": (np.dtype(np.int32), True),
    "nimage_total": (np.dtype(np.int32), False),
}
GATHER_CHUNK_BYTES = 32 * 2**20  # bounded messages on the rank-0 path


@dataclass
class ModelTile:
    """One rank's share of the output: its inner box and the arrays on it."""

    box: Box
    arrays: dict[str, NDArray]  # keys of IMAGE_DATASETS


@dataclass
class ModelMeta:
    """Everything in the file that is not a per-pixel image."""

    shape: tuple[int, int]
    num_subfilters: int
    chunk: tuple[int, int]
    visits: np.ndarray  # structured array
    convergence: np.ndarray  # structured array
    attrs: dict[str, Any] = field(default_factory=dict)
    mask_planes: dict[str, int] = field(default_factory=dict)


def h5py_has_mpi() -> bool:
    return bool(h5py.get_config().mpi)


def _create_layout(f: h5py.File, meta: ModelMeta) -> None:
    ny, nx = meta.shape
    K = meta.num_subfilters
    cy, cx = min(meta.chunk[0], ny), min(meta.chunk[1], nx)
    for name, (dtype, lead) in IMAGE_DATASETS.items():
        shape = (K, ny, nx) if lead else (ny, nx)
        chunks = (1, cy, cx) if lead else (cy, cx)
        f.create_dataset(name, shape=shape, dtype=dtype, chunks=chunks, fillvalue=0)
    f.create_dataset("visits", shape=meta.visits.shape, dtype=meta.visits.dtype)
    f.create_dataset("convergence", shape=meta.convergence.shape, dtype=meta.convergence.dtype)
    for name, bit in meta.mask_planes.items():
        f["coadd/mask"].attrs[f"MP_{name}"] = bit
    for key, value in meta.attrs.items():
        f.attrs[key] = value


def _write_tile(f: h5py.File, tile: ModelTile) -> None:
    ys, xs = tile.box.slices()
    for name, (_dtype, lead) in IMAGE_DATASETS.items():
        data = tile.arrays[name]
        if lead:
            f[name][:, ys, xs] = data
        else:
            f[name][ys, xs] = data


def write_model(path: str, tile: ModelTile, meta: ModelMeta, comm: Any, mode: str = "auto") -> str:
    """Write the model file from every rank's ``tile``; returns the mode used (serial, mpio, gather).

    All ranks must call this.  ``mode``: auto (mpio when h5py has MPI and there
    are several ranks), mpio, or gather (tiles travel to rank 0 in chunks of at
    most 32 MiB; same file contents).
    """
    tmp = f"{path}.tmp"
    size, rank = comm.size, comm.rank
    if size == 1:
        used = "serial"
    elif mode == "auto":
        used = "mpio" if h5py_has_mpi() else "gather"
        if used == "gather" and rank == 0:
            log.warning("h5py has no MPI support: output is gathered through rank 0")
    else:
        used = mode
    if used == "mpio" and not h5py_has_mpi():
        raise InputError("h5py was built without MPI; use --output-mode gather (or auto)")
    if used == "mpio":
        with h5py.File(tmp, "w", driver="mpio", comm=comm.mpi) as f:
            _create_layout(f, meta)
            ys, xs = tile.box.slices()
            for name, (_dtype, lead) in IMAGE_DATASETS.items():
                dset = f[name]
                with dset.collective:
                    if lead:
                        dset[:, ys, xs] = tile.arrays[name]
                    else:
                        dset[ys, xs] = tile.arrays[name]
            if rank == 0:
                f["visits"][...] = meta.visits
                f["convergence"][...] = meta.convergence
            comm.barrier()
            f.attrs["complete"] = True
    else:
        if rank == 0:
            with h5py.File(tmp, "w") as f:
                _create_layout(f, meta)
                _write_tile(f, tile)
                for source in range(1, size):
                    for box, arrays in comm.recv_tile_chunks(source):
                        _write_tile(f, ModelTile(box, arrays))
                f["visits"][...] = meta.visits
                f["convergence"][...] = meta.convergence
                f.attrs["complete"] = True
        else:
            comm.send_tile_chunks(tile.box, tile.arrays, dest=0, max_bytes=GATHER_CHUNK_BYTES)
    comm.barrier()
    if rank == 0:
        os.replace(tmp, path)
    comm.barrier()
    return used


@dataclass
class ModelFile:
    """A model file read back (whole arrays; for export, templates and inspection)."""

    path: str
    model: NDArray
    coadd: NDArray
    variance: NDArray
    mask: NDArray
    static: NDArray
    nimage: NDArray
    nimage_total: NDArray
    visits: np.ndarray
    convergence: np.ndarray
    attrs: dict[str, Any]
    mask_planes: dict[str, int]


def read_model(path: str) -> ModelFile:
    """Read a complete model file; InputError if missing, unreadable or incomplete."""
    if not os.path.exists(path):
        raise InputError(f"{path}: model file not found")
    try:
        with h5py.File(path, "r") as f:
            if not f.attrs.get("complete", False):
                raise InputError(f"{path}: incomplete model file (attribute 'complete' missing)")
            mask_ds = f["coadd/mask"]
            planes = {k[3:]: int(v) for k, v in mask_ds.attrs.items() if k.startswith("MP_")}
            return ModelFile(
                path=path,
                model=f["model"][...],
                coadd=f["coadd/image"][...],
                variance=f["coadd/variance"][...],
                mask=mask_ds[...],
                static=f["coadd/static"][...],
                nimage=f["nimage"][...],
                nimage_total=f["nimage_total"][...],
                visits=f["visits"][...],
                convergence=f["convergence"][...],
                attrs=dict(f.attrs),
                mask_planes=planes,
            )
    except InputError:
        raise
    except (OSError, KeyError) as exc:
        raise InputError(f"{path}: not a readable mpidcr model file ({str(exc).splitlines()[0]})") from None
