"""Analytic gradients against central finite differences in float64.

Every layer, activation and loss, with and without sample weights and the L2 term,
and whole networks, on NumPy and array-api-strict (the ``backend`` fixture; the CuPy
case runs where a GPU exists). The finite differences are taken of the engine's loss
*value*, so they test the backward pass against the forward pass; the forward pass
itself is tested against hand formulas and SciPy in test_layers.py / test_losses.py.
"""

from __future__ import annotations

import numpy as np
import pytest

import mlpx
from mlpx.activations import ACTIVATIONS
from mlpx.gradcheck import check_gradients, numerical_grad, relative_error
from mlpx.layers import ActivationLayer, Dense, Dropout
from mlpx.losses import LOSSES

TOL = 1e-6  # float64 central differences with eps=1e-6 are good to ~1e-9 here
HIDDEN_ACTIVATIONS = sorted(ACTIVATIONS)


def _data(n: int = 6, d: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d))


def _targets(loss: str, n: int, k: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if loss == "cross_entropy":
        return rng.integers(0, k, n)
    if loss == "binary_cross_entropy":
        return (rng.random((n, k)) > 0.5).astype(float)  # multi-label
    if loss == "poisson":
        return rng.poisson(1.5, (n, k)).astype(float)
    return rng.normal(size=(n, k))  # squared_error, multi-output


def _away_from_kinks(model: mlpx.Sequential, X: np.ndarray, margin: float = 1e-3) -> None:
    """Assert every pre-activation is at least ``margin`` from 0 (relu/leaky kinks).

    Finite differences straddling a kink are wrong by construction; the test data
    below are chosen (and checked here) so that none do.
    """
    be = model.backend
    params = {k: np.asarray(be.to_numpy(v), dtype=np.float64) for k, v in model.parameters().items()}
    H = np.asarray(X, dtype=np.float64)
    for i, layer in enumerate(model.layers):
        act = getattr(layer, "activation", None)
        if isinstance(layer, Dense):
            H = H @ params[f"{i}.W"] + params[f"{i}.b"]
            assert np.abs(H).min() > margin, "test data too close to an activation kink"
        if act is not None:
            H = act.forward_kernel.generic(np, H, np.empty_like(H))


# ------------------------------------------------------------------ activations
@pytest.mark.parametrize("act", HIDDEN_ACTIVATIONS)
def test_activation_backward_matches_finite_differences(backend, act: str) -> None:
    """Each activation kernel on its own: dZ = dH ⊙ g'(Z) against d/dZ Σ dH ⊙ g(Z)."""
    be = backend
    rng = np.random.default_rng(5)
    Z = rng.uniform(0.05, 2.0, (4, 5)) * rng.choice([-1.0, 1.0], (4, 5))  # |z| >= 0.05: no kinks
    dH = rng.normal(size=Z.shape)
    a = ACTIVATIONS[act]

    def f(z: np.ndarray) -> float:
        H = a.forward(be, be.asarray(z, "float64"), out=be.empty(z.shape, "float64"))
        return float(np.sum(dH * be.to_numpy(H)))

    numeric = numerical_grad(f, Z.copy())
    Zd = be.asarray(Z, "float64")
    H = a.forward(be, Zd, out=be.empty(Z.shape, "float64"))
    dZ = a.backward(be, be.asarray(dH, "float64"), Zd, H, out=be.empty(Z.shape, "float64"))
    assert relative_error(be.to_numpy(dZ), numeric) < TOL


@pytest.mark.parametrize("act", HIDDEN_ACTIVATIONS)
def test_dense_with_fused_activation(backend, act: str) -> None:
    X = _data()
    model = mlpx.MLP([4, 5, 3], activation=act, backend=backend, dtype="float64", seed=3)
    _away_from_kinks(model, X)
    r = check_gradients(model, X, _targets("cross_entropy", 6, 3), inputs=True)
    assert set(r["errors"]) == {"0.W", "0.b", "1.W", "1.b", "X"}
    assert r["max_rel_error"] < TOL, r["errors"]


@pytest.mark.parametrize("act", HIDDEN_ACTIVATIONS)
def test_standalone_activation_layer(backend, act: str) -> None:
    """Dense(identity) -> ActivationLayer -> Dense: the layer's backward and dX."""
    X = _data()
    layers = [Dense(4, 5), ActivationLayer(act), Dense(5, 2, activation="identity")]
    model = mlpx.Sequential(layers, backend=backend, dtype="float64", seed=4)
    _away_from_kinks(model, X)
    r = check_gradients(model, X, _targets("squared_error", 6, 2), inputs=True)
    assert r["max_rel_error"] < TOL, r["errors"]


def test_dropout_with_fixed_mask(backend) -> None:
    X = _data(n=8)
    model = mlpx.MLP([4, 6, 5, 3], activation="tanh", backend=backend, dtype="float64", seed=0, dropout=0.4)
    r = check_gradients(model, X, _targets("cross_entropy", 8, 3), inputs=True)
    assert r["max_rel_error"] < TOL, r["errors"]
    # The masks really were applied: the training-mode loss differs from inference.
    loss_train = r["loss"]
    loss_eval = model.evaluate(X, _targets("cross_entropy", 8, 3))["loss"]
    assert abs(loss_train - loss_eval) > 1e-6


# ---------------------------------------------------------------------- losses
OUTPUT_OF = {name: loss.output for name, loss in LOSSES.items()}


@pytest.mark.parametrize("l2", [0.0, 0.7])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_every_loss_with_weights_and_l2(backend, loss: str, weighted: bool, l2: float) -> None:
    n, k = 7, 3
    X = _data(n=n) * 0.5
    model = mlpx.MLP([4, 5, k], activation="tanh", output=OUTPUT_OF[loss], backend=backend, dtype="float64", seed=2)
    w = np.random.default_rng(9).uniform(0.2, 3.0, n) if weighted else None
    r = check_gradients(model, X, _targets(loss, n, k), sample_weight=w, l2=l2, loss=loss, inputs=True)
    assert r["max_rel_error"] < TOL, r["errors"]


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_loss_delta_is_the_gradient_wrt_logits(backend, loss: str) -> None:
    """The delta a loss writes is d(loss)/dZ, checked on the loss kernel alone."""
    be = backend
    n, k = 5, 4
    rng = np.random.default_rng(11)
    Z = rng.normal(size=(n, k))
    Y = _targets(loss, n, k)
    if loss == "cross_entropy":
        Y = np.eye(k)[Y]
    w = rng.uniform(0.5, 2.0, n)
    lossfn = LOSSES[loss]
    Yd, wd = be.asarray(Y, "float64"), be.asarray(w, "float64")

    def f(z: np.ndarray) -> float:
        return be.to_float(lossfn(be, be.asarray(z, "float64"), Yd, None, wd))

    numeric = numerical_grad(f, Z.copy())
    dZ = be.empty((n, k), "float64")
    lossfn(be, be.asarray(Z, "float64"), Yd, dZ, wd)
    assert relative_error(be.to_numpy(dZ), numeric) < TOL


# --------------------------------------------------------------- whole network
@pytest.mark.parametrize("output", ["softmax", "logistic", "identity", "exp"])
def test_whole_network(backend, output: str) -> None:
    """A 4-layer network with mixed activation layers, every parameter and the input."""
    k = 3
    loss = {v: n for n, v in OUTPUT_OF.items()}[output]
    layers = [
        Dense(5, 7, activation="gelu"),
        Dense(7, 6, activation="logistic"),
        ActivationLayer("tanh"),
        Dropout(0.25),
        Dense(6, 4, activation="leaky_relu"),
        Dense(4, k, activation=output),
    ]
    model = mlpx.Sequential(layers, backend=backend, dtype="float64", seed=7)
    X = _data(n=6, d=5, seed=3)
    _away_from_kinks(model, X)
    r = check_gradients(model, X, _targets(loss, 6, k), sample_weight=np.arange(1.0, 7.0), l2=0.3, inputs=True)
    assert r["max_rel_error"] < TOL, r["errors"]


def test_float32_model_is_checked_through_a_float64_copy(backend) -> None:
    model = mlpx.MLP([4, 5, 3], activation="tanh", backend=backend, seed=0)  # float32
    before = model.get_flat_params()
    r = check_gradients(model, _data(), [0, 1, 2, 0, 1, 2])
    assert r["max_rel_error"] < TOL
    assert all(g.dtype == np.float64 for g in r["analytic"].values())
    np.testing.assert_array_equal(model.get_flat_params(), before)  # untouched


# ------------------------------------------------------------ the checker itself
def test_numerical_grad_of_a_known_function() -> None:
    x = np.array([[0.3, -1.2], [2.0, 0.5]])
    g = numerical_grad(lambda v: float(np.sum(np.sin(v) * v**2)), x.copy())
    exact = np.cos(x) * x**2 + 2 * x * np.sin(x)
    np.testing.assert_allclose(g, exact, rtol=1e-8, atol=1e-10)
    with pytest.raises(TypeError, match="float64"):
        numerical_grad(lambda v: 0.0, x.astype(np.float32))


def test_checker_catches_a_wrong_backward(monkeypatch: pytest.MonkeyPatch) -> None:
    """A planted bug (tanh' off by 1%) must show up: the check can fail."""
    from mlpx import activations

    generic = activations.tanh_backward.generic

    def wrong(xp, dH, Z, H, out):
        generic(xp, dH, Z, H, out)
        out[...] = out * 1.01
        return out

    # every variant a backend might pick (numpy, cupy) becomes the wrong one; the
    # numba loops compute tanh' themselves (mlpx.layers.dense_backward), so without them
    for kind in list(activations.tanh_backward.variants):
        monkeypatch.setitem(activations.tanh_backward.variants, kind, wrong)
    monkeypatch.setattr(mlpx.backends.jit, "_ENABLED", False)
    model = mlpx.MLP([4, 5, 3], activation="tanh", dtype="float64", seed=0,
                     backend=mlpx.backends.NumpyBackend())  # fresh kernel cache
    r = check_gradients(model, _data(), [0, 1, 2, 0, 1, 2])
    assert r["errors"]["0.W"] > 1e-3
    assert r["errors"]["1.W"] < TOL  # the output layer's gradient does not pass through tanh'
