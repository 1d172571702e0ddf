"""Input checks, run once at the boundary (``fit``, ``predict``) before any work.

Everything that would otherwise fail deep inside a matrix product, or worse, train
silently on garbage, is turned into a ``ValueError``/``TypeError`` that names the
argument and the fix.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["check_X", "check_sample_weight", "encode_targets"]


def _is_device_array(x: Any) -> bool:
    return not isinstance(x, np.ndarray) and hasattr(x, "__array_namespace__")


def check_X(X: Any, be: Any, n_features: int | None = None, name: str = "X") -> Any:
    """Validate a feature matrix; return it as a host array or a backend array.

    Parameters
    ----------
    X : array_like, shape (n_samples, n_features)
        NumPy array, nested lists, a DataFrame, or an array already on ``be``.
    n_features : int, optional
        The width the model expects.

    Raises
    ------
    ValueError
        Empty, not 2-D, NaN/inf, or the wrong number of features.
    TypeError
        Non-numeric data.
    """
    if _is_device_array(X):
        be.check(X)
        shape = tuple(X.shape)
        finite = bool(be.to_numpy(be.xp.all(be.xp.isfinite(X)))) if len(shape) == 2 else True
        dtype_kind = "f"
    else:
        if hasattr(X, "to_numpy"):  # pandas DataFrame / Series
            X = X.to_numpy()
        try:
            X = np.asarray(X)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name} must be a numeric 2-D array: {exc}") from None
        if X.dtype.kind not in "biuf":
            raise TypeError(f"{name} must be numeric, got dtype {X.dtype}")
        shape = X.shape
        dtype_kind = X.dtype.kind
        finite = True
    if len(shape) != 2:
        hint = " (reshape a single feature with X.reshape(-1, 1))" if len(shape) == 1 else ""
        raise ValueError(f"{name} must be 2-D (n_samples, n_features), got shape {shape}{hint}")
    if shape[0] == 0 or shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {shape}")
    if dtype_kind == "f" and not _is_device_array(X):
        finite = bool(np.isfinite(X).all())
    if not finite:
        raise ValueError(f"{name} contains NaN or infinity; clean or impute it before training")
    if n_features is not None and shape[1] != n_features:
        raise ValueError(f"{name} has {shape[1]} features, but the model expects {n_features}")
    return X


_CANONICAL = {"softmax": "cross_entropy", "logistic": "binary_cross_entropy", "exp": "poisson"}


def encode_targets(y: Any, output: str, n_outputs: int, n_samples: int, loss: str | None = None) -> np.ndarray:
    """Turn user targets into the (n, n_outputs) float matrix the loss compares with.

    Parameters
    ----------
    y : array_like
        ``softmax``: integer class labels 0..k-1, shape (n,), or one-hot / probability
        rows, shape (n, k). ``logistic``: 0/1 labels, shape (n,) for one output or
        (n, k) for multilabel. ``identity``/``exp``: real values, shape (n,) or (n, k).
    output : str
        Name of the model's output activation.
    n_outputs : int
        Width of the output layer.
    loss : str, optional
        The loss the targets are compared with (default: the output's canonical
        one); it sets their range: [0, 1] for the cross-entropies, ≥ 0 for Poisson,
        any real value for squared error.

    Returns
    -------
    ndarray, shape (n, n_outputs), float64
    """
    if _is_device_array(y):
        y = _to_host(y)
    if hasattr(y, "to_numpy"):
        y = y.to_numpy()
    y = np.asarray(y)
    if y.dtype.kind not in "biuf":
        raise TypeError(
            f"y must be numeric, got dtype {y.dtype}; encode string labels as integers "
            "(mlpx.MLPClassifier does this for you)"
        )
    if y.ndim not in (1, 2) or y.shape[0] == 0:
        raise ValueError(f"y must have shape (n,) or (n, k) with n > 0, got {y.shape}")
    if y.shape[0] != n_samples:
        raise ValueError(f"X and y have different lengths: {n_samples} and {y.shape[0]}")
    if not np.isfinite(y).all():
        raise ValueError("y contains NaN or infinity")

    if output == "softmax" and y.ndim == 1:
        labels = y
        if y.dtype.kind == "f":
            if not np.all(labels == np.round(labels)):
                raise ValueError("class labels for a softmax output must be integers 0..k-1")
            labels = labels.astype(np.int64)
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= n_outputs:
            raise ValueError(
                f"labels range over {lo}..{hi}, but the softmax output layer has {n_outputs} "
                f"units (classes 0..{n_outputs - 1}); widen the last layer or re-encode the labels"
            )
        Y = np.zeros((len(labels), n_outputs))
        Y[np.arange(len(labels)), labels] = 1.0
        return Y

    Y = y.reshape(-1, 1) if y.ndim == 1 else y
    if Y.shape[1] != n_outputs:
        raise ValueError(
            f"y has {Y.shape[1]} column(s) but the output layer has {n_outputs} unit(s)"
        )
    Y = Y.astype(np.float64, copy=False)
    kind = loss if loss is not None else _CANONICAL.get(output)
    if kind in ("cross_entropy", "binary_cross_entropy") and (Y.min() < 0 or Y.max() > 1):
        raise ValueError(
            f"targets for {kind} on a {output} output must lie in [0, 1] (labels or probabilities), "
            f"got values in [{Y.min()}, {Y.max()}]"
        )
    if kind == "poisson" and Y.min() < 0:
        raise ValueError(f"targets for a Poisson loss (on a {output} output) must be non-negative")
    return Y


def _to_host(y: Any) -> np.ndarray:
    try:
        return np.from_dlpack(y)
    except Exception:
        import cupy  # only reached for CuPy arrays, which do not export to host DLPack

        return cupy.asnumpy(y)


def check_sample_weight(sample_weight: Any, n_samples: int) -> np.ndarray | None:
    """Validate sample weights: shape (n,), finite, non-negative, not all zero."""
    if sample_weight is None:
        return None
    w = np.asarray(sample_weight, dtype=np.float64)
    if w.ndim == 0:
        w = np.full(n_samples, float(w))
    if w.shape != (n_samples,):
        raise ValueError(f"sample_weight must have shape ({n_samples},), got {w.shape}")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError("sample_weight must be finite and non-negative")
    if w.sum() <= 0:
        raise ValueError("sample_weight sums to zero: nothing to train on")
    return w
