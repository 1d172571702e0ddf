"""Loss values and deltas against SciPy / scikit-learn, on every backend."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit, logsumexp, softmax, xlogy

import mlpx
from mlpx.losses import LOSSES, OUTPUT_LOSS, get_loss

RTOL = {"float32": 2e-5, "float64": 1e-12}


def _problem(loss: str, n: int = 8, k: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    Z = rng.normal(scale=2.0, size=(n, k))
    if loss == "cross_entropy":
        Y = np.eye(k)[rng.integers(0, k, n)]
    elif loss == "binary_cross_entropy":
        Y = (rng.random((n, k)) > 0.5).astype(float)
    elif loss == "poisson":
        Y = rng.poisson(2.0, (n, k)).astype(float)
        Y[0, 0] = 0.0  # y log y at y = 0
    else:
        Y = rng.normal(size=(n, k))
    return Z, Y, rng.uniform(0.1, 3.0, n)


def _reference(loss: str, Z: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row loss and the output activation Ŷ, from SciPy."""
    if loss == "cross_entropy":
        return logsumexp(Z, axis=1) - (Y * Z).sum(1), softmax(Z, axis=1)
    if loss == "binary_cross_entropy":
        P = expit(Z)
        return -(xlogy(Y, P) + xlogy(1 - Y, 1 - P)).sum(1), P
    if loss == "poisson":
        P = np.exp(Z)
        return (xlogy(Y, Y) - xlogy(Y, P) - Y + P).sum(1), P  # ½ the Poisson deviance
    return 0.5 * ((Z - Y) ** 2).sum(1), Z


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_loss_value_and_delta(backend, loss: str, weighted: bool, dtype: str) -> None:
    be = backend
    Z, Y, w = _problem(loss)
    per_row, P = _reference(loss, Z, Y)
    if weighted:
        expected = (w * per_row).sum() / w.sum()
        delta = w[:, None] * (P - Y) / w.sum()
    else:
        expected = per_row.mean()
        delta = (P - Y) / len(Z)
    Zd, Yd = be.asarray(Z, dtype), be.asarray(Y, dtype)
    wd = be.asarray(w, dtype) if weighted else None
    fn = LOSSES[loss]
    dZ = be.empty(Z.shape, dtype)
    value = be.to_float(fn(be, Zd, Yd, dZ, wd))
    assert value == pytest.approx(expected, rel=RTOL[dtype])
    np.testing.assert_allclose(be.to_numpy(dZ), delta, rtol=RTOL[dtype] * 10, atol=RTOL[dtype] * 1e-2)
    # without dZ: the same value, nothing written
    assert be.to_float(fn(be, Zd, Yd, None, wd)) == pytest.approx(expected, rel=RTOL[dtype])
    # dZ may be Z itself (the logits workspace)
    Zd2 = be.asarray(Z, dtype)
    value2 = be.to_float(fn(be, Zd2, Yd, Zd2, wd))
    assert value2 == pytest.approx(expected, rel=RTOL[dtype])
    np.testing.assert_allclose(be.to_numpy(Zd2), delta, rtol=RTOL[dtype] * 10, atol=RTOL[dtype] * 1e-2)


def test_explicit_denominator(backend) -> None:
    be = backend
    Z, Y, _ = _problem("squared_error")
    per_row, _ = _reference("squared_error", Z, Y)
    dZ = be.empty(Z.shape, "float64")
    value = be.to_float(LOSSES["squared_error"](be, be.asarray(Z, "float64"), be.asarray(Y, "float64"), dZ, None, 20.0))
    assert value == pytest.approx(per_row.sum() / 20.0, rel=1e-12)
    np.testing.assert_allclose(be.to_numpy(dZ), (Z - Y) / 20.0, rtol=1e-12)


def test_cross_entropy_matches_sklearn_log_loss(backend) -> None:
    from sklearn.metrics import log_loss

    be = backend
    rng = np.random.default_rng(1)
    Z = rng.normal(scale=3, size=(40, 5))
    y = rng.integers(0, 5, 40)
    w = rng.uniform(0.5, 2.0, 40)
    Zd, Yd = be.asarray(Z, "float64"), be.asarray(np.eye(5)[y], "float64")
    got = be.to_float(LOSSES["cross_entropy"](be, Zd, Yd))
    assert got == pytest.approx(log_loss(y, softmax(Z, axis=1), labels=range(5)), rel=1e-10)
    got_w = be.to_float(LOSSES["cross_entropy"](be, Zd, Yd, sample_weight=be.asarray(w, "float64")))
    assert got_w == pytest.approx(log_loss(y, softmax(Z, axis=1), sample_weight=w, labels=range(5)), rel=1e-10)


def test_binary_cross_entropy_matches_sklearn_log_loss(backend) -> None:
    from sklearn.metrics import log_loss

    be = backend
    rng = np.random.default_rng(2)
    z = rng.normal(scale=2, size=(30, 1))
    y = (rng.random(30) > 0.4).astype(float)
    got = be.to_float(LOSSES["binary_cross_entropy"](be, be.asarray(z, "float64"), be.asarray(y[:, None], "float64")))
    assert got == pytest.approx(log_loss(y, expit(z[:, 0])), rel=1e-10)


def test_poisson_matches_sklearn_deviance(backend) -> None:
    from sklearn.metrics import mean_poisson_deviance

    be = backend
    rng = np.random.default_rng(3)
    z = rng.normal(size=(25, 1))
    y = rng.poisson(np.exp(z[:, 0])).astype(float)
    got = be.to_float(LOSSES["poisson"](be, be.asarray(z, "float64"), be.asarray(y[:, None], "float64")))
    assert got == pytest.approx(0.5 * mean_poisson_deviance(y, np.exp(z[:, 0])), rel=1e-10)


@pytest.mark.parametrize("loss", ["cross_entropy", "binary_cross_entropy"])
def test_cross_entropies_are_finite_for_extreme_logits(backend, loss: str) -> None:
    """Computed from logits: finite where probabilities round to exactly 0 or 1."""
    be = backend
    Z = np.array([[1000.0, -1000.0], [-1000.0, 1000.0], [0.0, 0.0]])
    Y = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    for dtype in ("float32", "float64"):
        dZ = be.empty(Z.shape, dtype)
        value = be.to_float(LOSSES[loss](be, be.asarray(Z, dtype), be.asarray(Y, dtype), dZ))
        per_row, P = _reference(loss, Z, Y)
        if loss == "cross_entropy":
            expected = per_row.mean()  # logsumexp is exact here: (2000 + 2000 + log 2) / 3
        else:
            expected = (2000 + 2000 + 2 * np.log(2)) / 3  # softplus(±1000) = 1000 for the wrong label
        assert np.isfinite(value)
        assert value == pytest.approx(expected, rel=1e-6)
        assert np.isfinite(be.to_numpy(dZ)).all()


def test_unknown_loss_lists_valid() -> None:
    with pytest.raises(ValueError) as err:
        get_loss("hinge")
    for name in LOSSES:
        assert name in str(err.value)
    assert get_loss("mse").name == "squared_error" and get_loss("log_loss").name == "cross_entropy"


def test_loss_must_suit_the_output() -> None:
    """Any loss goes on any output whose values lie in its domain; others are refused."""
    model = mlpx.MLP([3, 4, 2], output="softmax", seed=0)
    assert model.resolve_loss(None).name == "cross_entropy" and model.resolve_loss(None).canonical
    assert not model.resolve_loss("squared_error").canonical  # chain rule through softmax
    X, y = np.ones((4, 3)), np.array([0, 1, 0, 1])
    regression = mlpx.MLP([3, 4, 2], output="identity", seed=0)
    with pytest.raises(ValueError, match="domain"):
        regression.resolve_loss("cross_entropy")  # log of a value that may be negative
    with pytest.raises(ValueError, match="domain"):
        mlpx.MLP([3, 4, 2], output="tanh", seed=0).fit(X, np.ones((4, 2)) * 0.5, epochs=1, loss="poisson")
    assert OUTPUT_LOSS == {"softmax": "cross_entropy", "logistic": "binary_cross_entropy",
                           "identity": "squared_error", "exp": "poisson"}
    no_loss = mlpx.MLP([3, 4, 2], output="tanh", seed=0)
    with pytest.raises(ValueError, match="no loss is paired"):
        no_loss.fit(X, y, epochs=1)


@pytest.mark.parametrize("weighted", [False, True])
def test_l2_term_in_loss_and_grads(backend, weighted: bool) -> None:
    """loss_and_grads(l2) = data loss + ½ l2 Σ‖W‖² / d, and l2 W / d on weights only."""
    rng = np.random.default_rng(4)
    X, y = rng.normal(size=(10, 3)), rng.integers(0, 2, 10)
    w = rng.uniform(0.5, 2.0, 10) if weighted else None
    d = w.sum() if weighted else 10.0
    model = mlpx.MLP([3, 5, 2], activation="tanh", backend=backend, dtype="float64", seed=1)
    base, g0 = model.loss_and_grads(X, y, sample_weight=w)
    l2 = 0.8
    value, g = model.loss_and_grads(X, y, sample_weight=w, l2=l2)
    Ws = model.get_weights()[0::2]
    assert value == pytest.approx(base + 0.5 * l2 * sum((W**2).sum() for W in Ws) / d, rel=1e-12)
    for i, W in enumerate(Ws):
        np.testing.assert_allclose(g[f"{i}.W"], g0[f"{i}.W"] + l2 * W / d, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(g[f"{i}.b"], g0[f"{i}.b"], rtol=1e-12, atol=1e-15)  # biases not penalised


def test_sample_weight_equals_repeating_rows(backend) -> None:
    """Weight 2 on a row is the same loss and gradient as that row twice (d = Σ w)."""
    rng = np.random.default_rng(5)
    X, y = rng.normal(size=(6, 3)), rng.integers(0, 3, 6)
    w = np.array([1.0, 2.0, 1.0, 3.0, 1.0, 1.0])
    rep = np.repeat(np.arange(6), w.astype(int))
    model = mlpx.MLP([3, 4, 3], activation="tanh", backend=backend, dtype="float64", seed=2)
    a, ga = model.loss_and_grads(X, y, sample_weight=w)
    b, gb = model.loss_and_grads(X[rep], y[rep])
    assert a == pytest.approx(b, rel=1e-12)
    for k in ga:
        np.testing.assert_allclose(ga[k], gb[k], rtol=1e-10, atol=1e-14)


def _huber(delta: float):
    from mlpx.backends import kernel

    @kernel
    def huber(xp, P, Y, w, inv_d, dP):
        R = P - Y
        small = xp.abs(R) <= delta
        per_row = xp.sum(xp.where(small, 0.5 * R * R, delta * (xp.abs(R) - 0.5 * delta)), axis=2)
        scale = inv_d[:, None] if w is None else w * inv_d[:, None]
        grad = None if dP is None else scale[:, :, None] * xp.where(small, R, delta * xp.sign(R))
        return xp.sum(scale * per_row, axis=1), grad

    return huber


@pytest.mark.parametrize("weighted", [False, True])
def test_a_loss_of_ones_own_on_a_non_canonical_output(weighted: bool) -> None:
    # A user's loss kernel over K members (the documented contract), on a tanh output:
    # its gradient against float64 finite differences, and its value by hand.
    from mlpx.gradcheck import check_gradients
    from mlpx.losses import Loss

    delta = 0.1
    huber = Loss("huber", "identity", _huber(delta), _huber(delta), ("*",))
    rng = np.random.default_rng(0)
    X = rng.uniform(-2, 2, (24, 3))
    y = rng.uniform(-0.9, 0.9, (24, 2))
    w = rng.uniform(0.5, 2.0, 24) if weighted else None
    m = mlpx.MLP([3, 8, 2], activation="tanh", output="tanh", dtype="float64", seed=1)
    report = check_gradients(m, X, y, loss=huber, sample_weight=w)
    assert report["max_rel_error"] < 1e-6
    R = m.predict(X) - y
    per_row = np.where(np.abs(R) <= delta, 0.5 * R * R, delta * (np.abs(R) - 0.5 * delta)).sum(axis=1)
    want = per_row.mean() if w is None else (w * per_row).sum() / w.sum()
    got, _ = m.loss_and_grads(X, y, sample_weight=w, loss=huber)
    assert got == pytest.approx(want, rel=1e-12)
