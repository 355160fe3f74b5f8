"""Run manifests (TOML): the band, site defaults, the warps and configuration overrides.

Example::

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

Relative paths are relative to the manifest's directory.  ``warps`` may also
be a plain list of path patterns.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..dcr import Site
from ..errors import InputError


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


_PLAIN_KEYS = ("image", "variance", "weight", "mask")


def _expand(pattern: str, base: Path, where: str) -> list[str]:
    full = pattern if os.path.isabs(pattern) else str(base / pattern)
    if any(c in pattern for c in "*?["):
        found = sorted(glob.glob(full))
        if not found:
            raise InputError(f"{where}: pattern '{pattern}' matches no file")
        return found
    return [full]


def read_manifest(path: str | os.PathLike) -> Manifest:
    """Parse a TOML manifest; InputError naming the file and the offending entry."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: manifest not found")
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        data = tomllib.loads(path.read_text())
    except Exception as exc:
        raise InputError(f"{path}: cannot parse TOML ({str(exc).splitlines()[0]})") from None
    unknown = set(data) - {"band", "site", "warps", "config"}
    if unknown:
        raise InputError(f"{path}: unknown manifest section(s) {sorted(unknown)}; expected band, site, warps, config")
    base = path.parent
    band = dict(data.get("band", {}))
    for key in band:
        if key not in ("effectiveWavelength", "bandwidth", "effective_wavelength"):
            raise InputError(f"{path}: unknown [band] field '{key}' (effectiveWavelength, bandwidth)")
    site_tab = data.get("site", {})
    try:
        site = Site(**{k: float(v) for k, v in site_tab.items()})
    except TypeError:
        raise InputError(f"{path}: [site] takes latitude, longitude and height") from None
    raw = data.get("warps")
    if not raw:
        raise InputError(f"{path}: no [[warps]] entries")
    entries: list[WarpEntry] = []
    for i, item in enumerate(raw):
        where = f"{path}: warps[{i}]"
        if isinstance(item, str):
            entries += [WarpEntry(path=p) for p in _expand(item, base, where)]
            continue
        if not isinstance(item, dict):
            raise InputError(f"{where}: expected a path or a table")
        item = dict(item)
        if "image" in item:
            plain = {k: (_expand(item.pop(k), base, where)[0] if item.get(k) else "") for k in _PLAIN_KEYS if k in item}
            if not plain.get("variance") and not plain.get("weight"):
                raise InputError(f"{where}: a plain-layout warp needs 'variance' or 'weight'")
            entries.append(WarpEntry(path=plain["image"], plain=plain, overrides=item))
        elif "path" in item:
            pattern = item.pop("path")
            entries += [WarpEntry(path=p, overrides=dict(item)) for p in _expand(pattern, base, where)]
        else:
            raise InputError(f"{where}: needs 'path' (LSST layout) or 'image' (plain layout)")
    return Manifest(warps=entries, band=band, site=site, config=dict(data.get("config", {})), source=str(path))


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
