"""The one training loop and what hangs on it: building layer by layer, any loss on
any output (chain rule, against float64 finite differences), optimizer state as
data (round trips, pickling, backend moves) and divergence rollback."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import mlpx
from mlpx.gradcheck import check_gradients
from mlpx.layers import Dense, Dropout


def _data(n: int = 12, d: int = 4, k: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    return X, rng.integers(0, k, n)


# ------------------------------------------------------------ Sequential.add
def test_add_builds_the_same_network_layer_by_layer() -> None:
    X, y = _data()
    whole = mlpx.Sequential([Dense(4, 6, "tanh"), Dropout(0.2), Dense(6, 3, "softmax")], seed=3, dtype="float64")
    net = mlpx.Sequential(seed=3, dtype="float64")
    assert not net.built and "not built" in repr(net)
    net.add(Dense(4, 6, "tanh")).add(Dropout(0.2))
    net.add(Dense(6, 3, "softmax"))
    np.testing.assert_array_equal(net.get_flat_params(), whole.get_flat_params())
    assert net.get_config() == whole.get_config()
    h1 = whole.fit(X, y, epochs=3, batch_size=4)
    h2 = net.fit(X, y, epochs=3, batch_size=4)
    np.testing.assert_array_equal(net.get_flat_params(), whole.get_flat_params())
    assert h1.history == h2.history
    with pytest.raises(RuntimeError, match="trained"):
        net.add(Dense(3, 2))
    with pytest.raises(TypeError, match="not a layer"):
        mlpx.Sequential().add("relu")


def test_the_callers_output_layer_keeps_its_activation() -> None:
    last = Dense(5, 2, "logistic")
    model = mlpx.Sequential([Dense(3, 5, "relu"), last])
    assert last.activation.name == "logistic" and model.output.name == "logistic"
    assert model.layers[-1].activation.name == "identity"  # the model runs its own copy


# ------------------------------------------------ any loss on any output
PAIRS = [
    ("squared_error", "softmax"), ("squared_error", "logistic"), ("squared_error", "tanh"),
    ("squared_error", "exp"), ("squared_error", "relu"), ("squared_error", "leaky_relu"),
    ("squared_error", "gelu"), ("cross_entropy", "logistic"), ("cross_entropy", "exp"),
    ("binary_cross_entropy", "softmax"), ("poisson", "softmax"), ("poisson", "logistic"),
]


def _targets(loss: str, n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    if loss == "cross_entropy":
        return np.eye(k)[rng.integers(0, k, n)]
    if loss in ("binary_cross_entropy", "poisson"):
        return rng.uniform(0.0, 1.0, (n, k))
    return rng.normal(size=(n, k))


@pytest.mark.parametrize("loss, output", PAIRS)
def test_non_canonical_pair_gradient_matches_finite_differences(backend, loss: str, output: str) -> None:
    rng = np.random.default_rng(7)
    X = rng.normal(size=(9, 4))
    Y = _targets(loss, 9, 3, rng)
    w = rng.uniform(0.5, 2.0, 9)
    model = mlpx.MLP([4, 5, 3], activation="tanh", output=output, backend=backend, dtype="float64", seed=1)
    assert not model.resolve_loss(loss).canonical
    out = check_gradients(model, X, Y, sample_weight=w, loss=loss, l2=0.3, inputs=True)
    assert out["max_rel_error"] < 1e-6, out["errors"]


@pytest.mark.parametrize("loss, output", [("squared_error", "softmax"), ("cross_entropy", "logistic")])
def test_non_canonical_loss_value_against_a_hand_computation(loss: str, output: str) -> None:
    rng = np.random.default_rng(2)
    X, Y = rng.normal(size=(6, 4)), _targets(loss, 6, 3, rng)
    model = mlpx.MLP([4, 3], output=output, dtype="float64", seed=0)
    W, b = model.get_weights()
    Z = X @ W + b
    P = np.exp(Z) / np.exp(Z).sum(1, keepdims=True) if output == "softmax" else 1 / (1 + np.exp(-Z))
    want = (0.5 * ((P - Y) ** 2).sum(1) if loss == "squared_error" else -(Y * np.log(P)).sum(1)).mean()
    value, _ = model.loss_and_grads(X, Y, loss=loss)
    assert value == pytest.approx(want, rel=1e-12)
    assert model.evaluate(X, Y, loss=loss)["loss"] == pytest.approx(want, rel=1e-12)


def test_lecture_network_reaches_97_percent() -> None:
    """The classic lecture recipe: 64-128-64-10, sigmoid on every layer including the
    output, mean squared error on one-hot targets, plain SGD (0.5, no momentum),
    minibatches of 64 for 40,000 steps, pixels / 16, the 80/20 split with seed 42."""
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X / 16.0, y, test_size=0.2, random_state=42)
    net = mlpx.Sequential(dtype="float64", seed=0)
    net.add(Dense(64, 128, "sigmoid", init="he")).add(Dense(128, 64, "sigmoid", init="he"))
    net.add(Dense(64, 10, "sigmoid", init="he"))
    steps = -(-len(Xtr) // 64)
    epochs = -(-40_000 // steps)  # 40,000 steps, rounded up to whole epochs
    net.fit(Xtr, np.eye(10)[ytr], epochs=epochs, batch_size=64, loss="mse",
            optimizer=mlpx.SGD(lr=0.5, momentum=0.0))
    assert net.optimizer_.t >= 40_000
    accuracy = (net.predict_proba(Xte).argmax(1) == yte).mean()
    assert accuracy >= 0.97


# ------------------------------------------------- optimizer state as data
OPTIMIZERS = [
    lambda: mlpx.SGD(lr=0.05, momentum=0.9, nesterov=True),
    lambda: mlpx.Adam(lr=0.01),
    lambda: mlpx.AdamW(lr=0.01, weight_decay=0.1),
    lambda: mlpx.RMSprop(lr=0.01, schedule=mlpx.StepDecay(1, 0.5)),
    lambda: mlpx.SGD(lr=0.05, schedule=mlpx.Adaptive()),
]


@pytest.mark.parametrize("make", OPTIMIZERS)
def test_state_dict_round_trip_continues_exactly(backend, make) -> None:
    X, y = _data(n=20)
    a = mlpx.MLP([4, 5, 3], backend=backend, dtype="float64", seed=0)
    opt = make()
    a.fit(X, y, epochs=2, batch_size=6, optimizer=opt, shuffle=False)
    state = opt.state_dict()
    assert set(state["state"]) == set(opt.state_names) and state["t"] == opt.t > 0
    assert all(isinstance(v, np.ndarray) for v in state["state"].values())
    b = mlpx.Sequential.from_config(a.get_config(), a.get_flat_params(), backend)
    b.epochs_done_, b.samples_seen_ = a.epochs_done_, a.samples_seen_
    again = mlpx.optimizers.Optimizer.from_state_dict(state)
    assert type(again) is type(opt) and again.get_config() == opt.get_config()
    a.fit(X, y, epochs=2, batch_size=6, optimizer=opt, shuffle=False)
    b.fit(X, y, epochs=2, batch_size=6, optimizer=again, shuffle=False)
    np.testing.assert_array_equal(b.get_flat_params(), a.get_flat_params())


def test_load_state_dict_refuses_another_optimizer() -> None:
    with pytest.raises(ValueError, match="cannot be loaded"):
        mlpx.SGD().load_state_dict(mlpx.Adam().state_dict())
    opt = mlpx.Adam()
    opt.bind(mlpx.get_backend("cpu"), np.zeros(4), np.zeros(4), 2)
    with pytest.raises(ValueError, match="shape"):
        opt.load_state_dict({**opt.state_dict(), "state": {"m": np.zeros(5), "v": np.zeros(5)}})


@pytest.mark.parametrize("move", ["pickle", "to"])
def test_pickling_and_backend_moves_carry_the_optimizer_state(move: str, strict_backend) -> None:
    X, y = _data(n=20)
    a = mlpx.MLP([4, 5, 3], dtype="float64", seed=0)
    a.fit(X, y, epochs=2, batch_size=6, optimizer="adam", shuffle=False)
    b = pickle.loads(pickle.dumps(a)) if move == "pickle" else a.to(strict_backend)
    assert b.optimizer_ is not a.optimizer_ and b.optimizer_.t == a.optimizer_.t
    assert (b.epochs_done_, b.samples_seen_) == (a.epochs_done_, a.samples_seen_)
    a.fit(X, y, epochs=1, batch_size=6, optimizer=a.optimizer_, shuffle=False)
    b.fit(X, y, epochs=1, batch_size=6, optimizer=b.optimizer_, shuffle=False)
    np.testing.assert_allclose(b.get_flat_params(), a.get_flat_params(), rtol=0, atol=1e-13)


# ------------------------------------------------------- divergence rollback
def _regression(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(40, 3))
    return X, X @ np.array([1.0, -2.0, 0.5]) * 50


def test_divergence_in_the_first_epoch_leaves_a_fresh_optimizer(backend) -> None:
    X, t = _regression()
    model = mlpx.MLP([3, 8, 1], output="identity", backend=backend, dtype="float64", seed=0)
    start = model.get_flat_params()
    opt = mlpx.SGD(lr=100.0, momentum=0.9)
    with pytest.raises(mlpx.TrainingDivergedError) as err:
        model.fit(X, t, epochs=3, batch_size=8, optimizer=opt, shuffle=False)
    assert err.value.epoch == 0
    np.testing.assert_array_equal(model.get_flat_params(), start)
    state = opt.state_dict()
    assert state["t"] == 0 and all(not np.any(v) for v in state["state"].values())
    assert model.epochs_done_ == 0 and model.samples_seen_ == 0
    # A retry with the same instance at a sane rate trains as a fresh optimizer would.
    opt.lr = 1e-4
    model.fit(X, t, epochs=2, batch_size=8, optimizer=opt, shuffle=False)
    fresh = mlpx.MLP([3, 8, 1], output="identity", backend=backend, dtype="float64", seed=0)
    fresh.fit(X, t, epochs=2, batch_size=8, optimizer=mlpx.SGD(lr=1e-4, momentum=0.9), shuffle=False)
    np.testing.assert_array_equal(model.get_flat_params(), fresh.get_flat_params())


class _RaiseRate(mlpx.Callback):
    """After epoch ``at`` record the state, then set a rate that will diverge."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_epoch_end(self, model, epoch, logs) -> None:
        if epoch == self.at:
            self.params = model.get_flat_params()
            self.state = model.optimizer_.state_dict()
            model.optimizer_.lr = 1e3


def test_divergence_later_restores_weights_velocity_and_step_count() -> None:
    X, t = _regression(1)
    model = mlpx.MLP([3, 8, 1], output="identity", dtype="float64", seed=0)
    opt = mlpx.SGD(lr=1e-4, momentum=0.9)
    spy = _RaiseRate(at=1)
    with pytest.raises(mlpx.TrainingDivergedError) as err:
        model.fit(X, t, epochs=6, batch_size=8, optimizer=opt, shuffle=False, callbacks=[spy])
    assert err.value.epoch == 2
    np.testing.assert_array_equal(model.get_flat_params(), spy.params)
    after = opt.state_dict()
    assert after["t"] == spy.state["t"] and after["lr"] == 1e3  # the rate the user set stays
    for name in ("velocity",):
        np.testing.assert_array_equal(after["state"][name], spy.state["state"][name])
        assert np.isfinite(after["state"][name]).all()
    assert model.epochs_done_ == 2


class _Scales(mlpx.Callback):
    def on_train_begin(self, model, epochs) -> None:
        self.states = [model.precision_.scaler.get_state()]

    def on_epoch_end(self, model, epoch, logs) -> None:
        self.states.append(model.precision_.scaler.get_state())


def test_fp16_divergence_restores_the_loss_scale() -> None:
    X, t = _regression(2)
    with pytest.warns(RuntimeWarning, match="fp16"):
        model = mlpx.MLP([3, 8, 1], output="identity", seed=0, precision="fp16")
    spy = _Scales()
    with pytest.raises(mlpx.TrainingDivergedError) as err:
        model.fit(X.astype(np.float32), t, epochs=4, batch_size=8, optimizer=mlpx.SGD(lr=1e6),
                  shuffle=False, callbacks=[spy])
    # the scale the diverging epoch started from, not the one it reached
    assert model.precision_.scaler.get_state() == spy.states[err.value.epoch]
