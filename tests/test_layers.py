"""Layers against hand-written NumPy formulas; initialisers against their definitions."""

from __future__ import annotations

import numpy as np
import pytest

import mlpx
from mlpx.activations import ACTIVATIONS, get_activation
from mlpx.initializers import glorot_uniform, he_uniform
from mlpx.layers import (  # noqa: I001
    Pass,
    GELU,
    ActivationLayer,
    Dense,
    Dropout,
    Identity,
    LeakyReLU,
    ReLU,
    Sigmoid,
    Softmax,
    Tanh,
    layer_from_config,
)

# Independent references of every activation (host NumPy / SciPy).
from scipy.special import expit, softmax as sp_softmax

REFERENCE = {
    "identity": lambda z: z,
    "relu": lambda z: np.maximum(z, 0.0),
    "leaky_relu": lambda z: np.where(z > 0, z, 0.01 * z),
    "logistic": expit,
    "tanh": np.tanh,
    "gelu": lambda z: 0.5 * z * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z**3))),
    "softmax": lambda z: sp_softmax(z, axis=1),
    "exp": np.exp,
}


def test_reference_table_covers_every_activation() -> None:
    assert set(REFERENCE) == set(ACTIVATIONS)


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_activation_forward_against_reference(backend, name: str) -> None:
    be = backend
    Z = np.linspace(-6, 6, 35).reshape(5, 7)
    if name == "logistic":
        Z[0, :2] = [-800.0, 800.0]  # stable at the extremes
    if name == "softmax":
        Z[1] += 1000.0  # stable for huge logits
    for dtype, tol in (("float32", 2e-6), ("float64", 1e-13)):
        Zd = be.asarray(Z, dtype)
        ref = REFERENCE[name](np.asarray(be.to_numpy(Zd), dtype=np.float64))  # of the rounded input
        H = get_activation(name).forward(be, Zd, out=be.empty(Z.shape, dtype))
        got = be.to_numpy(H)
        assert got.dtype == np.dtype(dtype)
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, ref, rtol=tol, atol=tol)


def test_gelu_close_to_exact_erf_gelu() -> None:
    """The tanh approximation stays within its known error (~1e-3) of x·Φ(x)."""
    from scipy.special import erf

    z = np.linspace(-5, 5, 101)[None, :]
    be = mlpx.get_backend("cpu")
    H = get_activation("gelu").forward(be, z.copy(), out=np.empty_like(z))
    exact = 0.5 * z * (1 + erf(z / np.sqrt(2)))
    assert np.max(np.abs(H - exact)) < 1e-3


def test_unknown_activation_lists_valid() -> None:
    with pytest.raises(ValueError) as err:
        get_activation("swishy")
    for name in ACTIVATIONS:
        assert name in str(err.value)
    assert get_activation("sigmoid").name == "logistic"
    assert get_activation(None).name == "identity"
    with pytest.raises(ValueError, match="relu"):
        mlpx.MLP([2, 3, 2], activation="rleu")
    with pytest.raises(ValueError, match="logistic"):
        ActivationLayer("sigmod")


def test_two_layer_network_by_hand(backend) -> None:
    """Forward and backward of X -> Dense(tanh) -> Dense -> softmax + CE, by hand."""
    X = np.array([[0.5, -1.0, 2.0], [1.5, 0.25, -0.5]])
    y = np.array([2, 0])
    W1 = np.array([[0.1, -0.2], [0.3, 0.05], [-0.15, 0.2]])
    b1 = np.array([0.01, -0.02])
    W2 = np.array([[0.4, -0.3, 0.2], [-0.1, 0.25, 0.3]])
    b2 = np.array([0.0, 0.1, -0.1])
    model = mlpx.MLP([3, 2, 3], activation="tanh", output="softmax", backend=backend, dtype="float64")
    model.set_weights([W1, b1, W2, b2])

    # forward, by hand
    Z1 = X @ W1 + b1
    H1 = np.tanh(Z1)
    Z2 = H1 @ W2 + b2
    P = np.exp(Z2) / np.exp(Z2).sum(1, keepdims=True)
    Y = np.eye(3)[y]
    loss = -np.mean(np.log(P[np.arange(2), y]))
    # backward, by hand: dZ = (P − Y)/n, dW = Xᵀ dZ, db = Σ rows, dX = dZ Wᵀ
    dZ2 = (P - Y) / 2
    dW2, db2 = H1.T @ dZ2, dZ2.sum(0)
    dH1 = dZ2 @ W2.T
    dZ1 = dH1 * (1 - H1**2)
    dW1, db1 = X.T @ dZ1, dZ1.sum(0)

    np.testing.assert_allclose(model.predict_proba(X), P, rtol=1e-12)
    be = model.backend
    logits = be.to_numpy(model.forward(be.asarray(X, "float64")))
    np.testing.assert_allclose(logits, Z2, rtol=1e-12)
    value, grads = model.loss_and_grads(X, y)
    assert value == pytest.approx(loss, rel=1e-12)
    for key, ref in (("0.W", dW1), ("0.b", db1), ("1.W", dW2), ("1.b", db2)):
        np.testing.assert_allclose(grads[key], ref, rtol=1e-11, atol=1e-15, err_msg=key)

    # dX of the first layer (the model skips it; call the layer protocol directly,
    # member form with one member)
    layer0, layer1 = model.layers
    ctx = Pass(be, "float64", {}, True)
    p0 = {"W": be.asarray(W1[None], "float64"), "b": be.asarray(b1[None], "float64")}
    p1 = {"W": be.asarray(W2[None], "float64"), "b": be.asarray(b2[None], "float64")}
    H, saved0 = layer0.forward(ctx, 0, be.asarray(X[None], "float64"), p0)
    _, saved1 = layer1.forward(ctx, 1, H, p1)
    dH1, g1 = layer1.backward(ctx, 1, be.asarray(dZ2[None], "float64"), saved1, p1, None, True)
    dX, g0 = layer0.backward(ctx, 0, dH1, saved0, p0, None, True)
    np.testing.assert_allclose(be.to_numpy(dX)[0], dZ1 @ W1.T, rtol=1e-12)
    np.testing.assert_allclose(be.to_numpy(g0["W"])[0], dW1, rtol=1e-11, atol=1e-15)
    np.testing.assert_allclose(be.to_numpy(g1["b"])[0], db2, rtol=1e-11, atol=1e-15)


def test_dense_shapes_and_config() -> None:
    d = Dense(4, 3, activation="relu", init="he")
    assert d.get_config() == {"type": "Dense", "n_in": 4, "n_out": 3, "activation": "relu", "init": "he"}
    assert d.param_shapes() == [("W", (4, 3), "weight"), ("b", (3,), "bias")]
    again = layer_from_config(d.get_config())
    assert isinstance(again, Dense) and again.get_config() == d.get_config()
    for bad in (0, -1, 2.5, True, "3"):
        with pytest.raises(ValueError, match="positive integer"):
            Dense(bad, 3)
    with pytest.raises(ValueError, match="glorot"):
        Dense(2, 3, init="zeros")
    with pytest.raises(ValueError, match="Dense expects 5 inputs"):
        mlpx.Sequential([Dense(4, 3), Dense(5, 2)])
    with pytest.raises(ValueError, match="unknown layer type"):
        layer_from_config({"type": "Conv2D"})


@pytest.mark.parametrize(
    "cls, name",
    [(Identity, "identity"), (ReLU, "relu"), (Sigmoid, "logistic"), (Tanh, "tanh"),
     (GELU, "gelu"), (Softmax, "softmax"), (LeakyReLU, "leaky_relu")],
)
def test_activation_layer_classes(cls, name: str) -> None:
    layer = cls()
    assert layer.activation.name == name
    assert layer_from_config(layer.get_config()).activation.name == name


def test_activation_layer_keeps_its_input_intact(backend) -> None:
    """ActivationLayer writes its own buffer: the Dense before it still needs its output."""
    model = mlpx.Sequential([Dense(3, 4), ReLU(), Dense(4, 2)], backend=backend, dtype="float64", seed=0)
    be = model.backend
    X = np.random.default_rng(0).normal(size=(5, 3))
    ctx = Pass(be, "float64", {}, True)
    params = {k[2:]: be.xp.reshape(v, (1,) + tuple(v.shape)) for k, v in model.parameters().items()
              if k.startswith("0.")}
    H0, _ = model.layers[0].forward(ctx, 0, be.asarray(X[None], "float64"), params)
    before = be.to_numpy(H0).copy()
    H1, _ = model.layers[1].forward(ctx, 1, H0, {})
    np.testing.assert_array_equal(be.to_numpy(H0), before)
    np.testing.assert_array_equal(be.to_numpy(H1), np.maximum(before, 0))


# ------------------------------------------------------------------ dropout
def _dropout_pass(be, d: Dropout, train: bool, members: int = 1, dtype: str = "float64") -> Pass:
    return Pass(be, dtype, {}, train, {0: [d.generator(s, 0) for s in range(members)]})


def test_dropout_train_and_inference(backend) -> None:
    be = backend
    d = Dropout(0.25, seed=0)
    d.build(200)
    X = be.asarray(np.ones((1, 50, 200)), "float64")
    assert d.forward(_dropout_pass(be, d, False), 0, X, {})[0] is X  # identity at inference
    ctx = _dropout_pass(be, d, True)
    H, mask = d.forward(ctx, 0, X, {})
    H = be.to_numpy(H)
    kept = H != 0
    np.testing.assert_allclose(H[kept], 1 / 0.75)  # inverted dropout scaling
    assert abs(kept.mean() - 0.75) < 0.02  # 10000 draws
    # backward applies the same mask and scale
    dY = be.asarray(np.full((1, 50, 200), 2.0), "float64")
    dX, _ = d.backward(ctx, 0, dY, mask, {}, None, True)
    np.testing.assert_allclose(be.to_numpy(dX), 2.0 * H)


def test_dropout_members_draw_their_own_masks(backend) -> None:
    """Each member's generator (seeded from its own seed) gives its own mask: member
    k's mask is what a single network with seed k draws."""
    be = backend
    d = Dropout(0.5)
    d.build(9)
    X = be.asarray(np.ones((3, 4, 9)), "float64")
    H, _ = d.forward(_dropout_pass(be, d, True, members=3), 0, X, {})
    H = be.to_numpy(H)
    for k in range(3):
        alone, _ = d.forward(Pass(be, "float64", {}, True, {0: [d.generator(k, 0)]}), 0, X[k:k + 1, ...], {})
        np.testing.assert_array_equal(H[k], be.to_numpy(alone)[0])
    assert not np.array_equal(H[0], H[1])


def test_dropout_mask_is_the_same_on_every_backend(strict_backend) -> None:
    masks = []
    for be in (mlpx.get_backend("cpu"), strict_backend):
        d = Dropout(0.5, seed=42)
        d.build(7)
        H, _ = d.forward(_dropout_pass(be, d, True, dtype="float32"), 0, be.asarray(np.ones((1, 6, 7)), "float32"), {})
        masks.append(np.asarray(be.to_numpy(H)))
    np.testing.assert_array_equal(masks[0], masks[1])


def test_dropout_rejects_bad_p() -> None:
    for p in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            Dropout(p)
    assert Dropout(0.0).forward(Pass(mlpx.get_backend("cpu"), "float64", {}, True), 0, "anything", {})[0] == "anything"


# ------------------------------------------------------------- initialisers
@pytest.mark.parametrize("act, factor", [("logistic", 2.0), ("relu", 6.0), ("tanh", 6.0), ("identity", 6.0)])
def test_glorot_uniform_is_sklearns_draw(act: str, factor: float) -> None:
    """Same stream as scikit-learn's MLP._init_coef: W then b from U(±sqrt(f/(in+out)))."""
    n_in, n_out = 30, 20
    W, b = glorot_uniform(np.random.RandomState(3), n_in, n_out, act)
    bound = np.sqrt(factor / (n_in + n_out))
    ref = np.random.RandomState(3)
    np.testing.assert_array_equal(W, ref.uniform(-bound, bound, (n_in, n_out)))
    np.testing.assert_array_equal(b, ref.uniform(-bound, bound, n_out))
    assert np.abs(W).max() <= bound and np.abs(W).max() > 0.9 * bound


def test_model_init_draws_like_sklearn_layer_by_layer() -> None:
    """Seeded with a RandomState, an MLP draws each layer as scikit-learn's _init_coef does.

    Hidden logistic layers use factor 2 (scikit-learn's own initialiser is the
    reference); the output layer's factor follows *its* activation (the logits layer
    is identity: factor 6) in mlpx.MLP, while scikit-learn applies the hidden
    activation's factor everywhere (mlpx.MLPClassifier reproduces that exactly).
    """
    from sklearn.neural_network import MLPClassifier

    sk = MLPClassifier((8, 5), activation="logistic")
    sk._random_state = np.random.RandomState(0)
    sizes = [6, 8, 5, 3]
    hidden = [sk._init_coef(a, b, np.float64) for a, b in zip(sizes[:-2], sizes[1:-1])]
    bound = np.sqrt(6.0 / (5 + 3))
    out_W = sk._random_state.uniform(-bound, bound, (5, 3))
    out_b = sk._random_state.uniform(-bound, bound, 3)
    model = mlpx.MLP(sizes, activation="logistic", dtype="float64")
    model.initialize(np.random.RandomState(0))
    weights = model.get_weights()
    for k, (coef, intercept) in enumerate(hidden):
        np.testing.assert_array_equal(weights[2 * k], coef, err_msg=f"layer {k} W")
        np.testing.assert_array_equal(weights[2 * k + 1], intercept, err_msg=f"layer {k} b")
    np.testing.assert_array_equal(weights[4], out_W)
    np.testing.assert_array_equal(weights[5], out_b)


def test_he_uniform_bounds() -> None:
    W, b = he_uniform(np.random.default_rng(0), 50, 40)
    bound = np.sqrt(6 / 50)
    assert W.shape == (50, 40) and np.abs(W).max() <= bound and np.abs(W).max() > 0.95 * bound
    np.testing.assert_array_equal(b, 0.0)
