"""Configuration files: TOML, YAML (safe loading) and LSST-style ``config.name = value`` overrides.

Nothing in a configuration file is ever executed: an LSST override file is read line by line and
only literal values are accepted.  A top-level ``[config]`` table, if present, is what is read
(so a manifest's config section and a standalone configuration file look alike).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..config import DcrConfig, resolve_config
from ..errors import ConfigError, InputError
from .paths import read_text_file

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]


def _read_lsst_override_file(text: str, path: Path) -> dict[str, Any]:
    """``config.name = literal`` lines of an LSST config file, read without executing it."""
    out: dict[str, Any] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip() if "'" not in raw and '"' not in raw else raw.strip()
        if not line or line.startswith("#") or line.startswith(("import ", "from ")):
            continue
        m = re.fullmatch(r"config\.([A-Za-z_][\w.]*)\s*=\s*(.+)", line)
        if not m:
            raise ConfigError(f"{path}:{lineno}: only 'config.<field> = <literal>' lines are understood")
        try:
            out[m.group(1)] = ast.literal_eval(m.group(2))
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise ConfigError(f"{path}:{lineno}: value of '{m.group(1)}' is not a literal") from None
    return out


def _parse(text: str, suffix: str, path: Path) -> Any:
    """The parsed document (ConfigError naming the file for a parse error)."""
    try:
        if suffix == ".toml":
            return tomllib.loads(text)
        if suffix == ".py":
            return _read_lsst_override_file(text, path)
        import yaml

        return yaml.safe_load(text) or {}
    except ConfigError:
        raise
    except Exception as exc:  # parse errors of tomllib / yaml
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{path}: cannot parse: {first}") from None


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The fields of a TOML (.toml), YAML (.yaml/.yml) or LSST override (.py) file.

    ConfigError naming the file and the problem.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".yaml", ".yml", ".py"):
        raise ConfigError(f"{path}: unknown configuration format '{suffix}' (use .toml, .yaml or .py)")
    try:
        text = read_text_file(path, "configuration file")
    except InputError as exc:
        raise ConfigError(str(exc)) from None
    data = _parse(text, suffix, path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a table of configuration fields")
    if "config" in data and isinstance(data["config"], dict):
        data = data["config"]
    if not all(isinstance(k, str) for k in data):
        raise ConfigError(f"{path}: configuration field names must be strings")
    return data


def load_config(
    path: str | Path | None = None,
    overrides: Iterable[str] | Mapping[str, Any] = (),
    base: Mapping[str, Any] | None = None,
) -> DcrConfig:
    """A DcrConfig from ``base`` values, then the file at ``path``, then ``overrides``."""
    return resolve_config(base, read_config_file(path) if path is not None else None, overrides)
