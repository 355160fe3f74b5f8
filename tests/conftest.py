import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("NUMBA_CACHE_DIR", str(ROOT / ".numba-cache"))


@pytest.fixture
def rng():
    import numpy as np

    return np.random.default_rng(12345)


@pytest.fixture(scope="session", autouse=True)
def _kernels_compiled_once():
    """Compile the numba kernels once, into NUMBA_CACHE_DIR, before any test starts runs in
    subprocesses: on a fresh machine, concurrent runs (tests/reliability/test_concurrency.py)
    would otherwise all compile them at once."""
    from mpidcr.config import DcrConfig
    from mpidcr.warmup import warm_up

    config = DcrConfig(effectiveWavelength=476.31, bandwidth=147.0)
    for tiled in (False, True):
        warm_up(config, tiled=tiled, psf_aware=False)
