"""Run manifests (TOML): the band, site defaults, the warps and configuration overrides.

Example::

    static_model = "deepCoadd.fits"  # optional: the static model T (else the coadd of the warps)
    bright_object_mask = "brightObjectMask.reg"  # optional: regions for doMaskBrightObjects
    psf_matched_warps = "psfMatched/*.fits"       # optional: LSST's PSF-matched warps (one per visit)

    [band]
    effectiveWavelength = 476.31   # nm
    bandwidth = 147.0              # nm

    [site]                         # defaults for warps without OBS-* keywords
    latitude = -30.2446            # deg
    longitude = -70.7494           # deg
    height = 2662.75               # m

    [[warps]]
    path = "warps/*.fits"          # glob patterns allowed (LSST layout)

    [[warps]]                      # one visit with overrides of its metadata
    path = "warps/visit_0007.fits"
    parallacticAngle = -35.2

    [[warps]]                      # plain layout: image + variance (or weight) + optional mask
    image = "plain/v12_img.fits"
    weight = "plain/v12_wht.fits"
    mask = "plain/v12_msk.fits"
    airmass = 1.31
    parallacticAngle = 12.0

    [config]                       # any configuration field
    dcrNumSubfilters = 3

Relative paths are relative to the manifest's directory; a path that exists is taken literally
(so file names holding ``[`` work), otherwise it is a glob pattern.  ``warps`` may also be a
plain list of path patterns.  A file named twice (a glob, then an entry with overrides for it)
is used once, with the overrides.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..dcr import Site, physical_problem
from ..errors import InputError
from .paths import expand_pattern, read_text_file

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]


@dataclass
class WarpEntry:
    """One warp named by a manifest: LSST-layout ``path`` or ``plain`` files, plus metadata overrides."""

    path: str = ""
    plain: dict[str, str] | None = None
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class Manifest:
    """A parsed manifest (see the module docstring)."""

    warps: list[WarpEntry]
    band: dict[str, float] = field(default_factory=dict)
    site: Site = field(default_factory=Site)
    config: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    static_model: str = ""
    bright_object_mask: str = ""
    psf_matched_warps: list[str] = field(default_factory=list)


_PLAIN_KEYS = ("image", "variance", "weight", "mask")
_SECTIONS = ("band", "site", "warps", "config")
#: top-level keys (before the first table)
_KEYS = ("static_model", "bright_object_mask", "psf_matched_warps")
_BAND_FIELDS = ("effectiveWavelength", "bandwidth", "effective_wavelength")


def _table(data: dict[str, Any], name: str, path: Path) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise InputError(f"{path}: [{name}] must be a table (name = value lines), not {type(value).__name__}")
    return value


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{where} = {value!r} is not a number")
    if not math.isfinite(value):
        raise InputError(f"{where} = {value!r} is not a finite number")
    return float(value)


def _read_site(table: dict[str, Any], path: Path) -> Site:
    values = {}
    for key, value in table.items():
        if key not in ("latitude", "longitude", "height"):
            raise InputError(f"{path}: unknown [site] field '{key}' (latitude, longitude, height)")
        number = _number(value, f"{path}: [site] {key}")
        problem = physical_problem(key, number)
        if problem:
            raise InputError(f"{path}: [site] {key} = {number:g}{problem}")
        values[key] = number
    return Site(**values)


def _read_band(table: dict[str, Any], path: Path) -> dict[str, float]:
    for key, value in table.items():
        if key not in _BAND_FIELDS:
            raise InputError(f"{path}: unknown [band] field '{key}' (effectiveWavelength, bandwidth)")
        _number(value, f"{path}: [band] {key}")
    return dict(table)


def _path_field(item: dict[str, Any], key: str, where: str) -> str:
    value = item.pop(key)
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{where}: '{key}' must be a file name or pattern (a string), not {value!r}")
    return value


def _plain_entry(item: dict[str, Any], base: Path, where: str) -> WarpEntry:
    """A plain-layout warp: ``image`` with ``variance`` or ``weight`` (and ``mask``); the rest are overrides."""
    plain = {key: expand_pattern(_path_field(item, key, where), base, where)[0] for key in _PLAIN_KEYS if key in item}
    if not plain.get("variance") and not plain.get("weight"):
        raise InputError(f"{where}: a plain-layout warp needs 'variance' or 'weight'")
    if plain.get("variance") and plain.get("weight"):
        raise InputError(f"{where}: give 'variance' or 'weight' (inverse variance), not both")
    return WarpEntry(path=plain["image"], plain=plain, overrides=item)


def _read_entry(item: Any, base: Path, where: str) -> list[WarpEntry]:
    """The warps of one ``[[warps]]`` item (a pattern, or a table with ``path`` or ``image``)."""
    if isinstance(item, str):
        return [WarpEntry(path=p) for p in expand_pattern(item, base, where)]
    if not isinstance(item, dict):
        raise InputError(f"{where}: expected a path or a table, not {type(item).__name__}")
    item = dict(item)
    if "image" in item:
        return [_plain_entry(item, base, where)]
    if "path" not in item:
        raise InputError(f"{where}: needs 'path' (LSST layout) or 'image' (plain layout)")
    pattern = _path_field(item, "path", where)
    return [WarpEntry(path=p, overrides=dict(item)) for p in expand_pattern(pattern, base, where)]


def _merge_into(kept: WarpEntry, entry: WarpEntry, source: str) -> None:
    """Add ``entry``'s overrides (and plain files) to ``kept``, the same file named earlier."""
    if entry.plain != kept.plain and entry.plain and kept.plain:
        raise InputError(f"{source}: {entry.path} is named twice with different variance/mask files")
    for name, value in entry.overrides.items():
        if name in kept.overrides and kept.overrides[name] != value:
            raise InputError(
                f"{source}: {entry.path} is named twice with different values of '{name}' "
                f"({kept.overrides[name]!r} and {value!r})"
            )
        kept.overrides[name] = value
    kept.plain = kept.plain or entry.plain


def merge_entries(entries: list[WarpEntry], source: str) -> list[WarpEntry]:
    """One entry per file: a file named twice (a glob, then an entry with overrides for it) is
    used once, with the overrides of both; two different values for one field are an InputError."""
    merged: dict[str, WarpEntry] = {}
    for entry in entries:
        key = os.path.realpath(entry.path)
        if key in merged:
            _merge_into(merged[key], entry, source)
        else:
            merged[key] = WarpEntry(entry.path, entry.plain, dict(entry.overrides))
    return list(merged.values())


def read_manifest(path: str | os.PathLike) -> Manifest:
    """Parse a TOML manifest; InputError naming the file and the offending entry."""
    path = Path(path)
    text = read_text_file(path, "manifest")
    try:
        data = tomllib.loads(text)
    except Exception as exc:
        raise InputError(f"{path}: cannot parse TOML ({str(exc).splitlines()[0]})") from None
    unknown = set(data) - set(_SECTIONS) - set(_KEYS)
    if unknown:
        raise InputError(f"{path}: unknown manifest section(s) {sorted(unknown)}; expected static_model = \"FILE\", "
                         "bright_object_mask = \"FILE\", psf_matched_warps = [PATTERNS], "
                         "then band, site, warps, config")  # fmt: skip
    static_model, bright_objects = (_file_key(data, key, path) for key in ("static_model", "bright_object_mask"))
    psf_matched = _patterns(data.get("psf_matched_warps", []), path)
    band = _read_band(_table(data, "band", path), path)
    site = _read_site(_table(data, "site", path), path)
    config = _table(data, "config", path)
    raw = data.get("warps")
    if not raw:
        raise InputError(f"{path}: no [[warps]] entries")
    if isinstance(raw, (str, dict)):
        raw = [raw]
    if not isinstance(raw, list):
        raise InputError(f"{path}: 'warps' must be a list of paths or [[warps]] tables")
    entries: list[WarpEntry] = []
    for i, item in enumerate(raw):
        entries += _read_entry(item, path.parent, f"{path}: warps[{i}]")
    return Manifest(
        warps=merge_entries(entries, str(path)),
        band=band,
        site=site,
        config=dict(config),
        source=str(path),
        static_model=static_model,
        bright_object_mask=bright_objects,
        psf_matched_warps=psf_matched,
    )


def _patterns(value: Any, path: Path) -> list[str]:
    """The files of ``psf_matched_warps``: a pattern or a list of them, relative to the manifest."""
    patterns = [value] if isinstance(value, str) else value
    if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
        raise InputError(f"{path}: psf_matched_warps must be a file pattern or a list of them, not {value!r}")
    return [f for pattern in patterns for f in expand_pattern(pattern, path.parent, where=f"{path}: psf_matched_warps")]


def _file_key(data: dict[str, Any], key: str, path: Path) -> str:
    """A top-level file name of the manifest, relative to its directory ("" when absent)."""
    value = data.get(key, "")
    if not isinstance(value, str):
        raise InputError(f"{path}: {key} must be a file name, not {value!r}")
    if value and not os.path.isabs(value):
        value = str(path.parent / value)
    return value


def write_manifest(
    path: str | os.PathLike,
    warps: list[str],
    effective_wavelength: float,
    bandwidth: float,
    site: Site | None = None,
    config: dict[str, Any] | None = None,
) -> None:
    """Write a simple manifest naming LSST-layout warps (paths relative to the manifest)."""
    path = Path(path)
    site = site or Site()
    lines = [
        "[band]",
        f"effectiveWavelength = {effective_wavelength!r}",
        f"bandwidth = {bandwidth!r}",
        "",
        "[site]",
        f"latitude = {site.latitude!r}",
        f"longitude = {site.longitude!r}",
        f"height = {site.height!r}",
        "",
    ]
    for w in warps:
        rel = os.path.relpath(w, path.parent)
        lines += ["[[warps]]", f'path = "{rel}"', ""]
    if config:
        lines.append("[config]")
        for k, v in config.items():
            lines.append(f"{k} = {v!r}" if not isinstance(v, bool) else f"{k} = {str(v).lower()}")
    path.write_text("\n".join(lines) + "\n")
