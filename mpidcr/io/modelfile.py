"""The HDF5 model file: one file per patch, written collectively or through rank 0.

Schema (axis order ``(subfilter, y, x)``)::

    /model               (K, ny, nx) float32  sub-filter planes (y_k − ȳ)·A + ȳ
    /coadd/image         (ny, nx)    float32  full-band coadd = Σ_k model
    /coadd/variance      (ny, nx)    float32
    /coadd/mask          (ny, nx)    int32    attrs: MP_<NAME> = bit
    /coadd/static        (ny, nx)    float32  the static sky model T (plain weighted coadd)
    /nimage              (K, ny, nx) int32    inputs per sub-filter (with doNImage)
    /nimage_total        (ny, nx)    int32    (with doNImage)
    /visits              table: visit, file, airmass, elevation, parallactic_angle,
                         rotation_angle, weight, psf_fwhm, psf_sigma, psf_wing, max_shift, metric, variance_scale,
                         and the per-sub-filter mean shifts (K, 2) in pixels
    /convergence         table: iteration, metric, gain, seconds
    /psf                 (n, n)      float64  the PSF of the planes, if known; attrs fwhm (arcsec),
                         kind: reference (the PSF-aware model's) or coadd (Σ w_v PSF_v / Σ w_v)
    /psf_static          (n, n)      float64  the PSF of /coadd/static (Σ w_v PSF_v / Σ w_v), if known
    /artifacts/clipped   (V, ⌈ny·nx/8⌉) uint8 each visit's CLIPPED pixels (transients, streak cores), bit-packed:
                         np.unpackbits(row, count=ny*nx)
    /artifacts/streak    (V, ⌈ny·nx/8⌉) uint8 its streaks grown by growStreakFp (streakMaskName; out of the static
                         model only); both absent without doRejectArtifacts
    attrs                effective_wavelength, bandwidth, subfilter_edges, config (JSON),
                         wcs_header, software_version, num_ranks, tile_grid, halo,
                         stop_reason, iterations, pixel_scale, psf_aware, psf_wing_sigmas (pixels, the
                         PSF-aware model's wing Gaussians, if any), complete (written last)

Image datasets are chunked by tile, so a rank's window is a few chunks.  The
file is written under a new temporary name beside it (``.<name>.<random>.tmp``) and renamed
when complete; readers refuse files whose ``complete`` attribute is missing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np
from numpy.typing import NDArray

from ..errors import InputError
from ..tiling import Box
from .outputs import StickyFile, exclusive_temp, remove_quietly

if TYPE_CHECKING:
    from ..parallel.comm import Comm

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
#: written only with doNImage
NIMAGE_DATASETS = ("nimage", "nimage_total")
GATHER_CHUNK_BYTES = 32 * 2**20  # bounded messages on the rank-0 path
#: Largest HDF5 chunk side of the per-pixel datasets (a tile is a few chunks; 256² float32 = 256 KiB)
CHUNK_SIDE = 256


def chunk_shape(shape: tuple[int, int], dims: tuple[int, int] = (1, 1)) -> tuple[int, int]:
    """HDF5 chunk (y, x) of a patch of ``shape`` split into a ``dims`` tile grid: a tile's size,
    at most :data:`CHUNK_SIDE`."""
    return (min(CHUNK_SIDE, max(1, -(-shape[0] // dims[0]))), min(CHUNK_SIDE, max(1, -(-shape[1] // dims[1]))))


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
    tables: dict[str, np.ndarray] = field(default_factory=dict)  # more tables (e.g. /subregions, /psf)
    with_nimage: bool = True  # doNImage: write /nimage and /nimage_total
    table_attrs: dict[str, dict[str, Any]] = field(default_factory=dict)  # attributes of those tables


def h5py_has_mpi() -> bool:
    return bool(h5py.get_config().mpi)


@dataclass(frozen=True)
class DatasetSpec:
    """A per-pixel dataset: global shape (…, ny, nx), dtype and chunk shape."""

    shape: tuple[int, ...]
    dtype: np.dtype
    chunks: tuple[int, ...]


def model_file_bytes(shape: tuple[int, int], num_subfilters: int, num_visits: int) -> int:
    """Bytes of a model file of a patch of ``shape`` (an upper estimate: data, tables, metadata)."""
    per_pixel = sum(dt.itemsize * (num_subfilters if lead else 1) for dt, lead in IMAGE_DATASETS.values())
    data = shape[0] * shape[1] * per_pixel
    rejected = num_visits * (shape[0] * shape[1] // 4 + 2)  # /artifacts/clipped and /streak, bit-packed
    return int(data * 1.02) + rejected + num_visits * (64 * num_subfilters + 1024) + 2**20


def model_layout(meta: ModelMeta) -> dict[str, DatasetSpec]:
    ny, nx = meta.shape
    K = meta.num_subfilters
    cy, cx = min(meta.chunk[0], ny), min(meta.chunk[1], nx)
    out = {}
    for name, (dtype, lead) in IMAGE_DATASETS.items():
        if name in NIMAGE_DATASETS and not meta.with_nimage:
            continue
        out[name] = DatasetSpec((K, ny, nx) if lead else (ny, nx), dtype, (1, cy, cx) if lead else (cy, cx))
    return out


@dataclass
class _Contents:
    """What :func:`write_collective` writes: per-pixel ``layout`` (this rank's ``box`` of ``arrays``),
    and the small things rank 0 adds (``tables``, ``dataset_attrs``, ``attrs``, ``finish``)."""

    layout: dict[str, DatasetSpec]
    box: Box
    arrays: dict[str, NDArray]
    tables: dict[str, np.ndarray]
    attrs: dict[str, Any]
    dataset_attrs: dict[str, dict[str, Any]]
    finish: Callable[[h5py.File], None] | None

    def create(self, f: h5py.File) -> None:
        for name, spec in self.layout.items():
            # every pixel is written: no fill values (parallel HDF5 allocates early and would write them)
            f.create_dataset(name, shape=spec.shape, dtype=spec.dtype, chunks=spec.chunks, fill_time="never")

    def describe(self, f: h5py.File) -> None:
        # tables, attributes and ``finish`` by rank 0 alone: parallel HDF5 cannot write
        # variable-length strings, and the metadata then needs no collective calls
        for name, table in self.tables.items():
            f.create_dataset(name, data=table)
        for name, extra in self.dataset_attrs.items():
            for key, value in extra.items():
                f[name].attrs[key] = value
        for key, value in self.attrs.items():
            f.attrs[key] = value
        if self.finish is not None:
            self.finish(f)


def _output_mode(mode: str, comm: Comm) -> str:
    if comm.size == 1:
        return "serial"
    used = ("mpio" if h5py_has_mpi() else "gather") if mode == "auto" else mode
    if used == "gather" and mode == "auto" and comm.rank == 0:
        log.warning("h5py has no MPI support: output is gathered through rank 0")
    if used == "mpio" and not h5py_has_mpi():
        raise InputError("h5py was built without MPI; use --output-mode gather (or auto)")
    return used


def write_collective(
    path: str,
    layout: dict[str, DatasetSpec],
    box: Box,
    arrays: dict[str, NDArray],
    tables: dict[str, np.ndarray],
    attrs: dict[str, Any],
    comm: Comm,
    mode: str = "auto",
    dataset_attrs: dict[str, dict[str, Any]] | None = None,
    finish: Callable[[h5py.File], None] | None = None,
) -> str:
    """Write per-pixel ``layout`` datasets (each rank its ``box`` of ``arrays``), small ``tables`` and ``attrs``.

    All ranks call this.  ``mode``: auto (mpio when h5py has MPI and there are
    several ranks), mpio, or gather (tiles travel to rank 0 in chunks of at most
    32 MiB; same file contents).  The file is written under a new, exclusive temporary name
    beside ``path``; rank 0 then reopens it, writes the tables and attributes, calls
    ``finish(file)`` (e.g. to add a checksum), sets ``complete = True``, flushes it to disk and
    renames it over ``path``.  A write error (a full disk, a quota) removes the temporary file
    and raises one InputError on every rank; an error inside an MPI-IO write is raised on the
    rank that saw it (the CLI then aborts all ranks).
    Returns the mode used.
    """
    used = _output_mode(mode, comm)
    contents = _Contents(layout, box, arrays, tables, attrs, dataset_attrs or {}, finish)
    tmp = _collective(comm, lambda: exclusive_temp(path))
    status: str | None = None
    if used == "mpio":
        _write_mpio(tmp, path, contents, comm)
    elif comm.rank == 0:
        status = _write_rank0(tmp, contents, comm)
    else:
        comm.send_tile_chunks(box, arrays, dest=0, max_bytes=GATHER_CHUNK_BYTES)
    if comm.rank == 0:
        status = status or _finish_file(tmp, path, contents.describe)
        if status is not None:
            remove_quietly(tmp)
    status = comm.bcast(status, root=0)
    if status is not None:
        error = InputError(f"{path}: {status}; nothing was written")
        error.collective = True  # type: ignore[attr-defined]
        raise error
    return used


def _write_mpio(tmp: str, path: str, contents: _Contents, comm: Comm) -> None:
    """Every rank writes its box through parallel HDF5 (MPI-IO)."""
    try:
        with h5py.File(tmp, "w", driver="mpio", comm=comm.mpi) as f:
            contents.create(f)
            _write_box(f, contents.layout, contents.box, contents.arrays, collective=True)
    except Exception as exc:  # the other ranks may wait inside a collective call: abort them
        remove_quietly(tmp)
        raise InputError(f"{path}: writing failed ({_first_line(exc)}); the temporary file was removed") from None
    comm.barrier()


def _write_rank0(tmp: str, contents: _Contents, comm: Comm) -> str | None:
    """Rank 0 writes its box and every other rank's (gathered in bands) through a StickyFile;
    the first write error as text, or None."""
    sticky = StickyFile(tmp)
    try:
        with h5py.File(sticky, "w") as f:
            contents.create(f)
            _write_box(f, contents.layout, contents.box, contents.arrays)
            for source in range(1, comm.size):  # received even after a write error, so no sender blocks
                for b, data in comm.recv_tile_chunks(source):
                    _write_box(f, contents.layout, b, data)
    except BaseException:
        sticky.close()
        remove_quietly(tmp)
        raise
    return _close_sticky(sticky)


def _collective(comm: Comm, fn: Callable[[], Any]) -> Any:
    """``fn()`` on rank 0, its result (or its InputError, raised on every rank) broadcast."""
    result: tuple[bool, Any] = (True, None)
    if comm.rank == 0:
        try:
            result = (True, fn())
        except InputError as exc:
            result = (False, str(exc))
    ok, value = comm.bcast(result, root=0)
    if not ok:
        error = InputError(value)
        error.collective = True  # type: ignore[attr-defined]
        raise error
    return value


def _write_box(f: h5py.File, layout: dict[str, DatasetSpec], b: Box, data: dict[str, NDArray],
               collective: bool = False) -> None:  # fmt: skip
    ys, xs = b.slices()
    for name in layout:
        dset = f[name]
        values = data[name]
        # a (K, ny, nx) dataset is written one plane at a time: HDF5's MPI-IO path is about
        # four times slower for one 3-D hyperslab than for its K 2-D slices (measured, 2 ranks)
        planes = [((k, ys, xs), values[k]) for k in range(dset.shape[0])] if dset.ndim == 3 else [((ys, xs), values)]
        for where, plane in planes:
            if collective:
                with dset.collective:
                    dset[where] = plane
            else:
                dset[where] = plane


def _first_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]


def _close_sticky(sticky: StickyFile) -> str | None:
    """fsync and close a StickyFile; its first OS error as text, or None."""
    sticky.sync()
    sticky.close()
    if sticky.error is None:
        return None
    return f"writing failed ({sticky.error.strerror or sticky.error})"


def _finish_file(tmp: str, path: str, describe: Callable[[h5py.File], None]) -> str | None:
    """Rank 0: reopen ``tmp``, ``describe`` it, mark it complete, flush, rename to ``path``; error text or None."""
    sticky = StickyFile(tmp)
    try:
        with h5py.File(sticky, "r+") as f:
            describe(f)
            f.attrs["complete"] = True
    except Exception as exc:  # HDF5 reading back what was just written: report, do not crash
        sticky.close()
        return f"finishing the file failed ({_first_line(exc)})"
    status = _close_sticky(sticky)
    if status is not None:
        return status
    try:
        os.replace(tmp, path)
    except OSError as exc:
        return f"renaming {tmp} failed ({exc.strerror})"
    try:  # make the rename durable where the file system allows
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return None


def write_model(path: str, tile: ModelTile, meta: ModelMeta, comm: Comm, mode: str = "auto",
                finish: Callable[[h5py.File], None] | None = None) -> str:  # fmt: skip
    """Write the model file (schema above) from every rank's ``tile``; returns the mode used.
    ``finish(file)``: rank 0's last changes before the file is marked complete (io/finish.py)."""
    return write_collective(
        path,
        model_layout(meta),
        tile.box,
        tile.arrays,
        {"visits": meta.visits, "convergence": meta.convergence, **meta.tables},
        meta.attrs,
        comm,
        mode,
        dataset_attrs={"coadd/mask": {f"MP_{k}": v for k, v in meta.mask_planes.items()}, **meta.table_attrs},
        finish=finish,
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
    nimage: NDArray | None  # None: written without doNImage
    nimage_total: NDArray | None
    visits: np.ndarray
    convergence: np.ndarray
    attrs: dict[str, Any]
    mask_planes: dict[str, int]
    psf: NDArray | None = None  # the PSF of the planes (None: written without PSFs)
    psf_attrs: dict[str, Any] = field(default_factory=dict)  # fwhm (arcsec), kind (reference or coadd)
    psf_static: NDArray | None = None  # the PSF of the static coadd /coadd/static


def model_is_complete(path: str) -> bool:
    """Whether ``path`` is a model file marked complete (only its attributes are read)."""
    try:
        with h5py.File(path, "r") as f:
            return bool(f.attrs.get("complete", False)) and "model" in f
    except (OSError, KeyError):
        return False


#: attributes every product of a model needs (the patch grid)
REQUIRED_ATTRS = ("wcs_header",)


def _open_model(path: str) -> h5py.File:
    """A complete model file opened for reading; InputError if missing or incomplete (other
    errors of h5py are turned into one line by the callers)."""
    if not os.path.exists(path):
        raise InputError(f"{path}: model file not found")
    f = h5py.File(path, "r")
    missing = [name for name in ("complete", *REQUIRED_ATTRS) if name not in f.attrs]
    if missing or not f.attrs["complete"]:
        f.close()
        what = f"attribute '{missing[0]}' missing" if missing else "attribute 'complete' is false"
        raise InputError(f"{path}: incomplete model file ({what})")
    return f


def model_grid(path: str) -> tuple[tuple[int, int], str, tuple[int, int]]:
    """The patch grid of a complete model file without reading its pixels: (shape (ny, nx), WCS
    header text, xy0); InputError if missing, unreadable or incomplete."""
    try:
        with _open_model(path) as f:
            ny, nx = (int(n) for n in f["model"].shape[1:])
            x0, y0 = (int(v) for v in f.attrs.get("xy0", (0, 0)))
            return (ny, nx), str(f.attrs["wcs_header"]), (x0, y0)
    except InputError:
        raise
    except (OSError, KeyError, ValueError) as exc:
        raise InputError(f"{path}: not a readable mpidcr model file ({str(exc).splitlines()[0]})") from None


def read_model(path: str) -> ModelFile:
    """Read a complete model file; InputError if missing, unreadable or incomplete."""
    try:
        with _open_model(path) as f:
            mask_ds = f["coadd/mask"]
            planes = {k[3:]: int(v) for k, v in mask_ds.attrs.items() if k.startswith("MP_")}
            return ModelFile(
                path=path,
                model=f["model"][...],
                coadd=f["coadd/image"][...],
                variance=f["coadd/variance"][...],
                mask=mask_ds[...],
                static=f["coadd/static"][...],
                nimage=f["nimage"][...] if "nimage" in f else None,
                nimage_total=f["nimage_total"][...] if "nimage_total" in f else None,
                visits=f["visits"][...],
                convergence=f["convergence"][...],
                attrs=dict(f.attrs),
                mask_planes=planes,
                psf=f["psf"][...] if "psf" in f else None,
                psf_attrs=dict(f["psf"].attrs) if "psf" in f else {},
                psf_static=f["psf_static"][...] if "psf_static" in f else None,
            )
    except InputError:
        raise
    except (OSError, KeyError) as exc:
        raise InputError(f"{path}: not a readable mpidcr model file ({str(exc).splitlines()[0]})") from None
