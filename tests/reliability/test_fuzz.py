"""Property-based fuzzing of the readers of user input: manifests, configuration files and FITS
headers.  Every generated input ends in success or in one MpidcrError whose message is one line —
never another exception (which the command line would show as a traceback)."""

from __future__ import annotations

import math
import string
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import fits
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mpidcr.config import FIELDS, SUBTASKS
from mpidcr.dcr import Site
from mpidcr.driver import inputs_from_manifest
from mpidcr.errors import MpidcrError
from mpidcr.io.configfile import load_config
from mpidcr.io.manifest import read_manifest
from mpidcr.io.metadata import KEYWORDS, visit_metadata
from mpidcr.io.warps import resolve_geometry

EXAMPLES = 500
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])  # fmt: skip


def _one_line(exc: MpidcrError) -> None:
    text = str(exc)
    assert text and "\n" not in text and "\r" not in text, repr(text)


def _check(fn, *args):
    """``fn(*args)``: a result, or one MpidcrError with a one-line message."""
    try:
        return fn(*args)
    except MpidcrError as exc:
        _one_line(exc)
        return None


# -- values -----------------------------------------------------------------------------------------
text = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=12)
numbers = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, -1, 3, 40.0, 101325.0, 743.0, 285.0, 1e300, -1e-300, 2**62]),
)
scalars = st.one_of(numbers, st.booleans(), text)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(text, inner, max_size=3)),
                      max_leaves=6)  # fmt: skip
#: plausible values of the visit metadata (most examples should get past the first check)
PLAUSIBLE = {
    "airmass": st.floats(1.0, 3.0),
    "elevation": st.floats(20.0, 90.0),
    "azimuth": st.floats(0.0, 360.0),
    "rotationAngle": st.floats(-180.0, 180.0),
    "latitude": st.floats(-89.0, 89.0),
    "longitude": st.floats(-180.0, 180.0),
    "height": st.floats(0.0, 5000.0),
    "temperature": st.floats(-30.0, 40.0),
    "pressure": st.floats(50000.0, 105000.0),
    "humidity": st.floats(0.0, 100.0),
    "parallacticAngle": st.floats(-180.0, 180.0),
    "psfFwhm": st.floats(0.3, 2.0),
    "zeroPoint": st.floats(20.0, 35.0),
    "visit": st.integers(0, 10**6),
    "mjd": st.floats(50000.0, 70000.0),
    "era": st.floats(0.0, 360.0),
    "ra": st.floats(0.0, 360.0),
    "dec": st.floats(-90.0, 90.0),
}


def metadata_value(key):
    """Mostly a plausible value of ``key``, sometimes anything."""
    return st.one_of(*[PLAUSIBLE.get(key, scalars)] * 6, scalars)


def field_value(name):
    """Mostly a well-typed value of configuration field ``name``, sometimes anything."""
    spec = next((f for f in FIELDS if f.name == name), None)
    if spec is None:
        return values
    typed = {
        "bool": st.booleans(),
        "int": st.integers(0, 40),
        "float": st.floats(0.0, 10.0),
        "str": st.sampled_from(["MEAN", "MEDIAN", "MEANCLIP", "direct", "deep", "x"]),
        "list": st.lists(st.sampled_from(["NO_DATA", "BAD", "SAT", "DETECTED", "EDGE"]), max_size=3),
        "dict": st.dictionaries(st.sampled_from(["SAT", "BAD"]), st.floats(0.0, 1.0), max_size=2),
        "pair": st.tuples(st.integers(1, 4000), st.integers(1, 4000)).map(list),
    }[spec.kind]
    return st.one_of(*[typed] * 4, values)


FIELD_NAMES = [f.name for f in FIELDS] + [s.name for s in SUBTASKS]
SUBFIELDS = [f"{s.name}.{f.name}" for s in SUBTASKS for f in s.fields]
field_names = st.one_of(st.sampled_from(FIELD_NAMES + SUBFIELDS), text)


def toml_string(v: str) -> str:
    """A TOML basic string (control characters and DEL escaped, as TOML requires)."""
    out = []
    for ch in v:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return toml_string(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{toml_string(k)} = {toml_value(x)}" for k, x in v.items()) + "}"


def toml_table(name: str, table: dict) -> str:
    return f"[{name}]\n" + "".join(f"{toml_string(k)} = {toml_value(v)}\n" for k, v in table.items())


# -- manifests ----------------------------------------------------------------------------------------
OVERRIDES = [k for k in KEYWORDS] + ["path", "image", "variance", "weight", "mask", "bogus"]


MUTATIONS = ["no band", "odd band", "odd site", "odd entry", "odd override", "odd config", "no warps", "junk"]


@st.composite
def manifests(draw, warp_paths):
    """A valid manifest (band, site, two or three real warps with plausible overrides, a config
    table), then up to two mutations of it."""
    mutations = draw(st.lists(st.sampled_from(MUTATIONS), max_size=2))
    band: dict = {"effectiveWavelength": 476.31, "bandwidth": 147.0}
    if "odd band" in mutations:
        band[draw(st.sampled_from(["effectiveWavelength", "bandwidth", "x"]))] = draw(scalars)
    site_keys = draw(st.lists(st.sampled_from(["latitude", "longitude", "height"]), max_size=3, unique=True))
    site = {k: draw(metadata_value(k) if "odd site" in mutations else PLAUSIBLE[k]) for k in site_keys}
    entries = []
    for path in draw(st.lists(st.sampled_from(warp_paths), min_size=2, max_size=3)):
        entry: dict = {"path": path}
        for key in draw(st.lists(st.sampled_from(list(PLAUSIBLE)), max_size=2, unique=True)):
            entry[key] = draw(PLAUSIBLE[key])
        entries.append(entry)
    if "odd override" in mutations:
        entries[0][draw(st.sampled_from(OVERRIDES))] = draw(scalars)
    if "odd entry" in mutations:
        kind = draw(st.sampled_from(["glob", "missing", "plain", "empty"]))
        directory = Path(warp_paths[0]).parent
        entries.append({"glob": {"path": str(directory / draw(st.sampled_from(["*.fits", "v[0-2]*", "none*"])))},
                        "missing": {"path": draw(text)},
                        "plain": {"image": warp_paths[0], draw(st.sampled_from(["variance", "weight", "mask"])):
                                  draw(st.one_of(st.sampled_from(warp_paths), scalars))},
                        "empty": {}}[kind])  # fmt: skip
    config: dict = {}
    if "odd config" in mutations:
        names = draw(st.lists(field_names, min_size=1, max_size=2, unique=True))
        config = {n: draw(field_value(n)) for n in names}
    parts = [] if "no band" in mutations else [toml_table("band", band)]
    parts.append(toml_table("site", site))
    if config:
        parts.append(toml_table("config", config))
    if "no warps" not in mutations:
        parts += ["[[warps]]\n" + "".join(f"{toml_string(k)} = {toml_value(v)}\n" for k, v in e.items())
                  for e in entries]  # fmt: skip
    if "junk" in mutations:
        parts.append(draw(st.text(max_size=40)))
    return "".join(parts)


@pytest.fixture(scope="module")
def warp_paths(field):
    return [str(p) for p in field[1]["warps"][:3]]


def test_fuzz_manifest_reader(warp_paths, tmp_path_factory):
    directory = tmp_path_factory.mktemp("fuzz_manifest")

    @FUZZ
    @given(manifests(warp_paths))
    def check(text_):
        path = directory / "m.toml"
        path.write_text(text_, encoding="utf-8", errors="surrogatepass")
        manifest = _check(read_manifest, path)
        if manifest is None:
            return
        config = _check(load_config, None, (), {**manifest.config, **manifest.band})
        if config is None:
            return
        _check(inputs_from_manifest, manifest, config)

    check()


# -- configuration files ------------------------------------------------------------------------------
@st.composite
def config_files(draw):
    fmt = draw(st.sampled_from([".toml", ".yaml", ".py"]))
    names = draw(st.lists(field_names, max_size=4, unique=True))
    table = {n: draw(field_value(n)) for n in names}
    if draw(st.integers(0, 7)) == 0:
        body = draw(st.text(max_size=60))
    elif fmt == ".toml":
        top = {k: v for k, v in table.items() if not isinstance(v, dict)}
        body = "".join(f"{toml_string(k)} = {toml_value(v)}\n" for k, v in top.items())
        body += "".join(toml_table(toml_string(k), v) for k, v in table.items() if isinstance(v, dict))
    elif fmt == ".yaml":
        body = yaml.safe_dump(table, allow_unicode=True)
    else:
        lines = [f"config.{k} = {v!r}" for k, v in table.items()]
        lines += draw(st.lists(st.sampled_from(["import os", "# a comment", "retarget(x)", "config.a.b = (1,",
                                                "os.system('x')", "config.x = 1 if y else 2", ""]), max_size=2))  # fmt: skip
        body = "\n".join(lines)
    return fmt, body


def test_fuzz_configuration_file_reader(tmp_path_factory):
    directory = tmp_path_factory.mktemp("fuzz_config")

    @FUZZ
    @given(config_files())
    def check(item):
        fmt, body = item
        path = directory / f"c{fmt}"
        path.write_text(body, encoding="utf-8", errors="surrogatepass")
        config = _check(load_config, path)
        if config is not None:
            _check(config.validate, False)

    check()


# -- FITS headers ---------------------------------------------------------------------------------------
card_values = st.one_of(
    numbers.filter(lambda v: not (isinstance(v, float) and not math.isfinite(v))).map(lambda v: repr(v)),
    st.sampled_from(["T", "F", "NAN", "INF", "-INF", "1.0D5", "7.4E2", "''", "'  '", "' -30.5 '", "'north'",
                     "(1.0, 2.0)", "1e400", "-0", "+.5", "."]),
    st.text(alphabet=string.printable.strip("\r\n\t\x0b\x0c"), max_size=20).map(lambda s: "'" + s.replace("'", "''") + "'"),
)  # fmt: skip


@st.composite
def headers(draw):
    """A plausible primary header (keys present or not), then now and then one card made odd."""
    present = [(name, key) for name, (key, _unit) in KEYWORDS.items() if draw(st.integers(0, 3))]
    odd = draw(st.one_of(st.none(), st.sampled_from([n for n, _ in present] or [None])))
    cards = []
    for name, key in present:
        value = draw(card_values) if name == odd else repr(draw(PLAUSIBLE[name]))
        card = f"HIERARCH {key} = {value}" if "-" in key or len(key) > 8 else f"{key:<8}= {value}"
        cards.append(card[:80].ljust(80))
    keys = draw(st.lists(st.sampled_from([*KEYWORDS, "bogus"]), max_size=2, unique=True))
    overrides = {k: draw(metadata_value(k)) for k in keys}
    return "".join(cards), overrides


def test_fuzz_header_reader():
    @FUZZ
    @given(headers())
    def check(item):
        cards, overrides = item
        try:
            header = fits.Header.fromstring(cards)
        except Exception:  # not a header astropy would read from a file either
            assume(False)
        from mpidcr.io.warps import WarpInfo

        meta = _check(visit_metadata, header, "h.fits", overrides)
        if meta is None:
            return
        info = WarpInfo("h.fits", "lsst", (8, 8), {}, "", meta)
        info = _check(resolve_geometry, info, Site())
        if info is None:
            return
        from mpidcr.dcr import dcr_shifts
        from mpidcr.io.warps import observation_or_error

        obs = _check(observation_or_error, info, Site(), set())
        if obs is not None:
            shifts = _check(dcr_shifts, obs, 476.31, 147.0, 3, 0.2)
            if shifts is not None:
                assert np.all(np.isfinite(shifts.forward))

    check()
