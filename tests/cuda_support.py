"""The skips that go with the ``cuda`` marker (pytest.ini): tests of the CUDA path.

    pytestmark = [pytest.mark.cuda, needs_cuda]      # every test of a module
    @pytest.mark.cuda
    @needs_cuda                                      # one test

``pytest -m cuda`` selects them. Where no CUDA device is visible every one of them is
skipped with :data:`NO_CUDA` as the reason; the narrower skips below (warp-rnnt, a second
GPU) only apply on a machine that has CUDA.
"""

import importlib.util

import pytest
import torch

NO_CUDA = "needs a CUDA GPU (torch.cuda.is_available() is False)"
HAS_CUDA = torch.cuda.is_available()

needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason=NO_CUDA)

needs_warp_rnnt = pytest.mark.skipif(
    HAS_CUDA and importlib.util.find_spec("warp_rnnt") is None,
    reason="warp-rnnt is not installed (pip install -e '.[cuda]' on a GPU machine)")


def needs_gpus(n: int) -> pytest.MarkDecorator:
    """On a CUDA machine, skip unless at least ``n`` CUDA devices are visible."""
    count = torch.cuda.device_count() if HAS_CUDA else 0
    return pytest.mark.skipif(HAS_CUDA and count < n, reason=f"needs {n} CUDA GPUs ({count} visible)")
