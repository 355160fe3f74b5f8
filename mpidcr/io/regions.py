"""Bright-object regions: LSST's bright-object mask files and ds9 region files (sky coordinates).

Both are ds9 region syntax: ``circle(ra, dec, radius)`` and ``box(ra, dec, width, height[, angle])``
in fk5/icrs coordinates (decimal degrees or sexagesimal ``hh:mm:ss``/``dd:mm:ss``), sizes with a
unit suffix (``"`` arcsec, ``'`` arcmin, ``d`` degrees; none: degrees), ``#`` comments (LSST's files
carry ``# ID: …, mag: …`` there), ``;`` separating several statements on a line, and the frame
statements ``fk5``/``icrs``/``j2000``/``wcs``/``global …`` ignored.  Other shapes or frames
(``image``, ``physical``, ``galactic``) are refused naming the file and line.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import InputError
from ..finishing import Circle, Region, SkyBox

_SHAPE = re.compile(r"^\s*([A-Za-z]+)\s*\((.*)\)\s*$")
_SIZE_UNITS = {'"': 1.0 / 3600.0, "'": 1.0 / 60.0, "d": 1.0, "": 1.0}
_IGNORED = ("fk5", "icrs", "j2000", "wcs", "global", "linear", "fk5;")
_REFUSED_FRAMES = ("image", "physical", "galactic", "ecliptic", "fk4", "b1950", "detector", "amplifier")


def _size(text: str, where: str) -> float:
    text = text.strip()
    unit = text[-1] if text and text[-1] in "\"'d" else ""
    try:
        return float(text[: len(text) - len(unit)]) * _SIZE_UNITS[unit]
    except ValueError:
        raise InputError(f"{where}: size '{text}' is not a number with an optional \" ' or d unit") from None


def _coordinates(ra: str, dec: str, where: str) -> tuple[float, float]:
    ra, dec = ra.strip(), dec.strip()
    if ":" in ra or ":" in dec:
        from astropy import units as u
        from astropy.coordinates import Angle

        try:
            return float(Angle(ra, unit=u.hourangle).deg), float(Angle(dec, unit=u.deg).deg)
        except Exception:
            raise InputError(f"{where}: coordinates '{ra}, {dec}' are not sexagesimal RA, Dec") from None
    try:
        return float(ra.rstrip("d")), float(dec.rstrip("d"))
    except ValueError:
        raise InputError(f"{where}: coordinates '{ra}, {dec}' are not decimal degrees") from None


def parse_regions(text: str, source: str = "<regions>") -> list[Region]:
    """The circles and boxes of a region file's ``text`` (``source`` names it in errors)."""
    regions: list[Region] = []
    for number, line in enumerate(text.splitlines(), start=1):
        where = f"{source}:{number}"
        for statement in line.split("#", 1)[0].split(";"):
            statement = statement.strip()
            if not statement:
                continue
            lowered = statement.lower()
            if lowered.startswith(_IGNORED):
                continue
            if lowered in _REFUSED_FRAMES or lowered.startswith(_REFUSED_FRAMES):
                raise InputError(f"{where}: region frame '{statement}' is not supported (fk5 or icrs sky coordinates)")
            match = _SHAPE.match(statement)
            if not match:
                raise InputError(f"{where}: not a region: '{statement}'")
            shape, args = match.group(1).lower(), [a for a in match.group(2).split(",")]
            if shape == "circle" and len(args) == 3:
                ra, dec = _coordinates(args[0], args[1], where)
                regions.append(Circle(ra, dec, _size(args[2], where)))
            elif shape == "box" and len(args) in (4, 5):
                ra, dec = _coordinates(args[0], args[1], where)
                angle = float(args[4]) if len(args) == 5 else 0.0
                regions.append(SkyBox(ra, dec, _size(args[2], where), _size(args[3], where), angle))
            else:
                raise InputError(f"{where}: '{shape}' with {len(args)} values is not supported "
                                 "(circle(ra, dec, r) or box(ra, dec, w, h[, angle]))")  # fmt: skip
    return regions


def read_regions(path: str) -> list[Region]:
    """The regions of a bright-object mask or ds9 region file."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise InputError(f"{path}: file not found (bright-object regions)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the bright-object regions ({exc})") from None
    return parse_regions(text, path)
