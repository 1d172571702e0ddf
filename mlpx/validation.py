"""Input checks, run once at the boundary (``fit``, ``predict``) before any work.

Everything that would otherwise fail deep inside a matrix product, or worse, train
silently on garbage, is turned into a ``ValueError``/``TypeError`` that names the
argument and the fix.

Two families live here:

* data checks: :func:`check_X` (features, including the range of the dtype the
  model computes in), :func:`encode_targets` and :func:`check_sample_weight`;
* parameter checks: :func:`check_real`, :func:`check_int`, :func:`check_bool` and
  :func:`check_seed` take a Python or NumPy number (``np.float32(1e-3)``,
  ``np.int64(0)``, a 0-d array) and return a plain Python ``float``/``int``/``bool``,
  so that kernels, JSON records and generators never see NumPy scalars. Integers
  must be integers: ``8.7`` is refused, and so is ``8.0`` (as scikit-learn does), so
  that a width is never truncated. A bad parameter raises
  :class:`InvalidParameterError`, which is both a ``ValueError`` and a ``TypeError``
  (as scikit-learn's error of the same name), whether its type or its value is wrong.
  The optimizers' settings, one value or one per member, go through
  :func:`check_setting` and :func:`per_member`.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, cast

import numpy as np

from mlpx.data import is_sparse, to_host
from mlpx.losses import OUTPUT_LOSS

__all__ = [
    "InvalidParameterError",
    "SettingCheck",
    "check_X",
    "check_bool",
    "check_dtype_range",
    "check_flag",
    "check_int",
    "check_positive",
    "check_real",
    "check_sample_weight",
    "check_setting",
    "check_sparse_X",
    "check_seed",
    "dtype_max",
    "encode_targets",
    "host_values",
    "is_sparse",
    "per_member",
    "refuse_datetimes",
    "unit_interval",
]


class InvalidParameterError(ValueError, TypeError):
    """A parameter of the wrong type or outside its valid range.

    Subclasses both ``ValueError`` and ``TypeError``, so code that catches either
    (scikit-learn's convention, and this project's tests before these helpers)
    keeps working.
    """


# --------------------------------------------------------------- parameters
def _number(name: str, value: Any, want: str) -> Any:
    """``value`` as a Python/NumPy scalar (0-d NumPy arrays unwrapped); bools refused."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, (bool, np.bool_)):
        raise InvalidParameterError(f"{name} must be {want}, got the bool {value!r}")
    return value


def _interval(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    lo = "(" if low_open or low is None else "["
    hi = ")" if high_open or high is None else "]"
    return f"{lo}{'-inf' if low is None else f'{low:g}'}, {'inf' if high is None else f'{high:g}'}{hi}"


def check_real(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    finite: bool = True,
) -> float:
    """A real-valued parameter as a Python float.

    Parameters
    ----------
    name : str
        How the message names the parameter.
    value : int, float, NumPy integer or floating scalar, or 0-d array of those
    low, high : float, optional
        Bounds of the valid interval (None: unbounded).
    low_open, high_open : bool
        Exclude the bound itself.
    finite : bool, default True
        Refuse infinity (NaN is always refused).

    Returns
    -------
    float

    Raises
    ------
    InvalidParameterError
        Not a real number (bools, strings and complex numbers included), NaN,
        infinite when ``finite``, or outside the interval.
    """
    v = _number(name, value, "a real number")
    if not isinstance(v, numbers.Real):
        raise InvalidParameterError(
            f"{name} must be a real number, got {value!r} ({type(value).__name__})"
        )
    try:
        out = float(v)
    except (OverflowError, ValueError) as exc:
        raise InvalidParameterError(f"{name} must be a real number, got {value!r}: {exc}") from None
    if math.isnan(out) or (finite and math.isinf(out)):
        raise InvalidParameterError(f"{name} must be a finite number, got {value!r}")
    below = low is not None and (out <= low if low_open else out < low)
    above = high is not None and (out >= high if high_open else out > high)
    if below or above:
        raise InvalidParameterError(
            f"{name} must be in {_interval(low, high, low_open, high_open)}, got {value!r}"
        )
    return out


def check_int(name: str, value: Any, low: int | None = None, high: int | None = None) -> int:
    """An integer parameter as a Python int.

    Floats are refused even when integral (``8.0``), as scikit-learn does: a width
    or a count given as a float is more often a bug (``n / 2``) than a wish.

    Returns
    -------
    int

    Raises
    ------
    InvalidParameterError
        Not an integer (floats, bools and strings included) or outside ``[low, high]``.
    """
    v = _number(name, value, _int_range(low, high))
    if not isinstance(v, numbers.Integral):
        hint = (
            "; non-integers are refused, not truncated"
            if isinstance(v, numbers.Real) else ""
        )
        raise InvalidParameterError(
            f"{name} must be {_int_range(low, high)}, got {value!r} ({type(value).__name__}){hint}"
        )
    out = int(v)
    if (low is not None and out < low) or (high is not None and out > high):
        raise InvalidParameterError(f"{name} must be {_int_range(low, high)}, got {value!r}")
    return out


def _int_range(low: int | None, high: int | None) -> str:
    if high is None and low == 1:
        return "a positive integer"
    if high is None and low == 0:
        return "a non-negative integer"
    if low is None and high is None:
        return "an integer"
    return f"an integer in [{'-inf' if low is None else low}, {'inf' if high is None else high}]"


def check_bool(name: str, value: Any) -> bool:
    """A flag as a Python bool; Python and NumPy bools only (``"False"`` is refused)."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if not isinstance(value, (bool, np.bool_)):
        raise InvalidParameterError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_seed(seed: Any, name: str = "seed") -> int | None:
    """A seed as None or a non-negative Python int (``np.int64(0)`` becomes ``0``).

    Seeds end up in JSON model files and are offset per layer (``seed + 1 + k``),
    so they are normalised here, once, at the boundary.
    """
    if seed is None:
        return None
    return check_int(name, seed, low=0)


# ------------------------------------------------------- per-member settings
#: A setting's check: ``check(name, value)`` is the value as a Python float, or raises.
SettingCheck = Callable[[str, Any], float]


def check_setting(name: str, value: Any, check: SettingCheck) -> float | np.ndarray:
    """A setting: one checked scalar (every member) or a 1-D array of checked values."""
    if isinstance(value, (str, bytes)) or np.ndim(value) == 0:
        return check(name, value)
    values = list(np.asarray(value).tolist()) if isinstance(value, np.ndarray) else list(value)
    if not values:
        raise ValueError(f"{name} is an empty sequence; give one value or one per member")
    return np.array([check(f"{name}[{k}]", v) for k, v in enumerate(values)], dtype=np.float64)


def per_member(value: float | np.ndarray, K: int, name: str) -> np.ndarray:
    """A setting of :func:`check_setting` as K values, one per member (a ValueError if it has others)."""
    if np.ndim(value) == 0:
        return np.full(K, float(value))
    values = cast(np.ndarray, value)  # not a scalar: check_setting's 1-D array
    if len(values) != K:
        raise ValueError(f"{name} has {len(values)} values for {K} members")
    return np.asarray(values, dtype=np.float64)


def unit_interval(low_open: bool = False, high_open: bool = False) -> SettingCheck:
    """The check of a setting in [0, 1], either end open as asked."""
    return lambda name, v: check_real(name, v, 0.0, 1.0, low_open=low_open, high_open=high_open)


def check_positive(name: str, v: Any) -> float:
    """A setting > 0 as a Python float."""
    # An optimizer's ε > 0: with ε = 0 a parameter whose gradients have all been zero
    # divides 0 by 0.
    return check_real(name, v, 0.0, low_open=True)


def check_flag(name: str, v: Any) -> float:
    """A flag setting as 0.0 or 1.0 (a row of an optimizer's floats), from a bool."""
    return float(check_bool(name, v))


# --------------------------------------------------------------- dtype range
#: Largest finite value of each dtype a model stores or computes in. bfloat16 has
#: 8 exponent bits and 7 mantissa bits: (2 - 2**-7) * 2**127.
_LARGEST = {
    "float16": 65504.0,
    "bfloat16": (2.0 - 2.0**-7) * 2.0**127,
    "float32": float(np.finfo(np.float32).max),
    "float64": float(np.finfo(np.float64).max),
}

_DTYPE_HINT = {
    "float16": "standardise the data, or use precision='bf16' or 'float32'",
    "bfloat16": "standardise the data",
    "float32": "standardise the data, or use dtype='float64'",
    "float64": "standardise the data",
}


def dtype_max(dtype: Any) -> float:
    """Largest finite value of a float dtype a model uses (float16/bfloat16/float32/float64)."""
    name = dtype if isinstance(dtype, str) else getattr(dtype, "name", None) or np.dtype(dtype).name
    if name not in _LARGEST:
        raise TypeError(f"unsupported dtype {dtype!r}: expected one of {', '.join(_LARGEST)}")
    return _LARGEST[name]


def _source_max(dtype: np.dtype) -> float:
    """Largest magnitude a host array of ``dtype`` can hold (inf for unknown kinds)."""
    if dtype.kind == "b":
        return 1.0
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return float(max(abs(int(info.min)), int(info.max)))
    if dtype.kind == "f":
        return float(np.finfo(dtype).max)
    return math.inf


def check_dtype_range(values: Any, dtype: Any, name: str, be: Any = None) -> None:
    """Refuse finite values that the cast to ``dtype`` would turn into infinity.

    ``1e39`` is finite in float64 but infinite in float32, ``7e4`` in float16: after
    the cast the network would compute NaN probabilities or a loss that "diverges"
    for a reason no learning rate fixes. The check runs before the cast and costs
    nothing when the source dtype cannot exceed the target (float32 data into a
    float32 model); otherwise one max-reduction (on the device for device arrays).

    Parameters
    ----------
    values : ndarray (host) or a backend array, any shape, already checked finite
    dtype : str
        The dtype the values will be cast to: ``"float16"``, ``"bfloat16"``,
        ``"float32"`` or ``"float64"``.
    name : str
        The argument's name for the message.
    be : Backend, optional
        Needed for device arrays.

    Raises
    ------
    ValueError
        Naming the argument, its largest magnitude and the dtype's limit.
    """
    limit = dtype_max(dtype)
    if math.prod(tuple(values.shape)) == 0:
        return
    if isinstance(values, np.ndarray):
        if _source_max(values.dtype) <= limit:
            return
        peak = max(abs(float(values.max())), abs(float(values.min())))
    else:
        if be is None:
            raise TypeError("check_dtype_range needs the backend for a device array")
        xp = be.xp
        src = _device_dtype_name(be, values)
        if src is not None and _LARGEST.get(src, math.inf) <= limit:
            return
        v = values if src is not None else be.asarray(values, dtype="float64")
        peak = be.to_float(xp.max(xp.abs(v)))
    if peak > limit:
        dname = dtype if isinstance(dtype, str) else np.dtype(dtype).name
        raise ValueError(
            f"{name} holds values up to {peak:g} in magnitude, beyond {dname}'s largest "
            f"({limit:g}): the model computes in {dname}, where they would become infinity; "
            f"{_DTYPE_HINT.get(dname, 'standardise the data')}"
        )


def _device_dtype_name(be: Any, x: Any) -> str | None:
    """The name of a device array's floating dtype, or None for an integer array."""
    for name in ("float16", "float32", "float64"):
        try:
            if x.dtype == be.dtype(name):
                return name
        except TypeError:  # the namespace has no such dtype (float16 on array-api-strict)
            continue
    return None


# ------------------------------------------------------------------ arrays
_TIME_KINDS = {"M": "datetime64", "m": "timedelta64"}


def refuse_datetimes(x: Any, name: str) -> None:
    """Refuse dates and durations (NumPy ``datetime64``/``timedelta64``, pandas columns).

    A timestamp as a feature is a count of nanoseconds since 1970, about 1e18: the
    network would saturate on it, or a cast would quietly pick a unit. scikit-learn
    refuses such frames too (with a dtype-promotion error).

    Parameters
    ----------
    x : array_like, DataFrame or Series
    name : str
        The argument's name for the message.

    Raises
    ------
    TypeError
        Naming the argument and the columns (for a DataFrame) that hold them.
    """
    dtypes = _pandas_dtypes(x)
    if dtypes is None:
        kind = getattr(getattr(x, "dtype", None), "kind", None)
        if kind in _TIME_KINDS:
            raise TypeError(_time_message(name, _TIME_KINDS[kind], ""))
        return
    bad = [(col, _TIME_KINDS[d.kind]) for col, d in dtypes if getattr(d, "kind", None) in _TIME_KINDS]
    if bad:
        where = "" if getattr(x, "ndim", 2) == 1 else f" in column(s) {', '.join(repr(c) for c, _ in bad)}"
        raise TypeError(_time_message(name, bad[0][1], where))


def _time_message(name: str, what: str, where: str) -> str:
    return (f"{name} holds {what} values{where}; mlpx trains on numbers, not dates or durations: "
            f"convert them first (e.g. seconds since a reference time, or calendar features)")


def _pandas_dtypes(x: Any) -> list[tuple[Any, Any]] | None:
    """``[(column, dtype), ...]`` of a pandas DataFrame or Series; None for anything else."""
    if not (hasattr(x, "to_numpy") and hasattr(x, "isna") and hasattr(x, "dtypes")):
        return None
    if getattr(x, "ndim", None) == 1:
        return [(getattr(x, "name", None), x.dtype)]
    return list(x.dtypes.items())


def host_values(x: Any, name: str, what: str = "a numeric array") -> np.ndarray:
    """Host data as a NumPy array, pandas nullable dtypes included.

    Frames and series of ``Int64``, ``Float64``, ``boolean`` (and other masked or
    Arrow numeric) columns become int64 / float64 / bool arrays, as scikit-learn
    reads them; their missing values (``pd.NA``) are refused by name rather than
    turned into an object array. Anything else goes through ``np.asarray``.

    Parameters
    ----------
    x : array_like, DataFrame or Series
    name : str
        The argument's name for messages.
    what : str
        What the argument must be, for the message when NumPy cannot read it.

    Returns
    -------
    ndarray

    Raises
    ------
    ValueError
        A pandas object with missing values.
    TypeError
        Dates or durations (:func:`refuse_datetimes`), or data NumPy cannot hold
        as an array.
    """
    refuse_datetimes(x, name)  # a frame's columns by name
    dtypes = _pandas_dtypes(x)
    if dtypes is None:
        try:
            out = np.asarray(x)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name} must be {what}: {exc}") from None
        refuse_datetimes(out, name)  # lists of np.datetime64 become such arrays
        return out
    if all(isinstance(d, np.dtype) for _, d in dtypes):
        return np.asarray(x.to_numpy())  # plain NumPy columns: NaN is caught as a value later
    missing = int(np.asarray(x.isna()).sum())
    if missing:
        raise ValueError(
            f"{name} has {missing} missing value(s) (pd.NA or NaN); impute or drop them before training"
        )
    numeric = [d if isinstance(d, np.dtype) else getattr(d, "numpy_dtype", None) for _, d in dtypes]
    if all(isinstance(n, np.dtype) and n.kind in "biuf" for n in numeric):
        return np.asarray(x.to_numpy(dtype=np.result_type(*numeric)))
    return np.asarray(x.to_numpy())


def _is_device_array(x: Any) -> bool:
    """An array of a backend's own library: anything with ``__array_namespace__``, and
    CuPy's, which has none (CuPy 14) and refuses implicit conversion to NumPy."""
    if isinstance(x, (np.ndarray, np.generic)):
        return False
    return hasattr(x, "__array_namespace__") or type(x).__module__.split(".")[0] == "cupy"


def _refuse_sparse(x: Any, name: str) -> None:
    if is_sparse(x):
        raise TypeError(
            f"{name} is a sparse matrix ({type(x).__name__}); Sequential takes dense arrays. "
            f"Use mlpx.MLPClassifier / mlpx.MLPRegressor, which train on sparse data, or "
            f"densify it with {name}.toarray()"
        )


def _device_is_real(be: Any, X: Any) -> bool:
    isdtype = getattr(be.xp, "isdtype", None)
    if isdtype is not None:
        return bool(isdtype(X.dtype, ("integral", "real floating")))
    return np.dtype(X.dtype).kind in "iuf"


def check_X(
    X: Any, be: Any, n_features: int | None = None, name: str = "X", dtype: Any = None
) -> Any:
    """Validate a feature matrix; return it as a host array or a backend array.

    Parameters
    ----------
    X : array_like, shape (n_samples, n_features)
        NumPy array, nested lists, a DataFrame, or an array already on ``be``.
    be : Backend
    n_features : int, optional
        The width the model expects.
    name : str
        The argument's name in messages ("X", "X_val").
    dtype : str, optional
        The dtype the model computes in (its compute dtype): values the cast would
        turn into infinity are refused (:func:`check_dtype_range`).

    Raises
    ------
    ValueError
        Empty, not 2-D, NaN/inf, beyond ``dtype``'s range, or the wrong number of
        features.
    TypeError
        Non-numeric data, or a sparse matrix (the estimators take those).
    """
    _refuse_sparse(X, name)
    device = _is_device_array(X)
    if device:
        be.check(X)
        if not _device_is_real(be, X):
            raise TypeError(f"{name} must be numeric (integer or real floating), got dtype {X.dtype}")
    else:
        X = host_values(X, name, "a numeric 2-D array")
        if X.dtype.kind not in "biuf":
            raise TypeError(f"{name} must be numeric, got dtype {X.dtype}")
    shape = tuple(X.shape)
    if len(shape) != 2:
        hint = " (reshape a single feature with X.reshape(-1, 1))" if len(shape) == 1 else ""
        raise ValueError(f"{name} must be 2-D (n_samples, n_features), got shape {shape}{hint}")
    if shape[0] == 0 or shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {shape}")
    if device:
        finite = bool(be.to_numpy(be.xp.all(be.xp.isfinite(X))))
    else:
        finite = X.dtype.kind != "f" or _all_finite(X)
    if not finite:
        raise ValueError(f"{name} contains NaN or infinity; clean or impute it before training")
    if n_features is not None and shape[1] != n_features:
        raise ValueError(f"{name} has {shape[1]} features, but the model expects {n_features}")
    if dtype is not None:
        check_dtype_range(X, dtype, name, be)
    return X


def check_sparse_X(X: Any, n_features: int, name: str = "X", dtype: Any = None) -> Any:
    """Validate a SciPy sparse feature matrix (CSR or CSC) for a model of ``n_features``.

    Parameters
    ----------
    X : scipy.sparse matrix or array, shape (n_samples, n_features)
    n_features : int
    name : str
    dtype : str, optional
        The model's compute dtype: stored values the cast would turn into infinity
        are refused.

    Returns
    -------
    The matrix, in CSR form.

    Raises
    ------
    ValueError
        Empty, the wrong width, or NaN/inf or out-of-range stored values.
    TypeError
        Non-numeric values.
    """
    X = X.tocsr()
    if X.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be numeric, got dtype {X.dtype}")
    shape = tuple(X.shape)
    if shape[0] == 0 or shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {shape}")
    if shape[1] != n_features:
        raise ValueError(f"{name} has {shape[1]} features, but the model expects {n_features}")
    if X.dtype.kind == "f" and not bool(np.isfinite(X.data).all()):
        raise ValueError(f"{name} contains NaN or infinity; clean or impute it before training")
    if dtype is not None:
        check_dtype_range(X.data, dtype, name)
    return X


#: Elements per slice of the host finiteness check: ``np.isfinite`` of a whole array
#: allocates one boolean per element, a quarter of a float32 memory map's file.
_FINITE_SLICE = 1 << 22


def _all_finite(X: np.ndarray) -> bool:
    """Whether every element is finite, in slices of rows for large arrays (bounded memory)."""
    if X.size <= _FINITE_SLICE:
        return bool(np.isfinite(X).all())
    rows = max(1, _FINITE_SLICE // max(1, X.shape[1]))
    return all(bool(np.isfinite(X[a: a + rows]).all()) for a in range(0, X.shape[0], rows))


#: Softmax targets: a probability row may miss 1 by this many float32 epsilons per
#: class (rounding in whoever normalised it) before it is refused as unnormalised.
_ROW_SUM_EPS = float(np.finfo(np.float32).eps)


def encode_targets(
    y: Any, output: str, n_outputs: int, n_samples: int, dtype: Any = None, loss: str | None = None
) -> np.ndarray:
    """Turn user targets into the (n, n_outputs) float matrix the loss compares with.

    Parameters
    ----------
    y : array_like
        ``softmax``: integer class labels 0..k-1, shape (n,), or one-hot / probability
        rows, shape (n, k), each row summing to 1. ``logistic``: 0/1 labels (or
        probabilities), shape (n,) for one output or (n, k) for multilabel.
        ``identity``/``exp``: real values, shape (n,) or (n, k).
    output : str
        Name of the model's output activation.
    n_outputs : int
        Width of the output layer.
    n_samples : int
    dtype : str, optional
        The dtype the targets will be cast to (the model's dtype): values that
        would become infinity there are refused.
    loss : str, optional
        The loss the targets are compared with (default: the output's canonical
        one); it sets their range: [0, 1] for the cross-entropies, ≥ 0 for Poisson,
        any real value for squared error.

    Returns
    -------
    ndarray, shape (n, n_outputs), float64

    Notes
    -----
    Soft targets for a softmax output must be distributions. The cross-entropy
    delta ``softmax(z) − y`` is the gradient of ``logsumexp(z)·Σy − y·z`` only when
    ``Σy = 1``; for any other row sum it is wrong (by a factor of 2.5 in one case
    found). So a row whose sum misses 1 by more than float rounding
    (``k · 1.2e-7`` for k classes) raises ``ValueError``; a row within that
    tolerance is divided by its sum, so the loss and its gradient agree exactly.
    """
    _refuse_sparse(y, "y")
    if _is_device_array(y):
        y = to_host(y)
    y = host_values(y, "y")
    if y.dtype.kind not in "biuf":
        raise TypeError(
            f"y must be numeric, got dtype {y.dtype}; encode string labels as integers "
            "(mlpx.MLPClassifier does this for you)"
        )
    if y.ndim not in (1, 2) or y.shape[0] == 0:
        raise ValueError(f"y must have shape (n,) or (n, k) with n > 0, got {y.shape}")
    if y.shape[0] != n_samples:
        raise ValueError(f"X and y have different lengths: {n_samples} and {y.shape[0]}")
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        raise ValueError("y contains NaN or infinity")

    if output == "softmax" and y.ndim == 1:
        labels = y
        if y.dtype.kind == "f":
            if not np.all(labels == np.round(labels)):
                raise ValueError("class labels for a softmax output must be integers 0..k-1")
        lo, hi = float(labels.min()), float(labels.max())
        if lo < 0 or hi >= n_outputs:
            raise ValueError(
                f"labels range over {lo:g}..{hi:g}, but the softmax output layer has {n_outputs} "
                f"units (classes 0..{n_outputs - 1}); widen the last layer or re-encode the labels"
            )
        labels = labels.astype(np.int64)
        Y = np.zeros((len(labels), n_outputs))
        Y[np.arange(len(labels)), labels] = 1.0
        return Y

    Y = y.reshape(-1, 1) if y.ndim == 1 else y
    if Y.shape[1] != n_outputs:
        raise ValueError(
            f"y has {Y.shape[1]} column(s) but the output layer has {n_outputs} unit(s)"
        )
    Y = Y.astype(np.float64, copy=False)
    kind = loss if loss is not None else OUTPUT_LOSS.get(output)
    if kind in ("cross_entropy", "binary_cross_entropy") and (Y.min() < 0 or Y.max() > 1):
        raise ValueError(
            f"targets for {kind} on a {output} output must lie in [0, 1] (labels or probabilities), "
            f"got values in [{Y.min()}, {Y.max()}]"
        )
    if kind == "poisson" and Y.min() < 0:
        raise ValueError(f"targets for a Poisson loss (on a {output} output) must be non-negative")
    if output == "softmax" and kind == "cross_entropy":
        # The (Ŷ − Y)/n shortcut of softmax + cross-entropy holds for rows summing to 1.
        Y = _normalised_rows(Y)
    if dtype is not None:
        check_dtype_range(Y, dtype, "y")
    return Y


def _normalised_rows(Y: np.ndarray) -> np.ndarray:
    """Softmax targets with every row summing to 1 (see :func:`encode_targets`)."""
    sums = Y.sum(axis=1)
    tol = Y.shape[1] * _ROW_SUM_EPS
    bad = np.flatnonzero(np.abs(sums - 1.0) > tol)
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"soft targets for a softmax output must be probability rows summing to 1; "
            f"{bad.size} row(s) do not (row {i} sums to {sums[i]:.6g}). Normalise them "
            f"(y / y.sum(axis=1, keepdims=True)), or use a logistic output for multilabel targets"
        )
    if np.all(sums == 1.0):
        return Y
    normalised: np.ndarray = Y / sums[:, None]
    return normalised


def check_sample_weight(sample_weight: Any, n_samples: int, dtype: Any = None) -> np.ndarray | None:
    """Validate sample weights: shape (n,), finite, non-negative, not all zero.

    Parameters
    ----------
    sample_weight : array_like, shape (n_samples,), a scalar, or None
    n_samples : int
    dtype : str, optional
        The dtype the weights will be cast to (the model's dtype): weights beyond
        its range, or whose sum is zero once cast (all underflow), are refused.

    Returns
    -------
    ndarray, shape (n_samples,), float64, or None
    """
    if sample_weight is None:
        return None
    _refuse_sparse(sample_weight, "sample_weight")
    if _is_device_array(sample_weight):
        sample_weight = to_host(sample_weight)
    values = host_values(sample_weight, "sample_weight")
    try:
        w = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"sample_weight must be numeric: {exc}") from None
    if w.ndim == 0:
        w = np.full(n_samples, float(w))
    if w.shape != (n_samples,):
        raise ValueError(f"sample_weight must have shape ({n_samples},), got {w.shape}")
    if not np.isfinite(w).all():
        raise ValueError("sample_weight must be finite and non-negative; it contains NaN or infinity")
    negative = int(np.count_nonzero(w < 0))
    if negative:
        raise ValueError(
            f"sample_weight must be finite and non-negative; {negative} weight(s) are negative "
            f"(the smallest is {w.min():g})"
        )
    if w.sum() <= 0:
        raise ValueError("sample_weight sums to zero: nothing to train on")
    if dtype is not None:
        check_dtype_range(w, dtype, "sample_weight")
        if dtype in ("float16", "float32") and not w.astype(dtype).any():
            raise ValueError(
                f"sample_weight sums to zero once cast to the model's {dtype} (every weight "
                f"underflows); rescale the weights"
            )
    return w
