"""``mlpx.set_deterministic``: the same bits whatever BLAS thread count a machine gives.

The reference is the run itself under another thread count (threadpoolctl's limit
stands in for a machine with other cores): OpenBLAS sums a large product's terms
in a thread-dependent order, so without the switch the two runs differ.
"""

from __future__ import annotations

import builtins
import os

import numpy as np
import pytest

import mlpx

threadpoolctl = pytest.importorskip("threadpoolctl")


def _fit(threads: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(512, 784)).astype(np.float32)
    y = rng.integers(0, 10, 512)
    model = mlpx.MLP([784, 512, 10], seed=0)  # 2*256*784*512 flops per product: above SMALL_GEMM_FLOPS
    with threadpoolctl.threadpool_limits(threads, user_api="blas"):
        model.fit(X, y, epochs=2, batch_size=256)
    return model.get_flat_params()


def _blas_threads_matter() -> bool:
    a = np.random.default_rng(1).normal(size=(256, 784)).astype(np.float32)
    b = np.random.default_rng(2).normal(size=(784, 512)).astype(np.float32)
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        one = a @ b
    with threadpoolctl.threadpool_limits(4, user_api="blas"):
        four = a @ b
    return not np.array_equal(one, four)


def test_runs_with_other_blas_threads_give_the_same_bits() -> None:
    if not _blas_threads_matter():
        pytest.skip("this BLAS gives the same bits on 1 and 4 threads: nothing to pin")
    assert not np.array_equal(_fit(1), _fit(4)), "without the switch the thread count shows in the bits"
    with mlpx.deterministic():
        assert mlpx.is_deterministic()
        assert np.array_equal(_fit(1), _fit(4))
    assert not mlpx.is_deterministic()


def test_the_switch_sets_and_restores_the_cublas_workspace(monkeypatch) -> None:
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    mlpx.set_deterministic(True)
    try:
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        mlpx.set_deterministic(False)
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # the user's own setting is kept
    with mlpx.deterministic():
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


def test_without_threadpoolctl_the_switch_refuses(monkeypatch) -> None:
    real = builtins.__import__

    def no_threadpoolctl(name, *args, **kwargs):
        if name == "threadpoolctl":
            raise ImportError("No module named 'threadpoolctl'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_threadpoolctl)
    with pytest.raises(ImportError, match=r'mlpx\[fast\]'):
        mlpx.set_deterministic(True)
    assert not mlpx.is_deterministic()
    with pytest.raises(TypeError):
        mlpx.set_deterministic("yes")
