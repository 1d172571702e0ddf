"""The optimizers' update rules as kernels over the members' ``(K, n_params)`` buffer.

One kernel per rule (:class:`~mlpx.optimizers.SGD` with momentum and Nesterov,
:class:`~mlpx.optimizers.Adam` and AdamW's decay, :class:`~mlpx.optimizers.RMSprop`),
each with a generic Array API definition (the reference, and what runs on
``array-api-strict``), a NumPy variant (in-place ufuncs), a numba variant (one pass per
member's row; its row functions are the compiled training step's own,
:mod:`mlpx.member_step`) and a CUDA one (one launch over the buffer). A single
network is K = 1.

Each takes the (K, n_params) parameters, gradients and state, the step's rows
``vec`` (r, K) in the buffers' dtype (member k's scalars are column k, the last row
``active``), ``coef`` (K,) or None (no penalty) and the weight prefix's length; it
returns the updated parameters and state and ``Σ W²`` per member (None without a
penalty). The fast variants update in place.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mlpx.backends import kernel
from mlpx.backends.cuda import ACCUMULATOR_PREAMBLE, lazy_elementwise
from mlpx.backends.jit import lazy_njit

__all__ = ["adam_row", "adam_update", "rmsprop_row", "rmsprop_update", "sgd_row", "sgd_update"]

Array = Any
#: A scalar of the buffers' dtype, as a compiled loop reads it from ``vec`` or ``coef``.
_Scalar = np.floating[Any]


def _row_sq(xp: Any, W: Array) -> Array:
    """``Σ W²`` of every row (K,): NumPy's vecdot (a BLAS dot per row), else a product sum."""
    vecdot = getattr(xp, "vecdot", None)
    return vecdot(W, W) if vecdot is not None else xp.sum(W * W, axis=1)


def _penalised(xp: Any, p: Array, g: Array, coef: Array | None, nw: int) -> tuple[Array, Array | None]:
    """The gradient with the L2 term on the weights, and ``Σ W²`` (generic)."""
    if coef is None:
        return g, None
    W = p[:, :nw]
    return xp.concat([g[:, :nw] + W * xp.reshape(coef, (-1, 1)), g[:, nw:]], axis=1), xp.sum(W * W, axis=1)


def _col(xp: Any, vec: Array, i: int) -> Array:
    return xp.reshape(vec[i, :], (-1, 1))


@kernel
def sgd_update(xp: Any, p: Array, g: Array, vel: Array, vec: Array, coef: Array | None,
               n_weights: int, tmp: Array | None = None) -> tuple[Array, Array, Array | None]:
    """SGD with (Nesterov) momentum, as scikit-learn's, for every member.

    Parameters
    ----------
    p, g, vel : arrays, shape (K, n_params)
    vec : array, shape (4, K)
        Rows ``lr, momentum, nesterov (0/1), active``.
    coef : array, shape (K,), or None
        ``l2 / d`` per member, added as ``coef · W`` to the weights' gradient first.
    n_weights : int
    tmp : array, shape (K, n_params), optional
        Scratch space the in-place variants may use (they allocate it when absent).

    Returns
    -------
    p, vel : arrays, shape (K, n_params)
    sq : array, shape (K,), or None
        ``Σ W²`` per member before the step (None without ``coef``).
    """
    g, sq = _penalised(xp, p, g, coef, n_weights)
    lr, mu, nest, on = (_col(xp, vec, i) for i in range(4))
    step = g * lr
    vel2 = vel * mu - step
    p2 = xp.where(nest > 0, (p - step) + vel2 * mu, p + vel2)
    keep = on > 0
    return xp.where(keep, p2, p), xp.where(keep, vel2, vel), sq


@kernel
def adam_update(xp: Any, p: Array, g: Array, m: Array, v: Array, vec: Array, coef: Array | None,
                n_weights: int, tmp: Array | None = None) -> tuple[Array, Array, Array, Array | None]:
    """Adam (scikit-learn's placement of ε), and AdamW's decay, for every member.

    Parameters
    ----------
    p, g, m, v : arrays, shape (K, n_params)
    vec : array, shape (8, K)
        Rows ``−lr_t, β₁, 1−β₁, β₂, 1−β₂, ε, decay, active``: the weights are
        multiplied by ``decay`` (``1 − lr λ``; 1 for Adam) before the update.
    coef : array, shape (K,), or None
    n_weights : int

    Returns
    -------
    p, m, v : arrays, shape (K, n_params)
    sq : array, shape (K,), or None
    """
    g, sq = _penalised(xp, p, g, coef, n_weights)
    neg_lr, b1, c1, b2, c2, eps, decay, on = (_col(xp, vec, i) for i in range(8))
    nw = n_weights
    x = xp.concat([p[:, :nw] * decay, p[:, nw:]], axis=1)
    m2 = m * b1 + g * c1
    v2 = v * b2 + (g * g) * c2
    p2 = x + (m2 / (xp.sqrt(v2) + eps)) * neg_lr
    keep = on > 0
    return xp.where(keep, p2, p), xp.where(keep, m2, m), xp.where(keep, v2, v), sq


@kernel
def rmsprop_update(xp: Any, p: Array, g: Array, s: Array, vec: Array, coef: Array | None,
                   n_weights: int, tmp: Array | None = None) -> tuple[Array, Array, Array | None]:
    """RMSprop for every member.

    Parameters
    ----------
    p, g, s : arrays, shape (K, n_params)
    vec : array, shape (5, K)
        Rows ``lr, ρ, 1−ρ, ε, active``.
    coef : array, shape (K,), or None
    n_weights : int

    Returns
    -------
    p, s : arrays, shape (K, n_params)
    sq : array, shape (K,), or None
    """
    g, sq = _penalised(xp, p, g, coef, n_weights)
    lr, rho, c_rho, eps, on = (_col(xp, vec, i) for i in range(5))
    s2 = s * rho + (g * g) * c_rho
    p2 = p - (g / (xp.sqrt(s2) + eps)) * lr
    keep = on > 0
    return xp.where(keep, p2, p), xp.where(keep, s2, s), sq


# NumPy: in-place ufuncs over the members that step (all of them, usually, in one go).
# ``tmp`` is a scratch buffer of p's shape: the update's one temporary, kept by the
# optimizer between steps (a fresh one each step costs a page fault per 4 KiB on
# large networks).
def _np_penalty(xp: Any, p: Array, g: Array, coef: Array | None, nw: int, tmp: Array) -> Array | None:
    if coef is None:
        return None
    W = p[:, :nw]
    sq = _row_sq(xp, W)
    xp.multiply(W, coef[0] if coef.shape[0] == 1 else coef[:, None], out=tmp[:, :nw])
    xp.add(g[:, :nw], tmp[:, :nw], out=g[:, :nw])
    return sq


def _np_rows(update: Any, vec: Array, arrays: tuple[Array, ...], nw: int) -> None:
    """``update(*arrays, cols, nw)`` on every member at once (``cols[i]``: row ``i`` of
    ``vec`` as a column that broadcasts over the members), or member by member when
    some sit the step out. One member takes its scalars as Python floats: ufuncs
    broadcast a (1, 1) operand about 2.5 times slower than they take a scalar, and a
    Python float computes in the arrays' dtype (a float32 value, widened, is exact)."""
    if vec.shape[1] == 1:
        if vec[-1, 0] > 0:
            update(*arrays, vec[:, 0].tolist(), nw)
        return
    on = vec[-1] > 0
    if bool(on.all()):
        update(*arrays, [vec[i][:, None] for i in range(vec.shape[0])], nw)
        return
    for k in np.flatnonzero(on):
        rows = slice(int(k), int(k) + 1)
        update(*(a[rows] for a in arrays), vec[:, k].tolist(), nw)


def _differs(x: Any, value: float) -> bool:
    """Whether a scalar, or any entry of a column, is not ``value``."""
    return x != value if isinstance(x, float) else bool((x != value).any())


def _sgd_rows_np(p: Array, g: Array, vel: Array, tmp: Array, cols: list[Array], nw: int) -> None:
    lr, mu, nest = cols[0], cols[1], np.asarray(cols[2]).reshape(-1) > 0
    np.multiply(g, lr, out=tmp)
    np.multiply(vel, mu, out=vel)
    np.subtract(vel, tmp, out=vel)
    if bool(nest.all()):
        np.subtract(p, tmp, out=p)
        np.multiply(vel, mu, out=tmp)
        np.add(p, tmp, out=p)
    elif not nest.any():
        np.add(p, vel, out=p)
    else:  # members that differ in Nesterov's setting: each its own rule
        mu = np.broadcast_to(np.asarray(mu), (p.shape[0], 1))
        for k in range(p.shape[0]):
            if nest[k]:
                np.subtract(p[k], tmp[k], out=p[k])
                np.multiply(vel[k], mu[k], out=tmp[k])
                np.add(p[k], tmp[k], out=p[k])
            else:
                np.add(p[k], vel[k], out=p[k])


@sgd_update.register("numpy")
def _sgd_update_np(xp: Any, p: Array, g: Array, vel: Array, vec: Array, coef: Array | None,
                   n_weights: int, tmp: Array | None = None) -> tuple[Array, Array, Array | None]:
    tmp = np.empty_like(p) if tmp is None else tmp
    sq = _np_penalty(xp, p, g, coef, n_weights, tmp)
    _np_rows(_sgd_rows_np, vec, (p, g, vel, tmp), n_weights)
    return p, vel, sq


def _adam_rows_np(p: Array, g: Array, m: Array, v: Array, tmp: Array, cols: list[Array], nw: int) -> None:
    neg_lr, b1, c1, b2, c2, eps, decay = cols[:7]
    if _differs(decay, 1.0):
        np.multiply(p[:, :nw], decay, out=p[:, :nw])
    np.multiply(g, c1, out=tmp)
    np.multiply(m, b1, out=m)
    np.add(m, tmp, out=m)
    np.multiply(v, b2, out=v)
    np.multiply(g, g, out=tmp)
    np.multiply(tmp, c2, out=tmp)
    np.add(v, tmp, out=v)
    np.sqrt(v, out=tmp)
    np.add(tmp, eps, out=tmp)
    np.divide(m, tmp, out=tmp)
    np.multiply(tmp, neg_lr, out=tmp)
    np.add(p, tmp, out=p)


@adam_update.register("numpy")
def _adam_update_np(xp: Any, p: Array, g: Array, m: Array, v: Array, vec: Array, coef: Array | None,
                    n_weights: int, tmp: Array | None = None) -> tuple[Array, Array, Array, Array | None]:
    tmp = np.empty_like(p) if tmp is None else tmp
    sq = _np_penalty(xp, p, g, coef, n_weights, tmp)
    _np_rows(_adam_rows_np, vec, (p, g, m, v, tmp), n_weights)
    return p, m, v, sq


def _rmsprop_rows_np(p: Array, g: Array, s: Array, tmp: Array, cols: list[Array], nw: int) -> None:
    lr, rho, c_rho, eps = cols[:4]
    np.multiply(s, rho, out=s)
    np.multiply(g, g, out=tmp)
    np.multiply(tmp, c_rho, out=tmp)
    np.add(s, tmp, out=s)
    np.sqrt(s, out=tmp)
    np.add(tmp, eps, out=tmp)
    np.divide(g, tmp, out=tmp)
    np.multiply(tmp, lr, out=tmp)
    np.subtract(p, tmp, out=p)


@rmsprop_update.register("numpy")
def _rmsprop_update_np(xp: Any, p: Array, g: Array, s: Array, vec: Array, coef: Array | None,
                       n_weights: int, tmp: Array | None = None) -> tuple[Array, Array, Array | None]:
    tmp = np.empty_like(p) if tmp is None else tmp
    sq = _np_penalty(xp, p, g, coef, n_weights, tmp)
    _np_rows(_rmsprop_rows_np, vec, (p, g, s, tmp), n_weights)
    return p, s, sq


# numba: one pass per member over its row. The loops repeat the NumPy variants'
# operations in the same order, with every scalar in the buffers' dtype (as NumPy
# converts them), so both give the same bits; the compiled training step
# (mlpx.member_step) calls the same row functions. Without fastmath the loops still
# vectorise: sqrt and division are IEEE operations LLVM maps onto SIMD instructions.
@lazy_njit
def sgd_row(p: np.ndarray, g: np.ndarray, vel: np.ndarray, k: int, nw: int, penal: bool, cf: _Scalar, lr: _Scalar,
            mu: _Scalar, nesterov: bool) -> None:  # pragma: no cover - compiled
    """SGD with (Nesterov) momentum on row ``k``, after the L2 term ``cf · W`` on the
    first ``nw`` entries (with ``penal``)."""
    for i in range(p.shape[1]):
        x = p[k, i]
        gi = g[k, i] + x * cf if penal and i < nw else g[k, i]
        step = gi * lr
        vi = vel[k, i] * mu - step
        vel[k, i] = vi
        if nesterov:
            p[k, i] = (x - step) + vi * mu
        else:
            p[k, i] = x + vi


@lazy_njit
def adam_row(p: np.ndarray, g: np.ndarray, m: np.ndarray, v: np.ndarray, k: int, nw: int, penal: bool, cf: _Scalar,
             neg_lr: _Scalar, b1: _Scalar, c1: _Scalar, b2: _Scalar, c2: _Scalar, eps: _Scalar,
             decay: _Scalar) -> None:  # pragma: no cover - compiled
    """Adam's update of row ``k`` after the L2 term ``cf · W`` (with ``penal``) and the
    decay of the first ``nw`` (weight) entries; weights and biases in separate loops
    so that each vectorises."""
    decays = decay != 1
    for i in range(nw):
        x = p[k, i]
        gi = g[k, i] + x * cf if penal else g[k, i]
        if decays:
            x = x * decay
        mi = m[k, i] * b1 + gi * c1
        vi = v[k, i] * b2 + (gi * gi) * c2
        m[k, i] = mi
        v[k, i] = vi
        p[k, i] = x + (mi / (np.sqrt(vi) + eps)) * neg_lr
    for i in range(nw, p.shape[1]):
        gi = g[k, i]
        mi = m[k, i] * b1 + gi * c1
        vi = v[k, i] * b2 + (gi * gi) * c2
        m[k, i] = mi
        v[k, i] = vi
        p[k, i] = p[k, i] + (mi / (np.sqrt(vi) + eps)) * neg_lr


@lazy_njit
def rmsprop_row(p: np.ndarray, g: np.ndarray, s: np.ndarray, k: int, nw: int, penal: bool, cf: _Scalar, lr: _Scalar,
                rho: _Scalar, c_rho: _Scalar, eps: _Scalar) -> None:  # pragma: no cover - compiled
    """RMSprop on row ``k``, after the L2 term ``cf · W`` on the first ``nw`` entries
    (with ``penal``)."""
    for i in range(p.shape[1]):
        gi = g[k, i] + p[k, i] * cf if penal and i < nw else g[k, i]
        si = s[k, i] * rho + (gi * gi) * c_rho
        s[k, i] = si
        p[k, i] = p[k, i] - (gi / (np.sqrt(si) + eps)) * lr


@lazy_njit
def _sgd_loop(p: np.ndarray, g: np.ndarray, vel: np.ndarray, vec: np.ndarray, coef: np.ndarray, nw: int,
              penal: bool) -> None:  # pragma: no cover - compiled
    for k in range(p.shape[0]):
        if vec[3, k] > 0:
            sgd_row(p, g, vel, k, nw, penal, coef[k], vec[0, k], vec[1, k], vec[2, k] > 0)


@lazy_njit
def _adam_loop(p: np.ndarray, g: np.ndarray, m: np.ndarray, v: np.ndarray, vec: np.ndarray, coef: np.ndarray,
               nw: int, penal: bool) -> None:  # pragma: no cover - compiled
    for k in range(p.shape[0]):
        if vec[7, k] > 0:
            adam_row(p, g, m, v, k, nw, penal, coef[k], vec[0, k], vec[1, k], vec[2, k], vec[3, k], vec[4, k],
                     vec[5, k], vec[6, k])


@lazy_njit
def _rmsprop_loop(p: np.ndarray, g: np.ndarray, s: np.ndarray, vec: np.ndarray, coef: np.ndarray, nw: int,
                  penal: bool) -> None:  # pragma: no cover - compiled
    for k in range(p.shape[0]):
        if vec[4, k] > 0:
            rmsprop_row(p, g, s, k, nw, penal, coef[k], vec[0, k], vec[1, k], vec[2, k], vec[3, k])


def _numba_args(p: Array, vec: Array, coef: Array | None, nw: int) -> tuple[Array | None, Array, Array]:
    """``Σ W²`` (NumPy's BLAS dot: a compiled loop would sum sequentially; None without
    a penalty), the rows and the coefficients as the loops take them."""
    sq = None if coef is None else _row_sq(np, p[:, :nw])
    cf = np.zeros(p.shape[0], dtype=p.dtype) if coef is None else np.ascontiguousarray(coef)
    return sq, np.ascontiguousarray(vec), cf


def _fits_loop(p: Array, *state: Array) -> bool:
    return p.flags.c_contiguous and p.dtype.itemsize >= 4 and all(a.flags.c_contiguous for a in state)


@sgd_update.register("numba")
def _sgd_update_numba(xp: Any, p: Array, g: Array, vel: Array, vec: Array, coef: Array | None,
                      n_weights: int, tmp: Array | None = None) -> tuple[Array, Array, Array | None]:
    if not _fits_loop(p, g, vel):
        return _sgd_update_np(xp, p, g, vel, vec, coef, n_weights, tmp)
    sq, vec, cf = _numba_args(p, vec, coef, n_weights)
    _sgd_loop(p, g, vel, vec, cf, int(n_weights), coef is not None)
    return p, vel, sq


@adam_update.register("numba")
def _adam_update_numba(xp: Any, p: Array, g: Array, m: Array, v: Array, vec: Array, coef: Array | None,
                       n_weights: int, tmp: Array | None = None) -> tuple[Array, Array, Array, Array | None]:
    if not _fits_loop(p, g, m, v):
        return _adam_update_np(xp, p, g, m, v, vec, coef, n_weights, tmp)
    sq, vec, cf = _numba_args(p, vec, coef, n_weights)
    _adam_loop(p, g, m, v, vec, cf, int(n_weights), coef is not None)
    return p, m, v, sq


@rmsprop_update.register("numba")
def _rmsprop_update_numba(xp: Any, p: Array, g: Array, s: Array, vec: Array, coef: Array | None,
                          n_weights: int, tmp: Array | None = None) -> tuple[Array, Array, Array | None]:
    if not _fits_loop(p, g, s):
        return _rmsprop_update_np(xp, p, g, s, vec, coef, n_weights, tmp)
    sq, vec, cf = _numba_args(p, vec, coef, n_weights)
    _rmsprop_loop(p, g, s, vec, cf, int(n_weights), coef is not None)
    return p, s, sq


# CUDA: one launch over the (K, n_params) buffer; member k's scalars are column k of
# ``vec``, read through raw indexing, so a step's scalars cost no launch arguments
# that change (and no recompilation). Σ W² is one reduction before the launch.
def _cuda_rule(name: str, state: str, body: str, rows: int) -> Any:
    return lazy_elementwise(
        "T g, raw T vec, raw T coef, int64 K, int64 P, int64 nw, bool penalised",
        f"T p, {state}",
        f"""
        typedef mlpx_acc<T>::type A;
        const ptrdiff_t k = i / P, j = i % P;
        if ((A)vec[{rows - 1} * K + k] > (A)0) {{
            A x = (A)p;
            const A gi = (penalised && j < nw) ? (A)g + x * (A)coef[k] : (A)g;
            {body}
        }}
        """,
        f"mlpx_{name}_update",
        preamble=ACCUMULATOR_PREAMBLE,
        scalars=("K", "P", "nw", "penalised"),
        layouts=[{"vec": (2, True), "coef": (1, True)}],
    )


_sgd_cuda = _cuda_rule("sgd", "T vel", """
            const A lr = (A)vec[k], mu = (A)vec[K + k];
            const A vi = mu * (A)vel - lr * gi;
            vel = (T)vi;
            p = (T)((A)vec[2 * K + k] > (A)0 ? x + (mu * vi - lr * gi) : x + vi);
""", 4)
_adam_cuda = _cuda_rule("adam", "T m, T v", """
            if (j < nw) x = x * (A)vec[6 * K + k];
            const A mi = (A)vec[K + k] * (A)m + (A)vec[2 * K + k] * gi;
            const A vi = (A)vec[3 * K + k] * (A)v + (A)vec[4 * K + k] * (gi * gi);
            m = (T)mi;
            v = (T)vi;
            p = (T)(x + ((A)vec[k] * mi / (sqrt(vi) + (A)vec[5 * K + k])));
""", 8)
_rmsprop_cuda = _cuda_rule("rmsprop", "T s", """
            const A si = (A)vec[K + k] * (A)s + (A)vec[2 * K + k] * (gi * gi);
            s = (T)si;
            p = (T)(x - (A)vec[k] * gi / (sqrt(si) + (A)vec[3 * K + k]));
""", 5)


def _cuda_call(xp: Any, fn: Any, p: Array, g: Array, vec: Array, coef: Array | None, nw: int,
               *state: Array) -> Array | None:
    K, P = (int(d) for d in p.shape)
    sq = None if coef is None else xp.sum(p[:, :nw] * p[:, :nw], axis=1)
    fn(g, xp.ascontiguousarray(vec), xp.ascontiguousarray(coef if coef is not None else vec[0]), K, P, int(nw),
       coef is not None, p, *state)
    return sq


@sgd_update.register("cupy")
def _sgd_update_cupy(xp: Any, p: Array, g: Array, vel: Array, vec: Array, coef: Array | None,
                     n_weights: int, tmp: Array | None = None) -> tuple[Array, Array, Array | None]:
    return p, vel, _cuda_call(xp, _sgd_cuda, p, g, vec, coef, n_weights, vel)


@adam_update.register("cupy")
def _adam_update_cupy(xp: Any, p: Array, g: Array, m: Array, v: Array, vec: Array, coef: Array | None,
                      n_weights: int, tmp: Array | None = None) -> tuple[Array, Array, Array, Array | None]:
    return p, m, v, _cuda_call(xp, _adam_cuda, p, g, vec, coef, n_weights, m, v)


@rmsprop_update.register("cupy")
def _rmsprop_update_cupy(xp: Any, p: Array, g: Array, s: Array, vec: Array, coef: Array | None,
                         n_weights: int, tmp: Array | None = None) -> tuple[Array, Array, Array | None]:
    return p, s, _cuda_call(xp, _rmsprop_cuda, p, g, vec, coef, n_weights, s)
