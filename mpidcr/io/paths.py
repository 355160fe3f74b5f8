"""Checks on the paths a run reads and writes, made before any pixel is read.

Inputs must be regular files (a device or a FIFO named as a warp would hang the reader or grow
its memory without bound), and no output may be one of them: an input is never opened for
writing, whatever ``--overwrite`` says.  Every problem is an :class:`~mpidcr.errors.InputError`
whose one-line message names the path and what is wrong with it.
"""

from __future__ import annotations

import glob
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from ..errors import InputError

#: A manifest or configuration file larger than this is not one (a mistaken data file).
MAX_TEXT_FILE_BYTES = 16 * 2**20

_GLOB_CHARS = "*?["


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def regular_file_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be read as an input file (one phrase), or None if it is a regular file."""
    try:
        st = os.stat(path)  # follows symbolic links: a link to a regular file is fine
    except FileNotFoundError:
        return "file not found"
    except PermissionError:
        return "permission denied"
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    if not stat.S_ISREG(st.st_mode):
        return f"{_kind(st.st_mode)}, not a regular file"
    if not os.access(path, os.R_OK):
        return "not readable (permission denied)"
    return None


def require_regular_file(path: str | os.PathLike, what: str = "") -> None:
    """InputError ``"<path>: <problem> (<what>)"`` unless ``path`` is a readable regular file."""
    problem = regular_file_problem(path)
    if problem:
        raise InputError(f"{path}: {problem}{f' ({what})' if what else ''}")


def read_text_file(path: str | os.PathLike, what: str) -> str:
    """The text of a small input file (manifest, configuration); InputError naming it otherwise."""
    require_regular_file(path, what)
    size = os.path.getsize(path)
    if size > MAX_TEXT_FILE_BYTES:
        raise InputError(f"{path}: {what} of {size} bytes is too large to be one (limit {MAX_TEXT_FILE_BYTES})")
    try:
        return Path(path).read_text(encoding="utf-8-sig")  # (a byte-order mark, as some editors write, is dropped)
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: {what} is not UTF-8 text (byte {exc.start})") from None


def expand_pattern(pattern: str, base: Path | None = None, where: str = "") -> list[str]:
    """The files named by ``pattern`` (relative to ``base``): the path itself when it exists (so a
    file whose name holds ``[`` or ``*`` can be named literally), else the sorted glob matches.

    A pattern with glob characters that matches nothing is an InputError naming it; a plain path
    that does not exist is returned as is (reading it then reports "file not found").
    """
    full = pattern if base is None or os.path.isabs(pattern) else str(base / pattern)
    if os.path.exists(full) or not any(c in pattern for c in _GLOB_CHARS):
        return [full]
    found = sorted(glob.glob(full))
    if not found:
        raise InputError(f"{where + ': ' if where else ''}pattern '{pattern}' matches no file")
    return found


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name the same file (through links), or the same path when neither exists."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def _refuse_existing(path: str, inputs: Iterable[str], overwrite: bool, what: str) -> None:
    """What exists at an output path: never an input, never a non-file, a file only with overwrite."""
    if not os.path.lexists(path):
        return
    exists = os.path.exists(path)  # (False for a dangling symbolic link: it is simply replaced)
    for source in inputs:
        if source and exists and same_file(path, source):
            raise InputError(f"{path}: the {what} is an input of this run ({source}); refusing to overwrite it")
    if exists and not stat.S_ISREG(os.stat(path).st_mode):
        raise InputError(f"{path}: the {what} path exists and is {_kind(os.stat(path).st_mode)}")
    if not overwrite:
        raise InputError(f"{path}: {what} file exists (use --overwrite)")


def check_output_path(path: str, inputs: Iterable[str], overwrite: bool, what: str = "output") -> None:
    """Refuse an output path that cannot or must not be written, before any work is done.

    Refused: an empty path, a directory, anything but a regular file where something exists, an
    existing file without ``overwrite``, any of ``inputs`` (always), and a directory that does not
    exist or cannot be written.
    """
    if not path or not str(path).strip():
        raise InputError(f"the {what} path is empty")
    if str(path).endswith(os.sep) or os.path.isdir(path):
        raise InputError(f"{path}: the {what} path is a directory; name a file")
    _refuse_existing(path, inputs, overwrite, what)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise InputError(f"{path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{path}: directory {parent} is not writable")
