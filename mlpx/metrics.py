"""Metrics computed alongside training, on the device, and their host versions."""

from __future__ import annotations

from typing import Any

import numpy as np

from mlpx.backends import kernel
from mlpx.backends.jit import lazy_njit

__all__ = ["correct_count", "r2_score"]

Array = Any


@kernel
def correct_count(xp: Any, Z: Array, Y: Array, output: str) -> Array:
    """Number of rows of logits ``Z`` (n, k) whose prediction matches targets ``Y``.

    softmax: arg-max agrees; logistic: every label's ``z > 0`` agrees with ``y > 0.5``
    (exact match, as scikit-learn's multilabel accuracy). Returns a 0-d array.
    """
    if output == "softmax":
        hit = xp.argmax(Z, axis=1) == xp.argmax(Y, axis=1)
    else:
        hit = xp.all((Z > 0) == (Y > 0.5), axis=1)
    return xp.sum(xp.astype(hit, Z.dtype))


@lazy_njit
def _correct_count_loop(Z, Y, softmax):  # pragma: no cover - compiled
    n, k = Z.shape
    hits = 0
    for i in range(n):
        if softmax:
            zi = 0
            yi = 0
            for j in range(1, k):
                if Z[i, j] > Z[i, zi]:
                    zi = j
                if Y[i, j] > Y[i, yi]:
                    yi = j
            hits += zi == yi
        else:
            ok = True
            for j in range(k):
                if (Z[i, j] > 0) != (Y[i, j] > 0.5):
                    ok = False
            hits += ok
    return hits


@correct_count.register("numba")
def _correct_count_numba(xp: Any, Z: Array, Y: Array, output: str) -> Array:
    return Z.dtype.type(_correct_count_loop(Z, Y, output == "softmax"))


def r2_score(y_true: np.ndarray, y_pred: np.ndarray, sample_weight: np.ndarray | None = None) -> float:
    """Coefficient of determination, averaged uniformly over outputs (host arrays)."""
    y_true = y_true.reshape(len(y_true), -1)
    y_pred = y_pred.reshape(len(y_pred), -1)
    w = np.ones(len(y_true)) if sample_weight is None else sample_weight
    mean = np.average(y_true, axis=0, weights=w)
    ss_res = (w[:, None] * (y_true - y_pred) ** 2).sum(axis=0)
    ss_tot = (w[:, None] * (y_true - mean) ** 2).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(ss_tot > 0, 1 - ss_res / ss_tot, np.where(ss_res > 0, 0.0, 1.0))
    return float(np.mean(r2))
