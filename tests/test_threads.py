"""Inference from many threads at once, and during ``fit``.

``predict``, ``predict_proba``, ``evaluate`` and ``score`` of the engine and the
estimators must return the single-threaded result from any number of threads
(each thread has its own workspaces; the engine's probabilities to rounding, see
below); a prediction made while ``fit`` runs
in another thread sees one consistent set of weights, from between two updates
(the model's parameter lock).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import mlpx
from mlpx.locking import ReadWriteLock

# Short fits on purpose: the estimators' ConvergenceWarning is expected here.
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def _data(n: int = 512, d: int = 20, k: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng.integers(0, k, n)


def _hammer(fn, inputs, threads: int = 8, rounds: int = 6) -> list:
    """Run ``fn`` on every input from ``threads`` threads at once, ``rounds`` times."""
    barrier = threading.Barrier(threads)

    def work(i: int) -> list:
        barrier.wait()
        return [fn(inputs[(i + r) % len(inputs)]) for r in range(rounds)]

    with ThreadPoolExecutor(threads) as pool:
        return [(i, out) for i, out in enumerate(pool.map(work, range(threads)))]


@pytest.mark.parametrize("method", ["predict_proba", "predict", "evaluate"])
def test_engine_inference_from_many_threads_is_exact(backend, method: str) -> None:
    X, y = _data()
    model = mlpx.MLP([20, 64, 32, 4], backend=backend, seed=0)
    model.fit(X, y, epochs=1, batch_size=64)
    # Same batch size in every thread: the case that shared one workspace before.
    inputs = [np.roll(X, 7 * s, axis=0) for s in range(4)]
    call = {
        "predict_proba": lambda x: model.predict_proba(x),
        "predict": lambda x: model.predict(x),
        "evaluate": lambda x: model.evaluate(x, y),
    }[method]
    want = [call(x) for x in inputs]
    # Rounding only: called from several threads at once, OpenBLAS may run a product
    # that has the cores to itself when alone on fewer threads, and its AVX-512
    # kernels split the rows differently then (last bits of float32). A workspace
    # shared between threads would give wrong rows, far beyond this bound.
    for i, outs in _hammer(call, inputs):
        for r, got in enumerate(outs):
            ref = want[(i + r) % len(inputs)]
            if isinstance(ref, dict):
                assert got.keys() == ref.keys()
                for key in ref:
                    np.testing.assert_allclose(got[key], ref[key], rtol=1e-6, atol=0, err_msg=key)
            elif method == "predict":
                np.testing.assert_array_equal(got, ref)
            else:
                np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", ["classifier", "regressor"])
def test_estimator_inference_from_many_threads_is_exact(kind: str) -> None:
    pytest.importorskip("sklearn")
    X, y = _data(n=300)
    if kind == "classifier":
        est = mlpx.MLPClassifier(hidden_layer_sizes=(32,), max_iter=3, random_state=0).fit(X, y)
        calls = [est.predict_proba, est.predict, lambda x: est.score(x, y)]
    else:
        t = X[:, :2] @ np.array([[1.0, -1.0], [0.5, 2.0]])
        est = mlpx.MLPRegressor(hidden_layer_sizes=(32,), max_iter=3, random_state=0).fit(X, t)
        calls = [est.predict, lambda x: est.score(x, t)]
    inputs = [np.roll(X, 5 * s, axis=0) for s in range(3)]
    for call in calls:
        want = [call(x) for x in inputs]
        for i, outs in _hammer(call, inputs, threads=6, rounds=4):
            for r, got in enumerate(outs):
                np.testing.assert_array_equal(got, want[(i + r) % len(inputs)])


def test_prediction_during_fit_sees_one_set_of_weights() -> None:
    """Every prediction made while another thread trains equals the prediction of the
    weights read under the same lock: never a mix of two updates."""
    X, y = _data(n=2048, d=32)
    model = mlpx.MLP([32, 256, 256, 4], dtype="float64", seed=0)
    checks: list[tuple[np.ndarray, np.ndarray]] = []
    stop = threading.Event()

    def predictor() -> None:
        while not stop.is_set():
            with model.parameter_lock.read():  # re-entrant: predict_proba reads too
                flat = model.get_flat_params()
                got = model.predict_proba(X[:256])
            checks.append((flat, got))

    t = threading.Thread(target=predictor)
    t.start()
    try:
        model.fit(X, y, epochs=3, batch_size=32, optimizer=mlpx.SGD(lr=0.05))
    finally:
        stop.set()
        t.join()
    assert len(checks) >= 3
    twin = mlpx.MLP([32, 256, 256, 4], dtype="float64", seed=0)
    distinct = 0
    for flat, got in checks:
        twin.set_flat_params(flat)
        np.testing.assert_array_equal(got, twin.predict_proba(X[:256]))
        distinct += not np.array_equal(flat, checks[0][0])
    assert distinct  # predictions were made at different moments of training


def test_estimator_prediction_while_another_thread_assigns_coefs() -> None:
    """Assigning ``coefs_`` is picked up by the next prediction; concurrent predictions
    keep returning one of the two models' outputs, never a mix."""
    pytest.importorskip("sklearn")
    X, y = _data(n=200)
    est = mlpx.MLPClassifier(hidden_layer_sizes=(16,), max_iter=2, random_state=0).fit(X, y)
    a = [c.copy() for c in est.coefs_]
    b = [c * 0.5 for c in est.coefs_]
    pa = est.predict_proba(X)
    est.coefs_ = b
    pb = est.predict_proba(X)
    stop = threading.Event()

    def flip() -> None:
        while not stop.is_set():
            est.coefs_ = a
            est.coefs_ = b

    t = threading.Thread(target=flip)
    t.start()
    try:
        for _ in range(30):
            got = est.predict_proba(X)
            assert np.array_equal(got, pa) or np.array_equal(got, pb)
    finally:
        stop.set()
        t.join()


def test_read_write_lock_semantics() -> None:
    lock = ReadWriteLock()
    order: list[str] = []
    with lock.read(), lock.read():  # re-entrant reads
        order.append("nested read")
    with lock.write():
        with lock.read():  # the writer may read its own weights
            order.append("read inside write")
        with lock.write():
            order.append("nested write")
    with lock.read():
        with pytest.raises(RuntimeError, match="cannot write"):
            with lock.write():
                pass
    # A writer waits for readers in flight and holds new readers back.
    started, release = threading.Event(), threading.Event()

    def reader() -> None:
        with lock.read():
            started.set()
            release.wait(5)
            order.append("reader done")

    def writer() -> None:
        started.wait(5)
        with lock.write():
            order.append("writer")

    threads = [threading.Thread(target=reader), threading.Thread(target=writer)]
    for th in threads:
        th.start()
    started.wait(5)
    release.set()
    for th in threads:
        th.join(5)
    assert order[-2:] == ["reader done", "writer"]
