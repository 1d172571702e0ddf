"""Fitted attributes set by hand work as in scikit-learn: its own ``test_fit`` builds a
network by assigning ``coefs_``, ``intercepts_``, ``n_layers_``... and calls
``partial_fit``; ``predict`` works on such an estimator too."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sklearn")
from sklearn import neural_network as sk  # noqa: E402

import mlpx  # noqa: E402


def _hand_built(cls, **kw):
    mlp = cls(solver="sgd", learning_rate_init=0.1, alpha=0.1, activation="logistic", random_state=1,
              max_iter=1, hidden_layer_sizes=2, momentum=0, **kw)
    mlp.coefs_ = [np.array([[0.1, 0.2], [0.3, 0.1], [0.5, 0.0]]), np.array([[0.1], [0.2]])]
    mlp.intercepts_ = [np.array([0.1, 0.1]), np.array([1.0])]
    mlp.n_outputs_ = 1
    mlp.n_features_in_ = 3
    mlp.n_iter_ = 0
    mlp.n_layers_ = 3
    mlp.out_activation_ = "logistic"
    mlp.t_ = 0
    mlp.best_loss_ = np.inf
    mlp.loss_curve_ = []
    mlp._no_improvement_count = 0
    return mlp


def test_scikit_learns_worked_example_through_partial_fit() -> None:
    X, y = np.array([[0.6, 0.8, 0.7]]), np.array([0])
    ours, theirs = _hand_built(mlpx.MLPClassifier), _hand_built(sk.MLPClassifier)
    ours.partial_fit(X, y, classes=[0, 1])
    theirs.partial_fit(X, y, classes=[0, 1])
    # the hand-computed values of scikit-learn's test_fit
    np.testing.assert_allclose(
        ours.coefs_[0], [[0.098, 0.195756], [0.2956664, 0.096008], [0.4939998, -0.002244]], atol=1e-3)
    np.testing.assert_allclose(ours.coefs_[1], [[0.04706], [0.154089]], atol=1e-3)
    np.testing.assert_allclose(ours.intercepts_[0], [0.098333, 0.09626], atol=1e-3)
    np.testing.assert_allclose(ours.intercepts_[1], [0.9235], atol=1e-3)
    assert ours.predict_proba(X)[0, 1] == pytest.approx(0.739, abs=1e-3)
    # and scikit-learn's own result on the same state, to rounding
    for a, b in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
    assert ours.t_ == theirs.t_ == 1 and ours.loss_curve_ == pytest.approx(theirs.loss_curve_, rel=1e-12)


@pytest.mark.parametrize("kind", ["classifier", "regressor"])
def test_predict_on_attributes_set_by_hand(kind: str) -> None:
    rng = np.random.default_rng(0)
    coefs = [rng.normal(size=(4, 5)), rng.normal(size=(5, 2))]
    intercepts = [rng.normal(size=5), rng.normal(size=2)]
    X = rng.normal(size=(7, 4))
    pair = (mlpx.MLPClassifier, sk.MLPClassifier) if kind == "classifier" else (mlpx.MLPRegressor, sk.MLPRegressor)
    ests = []
    for cls in pair:
        est = cls(activation="tanh")
        est.coefs_, est.intercepts_ = [c.copy() for c in coefs], [b.copy() for b in intercepts]
        est.n_features_in_, est.n_layers_, est.n_outputs_ = 4, 3, 2
        est.out_activation_ = "logistic" if kind == "classifier" else "identity"
        if kind == "classifier":
            from sklearn.preprocessing import LabelBinarizer

            est._label_binarizer = LabelBinarizer().fit(np.array([[0, 1], [1, 0]]))
            est.classes_ = est._label_binarizer.classes_
        ests.append(est)
    ours, theirs = ests
    method = "predict_proba" if kind == "classifier" else "predict"
    np.testing.assert_allclose(getattr(ours, method)(X), getattr(theirs, method)(X), rtol=1e-12)
    np.testing.assert_array_equal(ours.predict(X), theirs.predict(X))
