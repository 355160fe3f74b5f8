"""FITS warps: their structure (HDUs, shape, mask planes, WCS), windowed pixel reads, writing.

Two layouts are understood:

- **lsst**: one file per warp; primary HDU with the visit metadata, then
  ``IMAGE`` (float, with the WCS), ``MASK`` (integer bit mask, plane names from
  ``MP_<NAME> = bit`` keywords) and ``VARIANCE`` extensions;
- **plain**: an image file plus a variance *or* inverse-variance (weight) file
  and an optional mask file, named in the manifest.

Pixels are only ever read as windows (``HDU.section``), so a rank reads its
tile plus halo of every warp and never a whole image.  Axis order ``(y, x)``.  The visit
metadata of the headers is :mod:`mpidcr.io.metadata`'s, the WCS helpers :mod:`mpidcr.io.wcs`'s.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from numpy.typing import NDArray

from ..dcr import Observation, Site
from ..errors import InputError, PhysicsError
from ..masks import add_plane
from ..tiling import Box
from .metadata import KEYWORDS, observation, resolve_pointing, visit_metadata
from .outputs import write_fits
from .paths import regular_file_problem
from .wcs import same_wcs, wcs_problem

log = logging.getLogger(__name__)


@dataclass
class ReadStats:
    """Windows and bytes read from warp files by this process (for tests and logs)."""

    windows: list[tuple[str, Box]] = field(default_factory=list)
    bytes: int = 0

    def reset(self) -> None:
        self.windows.clear()
        self.bytes = 0


READ_STATS = ReadStats()


@dataclass
class WarpInfo:
    """Everything known about one warp before its pixels are read (picklable, broadcast to ranks)."""

    path: str
    layout: str
    shape: tuple[int, int]
    mask_planes: dict[str, int]
    wcs_header: str
    meta: dict[str, Any]
    image_path: str = ""
    variance_path: str = ""
    variance_is_weight: bool = False
    mask_path: str = ""
    hdus: dict[str, int] = field(default_factory=dict)  # lsst layout: IMAGE/MASK/VARIANCE → HDU index
    xy0: tuple[int, int] = (0, 0)  # afw's pixel origin (x0, y0) of the warp's bbox in the patch/tract

    @property
    def visit(self) -> str:
        return str(self.meta.get("visit", Path(self.path).stem))

    def observation(self, site_defaults: Site, notices: set[str] | None = None) -> Observation:
        """Observation of this visit (after :func:`resolve_geometry`); see :func:`metadata.observation`."""
        return observation(self.meta, self.path, site_defaults, notices)


def open_checked(path: str) -> tuple[fits.HDUList | None, str | None]:
    """``path`` opened with every HDU's header read (the caller closes it), or (None, a one-line
    description of why it cannot be read as FITS: not a regular file, unreadable, truncated)."""
    problem = regular_file_problem(path)
    if problem:
        return None, problem
    hdul = None
    try:
        size = os.path.getsize(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # we report the problem ourselves, in one line
            hdul = fits.open(path, memmap=False, lazy_load_hdus=False)
        for i, hdu in enumerate(hdul):
            info = hdu.fileinfo()
            if info is not None and info["datLoc"] + info["datSpan"] > size:
                hdul.close()
                return None, f"truncated (HDU {i} needs {info['datLoc'] + info['datSpan']} bytes, file has {size})"
    except Exception as exc:  # astropy raises many types for broken files
        if hdul is not None:
            hdul.close()
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return None, f"unreadable FITS ({text})"
    return hdul, None


def mask_planes_from_header(header: fits.Header, path: str = "") -> dict[str, int]:
    """``MP_<NAME> = bit`` keywords → {NAME: bit}; InputError naming ``path`` and the keyword if a
    bit is not an integer the mask's pixels can hold (0 ≤ bit < their width)."""
    width = abs(int(header.get("ZBITPIX", header.get("BITPIX", 32)) or 32))
    planes = {}
    for key in header:
        if not key.startswith("MP_"):
            continue
        value = header[key]
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < width:
            where = f"{path}: " if path else ""
            raise InputError(f"{where}MASK header keyword {key} = {value!r} is not a mask plane's bit number "
                             f"(an integer from 0 to {width - 1} for {width}-bit mask pixels)")  # fmt: skip
        planes[key[3:]] = int(value)
    return planes


#: afw's HDUs that hold no pixels of the exposure (its archive of WCS, PSF, PhotoCalib, …)
ARCHIVE_TYPES = ("ARCHIVE_INDEX", "ARCHIVE_DATA")


def _find_hdu(hdul: fits.HDUList, name: str) -> int | None:
    """The index of the HDU whose EXTNAME is ``name``, else whose EXTTYPE is (afw identifies HDUs by
    EXTTYPE; files written before ~2020 carry no EXTNAME); tile-compressed HDUs included."""
    for key in ("EXTNAME", "EXTTYPE"):
        for i, hdu in enumerate(hdul):
            if str(hdu.header.get(key, "")).strip().upper() == name:
                return i
    return None


def pixel_origin(header: fits.Header) -> tuple[int, int]:
    """afw's xy0 (x0, y0): from the ``A`` WCS (CRVAL1A/CRVAL2A, a LINEAR pixel WCS), else
    −LTV1/−LTV2 (IRAF's physical offset), else (0, 0)."""
    if "CRVAL1A" in header and "CRVAL2A" in header:
        return round(float(header["CRVAL1A"])), round(float(header["CRVAL2A"]))
    if "LTV1" in header and "LTV2" in header:
        return round(-float(header["LTV1"])), round(-float(header["LTV2"]))
    return 0, 0


def scan_warp(
    path: str | os.PathLike, overrides: dict[str, Any] | None = None, plain: dict[str, str] | None = None
) -> WarpInfo:
    """Read the headers of one warp and resolve its visit metadata; InputError naming file and field."""
    path = str(path)
    if plain is None:  # one file: checked and scanned in one opening
        hdul, problem = open_checked(path)
        if hdul is None:
            raise InputError(f"{path}: {problem}")
        info, primary = scan_lsst_layout(path, hdul)
    else:  # each file checked and scanned in one opening
        with contextlib.ExitStack() as files:
            opened = {}
            for kind, f in plain.items():
                if not f:
                    continue
                hdul, problem = open_checked(f)
                if hdul is None:
                    raise InputError(f"{f}: {problem}")
                opened[kind] = files.enter_context(hdul)
            info, primary = _scan_plain(plain, opened)
    problem = wcs_problem(info.wcs_header)
    if problem:
        raise InputError(f"{info.path}: its WCS cannot be read ({problem})")
    info.meta = visit_metadata(primary, path, overrides)
    return info


def scan_lsst_layout(path: str, opened: fits.HDUList | None = None) -> tuple[WarpInfo, fits.Header]:
    """An LSST-layout warp: IMAGE, MASK and VARIANCE of one shape; (info, primary header).
    ``opened``: the file already open (closed here)."""
    with opened if opened is not None else fits.open(path, memmap=False) as hdul:
        primary = hdul[0].header
        index = {ext: _find_hdu(hdul, ext) for ext in ("IMAGE", "MASK", "VARIANCE")}
        if index["IMAGE"] is None:
            raise InputError(f"{path}: no IMAGE extension (no HDU with EXTNAME or EXTTYPE IMAGE; expected IMAGE, "
                             "MASK, VARIANCE, or name the files in a manifest)")  # fmt: skip
        img = hdul[index["IMAGE"]]
        shape = (img.header.get("NAXIS2"), img.header.get("NAXIS1"))
        for ext in ("IMAGE", "MASK", "VARIANCE"):
            i = index[ext]
            if i is None:
                raise InputError(f"{path}: no {ext} extension (no HDU with EXTNAME or EXTTYPE {ext})")
            if hdul[i].header.get("NAXIS") != 2:
                raise InputError(f"{path}: {ext} extension has NAXIS = {hdul[i].header.get('NAXIS')}; a warp's "
                                 "image, mask and variance are 2-D")  # fmt: skip
            if (hdul[i].header.get("NAXIS2"), hdul[i].header.get("NAXIS1")) != shape:
                raise InputError(f"{path}: {ext} extension has a different shape from IMAGE")
        planes = mask_planes_from_header(hdul[index["MASK"]].header, path)
        hdus = {ext: int(i) for ext, i in index.items() if i is not None}
        info = WarpInfo(path, "lsst", (int(shape[0]), int(shape[1])), planes, img.header.tostring(), {}, hdus=hdus,
                        xy0=pixel_origin(img.header))  # fmt: skip
    return info, primary


def _first_2d(hdul: fits.HDUList, path: str) -> fits.ImageHDU:
    hdu = next((h for h in hdul if h.header.get("NAXIS", 0) == 2), None)
    if hdu is None:
        raise InputError(f"{path}: no 2-D image HDU")
    return hdu


def _scan_plain(plain: dict[str, str], opened: dict[str, fits.HDUList]) -> tuple[WarpInfo, fits.Header]:
    """A plain-layout warp: image, variance or weight, optional mask files, each already ``opened``
    (by kind; the caller closes them); (info, primary header)."""
    image_path = plain["image"]
    variance = plain.get("variance") or plain.get("weight") or ""
    if not variance:
        raise InputError(f"{image_path}: the manifest names no variance or weight file for this image")
    hdul = opened["image"]
    hdu = _first_2d(hdul, image_path)
    primary = hdul[0].header if hdul[0].header.get("NAXIS", 0) == 0 else hdu.header
    shape = (int(hdu.header["NAXIS2"]), int(hdu.header["NAXIS1"]))
    wcs_header = hdu.header.tostring()
    planes = {}
    for kind in ("variance", "weight", "mask"):
        if kind not in opened:
            continue
        header = _first_2d(opened[kind], plain[kind]).header
        other = (int(header["NAXIS2"]), int(header["NAXIS1"]))
        if other != shape:
            raise InputError(f"{plain[kind]}: the {kind} is {other[0]}x{other[1]}, its image {image_path} "
                             f"{shape[0]}x{shape[1]}")  # fmt: skip
        if kind == "mask":
            planes = mask_planes_from_header(header, plain[kind])
    info = WarpInfo(image_path, "plain", shape, planes, wcs_header, {}, image_path=image_path, variance_path=variance,
                    variance_is_weight=bool(plain.get("weight")), mask_path=plain.get("mask") or "")  # fmt: skip
    return info, primary


def resolve_geometry(info: WarpInfo, site: Site, lsst_angles: bool = False, lsst_rotation: bool = False) -> WarpInfo:
    """``info`` with elevation, airmass, parallactic and rotation angles resolved (:func:`resolve_pointing`)."""
    return replace(info, meta=resolve_pointing(info.meta, info.wcs_header, info.path, site, lsst_angles,
                                               lsst_rotation))  # fmt: skip


def observation_or_error(info: WarpInfo, site: Site, notices: set[str]) -> Observation:
    try:
        return info.observation(site, notices)
    except PhysicsError as exc:
        raise InputError(f"{info.path}: {exc}") from None


def check_consistent(infos: list[WarpInfo]) -> None:
    """All warps on one grid: same shape and the same WCS; InputError naming the first odd one."""
    ref = infos[0]
    for info in infos[1:]:
        if info.shape != ref.shape:
            raise InputError(
                f"{info.path}: shape {info.shape[0]}x{info.shape[1]} differs from {ref.path} "
                f"({ref.shape[0]}x{ref.shape[1]}); warps must share the patch grid"
            )
        if info.xy0 != ref.xy0:
            raise InputError(f"{info.path}: bbox origin xy0 {info.xy0} differs from {ref.path} ({ref.xy0}); warps "
                             "of one patch must share their bbox")  # fmt: skip
        if not same_wcs(info.wcs_header, ref.wcs_header):
            raise InputError(f"{info.path}: WCS differs from {ref.path}; warps must share the patch grid")


def union_mask_planes(infos: list[WarpInfo]) -> dict[str, int]:
    """One name → bit mapping covering every warp's planes (first warp's bits win), with NO_DATA
    always present (missing pixels are marked with it)."""
    planes: dict[str, int] = {}
    for info in infos:
        for name, bit in sorted(info.mask_planes.items(), key=lambda kv: kv[1]):
            add_plane(planes, name, bit)
    add_plane(planes, "NO_DATA")
    return planes


def _section(path: str, hdu: str | int, box: Box, out: NDArray) -> NDArray:
    """Read ``box`` of an image HDU into ``out`` (converting from FITS big-endian in the copy)."""
    # memory-mapped, except a scaled HDU (afw's uint16 masks: BZERO 32768), which astropy cannot
    # map: that file is opened once more without; .section reads only the window either way
    with fits.open(path, memmap=True, lazy_load_hdus=True) as hdul:
        header = hdul[hdu].header
        scaled = any(k in header for k in ("BZERO", "BSCALE", "BLANK")) and not header.get("ZIMAGE")
        if not scaled:
            data = hdul[hdu].section[box.y0 : box.y1, box.x0 : box.x1]
            np.copyto(out, data, casting="unsafe")
    if scaled:
        with fits.open(path, memmap=False, lazy_load_hdus=True) as hdul:
            data = hdul[hdu].section[box.y0 : box.y1, box.x0 : box.x1]
            np.copyto(out, data, casting="unsafe")
    READ_STATS.windows.append((path, box))
    READ_STATS.bytes += data.nbytes
    return out


def _first_image_hdu(path: str) -> int:
    with fits.open(path, memmap=True, lazy_load_hdus=True) as hdul:
        for i, h in enumerate(hdul):
            if h.header.get("NAXIS", 0) == 2:
                return i
    raise InputError(f"{path}: no 2-D image HDU")


def _read_plain(info: WarpInfo, box: Box, image: NDArray, variance: NDArray, mask: NDArray) -> None:
    _section(info.image_path, _first_image_hdu(info.image_path), box, image)
    _section(info.variance_path, _first_image_hdu(info.variance_path), box, variance)
    if info.variance_is_weight:
        with np.errstate(divide="ignore"):
            variance[...] = np.where(variance > 0, 1.0 / variance, np.inf)
    if info.mask_path:
        _section(info.mask_path, _first_image_hdu(info.mask_path), box, mask)
    else:
        mask[...] = 0


def _renumber_planes(mask: NDArray, own: dict[str, int], planes: dict[str, int]) -> None:
    """Move the bits of a warp's own planes (``own``) to the run's numbering (``planes``), in place."""
    if not own or all(planes.get(n) == b for n, b in own.items()):
        return
    raw = mask.copy()
    mask[...] = 0
    for name, bit in own.items():
        mask |= np.where((raw >> bit) & 1, np.int32(1 << planes[name]), np.int32(0))


def read_window(info: WarpInfo, box: Box, planes: dict[str, int],
                out: tuple[NDArray, NDArray, NDArray] | None = None) -> tuple[NDArray, NDArray, NDArray]:  # fmt: skip
    """(image, variance, mask) of ``box`` from one warp: float32, float32, int32 with ``planes`` bits.

    ``out``: three (ny, nx) arrays of those dtypes to read into (e.g. slices of the tile's warp
    stacks, so no copy is made afterwards); returned.
    """
    if out is None:
        out = (np.empty(box.shape, np.float32), np.empty(box.shape, np.float32), np.empty(box.shape, np.int32))
    image, variance, mask = out
    try:
        if info.layout == "lsst":
            for extension, target in (("IMAGE", image), ("MASK", mask), ("VARIANCE", variance)):
                _section(info.path, info.hdus.get(extension, extension), box, target)
        else:
            _read_plain(info, box, image, variance, mask)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(
            f"{info.path}: cannot read pixels ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
        ) from None
    _renumber_planes(mask, info.mask_planes, planes)
    return image, variance, mask


# --------------------------------------------------------------------------- writing
def _set_long(header: fits.Header, key: str, value: Any) -> None:
    """Set a keyword, as a HIERARCH card when it is longer than 8 characters or has '-' (LSST style)."""
    if len(key) > 8 or "-" in key:
        header.append(fits.Card(f"HIERARCH {key}", value), end=True)
    else:
        header[key] = value


def _primary(meta: dict[str, Any]) -> fits.PrimaryHDU:
    """A primary HDU carrying the visit metadata of ``meta`` under its keywords."""
    primary = fits.PrimaryHDU()
    for name, value in meta.items():
        if name in KEYWORDS and value is not None:
            _set_long(primary.header, KEYWORDS[name][0], value)
    return primary


def image_header(wcs_header: fits.Header | None) -> fits.Header:
    """The WCS cards of ``wcs_header`` without the structural ones (astropy writes those)."""
    header = fits.Header()
    structural = ("NAXIS", "NAXIS1", "NAXIS2", "SIMPLE", "BITPIX", "EXTEND", "PCOUNT", "GCOUNT", "XTENSION",
                  "EXTNAME", "EXTTYPE", "BZERO", "BSCALE", "BLANK", "INHERIT")  # fmt: skip
    for card in wcs_header.cards if wcs_header is not None else ():
        if card.keyword not in structural:
            header.append(card)
    return header


def write_lsst_warp(
    path: str | os.PathLike,
    image: NDArray,
    variance: NDArray,
    mask: NDArray,
    mask_planes: dict[str, int],
    meta: dict[str, Any],
    wcs_header: fits.Header | None = None,
    overwrite: bool = True,
    psf: NDArray | None = None,
    xy0: tuple[int, int] = (0, 0),
) -> None:
    """Write a warp in the LSST layout, as afw writes an Exposure: primary metadata, then IMAGE,
    MASK, VARIANCE (each with EXTNAME and afw's EXTTYPE, the WCS and the pixel origin ``xy0`` (x0,
    y0) as afw's ``A`` WCS and LTV1/LTV2), and a PSF image HDU if ``psf`` is given; atomically."""
    hdus_out = []
    for name, data, dtype in (("IMAGE", image, np.float32), ("MASK", mask, np.int32), ("VARIANCE", variance, np.float32)):
        hdu = fits.ImageHDU(np.asarray(data, dtype=dtype), header=image_header(wcs_header), name=name)
        hdu.header["EXTTYPE"] = name
        _set_origin(hdu.header, xy0)
        hdus_out.append(hdu)
    img, msk, var = hdus_out
    for name, bit in mask_planes.items():
        _set_long(msk.header, f"MP_{name}", bit)
    if os.path.exists(path) and not overwrite:
        raise InputError(f"{path}: exists (use --overwrite)")
    hdus = [_primary(meta), img, msk, var]
    if psf is not None:
        hdus.append(psf_hdu(psf))
    write_fits(str(path), fits.HDUList(hdus))


def _set_origin(header: fits.Header, xy0: tuple[int, int]) -> None:
    """afw's pixel origin cards: the ``A`` WCS (a LINEAR pixel WCS whose reference is xy0) and
    IRAF's LTV1/LTV2 = −xy0."""
    x0, y0 = (int(v) for v in xy0)
    for key, value in (("CTYPE1A", "LINEAR"), ("CTYPE2A", "LINEAR"), ("CRPIX1A", 1.0), ("CRPIX2A", 1.0),
                       ("CRVAL1A", float(x0)), ("CRVAL2A", float(y0)), ("CUNIT1A", "PIXEL"), ("CUNIT2A", "PIXEL"),
                       ("LTV1", float(-x0)), ("LTV2", float(-y0))):  # fmt: skip
        header[key] = value


def psf_hdu(psf: NDArray, fwhm: float | None = None) -> fits.ImageHDU:
    """A PSF image as an HDU named PSF (EXTTYPE PSF; FWHM in arcsec when known)."""
    hdu = fits.ImageHDU(np.asarray(psf, dtype=np.float64), name="PSF")
    hdu.header["EXTTYPE"] = "PSF"
    if fwhm is not None:
        hdu.header["FWHM"] = (float(fwhm), "PSF FWHM, arcsec")
    return hdu
