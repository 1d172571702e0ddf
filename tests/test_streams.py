"""Training input beyond in-memory arrays (mlpx.streams, mlpx.chunked, mlpx.prefetch).

The reference is always the in-memory fit of the same rows in the same order: with
``shuffle=False`` a fit read from a generator, a torch ``DataLoader``, an iterable,
zarr, HDF5 (chunked and contiguous) or Dask must give the weights, losses and
scores of ``fit(X, y)`` to 1e-12 in float64. The block shuffle is checked against
its definition (a permutation of whole blocks, rows permuted within windows) and on
digits against the exact shuffle's accuracy.
"""

from __future__ import annotations

import threading
import time
import tracemalloc
from typing import Any, Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mlpx
from mlpx.backends import get_backend
from mlpx.chunked import ArrayFeed, BlockShuffle, block_bounds, block_permutation
from mlpx.prefetch import Prefetcher
from mlpx.streams import FeedBatches, is_batch_stream, is_stream
from mlpx.validation import check_X

zarr = pytest.importorskip("zarr", reason='the store tests need zarr: pip install "mlpx[data]"')
h5py = pytest.importorskip("h5py", reason='the store tests need h5py: pip install "mlpx[data]"')
da = pytest.importorskip("dask.array", reason='the store tests need dask: pip install "mlpx[data]"')
torch = pytest.importorskip("torch", reason="the DataLoader tests need torch")

EXACT = dict(rtol=0, atol=1e-12)
BATCH = 64


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X, y = X[:700] / 16.0, y[:700]
    w = np.random.default_rng(0).uniform(0.2, 3.0, len(y))
    return X, y, w


def _model(seed: int = 0, backend: str = "cpu") -> mlpx.Sequential:
    return mlpx.MLP([64, 24, 10], dtype="float64", seed=seed, backend=backend)


def _batches(X: np.ndarray, y: np.ndarray, w: np.ndarray | None, batch: int = BATCH):
    for a in range(0, len(y), batch):
        yield (X[a:a + batch], y[a:a + batch]) + (() if w is None else (w[a:a + batch],))


class Iterable:
    """A tf.data-like dataset: every ``iter()`` is a new pass (no len, no indexing)."""

    def __init__(self, X: np.ndarray, y: np.ndarray, w: np.ndarray | None = None, batch: int = BATCH) -> None:
        self.X, self.y, self.w, self.batch = X, y, w, batch

    def __iter__(self):
        return _batches(self.X, self.y, self.w, self.batch)


def _loader(X: np.ndarray, y: np.ndarray, w: np.ndarray | None, batch: int = BATCH) -> Any:
    tensors = [torch.from_numpy(X), torch.from_numpy(y)] + ([] if w is None else [torch.from_numpy(w)])
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*tensors), batch_size=batch)


def _store(kind: str, X: np.ndarray, tmp_path: Any, name: str = "X", chunk: int = 37) -> Any:
    if kind == "zarr":
        z = zarr.open_array(str(tmp_path / f"{name}.zarr"), mode="w", shape=X.shape, dtype=X.dtype,
                            chunks=(chunk,) + X.shape[1:])
        z[...] = X
        return z
    if kind in ("hdf5", "hdf5-contiguous"):
        f = h5py.File(tmp_path / f"{name}.h5", "a")
        chunks = (chunk,) + X.shape[1:] if kind == "hdf5" else None
        return f.create_dataset(name, data=X, chunks=chunks)
    if kind == "dask":
        edges = [0, 20, 81, 90, 200, 333, 334, 500, len(X)]  # irregular blocks
        return da.from_array(X, chunks=(tuple(np.diff([e for e in edges if e <= len(X)])),) + X.shape[1:])
    raise AssertionError(kind)


STREAMS = ["generator", "dataloader", "iterable"]
STORES = ["zarr", "hdf5", "hdf5-contiguous", "dask"]


def _as_input(form: str, X: np.ndarray, y: np.ndarray, w: np.ndarray | None, tmp_path: Any, name: str = "X"
              ) -> tuple[Any, Any, Any]:
    """``(X, y, sample_weight)`` to pass to fit in ``form``."""
    if form == "generator":
        return (lambda: _batches(X, y, w)), None, None
    if form == "dataloader":
        return _loader(X, y, w), None, None
    if form == "iterable":
        return Iterable(X, y, w), None, None
    return _store(form, X, tmp_path, name), y, w


# ----------------------------------------------------------------- detection
def test_what_counts_as_a_stream(tmp_path) -> None:
    X = np.zeros((3, 2))
    for data in (X, X.tolist(), (1, 2), {"a": 1}, "text", torch.zeros(3, 2), np.lib.format.open_memmap(
            tmp_path / "m.npy", mode="w+", dtype="f4", shape=(3, 2))):
        assert not is_stream(data), type(data)
    for data in (lambda: iter(()), Iterable(X, np.zeros(3)), _loader(X, np.zeros(3), None)):
        assert is_batch_stream(data) and is_stream(data)
    assert is_stream(_store("zarr", X, tmp_path)) and is_stream(da.from_array(X))


# ------------------------------------------------------------------ exactness
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("form", STREAMS + STORES)
def test_streamed_fit_equals_the_in_memory_fit(digits, tmp_path, form: str, weighted: bool) -> None:
    X, y, w = digits
    w = w if weighted else None
    ref = _model()
    want = ref.fit(X, y, epochs=3, batch_size=BATCH, shuffle=False, sample_weight=w,
                   validation_data=(X[:200], y[:200]))
    data, yy, ww = _as_input(form, X, y, w, tmp_path)
    model = _model()
    got = model.fit(data, yy, epochs=3, batch_size=BATCH, shuffle=False, sample_weight=ww,
                    validation_data=(X[:200], y[:200]))
    np.testing.assert_allclose(model.get_flat_params(), ref.get_flat_params(), **EXACT)
    assert set(got.history) == set(want.history)
    for key, values in want.history.items():
        np.testing.assert_allclose(got.history[key], values, rtol=1e-12, atol=0)
    assert model.samples_seen_ == ref.samples_seen_ == 3 * len(y)


@pytest.mark.parametrize("form", ["generator", "zarr", "dask"])
def test_validation_data_in_the_same_forms(digits, tmp_path, form: str) -> None:
    X, y, w = digits
    Xv, yv, wv = X[:333], y[:333], w[:333]
    ref = _model()
    want = ref.fit(X, y, epochs=2, batch_size=BATCH, validation_data=(Xv, yv, wv))
    data, yy, ww = _as_input(form, Xv, yv, wv, tmp_path, name="Xv")
    validation = data if yy is None else (data, yy, ww)
    got = _model().fit(X, y, epochs=2, batch_size=BATCH, validation_data=validation)
    for key in ("val_loss", "val_accuracy", "loss"):
        np.testing.assert_allclose(got.history[key], want.history[key], rtol=1e-12)


@pytest.mark.parametrize("form", STREAMS + STORES)
def test_evaluate_and_predict_read_the_same_forms(digits, tmp_path, form: str) -> None:
    X, y, w = digits
    model = _model()
    model.fit(X, y, epochs=2, batch_size=BATCH)
    data, yy, ww = _as_input(form, X, y, w, tmp_path)
    got, want = model.evaluate(data, yy, sample_weight=ww), model.evaluate(X, y, sample_weight=w)
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-12)
    np.testing.assert_array_equal(model.predict(data), model.predict(X))
    np.testing.assert_allclose(model.predict_proba(data), model.predict_proba(X), **EXACT)


def test_predict_takes_a_stream_of_bare_feature_batches(digits) -> None:
    X, y, _ = digits
    model = _model()
    model.fit(X, y, epochs=1)
    np.testing.assert_array_equal(model.predict(lambda: (X[a:a + 50] for a in range(0, len(X), 50))),
                                  model.predict(X))
    # one pass: a generator object will do
    np.testing.assert_array_equal(model.predict(X[a:a + 50] for a in range(0, len(X), 50)), model.predict(X))


def test_regression_from_a_store_equals_in_memory(tmp_path) -> None:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 6))
    Y = X @ rng.normal(size=(6, 2)) + 0.1 * rng.normal(size=(300, 2))
    make = lambda: mlpx.MLP([6, 12, 2], activation="tanh", output="identity", dtype="float64", seed=3)  # noqa: E731
    ref, model = make(), make()
    want = ref.fit(X, Y, epochs=4, batch_size=32, shuffle=False, validation_data=(X[:90], Y[:90]))
    zY = _store("zarr", Y, tmp_path, "Y", chunk=50)  # the targets in a store too
    got = model.fit(_store("hdf5", X, tmp_path), zY, epochs=4, batch_size=32, shuffle=False,
                    validation_data=(_store("zarr", X[:90], tmp_path, "Xv"), Y[:90]))
    np.testing.assert_allclose(model.get_flat_params(), ref.get_flat_params(), **EXACT)
    np.testing.assert_allclose(got.history["val_r2"], want.history["val_r2"], rtol=1e-12)
    np.testing.assert_allclose(model.evaluate(_store("dask", X, tmp_path), zY)["r2"], ref.evaluate(X, Y)["r2"],
                               rtol=1e-12)


@pytest.mark.parametrize("form", ["dataloader", "zarr"])
def test_stack_fit_from_streams_equals_the_in_memory_stack(digits, tmp_path, form: str) -> None:
    X, y, w = digits

    def stack() -> mlpx.Stack:
        return mlpx.Stack(_model(), seeds=[0, 5, 9])

    ref = stack()
    want = ref.fit(X, y, epochs=3, batch_size=BATCH, shuffle=False, lr=[1e-3, 3e-3, 1e-2], sample_weight=w)
    data, yy, ww = _as_input(form, X, y, w, tmp_path)
    got_stack = stack()
    got = got_stack.fit(data, yy, epochs=3, batch_size=BATCH, shuffle=False, lr=[1e-3, 3e-3, 1e-2],
                        sample_weight=ww)
    np.testing.assert_allclose(got_stack.get_params_host(), ref.get_params_host(), **EXACT)
    np.testing.assert_allclose(np.asarray(got.history["loss"]), np.asarray(want.history["loss"]), rtol=1e-12)


def test_stack_refuses_what_needs_the_data_in_memory(digits, tmp_path) -> None:
    X, y, _ = digits
    z = _store("zarr", X, tmp_path)
    stack = mlpx.Stack(_model(), seeds=[0, 1])
    with pytest.raises(TypeError, match="y is required"):
        stack.fit(X)
    with pytest.raises(TypeError, match="y is required"):
        _model().evaluate(X)
    with pytest.raises(ValueError, match="per-member rows"):
        stack.fit(z, y, rows=[np.arange(10), np.arange(20)])
    with pytest.raises(ValueError, match="validation_data held in memory"):
        stack.fit(X, y, validation_data=(z, y))


def test_array_api_strict_backend_reads_a_store(digits, tmp_path) -> None:
    X, y, _ = digits
    ref = _model(backend="array_api_strict")
    ref.fit(X, y, epochs=2, batch_size=BATCH, shuffle=False)
    model = _model(backend="array_api_strict")
    model.fit(_store("zarr", X, tmp_path), y, epochs=2, batch_size=BATCH, shuffle=False)
    np.testing.assert_allclose(model.get_flat_params(), ref.get_flat_params(), **EXACT)


@pytest.mark.parametrize("shuffle", [False, BlockShuffle(window=100, block_rows=30)], ids=["in-order", "block"])
def test_the_pinned_upload_path_gives_the_host_path_bits(digits, tmp_path, shuffle: Any) -> None:
    """stream_data=True runs the GPU's double-buffered upload (UploadedBatches) on the CPU."""
    X, y, w = digits
    z = _store("zarr", X, tmp_path)
    params = []
    for stream_data in (None, True):
        model = _model()
        model.fit(z, y, epochs=2, batch_size=BATCH, shuffle=shuffle, sample_weight=w, stream_data=stream_data)
        params.append(model.get_flat_params())
    np.testing.assert_array_equal(params[0], params[1])


@pytest.mark.filterwarnings("ignore:precision=:RuntimeWarning")  # slow on the CPU, and it says so
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_from_a_store_gives_the_in_memory_bits(tmp_path, precision: str) -> None:
    """X converts to the compute dtype as it is gathered (float32 store -> bfloat16 / float16)."""
    if precision == "bf16":
        pytest.importorskip("ml_dtypes")
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(300, 8)).astype(np.float32), rng.integers(0, 3, 300)
    runs = []
    for data in (X, _store("zarr", X, tmp_path, chunk=50)):
        model = mlpx.MLP([8, 16, 3], seed=0, precision=precision)
        model.fit(data, y, epochs=2, batch_size=32, shuffle=False)
        runs.append(model.get_flat_params())
    np.testing.assert_array_equal(runs[0], runs[1])


def test_memmap_keeps_the_exact_shuffle_and_its_bits(digits, tmp_path) -> None:
    """A memory map is a NumPy array: shuffle=True is today's exact shuffle, bit for bit."""
    X, y, _ = digits
    mm = np.lib.format.open_memmap(tmp_path / "X.npy", mode="w+", dtype=X.dtype, shape=X.shape)
    mm[:] = X
    runs = []
    for data in (X, mm):
        model = _model()
        model.fit(data, y, epochs=2, batch_size=BATCH)
        runs.append(model.get_flat_params())
    np.testing.assert_array_equal(runs[0], runs[1])


# ------------------------------------------------------------- block shuffle
@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(1, 40), min_size=1, max_size=30), window=st.integers(1, 150),
       seed=st.integers(0, 2**16))
def test_block_permutation_is_its_definition(sizes: list[int], window: int, seed: int) -> None:
    sizes = np.array(sizes)
    n = int(sizes.sum())
    offsets = np.cumsum(sizes) - sizes
    perm, windows = block_permutation(sizes, window, np.random.default_rng(seed))
    np.testing.assert_array_equal(np.sort(perm), np.arange(n))  # a permutation of the rows
    assert [w.p0 for w in windows] == [0] + [w.p1 for w in windows[:-1]] and windows[-1].p1 == n
    seen = []
    for k, w in enumerate(windows):
        rows = perm[w.p0:w.p1]
        blocks = set(w.blocks.tolist())
        want = np.concatenate([np.arange(offsets[b], offsets[b] + sizes[b]) for b in w.blocks])
        np.testing.assert_array_equal(np.sort(rows), np.sort(want))  # the window holds whole blocks
        assert k == len(windows) - 1 or len(rows) >= window  # at least `window` rows, but the last
        assert len(rows) - sizes[w.blocks[-1]] < window  # and no block more than needed
        seen += list(blocks)
    assert sorted(seen) == list(range(sizes.size))  # every block once
    again, _ = block_permutation(sizes, window, np.random.default_rng(seed))
    np.testing.assert_array_equal(perm, again)


def test_one_window_over_all_rows_is_a_uniform_shuffle() -> None:
    """With the window covering the data the order is uniform: every row is equally likely
    in the first place (a chi-square check over 4000 draws)."""
    sizes = np.full(8, 5)
    rng = np.random.default_rng(0)
    counts = np.zeros(40)
    for _ in range(4000):
        perm, windows = block_permutation(sizes, 40, rng)
        assert len(windows) == 1
        counts[perm[0]] += 1
    chi2 = ((counts - 100.0) ** 2 / 100.0).sum()
    assert chi2 < 77  # 39 degrees of freedom: p = 0.9997 bound


def test_block_bounds_follow_the_storage_chunks(tmp_path) -> None:
    X = np.zeros((100, 3), dtype=np.float32)
    np.testing.assert_array_equal(block_bounds(_store("zarr", X, tmp_path, chunk=30)), [0, 30, 60, 90, 100])
    np.testing.assert_array_equal(block_bounds(_store("zarr", X, tmp_path, chunk=30), 45), [0, 60, 100])
    np.testing.assert_array_equal(block_bounds(_store("hdf5", X, tmp_path, chunk=40)), [0, 40, 80, 100])
    np.testing.assert_array_equal(block_bounds(da.from_array(X, chunks=((10, 50, 40), (3,))), 30), [0, 60, 100])
    # no chunks: 1 MiB of rows
    assert block_bounds(np.zeros((10**6, 8), np.float32))[1] == 2**20 // 32


def test_block_shuffled_minibatches_are_the_rows_of_the_order(tmp_path) -> None:
    """Every minibatch is X[perm[a:b]] of the order the feed gave (independent: NumPy indexing)."""
    rng = np.random.default_rng(2)
    X = rng.normal(size=(203, 4))
    Y = rng.normal(size=(203, 2))
    w = rng.uniform(0.5, 2, 203)
    encode = lambda y: np.asarray(y, dtype=np.float64)  # noqa: E731
    be = get_backend("cpu")
    for store in (_store("zarr", X, tmp_path, chunk=16), _store("dask", X, tmp_path)):
        feed = ArrayFeed(store, Y, w, batch_size=24, dtype="float32", encode=encode,
                         shuffle=BlockShuffle(window=50))
        source = FeedBatches(be, feed, "float32", "float64", 4, 2, weighted=True)
        order = feed.order(np.random.default_rng(0))
        for _epoch in range(2):
            perm = order()
            D = source.denominators(perm)
            for j, (Xb, Yb, wb, a, b) in enumerate(source.epoch(perm)):
                idx = perm[a:b]
                np.testing.assert_array_equal(Xb, X[idx].astype(np.float32))
                np.testing.assert_array_equal(Yb, Y[idx])
                np.testing.assert_array_equal(wb, w[idx])
                assert D[j] == pytest.approx(w[idx].sum(), rel=1e-15)


def test_documented_shuffle_reaches_the_in_memory_accuracy_on_digits(tmp_path) -> None:
    """Digits as stored (load_digits' order, the last quarter held out), in a zarr store
    of 32-row chunks read through windows of 256 rows (five windows an epoch): the test
    accuracy, averaged over 8 seeds, is within 0.5 percentage points of the exact
    in-memory shuffle's."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X_tr, X_te, y_tr, y_te = train_test_split(X / 16.0, y, test_size=0.25, shuffle=False)
    z = _store("zarr", X_tr, tmp_path, chunk=32)
    acc: dict[str, list[float]] = {"exact": [], "block": []}
    for seed in range(8):
        for kind, data, shuffle in (("exact", X_tr, True), ("block", z, BlockShuffle(window=256))):
            model = mlpx.MLP([64, 64, 10], seed=seed)
            model.fit(data, y_tr, epochs=20, batch_size=32, lr=3e-3, shuffle=shuffle)
            acc[kind].append(model.evaluate(X_te, y_te)["accuracy"])
    assert np.mean(acc["block"]) >= np.mean(acc["exact"]) - 0.005, acc


# ------------------------------------------------------------------- errors
def _one_shot(X, y):
    return _batches(X, y, None)


@pytest.mark.parametrize("case, error, match", [
    ("one-shot generator", TypeError, "pass a function that returns a new one"),
    ("y with a stream", TypeError, "carries its own targets"),
    ("no y with an array", TypeError, "y is required"),
    ("validation_split", ValueError, "validation_split needs the data in memory"),
    ("stream_data=False", ValueError, "stream_data=False"),
    ("BlockShuffle on a stream", ValueError, "its own order"),
    ("bad batch form", TypeError, r"each batch must be \(X, y\)"),
    ("wrong width in a store", ValueError, "has 3 features, but the model expects 64"),
    ("wrong width in a batch", ValueError, "X of batch 2 has 3 features"),
    ("label out of range", ValueError, "labels range over"),
    ("mixed weights", ValueError, "some batches of the stream have weights"),
    ("bad window", mlpx.InvalidParameterError, "window must be a positive integer"),
])
def test_bad_streamed_input_is_refused_before_training(digits, tmp_path, case: str, error: type, match: str) -> None:
    X, y, w = digits
    z = _store("zarr", X, tmp_path)
    bad_width = lambda: ((X[a:a + 64, :3] if a == 128 else X[a:a + 64], y[a:a + 64]) for a in range(0, 700, 64))  # noqa
    bad_label = lambda: ((X[a:a + 64], y[a:a + 64] + (20 if a == 640 else 0)) for a in range(0, 700, 64))  # noqa
    mixed = lambda: ((X[a:a + 64], y[a:a + 64]) + ((w[a:a + 64],) if a else ()) for a in range(0, 700, 64))  # noqa
    calls: dict[str, Callable[[mlpx.Sequential], Any]] = {
        "one-shot generator": lambda m: m.fit(_one_shot(X, y)),
        "y with a stream": lambda m: m.fit(lambda: _batches(X, y, None), y),
        "no y with an array": lambda m: m.fit(X),
        "validation_split": lambda m: m.fit(z, y, validation_split=0.2),
        "stream_data=False": lambda m: m.fit(z, y, stream_data=False),
        "BlockShuffle on a stream": lambda m: m.fit(lambda: _batches(X, y, None), shuffle=BlockShuffle()),
        "bad batch form": lambda m: m.fit(lambda: iter([X[:5]])),
        "wrong width in a store": lambda m: m.fit(_store("zarr", X[:, :3], tmp_path, "narrow"), y),
        "wrong width in a batch": lambda m: m.fit(bad_width),
        "label out of range": lambda m: m.fit(bad_label),
        "mixed weights": lambda m: m.fit(mixed),
        "bad window": lambda m: m.fit(z, y, shuffle=BlockShuffle(window=0)),
    }
    model = _model()
    before = model.get_flat_params()
    with pytest.raises(error, match=match):
        calls[case](model)
    np.testing.assert_array_equal(model.get_flat_params(), before)  # nothing trained
    assert not [t for t in threading.enumerate() if t.name.startswith("mlpx-")]


def test_nan_in_a_store_is_named_by_its_row_and_the_reader_stops(digits, tmp_path) -> None:
    X, y, _ = digits
    Xn = X.copy()
    Xn[517, 3] = np.nan
    model = _model()
    with pytest.raises(ValueError, match=r"row 517\)"):
        model.fit(_store("zarr", Xn, tmp_path), y, epochs=1, shuffle=False)
    assert not [t for t in threading.enumerate() if t.name.startswith("mlpx-")]


@pytest.mark.parametrize("change, match", [
    ("fewer", "the stream ended after"),
    ("more", "more than the"),
    ("sizes", "has 32 rows in this epoch"),
])
def test_a_stream_that_changes_between_epochs_is_refused(digits, change: str, match: str) -> None:
    X, y, _ = digits
    passes = []

    def factory():
        passes.append(1)
        later = len(passes) > 1
        batch = 32 if (change == "sizes" and later) else BATCH
        stop = len(y) - (BATCH if change == "fewer" and later else 0) + (BATCH if change == "more" and later else 0)
        return ((X[a % len(y):a % len(y) + batch], y[a % len(y):a % len(y) + batch]) for a in range(0, stop, batch))

    with pytest.raises(ValueError, match=match):
        _model().fit(factory, epochs=2, batch_size=BATCH)


def test_weights_that_move_between_epochs_keep_each_batch_a_weighted_mean(digits) -> None:
    """A loader that reshuffles weighted rows changes each batch's weight sum from epoch to
    epoch. Scaling a batch's weights by any factor leaves its weighted-mean gradient
    unchanged, so a stream whose epoch-e weights are c_e·w trains as the in-memory fit."""
    X, y, w = digits
    ref = _model()
    ref.fit(X, y, epochs=3, batch_size=BATCH, shuffle=False, sample_weight=w)
    passes = []

    def factory():
        passes.append(1)
        c = [1.0, 1.0, 2.5, 0.3][len(passes) - 1]  # the counting pass, then three epochs
        return ((X[a:a + BATCH], y[a:a + BATCH], c * w[a:a + BATCH]) for a in range(0, len(y), BATCH))

    model = _model()
    model.fit(factory, epochs=3)
    np.testing.assert_allclose(model.get_flat_params(), ref.get_flat_params(), rtol=0, atol=1e-11)


# ---------------------------------------------------------- background reading
def test_the_reader_runs_ahead_while_a_step_computes(digits) -> None:
    X, y, _ = digits
    produced = []

    def factory():
        for a in range(0, len(y), BATCH):
            produced.append(a)
            yield X[a:a + BATCH], y[a:a + BATCH]

    model = _model()
    from mlpx.streams import training_source
    from mlpx.distributed import LocalReducer

    source, _ = training_source(model, LocalReducer("cpu"), factory, None, None, BATCH, False, 0.0, None,
                                np.random.default_rng(0), None)
    produced.clear()  # the counting pass
    batches = source.epoch(None)
    next(batches)  # step 0 "computes" now; the reader keeps going without being asked
    deadline = time.monotonic() + 10
    while len(produced) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(produced) >= 4
    batches.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("mlpx-")]


def test_prefetcher_raises_the_producers_error_in_order_and_stays_bounded() -> None:
    made = []

    def produce(p: Prefetcher) -> None:
        for i in range(100):
            made.append(i)
            if i == 5:
                raise KeyError("boom")
            p.emit(i)

    with Prefetcher(produce, depth=2) as p:
        time.sleep(0.2)
        assert len(made) <= 4  # two queued, one waiting to be queued, one being made
        assert [p.get() for _ in range(5)] == [0, 1, 2, 3, 4]
        with pytest.raises(KeyError, match="boom"):
            p.get()


def test_prefetcher_close_stops_a_producer_waiting_for_room() -> None:
    p = Prefetcher(lambda p: [p.emit(i) for i in range(10**6)], depth=1)
    assert p.get() == 0
    p.close()
    assert not p._thread.is_alive()
    with pytest.raises(RuntimeError, match="closed"):
        p.get()


# ------------------------------------------------------------------ memory
def test_check_X_scans_a_large_array_in_bounded_memory(tmp_path) -> None:
    """np.isfinite over a whole memory map would allocate a quarter of the file (float32)."""
    mm = np.lib.format.open_memmap(tmp_path / "big.npy", mode="w+", dtype=np.float32, shape=(2**16, 256))
    mm[:] = 1.0
    tracemalloc.start()
    check_X(mm, get_backend("cpu"), 256)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < mm.size // 2  # whole: mm.size bytes of booleans (16 MiB)
    mm[-1, -1] = np.inf
    with pytest.raises(ValueError, match="NaN or infinity"):
        check_X(mm, get_backend("cpu"), 256)


def test_a_store_trains_in_memory_bounded_by_its_windows(tmp_path) -> None:
    """A 32 MiB store read in 1 MiB windows: the host allocations of a whole epoch stay
    near the window buffers, not the data (tracemalloc sees NumPy's allocations)."""
    rng = np.random.default_rng(0)
    n, f = 2**15, 256
    z = zarr.open_array(str(tmp_path / "big.zarr"), mode="w", shape=(n, f), dtype="float32", chunks=(256, f))
    for a in range(0, n, 4096):
        z[a:a + 4096] = rng.normal(size=(4096, f)).astype(np.float32)
    y = rng.integers(0, 4, n)
    model = mlpx.MLP([f, 8, 4], seed=0)
    model.fit(z[:512], y[:512], epochs=1)  # allocate the model's workspaces first
    tracemalloc.start()
    model.fit(z, y, epochs=1, batch_size=256, shuffle=BlockShuffle(window=1024))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 12 * 2**20, peak / 2**20  # 32 MiB of data; ~6 windows of 1 MiB, perm and y


# --------------------------------------------------------------- estimators
@pytest.mark.filterwarnings("ignore:Got `batch_size` less than 1:UserWarning")  # the last batch, both libraries
def test_estimators_keep_the_array_contract_and_partial_fit_streams(digits) -> None:
    """partial_fit per batch is the estimators' route for streams, and gives what
    scikit-learn's own partial_fit gives on the same batches."""
    from sklearn.neural_network import MLPClassifier as SkMLP

    X, y, _ = digits
    kw = dict(hidden_layer_sizes=(16,), batch_size=BATCH, random_state=0, shuffle=False)
    ours, theirs = mlpx.MLPClassifier(**kw), SkMLP(**kw)
    loader = _loader(X, y, None)
    for _epoch in range(2):
        for Xb, yb in loader:
            ours.partial_fit(Xb.numpy(), yb.numpy(), classes=np.arange(10))
            theirs.partial_fit(Xb.numpy(), yb.numpy(), classes=np.arange(10))
    for a, b in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-11)
    with pytest.raises(TypeError, match="partial_fit"):
        mlpx.MLPClassifier().fit(loader, None)
    with pytest.raises(TypeError, match="partial_fit"):
        ours.predict(lambda: iter([X]))
