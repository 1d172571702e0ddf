"""Parameters: NumPy scalars are accepted wherever Python numbers are, and settings
that make no sense (negative ε, η_min or power_t, non-finite values, fractional
widths, callbacks that are not callbacks) are refused with a clear error."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mlpx
from mlpx.callbacks import check_callbacks
from mlpx.layers import Dense, Dropout
from mlpx.validation import InvalidParameterError, check_bool, check_int, check_real, check_seed

INT_TYPES = [int, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64]
FLOAT_TYPES = [float, np.float16, np.float32, np.float64]
EXAMPLES = 150


def _as(kind, value):
    """``value`` as an instance of ``kind``; 0-d arrays are the extra kind "0d"."""
    with np.errstate(over="ignore"):  # 1e300 as float16 is inf: refused like any inf
        return np.asarray(value) if kind == "0d" else kind(value)


# ------------------------------------------------------------ the helpers
@settings(max_examples=EXAMPLES, deadline=None)
@given(
    kind=st.sampled_from(FLOAT_TYPES + INT_TYPES + ["0d"]),
    value=st.floats(allow_nan=False, allow_infinity=False, min_value=-1e4, max_value=1e4),
    low=st.one_of(st.none(), st.floats(-10, 10)),
    high=st.one_of(st.none(), st.floats(-10, 10)),
    low_open=st.booleans(),
    high_open=st.booleans(),
)
def test_check_real_takes_every_numpy_scalar(kind, value, low, high, low_open, high_open) -> None:
    if kind in INT_TYPES:
        value = abs(int(value)) if np.dtype(kind).kind == "u" else int(value)
        info = np.iinfo(kind) if kind is not int else None
        if info is not None and not info.min <= value <= info.max:
            value = int(info.max)
    x = _as(kind, value)
    exact = float(np.asarray(x).item())  # the value the scalar holds (float16 rounds)
    inside = (low is None or (exact > low if low_open else exact >= low)) and (
        high is None or (exact < high if high_open else exact <= high)
    )
    if not inside:
        with pytest.raises(InvalidParameterError, match="must be in"):
            check_real("alpha", x, low, high, low_open=low_open, high_open=high_open)
        return
    out = check_real("alpha", x, low, high, low_open=low_open, high_open=high_open)
    assert type(out) is float and out == exact


@settings(max_examples=EXAMPLES, deadline=None)
@given(kind=st.sampled_from(INT_TYPES + ["0d"]), value=st.integers(0, 2**31 - 1), low=st.integers(0, 10))
def test_check_int_takes_every_numpy_integer(kind, value, low) -> None:
    if kind in INT_TYPES and kind is not int:
        value = min(value, int(np.iinfo(kind).max))
    x = _as(kind, value)
    if value < low:
        with pytest.raises(InvalidParameterError):
            check_int("n", x, low=low)
    else:
        out = check_int("n", x, low=low)
        assert type(out) is int and out == value


@settings(max_examples=EXAMPLES, deadline=None)
@given(kind=st.sampled_from(FLOAT_TYPES + ["0d"]), value=st.floats(allow_nan=True, allow_infinity=True))
def test_check_int_refuses_every_float_even_integral_ones(kind, value) -> None:
    """8.7 would be truncated to 8 by int(); 8.0 is refused as scikit-learn refuses it."""
    with pytest.raises(InvalidParameterError, match="integer"):
        check_int("width", _as(kind, value), low=1)


@pytest.mark.parametrize(
    "bad", [float("nan"), float("inf"), -float("inf"), np.float32("nan"), np.float64("inf"), True,
            np.bool_(False), "0.1", None, 1j, [0.1], np.array([0.1])],
)
def test_check_real_refuses_non_numbers_and_non_finite(bad) -> None:
    with pytest.raises(InvalidParameterError) as err:
        check_real("lr", bad, 0.0, low_open=True)
    assert "lr" in str(err.value)
    assert isinstance(err.value, ValueError) and isinstance(err.value, TypeError)


def test_check_bool_and_seed() -> None:
    assert check_bool("flag", np.bool_(True)) is True and check_bool("flag", False) is False
    for bad in ("False", 0, 1.0, None):
        with pytest.raises(InvalidParameterError, match="flag"):
            check_bool("flag", bad)
    assert check_seed(None) is None
    for s in (np.int64(7), np.uint8(7), np.asarray(7), 7):
        assert check_seed(s) == 7 and type(check_seed(s)) is int
    for bad in (-1, 1.0, np.float64(3), "3", True):
        with pytest.raises(InvalidParameterError, match="seed"):
            check_seed(bad)


# ------------------------------------------------- NumPy scalars in the engine
@pytest.mark.parametrize("kind", [np.int8, np.int32, np.int64, np.uint16, np.uint64])
def test_numpy_integer_seed_is_an_int_everywhere(kind, tmp_path) -> None:
    """seed=np.int64(0) used to break save (JSON) and silently unseed dropout."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(32, 4)), rng.integers(0, 3, 32)

    def run(seed):
        model = mlpx.MLP([4, 8, 3], dropout=0.5, seed=seed, dtype="float64")
        model.fit(X, y, epochs=2, batch_size=8)
        return model

    ref, got = run(3), run(kind(3))
    assert type(got.seed) is int and got.seed == 3
    np.testing.assert_array_equal(got.get_flat_params(), ref.get_flat_params())  # same masks
    path = tmp_path / "m.npz"
    got.save(path)
    with np.load(path) as f:
        assert json.loads(str(f["config"]))["seed"] == 3
    np.testing.assert_array_equal(mlpx.load(path).predict_proba(X), got.predict_proba(X))


def test_checkpoint_with_a_numpy_seed(tmp_path) -> None:
    from mlpx.saving import ModelCheckpoint, load_checkpoint

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(16, 3)), rng.integers(0, 2, 16)
    model = mlpx.MLP([3, 4, 2], seed=np.int64(5))
    model.fit(X, y, epochs=2, callbacks=[ModelCheckpoint(tmp_path / "ck.npz")])
    again = mlpx.MLP([3, 4, 2], seed=0)
    load_checkpoint(tmp_path / "ck.npz", again)
    np.testing.assert_array_equal(again.get_flat_params(), model.get_flat_params())


@pytest.mark.parametrize("kind", [np.float16, np.float32, np.float64, np.asarray])
def test_numpy_float_settings_reach_the_kernels_as_python_floats(kind, strict_backend) -> None:
    """On array-api-strict a NumPy scalar times a device array is an error: every
    setting must arrive as a Python float."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(16, 3)), rng.integers(0, 2, 16)
    opts = {
        "sgd": lambda c: mlpx.SGD(lr=c(0.5), momentum=c(0.5), nesterov=np.bool_(True)),
        "adam": lambda c: mlpx.Adam(lr=c(0.25), beta_1=c(0.5), beta_2=c(0.75), epsilon=c(0.125),
                                    schedule=mlpx.Cosine(T_max=np.int64(3), eta_min=c(0.0))),
        "adamw": lambda c: mlpx.AdamW(lr=c(0.25), weight_decay=c(0.5),
                                      schedule=mlpx.StepDecay(np.int32(1), c(0.5))),
        "rmsprop": lambda c: mlpx.RMSprop(lr=c(0.25), rho=c(0.5), epsilon=c(0.125),
                                          schedule=mlpx.InverseScaling(c(0.5))),
    }
    for name, make in opts.items():
        ref_opt, opt = make(float), make(kind)
        for k, v in vars(opt).items():
            if isinstance(getattr(ref_opt, k), float):
                assert type(v) is float and v == getattr(ref_opt, k), (name, k)
        results = []
        for o in (ref_opt, opt):
            model = mlpx.MLP([3, 4, 2], backend=strict_backend, seed=0, dtype="float64",
                             dropout=kind(0.5))
            model.fit(X, y, epochs=3, batch_size=4, optimizer=o)
            results.append(model.get_flat_params())
        np.testing.assert_array_equal(results[1], results[0], err_msg=name)


def test_lr_as_numpy_float32_through_fit() -> None:
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(16, 3)), rng.integers(0, 2, 16)
    a, b = mlpx.MLP([3, 2], seed=0), mlpx.MLP([3, 2], seed=0)
    a.fit(X, y, epochs=2, lr=np.float32(1e-2))
    b.fit(X, y, epochs=2, lr=float(np.float32(1e-2)))
    np.testing.assert_array_equal(a.get_flat_params(), b.get_flat_params())


# --------------------------------------------------------------- widths
@pytest.mark.parametrize("bad", [8.7, 8.0, np.float32(8.0), "8", True, 0, -3, None])
def test_fractional_or_bad_widths_are_refused(bad) -> None:
    with pytest.raises(InvalidParameterError, match=r"sizes\[1\]"):
        mlpx.MLP([4, bad, 2])
    with pytest.raises(InvalidParameterError, match="n_out"):
        Dense(4, bad)


def test_numpy_integer_widths_are_accepted() -> None:
    widths = np.array([4, 6, 2], dtype=np.int32)
    model = mlpx.MLP(widths, seed=0)
    assert model.n_params == 4 * 6 + 6 + 6 * 2 + 2
    assert all(type(v) is int for l in model.layers for v in (l.n_in, l.n_out))
    assert json.dumps(model.get_config())  # every number is a Python one


# ------------------------------------------------- settings that make no sense
@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: mlpx.Cosine(eta_min=-0.1), "eta_min"),
        (lambda: mlpx.Cosine(eta_min=float("nan")), "eta_min"),
        (lambda: mlpx.Cosine(T_max=2.5), "T_max"),
        (lambda: mlpx.InverseScaling(power_t=-0.5), "power_t"),
        (lambda: mlpx.InverseScaling(power_t=float("inf")), "power_t"),
        (lambda: mlpx.StepDecay(step_size=0), "step_size"),
        (lambda: mlpx.StepDecay(step_size=1.5), "step_size"),
        (lambda: mlpx.StepDecay(gamma=0.0), "gamma"),
        (lambda: mlpx.StepDecay(gamma=1.5), "gamma"),
        (lambda: mlpx.StepDecay(gamma=float("nan")), "gamma"),
        (lambda: mlpx.Adam(epsilon=-1e-8), "epsilon"),
        (lambda: mlpx.Adam(epsilon=0.0), "epsilon"),
        (lambda: mlpx.AdamW(epsilon=-1.0), "epsilon"),
        (lambda: mlpx.RMSprop(epsilon=-1.0), "epsilon"),
        (lambda: mlpx.Adam(epsilon=float("inf")), "epsilon"),
        (lambda: mlpx.Adam(beta_1=float("nan")), "beta_1"),
        (lambda: mlpx.Adam(beta_2=1.0), "beta_2"),
        (lambda: mlpx.AdamW(weight_decay=-0.01), "weight_decay"),
        (lambda: mlpx.AdamW(weight_decay=float("inf")), "weight_decay"),
        (lambda: mlpx.SGD(momentum=-0.1), "momentum"),
        (lambda: mlpx.SGD(momentum=float("nan")), "momentum"),
        (lambda: mlpx.SGD(nesterov="yes"), "nesterov"),
        (lambda: mlpx.RMSprop(rho=1.0), "rho"),
        (lambda: mlpx.SGD(lr=float("inf")), "learning rate"),
        (lambda: Dropout(p=1.0), "p"),
        (lambda: Dropout(p=-0.1), "p"),
        (lambda: Dropout(p=float("nan")), "p"),
        (lambda: Dropout(p="0.5"), "p"),
        (lambda: Dropout(0.5, seed=1.5), "seed"),
        (lambda: mlpx.MLP([3, 2], dropout=1.0), "dropout"),
        (lambda: mlpx.MLP([3, 2], seed=-1), "seed"),
        (lambda: mlpx.MLP([3, 2], seed=2.0), "seed"),
        (lambda: mlpx.EarlyStopping(patience=-1), "patience"),
        (lambda: mlpx.EarlyStopping(patience=2.5), "patience"),
        (lambda: mlpx.EarlyStopping(min_delta=-0.1), "min_delta"),
        (lambda: mlpx.EarlyStopping(restore_best_weights="no"), "restore_best_weights"),
    ],
)
def test_settings_that_make_no_sense_are_refused(make, match) -> None:
    with pytest.raises(InvalidParameterError, match=match):
        make()


def test_cosine_eta_min_above_the_initial_rate_is_refused_at_use() -> None:
    cos = mlpx.Cosine(T_max=5, eta_min=0.1)
    assert cos(0.2, 5, 0) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="eta_min=0.1 exceeds the initial learning rate 0.01"):
        cos(0.01, 0, 0)
    model = mlpx.MLP([3, 2], seed=0)
    before = model.get_flat_params()
    with pytest.raises(ValueError, match="eta_min"):
        model.fit(np.ones((4, 3)), [0, 1, 0, 1], optimizer=mlpx.SGD(lr=0.01, schedule=cos))
    np.testing.assert_array_equal(model.get_flat_params(), before)


# ---------------------------------------------------------------- callbacks
class _Counter(mlpx.Callback):
    def __init__(self) -> None:
        self.epochs = 0

    def on_epoch_end(self, model, epoch, logs) -> None:
        self.epochs += 1


def test_check_callbacks() -> None:
    c, e = _Counter(), mlpx.EarlyStopping()
    assert check_callbacks(None) == [] and check_callbacks(c) == [c]
    assert check_callbacks((c, e)) == [c, e] and check_callbacks(iter([e])) == [e]
    given_list = [c]
    assert check_callbacks(given_list) is not given_list  # fit may append to its copy
    for bad, where in (([object()], "callbacks[0]"), ([c, "stop"], "callbacks[1]"),
                       ([mlpx.EarlyStopping], "instantiate it"), (object(), "list of")):
        with pytest.raises(TypeError, match="Callback") as err:
            check_callbacks(bad)
        assert where in str(err.value)
