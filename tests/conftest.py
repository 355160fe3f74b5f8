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
