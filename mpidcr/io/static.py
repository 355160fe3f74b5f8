"""The static sky model T given as an input (``--static-model``), as the LSST task takes its deepCoadd.

Two kinds of file are understood:

- **fits**: a coadd in the deepCoadd layout, extensions ``IMAGE`` (with the WCS), ``MASK``
  (plane names from ``MP_<NAME>`` keywords) and ``VARIANCE``;
- **hdf5**: an earlier mpidcr model file, whose static model ``/coadd/static``, variance
  ``/coadd/variance`` and mask ``/coadd/mask`` are used.

T must lie on the warps' grid (same shape and WCS).  Like the warps, it is only ever read as
windows, axis order ``(y, x)``; its mask planes join the run's (:func:`static_mask_planes`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..coadd import StaticModel
from ..errors import InputError
from ..masks import add_plane
from ..tiling import Box
from .paths import regular_file_problem
from .warps import WarpInfo, open_checked, read_window, scan_lsst_layout
from .wcs import same_wcs, wcs_problem

#: the datasets of an mpidcr model file that make T
HDF5_DATASETS = {"image": "coadd/static", "variance": "coadd/variance", "mask": "coadd/mask"}


@dataclass
class StaticInfo:
    """What is known of a static-model file before its pixels are read (picklable)."""

    path: str
    kind: str  # "fits" or "hdf5"
    shape: tuple[int, int]
    mask_planes: dict[str, int]
    wcs_header: str


def is_hdf5(path: str) -> bool:
    """Whether ``path`` starts with the HDF5 signature (a model file)."""
    with open(path, "rb") as f:
        return f.read(8) == b"\x89HDF\r\n\x1a\n"


def scan_static(path: str) -> StaticInfo:
    """Read the structure of a static-model file; InputError naming the file and what is wrong."""
    problem = regular_file_problem(path)
    if problem:
        raise InputError(f"{path}: {problem} (--static-model)")
    if is_hdf5(path):
        return _scan_hdf5(path)
    hdul, problem = open_checked(path)  # checked and scanned in one opening
    if hdul is None:
        raise InputError(f"{path}: {problem} (--static-model)")
    try:
        info, _ = scan_lsst_layout(path, hdul)
    except InputError as exc:
        raise InputError(f"{exc} (--static-model: a deepCoadd-layout FITS file or an mpidcr model file)") from None
    return StaticInfo(path, "fits", info.shape, info.mask_planes, info.wcs_header)


def _scan_hdf5(path: str) -> StaticInfo:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if not f.attrs.get("complete", False):
                raise InputError(f"{path}: incomplete model file (attribute 'complete' missing) (--static-model)")
            missing = [name for name in HDF5_DATASETS.values() if name not in f]
            if missing:
                raise InputError(f"{path}: model file has no {', '.join(missing)} (--static-model)")
            shapes = {f[name].shape for name in HDF5_DATASETS.values()}
            if len(shapes) != 1:
                raise InputError(f"{path}: {', '.join(HDF5_DATASETS.values())} differ in shape (--static-model)")
            shape = shapes.pop()
            planes = {k[3:]: int(v) for k, v in f["coadd/mask"].attrs.items() if k.startswith("MP_")}
            wcs = f.attrs.get("wcs_header", "")
    except InputError:
        raise
    except (OSError, KeyError) as exc:
        raise InputError(f"{path}: not a readable model file ({str(exc).splitlines()[0]}) (--static-model)") from None
    return StaticInfo(path, "hdf5", (int(shape[0]), int(shape[1])), planes, str(wcs))


def check_static_grid(info: StaticInfo, warp: WarpInfo) -> None:
    """T must lie on the warps' grid: the same shape and WCS."""
    if info.shape != warp.shape:
        raise InputError(
            f"{info.path}: static model is {info.shape[0]}x{info.shape[1]}, the warps ({warp.path}) "
            f"{warp.shape[0]}x{warp.shape[1]}; it must be on the patch grid"
        )
    problem = wcs_problem(info.wcs_header) if info.wcs_header else None
    if problem:
        raise InputError(f"{info.path}: static model's WCS cannot be read ({problem}) (--static-model)")
    if info.wcs_header and not same_wcs(info.wcs_header, warp.wcs_header):
        raise InputError(f"{info.path}: static model's WCS differs from {warp.path}'s; it must be on the patch grid")


def static_mask_planes(info: StaticInfo, planes: dict[str, int]) -> dict[str, int]:
    """The run's mask planes with T's added (the warps' bits win; T's new planes get free bits)."""
    out = dict(planes)
    for name, bit in sorted(info.mask_planes.items(), key=lambda kv: kv[1]):
        add_plane(out, name, bit)
    return out


def _renumbered(mask: np.ndarray, own: dict[str, int], planes: dict[str, int]) -> np.ndarray:
    out = np.zeros(mask.shape, np.int32)
    for name, bit in own.items():
        out |= np.where((mask >> bit) & 1, np.int32(1 << planes[name]), np.int32(0))
    return out


def read_static_window(info: StaticInfo, box: Box, planes: dict[str, int]) -> StaticModel:
    """T on ``box``: image and variance (float64), mask (int32 in the run's ``planes`` bits).

    Non-finite pixels of T are refused: the LSST task would spread them through every plane.
    """
    if info.kind == "fits":
        warp = WarpInfo(info.path, "lsst", info.shape, info.mask_planes, info.wcs_header, {})
        image, variance, mask = read_window(warp, box, planes)
    else:
        image, variance, mask = _read_hdf5(info, box, planes)
    bad = ~(np.isfinite(image) & np.isfinite(variance))
    if bad.any():
        y, x = (int(v) for v in np.argwhere(bad)[0])
        raise InputError(
            f"{info.path}: static model has {int(bad.sum())} non-finite image or variance pixel(s) in rows "
            f"{box.y0}-{box.y1}, first at (y, x) = ({box.y0 + y}, {box.x0 + x}); fill them before using it as T"
        )
    count = np.zeros(box.shape, np.int32)
    return StaticModel(image.astype(np.float64), variance.astype(np.float64), mask.astype(np.int32), count)


def _read_hdf5(info: StaticInfo, box: Box, planes: dict[str, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import h5py

    ys, xs = box.slices()
    try:
        with h5py.File(info.path, "r") as f:
            image = f[HDF5_DATASETS["image"]][ys, xs]
            variance = f[HDF5_DATASETS["variance"]][ys, xs]
            mask = f[HDF5_DATASETS["mask"]][ys, xs]
    except (OSError, KeyError) as exc:
        raise InputError(f"{info.path}: cannot read the static model ({str(exc).splitlines()[0]})") from None
    return image, variance, _renumbered(mask, info.mask_planes, planes)


def static_files(info: StaticInfo | None) -> list[str]:
    """The files T is read from (for the inputs digest and the output checks)."""
    return [os.fspath(info.path)] if info is not None else []
