"""Parse the seed task's configuration listing (``DcrAssembleCoaddTask-config.txt``).

Used only by the tests, to check that mpidcr's configuration carries every seed
field and subtask with the seed's name and default.
"""

from __future__ import annotations

import ast
from pathlib import Path

SEED_CANDIDATES = [
    Path(__file__).resolve().parent / "data" / "DcrAssembleCoaddTask-config.txt",
]


def seed_path() -> Path:
    for p in SEED_CANDIDATES:
        if p.exists():
            return p
    raise FileNotFoundError("seed configuration listing not found")


def parse_seed(path: Path | None = None) -> tuple[dict[str, object], list[str]]:
    """Return ({field name: default}, [subtask names]) from the seed listing.

    Fields whose default is not a Python literal (ConfigField sections) map to
    the sentinel string ``"<ConfigField>"``.
    """
    lines = [ln.rstrip() for ln in (path or seed_path()).read_text().splitlines()]
    lines = [ln for ln in lines if ln.strip()]
    sub_start = lines.index("Retargetable subtasks")
    fld_start = lines.index("Configuration fields")
    subtasks = [
        lines[i - 1] for i in range(sub_start + 1, fld_start) if lines[i] == "Default" and lines[i + 2] == "Field type"
    ]
    fields: dict[str, object] = {}
    i = fld_start + 1
    while i < len(lines):
        if i + 1 < len(lines) and lines[i + 1] in ("Default", "Data type"):
            name = lines[i]
            if lines[i + 1] == "Default":
                raw = lines[i + 2]
                fields[name] = ast.literal_eval(raw)
            else:
                fields[name] = "<ConfigField>"
            i += 3
        else:
            i += 1
    return fields, subtasks
