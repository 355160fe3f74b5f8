"""``mpidcr`` run in the test process, as a user would type it."""

from __future__ import annotations

import contextlib
import io

from mpidcr.cli import main


def run_cli(*args) -> tuple[int, str, list[str]]:
    """``mpidcr -q ARGS`` in this process → (exit code, stdout, stderr lines)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(["-q", *map(str, args)])
        except SystemExit as exc:  # argparse's usage errors
            code = exc.code
    return code, out.getvalue(), err.getvalue().strip().splitlines()
