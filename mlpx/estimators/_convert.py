"""Conversion between mlpx's estimators and scikit-learn's ``neural_network`` ones.

Both sides have the same constructor parameters (mlpx adds ``backend`` and
``dtype``) and the same fitted attributes, and mlpx's flat parameter layout is
scikit-learn's packed ``coefs_ + intercepts_``, so conversion copies the
hyperparameters, the fitted attributes, the label binarizer and the optimizer's
state, so a ``partial_fit`` after conversion continues as it would have on the
other side. scikit-learn's optimizer keeps one array per parameter (``ms``/``vs``
for Adam, ``velocities`` for SGD) in ``coefs_ + intercepts_`` order; mlpx keeps one
flat buffer in that same order (:meth:`mlpx.optimizers.Optimizer.state_dict`).

Private to :mod:`mlpx.estimators`; reached through ``est.to_sklearn()`` and
``MLPClassifier.from_sklearn(est)`` / ``MLPRegressor.from_sklearn(est)``. Besides
the public fitted attributes, ``from_sklearn`` sets the private state the mlpx
estimators read: ``_label_binarizer``, ``_no_improvement_count``, ``_dtype`` and
the host record ``_rt_host`` their device runtime is rebuilt from (tests in
``tests/test_sklearn_convert.py`` fail if these stop meaning what they mean).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
from sklearn.base import is_classifier
from sklearn.neural_network import MLPClassifier as SkMLPClassifier
from sklearn.neural_network import MLPRegressor as SkMLPRegressor
from sklearn.utils.validation import check_is_fitted

__all__ = ["from_sklearn", "to_sklearn"]

# Fitted attributes both sides keep (those a fit did not set, e.g. loss_curve_ after
# L-BFGS or feature_names_in_ without a DataFrame, are skipped).
_FITTED = (
    "n_features_in_", "feature_names_in_", "n_outputs_", "n_layers_", "out_activation_",
    "n_iter_", "t_", "loss_", "loss_curve_", "best_loss_", "validation_scores_",
    "best_validation_score_", "classes_",
)
# Private state read by predict (the binarizer) and by a warm-started fit's stopping rule.
_STATE = ("_label_binarizer", "_no_improvement_count")


def _copy_fitted(src: Any, dst: Any) -> None:
    for name in _FITTED + _STATE:
        if hasattr(src, name):
            setattr(dst, name, copy.deepcopy(getattr(src, name)))
    dst.coefs_ = [np.array(c, copy=True) for c in src.coefs_]
    dst.intercepts_ = [np.array(b, copy=True) for b in src.intercepts_]


def _params_for(target: Any, src: Any) -> dict[str, Any]:
    """``src``'s hyperparameters that ``target`` (an unfitted instance) also takes."""
    names = target.get_params(deep=False)
    return {k: v for k, v in src.get_params(deep=False).items() if k in names}


def to_sklearn(est: Any) -> Any:
    """A fitted ``sklearn.neural_network.MLPClassifier``/``MLPRegressor`` equal to ``est``.

    Parameters
    ----------
    est : mlpx.MLPClassifier or mlpx.MLPRegressor, fitted

    Returns
    -------
    sklearn.neural_network.MLPClassifier or MLPRegressor
        Same hyperparameters (less ``backend`` and ``dtype``), ``coefs_`` and
        ``intercepts_`` (host copies in ``est``'s dtype), ``classes_`` and label
        binarizer, ``n_iter_``, ``t_``, ``loss_``, ``loss_curve_``,
        ``out_activation_`` and the other fitted attributes; its predictions equal
        ``est``'s to rounding (float64: within 1e-12).

    Raises
    ------
    sklearn.exceptions.NotFittedError
    """
    check_is_fitted(est)
    out = (SkMLPClassifier if is_classifier(est) else SkMLPRegressor)()
    out.set_params(**_params_for(out, est))
    _copy_fitted(est, out)
    # scikit-learn's early stopping restores these at the end of a warm-started fit;
    # mlpx ends a fit on its best weights, so they are the weights themselves.
    out._best_coefs = [c.copy() for c in out.coefs_]
    out._best_intercepts = [b.copy() for b in out.intercepts_]
    state = _mlpx_optimizer_state(est)
    if state is not None and est.solver in ("sgd", "adam"):
        out._optimizer = _sklearn_optimizer(out, state)
    return out


def _mlpx_optimizer_state(est: Any) -> dict[str, Any] | None:
    rt = getattr(est, "_rt", None)
    if rt is not None and rt.optimizer is not None:
        return rt.optimizer.state_dict()
    host = getattr(est, "_rt_host", None) or {}
    return host.get("optimizer")


def _split(flat: np.ndarray, like: list[np.ndarray]) -> list[np.ndarray]:
    """A flat buffer (weights, then biases) as arrays shaped like ``like``."""
    out, start = [], 0
    for a in like:
        out.append(np.asarray(flat[start:start + a.size], dtype=a.dtype).reshape(a.shape).copy())
        start += a.size
    return out


def _sklearn_optimizer(est: Any, state: dict[str, Any]) -> Any:
    """scikit-learn's optimizer object holding mlpx's optimizer ``state``."""
    from sklearn.neural_network._stochastic_optimizers import AdamOptimizer, SGDOptimizer

    params = est.coefs_ + est.intercepts_
    arrays = state.get("state", {})
    if state["optimizer"] == "Adam":
        opt = AdamOptimizer(params, est.learning_rate_init, est.beta_1, est.beta_2, est.epsilon)
        opt.t = int(state["t"])
        if arrays:
            opt.ms, opt.vs = _split(arrays["m"], params), _split(arrays["v"], params)
        return opt
    opt = SGDOptimizer(params, est.learning_rate_init, est.learning_rate, est.momentum,
                       est.nesterovs_momentum, est.power_t)
    opt.learning_rate = float(state["lr"])
    if arrays:
        opt.velocities = _split(arrays["velocity"], params)
    return opt


def _mlpx_state(est: Any) -> dict[str, Any] | None:
    """mlpx's ``state_dict()`` of the fitted scikit-learn ``est``'s optimizer, if any."""
    opt = getattr(est, "_optimizer", None)
    if opt is None or est.solver not in ("sgd", "adam"):
        return None
    flat = lambda arrays: np.concatenate([np.ravel(a) for a in arrays])  # noqa: E731
    if est.solver == "adam":
        return {
            "optimizer": "Adam",
            "config": {"lr": float(est.learning_rate_init), "schedule": None, "beta_1": float(est.beta_1),
                       "beta_2": float(est.beta_2), "epsilon": float(est.epsilon)},
            "t": int(opt.t), "lr": float(est.learning_rate_init), "schedule": {},
            "state": {"m": flat(opt.ms), "v": flat(opt.vs)},
        }
    schedule = {"constant": None, "invscaling": {"name": "invscaling", "power_t": float(est.power_t)},
                "adaptive": {"name": "adaptive", "factor": 5.0, "min_lr": 1e-6}}[est.learning_rate]
    lr = float(opt.learning_rate)
    return {
        "optimizer": "SGD",
        "config": {"lr": float(est.learning_rate_init), "schedule": schedule,
                   "momentum": float(est.momentum), "nesterov": bool(est.nesterovs_momentum)},
        "t": 0, "lr": lr,
        "schedule": {"lr": lr} if est.learning_rate == "adaptive" and lr != est.learning_rate_init else {},
        "state": {"velocity": flat(opt.velocities)},
    }


def from_sklearn(cls: type, est: Any, backend: Any = "cpu") -> Any:
    """An mlpx estimator of class ``cls`` equal to the fitted scikit-learn ``est``.

    Parameters
    ----------
    cls : mlpx.MLPClassifier or mlpx.MLPRegressor
    est : sklearn.neural_network.MLPClassifier or MLPRegressor, fitted
    backend : str or Backend, default "cpu"
        The new estimator's ``backend`` (where it predicts and trains).

    Returns
    -------
    cls instance
        Fitted: ``est``'s hyperparameters and fitted attributes; it computes in the
        dtype of ``est.coefs_`` and predicts what ``est`` predicts.

    Raises
    ------
    TypeError
        ``est`` is not a scikit-learn MLP of the matching kind (classifier/regressor).
    sklearn.exceptions.NotFittedError
    """
    out = cls(backend=backend)
    want = SkMLPClassifier if is_classifier(out) else SkMLPRegressor
    if not isinstance(est, want):
        raise TypeError(
            f"{cls.__name__}.from_sklearn takes a fitted sklearn.neural_network."
            f"{want.__name__}, got {type(est).__module__}.{type(est).__name__}"
        )
    check_is_fitted(est)
    dtype = np.asarray(est.coefs_[0]).dtype
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"coefs_ must be float32 or float64, got {dtype}")
    out.set_params(**_params_for(out, est))
    _copy_fitted(est, out)
    out._dtype = dtype.name  # the compute dtype the runtime is built in
    # The device runtime is rebuilt from this host record on first use. Its "best"
    # buffer (early stopping's best weights) must exist for a warm-started fit; the
    # weights are scikit-learn's best ones (it ends an early-stopped fit on them).
    flat = np.concatenate([np.ravel(a) for a in out.coefs_ + out.intercepts_])
    out._rt_host = {"dtype": dtype.name, "optimizer": _mlpx_state(est), "best": flat}
    return out
