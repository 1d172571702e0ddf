"""Input data at the boundary: values beyond the model's dtype, soft targets, sparse
input, sample weights, and property-based checks of ``check_X`` over random shapes,
dtypes and placements of bad values."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

import mlpx
from mlpx.backends import get_backend
from mlpx.gradcheck import numerical_grad
from mlpx.validation import check_dtype_range, check_sample_weight, check_X, dtype_max, encode_targets

EXAMPLES = 150
LIMIT = {"float16": 65504.0, "float32": float(np.finfo(np.float32).max), "bfloat16": 3.3895313892515355e38}


def _model(backend="cpu", dtype="float32", precision=None, sizes=(3, 4, 2), output="softmax"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # precision modes on the CPU warn
        return mlpx.MLP(list(sizes), backend=backend, dtype=dtype, precision=precision, output=output, seed=0)


# ------------------------------------------------ values beyond the dtype
CASES = [  # (backend, dtype, precision, a value finite in float64 that the compute dtype cannot hold)
    ("cpu", "float32", None, 1e39),
    ("cpu", "float32", None, -3.5e38),
    ("cpu", "float32", "fp16", 7e4),
    ("cpu", "float32", "bf16", 3.3999e38),  # float32 holds it, bfloat16 does not
    ("cpu", "float32", "tf32", 1e39),
    ("array_api_strict", "float32", None, 1e39),
    pytest.param("gpu", "float32", None, 1e39, marks=pytest.mark.gpu),
    pytest.param("gpu", "float32", "fp16", 7e4, marks=pytest.mark.gpu),
]


@pytest.mark.parametrize("backend, dtype, precision, big", CASES)
def test_values_beyond_the_compute_dtype_are_refused_everywhere(backend, dtype, precision, big) -> None:
    model = _model(backend, dtype, precision)
    compute = model.compute_dtype
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(8, 3)), rng.integers(0, 2, 8)
    Xb = X.copy()
    Xb[5, 2] = big
    before = model.get_flat_params()
    calls = {
        "fit": lambda: model.fit(Xb, y, epochs=1),
        "fit X_val": lambda: model.fit(X, y, epochs=1, validation_data=(Xb, y)),
        "predict": lambda: model.predict(Xb),
        "predict_proba": lambda: model.predict_proba(Xb),
        "evaluate": lambda: model.evaluate(Xb, y),
        "loss_and_grads": lambda: model.loss_and_grads(Xb, y),
    }
    if backend != "cpu":
        be = model.backend
        calls["predict on the device"] = lambda: model.predict(be.asarray(Xb, dtype="float64"))
    for what, call in calls.items():
        name = "X_val" if what == "fit X_val" else "X"
        with pytest.raises(ValueError) as err:
            call()
        msg = str(err.value)
        assert msg.startswith(f"{name} holds values up to {abs(big):g}"), (what, msg)
        assert f"beyond {compute}'s largest ({LIMIT[compute]:g})" in msg, (what, msg)
    np.testing.assert_array_equal(model.get_flat_params(), before)
    Xb[5, 2] = LIMIT[compute] / 2  # in range: accepted
    check_X(Xb, model.backend, 3, dtype=compute)


def test_integer_input_beyond_float16() -> None:
    model = _model(precision="fp16")
    X = np.array([[1, 2, 70000]], dtype=np.int64)
    with pytest.raises(ValueError, match="up to 70000"):
        model.predict(X)
    model.predict(np.array([[1, 2, 60000]], dtype=np.uint16))  # uint16 holds 65535 > 65504: checked, fits
    with pytest.raises(ValueError, match="up to 65535"):
        model.predict(np.array([[1, 2, 65535]], dtype=np.uint16))


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    dtype=st.sampled_from(["float16", "float32", "bfloat16"]),
    shape=st.tuples(st.integers(1, 6), st.integers(1, 6)),
    where=st.floats(0, 1, exclude_max=True),
    magnitude=st.floats(1e-3, 1e300),
    sign=st.sampled_from([-1.0, 1.0]),
    strict=st.booleans(),
)
def test_dtype_range_never_lets_an_infinity_through(dtype, shape, where, magnitude, sign, strict) -> None:
    """Whatever the cast would make infinite is refused; whatever fits is accepted."""
    X = np.random.default_rng(0).uniform(-1, 1, size=shape)
    X.flat[int(where * X.size)] = sign * magnitude
    be = get_backend("array_api_strict" if strict and dtype == "float32" else "cpu")
    values = X if be.name == "cpu" else be.asarray(X, dtype="float64")
    limit = dtype_max(dtype)
    with np.errstate(over="ignore"):
        if dtype == "bfloat16":
            cast = X.astype(pytest.importorskip("ml_dtypes").bfloat16)
        else:
            cast = X.astype(dtype)
    overflows = not np.isfinite(cast.astype(np.float64)).all()
    if overflows or np.abs(X).max() > limit:
        with pytest.raises(ValueError, match=f"beyond {dtype}'s largest"):
            check_dtype_range(values, dtype, "X", be)
    else:
        check_dtype_range(values, dtype, "X", be)
    assert not (overflows and np.abs(X).max() <= limit)  # the rule refuses every overflow


def test_targets_and_weights_beyond_the_dtype() -> None:
    """encode_targets / check_sample_weight with the model dtype (wired into fit,
    evaluate and loss_and_grads by their callers)."""
    y = np.array([1.0, 2e39, 3.0])
    with pytest.raises(ValueError, match="y holds values up to 2e\\+39 in magnitude, beyond float32's largest"):
        encode_targets(y, "identity", 1, 3, dtype="float32")
    np.testing.assert_array_equal(encode_targets(y, "identity", 1, 3, dtype="float64")[:, 0], y)
    with pytest.raises(ValueError, match="sample_weight holds values up to 1e\\+39"):
        check_sample_weight([1.0, 1e39, 1.0], 3, dtype="float32")
    with pytest.raises(ValueError, match="sums to zero once cast to the model's float32"):
        check_sample_weight([1e-50, 0.0, 1e-60], 3, dtype="float32")
    np.testing.assert_array_equal(check_sample_weight([1e-50, 0.0, 1e-60], 3, dtype="float64"),
                                  [1e-50, 0.0, 1e-60])


# ------------------------------------------------------------ soft targets
def _flat_loss_and_grad(model, X, Y):
    """Loss and gradient as functions of the parameters in layer order (float64)."""
    shapes = [w.shape for w in model.get_weights()]

    def unflatten(theta):
        out, a = [], 0
        for s in shapes:
            n = int(np.prod(s))
            out.append(theta[a:a + n].reshape(s))
            a += n
        return out

    def f(theta):
        model.set_weights(unflatten(theta))
        return model.loss_and_grads(X, Y)[0]

    theta = np.concatenate([w.ravel() for w in model.get_weights()])
    model.set_weights(unflatten(theta))
    _, grads = model.loss_and_grads(X, Y)
    return f, theta, np.concatenate([g.ravel() for g in grads.values()])


@settings(max_examples=30, deadline=None)
@given(
    k=st.integers(2, 6),
    n=st.integers(1, 5),
    seed=st.integers(0, 2**16),
    scale=st.one_of(st.just(1.0), st.floats(0.5, 1.5), st.floats(1 - 1e-5, 1 + 1e-5),
                    st.floats(1 - 1e-7, 1 + 1e-7)),
)
def test_accepted_soft_targets_have_an_exact_gradient(k, n, seed, scale) -> None:
    """Rows that do not sum to 1 are refused; every accepted target matrix (rows
    summing to 1 up to rounding) gets the exact gradient of the loss reported."""
    rng = np.random.default_rng(seed)
    P = rng.dirichlet(np.ones(k), size=n)
    Y = P * scale
    model = _model(dtype="float64", sizes=(2, 3, k))
    X = rng.normal(size=(n, 2))
    if np.abs(Y.sum(1) - 1).max() > k * np.finfo(np.float32).eps:
        with pytest.raises(ValueError, match="summing to 1|must lie in"):
            model.loss_and_grads(X, Y)
        event("refused")
        return
    event("accepted, rows exactly 1" if np.all(Y.sum(1) == 1) else "accepted, rows off by rounding")
    f, theta, analytic = _flat_loss_and_grad(model, X, Y)
    numeric = numerical_grad(f, theta.copy(), eps=1e-6)
    err = np.abs(analytic - numeric).max() / max(np.abs(numeric).max(), 1e-12)
    assert err < 1e-7, err


def test_unnormalised_soft_targets_are_refused_with_the_row() -> None:
    model = _model(dtype="float64")
    X = np.ones((3, 3))
    Y = np.array([[0.5, 0.5], [0.3, 0.3], [1.0, 0.0]])  # the 2.5x-wrong case of the review
    for call in (lambda: model.loss_and_grads(X, Y), lambda: model.fit(X, Y, epochs=1),
                 lambda: model.evaluate(X, Y)):
        with pytest.raises(ValueError, match=r"1 row\(s\) do not \(row 1 sums to 0.6\)"):
            call()
    multi = np.array([[1.0, 1.0], [0.0, 1.0], [1.0, 0.0]])  # multilabel into softmax
    with pytest.raises(ValueError, match="logistic output for multilabel"):
        model.fit(X, multi, epochs=1)
    # rows off by float32 rounding are accepted, and normalised exactly
    Y32 = (np.array([[0.1, 0.9], [0.7, 0.3], [0.2, 0.8]], dtype=np.float32)).astype(np.float64)
    Y32[0] *= 1 + 2e-7
    got = encode_targets(Y32, "softmax", 2, 3)
    np.testing.assert_allclose(got.sum(1), 1.0, rtol=0, atol=1e-15)


# ----------------------------------------------------------- sparse input
@pytest.mark.parametrize("fmt", ["csr", "csc", "coo"])
def test_sparse_input_to_the_engine_says_what_to_do(fmt) -> None:
    sp = pytest.importorskip("scipy.sparse")
    X = sp.random(6, 3, density=0.5, format=fmt, random_state=0)
    y = np.arange(6) % 2
    model = _model()
    for call in (lambda: model.fit(X, y, epochs=1), lambda: model.predict(X),
                 lambda: model.predict_proba(X), lambda: model.evaluate(X, y),
                 lambda: model.loss_and_grads(X, y)):
        with pytest.raises(TypeError, match=r"X is a sparse matrix .*MLPClassifier.*X\.toarray\(\)"):
            call()
    model.predict(X.toarray())  # the suggested fix works
    with pytest.raises(TypeError, match="sample_weight is a sparse matrix"):
        check_sample_weight(sp.csr_matrix(np.ones((1, 6))), 6)


# ----------------------------------------------------------- sample weights
def test_weights_that_sum_to_zero_are_refused_everywhere() -> None:
    model = _model()
    X, y = np.ones((4, 3)), [0, 1, 0, 1]
    for call in (lambda w: model.fit(X, y, sample_weight=w, epochs=1),
                 lambda w: model.evaluate(X, y, sample_weight=w),
                 lambda w: model.loss_and_grads(X, y, sample_weight=w)):
        for w in (np.zeros(4), 0.0, [0, 0, 0, 0]):
            with pytest.raises(ValueError, match="sums to zero"):
                call(w)


# ------------------------------------------------ check_X, property-based
_kinds = st.sampled_from(["bool", "int8", "int32", "int64", "uint8", "uint64", "float16", "float32",
                          "float64", "complex64", "object", "str", "datetime64[s]"])


@settings(max_examples=EXAMPLES * 2, deadline=None)
@given(
    shape=st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple),
    kind=_kinds,
    bad=st.sampled_from([None, np.nan, np.inf, -np.inf, 1e39, 7e4]),
    where=st.floats(0, 1, exclude_max=True),
    n_features=st.one_of(st.none(), st.integers(1, 4)),
    compute=st.sampled_from([None, "float16", "float32", "float64"]),
)
def test_check_X_against_an_independent_rule(shape, kind, bad, where, n_features, compute) -> None:
    X = np.random.default_rng(0).uniform(-2, 2, size=shape)
    if bad is not None and X.size:
        X.flat[int(where * X.size)] = bad
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        X = X.astype(kind)
    be = get_backend("cpu")
    # the rule, in order
    if X.dtype.kind == "M":
        expected = (TypeError, "X holds datetime64 values; mlpx trains on numbers")
    elif X.dtype.kind not in "biuf":
        expected = (TypeError, "numeric")
    elif X.ndim != 2:
        expected = (ValueError, "2-D")
    elif X.size == 0:
        expected = (ValueError, "empty")
    elif X.dtype.kind == "f" and not np.isfinite(X).all():
        expected = (ValueError, "NaN or infinity")
    elif n_features is not None and X.shape[1] != n_features:
        expected = (ValueError, "features")
    elif compute is not None and np.abs(X.astype(np.float64)).max() > dtype_max(compute):
        expected = (ValueError, f"beyond {compute}'s largest")
    else:
        expected = None
    if expected is None:
        out = check_X(X, be, n_features, dtype=compute)
        assert out.shape == X.shape and np.array_equal(out, X)
    else:
        with pytest.raises(expected[0], match=expected[1]):
            check_X(X, be, n_features, dtype=compute)


@pytest.mark.parametrize("bad", [None, "abc", {"a": 1}, [[1, 2], [3]], np.float64(1.0), 3, object()])
def test_check_X_wrong_types(bad) -> None:
    with pytest.raises((TypeError, ValueError)) as err:
        check_X(bad, get_backend("cpu"), 2)
    assert type(err.value) in (TypeError, ValueError)  # documented types, not internals
    assert "X" in str(err.value)


@settings(max_examples=60, deadline=None)
@given(
    backend=st.sampled_from(["cpu", "array_api_strict"]),
    bad=st.sampled_from([np.nan, np.inf, -np.inf, 1e39, -1e300]),
    row=st.integers(0, 9), col=st.integers(0, 2),
    on_device=st.booleans(),
)
def test_the_engine_refuses_bad_values_anywhere_and_keeps_its_weights(backend, bad, row, col, on_device) -> None:
    model = _model(backend)
    rng = np.random.default_rng(row)
    X, y = rng.normal(size=(10, 3)), rng.integers(0, 2, 10)
    X[row, col] = bad
    Xin = model.backend.asarray(X, dtype="float64") if on_device and backend != "cpu" else X
    before = model.get_flat_params()
    match = "NaN or infinity" if not np.isfinite(bad) else "beyond float32's largest"
    for call in (lambda: model.fit(Xin, y, epochs=1), lambda: model.predict(Xin),
                 lambda: model.evaluate(Xin, y)):
        with pytest.raises(ValueError, match=match):
            call()
    np.testing.assert_array_equal(model.get_flat_params(), before)


# ------------------------------------- pandas nullable dtypes, dates and durations
def _nullable_frames():
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(48, 3))
    return pd, X, {
        "Float64": pd.DataFrame(X).astype("Float64"),
        "Int64": pd.DataFrame(np.round(X * 4)).astype("Int64"),
        "boolean": pd.DataFrame(X > 0).astype("boolean"),
        "mixed": pd.DataFrame({"a": pd.array(X[:, 0], dtype="Float64"), "b": np.round(X[:, 1] * 4).astype(int),
                               "c": pd.array(X[:, 2] > 0, dtype="boolean")}),
    }


@pytest.mark.parametrize("kind", ["Float64", "Int64", "boolean", "mixed"])
def test_the_engine_reads_pandas_nullable_frames_as_scikit_learn_does(kind: str) -> None:
    """X, y and sample_weight as nullable frames and series train exactly as the NumPy
    arrays scikit-learn's check_array makes of them."""
    from sklearn.utils import check_array

    pd, _, frames = _nullable_frames()
    frame = frames[kind]
    want_X = check_array(frame, dtype=None)
    y = pd.Series((want_X[:, 0] > 0).astype(int)).astype("Int64")
    w = pd.Series(np.arange(1, 49) % 3 + 1).astype("Float64")
    got = check_X(frame, get_backend("cpu"))
    np.testing.assert_array_equal(got, want_X)
    assert got.dtype.kind in "biuf"
    fitted = []
    for X_in, y_in, w_in in ((frame, y, w), (want_X, y.to_numpy(dtype=int), w.to_numpy(dtype=float))):
        model = mlpx.MLP([3, 5, 2], dtype="float64", seed=0)
        model.fit(X_in, y_in, sample_weight=w_in, epochs=2, batch_size=16)
        fitted.append(model.get_flat_params())
    np.testing.assert_array_equal(fitted[0], fitted[1])
    # a boolean series of targets, a single-column frame of weights
    Y = encode_targets(pd.Series(y.to_numpy() > 0, dtype="boolean"), "logistic", 1, 48)
    np.testing.assert_array_equal(Y[:, 0], y.to_numpy() > 0)
    np.testing.assert_array_equal(check_sample_weight(w, 48), w.to_numpy(dtype=float))


def test_missing_values_in_nullable_data_are_named() -> None:
    pd, X, frames = _nullable_frames()
    holed = frames["Float64"].copy()
    holed.iloc[3, 1] = pd.NA
    holed.iloc[7, 0] = pd.NA
    with pytest.raises(ValueError, match=r"X has 2 missing value\(s\) \(pd.NA"):
        check_X(holed, get_backend("cpu"))
    model = mlpx.MLP([3, 4, 2], seed=0)
    with pytest.raises(ValueError, match="missing value"):
        model.fit(holed, np.zeros(48, dtype=int), epochs=1)
    y = pd.Series(np.arange(48) % 2, dtype="Int64")
    y[5] = pd.NA
    with pytest.raises(ValueError, match=r"y has 1 missing value"):
        model.fit(X, y, epochs=1)
    w = pd.Series(np.ones(48), dtype="Float64")
    w[0] = pd.NA
    with pytest.raises(ValueError, match=r"sample_weight has 1 missing value"):
        model.fit(X, np.arange(48) % 2, sample_weight=w, epochs=1)
    with pytest.raises(ValueError, match="missing value"):
        model.predict(holed)


@pytest.mark.parametrize("what", ["frame datetime", "frame timedelta", "frame tz", "array datetime",
                                  "array timedelta", "series datetime"])
def test_dates_and_durations_are_refused_everywhere(what: str) -> None:
    pd = pytest.importorskip("pandas")
    from mlpx import MLPClassifier, MLPRegressor

    n = 12
    column = {
        "datetime": pd.date_range("2024-01-01", periods=n),
        "timedelta": pd.to_timedelta(np.arange(n), "s"),
        "tz": pd.date_range("2024-01-01", periods=n, tz="UTC"),
    }
    source, kind = what.split()
    if source == "frame":
        X = pd.DataFrame({"x": np.arange(n, dtype=float), "when": column[kind]})
        match = rf"X holds {'datetime' if kind == 'tz' else kind}64 values in column\(s\) 'when'"
        if kind != "tz":  # scikit-learn refuses these frames too (DTypePromotionError)
            from sklearn.utils import check_array

            with pytest.raises(TypeError):
                check_array(X)
    elif source == "array":
        X = np.arange(2 * n).astype("datetime64[s]" if kind == "datetime" else "timedelta64[s]").reshape(n, 2)
        match = rf"X holds {kind}64 values"
    else:
        X = pd.Series(column[kind]).to_frame()
        match = rf"X holds {kind}64 values"
    y = np.arange(n) % 2
    width = X.shape[1]
    with pytest.raises(TypeError, match=match):
        mlpx.MLP([width, 3, 2], seed=0).fit(X, y, epochs=1)
    with pytest.raises(TypeError, match=match):
        check_X(X, get_backend("cpu"))
    for Est in (MLPClassifier, MLPRegressor):
        with pytest.raises(TypeError, match=match):
            Est(max_iter=1).fit(X, y)
    fitted = MLPClassifier(max_iter=1).fit(np.zeros((n, width)), y)
    with pytest.raises(TypeError, match=match):
        fitted.predict(X)
    with pytest.raises(TypeError, match=r"y holds datetime64"):
        encode_targets(np.arange(n).astype("datetime64[D]"), "identity", 1, n)
    with pytest.raises(TypeError, match=r"sample_weight holds timedelta64"):
        check_sample_weight(np.arange(n).astype("timedelta64[s]"), n)
