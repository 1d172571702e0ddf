"""ONNX export (mlpx.onnx): every graph runs in ONNX Runtime and is compared with
mlpx's own predict / predict_proba (the reference).

Tolerances: float32 outputs agree to 1e-5 relative, with an absolute floor of 1e-6
for values near zero. A relative bound alone cannot hold there: ONNX Runtime's
float32 Sigmoid is accurate to about one unit in the last place of 1.0 (1.2e-7
absolute), not relative to a probability of 1e-9, and regression outputs that
are small differences of larger sums carry the summation order's rounding.
float64: 1e-12 relative, 1e-15 absolute. Labels must be equal.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="needs onnx: pip install 'mlpx[onnx]'")
ort = pytest.importorskip("onnxruntime", reason="needs onnxruntime: pip install 'mlpx[onnx]'")

import mlpx  # noqa: E402
from mlpx.onnx import DEFAULT_OPSET, MIN_OPSET, to_onnx  # noqa: E402

ACTIVATIONS = ["identity", "relu", "leaky_relu", "logistic", "tanh", "gelu"]
# (output activation, output units)
OUTPUTS = [("softmax", 3), ("logistic", 1), ("logistic", 3), ("identity", 1), ("identity", 2), ("exp", 2)]
DTYPES = ["float32", "float64"]
TOL = {"float32": {"rtol": 1e-5, "atol": 1e-6}, "float64": {"rtol": 1e-12, "atol": 1e-15}}


def run(model: Any, X: np.ndarray) -> dict[str, Any]:
    """Outputs of ``model`` (a ModelProto) on ``X``, by name, from ONNX Runtime."""
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"X": X})))


def elem_types(model: Any) -> dict[str, Any]:
    """Output name -> tensor element type, or the whole TypeProto for non-tensors."""
    out = {}
    for v in model.graph.output:
        t = v.type
        out[v.name] = t.tensor_type.elem_type if t.HasField("tensor_type") else t
    return out


def data(n: int, d: int, dtype: str, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)).astype(dtype)


# ------------------------------------------------------------- Sequential
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("output,k", OUTPUTS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_sequential_every_activation_and_output(activation: str, output: str, k: int, dtype: str) -> None:
    model = mlpx.MLP([6, 9, 7, k], activation=activation, output=output, dtype=dtype, seed=3)
    # Larger weights than the initial draw, so every activation leaves its linear range.
    model.set_flat_params(model.get_flat_params() * 2.0)
    X = data(300, 6, dtype)
    proto = to_onnx(model)
    onnx.checker.check_model(proto, full_check=True)
    out = run(proto, X)
    proba = model.predict_proba(X)
    proto_type = onnx.TensorProto.FLOAT if dtype == "float32" else onnx.TensorProto.DOUBLE
    if output in ("softmax", "logistic"):
        assert list(out) == ["label", "probabilities"]
        assert elem_types(proto) == {"label": onnx.TensorProto.INT64, "probabilities": proto_type}
        np.testing.assert_array_equal(out["label"], model.predict(X))
        got = out["probabilities"]
    else:
        assert list(out) == ["variable"]
        assert elem_types(proto) == {"variable": proto_type}
        got = out["variable"]
    assert got.dtype == np.dtype(dtype) and got.shape == (300, k)
    np.testing.assert_allclose(got, proba, **TOL[dtype])


def test_gelu_is_mlpx_tanh_form_not_erf() -> None:
    """The exported GELU is the tanh approximation: it differs from the erf GELU."""
    from math import erf

    model = mlpx.MLP([1, 1, 1], activation="gelu", output="identity", dtype="float64", seed=0)
    model.set_weights([np.ones((1, 1)), np.zeros(1), np.ones((1, 1)), np.zeros(1)])
    z = np.array([[-3.0], [-1.0], [0.5], [2.0]])
    got = run(to_onnx(model), z)["variable"][:, 0]
    tanh_form = 0.5 * z[:, 0] * (1 + np.tanh(np.sqrt(2 / np.pi) * (z[:, 0] + 0.044715 * z[:, 0] ** 3)))
    erf_form = np.array([0.5 * v * (1 + erf(v / np.sqrt(2))) for v in z[:, 0]])
    np.testing.assert_allclose(got, tanh_form, rtol=1e-14, atol=1e-15)
    assert np.abs(got - erf_form).max() > 1e-5


@pytest.mark.parametrize("dtype", DTYPES)
def test_standalone_activation_and_dropout_layers(dtype: str) -> None:
    layers = [
        mlpx.Dense(6, 8), mlpx.LeakyReLU(), mlpx.Dropout(0.3),
        mlpx.Dense(8, 8, activation="tanh"), mlpx.GELU(), mlpx.Identity(),
        mlpx.Dense(8, 5), mlpx.Sigmoid(), mlpx.Dropout(0.2),
        mlpx.Dense(5, 4), mlpx.ReLU(), mlpx.Dense(4, 3), mlpx.Softmax(),
    ]
    model = mlpx.Sequential(layers, dtype=dtype, seed=1)
    X = data(200, 6, dtype)
    y = np.random.default_rng(1).integers(0, 3, 200)
    model.fit(X, y, epochs=3, batch_size=32, verbose=0)  # dropout active while training
    out = run(model.to_onnx(), X)
    np.testing.assert_array_equal(out["label"], model.predict(X))
    np.testing.assert_allclose(out["probabilities"], model.predict_proba(X), **TOL[dtype])
    ops = [n.op_type for n in to_onnx(model).graph.node]
    assert "Dropout" not in ops and ops.count("Gemm") == 5


@pytest.mark.parametrize("model_dtype,graph_dtype", [("float64", "float32"), ("float32", "float64")])
def test_dtype_option(model_dtype: str, graph_dtype: str) -> None:
    model = mlpx.MLP([5, 8, 3], activation="tanh", output="softmax", dtype=model_dtype, seed=2)
    proto = to_onnx(model, dtype=graph_dtype)
    assert proto.graph.input[0].type.tensor_type.elem_type == (
        onnx.TensorProto.FLOAT if graph_dtype == "float32" else onnx.TensorProto.DOUBLE)
    X = data(100, 5, graph_dtype)
    out = run(proto, X)
    assert out["probabilities"].dtype == np.dtype(graph_dtype)
    np.testing.assert_array_equal(out["label"], model.predict(X))
    np.testing.assert_allclose(out["probabilities"], model.predict_proba(X), **TOL["float32"])
    with pytest.raises(ValueError, match="float32 or float64, not float16"):
        to_onnx(model, dtype="float16")


@pytest.mark.parametrize("opset", [MIN_OPSET, DEFAULT_OPSET])
def test_target_opset(opset: int) -> None:
    model = mlpx.MLP([4, 5, 3], activation="gelu", output="softmax", seed=0)
    proto = to_onnx(model, target_opset=opset)
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", opset)]
    assert proto.ir_version == onnx.helper.find_min_ir_version_for(list(proto.opset_import))
    X = data(50, 4, "float32")
    np.testing.assert_array_equal(run(proto, X)["label"], model.predict(X))


def test_written_file_and_metadata(tmp_path: Any) -> None:
    model = mlpx.MLP([4, 5, 2], output="logistic", seed=0)
    proto = model.to_onnx(tmp_path / "sub" / "model.onnx")
    loaded = onnx.load(str(tmp_path / "sub" / "model.onnx"))
    assert loaded.SerializeToString() == proto.SerializeToString()
    assert proto.producer_name == "mlpx" and "4-5-2" in proto.graph.doc_string
    assert not list(tmp_path.joinpath("sub").glob(".*tmp"))  # the temporary file is gone
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "sub" / "model.onnx").stat().st_mode & 0o777 == 0o666 & ~umask
    inp = proto.graph.input[0]
    assert inp.name == "X" and [d.dim_value for d in inp.type.tensor_type.shape.dim] == [0, 4]


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits and links")
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("via", ["Sequential", "estimator"])
def test_writing_keeps_a_files_mode_and_a_links_target_as_save_does(tmp_path: Any, via: str) -> None:
    """to_onnx(path) writes through save's atomic writer: an existing file keeps its
    permission bits (a fresh temporary file and a rename used to reset them to the
    umask's), and a symbolic link stays a link to the file written (it used to be
    replaced by a regular file)."""
    import stat

    if via == "Sequential":
        exporter = mlpx.MLP([4, 5, 2], output="logistic", seed=0)
    else:
        exporter = mlpx.MLPRegressor(hidden_layer_sizes=(3,), max_iter=2, random_state=0).fit(data(20, 4, "float64"), np.arange(20.0))
    store = tmp_path / "store"
    store.mkdir()
    real = store / "model.onnx"
    exporter.to_onnx(real)
    os.chmod(real, 0o640)
    link = tmp_path / "serving.onnx"
    link.symlink_to(os.path.relpath(real, tmp_path))
    proto = exporter.to_onnx(link)
    assert link.is_symlink() and os.readlink(link) == os.path.relpath(real, tmp_path)
    assert stat.S_IMODE(os.stat(real).st_mode) == 0o640
    assert sorted(os.listdir(tmp_path)) == ["serving.onnx", "store"] and os.listdir(store) == ["model.onnx"]
    assert onnx.load(str(link)).SerializeToString() == proto.SerializeToString()


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Any, monkeypatch: Any) -> None:
    model = mlpx.MLP([4, 5, 3], seed=0)
    path = tmp_path / "m.onnx"
    model.to_onnx(path)
    before = path.read_bytes()

    def boom(*args: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        mlpx.MLP([4, 6, 3], seed=1).to_onnx(path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["m.onnx"] and path.read_bytes() == before


def test_mixed_precision_model_exports_master_weights() -> None:
    """A bf16 model (run on the CPU here) exports its float32 master weights."""
    pytest.importorskip("ml_dtypes")
    with pytest.warns(RuntimeWarning, match="bf16"):
        model = mlpx.MLP([4, 6, 3], seed=0, precision="bf16")
    X = data(40, 4, "float32")
    ref = mlpx.MLP([4, 6, 3], seed=0)
    ref.set_flat_params(model.get_flat_params())
    out = run(to_onnx(model), X)
    np.testing.assert_allclose(out["probabilities"], ref.predict_proba(X), **TOL["float32"])


# ----------------------------------------------- logistic labels at the decision boundary
def _boundary_logits(dtype: str, width: int) -> np.ndarray:
    """Logits at and around the decision boundary: every value of ``dtype`` within 20000
    steps of predict's threshold and of 0 (subnormals and -0.0 included), their
    negatives, and a log grid from the smallest subnormal to 1e-3; shape (n, width)."""
    from mlpx.onnx import logistic_threshold

    ints = np.int32 if dtype == "float32" else np.int64
    at = int(np.array(logistic_threshold(dtype), dtype).view(ints))
    bits = np.concatenate([np.arange(at - 20000, at + 20000), np.arange(0, 20000)]).astype(ints)
    tiny = float(np.finfo(dtype).smallest_subnormal)
    grid = np.geomspace(tiny, 1e-3, 5000).astype(dtype)
    z = np.concatenate([bits.view(dtype), grid, [0.0, -0.0]]).astype(dtype)
    z = np.concatenate([z, -z])
    return np.resize(z, (z.size // width) * width).reshape(-1, width)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [1, 3])
def test_sequential_logistic_labels_equal_predict_at_the_boundary(k: int, dtype: str) -> None:
    """The logits are the inputs (identity weights, zero bias): ONNX Runtime's labels must be
    predict's on every one. Comparing the logit with 0 disagreed wherever 0 < z < ~1.2e-7
    (float32), where predict's probability rounds to 0.5; comparing ONNX Runtime's own
    sigmoid with 0.5 disagrees where its last bit differs from NumPy's."""
    from mlpx.layers import Dense

    model = mlpx.Sequential([Dense(k, k, activation="logistic")], dtype=dtype, seed=0)
    model.set_weights([np.eye(k), np.zeros(k)])
    Z = _boundary_logits(dtype, k)
    out = run(model.to_onnx(), Z)
    np.testing.assert_array_equal(out["label"], model.predict(Z))
    from mlpx.onnx import logistic_threshold

    near_zero = (Z > 0) & (Z < logistic_threshold(dtype))
    assert near_zero.any() and not model.predict(Z).reshape(Z.shape)[near_zero].any()  # the case that broke
    np.testing.assert_allclose(out["probabilities"], model.predict_proba(Z), **TOL[dtype])


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("target", ["binary", "multilabel"])
def test_estimator_logistic_labels_equal_predict_at_the_boundary(target: str, dtype: str) -> None:
    k = 1 if target == "binary" else 3
    Z = _boundary_logits(dtype, k)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, (Z.shape[0], k)) if k > 1 else np.array(["no", "yes"])[rng.integers(0, 2, Z.shape[0])]
    clf = mlpx.MLPClassifier((k,), activation="identity", max_iter=1, dtype=dtype, random_state=0)
    clf.fit(Z[:200], y[:200])
    clf.coefs_ = [np.eye(k, dtype=dtype), np.eye(k, dtype=dtype)]  # logits = inputs
    clf.intercepts_ = [np.zeros(k, dtype=dtype), np.zeros(k, dtype=dtype)]
    out = run(clf.to_onnx(zipmap=False), Z)
    assert label_values(out["label"]) == label_values(clf.predict(Z))
    np.testing.assert_allclose(out["probabilities"], clf.predict_proba(Z), **TOL[dtype])


# ------------------------------------------------------------- estimators
CLASSIFIER_TARGETS = {
    "binary-int": lambda r: r.integers(0, 2, 150) * 5 + 2,  # classes [2, 7]
    "binary-str": lambda r: np.array(["no", "yes"])[r.integers(0, 2, 150)],
    "binary-bool": lambda r: r.integers(0, 2, 150).astype(bool),
    "multiclass-str": lambda r: np.array(["cat", "dog", "eel", "fox"])[r.integers(0, 4, 150)],
    "multiclass-float": lambda r: r.integers(0, 3, 150).astype(float) * 2 - 1,  # [-1., 1., 3.]
    "multilabel": lambda r: r.integers(0, 2, (150, 3)),
}


def fitted_classifier(target: str, dtype: str, **params: Any) -> tuple[Any, np.ndarray]:
    rng = np.random.default_rng(7)
    X = data(150, 5, dtype, seed=8)
    y = CLASSIFIER_TARGETS[target](rng)
    clf = mlpx.MLPClassifier((8, 6), max_iter=40, random_state=0, **params).fit(X, y)
    return clf, X


def label_values(labels: np.ndarray) -> list[Any]:
    return [v.item() if hasattr(v, "item") else v for v in np.asarray(labels).ravel()]


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("zipmap", [True, False, "columns"])
@pytest.mark.parametrize("target", list(CLASSIFIER_TARGETS))
def test_classifier_outputs_like_skl2onnx(target: str, zipmap: Any, dtype: str) -> None:
    clf, X = fitted_classifier(target, dtype, activation="tanh")
    out = run(clf.to_onnx(zipmap=zipmap), X)
    multilabel = target == "multilabel"
    labels = out["label" if zipmap is False else "output_label"]
    expected = clf.predict(X)
    if multilabel:
        assert labels.dtype == np.int64 and labels.shape == (150, 3)
    elif clf.classes_.dtype.kind in "US":
        assert labels.dtype == object
    else:
        assert labels.dtype == np.int64
    assert label_values(labels) == label_values(expected)
    proba = clf.predict_proba(X)
    names = list(out)
    if zipmap is False:
        assert names == ["label", "probabilities"]
        np.testing.assert_allclose(out["probabilities"], proba, **TOL[dtype])
    elif zipmap == "columns":
        prefix = "s" if clf.classes_.dtype.kind in "US" else "i"
        cols = [f"{prefix}{int(c) if prefix == 'i' else c}" for c in clf.classes_]
        assert names == ["output_label", *cols]
        got = np.stack([out[c] for c in cols], axis=1)
        np.testing.assert_allclose(got, proba, **TOL[dtype])
    else:
        assert names == ["output_label", "output_probability"]
        rows = out["output_probability"]
        keys = label_values(clf.classes_) if clf.classes_.dtype.kind in "US" else [int(c) for c in clf.classes_]
        assert len(rows) == 150 and all(list(r) == keys for r in rows)
        got = np.array([[r[key] for key in keys] for r in rows])
        # ZipMap holds float32: a float64 model's probabilities are rounded to it.
        np.testing.assert_allclose(got, proba.astype(np.float32), **TOL["float32"])


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss,k", [("squared_error", 1), ("squared_error", 3), ("poisson", 1)])
def test_regressor_variable(loss: str, k: int, dtype: str) -> None:
    rng = np.random.default_rng(2)
    X = data(120, 4, dtype, seed=3)
    y = rng.poisson(2.0, 120).astype(float) if loss == "poisson" else rng.normal(size=(120, k)).squeeze()
    reg = mlpx.MLPRegressor(loss=loss, hidden_layer_sizes=(7,), activation="logistic", max_iter=30,
                            random_state=0).fit(X, y)
    proto = reg.to_onnx()
    out = run(proto, X)
    assert list(out) == ["variable"] and out["variable"].shape == (120, k)
    np.testing.assert_allclose(out["variable"], reg.predict(X).reshape(120, k), **TOL[dtype])
    with pytest.raises(ValueError, match="zipmap applies to classifier"):
        reg.to_onnx(zipmap=True)


# ------------------------------------------------------------- bad input
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_bad_inputs_raise_documented_errors() -> None:
    from sklearn.exceptions import NotFittedError

    model = mlpx.MLP([3, 4, 2], seed=0)
    with pytest.raises(TypeError, match="cannot export 'object'"):
        to_onnx(object())
    for bad in (MIN_OPSET - 1, onnx.defs.onnx_opset_version() + 1, "21", True, 20.5):
        with pytest.raises(ValueError, match="target_opset must be an integer"):
            to_onnx(model, target_opset=bad)
    with pytest.raises(ValueError, match="zipmap applies to classifier estimators only"):
        to_onnx(model, zipmap=True)
    with pytest.raises(NotFittedError):
        mlpx.MLPClassifier().to_onnx()
    clf, _ = fitted_classifier("binary-int", "float64")
    with pytest.raises(ValueError, match="zipmap must be True, False or 'columns'"):
        clf.to_onnx(zipmap="rows")


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_labels_onnx_cannot_hold_are_refused() -> None:
    X = data(60, 3, "float64")
    single = mlpx.MLPClassifier((4,), max_iter=5, random_state=0).fit(X, np.zeros(60, int))
    with pytest.raises(ValueError, match="single class"):
        single.to_onnx()
    # fit refuses such targets, but classes_ can be assigned (or come from elsewhere).
    clf = mlpx.MLPClassifier((4,), max_iter=5, random_state=0).fit(X, np.arange(60) % 2)
    clf.classes_ = np.array([0.5, 1.5])
    with pytest.raises(ValueError, match="float class labels must be integral"):
        clf.to_onnx()
    clf.classes_ = np.array([1, "a"], dtype=object)
    with pytest.raises(ValueError, match="cannot be ONNX labels"):
        clf.to_onnx()


# ------------------------------------------------------------------ Stack
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("output,k", [("softmax", 3), ("logistic", 1), ("logistic", 3), ("identity", 2)])
def test_stack_exports_its_averaged_ensemble_and_each_member(output: str, k: int, dtype: str) -> None:
    """The ensemble graph gives predict_proba's mean of the live members and predict's
    labels from it; member=k gives that member's own network graph."""
    stack = mlpx.Stack(mlpx.MLP([6, 9, k], activation="tanh", output=output, dtype=dtype, seed=0), seeds=[0, 1, 2])
    for j in range(3):  # spread the members apart
        stack.set_member_params(j, stack.get_member_params(j) * (1.0 + j))
    stack.diverged_[1] = True  # predict leaves a diverged member out; so does the export
    X = data(300, 6, dtype)
    out = run(stack.to_onnx(), X)
    if output == "identity":
        np.testing.assert_allclose(out["variable"], stack.predict_proba(X), **TOL[dtype])
    else:
        P = stack.predict_proba(X)
        np.testing.assert_allclose(out["probabilities"], P, **TOL[dtype])
        clear = (np.abs(P - 0.5) > 1e-4).all(axis=-1) if output == "logistic" else \
            np.diff(np.sort(P, axis=1)[:, -2:], axis=1)[:, 0] > 1e-4  # ties of the mean: rounding decides
        np.testing.assert_array_equal(out["label"][clear], stack.predict(X)[clear])
        assert clear.mean() > 0.95
    one = run(stack.to_onnx(member=2), X)
    key = "variable" if output == "identity" else "probabilities"
    np.testing.assert_allclose(one[key], stack.member(2).predict_proba(X), **TOL[dtype])
    stack.diverged_[:] = True
    with pytest.raises(mlpx.TrainingDivergedError):
        stack.to_onnx()
    with pytest.raises(ValueError, match="every member of the stack diverged"):
        to_onnx(stack)
    with pytest.raises(TypeError, match="member"):
        to_onnx(stack.member(0), member=0)
