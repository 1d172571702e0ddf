"""Held-out scores of every member from sufficient statistics, on the device and across ranks.

One scorer serves ``Sequential.evaluate``, the validation logs of ``fit`` (a single
network's and a stack's, each member on the rows it holds out), the estimators'
``score`` and their early stopping, on every backend and under ``comm=``. It sums
per chunk and per member, on the device, the statistics a score needs:

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
from mlpx.backends.cuda import lazy_elementwise
from mlpx.backends.jit import lazy_njit

__all__ = ["PREDICT_CHUNK", "Chunk", "arg_max", "correct_count", "hit_rows", "hit_vector", "holdout_scores",
           "iter_chunks", "r2_from_sums", "row_hit"]

Array = Any
#: Rows per forward pass when predicting or scoring: bounds the workspaces' memory.
PREDICT_CHUNK = 8192
#: X (m, f) or (K, m, f), Y, w (or None) and valid (or None), on the backend; see holdout_scores.
Chunk = tuple[Array, Array, Array | None, Array | None]


@kernel
def correct_count(xp: Any, Z: Array, Y: Array, w: Array | None, output: str) -> Array:
    """Each member's rows of positive weight whose prediction matches its targets.

    Parameters
    ----------
    Z, Y : arrays, shape (K, n, c)
        Logits and targets.
    w : array, shape (K, n), or None
        Row weights (a row of weight 0, padding, is not counted); None: every row.
    output : str
        softmax: the arg-max agrees; logistic: every label's ``z > 0`` agrees with
        ``y > 0.5`` (exact match, as scikit-learn's multilabel accuracy).

    Returns
    -------
    array, shape (K,)
    """
    if output == "softmax":
        hit = xp.argmax(Z, axis=-1) == xp.argmax(Y, axis=-1)
    else:
        hit = xp.all((Z > 0) == (Y > 0.5), axis=-1)
    hit = xp.astype(hit, Z.dtype)
    return xp.sum(hit if w is None else hit * xp.astype(w > 0, Z.dtype), axis=1)


@correct_count.register("numpy")
def _correct_count_np(xp: Any, Z: Array, Y: Array, w: Array | None, output: str) -> Array:
    if output == "softmax":
        hit = Z.argmax(axis=-1) == Y.argmax(axis=-1)
    else:
        hit = ((Z > 0) == (Y > 0.5)).all(axis=-1)
    if w is not None:
        hit &= w > 0
    return hit.sum(axis=1, dtype=Z.dtype)


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
    """Is row ``i`` of ``Z`` (n, k) predicted right, as :func:`correct_count` decides
    (``threshold``: 0 for logits, 0.5 for probabilities)?"""
    if softmax:
        return bool(arg_max(Z, i) == arg_max(Y, i))
    for j in range(Z.shape[1]):
        if (Z[i, j] > threshold) != (Y[i, j] > 0.5):
            return False
    return True


@lazy_njit
def hit_rows(Z: np.ndarray, Y: np.ndarray, w: np.ndarray, softmax: bool) -> int:  # pragma: no cover - compiled
    """Rows of ``Z`` (n, c) with positive weight ``w`` (n,) predicted right, as
    :func:`correct_count` counts them.

    An integer count: a float sum started from ``Z[0, 0] * 0`` would be NaN once the
    member's outputs overflowed."""
    hits = 0
    for i in range(Z.shape[0]):
        if w[i] > 0 and row_hit(Z, Y, i, softmax, 0):
            hits += 1
    return hits


@lazy_njit
def _correct_count_loop(Z: np.ndarray, Y: np.ndarray, w: np.ndarray, softmax: bool,
                        out: np.ndarray) -> None:  # pragma: no cover - compiled
    for k in range(Z.shape[0]):
        out[k] = hit_rows(Z[k], Y[k], w[k], softmax)


@correct_count.register("numba")
def _correct_count_numba(xp: Any, Z: Array, Y: Array, w: Array | None, output: str) -> Array:
    if not (Z.flags.c_contiguous and Y.flags.c_contiguous) or Z.dtype.itemsize < 4:
        return correct_count.generic(xp, Z, Y, w, output)
    K, n = Z.shape[:2]
    out = np.empty(K, dtype=Z.dtype)
    _correct_count_loop(Z, Y, np.ones((K, n), Z.dtype) if w is None else np.ascontiguousarray(w),
                        output == "softmax", out)
    return out


# CUDA: one thread per row of the (K·n, c) logits decides the row's hit (NumPy's
# arg-max rule: the first maximum, or the first NaN), then one reduction per member.
_ARG_MAX_PREAMBLE = """
template <typename T, typename R> __device__ int mlpx_arg_max(const R& X, ptrdiff_t r, int c) {
    int best = 0;
    for (int j = 1; j < c; ++j) {
        const T m = X[r + best], x = X[r + j];
        if (m != m) break;
        if (x != x || x > m) best = j;
    }
    return best;
}
"""
_hit_rows_cuda = lazy_elementwise(
    "raw T Z, raw T Y, raw T W, int32 c, bool has_w, bool softmax",
    "T hit",
    """
    const ptrdiff_t r = (ptrdiff_t)i * c;
    bool ok = true;
    if (softmax) {
        ok = mlpx_arg_max<T>(Z, r, c) == mlpx_arg_max<T>(Y, r, c);
    } else {
        for (int j = 0; j < c; ++j) ok = ok && ((Z[r + j] > (T)0) == (Y[r + j] > (T)0.5));
    }
    hit = (ok && (!has_w || W[i] > (T)0)) ? (T)1 : (T)0;
    """,
    "mlpx_hit_rows",
    preamble=_ARG_MAX_PREAMBLE,
    scalars=("c", "has_w", "softmax"),
    # Z, Y: (K, n, c) C-contiguous; W: the (K, n) row weights, or Z again without any.
    layouts=[{"Z": (3, True), "Y": (3, True), "W": (3, True)},
             {"Z": (3, True), "Y": (3, True), "W": (2, True)}],
)


@correct_count.register("cupy")
def _correct_count_cupy(xp: Any, Z: Array, Y: Array, w: Array | None, output: str) -> Array:
    K, n, c = (int(d) for d in Z.shape)
    Z, Y = xp.ascontiguousarray(Z), xp.ascontiguousarray(Y)
    hits = xp.empty((K, n), dtype=Z.dtype)
    _hit_rows_cuda(Z, Y, Z if w is None else xp.ascontiguousarray(w), c, w is not None, output == "softmax", hits)
    return xp.sum(hits, axis=1)


@kernel
def hit_vector(xp: Any, P: Array, Y: Array, output: str) -> Array:
    """Per-row 1.0/0.0 (..., n): does the prediction from probabilities ``P`` (..., n, c)
    match ``Y``?"""
    if output == "softmax":
        hit = xp.argmax(P, axis=-1) == xp.argmax(Y, axis=-1)
    else:
        hit = xp.all((P > 0.5) == (Y > 0.5), axis=-1)
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
) -> dict[str, np.ndarray]:
    """Each member's loss and score on held-out rows, over every rank's rows (collective).

    Parameters
    ----------
    model : Network
        Computes the outputs of its K members (:meth:`~mlpx.network.Network.infer_members`);
        the caller holds its parameter lock for reading, so all chunks see the same
        weights.
    chunks : callable
        Returns an iterable of ``(X, Y, w, valid)`` chunks on the backend: X in the
        compute dtype, shape (m, f) for rows every member sees or (K, m, f) for each
        member's own; Y (m, c) or (K, m, c) and w (m,) or (K, m) (None: unit weights)
        in the model dtype; ``valid`` (K, m) marks the real rows of members' own
        rows (None: all). Called twice for regressors (the second pass needs Y and w
        only). A rank without held-out rows returns no chunks but still takes part.
    reducer : Reducer
        Sums the statistics over ranks (:mod:`mlpx.distributed`).
    loss : OutputLoss
        The model's loss on its output (:meth:`~mlpx.network.Network.resolve_loss`).
    need_loss : bool
        Compute the loss (False leaves it out).

    Returns
    -------
    dict of str -> ndarray, shape (K,)
        ``loss`` (``Σ w l / Σ w``, NaN where there are no rows), ``weight``
        (``Σ w``), and ``accuracy`` (softmax / logistic outputs) or ``r2``; a
        member's score is NaN when any of its outputs is not finite.
    """
    be = model.backend
    out = model.output.name
    classifier = out in ("softmax", "logistic")
    K, c = model.n_members, model.n_outputs_
    xp = be.xp
    wide = _sum_dtype(be, model.dtype)
    f64 = be.dtype(wide)
    loss_sum: Any = 0.0
    weight: Any = 0.0
    correct: Any = 0.0
    nonfinite: Any = 0.0
    y_sum: Any = 0.0
    ss_res: Any = 0.0
    ones = None
    for X, Y, w, valid in chunks():
        Z, P = model.infer_members(X)
        m = int(Z.shape[1])
        Yk = Y if len(Y.shape) == 3 else xp.broadcast_to(Y, (K, m, c))
        wk = None if w is None else (w if len(w.shape) == 2 else xp.broadcast_to(w, (K, m)))
        if need_loss:
            if ones is None:
                ones = be.asarray(np.ones(K), dtype=model.dtype)
            loss_sum = loss_sum + loss.value(be, Z, P, Yk, wk, ones)
        weight = weight + (float(m) if wk is None else xp.sum(wk, axis=1))
        if classifier:
            # Labels as scikit-learn's predict gives them, even from non-finite outputs.
            hits = be.run(hit_vector, P, Yk, out)
            correct = correct + xp.sum(hits if wk is None else hits * wk, axis=1)
        else:
            # Regression sums in float64 whatever the model dtype (where the backend has
            # float64): R² cancels digits.
            P64, Y64 = be.astype(P, wide), be.astype(Yk, wide)
            W = 1.0 if wk is None else xp.reshape(be.astype(wk, wide), (K, m, 1))
            bad = xp.astype(~xp.isfinite(P64), f64)
            if valid is not None:
                bad = bad * xp.reshape(be.astype(valid, wide), (K, m, 1))
            nonfinite = nonfinite + xp.sum(xp.sum(bad, axis=2), axis=1)
            R = Y64 - P64
            y_sum = y_sum + xp.sum(W * Y64, axis=1)
            ss_res = ss_res + xp.sum(W * (R * R), axis=1)
    # One read back of everything, then one all-reduce of a short host vector.
    local = [_host(be, loss_sum, K), _host(be, weight, K)]
    local += [_host(be, correct, K)] if classifier else [_host(be, nonfinite, K), _host(be, y_sum, K * c),
                                                         _host(be, ss_res, K * c)]
    sums = np.asarray(reducer.allreduce_sum(np.concatenate(local).tolist()))
    total_loss, total_w = sums[:K], sums[K : 2 * K]
    has = total_w > 0
    safe_w = np.where(has, total_w, 1.0)
    result: dict[str, np.ndarray] = {"weight": total_w}
    if need_loss:
        result["loss"] = np.where(has, total_loss / safe_w, math.nan)
    if classifier:
        result["accuracy"] = np.where(has, sums[2 * K : 3 * K] / safe_w, math.nan)
        return result
    bad, g_y_sum = sums[2 * K : 3 * K], sums[3 * K : 3 * K + K * c].reshape(K, c)
    g_ss_res = sums[3 * K + K * c :].reshape(K, c)
    mean = g_y_sum / safe_w[:, None]
    dev_mean = xp.reshape(be.asarray(mean, dtype=wide), (K, 1, c))
    ss_tot_local: Any = 0.0
    for _X, Y, w, _valid in chunks():
        m = int(Y.shape[-2])
        Yk = Y if len(Y.shape) == 3 else xp.broadcast_to(Y, (K, m, c))
        D = be.astype(Yk, wide) - dev_mean
        W = 1.0 if w is None else xp.reshape(be.astype(w if len(w.shape) == 2 else xp.broadcast_to(w, (K, m)),
                                                       wide), (K, m, 1))
        ss_tot_local = ss_tot_local + xp.sum(W * (D * D), axis=1)
    ss_tot = np.asarray(reducer.allreduce_sum(_host(be, ss_tot_local, K * c).tolist())).reshape(K, c)
    result["r2"] = np.array([r2_from_sums(g_ss_res[k], ss_tot[k]) if has[k] and bad[k] == 0 else math.nan
                             for k in range(K)])
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
