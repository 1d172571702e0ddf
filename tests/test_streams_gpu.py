"""Streamed input on the GPU path, run on the strict CuPy stand-in (tests/strict_cupy).

A store or a stream of batches reaches a GPU through :class:`mlpx.streams.UploadedBatches`:
the background reader's rows are written into the pinned staging buffers of
:class:`mlpx.data.StreamedBatches` and uploaded on its copy stream. Under every legal
schedule of the copy and compute streams the minibatches must arrive intact (checked
against NumPy indexing of the source), and a fit must give the CPU fit's weights.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import mlpx
from mlpx.chunked import ArrayFeed, BlockShuffle
from mlpx.streams import UploadedBatches
from strict_cupy.fixtures import gpu, strict_cupy  # noqa: F401 - fixtures

zarr = pytest.importorskip("zarr", reason='the store tests need zarr: pip install "mlpx[data]"')

SCHEDULES = [
    pytest.param({}, id="lazy"),
    pytest.param({"null_schedule": "eager"}, id="eager-compute"),
    pytest.param({"stream_schedule": "eager"}, id="eager-copy"),
]
F64 = dict(rtol=1e-9, atol=1e-12)


def _data(n: int = 150, d: int = 6, k: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=2.0, size=(k, d))
    y = np.arange(n) % k
    return centers[y] + rng.normal(size=(n, d)), y, rng.uniform(0.5, 2.0, n)


def _zarr(X: np.ndarray, path: Any, chunk: int = 16) -> Any:
    z = zarr.open_array(str(path / "X.zarr"), mode="w", shape=X.shape, dtype=X.dtype, chunks=(chunk, X.shape[1]))
    z[...] = X
    return z


@pytest.mark.parametrize("strict_cupy", SCHEDULES, indirect=True)
@pytest.mark.parametrize("form", ["zarr-in-order", "zarr-block-shuffle", "generator"])
def test_streamed_gpu_fit_equals_the_cpu_fit(strict_cupy, tmp_path, form: str) -> None:
    X, y, w = _data()

    def data() -> tuple[Any, Any, Any, Any]:
        if form == "generator":
            return (lambda: ((X[a:a + 16], y[a:a + 16], w[a:a + 16]) for a in range(0, len(y), 16))), None, None, False
        shuffle = BlockShuffle(window=40) if form == "zarr-block-shuffle" else False
        return _zarr(X, tmp_path), y, w, shuffle

    params = {}
    for backend in ("gpu", "cpu"):
        model = mlpx.MLP([6, 16, 3], backend=backend, dtype="float64", seed=0)
        Xs, ys, ws, shuffle = data()
        hist = model.fit(Xs, ys, epochs=3, batch_size=16, sample_weight=ws, shuffle=shuffle,
                         validation_data=(X[:40], y[:40]))
        params[backend] = (model.get_flat_params(), hist.history["val_loss"])
    np.testing.assert_allclose(params["gpu"][0], params["cpu"][0], **F64)
    np.testing.assert_allclose(params["gpu"][1], params["cpu"][1], **F64)


@pytest.mark.parametrize("strict_cupy", SCHEDULES, indirect=True)
def test_streamed_gpu_fit_equals_the_resident_gpu_fit(strict_cupy, tmp_path) -> None:
    X, y, w = _data()
    got, want = (mlpx.MLP([6, 16, 3], backend="gpu", seed=0) for _ in range(2))
    want.fit(X, y, epochs=2, batch_size=16, sample_weight=w, shuffle=False)
    got.fit(_zarr(X, tmp_path), y, epochs=2, batch_size=16, sample_weight=w, shuffle=False)
    np.testing.assert_array_equal(got.get_flat_params(), want.get_flat_params())
    np.testing.assert_array_equal(got.predict(_zarr(X, tmp_path)), want.predict(X))


@pytest.mark.parametrize("strict_cupy", SCHEDULES, indirect=True)
def test_uploaded_minibatches_arrive_intact_under_every_schedule(gpu, tmp_path) -> None:
    """Each minibatch, as the compute stream reads it inside the loop body, is
    X[perm[a:b]] of the feed's order (NumPy indexing of the source)."""
    rng = np.random.default_rng(3)
    X, Y, w = rng.normal(size=(90, 4)), rng.normal(size=(90, 2)), rng.uniform(0.5, 2, 90)
    feed = ArrayFeed(_zarr(X, tmp_path, chunk=8), Y, w, batch_size=16, dtype="float32",
                     encode=lambda yy: np.asarray(yy, dtype=np.float64), shuffle=BlockShuffle(window=30))
    batches = UploadedBatches(gpu, feed, "float32", "float32", 4, 2, weighted=True)
    order = feed.order(np.random.default_rng(1))
    for _epoch in range(3):  # buffers and events carry over between epochs
        perm = order()
        seen = [(Xb.copy(), Yb.copy(), wb.copy(), a, b) for Xb, Yb, wb, a, b in batches.epoch(perm)]
        assert [b for *_, b in seen][-1] == 90
        for Xb, Yb, wb, a, b in seen:
            rows = perm[a:b]
            np.testing.assert_array_equal(gpu.to_numpy(Xb), X[rows].astype(np.float32))
            np.testing.assert_array_equal(gpu.to_numpy(Yb), Y[rows].astype(np.float32))
            np.testing.assert_array_equal(gpu.to_numpy(wb), w[rows].astype(np.float32))
