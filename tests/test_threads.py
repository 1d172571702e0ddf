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


def test_stack_prediction_during_fit_sees_one_set_of_weights_and_leaves_the_fit_running() -> None:
    """A stack trains its members on a thread pool; a prediction from another thread
    during the fit sees every member's weights from between two updates (never a mix),
    and never touches the fit's pool (the fit finishes: nothing shut it down)."""
    X, y = _data(n=2048, d=32)
    template = mlpx.MLP([32, 128, 128, 4], dtype="float64", seed=0)
    stack = mlpx.Stack(template, seeds=[0, 1, 2, 3], threads=2)
    checks: list[tuple[np.ndarray, np.ndarray]] = []
    stop = threading.Event()

    def predictor() -> None:
        while not stop.is_set():
            with stack.parameter_lock.read():  # re-entrant: predict_proba reads too
                flat = stack.get_params_host()
                got = stack.predict_proba(X[:256], combine=None)
            checks.append((flat, got))

    t = threading.Thread(target=predictor)
    t.start()
    try:
        hist = stack.fit(X, y, epochs=3, batch_size=32, optimizer="sgd", lr=0.05)
    finally:
        stop.set()
        t.join()
    assert hist.epochs == 3 and len(checks) >= 3
    twin = mlpx.Stack(template, seeds=[0, 1, 2, 3])
    for flat, got in checks:
        twin.assign_params(flat)
        np.testing.assert_array_equal(got, twin.predict_proba(X[:256], combine=None))
    assert any(not np.array_equal(flat, checks[0][0]) for flat, _ in checks)  # fit moved on meanwhile


def test_stack_refuses_non_finite_member_weights_and_predicts_nothing_from_diverged_members() -> None:
    X, _ = _data(n=16)
    stack = mlpx.Stack(mlpx.MLP([20, 8, 4], dtype="float64", seed=0), seeds=[0, 1])
    before = stack.get_params_host()
    for bad in (np.nan, np.inf):
        w = stack.get_member_params(0)
        w[3] = bad
        with pytest.raises(ValueError, match="NaN or infinity"):
            stack.set_member_params(0, w)
    np.testing.assert_array_equal(stack.get_params_host(), before)
    stack.diverged_[:] = True
    for call in (stack.predict, stack.predict_proba):
        with pytest.raises(mlpx.TrainingDivergedError):
            call(X)
    assert stack.predict_proba(X, combine=None).shape == (2, 16, 4)  # each member's own outputs stay readable


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


# ------------------------------------------------------ one trainer at a time
class _Hold(mlpx.Callback):
    """Holds the fit at its first epoch end until ``release`` is set."""

    def __init__(self) -> None:
        self.started, self.release = threading.Event(), threading.Event()

    def on_epoch_end(self, model, epoch, logs) -> None:
        if epoch == 0:
            self.arrive()

    def arrive(self) -> None:
        self.started.set()
        assert self.release.wait(60)


def _while_held(start_fit, during) -> None:
    """Run ``start_fit(hold)`` in a thread; once it is held inside its fit, run
    ``during()`` here, then let the fit finish (it must succeed)."""
    hold = _Hold()
    outcome: list = []
    t = threading.Thread(target=lambda: outcome.append(start_fit(hold)))
    t.start()
    try:
        assert hold.started.wait(60)
        during()
    finally:
        hold.release.set()
        t.join(60)
    assert outcome == [None]


def _refused(call, match: str) -> None:
    with pytest.raises(mlpx.ConcurrentTrainingError, match=match):
        call()


def test_a_second_trainer_of_one_sequential_is_refused_at_once() -> None:
    """fit, and train_step called directly, from a second thread raise while the first
    thread's fit runs; the first ends exactly as if alone."""
    X, y = _data(n=256)
    model = mlpx.MLP([20, 16, 4], dtype="float64", seed=0)
    loss = model.resolve_loss(None)
    batch = (model.backend.asarray(X[:32]), model.backend.asarray(np.eye(4)[y[:32]]))

    def fit(hold) -> None:
        model.fit(X, y, epochs=3, batch_size=32, callbacks=[hold])

    def attempts() -> None:
        _refused(lambda: model.fit(X, y, epochs=1),
                 r"Sequential.fit was called while another thread is training .*\(in Sequential.fit\)")
        _refused(lambda: model.train_step(*batch, denom=32.0, loss=loss, optimizer=mlpx.SGD()),
                 "Sequential.train_step was called")

    _while_held(fit, attempts)
    alone = mlpx.MLP([20, 16, 4], dtype="float64", seed=0)
    alone.fit(X, y, epochs=3, batch_size=32)
    np.testing.assert_array_equal(model.get_flat_params(), alone.get_flat_params())
    model.fit(X, y, epochs=1)  # free again once the fit returned


def test_train_step_called_directly_guards_itself() -> None:
    """Two threads stepping one model by hand: the second is refused while the first is
    inside its step (held in the optimizer's update)."""
    X, y = _data(n=64)
    model = mlpx.MLP([20, 8, 4], dtype="float64", seed=0)
    be, loss = model.backend, model.resolve_loss(None)
    Xd, Yd = be.asarray(X), be.asarray(np.eye(4)[y])
    hold = _Hold()

    class HeldSGD(mlpx.SGD):
        def update(self, *args, **kwargs):
            hold.arrive()
            return super().update(*args, **kwargs)

    opt = HeldSGD(lr=0.1)
    opt.bind(be, model.params, model.grads, model.n_weights, owner=model)
    t = threading.Thread(target=lambda: model.train_step(Xd, Yd, denom=64.0, loss=loss, optimizer=opt))
    t.start()
    try:
        assert hold.started.wait(60)
        _refused(lambda: model.train_step(Xd, Yd, denom=64.0, loss=loss, optimizer=opt),
                 "Sequential.train_step was called")
    finally:
        hold.release.set()
        t.join(60)
    twin = mlpx.MLP([20, 8, 4], dtype="float64", seed=0)
    ref = mlpx.SGD(lr=0.1)
    ref.bind(be, twin.params, twin.grads, twin.n_weights, owner=twin)
    twin.train_step(Xd, Yd, denom=64.0, loss=loss, optimizer=ref)
    np.testing.assert_array_equal(model.get_flat_params(), twin.get_flat_params())  # one step, not two


def test_a_second_trainer_of_one_stack_is_refused_at_once() -> None:
    X, y = _data(n=128)
    stack = mlpx.Stack(mlpx.MLP([20, 8, 4], dtype="float64", seed=0), seeds=[0, 1])
    loss = stack.resolve_loss(None)

    def fit(hold) -> None:
        stack.fit(X, y, epochs=2, batch_size=32, callbacks=[hold])

    def attempts() -> None:
        _refused(lambda: stack.fit(X, y, epochs=1), "Stack.fit was called")
        _refused(lambda: stack.train_step(None, None, denom=np.ones(2), loss=loss, optimizer=None),
                 "Stack.train_step was called")

    _while_held(fit, attempts)
    alone = mlpx.Stack(mlpx.MLP([20, 8, 4], dtype="float64", seed=0), seeds=[0, 1])
    alone.fit(X, y, epochs=2, batch_size=32)
    for k in range(2):
        np.testing.assert_array_equal(stack.get_member_params(k), alone.get_member_params(k))


def _held(Est):
    """``Est`` that holds a fit where it has rebuilt its labels and initial weights,
    just before training."""

    class Held(Est):
        hold = None

        def _fit_stochastic(self, *args, **kwargs):
            if self.hold is not None:
                self.hold.arrive()
            return super()._fit_stochastic(*args, **kwargs)

    return Held


def test_estimator_fits_one_at_a_time_and_predictions_meanwhile_see_the_previous_fit() -> None:
    """While one thread refits (new classes, new initial weights), other threads'
    predict/predict_proba/score give the previous fit's answers, never an internal
    LabelBinarizer's NotFittedError; a second fit or partial_fit is refused."""
    pytest.importorskip("sklearn")
    X, y = _data(n=200, k=3)
    X2, y2 = _data(n=200, k=5, seed=1)
    est = _held(mlpx.MLPClassifier)(hidden_layer_sizes=(8,), max_iter=3, random_state=0).fit(X, y)
    before = (est.predict(X), est.predict_proba(X), est.predict_log_proba(X), est.score(X, y))

    def refit(hold) -> None:
        est.hold = hold
        est.fit(X2, y2)
        est.hold = None

    def meanwhile() -> None:
        during = (est.predict(X), est.predict_proba(X), est.predict_log_proba(X), est.score(X, y))
        for a, b in zip(during, before):
            np.testing.assert_array_equal(a, b)
        _refused(lambda: est.fit(X, y), "MLPClassifier.fit was called|Held.fit was called")
        _refused(lambda: est.partial_fit(X2, y2), "partial_fit was called")

    _while_held(refit, meanwhile)
    serial = mlpx.MLPClassifier(hidden_layer_sizes=(8,), max_iter=3, random_state=0).fit(X2, y2)
    np.testing.assert_array_equal(est.predict_proba(X2), serial.predict_proba(X2))


def test_predicting_during_an_estimators_first_fit_says_so() -> None:
    pytest.importorskip("sklearn")
    from sklearn.exceptions import NotFittedError

    X, y = _data(n=100)
    est = _held(mlpx.MLPClassifier)(hidden_layer_sizes=(4,), max_iter=2, random_state=0)

    def fit(hold) -> None:
        est.hold = hold
        est.fit(X, y)

    def meanwhile() -> None:
        with pytest.raises(NotFittedError, match="being fitted in another thread"):
            est.predict(X)

    _while_held(fit, meanwhile)


def test_a_regressor_fits_one_at_a_time_too() -> None:
    pytest.importorskip("sklearn")
    X, _ = _data(n=100)
    t = X @ np.linspace(-1, 1, X.shape[1])
    est = _held(mlpx.MLPRegressor)(hidden_layer_sizes=(4,), max_iter=2, random_state=0).fit(X, t)
    before = (est.predict(X), est.score(X, t))

    def refit(hold) -> None:
        est.hold = hold
        est.fit(X, -t)

    def meanwhile() -> None:
        np.testing.assert_array_equal(est.predict(X), before[0])
        assert est.score(X, t) == before[1]
        _refused(lambda: est.partial_fit(X, t), "partial_fit was called")

    _while_held(refit, meanwhile)


def test_a_reader_in_flight_holds_back_a_starting_trainer() -> None:
    """TrainingGuard.serving: a trainer that starts while a reader reads the object
    itself waits for it, so the reader never sees the trainer's first changes."""
    from mlpx.locking import TrainingGuard

    guard = TrainingGuard()
    entered = threading.Event()

    def trainer() -> None:
        guard.enter("fit", previous="old state")
        entered.set()
        guard.exit()

    def other_reader(results: list) -> None:
        with guard.serving() as seen:
            results.append(seen)

    with guard.serving() as seen:
        assert seen == (False, None)
        t = threading.Thread(target=trainer)
        t.start()
        while not guard.busy_elsewhere():  # the trainer has claimed the guard...
            t.join(0.001)
        assert not entered.is_set()  # ...and waits for this reader
        results: list = []
        other = threading.Thread(target=other_reader, args=(results,))
        other.start()
        other.join(60)
        assert results == [(True, "old state")]  # a new reader reads the previous state
    t.join(60)
    assert entered.is_set() and not guard.busy_elsewhere()
    # the training thread may re-enter; another thread may not
    guard.enter("fit")
    guard.enter("train_step")
    errors: list = []

    def intruder() -> None:
        try:
            guard.enter("fit")
        except mlpx.ConcurrentTrainingError as exc:
            errors.append(str(exc))
            return
        guard.exit()

    worker = threading.Thread(target=intruder)
    worker.start()
    worker.join(60)
    guard.exit()
    guard.exit()
    assert len(errors) == 1 and "(in fit)" in errors[0]
    worker = threading.Thread(target=intruder)
    worker.start()
    worker.join(60)
    assert len(errors) == 1 and not guard.busy_elsewhere()  # free again: the intruder entered and left
