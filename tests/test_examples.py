"""Examples that cannot rot: the README's Python, the tutorial script, and the documentation site."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tutorial(tmp_path_factory):
    out = tmp_path_factory.mktemp("tutorial")
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "tutorial.py"), str(out)], capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return out, proc.stdout


def test_tutorial_runs_and_the_dcr_template_wins(tutorial):
    out, stdout = tutorial
    assert (out / "figures" / "subfilters.png").stat().st_size > 1000
    assert (out / "figures" / "differences.png").stat().st_size > 1000
    assert "on 2 ranks" in stdout or shutil.which("mpiexec") is None
    for dcr, coadd in re.findall(r"DCR template ([\d.]+), plain coadd ([\d.]+)", stdout):
        assert float(dcr) < 0.5 * float(coadd)


def test_readme_python_runs(tutorial, tmp_path, monkeypatch):
    """Every ```python block of the README, run where a model.h5 exists."""
    out, _ = tutorial
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    assert blocks
    shutil.copy(out / "model.h5", tmp_path / "model.h5")
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})


def test_documentation_site_builds_without_warnings(tmp_path):
    sphinx = Path(sys.executable).parent / "sphinx-build"
    if not sphinx.exists():
        pytest.skip("sphinx is not installed (pip install mpidcr[docs])")
    proc = subprocess.run([str(sphinx), "-q", "-W", "--keep-going", "-b", "html", str(ROOT / "docs"), str(tmp_path)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "api.html").exists() and "open_model" in (tmp_path / "api.html").read_text()
