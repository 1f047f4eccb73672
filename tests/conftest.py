"""pytest's fixtures shared by the test modules; their helpers are in the ``helpers`` package."""
import os

import pytest
import torch

from helpers import IMG, tiny_vit

if os.environ.get("PYTEST_XDIST_WORKER"):
    # one thread per worker (pyproject runs two on two cores): torch's default of one per core makes two workers
    # contend for the cores, and a test of many small operations then ran 10x slower beside an export
    torch.set_num_threads(1)


@pytest.fixture
def pair_s_l():
    """Depths 3/6 (ratio 2, like DeiT3-S/L; every stitch kind occurs), widths 32/48."""
    return tiny_vit(3, 32, seed=1), tiny_vit(6, 48, heads=3, seed=2)


@pytest.fixture
def images():
    torch.manual_seed(123)
    return torch.randn(3, 3, IMG, IMG)
