"""Shared fixtures: the backends every engine test runs on, and the GPU skip rule.

``backend`` is parametrised over NumPy and array-api-strict always, and CuPy when a
CUDA device is usable (those cases carry the ``gpu`` marker). Tests marked ``gpu``
skip with the reason when CuPy or a device is missing.
"""

from __future__ import annotations

import pytest

from mlpx.backends import ArrayAPIBackend, cuda_available, get_backend

_HAS_CUDA = cuda_available()
GPU_SKIP_REASON = "needs CuPy and a CUDA device (pip install 'mlpx[gpu]' on a machine with an NVIDIA GPU)"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _HAS_CUDA:
        return
    skip = pytest.mark.skip(reason=GPU_SKIP_REASON)
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


BACKEND_PARAMS = [
    pytest.param("cpu", id="numpy"),
    pytest.param("array_api_strict", id="array-api-strict"),
    pytest.param("gpu", id="cupy", marks=pytest.mark.gpu),
]


@pytest.fixture(params=BACKEND_PARAMS)
def backend(request: pytest.FixtureRequest):
    """Every available backend; the GPU case skips (with its reason) without CUDA."""
    if request.param == "gpu" and not _HAS_CUDA:
        pytest.skip(GPU_SKIP_REASON)
    return get_backend(request.param)


@pytest.fixture
def strict_backend():
    return ArrayAPIBackend("array_api_strict")
