"""Fitted estimators in mlpx model files: ``est.save(path)`` and ``mlpx.load(path)``.

An estimator file is an mlpx model file (:mod:`mlpx.saving`): the network's record
and flat parameters, the optimizer's state as a checkpoint holds it (so
``partial_fit`` continues exactly), plus an ``"estimator"`` object in the JSON
record with the class, the hyperparameters, the fitted attributes and the label
encoding. Nothing is pickled: loading an untrusted file runs nothing, and it is
read with the same checks as a model file (:class:`~mlpx.saving.ModelFile`: no
array is allocated before its header matches the record). The estimator record
is checked field by field against the network (input width, hidden sizes,
activations, outputs, classes) before the weights are read.

Values JSON cannot hold are written as strings: ``"inf"``, ``"-inf"``, ``"nan"``
for floats, and the class labels as ``{"dtype": <NumPy dtype string>, "values":
[...]}`` (numbers, booleans or strings; an object array only of strings).
"""

from __future__ import annotations

import math
import os
import warnings
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import is_classifier
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils.validation import check_is_fitted

from mlpx.backends import Backend
from mlpx.saving import MAX_PARAMS, ModelFile, ModelFileError, checkpoint_contents, write_model_file

__all__ = ["load_estimator", "save_estimator"]

_VERSION = 1
_Y_TYPES = ("binary", "multiclass", "multilabel-indicator")
_MAX_LIST = 1_000_000
# Fitted attributes: name -> kind ("int": >= 0, "float", "float?": float or None,
# "floats?": list of floats or None).
_FITTED = {
    "n_iter_": "int", "t_": "int", "n_layers_": "int", "n_outputs_": "int", "n_features_in_": "int",
    "loss_": "float?", "best_loss_": "float?", "loss_curve_": "floats?", "validation_scores_": "floats?",
    "best_validation_score_": "float?", "_no_improvement_count": "int",
}


# ------------------------------------------------------------------ values
def _float_out(v: Any) -> Any:
    v = float(v)
    return v if math.isfinite(v) else ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))


def _float_in(v: Any, where: str, what: str) -> float:
    if isinstance(v, str) and v in ("inf", "-inf", "nan"):
        return float(v)
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    raise ModelFileError(f"{where}: estimator {what} must be a number, got {v!r}")


def _param_out(name: str, v: Any) -> Any:
    if isinstance(v, Backend):
        return v.name
    if name == "dtype":
        return None if v is None else np.dtype(v).name
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, Integral):
        return int(v)
    if isinstance(v, Real):
        return _float_out(v)
    if isinstance(v, (str, type(None))):
        return v
    if isinstance(v, (list, tuple, np.ndarray)) and all(isinstance(x, Integral) for x in v):
        return [int(x) for x in v]
    raise ValueError(f"cannot save the parameter {name}={v!r} (not a number, string, None or list of ints)")


def _param_in(name: str, v: Any, where: str) -> Any:
    if isinstance(v, str) and v in ("inf", "-inf", "nan") and name != "backend":
        return float(v)
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, list) and len(v) <= 10_000 and all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        return tuple(v)
    raise ModelFileError(f"{where}: estimator parameter {name} has a value no estimator takes: {v!r}")


def _labels_out(classes: np.ndarray) -> dict[str, Any]:
    classes = np.asarray(classes)
    if classes.dtype.kind in "biuf":
        values = [x.item() for x in classes]
        if classes.dtype.kind == "f":
            values = [_float_out(x) for x in values]
        return {"dtype": classes.dtype.str, "values": values}
    if classes.dtype.kind == "U" or (classes.dtype.kind == "O" and all(isinstance(x, str) for x in classes)):
        return {"dtype": classes.dtype.str if classes.dtype.kind == "U" else "|O", "values": [str(x) for x in classes]}
    raise ValueError(f"cannot save class labels of dtype {classes.dtype} (numbers, booleans or strings only)")


def _labels_in(record: Any, where: str) -> np.ndarray:
    if not (isinstance(record, dict) and set(record) == {"dtype", "values"} and isinstance(record["values"], list)
            and isinstance(record["dtype"], str) and len(record["values"]) <= _MAX_LIST):
        raise ModelFileError(f"{where}: estimator classes_ must be {{'dtype', 'values'}}")
    try:
        dtype = np.dtype(record["dtype"])
    except (TypeError, ValueError, OverflowError):
        dtype = None
    values = record["values"]
    ok = dtype is not None and (
        (dtype.kind == "b" and all(isinstance(v, bool) for v in values))
        or (dtype.kind in "iu" and all(isinstance(v, int) and not isinstance(v, bool) for v in values))
        or (dtype.kind == "f" and all(isinstance(v, (int, float, str)) and not isinstance(v, bool) for v in values))
        or (dtype.kind in "UO" and all(isinstance(v, str) for v in values))
    )
    if not ok or dtype is None or dtype.itemsize > 4096:
        raise ModelFileError(f"{where}: estimator classes_ of dtype {record['dtype']!r} with values {values[:5]!r}...")
    try:
        if dtype.kind == "f":
            values = [_float_in(v, where, "classes_") for v in values]
        labels = np.array(values, dtype=dtype) if dtype.kind != "O" else np.array(values + [None], dtype=object)[:-1]
    except (ValueError, OverflowError) as exc:
        raise ModelFileError(f"{where}: estimator classes_ do not fit {dtype}: {exc}") from None
    if len(labels) != len(np.unique(labels)) or not np.array_equal(np.sort(labels), labels):
        raise ModelFileError(f"{where}: estimator classes_ must be sorted and unique")
    return labels


# ------------------------------------------------------------------ saving
def save_estimator(est: Any, path: str | os.PathLike[str]) -> Path:
    """Write a fitted ``MLPClassifier``/``MLPRegressor`` to ``path`` (``.npz`` appended when missing).

    Raises
    ------
    sklearn.exceptions.NotFittedError
    ValueError
        A hyperparameter or a class label that the file cannot hold (labels must
        be numbers, booleans or strings).
    """
    check_is_fitted(est)
    rt = est._runtime()
    params: dict[str, Any] = {}
    for name, value in est.get_params(deep=False).items():
        if name == "random_state" and value is not None and not isinstance(value, Integral):
            warnings.warn("random_state is a generator, which the file cannot hold: saved as None",
                          UserWarning, stacklevel=3)
            value = None
        params[name] = _param_out(name, value)
    fitted: dict[str, Any] = {}
    for name, kind in _FITTED.items():
        if not hasattr(est, name):
            continue
        value = getattr(est, name)
        if value is None:
            fitted[name] = None
        elif kind == "int":
            fitted[name] = int(value)
        elif kind == "float?":
            fitted[name] = _float_out(value)
        else:
            fitted[name] = [_float_out(v) for v in value]
    record: dict[str, Any] = {
        "version": _VERSION, "class": type(est).__name__, "params": params, "fitted": fitted,
        "out_activation": est.out_activation_,
    }
    if hasattr(est, "feature_names_in_"):
        record["feature_names_in"] = [str(x) for x in est.feature_names_in_]
    if is_classifier(est):
        record["classes"] = _labels_out(est.classes_)
        record["y_type"] = est._label_binarizer.y_type_
    config, arrays = checkpoint_contents(rt.model, rt.optimizer)
    return write_model_file(path, {**config, "estimator": record}, arrays)


# ------------------------------------------------------------------ loading
def load_estimator(path: str | os.PathLike[str], classes: dict[str, type], backend: str | Backend = "cpu", *,
                   max_params: int = MAX_PARAMS) -> Any:
    """The fitted estimator saved in ``path`` (see :func:`save_estimator`), on ``backend``.

    Parameters
    ----------
    path : str or path
    classes : dict of str -> type
        The estimator classes a file may name.
    backend : str or Backend, default "cpu"
        The loaded estimator's ``backend`` parameter.
    max_params : int

    Raises
    ------
    ModelFileError
        The file, the network or the estimator record is damaged or crafted (every
        field is checked before the weights are read).
    """
    with ModelFile(path, max_params=max_params) as f:
        where = str(f.path)
        rec = f.record.get("estimator")
        if not isinstance(rec, dict) or not isinstance(rec.get("class"), str) or rec["class"] not in classes:
            raise ModelFileError(f"{where}: not an estimator file (estimator class {_get(rec, 'class')!r})")
        est = classes[rec["class"]]()
        widths = _network(f.record, where)
        _restore_params(est, rec, where, backend)
        _restore_fitted(est, rec, widths, f.record, where)
        flat = f.read_params()
        opt_state = f.read_optimizer_state()
        saved = (f.record.get("train_state") or {}).get("optimizer")
    coefs, intercepts, start = [], [], 0
    for a, b in zip(widths[:-1], widths[1:]):
        coefs.append(flat[start:start + a * b].reshape(a, b).copy())
        start += a * b
    for b in widths[1:]:
        intercepts.append(flat[start:start + b].copy())
        start += b
    est.coefs_, est.intercepts_ = coefs, intercepts
    est._dtype = f.record["dtype"]
    # The device runtime is built from this on first use (as after unpickling); the
    # best weights of early stopping are the weights themselves (a fit ends on them).
    est._rt_host = {"dtype": f.record["dtype"], "best": flat,
                    "optimizer": None if saved is None else {**saved, "state": opt_state}}
    return est


def _get(record: Any, key: str) -> Any:
    return record.get(key) if isinstance(record, dict) else None


def _network(record: dict[str, Any], where: str) -> list[int]:
    """Layer widths of an estimator's network: Dense layers only, one activation inside."""
    layers = record["layers"]
    if not all(l["type"] == "Dense" for l in layers):
        raise ModelFileError(f"{where}: an estimator's network has Dense layers only")
    return [layers[0]["n_in"]] + [l["n_out"] for l in layers]


def _restore_params(est: Any, rec: dict[str, Any], where: str, backend: Any) -> None:
    params = rec.get("params")
    names = set(est.get_params(deep=False))
    if not isinstance(params, dict) or set(params) != names:
        got = sorted(params) if isinstance(params, dict) else params
        raise ModelFileError(f"{where}: estimator params must be exactly {sorted(names)}, got {got}")
    values = {k: _param_in(k, v, where) for k, v in params.items()}
    values["backend"] = backend
    try:
        est.set_params(**values)
        est._validate_params()
    except (ValueError, TypeError) as exc:
        raise ModelFileError(f"{where}: bad estimator parameters: {exc}") from None


def _restore_fitted(est: Any, rec: dict[str, Any], widths: list[int], record: dict[str, Any], where: str) -> None:
    allowed = {"version", "class", "params", "fitted", "out_activation", "feature_names_in", "classes", "y_type"}
    if set(rec) - allowed or rec.get("version") != _VERSION:
        raise ModelFileError(f"{where}: estimator record of an unknown version or with unknown keys "
                             f"{sorted(set(rec) - allowed)}")
    fitted = rec.get("fitted")
    if not isinstance(fitted, dict) or set(fitted) - set(_FITTED):
        raise ModelFileError(f"{where}: estimator fitted must be an object of {sorted(_FITTED)}")
    for name, value in fitted.items():
        kind = _FITTED[name]
        if kind == "int":
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
                raise ModelFileError(f"{where}: estimator {name} must be a non-negative integer, got {value!r}")
        elif value is None:
            pass
        elif kind == "float?":
            value = _float_in(value, where, name)
        else:
            if not isinstance(value, list) or len(value) > _MAX_LIST:
                raise ModelFileError(f"{where}: estimator {name} must be a list of numbers")
            value = [_float_in(v, where, name) for v in value]
        setattr(est, name, value)
    hidden = list(est.hidden_layer_sizes) if np.iterable(est.hidden_layer_sizes) else [est.hidden_layer_sizes]
    expect = {"n_features_in_": widths[0], "n_outputs_": widths[-1], "n_layers_": len(widths)}
    for name, value in expect.items():
        if getattr(est, name, None) != value:
            raise ModelFileError(f"{where}: estimator {name} is {getattr(est, name, None)!r}, the network has {value}")
    if widths[1:-1] != hidden:
        raise ModelFileError(f"{where}: hidden_layer_sizes {hidden} differ from the network's {widths[1:-1]}")
    acts = [l["activation"] for l in record["layers"]]
    if any(a != est.activation for a in acts[:-1]):
        raise ModelFileError(f"{where}: the network's hidden activations {acts[:-1]} are not {est.activation!r}")
    est.out_activation_ = rec.get("out_activation")
    if acts[-1] != est.out_activation_:
        raise ModelFileError(f"{where}: out_activation_ {est.out_activation_!r} is not the network's {acts[-1]!r}")
    names = rec.get("feature_names_in")
    if names is not None:
        if not (isinstance(names, list) and len(names) == widths[0] and all(isinstance(n, str) for n in names)):
            raise ModelFileError(f"{where}: feature_names_in must be {widths[0]} strings")
        est.feature_names_in_ = np.array(names, dtype=object)
    if is_classifier(est):
        _restore_labels(est, rec, widths[-1], where)
    else:
        if "classes" in rec or "y_type" in rec:
            raise ModelFileError(f"{where}: a regressor has no classes")
        want = "exp" if est.loss == "poisson" else "identity"
        if est.out_activation_ != want:
            raise ModelFileError(f"{where}: a {est.loss} regressor has a {want!r} output, not {est.out_activation_!r}")


def _restore_labels(est: Any, rec: dict[str, Any], n_outputs: int, where: str) -> None:
    classes = _labels_in(rec.get("classes"), where)
    y_type = rec.get("y_type")
    if y_type not in _Y_TYPES:
        raise ModelFileError(f"{where}: estimator y_type must be one of {_Y_TYPES}, got {y_type!r}")
    n = len(classes)
    consistent = {
        "binary": 1 <= n <= 2 and n_outputs == 1 and est.out_activation_ == "logistic",
        "multiclass": n >= 2 and n_outputs == n and est.out_activation_ == "softmax",
        "multilabel-indicator": n == n_outputs and est.out_activation_ == "logistic",
    }[y_type]
    if not consistent:
        raise ModelFileError(f"{where}: {n} {y_type} classes do not fit a network of {n_outputs} "
                             f"{est.out_activation_} outputs")
    lb = LabelBinarizer()
    lb.classes_, lb.y_type_, lb.sparse_input_ = classes, y_type, False
    est._label_binarizer, est.classes_ = lb, classes
