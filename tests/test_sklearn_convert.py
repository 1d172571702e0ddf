"""Conversion between mlpx's estimators and scikit-learn's (``to_sklearn`` /
``from_sklearn``), and the skl2onnx route it opens.

The reference is scikit-learn itself: the converted estimator must predict what
the original predicts (float64: within 1e-12), carry every fitted attribute, and
continue a warm-started fit exactly as scikit-learn continues its own.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
import sklearn.neural_network as sk
from sklearn.exceptions import NotFittedError

import mlpx

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

FITTED = ("n_features_in_", "n_outputs_", "n_layers_", "out_activation_", "n_iter_", "t_",
          "loss_", "loss_curve_", "best_loss_", "validation_scores_", "best_validation_score_")

TARGETS = {
    "binary": lambda r: np.array(["neg", "pos"])[r.integers(0, 2, 160)],
    "multiclass": lambda r: r.integers(0, 4, 160) * 10,
    "multilabel": lambda r: r.integers(0, 2, (160, 3)),
}
SOLVERS = [("adam", False), ("sgd", False), ("lbfgs", False), ("adam", True), ("sgd", True)]


def data(dtype: str = "float64") -> np.ndarray:
    return np.random.default_rng(0).normal(size=(160, 5)).astype(dtype)


def classifier(cls: Any, target: str, solver: str, early_stopping: bool, **params: Any) -> Any:
    y = TARGETS[target](np.random.default_rng(1))
    est = cls(hidden_layer_sizes=(7, 5), activation="tanh", solver=solver, max_iter=12,
              early_stopping=early_stopping, random_state=0, **params)
    return est.fit(data(), y)


def assert_same_fit(a: Any, b: Any, exact: bool = True) -> None:
    """Fitted attributes equal: bit for bit when ``exact``, else losses and weights
    to rounding (1e-10 relative)."""
    for name in FITTED + ("classes_",):
        assert hasattr(a, name) == hasattr(b, name), name
        if hasattr(a, name):
            va, vb = getattr(a, name), getattr(b, name)
            if isinstance(va, np.ndarray):
                np.testing.assert_array_equal(va, vb, err_msg=name)
            elif exact or name not in ("loss_", "loss_curve_", "best_loss_"):
                assert va == vb, name
            else:
                assert vb == pytest.approx(va, rel=1e-10), name
    assert len(a.coefs_) == len(b.coefs_)
    for x, y in zip(a.coefs_ + a.intercepts_, b.coefs_ + b.intercepts_):
        assert x.dtype == y.dtype and x.shape == y.shape
        if exact:
            np.testing.assert_array_equal(x, y)


def assert_same_predictions(a: Any, b: Any, X: np.ndarray, tol: float = 1e-12) -> None:
    pa, pb = np.asarray(a.predict(X)), np.asarray(b.predict(X))
    if pa.dtype.kind in "fc" and not hasattr(a, "classes_"):
        np.testing.assert_allclose(pa, pb, rtol=tol, atol=tol)
    else:
        np.testing.assert_array_equal(pa, pb)
    if hasattr(a, "predict_proba"):
        np.testing.assert_allclose(a.predict_proba(X), b.predict_proba(X), rtol=tol, atol=tol)


# ------------------------------------------------------------- to_sklearn
@pytest.mark.parametrize("solver,early_stopping", SOLVERS)
@pytest.mark.parametrize("target", list(TARGETS))
def test_to_sklearn_classifier(target: str, solver: str, early_stopping: bool) -> None:
    est = classifier(mlpx.MLPClassifier, target, solver, early_stopping)
    out = est.to_sklearn()
    assert type(out) is sk.MLPClassifier
    expected = {k: v for k, v in est.get_params().items() if k not in ("backend", "dtype")}
    assert out.get_params() == expected
    assert_same_fit(est, out)
    assert out._label_binarizer.y_type_ == est._label_binarizer.y_type_
    assert_same_predictions(est, out, data())
    # A copy: changing the original's weights leaves the converted one alone.
    before = [c.copy() for c in out.coefs_]
    for c in est.coefs_:
        c *= 2.0
    for c, b in zip(out.coefs_, before):
        np.testing.assert_array_equal(c, b)


@pytest.mark.parametrize("loss,k", [("squared_error", 1), ("squared_error", 2), ("poisson", 1)])
def test_to_sklearn_regressor(loss: str, k: int) -> None:
    rng = np.random.default_rng(3)
    y = rng.poisson(2.0, 160).astype(float) if loss == "poisson" else rng.normal(size=(160, k)).squeeze()
    est = mlpx.MLPRegressor(loss=loss, hidden_layer_sizes=(6,), max_iter=15, random_state=0).fit(data(), y)
    out = est.to_sklearn()
    assert type(out) is sk.MLPRegressor and out.loss == loss
    assert_same_fit(est, out)
    assert_same_predictions(est, out, data())


def test_to_sklearn_float32_and_feature_names() -> None:
    pd = pytest.importorskip("pandas")
    X = pd.DataFrame(data("float32"), columns=[f"f{i}" for i in range(5)])
    y = TARGETS["multiclass"](np.random.default_rng(1))
    est = mlpx.MLPClassifier((6,), max_iter=10, random_state=0).fit(X, y)
    out = est.to_sklearn()
    assert out.coefs_[0].dtype == np.float32
    np.testing.assert_array_equal(out.feature_names_in_, X.columns)
    np.testing.assert_array_equal(out.predict(X), est.predict(X))
    np.testing.assert_allclose(out.predict_proba(X), est.predict_proba(X), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------- from_sklearn
@pytest.mark.parametrize("solver,early_stopping", SOLVERS)
@pytest.mark.parametrize("target", list(TARGETS))
def test_from_sklearn_classifier(target: str, solver: str, early_stopping: bool) -> None:
    ref = classifier(sk.MLPClassifier, target, solver, early_stopping)
    est = mlpx.MLPClassifier.from_sklearn(ref)
    assert type(est) is mlpx.MLPClassifier and est.backend == "cpu"
    assert {k: v for k, v in est.get_params().items() if k not in ("backend", "dtype")} == ref.get_params()
    assert_same_fit(ref, est)
    assert_same_predictions(ref, est, data())
    assert est.score(data(), TARGETS[target](np.random.default_rng(1))) == pytest.approx(
        ref.score(data(), TARGETS[target](np.random.default_rng(1))))


@pytest.mark.parametrize("loss,k", [("squared_error", 1), ("squared_error", 2), ("poisson", 1)])
def test_from_sklearn_regressor(loss: str, k: int) -> None:
    rng = np.random.default_rng(3)
    y = rng.poisson(2.0, 160).astype(float) if loss == "poisson" else rng.normal(size=(160, k)).squeeze()
    ref = sk.MLPRegressor(loss=loss, hidden_layer_sizes=(6,), max_iter=15, random_state=0).fit(data(), y)
    est = mlpx.MLPRegressor.from_sklearn(ref)
    assert est.loss == loss
    assert_same_fit(ref, est)
    assert_same_predictions(ref, est, data())


def test_from_sklearn_on_another_backend_and_float32() -> None:
    ref = sk.MLPClassifier((6,), max_iter=10, random_state=0).fit(data("float32"), TARGETS["multiclass"](
        np.random.default_rng(1)))
    assert ref.coefs_[0].dtype == np.float32
    est = mlpx.MLPClassifier.from_sklearn(ref, backend="array_api_strict")
    assert est.backend == "array_api_strict"
    X = data("float32")
    np.testing.assert_array_equal(est.predict(X), ref.predict(X))
    np.testing.assert_allclose(est.predict_proba(X), ref.predict_proba(X), rtol=1e-5, atol=1e-6)
    assert est.predict_proba(X).dtype == np.float32  # computes in scikit-learn's dtype


def test_round_trip_is_identity() -> None:
    est = classifier(mlpx.MLPClassifier, "multiclass", "adam", True)
    back = mlpx.MLPClassifier.from_sklearn(est.to_sklearn())
    assert_same_fit(est, back)
    assert_same_predictions(est, back, data(), tol=0.0)


# ------------------------------------------------------------- continuing
@pytest.mark.parametrize("solver", ["adam", "sgd", "lbfgs"])
def test_warm_start_after_from_sklearn_matches_sklearn(solver: str) -> None:
    """A warm-started fit starts a fresh optimizer on both sides, so the converted
    estimator continues exactly as scikit-learn's own does."""
    ref = classifier(sk.MLPClassifier, "multiclass", solver, False)
    est = mlpx.MLPClassifier.from_sklearn(ref)
    X, y = data(), TARGETS["multiclass"](np.random.default_rng(2))
    for e in (ref, est):
        e.set_params(warm_start=True, max_iter=6).fit(X, y)
    assert_same_fit(ref, est, exact=False)
    for a, b in zip(ref.coefs_ + ref.intercepts_, est.coefs_ + est.intercepts_):
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(est.loss_curve_ if solver != "lbfgs" else [est.loss_],
                               ref.loss_curve_ if solver != "lbfgs" else [ref.loss_], rtol=1e-10)


@pytest.mark.parametrize("solver", ["adam", "sgd"])
def test_warm_start_after_to_sklearn_matches_mlpx(solver: str) -> None:
    est = classifier(mlpx.MLPClassifier, "binary", solver, False)
    out = est.to_sklearn()
    X, y = data(), TARGETS["binary"](np.random.default_rng(2))
    for e in (est, out):
        e.set_params(warm_start=True, max_iter=6).fit(X, y)
    for a, b in zip(est.coefs_ + est.intercepts_, out.coefs_ + out.intercepts_):
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("solver", ["adam", "sgd"])
def test_warm_start_with_early_stopping_after_round_trip(solver: str) -> None:
    """The converted estimator keeps the early-stopping state (best score, counters)
    and continues exactly as the original mlpx estimator does."""
    est = classifier(mlpx.MLPClassifier, "multiclass", solver, True)
    back = mlpx.MLPClassifier.from_sklearn(est.to_sklearn())
    X, y = data(), TARGETS["multiclass"](np.random.default_rng(2))
    for e in (est, back):
        e.set_params(warm_start=True, max_iter=8).fit(X, y)
    assert_same_fit(est, back)


@pytest.mark.parametrize("solver", ["adam", "sgd"])
def test_partial_fit_after_from_sklearn_continues_like_sklearn(solver: str) -> None:
    ref = classifier(sk.MLPClassifier, "multiclass", solver, False)
    est = mlpx.MLPClassifier.from_sklearn(ref)
    X, y = data(), TARGETS["multiclass"](np.random.default_rng(2))
    for _ in range(3):
        ref.partial_fit(X, y)
        est.partial_fit(X, y)
    for a, b in zip(ref.coefs_ + ref.intercepts_, est.coefs_ + est.intercepts_):
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("solver", ["adam", "sgd"])
def test_partial_fit_after_to_sklearn_continues_like_mlpx(solver: str) -> None:
    est = classifier(mlpx.MLPClassifier, "multiclass", solver, False)
    out = est.to_sklearn()
    X, y = data(), TARGETS["multiclass"](np.random.default_rng(2))
    for _ in range(3):
        est.partial_fit(X, y)
        out.partial_fit(X, y)
    for a, b in zip(est.coefs_ + est.intercepts_, out.coefs_ + out.intercepts_):
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------- bad input
def test_conversion_errors() -> None:
    with pytest.raises(NotFittedError):
        mlpx.MLPClassifier().to_sklearn()
    with pytest.raises(NotFittedError):
        mlpx.MLPRegressor.from_sklearn(sk.MLPRegressor())
    clf = classifier(sk.MLPClassifier, "binary", "adam", False)
    with pytest.raises(TypeError, match="MLPRegressor.from_sklearn takes a fitted sklearn"):
        mlpx.MLPRegressor.from_sklearn(clf)
    with pytest.raises(TypeError, match="takes a fitted sklearn.neural_network.MLPClassifier"):
        mlpx.MLPClassifier.from_sklearn(mlpx.MLPClassifier.from_sklearn(clf))


# ------------------------------------------------------------- skl2onnx
@pytest.fixture
def skl2onnx() -> Any:
    pytest.importorskip("onnxruntime", reason="needs onnxruntime: pip install 'mlpx[onnx]'")
    return pytest.importorskip("skl2onnx", reason="needs skl2onnx: pip install 'mlpx[onnx]'")


def run(model: Any, X: np.ndarray) -> dict[str, Any]:
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"X": X})))


def output_types(model: Any) -> dict[str, tuple[str, int]]:
    """Output name -> ("tensor", element type) or ("map", key type) for ZipMap's
    sequence of maps."""
    out = {}
    for v in model.graph.output:
        t = v.type
        if t.HasField("tensor_type"):
            out[v.name] = ("tensor", t.tensor_type.elem_type)
        else:
            out[v.name] = ("map", t.sequence_type.elem_type.map_type.key_type)
    return out


# skl2onnx's own limits, which mlpx's export does not share (test_onnx covers those
# cases): its float64 ZipMap is a graph ONNX Runtime refuses, and its float64
# multilabel Binarizer has no kernel there.
SKL2ONNX_CASES = [
    (target, zipmap, dtype)
    for target in TARGETS for zipmap in (True, False, "columns") for dtype in ("float32", "float64")
    if dtype == "float32" or (zipmap is not True and target != "multilabel")
]


@pytest.mark.parametrize("target,zipmap,dtype", SKL2ONNX_CASES)
def test_skl2onnx_route_equals_mlpx_export(skl2onnx: Any, target: str, zipmap: Any, dtype: str) -> None:
    y = TARGETS[target](np.random.default_rng(1))
    X = data(dtype)
    est = mlpx.MLPClassifier((7, 5), activation="relu", max_iter=12, random_state=0).fit(X, y)
    ours = est.to_onnx(zipmap=zipmap)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # skl2onnx's own deprecation notices
        theirs = skl2onnx.to_onnx(est.to_sklearn(), X[:1], options={"zipmap": zipmap})
    assert output_types(ours) == output_types(theirs)
    a, b = run(ours, X), run(theirs, X)
    assert list(a) == list(b)
    for name in a:
        if isinstance(a[name], list):  # ZipMap: one {class: probability} per row
            assert [list(r) for r in a[name]] == [list(r) for r in b[name]]
            np.testing.assert_allclose([list(r.values()) for r in a[name]],
                                       [list(r.values()) for r in b[name]], rtol=1e-6, atol=1e-7)
        elif a[name].dtype.kind in "fc":
            np.testing.assert_allclose(a[name], b[name], rtol=1e-6, atol=1e-7)
        else:
            np.testing.assert_array_equal(a[name], b[name])
    label = a["label" if zipmap is False else "output_label"]
    np.testing.assert_array_equal(label, est.predict(X))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_skl2onnx_route_regressor(skl2onnx: Any, dtype: str) -> None:
    X = data(dtype)
    y = np.random.default_rng(4).normal(size=160)
    est = mlpx.MLPRegressor(hidden_layer_sizes=(6,), activation="logistic", max_iter=15,
                            random_state=0).fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = skl2onnx.to_onnx(est.to_sklearn(), X[:1])
    a, b = run(est.to_onnx(), X), run(theirs, X)
    assert list(a) == list(b) == ["variable"] and a["variable"].shape == b["variable"].shape == (160, 1)
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == "float32" else {"rtol": 1e-12, "atol": 1e-14}
    np.testing.assert_allclose(a["variable"], b["variable"], **tol)
    np.testing.assert_allclose(a["variable"][:, 0], est.predict(X), **tol)


def test_mlpx_exports_scikit_learn_estimators_too(skl2onnx: Any) -> None:
    from mlpx.onnx import to_onnx

    ref = classifier(sk.MLPClassifier, "binary", "adam", False)
    X = data("float32")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = skl2onnx.to_onnx(ref, X[:1], options={"zipmap": False})
    # skl2onnx computes in the sample's dtype (float32 here), mlpx in dtype=.
    a, b = run(to_onnx(ref, zipmap=False, dtype="float32"), X), run(theirs, X)
    np.testing.assert_array_equal(a["label"], b["label"])
    np.testing.assert_allclose(a["probabilities"], b["probabilities"], rtol=1e-6, atol=1e-7)
