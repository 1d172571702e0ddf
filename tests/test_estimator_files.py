"""Fitted estimators saved and loaded: ``est.save(path)``, ``mlpx.load(path)``, and skops.

The reference is the estimator that was saved: the loaded one predicts the same
bits and, trained further (``partial_fit``, a warm-started ``fit``), stays equal
to it. A crafted estimator record is a ModelFileError, never another exception.
"""

from __future__ import annotations

import copy
import json
import warnings
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

pytest.importorskip("sklearn")

from sklearn.datasets import load_iris  # noqa: E402
from sklearn.exceptions import ConvergenceWarning, NotFittedError  # noqa: E402

import mlpx  # noqa: E402
from _records import DELETE, paths, set_path  # noqa: E402
from mlpx import MLPClassifier, MLPRegressor, ModelFileError  # noqa: E402
from mlpx.saving import read_model_file  # noqa: E402

FITTED = ("n_iter_", "t_", "loss_", "best_loss_", "loss_curve_", "validation_scores_", "best_validation_score_",
          "n_features_in_", "n_outputs_", "n_layers_", "out_activation_", "_no_improvement_count")


def _iris() -> tuple[np.ndarray, np.ndarray]:
    X, y = load_iris(return_X_y=True)
    return (X - X.mean(0)) / X.std(0), y


def _targets(kind: str, y: np.ndarray) -> np.ndarray:
    if kind == "binary":
        return (y == 2).astype(int)
    if kind == "strings":
        return np.array(["setosa", "versicolor", "virginica"])[y]
    if kind == "floats":
        return y * 2.0 - 1.0
    if kind == "bools":
        return y == 1
    if kind == "multilabel":
        return np.stack([y == 0, y == 2, y > 0], axis=1).astype(int)
    return y


def _fit(est, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(X, y)


def _assert_same_estimator(a, b) -> None:
    assert type(a) is type(b)
    pa, pb = a.get_params(), b.get_params()
    assert pa == pb, {k: (pa[k], pb[k]) for k in pa if pa[k] != pb.get(k)}
    for name in FITTED:
        assert hasattr(a, name) == hasattr(b, name), name
        if hasattr(a, name):
            va, vb = getattr(a, name), getattr(b, name)
            assert type(va) is type(vb) or (np.isscalar(va) and np.isscalar(vb)), name
            np.testing.assert_equal(va, vb, err_msg=name)
    for ca, cb in zip(a.coefs_ + a.intercepts_, b.coefs_ + b.intercepts_):
        assert ca.dtype == cb.dtype and np.array_equal(ca, cb)
    if hasattr(a, "classes_"):
        assert a.classes_.dtype == b.classes_.dtype and np.array_equal(a.classes_, b.classes_)


CLASSIFIERS = [
    ("multiclass", dict(solver="adam")),
    ("strings", dict(solver="sgd", learning_rate="invscaling", momentum=0.8)),
    ("binary", dict(solver="adam", early_stopping=True, dtype="float32")),
    ("floats", dict(solver="sgd", learning_rate="adaptive", nesterovs_momentum=False)),
    ("bools", dict(solver="lbfgs")),
    ("multilabel", dict(solver="adam", hidden_layer_sizes=(7, 5), activation="tanh")),
]


@pytest.mark.parametrize("kind, kw", CLASSIFIERS, ids=[c[0] for c in CLASSIFIERS])
def test_a_classifier_round_trips_and_trains_on_identically(tmp_path, kind, kw) -> None:
    X, y = _iris()
    y = _targets(kind, y)
    est = _fit(MLPClassifier(**{"hidden_layer_sizes": (6,), "max_iter": 15, "random_state": 0, **kw}), X, y)
    path = est.save(tmp_path / "clf")
    assert path.name == "clf.npz"
    loaded = mlpx.load(tmp_path / "clf")
    _assert_same_estimator(est, loaded)
    assert np.array_equal(est.predict(X), loaded.predict(X))
    assert np.array_equal(est.predict_proba(X), loaded.predict_proba(X))
    assert est.score(X, y) == loaded.score(X, y)
    if kw["solver"] != "lbfgs" and not kw.get("early_stopping"):
        for _ in range(2):
            est.partial_fit(X, y)
            loaded.partial_fit(X, y)
        _assert_same_estimator(est, loaded)
    est.set_params(warm_start=True, max_iter=3)
    loaded.set_params(warm_start=True, max_iter=3)
    _fit(est, X, y), _fit(loaded, X, y)
    _assert_same_estimator(est, loaded)


@pytest.mark.parametrize("kw", [dict(solver="adam"), dict(solver="sgd", loss="poisson", learning_rate_init=1e-3),
                                dict(solver="lbfgs", dtype="float32")])
def test_a_regressor_round_trips_and_trains_on_identically(tmp_path, kw) -> None:
    X, y = _iris()
    Y = np.stack([X[:, 0] ** 2, np.abs(X[:, 1])], axis=1)
    est = _fit(MLPRegressor(hidden_layer_sizes=(5,), max_iter=20, random_state=1, **kw), X, Y)
    est.save(tmp_path / "reg.npz")
    loaded = mlpx.load(tmp_path / "reg.npz")
    _assert_same_estimator(est, loaded)
    assert np.array_equal(est.predict(X), loaded.predict(X)) and est.score(X, Y) == loaded.score(X, Y)
    if kw["solver"] != "lbfgs":
        est.partial_fit(X, Y)
        loaded.partial_fit(X, Y)
        _assert_same_estimator(est, loaded)


def test_the_file_is_a_model_file_without_pickles(tmp_path) -> None:
    X, y = _iris()
    est = _fit(MLPClassifier(hidden_layer_sizes=(6,), max_iter=5, random_state=0), X, y)
    est.save(tmp_path / "clf.npz")
    with np.load(tmp_path / "clf.npz", allow_pickle=False) as f:  # raises on any pickled entry
        assert sorted(f.files) == ["config", "opt_m", "opt_v", "params"]
    network = mlpx.model.load(tmp_path / "clf.npz")  # the network alone
    assert np.allclose(network.predict_proba(X), est.predict_proba(X), rtol=0, atol=1e-12)
    with pytest.raises(NotFittedError):
        MLPClassifier().save(tmp_path / "unfitted.npz")


def test_feature_names_and_the_backend_argument(tmp_path) -> None:
    pd = pytest.importorskip("pandas")
    X, y = _iris()
    frame = pd.DataFrame(X, columns=["a", "b", "c", "d"])
    est = _fit(MLPClassifier(hidden_layer_sizes=(4,), max_iter=5, random_state=0, backend="cpu:blis"), frame, y)
    est.save(tmp_path / "clf.npz")
    loaded = mlpx.load(tmp_path / "clf.npz", backend="cpu")
    assert loaded.backend == "cpu" and list(loaded.feature_names_in_) == ["a", "b", "c", "d"]
    assert np.array_equal(loaded.predict(frame), est.predict(frame))


def test_unsaveable_labels_are_refused_at_save(tmp_path) -> None:
    X, y = _iris()
    est = _fit(MLPClassifier(hidden_layer_sizes=(3,), max_iter=2, random_state=0), X, y)
    est.classes_ = np.array([1, "a", (2, 3)], dtype=object)  # as a hand-edited estimator could hold
    with pytest.raises(ValueError, match="class labels"):
        est.save(tmp_path / "bad.npz")
    assert not (tmp_path / "bad.npz").exists()


# ------------------------------------------------------------------ hostile records
def _saved(tmp_path, **kw):
    X, y = _iris()
    est = _fit(MLPClassifier(hidden_layer_sizes=(6,), max_iter=5, random_state=0, **kw), X, y)
    est.save(tmp_path / "clf.npz")
    return read_model_file(tmp_path / "clf.npz")


def _rewrite(path, record, arrays) -> None:
    np.savez(path, config=np.array(json.dumps(record)), **arrays)


E = ("estimator",)
BAD = [
    (E, "MLPClassifier", "JSON object"),
    (E + ("class",), "SVC", "not an estimator file"),
    (E + ("version",), 2, "unknown version"),
    (E + ("extra",), 1, "unknown keys"),
    (E + ("params", "alpha"), -1.0, "bad estimator parameters"),
    (E + ("params", "solver"), "newton", "bad estimator parameters"),
    (E + ("params", "hidden_layer_sizes"), [7], "hidden_layer_sizes"),
    (E + ("params", "hidden_layer_sizes"), [{"a": 1}], "no estimator takes"),
    (E + ("params", "activation"), "tanh", "hidden activations"),
    (E + ("params", "bogus"), 1, "params must be exactly"),
    (E + ("params", "alpha"), DELETE, "params must be exactly"),
    (E + ("fitted", "n_iter_"), -1, "n_iter_"),
    (E + ("fitted", "n_iter_"), 1.5, "n_iter_"),
    (E + ("fitted", "n_features_in_"), 5, "n_features_in_"),
    (E + ("fitted", "n_outputs_"), 2, "n_outputs_"),
    (E + ("fitted", "loss_curve_"), "down", "loss_curve_"),
    (E + ("fitted", "loss_curve_"), [1, "x"], "loss_curve_"),
    (E + ("fitted", "loss_"), [0.1], "loss_"),
    (E + ("fitted", "coefs_"), [], "fitted must be"),
    (E + ("out_activation",), "logistic", "out_activation_"),
    (E + ("classes",), {"dtype": "<i8", "values": [0, 1]}, "classes do not fit"),
    (E + ("classes",), {"dtype": "<i8", "values": [2, 1, 0]}, "sorted and unique"),
    (E + ("classes",), {"dtype": "<i8", "values": [0, 0, 1]}, "sorted and unique"),
    (E + ("classes",), {"dtype": "<i8", "values": [0, "1", 2]}, "classes_"),
    (E + ("classes",), {"dtype": "|O8", "values": [0, 1, 2]}, "classes_"),
    (E + ("classes",), {"dtype": "V1000000", "values": [0, 1, 2]}, "classes_"),
    (E + ("classes",), {"dtype": "<U99999999", "values": ["a", "b", "c"]}, "classes_"),
    (E + ("classes",), {"dtype": "|i1", "values": [0, 1, 1000]}, "do not fit"),
    (E + ("classes",), [0, 1, 2], "classes_"),
    (E + ("y_type",), "continuous", "y_type"),
    (E + ("y_type",), "binary", "do not fit"),
    (E + ("feature_names_in",), ["a"], "feature_names_in"),
    (("layers", 0, "activation"), "tanh", "hidden activations"),
]


@pytest.mark.parametrize("where, value, match", BAD, ids=[f"{'.'.join(map(str, c[0]))}={c[1]!r}"[:60] for c in BAD])
def test_bad_estimator_records_are_refused(tmp_path, where, value, match) -> None:
    record, arrays = _saved(tmp_path)
    _rewrite(tmp_path / "bad.npz", set_path(record, where, value), arrays)
    with pytest.raises(ModelFileError, match=match):
        mlpx.load(tmp_path / "bad.npz")


def test_a_regressor_record_with_classes_is_refused(tmp_path) -> None:
    X, y = _iris()
    _fit(MLPRegressor(hidden_layer_sizes=(3,), max_iter=3, random_state=0), X, y).save(tmp_path / "r.npz")
    record, arrays = read_model_file(tmp_path / "r.npz")
    record["estimator"]["classes"] = {"dtype": "<i8", "values": [0]}
    _rewrite(tmp_path / "r.npz", record, arrays)
    with pytest.raises(ModelFileError, match="regressor has no classes"):
        mlpx.load(tmp_path / "r.npz")


def test_an_estimator_file_lacking_its_optimizer_state_is_refused(tmp_path) -> None:
    record, arrays = _saved(tmp_path)
    del arrays["opt_v"]
    _rewrite(tmp_path / "bad.npz", record, arrays)
    with pytest.raises(ModelFileError, match="lacks"):
        mlpx.load(tmp_path / "bad.npz")


_leaf = st.one_of(st.none(), st.booleans(), st.integers(-3, 10**6), st.floats(allow_nan=False, allow_infinity=False),
                  st.sampled_from(["inf", "-inf", "nan", "relu", "adam", "auto", "binary", "<i8", "|O", "<U5"]),
                  st.text(max_size=5))
_json = st.recursive(_leaf, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                     max_leaves=5)




@pytest.fixture(scope="module")
def saved_record(tmp_path_factory):
    return _saved(tmp_path_factory.mktemp("est"), solver="sgd")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_estimator_records_load_or_raise_model_file_error(tmp_path, saved_record, data) -> None:
    record, arrays = saved_record
    record = copy.deepcopy(record)
    for _ in range(data.draw(st.integers(1, 3))):
        where = data.draw(st.sampled_from([p for p in paths(record["estimator"], ("estimator",)) if len(p) > 1]))
        parent = record
        for key in where[:-1]:
            parent = parent[key]
        if data.draw(st.booleans()) and isinstance(parent, dict):
            del parent[where[-1]]
        else:
            parent[where[-1]] = data.draw(_json)
    _rewrite(tmp_path / "f.npz", record, arrays)
    X, _ = _iris()
    try:
        est = mlpx.load(tmp_path / "f.npz")
    except ModelFileError as exc:
        assert str(exc)
        event("refused")
        return
    event("loaded")
    est.predict(X)  # whatever loaded is a working estimator


# ------------------------------------------------------------------ skops
def test_skops_secure_format_round_trips(tmp_path) -> None:
    sio = pytest.importorskip("skops.io")
    X, y = _iris()
    est = _fit(MLPClassifier(hidden_layer_sizes=(6,), max_iter=10, random_state=0), X, y)
    sio.dump(est, tmp_path / "clf.skops")
    assert sio.get_untrusted_types(file=tmp_path / "clf.skops") == ["mlpx.estimators._classifier.MLPClassifier"]
    with pytest.raises(Exception, match="[Uu]ntrusted"):
        sio.load(tmp_path / "clf.skops")  # nothing of mlpx is trusted by default
    loaded = sio.load(tmp_path / "clf.skops", trusted=["mlpx.estimators._classifier.MLPClassifier"])
    _assert_same_estimator(est, loaded)
    assert np.array_equal(est.predict_proba(X), loaded.predict_proba(X))
    est.partial_fit(X, y)
    loaded.partial_fit(X, y)
    _assert_same_estimator(est, loaded)  # the optimizer state travelled too


def test_crafted_zip_entries_in_estimator_files(tmp_path) -> None:
    """A file with an extra entry is refused by name, like any model file."""
    record, arrays = _saved(tmp_path)
    _rewrite(tmp_path / "x.npz", record, {**arrays, "best": arrays["params"]})
    with pytest.raises(ModelFileError, match="unexpected entry 'best.npy'"):
        mlpx.load(tmp_path / "x.npz")
    assert zipfile.is_zipfile(tmp_path / "x.npz")
