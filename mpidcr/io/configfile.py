"""Configuration files: TOML, YAML (safe loading) and LSST-style ``config.name = value`` overrides.

Nothing in a configuration file is ever executed: an LSST override file is parsed into a syntax
tree whose assignments of literal values are read (:class:`LsstOverrides`).  A top-level ``[config]`` table, if present, is what is read
(so a manifest's config section and a standalone configuration file look alike).
"""

from __future__ import annotations

import ast
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..config import FIELD_SPECS, LSST_FIELD_NAMES, SECTION_SPECS, DcrConfig, canonical_name, resolve_config
from ..errors import ConfigError, InputError
from .paths import read_text_file

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

log = logging.getLogger(__name__)


class _Ignored(Exception):
    """A statement of an LSST override file that mpidcr accepts but does not act on (the reason)."""


def _dotted(node: ast.AST) -> list[str] | None:
    """``config.a.b`` (or ``root.a.b``, older files) → ["a", "b"]; None for anything else."""
    names: list[str] = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name) and node.id in ("config", "root") and names:
        return names[::-1]
    return None


def _literal(node: ast.AST) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise _Ignored("its value is not a literal (nothing in the file is run)") from None


class LsstOverrides:
    """The fields an LSST override file sets, read from its syntax tree (never executed).

    Understood: ``config.<field> = <literal>`` (also over several lines, with comments),
    ``config.<section>.<field> = …`` with LSST's subtask field names mapped to mpidcr's
    (:data:`mpidcr.config.LSST_FIELD_NAMES`), ``config.<dict field>[key] = …``, ``+=``,
    ``.append(…)`` and ``.extend(…)`` on lists.  Accepted with a warning naming the line: ``retarget``
    and ``load`` calls, fields of a section that mpidcr does not have, non-literal values, any other
    statement.  An unknown top-level field or section is an error naming the line.
    """

    def __init__(self, text: str, path: Path):
        self.path, self.defaults = path, DcrConfig()
        self.values: dict[str, Any] = {}
        self.threshold_types: dict[str, Any] = {}
        try:
            tree = ast.parse(text, filename=str(path))
        except SyntaxError as exc:
            raise ConfigError(f"{path}:{exc.lineno}: not Python syntax ({exc.msg}); LSST override files are read, "
                              "never run") from None  # fmt: skip
        for node in tree.body:
            try:
                self._statement(node)
            except _Ignored as why:
                log.warning("%s:%d: %s; ignored", path, node.lineno, why)
            except ConfigError as exc:
                raise ConfigError(f"{path}:{node.lineno}: {exc}") from None

    def _statement(self, node: ast.stmt) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            return  # (the classes an import names only matter to retarget, which is reported)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            return  # a docstring
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Subscript):
                names = _dotted(target.value)
                if names is not None:
                    key = _literal(target.slice)
                    self._item(names, key, _literal(node.value))
                    return
            names = _dotted(target)
            if names is not None:
                self._set(names, _literal(node.value))
                return
        if isinstance(node, ast.AugAssign) and isinstance(node.op, ast.Add):
            names = _dotted(node.target)
            if names is not None:
                self._set(names, list(self._current(names)) + list(_literal(node.value)))
                return
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            call, func = node.value, node.value.func
            if isinstance(func, ast.Attribute):
                names = _dotted(func.value)
                if names is not None or (func.attr == "load" and isinstance(func.value, ast.Name)):
                    self._call(names or [], func.attr, call)
                    return
        raise _Ignored(f"'{ast.unparse(node).splitlines()[0][:60]}' is not a 'config.<field> = <literal>' statement")

    def _call(self, names: list[str], method: str, call: ast.Call) -> None:
        if method == "retarget":
            raise _Ignored(f"config.{'.'.join(names)}.retarget(...): mpidcr has its own implementation of each "
                           "subtask and does not retarget")  # fmt: skip
        if method == "load":
            raise _Ignored("config.load(...): other files are not followed; pass their settings directly")
        if method in ("append", "extend") and len(call.args) == 1:
            value = _literal(call.args[0])
            self._set(names, list(self._current(names)) + ([value] if method == "append" else list(value)))
            return
        raise _Ignored(f"config.{'.'.join(names)}.{method}(...) is not understood")

    def _name(self, names: list[str]) -> str | None:
        """The mpidcr name of ``config.<names>``; None if it is a field mpidcr does not have."""
        head = canonical_name(names[0])
        if len(names) == 1:
            return head
        if head in SECTION_SPECS and len(names) == 2:
            spec = SECTION_SPECS[head]
            field = LSST_FIELD_NAMES.get((head, names[1]), names[1])
            if field == "thresholdSigma" and self.threshold_types.get(head, "stdev") != "stdev":
                raise _Ignored(f"{head}.{names[1]} with thresholdType = {self.threshold_types[head]!r}: mpidcr's "
                               "thresholds are in sigma (stdev) only")  # fmt: skip
            if field != names[1]:
                log.info("%s: LSST's %s.%s read as %s.%s", self.path, head, names[1], head, field)
            if any(f.name == field for f in spec.fields):
                return f"{head}.{field}"
            if field == "thresholdType":
                return None
            raise _Ignored(f"{head} has no field '{names[1]}' in mpidcr")
        raise _Ignored(f"config.{'.'.join(names)}: mpidcr has no such nested field")

    def _set(self, names: list[str], value: Any) -> None:
        if len(names) == 2 and names[1] == "thresholdType" and canonical_name(names[0]) in SECTION_SPECS:
            self.threshold_types[canonical_name(names[0])] = value
            if value != "stdev":
                log.warning("%s: %s.thresholdType = %r: mpidcr's thresholds are in sigma (stdev) only", self.path,
                            names[0], value)  # fmt: skip
            return
        if len(names) == 2 and canonical_name(names[0]) in FIELD_SPECS:  # an item of a dict field
            self._item(names[:1], names[1], value)
            return
        name = self._name(names)
        if name is not None:
            self.values[name] = value

    def _item(self, names: list[str], key: Any, value: Any) -> None:
        current = self._current(names)
        if not isinstance(current, dict):
            raise _Ignored(f"config.{'.'.join(names)} is not a table")
        name = self._name(names)
        if name is not None:
            self.values[name] = {**current, key: value}

    def _current(self, names: list[str]) -> Any:
        """The value so far of ``config.<names>``: set earlier in the file, else the default."""
        name = self._name(names)
        if name is None:
            raise _Ignored(f"config.{'.'.join(names)} is not a field mpidcr has")
        if name in self.values:
            return self.values[name]
        head, _, tail = name.partition(".")
        value = getattr(getattr(self.defaults, head), tail) if tail else getattr(self.defaults, head)
        return dict(value) if isinstance(value, Mapping) else list(value) if isinstance(value, tuple) else value


def _read_lsst_override_file(text: str, path: Path) -> dict[str, Any]:
    """The fields an LSST override file sets (:class:`LsstOverrides`), read without executing it."""
    return LsstOverrides(text, path).values


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
