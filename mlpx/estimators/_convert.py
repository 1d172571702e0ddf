"""Conversion between mlpx's estimators and scikit-learn's ``neural_network`` ones.

Both sides have the same constructor parameters (mlpx adds ``backend`` and
``dtype``) and the same fitted attributes, and mlpx's flat parameter layout is
scikit-learn's packed ``coefs_ + intercepts_``, so conversion copies the
hyperparameters, the fitted attributes and the label binarizer. Nothing of the
optimizer is carried yet: a ``partial_fit`` after conversion starts a fresh Adam /
SGD state (``fit`` with ``warm_start=True`` starts one on both sides anyway).

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
    return out


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
    out._rt_host = {"dtype": dtype.name, "optimizer": None, "best": flat}
    return out
