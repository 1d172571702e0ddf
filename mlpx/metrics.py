"""Held-out scores from sufficient statistics, on the device and across ranks.

One scorer serves ``Sequential.evaluate``, the validation logs of ``fit``, the
estimators' ``score`` and their early stopping, on every backend and under
``comm=``. It sums per chunk, on the device, the statistics a score needs:

==============  ================================================================
statistic       meaning
==============  ================================================================
loss            ``Σ w_i l_i`` (the data term of the loss)
weight          ``Σ w_i``
correct         ``Σ w_i [prediction_i = target_i]`` (classifiers)
nonfinite       number of non-finite outputs (R² is NaN then, as in scikit-learn)
y_sum           ``Σ w_i y_i`` per output (regressors)
ss_res          ``Σ w_i (y_i − ŷ_i)²`` per output
==============  ================================================================

Sums add across chunks and across ranks, so one all-reduce gives the scores of
all ranks' rows together. R² needs one more pass, after the global weighted mean
``ȳ = Σ w y / Σ w`` is known: ``ss_tot = Σ w (y − ȳ)²``, as scikit-learn's
``r2_score`` computes it (two passes, not the cancelling one-pass formula).

Predictions follow scikit-learn's ``predict``: the arg-max of the softmax
probabilities, or each logistic probability ``> 0.5``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from mlpx.backends import kernel
from mlpx.backends.jit import lazy_njit

__all__ = ["PREDICT_CHUNK", "Chunk", "arg_max", "correct_count", "hit_vector", "holdout_scores", "iter_chunks", "r2_from_sums",
           "row_hit"]

Array = Any
#: Rows per forward pass when predicting or scoring: bounds the workspaces' memory.
PREDICT_CHUNK = 8192
Chunk = tuple[Array, Array, Array | None]  # X (n, f), Y (n, k), w (n,) or None, on the backend


@kernel
def correct_count(xp: Any, Z: Array, Y: Array, output: str, threshold: float = 0.0) -> Array:
    """Number of rows of ``Z`` (n, k) whose prediction matches targets ``Y`` (n, k).

    softmax: arg-max agrees; logistic: every label's ``z > threshold`` agrees with
    ``y > 0.5`` (exact match, as scikit-learn's multilabel accuracy). ``Z`` holds
    logits (threshold 0) or probabilities (threshold 0.5). Returns a 0-d array.
    """
    if output == "softmax":
        hit = xp.argmax(Z, axis=1) == xp.argmax(Y, axis=1)
    else:
        hit = xp.all((Z > threshold) == (Y > 0.5), axis=1)
    return xp.sum(xp.astype(hit, Z.dtype))


@lazy_njit
def arg_max(Z: np.ndarray, i: int) -> int:  # pragma: no cover - compiled
    """``numpy.argmax`` of row ``i`` of ``Z`` (n, k): the first maximum, or the first
    NaN (NumPy and CuPy count NaN as the largest), so a diverged model's count is
    the same on every backend."""
    best = 0
    for j in range(Z.shape[1]):
        z = Z[i, j]
        if z != z:
            return j
        if z > Z[i, best]:
            best = j
    return best


@lazy_njit
def row_hit(Z: np.ndarray, Y: np.ndarray, i: int, softmax: bool, threshold: float) -> bool:  # pragma: no cover
    """Is row ``i`` of ``Z`` (n, k) predicted right, as :func:`correct_count` decides?"""
    if softmax:
        return bool(arg_max(Z, i) == arg_max(Y, i))
    for j in range(Z.shape[1]):
        if (Z[i, j] > threshold) != (Y[i, j] > 0.5):
            return False
    return True


@lazy_njit
def _correct_count_loop(Z: np.ndarray, Y: np.ndarray, softmax: bool, threshold: float) -> int:  # pragma: no cover
    hits = 0
    for i in range(Z.shape[0]):
        hits += row_hit(Z, Y, i, softmax, threshold)
    return hits


@correct_count.register("numba")
def _correct_count_numba(xp: Any, Z: Array, Y: Array, output: str, threshold: float = 0.0) -> Array:
    return Z.dtype.type(_correct_count_loop(Z, Y, output == "softmax", Z.dtype.type(threshold)))


@kernel
def hit_vector(xp: Any, P: Array, Y: Array, output: str) -> Array:
    """Per-row 1.0/0.0: does the prediction from probabilities ``P`` (n, k) match ``Y``?"""
    if output == "softmax":
        hit = xp.argmax(P, axis=1) == xp.argmax(Y, axis=1)
    else:
        hit = xp.all((P > 0.5) == (Y > 0.5), axis=1)
    return xp.astype(hit, P.dtype)


def r2_from_sums(ss_res: np.ndarray, ss_tot: np.ndarray) -> float:
    """scikit-learn's ``r2_score`` (uniform average, ``force_finite=True``) from its sums.

    Parameters
    ----------
    ss_res, ss_tot : ndarray, shape (n_outputs,)
        ``Σ w (y − ŷ)²`` and ``Σ w (y − ȳ_w)²`` per output.
    """
    ss_res, ss_tot = np.asarray(ss_res, dtype=np.float64), np.asarray(ss_tot, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(ss_tot > 0, 1.0 - ss_res / np.where(ss_tot > 0, ss_tot, 1.0),
                      np.where(ss_res > 0, 0.0, 1.0))
    return float(np.mean(r2))


def holdout_scores(
    model: Any,
    chunks: Callable[[], Iterable[Chunk]],
    reducer: Any,
    loss: Any,
    *,
    need_loss: bool = True,
) -> dict[str, float]:
    """Loss and score of a held-out set, over every rank's rows (collective).

    Parameters
    ----------
    model : Sequential
        Computes the outputs (:meth:`~mlpx.model.Sequential.infer`); the caller
        holds its parameter lock for reading, so all chunks see the same weights.
    chunks : callable
        Returns an iterable of ``(X, Y, w)`` chunks on the backend: X in the
        compute dtype, Y and w in the model dtype (w None for unit weights).
        Called twice for regressors (the second pass needs Y and w only). A rank
        without held-out rows returns no chunks but still takes part.
    reducer : Reducer
        Sums the statistics over ranks (:mod:`mlpx.distributed`).
    loss : OutputLoss
        The model's loss on its output (:meth:`~mlpx.model.Sequential.resolve_loss`).

    Returns
    -------
    dict
        ``loss`` (``Σ w l / Σ w``, NaN when there are no rows), ``weight``
        (``Σ w``), and ``accuracy`` (softmax / logistic outputs) or ``r2``;
        a score is NaN when any output is not finite. ``loss`` is left out with
        ``need_loss=False`` (the loss is then not computed).
    """
    be = model.backend
    out = model.output.name
    classifier = out in ("softmax", "logistic")
    k = model.n_outputs_
    xp = be.xp
    wide = _sum_dtype(be, model.dtype)
    f64 = be.dtype(wide)
    loss_sum: Any = 0.0
    weight: Any = 0.0
    correct: Any = 0.0
    nonfinite: Any = 0.0
    y_sum: Any = 0.0
    ss_res: Any = 0.0
    for X, Y, w in chunks():
        n = X.shape[0]
        Z, P = model.infer(X)
        if need_loss:
            loss_sum = loss_sum + loss.value(be, Z, P, Y, w, 1.0)
        weight = weight + (float(n) if w is None else xp.sum(w))
        if classifier:
            # Labels as scikit-learn's predict gives them, even from non-finite outputs.
            hits = be.run(hit_vector, P, Y, out)
            correct = correct + (xp.sum(hits) if w is None else xp.sum(hits * w))
        else:
            # Regression sums in float64 whatever the model dtype (where the backend has
            # float64): R² cancels digits.
            P64, Y64 = be.astype(P, wide), be.astype(Y, wide)
            W = 1.0 if w is None else xp.reshape(be.astype(w, wide), (n, 1))
            nonfinite = nonfinite + xp.sum(xp.astype(~xp.isfinite(P64), f64))
            R = Y64 - P64
            y_sum = y_sum + xp.sum(W * Y64, axis=0)
            ss_res = ss_res + xp.sum(W * (R * R), axis=0)
    # One read back of everything, then one all-reduce of a short host vector.
    local = [_host(be, loss_sum, 1), _host(be, weight, 1)]
    local += [_host(be, correct, 1)] if classifier else [_host(be, nonfinite, 1), _host(be, y_sum, k), _host(be, ss_res, k)]
    sums = np.asarray(reducer.allreduce_sum(np.concatenate(local).tolist()))
    total_loss, total_w = sums[0], sums[1]
    result: dict[str, float] = {"weight": float(total_w)}
    if need_loss:
        result["loss"] = float(total_loss / total_w) if total_w > 0 else math.nan
    if classifier:
        result["accuracy"] = float(sums[2] / total_w) if total_w > 0 else math.nan
        return result
    bad, g_y_sum, g_ss_res = sums[2], sums[3 : 3 + k], sums[3 + k :]
    mean = g_y_sum / total_w if total_w > 0 else np.zeros(k)
    dev_mean = be.asarray(mean, dtype=wide)
    ss_tot_local: Any = 0.0
    for _X, Y, w in chunks():
        D = be.astype(Y, wide) - dev_mean
        W = 1.0 if w is None else xp.reshape(be.astype(w, wide), (Y.shape[0], 1))
        ss_tot_local = ss_tot_local + xp.sum(W * (D * D), axis=0)
    ss_tot = np.asarray(reducer.allreduce_sum(_host(be, ss_tot_local, k).tolist()))
    result["r2"] = r2_from_sums(g_ss_res, ss_tot) if total_w > 0 and bad == 0 else math.nan
    return result


def _sum_dtype(be: Any, dtype: str) -> str:
    """float64, or the model's dtype on a backend without float64 (JAX without x64)."""
    try:
        be.dtype("float64")
    except TypeError:
        return dtype
    return "float64"


def _host(be: Any, value: Any, size: int) -> np.ndarray:
    """A float64 host vector of ``size`` from a device sum (or the 0.0 it started as)."""
    if isinstance(value, float):
        return np.full(size, value)
    return np.asarray(be.to_numpy(value), dtype=np.float64).reshape(size)


def iter_chunks(n: int, chunk: int) -> Iterator[tuple[int, int]]:
    """``(a, b)`` bounds of consecutive row chunks of at most ``chunk`` rows."""
    for a in range(0, n, chunk):
        yield a, min(a + chunk, n)
