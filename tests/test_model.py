"""The model: training, callbacks, prediction, dtypes, the flat buffer, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit, softmax

import mlpx
from mlpx.gradcheck import numerical_grad
from mlpx.layers import Dense, Dropout


def _blobs(n: int = 90, k: int = 3, d: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=3.0, size=(k, d))
    y = np.arange(n) % k
    return centers[y] + rng.normal(size=(n, d)), y


# ------------------------------------------------------------------- fitting
def test_fit_history_loss_decreases(backend) -> None:
    X, y = _blobs()
    model = mlpx.MLP([4, 8, 3], backend=backend, seed=0)
    hist = model.fit(X, y, epochs=15, batch_size=16, optimizer=mlpx.Adam(lr=0.02))
    assert isinstance(hist, mlpx.History) and model.history is hist
    loss = hist.history["loss"]
    assert len(loss) == 15 == hist.epochs and set(hist.history) == {"loss", "accuracy"}
    assert loss[-1] < 0.5 * loss[0]
    assert hist["accuracy"][-1] > 0.9
    assert repr(hist).startswith(f"History(epochs=15, last={{'loss': {round(float(loss[-1]), 5)}, ")


def test_reported_epoch_loss_is_the_mean_minibatch_loss() -> None:
    """With lr≈0 the parameters stay put, so the epoch loss equals the full-data loss."""
    X, y = _blobs(n=50)
    model = mlpx.MLP([4, 6, 3], dtype="float64", seed=1)
    expected = model.evaluate(X, y)["loss"]
    acc = (model.predict(X) == y).mean()
    hist = model.fit(X, y, epochs=1, batch_size=7, optimizer=mlpx.SGD(lr=1e-300, momentum=0.0))
    assert hist["loss"][0] == pytest.approx(expected, rel=1e-12)
    assert hist["accuracy"][0] == pytest.approx(acc)


def test_validation_data_and_split_logs(backend) -> None:
    X, y = _blobs()
    model = mlpx.MLP([4, 8, 3], backend=backend, seed=0)
    hist = model.fit(X, y, epochs=3, batch_size=16, validation_data=(X[:30], y[:30]))
    assert set(hist.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    # the logged validation numbers are the model's evaluation at the end of the epoch
    ev = model.evaluate(X[:30], y[:30])
    assert hist["val_loss"][-1] == pytest.approx(ev["loss"], rel=1e-5)
    assert hist["val_accuracy"][-1] == pytest.approx(ev["accuracy"])
    hist = model.fit(X, y, epochs=2, batch_size=16, validation_split=0.2)
    assert len(hist["val_loss"]) == 2 and len(hist["val_accuracy"]) == 2
    reg = mlpx.MLP([4, 5, 1], output="identity", backend=backend, seed=0)
    hist = reg.fit(X, X[:, 0], epochs=2, validation_split=0.25)
    assert set(hist.history) == {"loss", "val_loss", "val_r2"}


def test_validation_weights_and_r2_against_sklearn() -> None:
    from sklearn.metrics import r2_score

    X, _ = _blobs()
    t = X @ np.array([1.0, -2.0, 0.5, 0.0])
    w = np.linspace(0.5, 2.0, len(X))
    model = mlpx.MLP([4, 6, 1], output="identity", dtype="float64", seed=0)
    hist = model.fit(X, t, epochs=2, validation_data=(X, t, w))
    assert hist["val_r2"][-1] == pytest.approx(r2_score(t, model.predict(X), sample_weight=w), rel=1e-9)
    assert model.evaluate(X, t, sample_weight=w)["r2"] == pytest.approx(
        r2_score(t, model.predict(X), sample_weight=w), rel=1e-9
    )


class _Recorder(mlpx.Callback):
    """Keeps the parameters and logs at the end of every epoch."""

    def __init__(self) -> None:
        self.params: list[np.ndarray] = []
        self.logs: list[dict] = []

    def on_epoch_end(self, model, epoch, logs) -> None:
        self.params.append(model.get_flat_params())
        self.logs.append(dict(logs))


def test_multi_output_r2_against_sklearn() -> None:
    from sklearn.metrics import r2_score

    X, _ = _blobs()
    T = np.stack([X @ np.array([1.0, -2.0, 0.5, 0.0]), np.sin(X[:, 1])], axis=1)
    model = mlpx.MLP([4, 6, 2], output="identity", dtype="float64", seed=0)
    model.fit(X, T, epochs=3)
    assert model.predict(X).shape == (len(X), 2)
    assert model.evaluate(X, T)["r2"] == pytest.approx(r2_score(T, model.predict(X)), rel=1e-10)


def test_early_stopping_restores_the_best_weights(backend) -> None:
    X, y = _blobs(n=60, seed=2)
    Xv, yv = _blobs(n=60, seed=3)
    yv = yv[::-1].copy()  # validation labels unrelated to X: val loss rises as it fits
    model = mlpx.MLP([4, 16, 3], backend=backend, seed=0)
    rec = _Recorder()
    es = mlpx.EarlyStopping(monitor="val_loss", patience=2)
    hist = model.fit(X, y, epochs=50, batch_size=8, optimizer=mlpx.Adam(lr=0.05),
                     validation_data=(Xv, yv), callbacks=[rec, es])
    val = hist["val_loss"]
    best = int(np.argmin(val))
    assert hist.epochs < 50 and es.stopped_epoch == hist.epochs - 1
    assert hist.epochs == best + 1 + 2 + 1 or hist.epochs == 50  # best, then patience+1 worse
    assert es.best == pytest.approx(val[best]) and es.best_epoch == best
    np.testing.assert_array_equal(model.get_flat_params(), rec.params[best])
    assert model.evaluate(Xv, yv)["loss"] == pytest.approx(val[best], rel=1e-5)


def test_early_stopping_modes() -> None:
    X, y = _blobs(n=40)
    model = mlpx.MLP([4, 6, 3], seed=0)
    es = mlpx.EarlyStopping(monitor="accuracy", patience=0, restore_best_weights=False)
    hist = model.fit(X, y, epochs=30, batch_size=40, optimizer=mlpx.SGD(lr=1e-6), callbacks=[es])
    assert hist.epochs < 30  # accuracy frozen: no improvement -> stop after one more epoch
    assert es._sign("val_accuracy") == -1.0 and es._sign("val_loss") == 1.0
    # no validation data: monitoring val_loss falls back to loss
    es = mlpx.EarlyStopping(patience=1)
    model.fit(X, y, epochs=3, callbacks=[es])
    assert es._key == "loss"
    with pytest.raises(ValueError, match="mode"):
        mlpx.EarlyStopping(mode="up")


@pytest.mark.parametrize("validation", [False, True])
@pytest.mark.parametrize("monitor", ["val_acc", "acc", "val_r2", "Loss"])
def test_early_stopping_on_a_key_the_fit_never_logs_raises_at_the_first_epoch(validation, monitor) -> None:
    """A misspelt or absent key used to watch "loss" in silence; it raises at the end of
    the first epoch, naming the keys the fit does log."""
    X, y = _blobs(n=40)
    model = mlpx.MLP([4, 6, 3], seed=0)
    extra = {"validation_data": (X, y)} if validation else {}
    with pytest.raises(ValueError, match=rf"monitor='{monitor}'.*available keys: accuracy, loss") as err:
        model.fit(X, y, epochs=5, callbacks=[mlpx.EarlyStopping(monitor=monitor)], **extra)
    assert ("val_loss" in str(err.value)) == validation
    assert model.epochs_done_ == 1  # the first epoch's end, not later


def test_early_stopping_watches_every_logged_key() -> None:
    X, y = _blobs(n=40)
    T = X @ np.arange(4.0)
    for model, target, keys in ((mlpx.MLP([4, 6, 3], seed=0), y, ("loss", "accuracy", "val_loss", "val_accuracy")),
                                (mlpx.MLP([4, 6, 1], output="identity", seed=0), T, ("loss", "val_loss", "val_r2"))):
        for key in keys:
            es = mlpx.EarlyStopping(monitor=key, patience=10)
            model.fit(X, target, epochs=2, validation_data=(X, target), callbacks=[es])
            assert es._key == key


def test_progress_bar_output(capsys: pytest.CaptureFixture) -> None:
    X, y = _blobs(n=30)
    model = mlpx.MLP([4, 5, 3], seed=0)
    model.fit(X, y, epochs=2, verbose=1)
    err = capsys.readouterr().err
    assert "loss=" in err and "accuracy=" in err
    model.fit(X, y, epochs=2, verbose=0)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_progress_bar_without_tqdm(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    X, y = _blobs(n=30)
    mlpx.MLP([4, 5, 3], seed=0).fit(X, y, epochs=2, verbose=1, validation_split=0.2)
    err = capsys.readouterr().err
    assert "epoch 1/2" in err and "epoch 2/2" in err and "val_loss=" in err


# ----------------------------------------------------------------- prediction
def test_predict_shapes_and_values(backend) -> None:
    X, y = _blobs(n=25)
    be = backend
    clf = mlpx.MLP([4, 6, 3], backend=be, dtype="float64", seed=0)
    W0, b0, W1, b1 = clf.get_weights()
    logits = np.maximum(X @ W0 + b0, 0) @ W1 + b1  # relu hidden layer, by hand
    P = clf.predict_proba(X)
    assert P.shape == (25, 3) and isinstance(P, np.ndarray)
    np.testing.assert_allclose(P, softmax(logits, axis=1), rtol=1e-12)
    np.testing.assert_array_equal(clf.predict(X), logits.argmax(1))

    ml = mlpx.MLP([4, 6, 2], output="logistic", backend=be, dtype="float64", seed=0)
    W0, b0, W1, b1 = ml.get_weights()
    logits = np.maximum(X @ W0 + b0, 0) @ W1 + b1
    np.testing.assert_allclose(ml.predict_proba(X), expit(logits), rtol=1e-12)
    np.testing.assert_array_equal(ml.predict(X), (logits > 0).astype(int))
    one = mlpx.MLP([4, 6, 1], output="logistic", backend=be, seed=0)
    assert one.predict(X).shape == (25,) and set(np.unique(one.predict(X))) <= {0, 1}

    reg = mlpx.MLP([4, 6, 1], output="identity", backend=be, seed=0)
    assert reg.predict(X).shape == (25,)
    reg2 = mlpx.MLP([4, 6, 2], output="exp", backend=be, dtype="float64", seed=0)
    W0, b0, W1, b1 = reg2.get_weights()
    np.testing.assert_allclose(reg2.predict(X), np.exp(np.maximum(X @ W0 + b0, 0) @ W1 + b1), rtol=1e-12)


def test_evaluate_against_sklearn(backend) -> None:
    from sklearn.metrics import accuracy_score, log_loss

    X, y = _blobs(n=40)
    model = mlpx.MLP([4, 6, 3], backend=backend, dtype="float64", seed=0)
    model.fit(X, y, epochs=2)
    ev = model.evaluate(X, y)
    P = model.predict_proba(X)
    assert ev["loss"] == pytest.approx(log_loss(y, P, labels=[0, 1, 2]), rel=1e-9)
    assert ev["accuracy"] == pytest.approx(accuracy_score(y, model.predict(X)))
    w = np.linspace(0.1, 1.0, 40)
    ev = model.evaluate(X, y, sample_weight=w)
    assert ev["loss"] == pytest.approx(log_loss(y, P, sample_weight=w, labels=[0, 1, 2]), rel=1e-9)
    assert ev["accuracy"] == pytest.approx(accuracy_score(y, model.predict(X), sample_weight=w))


def test_predict_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    import mlpx.network as network_mod

    X, _ = _blobs(n=23)
    model = mlpx.MLP([4, 5, 3], dtype="float64", seed=0)
    whole = model.predict_proba(X)
    monkeypatch.setattr(network_mod, "PREDICT_CHUNK", 5)
    np.testing.assert_array_equal(model.predict_proba(X), whole)


def test_loss_and_grads_matches_finite_differences(backend) -> None:
    X, y = _blobs(n=12)
    model = mlpx.MLP([4, 5, 3], activation="tanh", backend=backend, dtype="float64", seed=0)
    value, grads = model.loss_and_grads(X, y)
    assert set(grads) == {"0.W", "0.b", "1.W", "1.b"}
    assert isinstance(value, float) and all(isinstance(g, np.ndarray) for g in grads.values())
    W = model.get_weights()

    def f(w1: np.ndarray) -> float:
        model.set_weights([W[0], W[1], w1, W[3]])
        return model.loss_and_grads(X, y)[0]

    numeric = numerical_grad(f, W[2].copy())
    np.testing.assert_allclose(grads["1.W"], numeric, rtol=1e-6, atol=1e-9)


# --------------------------------------------------------------------- dtypes
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_one_dtype_everywhere(backend, dtype: str) -> None:
    X, y = _blobs(n=20)
    model = mlpx.MLP([4, 5, 3], backend=backend, dtype=dtype, seed=0)
    model.fit(X, y, epochs=1, optimizer="adam")
    want = backend.dtype(dtype)
    arrays = [model.params, model.grads, model.optimizer_.state["m"], model.optimizer_.state["v"]]
    arrays += list(model.parameters().values()) + list(model.gradients().values())
    for a in arrays:
        assert a.dtype == want
    assert model.predict_proba(X).dtype == np.dtype(dtype)
    assert all(w.dtype == np.dtype(dtype) for w in model.get_weights())


def test_float32_is_the_default() -> None:
    model = mlpx.MLP([3, 2])
    assert model.dtype == "float32" and model.params.dtype == np.float32
    with pytest.raises(TypeError, match="float32"):
        mlpx.MLP([3, 2], dtype="float16")
    with pytest.raises(TypeError, match="float32"):
        mlpx.MLP([3, 2], dtype="int64")


# --------------------------------------------------------------- flat buffers
def test_layer_parameters_are_views_of_the_flat_buffer(backend) -> None:
    """parameters() and gradients() name views of the flat buffers (the layers are
    configuration; the network holds every member's parameters in one buffer)."""
    be = backend
    model = mlpx.MLP([3, 4, 2], backend=be, dtype="float64", seed=0)
    assert model.n_params == 3 * 4 + 4 + 4 * 2 + 2 and model.n_weights == 3 * 4 + 4 * 2
    W0, b0 = model.parameters()["0.W"], model.parameters()["0.b"]
    if be.mutable and be.name == "cpu":
        W0[1, 2] = 7.5  # write through the view...
        b0[3] = -2.0
        flat = be.to_numpy(model.params)
        assert flat[1 * 4 + 2] == 7.5  # ...lands in the flat buffer: weights first
        assert flat[model.n_weights + 3] == -2.0  # then biases
        assert model.get_weights()[0][1, 2] == 7.5
    # and the other way: writing the flat buffer changes what the views show
    model.set_flat_params(np.arange(model.n_params, dtype=float))
    np.testing.assert_array_equal(be.to_numpy(model.parameters()["0.W"]), np.arange(12.0).reshape(3, 4))
    np.testing.assert_array_equal(be.to_numpy(model.parameters()["1.b"]), [24.0, 25.0])
    # gradients: same layout
    X, y = _blobs(n=6, d=3, k=2)
    _, grads = model.loss_and_grads(X, y)
    np.testing.assert_array_equal(be.to_numpy(model.grads)[:12], grads["0.W"].ravel())
    np.testing.assert_array_equal(be.to_numpy(model.gradients()["0.W"]), grads["0.W"])
    if be.name == "cpu":
        assert np.shares_memory(model.parameters()["0.W"], model.params)
        assert np.shares_memory(model.gradients()["0.W"], model.grads)


def test_get_set_weights_round_trip() -> None:
    model = mlpx.MLP([3, 4, 2], dtype="float64", seed=0)
    ws = [w * 2 for w in model.get_weights()]
    model.set_weights(ws)
    for a, b in zip(model.get_weights(), ws):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="expected 4 arrays"):
        model.set_weights(ws[:3])
    with pytest.raises(ValueError, match="shape"):
        model.set_weights([ws[0].T] + ws[1:])
    with pytest.raises(ValueError, match="NaN"):
        model.set_flat_params(np.full(model.n_params, np.nan))


# --------------------------------------------------------------- determinism
def test_same_seed_same_initial_weights_on_every_backend(strict_backend) -> None:
    a = mlpx.MLP([5, 7, 3], seed=123, dtype="float64")
    b = mlpx.MLP([5, 7, 3], seed=123, dtype="float64", backend=strict_backend)
    np.testing.assert_array_equal(a.get_flat_params(), b.get_flat_params())  # bitwise
    a32 = mlpx.MLP([5, 7, 3], seed=123)
    b32 = mlpx.MLP([5, 7, 3], seed=123, backend=strict_backend)
    np.testing.assert_array_equal(a32.get_flat_params(), b32.get_flat_params())
    c = mlpx.MLP([5, 7, 3], seed=124, dtype="float64")
    assert not np.array_equal(a.get_flat_params(), c.get_flat_params())


def test_fixed_seed_fit_is_deterministic(backend) -> None:
    X, y = _blobs(n=40)
    runs = []
    for _ in range(2):
        model = mlpx.MLP([4, 6, 3], backend=backend, seed=5, dropout=0.2)
        hist = model.fit(X, y, epochs=3, batch_size=8, validation_split=0.25)
        runs.append((model.get_flat_params(), hist.history))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1]


def test_numpy_and_strict_fits_agree(strict_backend) -> None:
    """Same seed, same data: the same minibatches and masks, so float64 fits agree closely."""
    X, y = _blobs(n=40)
    out = []
    for be in ("cpu", strict_backend):
        model = mlpx.MLP([4, 6, 3], backend=be, dtype="float64", seed=5, dropout=0.2)
        model.fit(X, y, epochs=3, batch_size=8)
        out.append(model.get_flat_params())
    np.testing.assert_allclose(out[0], out[1], rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------- construction
def test_sequential_with_trailing_activation_layer() -> None:
    layers = [Dense(3, 4, activation="tanh"), Dropout(0.1), Dense(4, 2), mlpx.Softmax()]
    model = mlpx.Sequential(layers, seed=0)
    assert model.output.name == "softmax" and len(model.layers) == 3
    assert model.n_features_in_ == 3 and model.n_outputs_ == 2
    assert "Sequential on cpu" in model.summary() and "3->2" in repr(model)
    empty = mlpx.Sequential([])  # built later, layer by layer (add)
    with pytest.raises(ValueError, match="no Dense layer"):
        empty.predict(np.zeros((2, 3)))
    with pytest.raises(TypeError, match="not a layer"):
        mlpx.Sequential([Dense(2, 2), "relu"])
    with pytest.raises(ValueError, match="Dense"):
        mlpx.Sequential([mlpx.ReLU()])
    with pytest.raises(ValueError, match="sizes"):
        mlpx.MLP([3])


def test_mlp_layout() -> None:
    model = mlpx.MLP([64, 128, 64, 32, 10], activation="relu", dropout=0.1, seed=0)
    assert model.n_params == 64 * 128 + 128 + 128 * 64 + 64 + 64 * 32 + 32 + 32 * 10 + 10
    kinds = [type(l).__name__ for l in model.layers]
    assert kinds == ["Dense", "Dropout", "Dense", "Dropout", "Dense", "Dropout", "Dense"]
    assert model.layers[-1].activation.name == "identity" and model.output.name == "softmax"
