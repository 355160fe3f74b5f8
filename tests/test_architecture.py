"""The layering rule: the numerical core imports without MPI, and only mpidcr/parallel imports mpi4py."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_core_imports_without_mpi4py():
    code = (
        "import sys; sys.modules['mpi4py'] = None\n"
        "import mpidcr.config, mpidcr.dcr, mpidcr.kernels, mpidcr.solver, mpidcr.tiling, mpidcr.coadd\n"
        "import mpidcr.reduction, mpidcr.sim.field\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_only_parallel_layer_imports_mpi4py():
    offenders = []
    for path in (ROOT / "mpidcr").rglob("*.py"):
        if "parallel" in path.relative_to(ROOT / "mpidcr").parts:
            continue
        text = path.read_text()
        if "import mpi4py" in text or "from mpi4py" in text:
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_numba_only_in_kernels():
    offenders = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "mpidcr").rglob("*.py")
        if "kernels" not in p.parts and ("import numba" in p.read_text() or "from numba" in p.read_text())
    ]
    assert offenders == []
