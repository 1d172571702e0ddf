"""Bad input gets a clear ValueError/TypeError before any work, and diverging training
stops with an error that keeps the last finite weights."""

from __future__ import annotations

import numpy as np
import pytest

import mlpx


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(20, 4)), rng.integers(0, 3, 20)


def _fit_must_fail(model, X, y, exc, match: str, **kw) -> None:
    """fit raises before touching the parameters or the optimizer state."""
    before = model.get_flat_params()
    opt = mlpx.Adam()
    with pytest.raises(exc, match=match):
        model.fit(X, y, epochs=2, optimizer=opt, **kw)
    np.testing.assert_array_equal(model.get_flat_params(), before)
    assert opt.t == 0


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_X(backend, data, bad) -> None:
    X, y = data
    X = X.copy()
    X[3, 1] = bad
    model = mlpx.MLP([4, 5, 3], backend=backend, seed=0)
    _fit_must_fail(model, X, y, ValueError, "X contains NaN or infinity")
    for call in (model.predict, model.predict_proba):
        with pytest.raises(ValueError, match="NaN or infinity"):
            call(X)
    with pytest.raises(ValueError, match="NaN or infinity"):
        model.evaluate(X, y)
    with pytest.raises(ValueError, match="X_val contains NaN"):
        model.fit(data[0], y, validation_data=(X, y))


def test_non_finite_X_on_the_device(backend, data) -> None:
    X, y = data
    X = X.copy()
    X[0, 0] = np.nan
    model = mlpx.MLP([4, 5, 3], backend=backend, seed=0)
    with pytest.raises(ValueError, match="NaN or infinity"):
        model.predict(backend.asarray(X, "float32"))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_y(data, bad) -> None:
    X, _ = data
    y = np.linspace(0, 1, 20)
    y[5] = bad
    reg = mlpx.MLP([4, 5, 1], output="identity", seed=0)
    _fit_must_fail(reg, X, y, ValueError, "y contains NaN or infinity")


def test_wrong_number_of_features(data) -> None:
    X, y = data
    model = mlpx.MLP([4, 5, 3], seed=0)
    _fit_must_fail(model, X[:, :3], y, ValueError, "X has 3 features, but the model expects 4")
    with pytest.raises(ValueError, match="expects 4"):
        model.predict(np.ones((2, 5)))
    with pytest.raises(ValueError, match="2-D"):
        model.predict(np.ones(4))
    with pytest.raises(ValueError, match="reshape"):
        model.fit(np.ones(20), y)


def test_mismatched_lengths(data) -> None:
    X, y = data
    model = mlpx.MLP([4, 5, 3], seed=0)
    _fit_must_fail(model, X, y[:15], ValueError, "different lengths: 20 and 15")
    _fit_must_fail(model, X, y, ValueError, r"sample_weight must have shape \(20,\)", sample_weight=np.ones(19))


def test_empty_data() -> None:
    model = mlpx.MLP([4, 5, 3], seed=0)
    _fit_must_fail(model, np.empty((0, 4)), np.empty(0, dtype=int), ValueError, "empty")
    with pytest.raises(ValueError, match="empty"):
        model.predict(np.empty((0, 4)))
    with pytest.raises(ValueError, match="empty"):
        model.predict(np.empty((3, 0)))


def test_labels_the_output_cannot_hold(data) -> None:
    X, _ = data
    model = mlpx.MLP([4, 5, 3], seed=0)
    y = np.arange(20) % 4  # class 3 for a 3-unit softmax
    _fit_must_fail(model, X, y, ValueError, r"labels range over 0\.\.3.*3 units")
    _fit_must_fail(model, X, -(np.arange(20) % 2), ValueError, "labels range over -1")
    _fit_must_fail(model, X, np.full(20, 0.5), ValueError, "must be integers")
    _fit_must_fail(model, X, np.ones((20, 4)) / 4, ValueError, "4 column")  # one-hot of the wrong width
    ml = mlpx.MLP([4, 5, 2], output="logistic", seed=0)
    _fit_must_fail(ml, X, np.full((20, 2), 2.0), ValueError, r"\[0, 1\]")
    pois = mlpx.MLP([4, 5, 1], output="exp", seed=0)
    _fit_must_fail(pois, X, -np.ones(20), ValueError, "non-negative")


def test_non_numeric_input(data) -> None:
    X, y = data
    model = mlpx.MLP([4, 5, 3], seed=0)
    _fit_must_fail(model, X.astype(str), y, TypeError, "numeric")
    _fit_must_fail(model, X * 1j, y, TypeError, "X must be numeric, got dtype complex128")
    _fit_must_fail(model, X.astype(object), y, TypeError, "numeric")
    _fit_must_fail(model, X, np.array(["a", "b"] * 10), TypeError, "y must be numeric")
    _fit_must_fail(model, [[1, 2, 3, 4], [1, 2]], y[:2], TypeError, "numeric 2-D")


def test_bad_sample_weight(data) -> None:
    X, y = data
    model = mlpx.MLP([4, 5, 3], seed=0)
    for w, msg in ((-np.ones(20), "non-negative"), (np.zeros(20), "sums to zero"),
                   (np.full(20, np.nan), "finite")):
        _fit_must_fail(model, X, y, ValueError, msg, sample_weight=w)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(epochs=0), "epochs"),
        (dict(epochs=2.5), "epochs"),
        (dict(batch_size=0), "batch_size"),
        (dict(validation_split=1.0), "validation_split"),
        (dict(validation_split=0.001), "leaves no"),
        (dict(l2=-1.0), "l2"),
        (dict(optimizer="newton"), "sgd, adam, adamw, rmsprop"),
        (dict(loss="hinge"), "cross_entropy"),
        (dict(validation_data=(1, 2, 3, 4)), "validation_data"),
    ],
)
def test_bad_fit_arguments(data, kw, match) -> None:
    X, y = data
    model = mlpx.MLP([4, 5, 3], seed=0)
    before = model.get_flat_params()
    kw = {"epochs": 2, **kw}
    with pytest.raises(ValueError, match=match):
        model.fit(X, y, **kw)
    np.testing.assert_array_equal(model.get_flat_params(), before)


def test_unknown_names_list_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="identity.*relu|relu.*identity"):
        mlpx.MLP([2, 2], activation="swish")
    with pytest.raises(ValueError, match="softmax"):
        mlpx.MLP([2, 2], output="softmaxx")
    with pytest.raises(ValueError, match="cpu.*gpu.*auto"):
        mlpx.MLP([2, 2], backend="tpu")


def test_pandas_input_is_accepted() -> None:
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.normal(size=(10, 3)), columns=list("abc"))
    y = pd.Series(np.arange(10) % 2)
    model = mlpx.MLP([3, 4, 2], seed=0)
    model.fit(X, y, epochs=1)
    np.testing.assert_array_equal(model.predict(X), model.predict(X.to_numpy()))


# --------------------------------------------------------------- divergence
class _Snapshots(mlpx.Callback):
    def __init__(self) -> None:
        self.params: list[np.ndarray] = []

    def on_train_begin(self, model, epochs) -> None:
        self.params.append(model.get_flat_params())

    def on_epoch_end(self, model, epoch, logs) -> None:
        self.params.append(model.get_flat_params())


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_divergence_raises_and_keeps_finite_weights(backend, momentum: float) -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(scale=100.0, size=(64, 4))
    y = X @ np.array([3.0, -2.0, 1.0, 5.0]) * 100
    model = mlpx.MLP([4, 16, 1], output="identity", backend=backend, seed=0)
    opt = mlpx.SGD(lr=10.0, momentum=momentum)
    snaps = _Snapshots()
    with pytest.raises(mlpx.TrainingDivergedError) as err:
        model.fit(X, y, epochs=50, batch_size=8, optimizer=opt, callbacks=[snaps])
    e = err.value
    msg = str(e)
    assert f"epoch {e.epoch + 1}" in msg and "lower learning rate" in msg
    final = model.get_flat_params()
    assert np.isfinite(final).all()
    # the weights at the start of the failing epoch: the last epoch-end snapshot
    assert len(snaps.params) == e.epoch + 1
    np.testing.assert_array_equal(final, snaps.params[e.epoch])
    assert np.isfinite(model.predict(X[:3])).all()


def test_divergence_at_the_last_step_of_an_epoch_keeps_finite_weights() -> None:
    """Weights that overflow in the final step of an epoch (after a finite loss) must
    not be the 'last finite weights' kept when the next epoch's loss is non-finite."""
    X = np.array([[1.0], [1.0]])
    y = np.array([1e18, 1e18])  # loss ~5e35: finite in float32; the step lr·g ~1e48 is not
    model = mlpx.MLP([1, 1], output="identity", dtype="float32", seed=0)
    with pytest.raises(mlpx.TrainingDivergedError):
        model.fit(X, y, epochs=5, batch_size=2, optimizer=mlpx.SGD(lr=1e30, momentum=0.0))
    assert np.isfinite(model.get_flat_params()).all()
