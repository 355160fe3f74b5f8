"""The architecture, enforced: the layers of docs/design.md, MPI only in parallel/, numba only in kernels/.

The import graph is read from the source (every ``import``, also those inside functions), so a
lazy import that crosses a layer is caught as well as a module-level one.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "mpidcr"

#: Layers, lowest first: a module may import modules of its own layer or below, never above.
LAYERS: list[tuple[str, list[str]]] = [
    ("foundations", ["errors", "dcr", "config", "tiling", "masks", "halo", "logs", "preemption", "resources", "psf"]),
    ("kernels", ["kernels"]),
    ("numerical core", ["reduction", "coadd", "update", "solver", "warmup", "artifacts", "finishing"]),
    ("parallel and files", ["parallel", "io"]),
    ("composition", ["rejection", "driver", "subregions"]),
    ("tools", ["sim", "analysis"]),
    ("command line", ["cli", "__main__", "api", "__init__"]),
]


def layer_of(module: str) -> int:
    """Layer index of a module ``mpidcr.a.b`` (by its first component)."""
    head = module.split(".")[1] if module.count(".") else "__init__"
    for index, (_, names) in enumerate(LAYERS):
        if head in names:
            return index
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def module_name(path: Path, package: Path) -> str:
    rel = path.relative_to(package.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path, package: Path) -> set[str]:
    """The mpidcr modules a source file imports (absolute names), lazy imports included."""
    name = module_name(path, package)
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == package.name}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                target = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != package.name:
                continue
            out.add(target)
            out |= {f"{target}.{a.name}" for a in node.names if (package.parent / f"{target}.{a.name}".replace(".", "/")).with_suffix(".py").exists()
                    or (package.parent / f"{target}.{a.name}".replace(".", "/")).is_dir()}  # fmt: skip
    return out


def violations(package: Path) -> list[str]:
    """Every import of a module from a higher layer, as 'importer -> imported'."""
    found = []
    for path in sorted(package.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        importer = module_name(path, package)
        for imported in sorted(imports_of(path, package)):
            if imported == package.name:
                continue
            if layer_of(imported) > layer_of(importer):
                found.append(f"{importer} ({LAYERS[layer_of(importer)][0]}) -> {imported} "
                             f"({LAYERS[layer_of(imported)][0]})")  # fmt: skip
    return found


def test_no_module_imports_from_a_higher_layer():
    assert violations(PACKAGE) == []


def test_a_crossed_layer_is_caught(tmp_path):
    """A deliberate violation: the physics importing the driver (here inside a function)."""
    import shutil

    copy = tmp_path / "mpidcr"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    dcr = copy / "dcr.py"
    dcr.write_text(dcr.read_text() + "\n\ndef _bad():\n    from .driver import run\n    return run\n")
    solver = copy / "solver.py"
    solver.write_text(solver.read_text() + "\nfrom mpidcr.sim import field  # noqa\n")
    assert violations(copy) == [
        "mpidcr.dcr (foundations) -> mpidcr.driver (composition)",
        "mpidcr.solver (numerical core) -> mpidcr.sim (tools)",
        "mpidcr.solver (numerical core) -> mpidcr.sim.field (tools)",
    ]


def test_core_imports_without_mpi4py():
    code = (
        "import sys; sys.modules['mpi4py'] = None\n"
        "import mpidcr.config, mpidcr.dcr, mpidcr.kernels, mpidcr.solver, mpidcr.tiling, mpidcr.coadd\n"
        "import mpidcr.reduction, mpidcr.update, mpidcr.warmup, mpidcr.sim.field\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_only_parallel_layer_imports_mpi4py():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if "parallel" in path.relative_to(PACKAGE).parts:
            continue
        text = path.read_text()
        if "import mpi4py" in text or "from mpi4py" in text:
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_numba_only_in_kernels():
    offenders = [
        str(p.relative_to(ROOT))
        for p in PACKAGE.rglob("*.py")
        if "kernels" not in p.parts and ("import numba" in p.read_text() or "from numba" in p.read_text())
    ]
    assert offenders == []
