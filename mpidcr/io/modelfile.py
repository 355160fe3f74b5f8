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
                         rotation_angle, weight, psf_fwhm, max_shift, metric, variance_scale,
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


@dataclass(frozen=True)
class DatasetSpec:
    """A per-pixel dataset: global shape (…, ny, nx), dtype and chunk shape."""

    shape: tuple[int, ...]
    dtype: np.dtype
    chunks: tuple[int, ...]


def model_layout(meta: ModelMeta) -> dict[str, DatasetSpec]:
    ny, nx = meta.shape
    K = meta.num_subfilters
    cy, cx = min(meta.chunk[0], ny), min(meta.chunk[1], nx)
    out = {}
    for name, (dtype, lead) in IMAGE_DATASETS.items():
        out[name] = DatasetSpec((K, ny, nx) if lead else (ny, nx), dtype, (1, cy, cx) if lead else (cy, cx))
    return out


def write_collective(
    path: str,
    layout: dict[str, DatasetSpec],
    box: Box,
    arrays: dict[str, NDArray],
    tables: dict[str, np.ndarray],
    attrs: dict[str, Any],
    comm: Any,
    mode: str = "auto",
    dataset_attrs: dict[str, dict[str, Any]] | None = None,
) -> str:
    """Write per-pixel ``layout`` datasets (each rank its ``box`` of ``arrays``), small ``tables`` and ``attrs``.

    All ranks call this.  ``mode``: auto (mpio when h5py has MPI and there are
    several ranks), mpio, or gather (tiles travel to rank 0 in chunks of at most
    32 MiB; same file contents).  Written as ``path.tmp``, ``complete = True``
    last, renamed by rank 0 after a final barrier.  Returns the mode used.
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

    def create(f: h5py.File) -> None:
        for name, spec in layout.items():
            # every pixel is written: no fill values (parallel HDF5 allocates early and would write them)
            f.create_dataset(name, shape=spec.shape, dtype=spec.dtype, chunks=spec.chunks, fill_time="never")
        for name, table in tables.items():
            f.create_dataset(name, shape=table.shape, dtype=table.dtype)
        for name, extra in (dataset_attrs or {}).items():
            for key, value in extra.items():
                f[name].attrs[key] = value
        for key, value in attrs.items():
            f.attrs[key] = value

    def write_box(f: h5py.File, b: Box, data: dict[str, NDArray], collective: bool = False) -> None:
        ys, xs = b.slices()
        for name in layout:
            dset = f[name]
            values = data[name]
            # a (K, ny, nx) dataset is written one plane at a time: HDF5's MPI-IO path is about
            # four times slower for one 3-D hyperslab than for its K 2-D slices (measured, 2 ranks)
            planes = (
                [((k, ys, xs), values[k]) for k in range(dset.shape[0])] if dset.ndim == 3 else [((ys, xs), values)]
            )
            for where, plane in planes:
                if collective:
                    with dset.collective:
                        dset[where] = plane
                else:
                    dset[where] = plane

    if used == "mpio":
        with h5py.File(tmp, "w", driver="mpio", comm=comm.mpi) as f:
            create(f)
            write_box(f, box, arrays, collective=True)
            if rank == 0:
                for name, table in tables.items():
                    f[name][...] = table
            comm.barrier()
            f.attrs["complete"] = True
    elif rank == 0:
        with h5py.File(tmp, "w") as f:
            create(f)
            write_box(f, box, arrays)
            for source in range(1, size):
                for b, data in comm.recv_tile_chunks(source):
                    write_box(f, b, data)
            for name, table in tables.items():
                f[name][...] = table
            f.attrs["complete"] = True
    else:
        comm.send_tile_chunks(box, arrays, dest=0, max_bytes=GATHER_CHUNK_BYTES)
    comm.barrier()
    if rank == 0:
        os.replace(tmp, path)
    comm.barrier()
    return used


def write_model(path: str, tile: ModelTile, meta: ModelMeta, comm: Any, mode: str = "auto") -> str:
    """Write the model file (schema above) from every rank's ``tile``; returns the mode used."""
    return write_collective(
        path,
        model_layout(meta),
        tile.box,
        tile.arrays,
        {"visits": meta.visits, "convergence": meta.convergence},
        meta.attrs,
        comm,
        mode,
        dataset_attrs={"coadd/mask": {f"MP_{k}": v for k, v in meta.mask_planes.items()}},
    )


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
