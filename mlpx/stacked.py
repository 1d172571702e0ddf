"""Stacks: K networks of one architecture, trained together by the one loop.

A :class:`Stack` holds K *members* of one architecture (a
:class:`~mlpx.model.Sequential`'s layers), each with its own weights, optimizer
state, hyperparameters, data and stopping. Its parameters are one ``(K, n_params)``
buffer whose row ``k`` is laid out exactly as member ``k``'s ``Sequential`` flat
buffer (all weights, then all biases), so a member leaves the stack as an ordinary
``Sequential`` (:meth:`Stack.member`) and enters it from one (:meth:`Stack.from_models`).

What stacking changes in a step:

* the K small matrix products of a layer are one batched product
  (:meth:`~mlpx.backends.Backend.bmm`: BLAS per member on the CPU, one strided
  batched cuBLAS call on the GPU);
* the K optimizer steps are one pass over the ``(K, n_params)`` buffer with
  per-member rates, moments and step counts (:class:`StackedOptimizer`);
* the K Python loops are one: the stack trains through :func:`mlpx.training.train`,
  the loop every mlpx model trains through. Its source (:class:`MemberBatches`)
  gives every step's rows and denominators per member, so the loop carries the
  per-member losses, rows seen and L2 terms as vectors; per-member callbacks
  (:class:`MemberCallbacks`) stop members one by one. A stopped member is frozen
  (no rows, no update); the stack ends when every member has stopped.

Per-member data: every member draws minibatches from its own rows of one data set
on the device (cross-validation folds, early-stopping splits, bootstrap samples),
shuffled by its own generator. Members with fewer rows, or fewer rows left in an
epoch, fill their minibatches with rows of weight zero: they add nothing to the
loss or the gradient, and a member without rows in a step takes no optimizer step.
So each member trains exactly as it would alone, to rounding.

On the CPU, the members are split into chunks computed in parallel threads (BLAS
and the compiled loops release the GIL) when the products are small; large
products keep BLAS's own threads instead.

Kernels follow the functional convention: the generic (Array API) definition
returns its results; the NumPy and numba variants write into the buffers they are
given and return them. Callers always use the returned values.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import copy
import math
import os
import threading
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import numpy as np

from mlpx import streams
from mlpx.activations import Activation
from mlpx.backends import Backend, kernel
from mlpx.backends.cuda import ACCUMULATOR_PREAMBLE, lazy_elementwise
from mlpx.backends.jit import lazy_njit
from mlpx.backends.numpy_backend import SMALL_GEMM_FLOPS
from mlpx.callbacks import Callback, ProgressBar, check_callbacks
from mlpx.data import Batch, to_host
from mlpx.distributed import LocalReducer
from mlpx.layers import ActivationLayer, Dense
from mlpx.locking import ReadWriteLock
from mlpx.losses import OutputLoss
from mlpx.member_step import (LOSS_CODES, adam_row, bias_activation_rows, bias_gradient_rows, cross_entropy_rows,
                              member_step_plan, run_member_steps, sgd_row, squared_error_rows)
from mlpx.metrics import iter_chunks, r2_from_sums
from mlpx.model import PREDICT_CHUNK, Sequential, StepResult
from mlpx.optimizers import SGD, Adam, Optimizer, get_optimizer
from mlpx.precision import LossScaler, Precision, scale_cast
from mlpx.schedules import Schedule
from mlpx.training import History, train
from mlpx.validation import check_int, check_real, check_X, encode_targets

__all__ = [
    "MemberBatches",
    "MemberCallbacks",
    "MemberHoldout",
    "MemberRows",
    "MemberView",
    "Stack",
    "StackedOptimizer",
    "StopAfter",
    "member_adam_update",
    "member_bias_activation",
    "member_dense_backward",
    "member_hits",
    "member_l2",
    "member_loss",
    "member_sgd_update",
]

Array = Any
_CHUNK = 8192  # rows (over all members) per scoring pass


# =================================================================== kernels
@kernel
def member_bias_activation(xp: Any, Z: Array, b: Array, act: Activation, out: Array) -> tuple[Array, Array]:
    """``Zb = Z + b`` per member and ``H = g(Zb)``.

    Parameters
    ----------
    Z : array, shape (K, n, u)
    b : array, shape (K, u)
    act : Activation
    out : array, shape (K, n, u)
        Where ``H`` may go (it may be ``Z``: activations whose derivative is read
        off their output need no ``Zb`` afterwards).

    Returns
    -------
    Zb, H : arrays, shape (K, n, u)
        New arrays here; the NumPy and numba variants return ``Z`` (holding ``Zb``,
        or ``H`` when ``out is Z``) and ``out``.
    """
    K, n, u = Z.shape
    Zb = Z + xp.reshape(b, (K, 1, u))
    flat = xp.reshape(Zb, (K * n, u))
    H = act.forward_kernel.generic(xp, flat, xp.zeros_like(flat))
    return Zb, xp.reshape(H, (K, n, u))


@member_bias_activation.register("numpy")
def _member_bias_activation_np(xp: Any, Z: Array, b: Array, act: Activation, out: Array) -> tuple[Array, Array]:
    K, n, u = Z.shape
    xp.add(Z, b[:, None, :], out=Z)
    fn = act.forward_kernel.resolve(("numpy",))
    # The activation's result may be its input itself (identity): use what it returns.
    H = fn(xp, Z.reshape(K * n, u), out.reshape(K * n, u))
    return Z, xp.reshape(H, (K, n, u))


@lazy_njit
def _member_bias_relu_loop(Z, b, identity):  # pragma: no cover - compiled
    for k in range(Z.shape[0]):
        bias_activation_rows(Z[k], b[k], identity)


@member_bias_activation.register("numba")
def _member_bias_activation_numba(xp: Any, Z: Array, b: Array, act: Activation, out: Array) -> tuple[Array, Array]:
    if act.name not in ("relu", "identity") or out is not Z or not Z.flags.c_contiguous:
        return _member_bias_activation_np(xp, Z, b, act, out)
    _member_bias_relu_loop(Z, b, act.name == "identity")
    return Z, Z


def _per_row(xp: Any, Z: Array, Y: Array, kind: str) -> tuple[Array, Array]:
    """Per-row losses (K, n) and the unscaled deltas ``Ŷ − Y`` (K, n, c) of a canonical pair."""
    if kind == "cross_entropy":
        m = xp.max(Z, axis=-1, keepdims=True)
        E = xp.exp(Z - m)
        s = xp.sum(E, axis=-1, keepdims=True)
        lse = xp.log(s) + m
        return xp.sum(Y * (lse - Z), axis=-1), E / s - Y
    if kind == "binary_cross_entropy":
        e = xp.exp(-xp.abs(Z))
        softplus = xp.where(Z > 0, Z, xp.zeros_like(Z)) + xp.log1p(e)
        delta = xp.where(Z >= 0, 1.0 / (1.0 + e), e / (1.0 + e)) - Y
        return xp.sum(softplus - Y * Z, axis=-1), delta
    if kind == "squared_error":
        R = Z - Y
        return 0.5 * xp.sum(R * R, axis=-1), R
    if kind == "poisson":
        P = xp.exp(Z)
        pos = Y > 0
        ylogy = xp.where(pos, Y * xp.log(xp.where(pos, Y, xp.ones_like(Y))), xp.zeros_like(Y))
        return xp.sum(ylogy - Y * Z - Y + P, axis=-1), P - Y
    raise ValueError(f"a stack trains with a canonical loss; {kind!r} is not one")


@kernel
def member_loss(xp: Any, Z: Array, Y: Array, w: Array, inv_d: Array, kind: str,
                dZ: Array | None) -> tuple[Array, Array | None]:
    """Each member's loss ``Σ_i w_i l_i / d`` and its output delta ``w_i (Ŷ − Y) / d``.

    Parameters
    ----------
    Z, Y : arrays, shape (K, n, c)
        Logits and encoded targets.
    w : array, shape (K, n)
        Row weights: the sample weight, 1 without weights, 0 for a padding row.
    inv_d : array, shape (K,)
        ``1 / d`` of each member's step (0 for a member without rows).
    kind : str
        The canonical loss (``OutputLoss.name``).
    dZ : array, shape (K, n, c), or None
        Where the delta may go (None: the loss only).

    Returns
    -------
    loss : array, shape (K,)
        0 for a member without rows.
    dZ : array, shape (K, n, c), or None
    """
    K = Z.shape[0]
    per_row, delta = _per_row(xp, Z, Y, kind)
    loss = xp.sum(per_row * w, axis=1) * inv_d
    # A member without rows adds nothing, even once its outputs overflowed (its
    # padding rows' 0 · inf is NaN); the compiled step skips it alike.
    loss = xp.where(inv_d > 0, loss, xp.zeros_like(loss))
    if dZ is None:
        return loss, None
    # (δ · w) · (1/d): the single model's order, so unweighted steps give its bits.
    return loss, (delta * xp.reshape(w, (K, -1, 1))) * xp.reshape(inv_d, (K, 1, 1))


@member_loss.register("numpy")
def _member_loss_np(xp: Any, Z: Array, Y: Array, w: Array, inv_d: Array, kind: str,
                    dZ: Array | None) -> tuple[Array, Array | None]:
    per_row, delta = _per_row(xp, Z, Y, kind)
    loss = xp.sum(per_row * w, axis=1) * inv_d
    loss = xp.where(inv_d > 0, loss, xp.zeros_like(loss))
    if dZ is None:
        return loss, None
    xp.multiply(delta, w[:, :, None], out=dZ)
    xp.multiply(dZ, inv_d[:, None, None], out=dZ)
    return loss, dZ


@lazy_njit
def _member_ce_loop(Z, Y, w, inv_d, dZ, has_dz, loss):  # pragma: no cover - compiled
    ex = np.empty(Z.shape[2], dtype=Z.dtype)
    for k in range(Z.shape[0]):
        total = cross_entropy_rows(Z[k], Y[k], w[k], inv_d[k], dZ[k], ex, has_dz)
        loss[k] = total * inv_d[k] if inv_d[k] > 0 else 0


@lazy_njit
def _member_se_loop(Z, Y, w, inv_d, dZ, has_dz, loss):  # pragma: no cover - compiled
    for k in range(Z.shape[0]):
        total = squared_error_rows(Z[k], Y[k], w[k], inv_d[k], dZ[k], has_dz)
        loss[k] = total * inv_d[k] if inv_d[k] > 0 else 0


_LOSS_LOOPS = {"cross_entropy": _member_ce_loop, "squared_error": _member_se_loop}


@member_loss.register("numba")
def _member_loss_numba(xp: Any, Z: Array, Y: Array, w: Array, inv_d: Array, kind: str,
                       dZ: Array | None) -> tuple[Array, Array | None]:
    loop = _LOSS_LOOPS.get(kind)
    if loop is None or Z.shape[1] == 0 or not (Z.flags.c_contiguous and Y.flags.c_contiguous):
        return _member_loss_np(xp, Z, Y, w, inv_d, kind, dZ)
    loss = np.empty(Z.shape[0], dtype=Z.dtype)
    loop(Z, Y, np.ascontiguousarray(w), np.ascontiguousarray(inv_d), Z if dZ is None else dZ, dZ is not None, loss)
    return loss, dZ


@kernel
def member_hits(xp: Any, Z: Array, Y: Array, w: Array, output: str) -> Array:
    """Rows of positive weight predicted right, per member: shape (K,).

    ``Z`` (K, n, c) holds logits (softmax: arg-max; logistic: every ``z > 0``
    agrees with ``y > 0.5``).
    """
    if output == "softmax":
        hit = xp.argmax(Z, axis=-1) == xp.argmax(Y, axis=-1)
    else:
        hit = xp.all((Z > 0) == (Y > 0.5), axis=-1)
    return xp.sum(xp.astype(hit, Z.dtype) * xp.astype(w > 0, Z.dtype), axis=1)


def _row_sq(xp: Any, W: Array) -> Array:
    """``Σ W²`` of every row (K,): NumPy's vecdot (a BLAS dot per row), else einsum."""
    vecdot = getattr(xp, "vecdot", None)
    return vecdot(W, W) if vecdot is not None else xp.einsum("kp,kp->k", W, W)


@kernel
def member_l2(xp: Any, W: Array, dW: Array, coef: Array) -> tuple[Array, Array]:
    """``dW + coef · W`` and ``Σ W²`` per member.

    Parameters
    ----------
    W, dW : arrays, shape (K, n_weights)
        The weight prefixes of the members' parameters and gradients.
    coef : array, shape (K,)
        ``l2 / d`` of each member.

    Returns
    -------
    dW : array, shape (K, n_weights)
    sq : array, shape (K,)
    """
    return dW + W * xp.reshape(coef, (-1, 1)), xp.sum(W * W, axis=1)


@member_l2.register("numpy")
def _member_l2_np(xp: Any, W: Array, dW: Array, coef: Array) -> tuple[Array, Array]:
    xp.add(dW, W * coef[:, None], out=dW)
    return dW, _row_sq(xp, W)


@lazy_njit
def _member_l2_loop(W, dW, coef, sq):  # pragma: no cover - compiled
    for k in range(W.shape[0]):
        sq[k] = 0  # a zero of W's dtype (W[k, 0] * 0 would be NaN for an overflowed weight)
        acc = sq[k]
        c = coef[k]
        for i in range(W.shape[1]):
            x = W[k, i]
            dW[k, i] = dW[k, i] + x * c
            acc += x * x
        sq[k] = acc


@member_l2.register("numba")
def _member_l2_numba(xp: Any, W: Array, dW: Array, coef: Array) -> tuple[Array, Array]:
    if W.shape[1] == 0:
        return _member_l2_np(xp, W, dW, coef)
    sq = np.empty(W.shape[0], dtype=W.dtype)
    _member_l2_loop(W, dW, np.ascontiguousarray(coef), sq)
    return dW, sq


@kernel
def member_adam_update(xp: Any, p: Array, g: Array, m: Array, v: Array, vec: Array, coef: Array,
                       n_weights: int) -> tuple[Array, Array, Array, Array]:
    """Adam for every member at once (scikit-learn's placement of ε), with the L2 term.

    The weights' gradient gets the L2 term ``coef · W`` first, as
    :meth:`~mlpx.model.Sequential.add_l2_penalty` adds it, in the same pass.

    Parameters
    ----------
    p, g, m, v : arrays, shape (K, n_params)
    vec : array, shape (7, K)
        Rows ``-lr_t, β₁, 1−β₁, β₂, 1−β₂, ε, active`` of every member (in the
        buffers' dtype); a member whose ``active`` is 0 keeps ``p``, ``m`` and ``v``.
    coef : array, shape (K,)
        ``l2 / d`` of each member (0: no penalty).
    n_weights : int
        Length of the weight prefix of each row.

    Returns
    -------
    p, m, v : arrays, shape (K, n_params)
    sq : array, shape (K,)
        ``Σ W²`` of each member before the step (the penalty's loss term).
    """
    neg_lr, b1, c1, b2, c2, eps, on = (xp.reshape(vec[i, :], (-1, 1)) for i in range(7))
    W = p[:, :n_weights]
    sq = xp.sum(W * W, axis=1)
    g = xp.concat([g[:, :n_weights] + W * xp.reshape(coef, (-1, 1)), g[:, n_weights:]], axis=1)
    m2 = m * b1 + g * c1
    v2 = v * b2 + (g * g) * c2
    p2 = p + (m2 / (xp.sqrt(v2) + eps)) * neg_lr
    keep = on > 0
    return xp.where(keep, p2, p), xp.where(keep, m2, m), xp.where(keep, v2, v), sq


@member_adam_update.register("numpy")
def _member_adam_update_np(xp: Any, p: Array, g: Array, m: Array, v: Array, vec: Array, coef: Array,
                           n_weights: int) -> tuple[Array, Array, Array, Array]:
    W = p[:, :n_weights]
    sq = _row_sq(xp, W)
    xp.add(g[:, :n_weights], W * coef[:, None], out=g[:, :n_weights])
    if bool((vec[6] > 0).all()):
        _adam_rows_np(xp, p, g, m, v, vec)
    else:  # some members sit this step out: update the others in place
        for k in range(p.shape[0]):
            if vec[6, k] > 0:
                _adam_rows_np(xp, p[k : k + 1], g[k : k + 1], m[k : k + 1], v[k : k + 1], vec[:, k : k + 1])
    return p, m, v, sq


def _adam_rows_np(xp: Any, p: Array, g: Array, m: Array, v: Array, vec: Array) -> None:
    neg_lr, b1, c1, b2, c2, eps = (vec[i][:, None] for i in range(6))
    tmp = g * c1
    xp.multiply(m, b1, out=m)
    xp.add(m, tmp, out=m)
    xp.multiply(v, b2, out=v)
    xp.multiply(g, g, out=tmp)
    xp.multiply(tmp, c2, out=tmp)
    xp.add(v, tmp, out=v)
    xp.sqrt(v, out=tmp)
    xp.add(tmp, eps, out=tmp)
    xp.divide(m, tmp, out=tmp)
    xp.multiply(tmp, neg_lr, out=tmp)
    xp.add(p, tmp, out=p)


@lazy_njit
def _member_adam_loop(p, g, m, v, vec, coef, nw):  # pragma: no cover - compiled
    for k in range(p.shape[0]):
        if vec[6, k] > 0:
            adam_row(p, g, m, v, k, nw, coef[k], vec[0, k], vec[1, k], vec[2, k], vec[3, k], vec[4, k], vec[5, k])


@member_adam_update.register("numba")
def _member_adam_update_numba(xp: Any, p: Array, g: Array, m: Array, v: Array, vec: Array, coef: Array,
                              n_weights: int) -> tuple[Array, Array, Array, Array]:
    W = p[:, :n_weights]
    sq = _row_sq(np, W)  # before the step (a compiled loop would sum sequentially: slower)
    _member_adam_loop(p, g, m, v, np.ascontiguousarray(vec), np.ascontiguousarray(coef), int(n_weights))
    return p, m, v, sq


# CUDA: one launch over the (K, n_params) buffer; member k's scalars are column k of
# the (7, K) vector, read through raw indexing. Σ W² comes from one reduction first.
_member_adam_cuda = lazy_elementwise(
    "T g, raw T vec, raw T coef, int64 K, int64 P, int64 nw",
    "T p, T m, T v",
    """
    typedef mlpx_acc<T>::type A;
    const ptrdiff_t k = i / P, j = i % P;
    if ((A)vec[6 * K + k] > (A)0) {
        const A x = (A)p;
        const A gi = j < nw ? (A)g + x * (A)coef[k] : (A)g;
        const A mi = (A)vec[K + k] * (A)m + (A)vec[2 * K + k] * gi;
        const A vi = (A)vec[3 * K + k] * (A)v + (A)vec[4 * K + k] * (gi * gi);
        m = (T)mi;
        v = (T)vi;
        p = (T)(x + ((A)vec[k] * mi / (sqrt(vi) + (A)vec[5 * K + k])));
    }
    """,
    "mlpx_member_adam_update",
    preamble=ACCUMULATOR_PREAMBLE,
    scalars=("K", "P", "nw"),
    layouts=[{"vec": (2, True), "coef": (1, True)}],
)


@member_adam_update.register("cupy")
def _member_adam_update_cupy(xp: Any, p: Array, g: Array, m: Array, v: Array, vec: Array, coef: Array,
                             n_weights: int) -> tuple[Array, Array, Array, Array]:
    W = p[:, :n_weights]
    sq = xp.sum(W * W, axis=1)
    K, P = p.shape
    _member_adam_cuda(g, xp.ascontiguousarray(vec), xp.ascontiguousarray(coef), K, P, int(n_weights), p, m, v)
    return p, m, v, sq


@kernel
def member_sgd_update(xp: Any, p: Array, g: Array, vel: Array, vec: Array, coef: Array, n_weights: int,
                      nesterov: bool) -> tuple[Array, Array, Array]:
    """SGD with (Nesterov) momentum for every member, as scikit-learn's, with the L2 term.

    Parameters
    ----------
    p, g, vel : arrays, shape (K, n_params)
    vec : array, shape (3, K)
        Rows ``lr, momentum, active``; an inactive member keeps ``p`` and ``vel``.
    coef : array, shape (K,)
        ``l2 / d`` of each member, added to the weights' gradient first.
    n_weights : int
    nesterov : bool

    Returns
    -------
    p, vel : arrays, shape (K, n_params)
    sq : array, shape (K,)
        ``Σ W²`` of each member before the step.
    """
    lr, mu, on = (xp.reshape(vec[i, :], (-1, 1)) for i in range(3))
    W = p[:, :n_weights]
    sq = xp.sum(W * W, axis=1)
    g = xp.concat([g[:, :n_weights] + W * xp.reshape(coef, (-1, 1)), g[:, n_weights:]], axis=1)
    step = g * lr
    vel2 = vel * mu - step
    p2 = (p - step) + vel2 * mu if nesterov else p + vel2
    keep = on > 0
    return xp.where(keep, p2, p), xp.where(keep, vel2, vel), sq


@member_sgd_update.register("numpy")
def _member_sgd_update_np(xp: Any, p: Array, g: Array, vel: Array, vec: Array, coef: Array, n_weights: int,
                          nesterov: bool) -> tuple[Array, Array, Array]:
    W = p[:, :n_weights]
    sq = _row_sq(xp, W)
    xp.add(g[:, :n_weights], W * coef[:, None], out=g[:, :n_weights])
    if bool((vec[2] > 0).all()):
        _sgd_rows_np(xp, p, g, vel, vec, nesterov)
    else:
        for k in range(p.shape[0]):
            if vec[2, k] > 0:
                _sgd_rows_np(xp, p[k : k + 1], g[k : k + 1], vel[k : k + 1], vec[:, k : k + 1], nesterov)
    return p, vel, sq


def _sgd_rows_np(xp: Any, p: Array, g: Array, vel: Array, vec: Array, nesterov: bool) -> None:
    lr, mu = vec[0][:, None], vec[1][:, None]
    tmp = g * lr
    xp.multiply(vel, mu, out=vel)
    xp.subtract(vel, tmp, out=vel)
    if nesterov:
        xp.subtract(p, tmp, out=p)
        xp.multiply(vel, mu, out=tmp)
        xp.add(p, tmp, out=p)
    else:
        xp.add(p, vel, out=p)


@lazy_njit
def _member_sgd_loop(p, g, vel, vec, coef, nw, nesterov):  # pragma: no cover - compiled
    for k in range(p.shape[0]):
        if vec[2, k] > 0:
            sgd_row(p, g, vel, k, nw, coef[k], vec[0, k], vec[1, k], nesterov)


@member_sgd_update.register("numba")
def _member_sgd_update_numba(xp: Any, p: Array, g: Array, vel: Array, vec: Array, coef: Array, n_weights: int,
                             nesterov: bool) -> tuple[Array, Array, Array]:
    W = p[:, :n_weights]
    sq = _row_sq(np, W)
    _member_sgd_loop(p, g, vel, np.ascontiguousarray(vec), np.ascontiguousarray(coef), int(n_weights),
                     bool(nesterov))
    return p, vel, sq


_member_sgd_cuda = lazy_elementwise(
    "T g, raw T vec, raw T coef, int64 K, int64 P, int64 nw, bool nesterov",
    "T p, T vel",
    """
    typedef mlpx_acc<T>::type A;
    const ptrdiff_t k = i / P, j = i % P;
    if ((A)vec[2 * K + k] > (A)0) {
        const A x = (A)p;
        const A gi = j < nw ? (A)g + x * (A)coef[k] : (A)g;
        const A lr = (A)vec[k], mu = (A)vec[K + k];
        const A vi = mu * (A)vel - lr * gi;
        vel = (T)vi;
        p = (T)(nesterov ? x + (mu * vi - lr * gi) : x + vi);
    }
    """,
    "mlpx_member_sgd_update",
    preamble=ACCUMULATOR_PREAMBLE,
    scalars=("K", "P", "nw", "nesterov"),
    layouts=[{"vec": (2, True), "coef": (1, True)}],
)


@member_sgd_update.register("cupy")
def _member_sgd_update_cupy(xp: Any, p: Array, g: Array, vel: Array, vec: Array, coef: Array, n_weights: int,
                            nesterov: bool) -> tuple[Array, Array, Array]:
    W = p[:, :n_weights]
    sq = xp.sum(W * W, axis=1)
    K, P = p.shape
    _member_sgd_cuda(g, xp.ascontiguousarray(vec), xp.ascontiguousarray(coef), K, P, int(n_weights),
                     bool(nesterov), p, vel)
    return p, vel, sq


@kernel
def member_dense_backward(xp: Any, dH: Array, Z: Array | None, H: Array, act: Activation,
                          db: Array | None) -> tuple[Array, Array]:
    """``dZ = dH ⊙ g'(Z)`` and the bias gradient ``db = Σ_rows dZ`` of every member.

    Parameters
    ----------
    dH : array, shape (K, n, u)
        May be overwritten by ``dZ`` (the NumPy and numba variants do).
    Z : array, shape (K, n, u), or None
        ``Z + b`` (needed by activations whose derivative is not read off ``H``).
    H : array, shape (K, n, u)
    act : Activation
    db : array, shape (K, u), or None
        Where the bias gradient may go (the flat gradient buffer's view).

    Returns
    -------
    dZ : array, shape (K, n, u)
    db : array, shape (K, u)
    """
    K, n, u = dH.shape
    if act.backward_kernel is None:
        dZ = dH
    else:
        flat = act.backward_kernel.generic(xp, xp.reshape(dH, (K * n, u)), None if Z is None else
                                           xp.reshape(Z, (K * n, u)), xp.reshape(H, (K * n, u)),
                                           xp.zeros((K * n, u), dtype=dH.dtype))
        dZ = xp.reshape(flat, (K, n, u))
    if xp.finfo(dZ.dtype).bits < 32:  # half precision: accumulate in float32, as Backend.sum does
        return dZ, xp.astype(xp.sum(xp.astype(dZ, xp.float32), axis=1), dZ.dtype)
    return dZ, xp.sum(dZ, axis=1)


@member_dense_backward.register("numpy")
def _member_dense_backward_np(xp: Any, dH: Array, Z: Array | None, H: Array, act: Activation,
                              db: Array | None) -> tuple[Array, Array]:
    K, n, u = dH.shape
    if act.backward_kernel is not None:
        flat = dH.reshape(K * n, u)
        # A kernel without a NumPy variant returns a new array instead of writing flat.
        dZ = act.backward_kernel.resolve(("numpy",))(xp, flat, None if Z is None else Z.reshape(K * n, u),
                                                      H.reshape(K * n, u), flat)
        dH = dZ.reshape(K, n, u)
    if dH.dtype.itemsize < 4:  # half precision: accumulate in float32, as Backend.sum does
        total = xp.sum(dH, axis=1, dtype=xp.float32)
        if db is None:
            return dH, total.astype(dH.dtype)
        xp.copyto(db, total, casting="unsafe")
        return dH, db
    return dH, xp.sum(dH, axis=1, out=db)


@lazy_njit
def _member_relu_backward_loop(dH, H, db, relu):  # pragma: no cover - compiled
    acc = np.empty(dH.shape[2], dtype=dH.dtype)
    for k in range(dH.shape[0]):
        bias_gradient_rows(dH[k], H[k], db[k], acc, relu)


@member_dense_backward.register("numba")
def _member_dense_backward_numba(xp: Any, dH: Array, Z: Array | None, H: Array, act: Activation,
                                 db: Array | None) -> tuple[Array, Array]:
    if act.name not in ("relu", "identity") or db is None or not dH.flags.c_contiguous or dH.dtype.itemsize < 4:
        return _member_dense_backward_np(xp, dH, Z, H, act, db)
    _member_relu_backward_loop(dH, H, db, act.name == "relu")
    return dH, db


# ================================================================ optimizer
class StackedOptimizer:
    """K optimizers of one class stepping the K rows of a ``(K, n_params)`` buffer.

    Each member keeps its own :class:`~mlpx.optimizers.Optimizer` (an ``SGD`` or
    ``Adam``): its rate, schedule, step count and settings. Those decide, on the
    host, each member's scalars for the step (the bias-corrected rate of Adam,
    computed as :meth:`Adam.step` does); one kernel then updates every member.

    Parameters
    ----------
    members : sequence of Optimizer
        One per member, all ``SGD`` (with one ``nesterov``) or all ``Adam``. Their
        saved or bound state (moments, velocities) is copied into the stack's
        state when it is bound.

    Raises
    ------
    TypeError
        Not optimizers, or mixed classes, or a class the stack has no kernel for.
    ValueError
        No members, or SGD members that disagree on ``nesterov``.
    """

    def __init__(self, members: Sequence[Optimizer]) -> None:
        members = list(members)
        if not members:
            raise ValueError("a stacked optimizer needs at least one member optimizer")
        bad = [i for i, o in enumerate(members) if not isinstance(o, Optimizer)]
        if bad:
            raise TypeError(f"members {bad} are not mlpx optimizers")
        kinds = {type(o) for o in members}
        if len(kinds) > 1:
            raise TypeError(f"a stack steps one optimizer class; got {sorted(k.__name__ for k in kinds)}")
        kind = kinds.pop()
        if kind not in (SGD, Adam):
            raise TypeError(f"a stack has kernels for SGD and Adam, not {kind.__name__}")
        if kind is SGD and len({o.nesterov for o in members}) > 1:
            raise ValueError("SGD members of a stack must agree on nesterov")
        self.members = members
        self.kind = kind
        self.state_names = kind.state_names
        self.state: dict[str, Array] = {}
        self._bound: Any = None
        self._owner: Any = None
        self._static: np.ndarray | None = None

    @property
    def n_members(self) -> int:
        return len(self.members)

    @property
    def lr(self) -> np.ndarray:
        """Each member's rate in force now, shape (K,)."""
        return np.array([o.lr for o in self.members])

    @property
    def t(self) -> np.ndarray:
        """Each member's number of steps taken, shape (K,)."""
        return np.array([o.t for o in self.members], dtype=np.int64)

    def bind(self, be: Backend, params: Array, grads: Array, n_weights: int, owner: Any = None) -> None:
        """Allocate the ``(K, n_params)`` state (once per stack), from the members' own.

        Bound again to the same stack (``owner``) or the same ``params``, the state is
        kept: on an immutable backend every write of the parameters makes a new array.
        """
        self._static = None  # the members' settings, read again at the first step
        if self._bound is not None and (self._bound[1] is params or (owner is not None and owner is self._owner)):
            self._bound = (be, params)
            return
        self._owner = owner
        K, P = params.shape
        if K != self.n_members:
            raise ValueError(f"the stack has {K} members, the optimizer {self.n_members}")
        self.be, self.dtype = be, params.dtype
        host = {name: np.zeros((K, P)) for name in self.state_names}
        for k, opt in enumerate(self.members):
            for name, value in opt.state_dict()["state"].items():
                value = np.asarray(to_host(value) if not isinstance(value, np.ndarray) else value)
                if value.shape != (P,):
                    raise ValueError(f"member {k}'s optimizer state {name!r} has shape {value.shape}, not ({P},)")
                host[name][k] = value
        self.state = {name: be.asarray(a, dtype=_np_dtype(params.dtype).name) for name, a in host.items()}
        self._bound = (be, params)

    def vectors(self, active: np.ndarray, advance: bool = True) -> np.ndarray:
        """The per-member scalars of one step, or of S steps in a row (host, float64).

        Advances the step count of the members active in each step (those with rows
        and not frozen), as their own ``step`` would (``advance=False``: the caller
        does, with :meth:`advance` as the steps run), and computes each one's rate
        as its ``step`` computes it (Adam: ``lr · √(1 − β₂ᵗ) / (1 − β₁ᵗ)``, the
        powers by Python's ``**``, once per distinct ``(β₁, β₂, t)``). The rates in
        force do not change between steps: the members' schedules move them at the
        end of an epoch (:meth:`iteration_ends`).

        Parameters
        ----------
        active : ndarray of bool, shape (K,) or (S, K)
        advance : bool

        Returns
        -------
        ndarray, shape (r, K) or (S, r, K)
            Adam: ``−lr_t``, β₁, 1 − β₁, β₂, 1 − β₂, ε, active; SGD: lr, momentum, active.
        """
        K = self.n_members
        adam = self.kind is Adam
        members = self.members
        if self._static is None:  # the members' settings do not change during training
            if adam:
                self._static = np.array([[o.beta_1, 1.0 - o.beta_1, o.beta_2, 1.0 - o.beta_2, o.epsilon]
                                         for o in members]).T
                pairs: dict[tuple[float, float], int] = {}
                self._beta_group = np.array([pairs.setdefault((o.beta_1, o.beta_2), len(pairs)) for o in members])
                self._beta_pairs = list(pairs)
            else:
                self._static = np.array([[o.momentum for o in members]])
        steps = np.asarray(active, dtype=bool).reshape(-1, K)
        S = steps.shape[0]
        # Each member's count after each step: its own ``step`` adds one per active step.
        t_after = np.array([o.t for o in members], dtype=np.int64) + np.cumsum(steps, axis=0)
        if advance:
            self.advance(steps.sum(axis=0))
        vec = np.zeros((S, 7 if adam else 3, K))
        lr = np.array([o.lr for o in members])
        s_on, on = np.nonzero(steps)
        if adam:
            vec[:, 1:6] = self._static
            if on.size:
                # Once per distinct (β₁, β₂, t): one per step for a stack of one schedule.
                t = t_after[s_on, on]
                key = self._beta_group[on] * (int(t.max()) + 1) + t
                if key.min() == key.max():
                    first, where = np.zeros(1, dtype=np.int64), np.zeros(on.size, dtype=np.int64)
                else:
                    _, first, where = np.unique(key, return_index=True, return_inverse=True)
                c = np.empty((2, first.size))
                for i, j in enumerate(first):
                    b1, b2 = self._beta_pairs[self._beta_group[on[j]]]
                    tj = int(t[j])
                    c[0, i], c[1, i] = math.sqrt(1 - b2**tj), 1 - b1**tj
                vec[s_on, 0, on] = -(lr[on] * c[0, where] / c[1, where])
            vec[s_on, 6, on] = 1.0
        else:
            vec[:, 0], vec[:, 1] = lr, self._static[0]
            vec[s_on, 2, on] = 1.0
        return vec if np.ndim(active) == 2 else vec[0]

    def advance(self, steps: np.ndarray) -> None:
        """Add ``steps`` (shape (K,): bools or counts) to the members' step counts."""
        for k in np.flatnonzero(steps):
            self.members[k].t += int(steps[k])

    def apply(self, be: Backend, params: Array, grads: Array, vec: Array, coef: Array, n_weights: int,
              rows: slice) -> tuple[Array, Array]:
        """Add the L2 term and update ``params[rows]`` with ``vec[:, rows]``.

        Parameters
        ----------
        params, grads : arrays, shape (K, n_params)
        vec : array, shape (rows, K)
            From :meth:`vectors`, on the device.
        coef : array, shape (K,)
            ``l2 / d`` per member.
        n_weights : int
        rows : slice
            The members to update (a chunk of the stack).

        Returns
        -------
        params : array
            The updated rows (``params[rows]`` itself on NumPy and CuPy, which update
            in place; a new array on the generic path, which also keeps the new state).
        sq : array, shape (len(rows),)
            ``Σ W²`` per member before the step.
        """
        whole = rows == slice(None)
        p, g = (params, grads) if whole else (params[rows], grads[rows])
        v = vec if whole else vec[:, rows]
        c = coef if whole else coef[rows]
        if self.kind is Adam:
            m, s = (self.state["m"], self.state["v"]) if whole else (self.state["m"][rows], self.state["v"][rows])
            p, m, s, sq = be.run(member_adam_update, p, g, m, s, v, c, n_weights)
            if whole:
                self.state["m"], self.state["v"] = m, s
            return p, sq
        vel = self.state["velocity"] if whole else self.state["velocity"][rows]
        p, vel, sq = be.run(member_sgd_update, p, g, vel, v, c, n_weights, self.members[0].nesterov)
        if whole:
            self.state["velocity"] = vel
        return p, sq

    # ------------------------------------------------------------ rate policy
    def iteration_ends(self, epochs_done: int, samples_seen: Any) -> None:
        """Each member's schedule sets its rate for the next epoch (``samples_seen``: (K,))."""
        seen = np.broadcast_to(np.asarray(samples_seen), (self.n_members,))
        for o, s in zip(self.members, seen):
            o.iteration_ends(int(epochs_done), int(s))

    # ------------------------------------------------------------------ state
    def state_dict(self, to_host: bool = True) -> dict[str, Any]:
        """Every member's state: ``{"members": [Optimizer.state_dict() without arrays],
        "state": {name: (K, n_params)}}``."""
        arrays: dict[str, Any] = {}
        for name, buf in self.state.items():
            arrays[name] = (np.array(self.be.to_numpy(buf), copy=True) if to_host
                            else self.be.copy(buf, self.be.empty(buf.shape, buf.dtype)))
        members = []
        for o in self.members:
            d = o.state_dict()
            d["state"] = {}
            members.append(d)
        return {"optimizer": "StackedOptimizer", "members": members, "state": arrays}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (rates, step counts, schedules and buffers)."""
        self._static = None
        for o, d in zip(self.members, state["members"]):
            o.load_state_dict(d)
        for name, value in state["state"].items():
            buf = self.state[name]
            src = self.be.asarray(value, dtype=_np_dtype(buf.dtype).name) if isinstance(value, np.ndarray) else value
            self.state[name] = self.be.copy(src, buf)

    def member_state(self, k: int) -> dict[str, Any]:
        """Member ``k``'s optimizer state as its own ``Optimizer.state_dict()`` (host arrays)."""
        d = self.members[k].state_dict()
        d["state"] = {name: np.array(self.be.to_numpy(buf[k, :]), copy=True) for name, buf in self.state.items()}
        return d

    def __repr__(self) -> str:
        return f"StackedOptimizer({self.kind.__name__} x {self.n_members})"


def _np_dtype(dtype: Any) -> Any:
    """A NumPy dtype for any backend's dtype object (array-api-strict's print as 'float64')."""
    try:
        return np.dtype(dtype)
    except TypeError:
        return np.dtype(str(dtype).rsplit(".", 1)[-1])


# ============================================================ batch sources
class MemberBatches:
    """Each member's own minibatches, gathered from one data set on the device.

    Parameters
    ----------
    be : Backend
    X : array, shape (N, f)
        Host array (moved once) or an array of ``be``.
    Y : array, shape (N, c)
        Encoded targets.
    w : array, shape (N,), or None
        Sample weights of the rows (None: 1).
    rows : sequence of K integer arrays
        Member ``k`` trains on rows ``rows[k]`` of ``X`` (each non-empty).
    batch_size : int
        Rows per member and step; a member with fewer rows takes them all.
    dtype : str
        Device dtype of X.
    target_dtype : str, optional
        Device dtype of Y and w (default ``dtype``).

    Notes
    -----
    An epoch's order (the ``perm`` of :meth:`epoch`) is a list of K entries: a
    permutation of ``range(len(rows[k]))``, None for the rows in order, or an empty
    array for a member that sits the epoch out (frozen). Step ``j`` of member ``k``
    holds its rows ``j·b .. (j+1)·b`` of the order; the places beyond its rows are
    filled with a row of weight 0.
    """

    def __init__(self, be: Backend, X: Any, Y: Any, w: Any, rows: Sequence[Any], batch_size: int, dtype: str,
                 *, target_dtype: str | None = None) -> None:
        self.be = be
        rows = [np.asarray(r) for r in rows]
        if not rows:
            raise ValueError("MemberBatches needs the rows of at least one member")
        N = int(X.shape[0])
        for k, r in enumerate(rows):
            if r.ndim != 1 or r.dtype.kind not in "iu" or r.size == 0:
                raise ValueError(f"rows[{k}] must be a non-empty 1-D integer array, got {r.dtype} of shape {r.shape}")
            if r.min() < 0 or r.max() >= N:
                raise ValueError(f"rows[{k}] has indices outside 0..{N - 1}")
        if int(Y.shape[0]) != N or (w is not None and tuple(np.shape(w)) != (N,)):
            raise ValueError(f"X, Y and w must have the same rows: {tuple(X.shape)}, {tuple(Y.shape)}, "
                             f"{None if w is None else tuple(np.shape(w))}")
        self.rows = rows
        self.n_members = len(rows)
        self.sizes = np.array([r.size for r in rows])
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.n_batches = int(-(-self.sizes.max() // self.batch_size))
        self.n = int(self.sizes.max())
        self.w_host = None if w is None else np.asarray(to_host(w), dtype=np.float64)
        tdt = target_dtype or dtype
        self.X = be.asarray(X, dtype=dtype)
        self.Y = be.asarray(Y, dtype=tdt)
        self.dtype, self.target_dtype = dtype, tdt
        self._cache: tuple[Any, np.ndarray, np.ndarray] | None = None
        self._gid: np.ndarray | None = None

    def _layout(self, perm: Any) -> tuple[np.ndarray, np.ndarray]:
        """Row index (K, S·b) and weight (K, S·b) of every place of the epoch (host)."""
        if self._cache is not None and self._cache[0] is perm:
            return self._cache[1], self._cache[2]
        given = perm
        K, L = self.n_members, self.n_batches * self.batch_size
        perm = [None] * K if perm is None else list(perm)
        if len(perm) != K:
            raise ValueError(f"the order has {len(perm)} entries for {K} members")
        idx = np.zeros((K, L), dtype=np.int64)
        wts = np.zeros((K, L))
        for k, (r, p) in enumerate(zip(self.rows, perm)):
            if p is not None and len(p) == 0:
                idx[k] = r[0]
                continue  # frozen: every place is padding
            order = r if p is None else r[_check_member_perm(p, r.size, k)]
            n = order.size
            idx[k, :n] = order
            idx[k, n:] = order[0]
            wts[k, :n] = 1.0 if self.w_host is None else self.w_host[order]
        # Members with the same rows in the same order (a fold and a seed shared by
        # several candidates) share one gather of X per step (MemberRows.shared).
        labels: dict[bytes, int] = {}
        self._gid = np.array([labels.setdefault(row.tobytes(), len(labels)) for row in idx])
        self._cache = (given, idx, wts)
        return idx, wts

    def step_rows(self, perm: Any) -> np.ndarray:
        """Rows of every step per member, shape (n_batches, K)."""
        K, S, b = self.n_members, self.n_batches, self.batch_size
        idx, wts = self._layout(perm)
        real = np.zeros((K, S * b))
        for k, p in enumerate([None] * K if perm is None else perm):
            if p is None or len(p):
                real[k, : self.sizes[k]] = 1.0
        return real.reshape(K, S, b).sum(axis=2).T

    def denominators(self, perm: Any) -> np.ndarray:
        """Each member's loss normaliser per step (rows, or Σ w), shape (n_batches, K)."""
        K, S, b = self.n_members, self.n_batches, self.batch_size
        _, wts = self._layout(perm)
        return wts.reshape(K, S, b).sum(axis=2).T

    def epoch(self, perm: Any) -> Iterator[Batch]:
        """One pass: ``Batch(X, Y, w (K, b), a, b)`` per step.

        ``X`` and ``Y`` are :class:`MemberRows` (each member's rows of the data
        set, gathered by the stack as it computes: ``X.take(be, slice(None))`` is
        the (K, b, f) minibatch).
        """
        index, w = self.epoch_arrays(perm)
        for j in range(self.n_batches):
            yield self.batch(index, w, j)

    def batch(self, index: Array, w: Array, j: int) -> Batch:
        """Step ``j`` of the epoch whose :meth:`epoch_arrays` are ``index``, ``w``."""
        b = self.batch_size
        sel = index[j, :, :]
        return Batch(MemberRows(self.X, sel, self.groups), MemberRows(self.Y, sel), w[j, :, :], j * b, (j + 1) * b)

    def epoch_arrays(self, perm: Any) -> tuple[Array, Array]:
        """The whole epoch's row indices and weights on the device, in one transfer each.

        Returns
        -------
        index : array of int64, shape (n_batches, K, b)
            Step ``j`` of member ``k`` takes rows ``index[j, k]`` of the data set.
        w : array, shape (n_batches, K, b)
            Their weights (0: padding), in ``target_dtype``.
        """
        idx, wts = self._layout(perm)
        K, S, b = self.n_members, self.n_batches, self.batch_size
        index = self.be.asarray(np.ascontiguousarray(idx.reshape(K, S, b).transpose(1, 0, 2)))
        w = self.be.asarray(np.ascontiguousarray(wts.reshape(K, S, b).transpose(1, 0, 2)), dtype=self.target_dtype)
        return index, w

    @property
    def groups(self) -> np.ndarray | None:
        """Labels of the last epoch's orders: members with one label take the same rows."""
        return self._gid


class MemberRows:
    """A step's rows of a device data set, one row of indices per member, gathered lazily.

    The stack's threads gather each their own members' rows (:meth:`take`), so the
    gather runs in parallel with no copy of the whole minibatch first.

    Parameters
    ----------
    data : array, shape (N, f)
    index : array of int, shape (K, b), on the device
    groups : ndarray of int, shape (K,), optional
        Host labels: members with one label have the same rows (:meth:`shared`).
    """

    def __init__(self, data: Array, index: Array, groups: np.ndarray | None = None) -> None:
        self.data, self.index, self.groups = data, index, groups
        K, b = (int(s) for s in index.shape)
        self.shape = (K, b, int(data.shape[1]))

    def shared(self, be: Backend, rows: slice, ws: dict | None = None) -> "_Shared | None":
        """Runs of consecutive members ``rows`` with the same rows, one gathered (b, f)
        block each; None when no two neighbours share (then :meth:`take`)."""
        if self.groups is None:
            return None
        g = self.groups[rows]
        starts = [0] + [i for i in range(1, g.size) if g[i] != g[i - 1]]
        if len(starts) == g.size:
            return None
        base = 0 if rows.start is None else rows.start
        bounds = list(zip(starts, starts[1:] + [g.size]))
        blocks = []
        for n, (lo, _) in enumerate(bounds):
            out = None
            if ws is not None and "numpy" in be.kinds:
                key = ("shared", n, self.shape[1])
                out = ws.get(key)
                if out is None:
                    out = ws[key] = be.empty((self.shape[1], self.shape[2]), _np_dtype(self.data.dtype).name)
            blocks.append(be.take_rows(self.data, self.index[base + lo, :], out=out))
        return _Shared(bounds, blocks, (g.size, self.shape[1], self.shape[2]))

    def take(self, be: Backend, rows: slice, ws: dict | None = None, tag: str = "X") -> Array:
        """The rows of the members ``rows``: an array of shape (k, b, f)."""
        xp = be.xp
        idx = self.index if rows == slice(None) else self.index[rows, :]
        k, b = (int(s) for s in idx.shape)
        f = int(self.data.shape[1])
        out = None
        if ws is not None and "numpy" in be.kinds:
            out = ws.get((tag, k, b))
            if out is None:
                out = ws[(tag, k, b)] = be.empty((k * b, f), _np_dtype(self.data.dtype).name)
        got = be.take_rows(self.data, xp.reshape(idx, (k * b,)), out=out)
        return xp.reshape(got, (k, b, f))


class _Shared(NamedTuple):
    """A chunk's input as runs of members ``lo:hi`` that all see the rows ``X`` (b, f)."""

    runs: list[tuple[int, int]]
    X: list[Array]
    shape: tuple[int, int, int]


def _check_member_perm(p: Any, n: int, k: int) -> np.ndarray:
    p = np.asarray(p)
    if p.shape != (n,) or p.dtype.kind not in "iu":
        raise ValueError(f"member {k}'s order must be integer indices of shape ({n},), got {p.dtype} {p.shape}")
    return p


class MemberHoldout:
    """Each member's own held-out rows, scored after every epoch of a stack.

    Parameters
    ----------
    be : Backend
    X, Y, w : arrays, shapes (N, f), (N, c), (N,) or None
        The data set (host arrays, or arrays of ``be``: a stack's training data on
        the device is shared, not copied).
    rows : sequence of K integer arrays or None
        Member ``k``'s held-out rows; None (or empty) for a member without any
        (its scores are NaN).
    dtype, target_dtype : str
    """

    def __init__(self, be: Backend, X: Any, Y: Any, w: Any, rows: Sequence[Any], dtype: str,
                 target_dtype: str | None = None) -> None:
        self.be = be
        K = len(rows)
        rows = [np.zeros(0, np.int64) if r is None else np.asarray(r, dtype=np.int64) for r in rows]
        V = max(1, max(r.size for r in rows))
        idx = np.zeros((K, V), dtype=np.int64)
        valid = np.zeros((K, V))
        wh = None if w is None else np.asarray(to_host(w), dtype=np.float64)
        wts = np.zeros((K, V))
        for k, r in enumerate(rows):
            idx[k, : r.size] = r
            valid[k, : r.size] = 1.0
            wts[k, : r.size] = 1.0 if wh is None else wh[r]
        tdt = target_dtype or dtype
        self.n_members, self.width = K, V
        self.X = be.asarray(X, dtype=dtype)
        self.Y = be.asarray(Y, dtype=tdt)
        self.idx = idx
        self.valid = be.asarray(valid, dtype=tdt)
        self.w = be.asarray(wts, dtype=tdt)
        self.has_rows = np.array([r.size > 0 for r in rows])

    def scores(self, model: "Stack", reducer: Any, loss: OutputLoss) -> dict[str, Any]:
        """``loss``, ``weight`` and ``accuracy`` or ``r2`` per member, arrays of shape (K,).

        The same statistics as :func:`mlpx.metrics.holdout_scores`, summed per
        member (R² in float64, two passes); NaN for a member without rows.
        """
        be, xp = self.be, self.be.xp
        K, V = self.n_members, self.width
        out = model.output.name
        classifier = out in ("softmax", "logistic")
        c = model.n_outputs_
        step = max(1, _CHUNK // K)
        loss_sum = weight = hits = bad = y_sum = ss_res = 0.0
        for a, b in iter_chunks(V, step):
            Xc, Yc, wc, vc = self._chunk(a, b)
            Z, P = model.infer(Xc)
            ones = be.asarray(np.ones(K), dtype=_np_dtype(Z.dtype).name)
            loss_sum = loss_sum + be.run(member_loss, Z, Yc, wc, ones, loss.name, None)[0]
            weight = weight + xp.sum(wc, axis=1)
            if classifier:
                hit = (xp.argmax(P, axis=-1) == xp.argmax(Yc, axis=-1)) if out == "softmax" else \
                    xp.all((P > 0.5) == (Yc > 0.5), axis=-1)
                hits = hits + xp.sum(xp.astype(hit, wc.dtype) * wc, axis=1)
            else:
                P64, Y64 = be.astype(P, "float64"), be.astype(Yc, "float64")
                W = xp.reshape(be.astype(wc, "float64"), (K, -1, 1))
                valid = xp.reshape(be.astype(vc, "float64"), (K, -1, 1))
                fin = xp.astype(~xp.isfinite(P64), be.dtype("float64")) * valid
                bad = bad + xp.sum(xp.sum(fin, axis=2), axis=1)
                R = Y64 - P64
                y_sum = y_sum + xp.sum(W * Y64, axis=1)
                ss_res = ss_res + xp.sum(W * (R * R), axis=1)
        loss_h = _host_vec(be, loss_sum, K)
        w_h = _host_vec(be, weight, K)
        ok = self.has_rows & (w_h > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            result: dict[str, Any] = {"weight": w_h, "loss": np.where(ok, loss_h / np.where(ok, w_h, 1.0), np.nan)}
            if classifier:
                result["accuracy"] = np.where(ok, _host_vec(be, hits, K) / np.where(ok, w_h, 1.0), np.nan)
                return result
            ys = np.asarray(be.to_numpy(y_sum), dtype=np.float64).reshape(K, c)
            res = np.asarray(be.to_numpy(ss_res), dtype=np.float64).reshape(K, c)
            mean = ys / np.where(ok, w_h, 1.0)[:, None]
        dev_mean = xp.reshape(be.asarray(mean, dtype="float64"), (K, 1, c))
        ss_tot = 0.0
        for a, b in iter_chunks(V, step):
            _, Yc, wc, _ = self._chunk(a, b, need_X=False)
            D = be.astype(Yc, "float64") - dev_mean
            W = xp.reshape(be.astype(wc, "float64"), (K, -1, 1))
            ss_tot = ss_tot + xp.sum(W * (D * D), axis=1)
        tot = np.asarray(be.to_numpy(ss_tot), dtype=np.float64).reshape(K, c)
        nbad = _host_vec(be, bad, K)
        result["r2"] = np.array([r2_from_sums(res[k], tot[k]) if ok[k] and nbad[k] == 0 else math.nan
                                 for k in range(K)])
        return result

    def _chunk(self, a: int, b: int, need_X: bool = True) -> tuple[Any, Any, Any, Any]:
        be, xp = self.be, self.be.xp
        K, m = self.n_members, b - a
        sel = be.asarray(self.idx[:, a:b].reshape(-1))
        Xc = xp.reshape(be.take_rows(self.X, sel), (K, m, int(self.X.shape[1]))) if need_X else None
        Yc = xp.reshape(be.take_rows(self.Y, sel), (K, m, int(self.Y.shape[1])))
        return Xc, Yc, self.w[:, a:b], self.valid[:, a:b]


def _host_vec(be: Backend, value: Any, K: int) -> np.ndarray:
    if isinstance(value, float):
        return np.full(K, value)
    return np.asarray(be.to_numpy(value), dtype=np.float64).reshape(K)


# ================================================================ callbacks
class MemberView:
    """One member of a stack as the callbacks of a single model see it.

    ``params`` is the member's row of the stack's buffer, ``assign_params`` writes
    it, ``samples_seen_`` is the member's own count, and setting
    ``stop_training`` freezes the member (:class:`MemberCallbacks`).
    """

    def __init__(self, stack: "Stack", k: int) -> None:
        self.stack, self.k = stack, k
        self.backend = stack.backend
        self.dtype = stack.dtype
        self.parameter_lock = stack.parameter_lock
        self.stop_training = False

    @property
    def params(self) -> Array:
        return self.stack.params[self.k, :]

    def assign_params(self, src: Array) -> None:
        self.stack.set_member_params(self.k, src)

    @property
    def samples_seen_(self) -> int:
        return int(self.stack.samples_seen_[self.k])

    @property
    def epochs_done_(self) -> int:
        return int(self.stack.epochs_done_)

    @property
    def history(self) -> Any:
        return self.stack.history


class MemberCallbacks(Callback):
    """Run each member's own callbacks on its own logs; freeze members that stop.

    Parameters
    ----------
    callbacks : sequence of K sequences of Callback
        Member ``k``'s callbacks (e.g. an :class:`~mlpx.callbacks.EarlyStopping`,
        or the scikit-learn estimators' stopping policy), called with a
        :class:`MemberView` and the epoch's logs of that member (floats).

    After every epoch the stack's ``stop_training`` is set once every member has
    stopped (a callback of the stack itself may also stop them all).
    """

    def __init__(self, callbacks: Sequence[Sequence[Callback]]) -> None:
        self.callbacks = [check_callbacks(c) for c in callbacks]
        self.views: list[MemberView] = []

    def on_train_begin(self, model: Any, epochs: int) -> None:
        if len(self.callbacks) != model.n_members:
            raise ValueError(f"{len(self.callbacks)} lists of member callbacks for {model.n_members} members")
        self.views = [MemberView(model, k) for k in range(model.n_members)]
        for view, cbs in zip(self.views, self.callbacks):
            for cb in cbs:
                cb.on_train_begin(view, epochs)

    def on_epoch_end(self, model: Any, epoch: int, logs: dict[str, Any]) -> None:
        for k, (view, cbs) in enumerate(zip(self.views, self.callbacks)):
            if not model.active[k]:
                continue
            mine = {key: float(np.asarray(v).reshape(-1)[k]) if np.ndim(v) else float(v) for key, v in logs.items()}
            for cb in cbs:
                cb.on_epoch_end(view, epoch, mine)
            if view.stop_training:
                model.freeze(k)
        model.stop_training = model.stop_training or not model.active.any()

    def on_train_end(self, model: Any) -> None:
        for view, cbs in zip(self.views, self.callbacks):
            for cb in cbs:
                cb.on_train_end(view)


class _Divergence(Callback):
    """Freeze a member whose epoch loss is not finite, and mark it in ``stack.diverged_``.

    The other members go on; a diverged member is left out of the stack's averaged
    predictions.
    """

    def __init__(self, stack: "Stack", k: int) -> None:
        self.stack, self.k = stack, k

    def on_epoch_end(self, model: Any, epoch: int, logs: dict[str, float]) -> None:
        if not math.isfinite(logs["loss"]):
            self.stack.diverged_[self.k] = True
            model.stop_training = True


class _StackProgress(ProgressBar):
    """The progress bar of a stack: each logged value as the median over active members."""

    def on_epoch_end(self, model: Any, epoch: int, logs: dict[str, Any]) -> None:
        keep = model.active
        short = {}
        for k, v in logs.items():
            v = np.asarray(v, dtype=np.float64).reshape(-1)
            v = v[keep] if v.size == keep.size and keep.any() else v
            short[f"median {k}"] = float(np.nanmedian(v)) if np.isfinite(v).any() else math.nan
        short["active"] = float(keep.sum())
        super().on_epoch_end(model, epoch, short)


class StopAfter(Callback):
    """A member callback: freeze the member after its own number of epochs.

    Parameters
    ----------
    epochs : int >= 1
    """

    def __init__(self, epochs: int) -> None:
        self.epochs = check_int("epochs", epochs, low=1)
        self.done = 0

    def on_epoch_end(self, model: Any, epoch: int, logs: dict[str, float]) -> None:
        self.done += 1
        if self.done >= self.epochs:
            model.stop_training = True


# ==================================================================== stack
class _Dense(NamedTuple):
    """One Dense layer of the stack: its slots in a member's flat buffer."""

    W: tuple[int, int, tuple[int, int]]
    b: tuple[int, int, tuple[int]]
    act: Activation


class _Scalers:
    """fp16: one dynamic loss scale per member (``get_state``/``set_state`` for rollback)."""

    def __init__(self, K: int) -> None:
        self.members = [LossScaler() for _ in range(K)]

    def get_state(self) -> list[dict[str, float]]:
        return [s.get_state() for s in self.members]

    def set_state(self, state: list[dict[str, float]]) -> None:
        for s, st in zip(self.members, state):
            s.set_state(st)

    @property
    def scales(self) -> np.ndarray:
        return np.array([s.scale for s in self.members])


#: Work of one compiled call of :meth:`Stack.train_epoch` (about 0.5 s on a CPU core).
_BLOCK_FLOPS = 1e10


def _default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


class Stack:
    """K networks of one architecture, trained together.

    Parameters
    ----------
    template : Sequential
        A built network: its layers (Dense layers with fused activations, and
        activation layers; no Dropout), output, backend, dtype and precision are
        every member's. Its own weights are not used.
    seeds : sequence of int or None, optional
        One per member: member ``k`` starts from the weights ``Sequential(...,
        seed=seeds[k])`` draws (and shuffles with that seed's generator in
        :meth:`fit`). Default: ``n_members`` seeds counting up from the
        template's seed (fresh entropy when it has none).
    n_members : int, optional
        K, when ``seeds`` is not given.
    params : array, shape (K, n_params), optional
        Starting weights of every member instead of drawing them.
    threads : int, optional
        CPU threads the members are split over for small products (default: the
        usable cores; 1 disables). Ignored on the GPU and Array API backends.

    Attributes
    ----------
    params, grads : arrays, shape (K, n_params)
        Row ``k`` is member ``k``'s flat buffer (the layout of ``template.params``).
    n_members, n_params, n_weights : int
    active : ndarray of bool, shape (K,)
        Members still training; a frozen member gets no rows and no updates.
    samples_seen_ : ndarray of int64, shape (K,)
        Samples each member has trained on (drives ``invscaling``).
    epochs_done_ : int
        Epochs the stack has run.
    history : History or None
        The last ``fit``'s logs: each value a per-member array of shape (K,).
    diverged_ : ndarray of bool, shape (K,)
        Members whose loss stopped being finite in the last :meth:`fit` (frozen
        there, and left out of the averaged predictions).
    optimizer_ : StackedOptimizer or None
    compiled_step_reason : str
        "" where each member's steps run as one compiled loop on the CPU
        (:mod:`mlpx.member_step`; an epoch's in one call, :meth:`train_epoch`),
        else why the steps run phase by phase.

    Examples
    --------
    >>> import mlpx
    >>> template = mlpx.MLP([64, 32, 10], seed=0, dtype="float64")
    >>> stack = mlpx.Stack(template, seeds=[0, 1, 2, 3])
    >>> hist = stack.fit(X, y, epochs=5, batch_size=64, lr=[1e-3, 3e-3, 1e-2, 3e-2])  # doctest: +SKIP
    >>> stack.predict(X)                       # the members' averaged probabilities, arg-max   # doctest: +SKIP
    >>> stack.member(2)                        # an ordinary Sequential                          # doctest: +SKIP
    """

    def __init__(
        self,
        template: Sequential,
        seeds: Sequence[int | None] | None = None,
        *,
        n_members: int | None = None,
        params: Any = None,
        threads: int | None = None,
    ) -> None:
        if not isinstance(template, Sequential):
            raise TypeError(f"template must be an mlpx.Sequential, got {type(template).__name__}")
        template._require_built()
        self.template = template
        self._ops = _plan(template)
        if seeds is None:
            if n_members is None:
                if params is None:
                    raise ValueError("give the members' seeds, n_members or params")
                n_members = int(np.shape(params)[0])
            n_members = check_int("n_members", n_members, low=1)
            seeds = [None if template.seed is None else template.seed + k for k in range(n_members)]
        else:
            if isinstance(seeds, (int, np.integer)) or not hasattr(seeds, "__iter__"):
                raise TypeError(f"seeds must be a sequence (one per member), got {seeds!r}")
            seeds = [None if s is None else check_int(f"seeds[{i}]", s, low=0) for i, s in enumerate(seeds)]
            if not seeds:
                raise ValueError("a stack needs at least one member")
            if n_members is not None and n_members != len(seeds):
                raise ValueError(f"n_members={n_members} but {len(seeds)} seeds")
        self.seeds = list(seeds)
        K = self.n_members = len(self.seeds)
        be = self.backend = template.backend
        self.dtype = template.dtype
        self.compute_dtype = template.compute_dtype
        scalers = _Scalers(K) if template.precision_.scaler is not None else None
        p = template.precision_
        self.precision_ = Precision(p.name, p.compute_dtype, p.master_dtype, tf32=p.tf32, scaler=scalers)
        self.output = template.output
        self.n_features_in_, self.n_outputs_ = template.n_features_in_, template.n_outputs_
        self.n_params, self.n_weights = template.n_params, template.n_weights
        if params is None:
            host = np.stack([_draw(template, s) for s in self.seeds])
        else:
            host = np.asarray(to_host(params), dtype=np.float64)
            if host.shape != (K, self.n_params):
                raise ValueError(f"params must have shape ({K}, {self.n_params}), got {host.shape}")
            if not np.isfinite(host).all():
                raise ValueError("params contain NaN or infinity")
        self.params = be.asarray(host.astype(self.dtype), dtype=self.dtype)
        self.grads = be.zeros((K, self.n_params), self.dtype)
        mixed = self.precision_.mixed
        self._params_c = be.zeros((K, self.n_params), self.compute_dtype) if mixed else None
        self._grads_c = be.zeros((K, self.n_params), self.compute_dtype) if mixed else None
        self.parameter_lock = ReadWriteLock()
        self.active = np.ones(K, dtype=bool)
        self.samples_seen_ = np.zeros(K, dtype=np.int64)
        self.epochs_done_ = 0
        self.history: History | None = None
        self.optimizer_: StackedOptimizer | None = None
        self.loss_: OutputLoss | None = None
        self.stop_training = False
        self._in_place = "numpy" in be.kinds
        n_threads = _default_threads() if threads is None else check_int("threads", threads, low=1)
        self.threads = n_threads if (self._in_place and not be.is_gpu) else 1
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._chunks = [slice(None)]
        self.diverged_ = np.zeros(K, dtype=bool)
        self._ws: dict[Any, Array] = {}
        self._step_plan, self.compiled_step_reason = member_step_plan(
            be, [(op.W, op.b, op.act.name) if isinstance(op, _Dense) else None for op in self._ops],
            self.compute_dtype, self.precision_.mixed)
        self._tls = threading.local()
        self._uploads: dict[tuple[int, ...], list[list[Any]]] = {}
        self._upload_i: dict[tuple[int, ...], int] = {}

    # --------------------------------------------------------------- building
    @classmethod
    def from_models(cls, models: Sequence[Sequential], *, threads: int | None = None) -> "Stack":
        """A stack whose members are copies of ``models`` (weights and seeds).

        Raises
        ------
        ValueError
            No models, or models that differ in architecture, dtype, precision or
            backend (a stack has one architecture).
        """
        models = list(models)
        if not models:
            raise ValueError("Stack.from_models needs at least one model")
        if not all(isinstance(m, Sequential) for m in models):
            raise TypeError("Stack.from_models takes mlpx.Sequential models")
        first = models[0]
        first._require_built()
        arch = first.get_config()["layers"]
        for i, m in enumerate(models[1:], 1):
            m._require_built()
            if m.get_config()["layers"] != arch:
                raise ValueError(f"models[{i}] has another architecture than models[0]: a stack has one "
                                 f"architecture ({m.get_config()['layers']} != {arch})")
            if (m.dtype, m.precision_.name, m.backend.name) != (first.dtype, first.precision_.name, first.backend.name):
                raise ValueError(f"models[{i}] differs from models[0] in dtype, precision or backend: "
                                 f"{(m.dtype, m.precision_.name, m.backend.name)} != "
                                 f"{(first.dtype, first.precision_.name, first.backend.name)}")
        params = np.stack([m.get_flat_params() for m in models])
        stack = cls(first, seeds=[m.seed for m in models], params=params, threads=threads)
        stack.samples_seen_ = np.array([m.samples_seen_ for m in models], dtype=np.int64)
        return stack

    def member(self, k: int, backend: Any = None) -> Sequential:
        """Member ``k`` as an ordinary :class:`~mlpx.model.Sequential` (a copy of its weights)."""
        k = self._index(k)
        cfg = dict(self.template.get_config())
        cfg["seed"] = self.seeds[k]
        model = Sequential.from_config(cfg, self.get_member_params(k), backend or self.backend)
        model.samples_seen_ = int(self.samples_seen_[k])
        model.epochs_done_ = int(self.epochs_done_)
        return model

    def members(self) -> list[Sequential]:
        """Every member as a :class:`~mlpx.model.Sequential`."""
        return [self.member(k) for k in range(self.n_members)]

    def _index(self, k: int) -> int:
        k = check_int("member", k)
        if not -self.n_members <= k < self.n_members:
            raise IndexError(f"member {k} out of range for a stack of {self.n_members}")
        return k % self.n_members

    def get_member_params(self, k: int) -> np.ndarray:
        """Host copy of member ``k``'s flat parameters, shape (n_params,)."""
        k = self._index(k)
        with self.parameter_lock.read():
            return np.array(self.backend.to_numpy(self.params[k, :]), copy=True)

    def get_params_host(self) -> np.ndarray:
        """Host copy of every member's parameters, shape (K, n_params)."""
        with self.parameter_lock.read():
            return np.array(self.backend.to_numpy(self.params), copy=True)

    def set_member_params(self, k: int, src: Any) -> None:
        """Overwrite member ``k``'s parameters from a host or device vector (n_params,)."""
        k = self._index(k)
        be = self.backend
        if isinstance(src, np.ndarray) and not isinstance(self.params, np.ndarray):
            src = be.asarray(src, dtype=self.dtype)
        with self.parameter_lock.write():
            self.params[k, :] = src if src.dtype == self.params.dtype else be.astype(src, self.dtype)

    def assign_params(self, src: Array) -> None:
        """Copy a device buffer of shape (K, n_params) into ``params``."""
        with self.parameter_lock.write():
            self.params = self.backend.copy(src, self.params)

    def freeze(self, k: int) -> None:
        """Stop member ``k``: from the next epoch it gets no rows and no updates."""
        self.active[self._index(k)] = False

    def decorrelate_dropout(self, rank: int) -> None:
        """Nothing to do: a stack has no dropout (and trains in one process)."""

    def resolve_loss(self, loss: Any) -> OutputLoss:
        """The output's canonical loss (the only one a stack trains with)."""
        out = self.template.resolve_loss(loss)
        if not out.canonical:
            raise ValueError(
                f"a stack trains with its output's canonical loss; {out.name!r} on a {self.output.name!r} "
                f"output is not one (fit the members one by one for other pairs)")
        return out

    def gemm_flops(self, n: int) -> float:
        """Flops of one member's largest product for a batch of n rows."""
        return self.template.gemm_flops(n)

    @contextlib.contextmanager
    def compute_context(self, batch: int, split: bool = True) -> Iterator[None]:
        """Device, BLAS threads, TF32 and the member threads for passes over ``batch`` rows.

        Small products (below :data:`~mlpx.backends.SMALL_GEMM_FLOPS`) run one
        BLAS thread each, with the members split over ``threads`` threads; large
        products keep BLAS's own threads and the members run in one.
        """
        be = self.backend
        flops = self.gemm_flops(batch)
        split = split and self.threads > 1 and flops < SMALL_GEMM_FLOPS and self.n_members > 1
        with contextlib.ExitStack() as stack:
            stack.enter_context(be.activated())
            stack.enter_context(be.blas_threads(flops))
            if self.precision_.tf32:
                stack.enter_context(be.tf32_matmul())
            if split:
                n = min(self.threads, self.n_members)
                self._pool = concurrent.futures.ThreadPoolExecutor(n, thread_name_prefix="mlpx-stack")
                self._chunks = _split(self.n_members, n)
            else:
                self._chunks = [slice(None)]
            try:
                yield
            finally:
                if self._pool is not None:
                    self._pool.shutdown(wait=True)
                    self._pool = None
                self._chunks = [slice(None)]

    # ---------------------------------------------------------------- forward
    def _ws_get(self, ws: dict, key: Any, shape: tuple[int, ...], dtype: str) -> Array | None:
        if not self._in_place:
            return None
        buf = ws.get(key)
        if buf is None or tuple(buf.shape) != shape:
            if len(ws) > 64:
                ws.clear()
            buf = ws[key] = self.backend.empty(shape, dtype)
        return buf

    def _views(self, flat: Array, rows: slice, slot: tuple[int, int, tuple[int, ...]]) -> Array:
        a, b, shape = slot
        block = flat[rows, a:b]
        return self.backend.xp.reshape(block, (int(block.shape[0]),) + tuple(shape))

    def _forward(self, X: Array, rows: slice, ws: dict, train: bool) -> tuple[Array, list[tuple[Any, ...]]]:
        """Logits (k, n, c) of the members ``rows`` for X (k, n, f) or shared X (n, f)."""
        be, xp = self.backend, self.backend.xp
        flat = self._params_c if self.precision_.mixed else self.params
        H = X
        if isinstance(H, MemberRows):
            first_dense = isinstance(self._ops[0], _Dense)
            H = (H.shared(be, rows, ws) if first_dense and self._in_place else None) or H.take(be, rows, ws, "X")
        saved: list[tuple[Any, ...]] = []
        for i, op in enumerate(self._ops):
            if isinstance(op, _Dense):
                W = self._views(flat, rows, op.W)
                b = self._views(flat, rows, op.b)
                k, n = int(W.shape[0]), int(H.shape[-2])
                shape = (k, n, op.W[2][1])
                if isinstance(H, _Shared):  # one gathered block per run of members
                    Z = self._ws_get(ws, ("Z", i), shape, self.compute_dtype)
                    for (lo, hi), Xg in zip(H.runs, H.X):
                        be.bmm(Xg, W[lo:hi], out=Z[lo:hi])
                else:
                    Z = be.bmm(H, W, out=self._ws_get(ws, ("Z", i), shape, self.compute_dtype))
                keep_Z = not op.act.from_output
                out = self._ws_get(ws, ("H", i), shape, self.compute_dtype) if keep_Z else Z
                Zb, A = be.run(member_bias_activation, Z, b, op.act, out if out is not None else Z)
                if train:
                    saved.append((H, Zb if keep_Z else None, A, W))
                H = A
            else:
                act = op
                k, n, u = (int(d) for d in H.shape)
                out = self._ws_get(ws, ("A", i), (k, n, u), self.compute_dtype)
                src = xp.reshape(H, (k * n, u))
                A = act.forward(be, src, out=xp.reshape(out, (k * n, u)) if out is not None else xp.zeros_like(src))
                A = xp.reshape(A, (k, n, u))
                if train:
                    saved.append((H, H, A, None))
                H = A
        return H, saved

    def infer(self, X: Array) -> tuple[Array, Array]:
        """Logits and outputs of every member: X (n, f) shared or (K, n, f) per member.

        Returns
        -------
        Z, P : arrays, shape (K, n, n_outputs_), in the master dtype (new arrays).
        """
        be, xp = self.backend, self.backend.xp
        with self.parameter_lock.read():
            if self.precision_.mixed:
                self._params_c = be.copy(self.params, self._params_c)
            Z, _ = self._forward(X, slice(None), {}, train=False)
        K, n, c = (int(d) for d in Z.shape)
        Z = be.astype(Z, self.dtype) if self.precision_.mixed else Z
        Z2 = xp.reshape(Z, (K * n, c))
        P = self.output.forward(be, Z2, out=xp.zeros_like(Z2))
        return Z, xp.reshape(P, (K, n, c))

    # --------------------------------------------------------------- training
    def _upload(self, host: np.ndarray) -> Array:
        """Host scalars (a step's or an epoch's) to the device without stalling it (a ring of pinned buffers)."""
        be = self.backend
        if not be.is_gpu:
            return be.asarray(host.astype(_np_dtype(self.params.dtype)), dtype=self.dtype) \
                if not self._in_place else host.astype(self.params.dtype)
        ring = self._uploads.get(host.shape)  # one ring per shape (fp16 uploads two per step)
        if ring is None:
            ring = self._uploads[host.shape] = [[be.empty_pinned(host.shape, _np_dtype(self.params.dtype)),
                                                 be.empty(host.shape, self.dtype), None] for _ in range(3)]
            self._upload_i[host.shape] = 0
        i = self._upload_i[host.shape] = (self._upload_i[host.shape] + 1) % 3
        pinned, dev, event = ring[i]
        be.synchronize_event(event)  # the copy from three steps ago has read it
        np.copyto(pinned, host, casting="unsafe")
        be.upload(pinned, dev)
        ring[i][2] = be.record_event()
        return dev

    def _head(self, d: np.ndarray, l2v: np.ndarray, active: np.ndarray, opt_vec: np.ndarray | None) -> np.ndarray:
        """The scalars of a step per member (host, float64).

        Parameters
        ----------
        d : ndarray, shape (K,) or (S, K)
            Each member's normaliser per step.
        l2v : ndarray, shape (K,)
        active : ndarray of bool, shape of ``d``
        opt_vec : ndarray, shape (r, K) or (S, r, K), or None
            :meth:`StackedOptimizer.vectors` (None: no update in the step).

        Returns
        -------
        ndarray, shape (3 + r, K) or (S, 3 + r, K)
            Rows ``1/d`` and ``l2/d`` (0 for members without a step), the loss scale,
            then ``opt_vec``.
        """
        safe = np.where(d > 0, d, 1.0)
        r = 0 if opt_vec is None else opt_vec.shape[-2]
        head = np.empty(d.shape[:-1] + (3 + r, d.shape[-1]))
        head[..., 0, :] = np.where(active, 1.0 / safe, 0.0)
        head[..., 1, :] = np.where(active, l2v / safe, 0.0)
        scalers = self.precision_.scaler
        head[..., 2, :] = scalers.scales if scalers is not None else 1.0
        if opt_vec is not None:
            head[..., 3:, :] = opt_vec
        return head

    def train_epoch(self, source: Any, perm: Any, denoms: np.ndarray, *, loss: OutputLoss,
                    optimizer: StackedOptimizer | None, l2: Any = 0.0, count_correct: bool = False
                    ) -> list[StepResult | None] | None:
        """Every step of an epoch: what :meth:`train_step` would give step by step, bit for bit.

        The members are independent within an epoch. Where the compiled step applies
        (:attr:`compiled_step_reason` is empty), each member takes its steps one after
        another in one compiled call per thread, while its weights and optimizer state
        stay in the core's cache: one Python call per block of steps instead of one
        per step (the blocks bound how long a call holds the parameter lock and keeps
        a Ctrl-C waiting). Elsewhere (the GPU, array libraries, other layers) the
        steps run phase by phase, with the scalars of the whole epoch moved to the
        device in one transfer: no per-step upload, no wait for the device inside
        the epoch.

        Parameters
        ----------
        source : MemberBatches
        perm : the epoch's order (:meth:`MemberBatches.epoch`)
        denoms : ndarray, shape (n_steps, K)
            Each member's normaliser per step (``source.denominators(perm)``).
        loss, optimizer, l2, count_correct
            As for :meth:`train_step`.

        Returns
        -------
        list of StepResult, one per step (None for a step no member has rows in), or None
            None for another source, loss scaling or no update: then step by step.
        """
        if optimizer is None or self.precision_.scaler is not None or not isinstance(source, MemberBatches):
            return None
        index, w = source.epoch_arrays(perm)
        K = self.n_members
        D = np.asarray(denoms, dtype=np.float64)
        S = D.shape[0]
        if D.shape != (S, K) or tuple(index.shape[:2]) != (S, K):
            raise ValueError(f"denominators of shape {D.shape} for {index.shape[0]} steps of {K} members")
        l2v = np.broadcast_to(np.asarray(l2, dtype=np.float64), (K,))
        penalised = bool(l2v.any())
        active = (D > 0) & self.active
        results: list[StepResult | None] = []
        if not self._compiled_step_applies(source.X, source.Y, w, index, loss, optimizer):
            # The steps the loop would take: those where some member has rows.
            learns = (D > 0).any(axis=1)
            heads = self._upload(self._head(D, l2v, active, optimizer.vectors(active, advance=False)))
            for j in range(S):
                if not learns[j]:
                    results.append(None)
                    continue
                batch = source.batch(index, w, j)
                results.append(self._step(batch.X, batch.Y, batch.w, heads[j, :, :], active[j], loss, optimizer,
                                          penalised, count_correct))
                optimizer.advance(active[j])  # the counts follow the steps taken
            return results
        per_step = 3.0 * self.gemm_flops(int(index.shape[2])) * max(1, int(active.any(axis=0).sum()))
        block = max(1, int(_BLOCK_FLOPS // per_step))
        for a in range(0, S, block):
            z = slice(a, min(S, a + block))
            # The counts advance block by block: an interrupted epoch leaves them right.
            head = self._head(D[z], l2v, active[z], optimizer.vectors(active[z])).astype(self.params.dtype)
            # One step in the block: members with the same rows share its gather.
            groups = source.groups if z.stop - z.start == 1 else np.arange(K)
            with self.parameter_lock.write():
                value, sq, correct = self._compiled_step(active[z], source.X, source.Y, index[z], groups, w[z],
                                                         head, loss, count_correct, penalised, optimizer)
            penalty = (0.5 * head[:, 1, :]) * sq if penalised else None
            for j in range(z.stop - z.start):
                results.append(StepResult(value[j], 0.0 if penalty is None else penalty[j],
                                          None if correct is None else correct[j], True, None))
        return results

    def train_step(
        self,
        X: Any,
        Y: Any,
        w: Array | None = None,
        *,
        denom: Any,
        loss: OutputLoss,
        optimizer: StackedOptimizer | None,
        l2: Any = 0.0,
        reducer: Any = None,
        count_correct: bool = False,
        pending: BaseException | None = None,
        where: str = "",
    ) -> StepResult:
        """One minibatch step of every member: forward, backward, L2 penalty, update.

        Parameters
        ----------
        X, Y : arrays, shapes (K, b, f) and (K, b, c), or :class:`MemberRows`
            Each member's minibatch (:class:`MemberBatches` gives rows that each
            thread of the stack gathers for its own members).
        w : array, shape (K, b)
            Row weights (0 for padding rows).
        denom : array_like, shape (K,)
            Each member's normaliser (rows or Σ w); a member with 0 (or frozen)
            takes no optimizer step.
        loss : OutputLoss
        optimizer : StackedOptimizer or None
            None: the loss and gradients only (the L2 term added to ``grads``).
        l2 : float or array of shape (K,)
        count_correct : bool
            Also count each member's rows of positive weight predicted right.

        Returns
        -------
        StepResult
            ``loss``, ``penalty``, ``correct``: arrays of shape (K,) on the device.
        """
        if reducer is not None and getattr(reducer, "size", 1) > 1:
            raise ValueError("a stack of networks trains in one process (no comm)")
        if pending is not None:
            raise pending
        K = self.n_members
        d = np.asarray(denom, dtype=np.float64)
        l2v = np.asarray(l2, dtype=np.float64)
        if d.shape != (K,) or l2v.shape != (K,):
            d, l2v = np.broadcast_to(d, (K,)), np.broadcast_to(l2v, (K,))
        active = (d > 0) & self.active
        # Without loss scaling the update runs in the same pass as the gradients.
        fused = optimizer is not None and self.precision_.scaler is None
        dev = self._upload(self._head(d, l2v, active, optimizer.vectors(active) if fused else None))
        return self._step(X, Y, w, dev, active, loss, optimizer, bool(l2v.any()), count_correct)

    def _step(self, X: Any, Y: Any, w: Array, dev: Array, active: np.ndarray, loss: OutputLoss,
              optimizer: StackedOptimizer | None, penalised: bool, count_correct: bool) -> StepResult:
        """:meth:`train_step` with the step's scalars ``dev`` (:meth:`_head`, on the device)."""
        be, xp = self.backend, self.backend.xp
        K = self.n_members
        scalers = self.precision_.scaler
        fused = optimizer is not None and scalers is None
        if fused and isinstance(X, MemberRows) and isinstance(Y, MemberRows) and self._compiled_step_applies(
                X.data, Y.data, w, X.index, loss, optimizer):
            groups = X.groups if X.groups is not None else np.arange(K)
            with self.parameter_lock.write():
                value, sq, correct = self._compiled_step(active[None], X.data, Y.data, X.index[None], groups, w[None],
                                                         dev[None], loss, count_correct, penalised, optimizer)
            penalty = (0.5 * dev[1, :]) * sq[0] if penalised else 0.0
            return StepResult(value[0], penalty, None if correct is None else correct[0], True, None)

        if self.precision_.mixed:
            self._params_c = be.copy(self.params, self._params_c)
        chunks = self._chunks if self._in_place else [slice(None)]

        def run(rows: slice) -> tuple[Any, Any, Any, Any]:
            return self._chunk_step(rows, X, Y, w, dev, loss, count_correct, penalised,
                                    optimizer if fused else None)

        with self.parameter_lock.write():
            if len(chunks) > 1 and self._pool is not None:
                parts = list(self._pool.map(run, chunks))
            else:
                parts = [run(r) for r in chunks]
            value = _join(xp, [p[0] for p in parts])
            correct = _join(xp, [p[2] for p in parts]) if count_correct else None
            sq = _join(xp, [p[1] for p in parts]) if parts[0][1] is not None else None
            if len(parts) == 1 and parts[0][3] is not None:
                self.params = parts[0][3]
            if optimizer is None:
                if penalised:  # the L2 term into the gradients (no update to carry it)
                    dW, sq = be.run(member_l2, self.params[:, : self.n_weights], self.grads[:, : self.n_weights],
                                    dev[1, :])
                    if dW is not self.grads[:, : self.n_weights] and not self._in_place:
                        self.grads = xp.concat([dW, self.grads[:, self.n_weights :]], axis=1)
            elif not fused:
                # fp16: members whose gradients overflowed skip the step and halve their scale
                finite = np.asarray(be.to_numpy(xp.all(xp.isfinite(self.grads), axis=1)), dtype=bool)
                for k, sc in enumerate(scalers.members):
                    if active[k]:
                        sc.update(found_inf=not finite[k])
                vec = self._upload(optimizer.vectors(active & finite))
                self.params, sq = optimizer.apply(be, self.params, self.grads, vec, dev[1, :], self.n_weights,
                                                  slice(None))
            penalty = 0.0
            if penalised and sq is not None:  # none from a member without rows (its Σ W² may be inf)
                penalty = xp.where(dev[0, :] > 0, (0.5 * dev[1, :]) * sq, xp.zeros_like(sq))
        return StepResult(value, penalty, correct, optimizer is not None, None)

    def _chunk_step(self, rows: slice, X: Any, Y: Any, w: Array, dev: Array, loss: OutputLoss,
                    count_correct: bool, penalised: bool, optimizer: StackedOptimizer | None
                    ) -> tuple[Any, Any, Any, Any]:
        """Forward, backward (and the update) of the members ``rows``.

        Returns (loss, Σ W² or None, correct or None, new params or None).
        """
        be, xp = self.backend, self.backend.xp
        whole = rows == slice(None)
        ws = self._ws.setdefault(("chunk", rows.start, rows.stop), {})
        Xr = X if isinstance(X, MemberRows) else (X if whole else X[rows])
        Yr = Y.take(be, rows, ws, "Y") if isinstance(Y, MemberRows) else (Y if whole else Y[rows])
        wr = w if whole else w[rows]
        inv_d = dev[0, :] if whole else dev[0, rows]
        scale = dev[2, :] if whole else dev[2, rows]
        Z, saved = self._forward(Xr, rows, ws, train=True)
        mixed = self.precision_.mixed
        k, n, c = (int(s) for s in Z.shape)
        Zm = be.astype(Z, self.dtype) if mixed else Z
        dZ = self._ws_get(ws, "dZ", (k, n, c), self.dtype)
        value, dZ = be.run(member_loss, Zm, Yr, wr, inv_d, loss.name, dZ if dZ is not None else Zm)
        correct = be.run(member_hits, Zm, Yr, wr, self.output.name) if count_correct else None
        if mixed:
            dZc = self._ws_get(ws, "dZc", (k, n, c), self.compute_dtype)
            factor = xp.reshape(be.astype(scale, "float32"), (k, 1, 1))
            dZ = be.run(scale_cast, dZ, factor,
                        dZc if dZc is not None else xp.zeros((k, n, c), dtype=be.dtype(self.compute_dtype)))
        grads = self._grads_c if mixed else self.grads
        assembled = self._backward(dZ, saved, rows, ws, grads)
        if mixed:
            src = assembled if assembled is not None else (grads if whole else grads[rows])
            factor = xp.reshape(1.0 / be.astype(scale, "float32"), (k, 1))
            out = be.run(scale_cast, src, factor, self.grads if whole else self.grads[rows])
            if not self._in_place:
                self.grads = out
        elif assembled is not None:
            self.grads = assembled  # (the generic path runs whole)
        if optimizer is None:
            return value, None, correct, None
        new, sq = optimizer.apply(be, self.params, self.grads, dev[3:, :], dev[1, :], self.n_weights, rows)
        return value, sq if penalised else None, correct, new if whole else None

    def _compiled_step_applies(self, X: Any, Y: Any, w: Any, index: Any, loss: OutputLoss, optimizer: Any) -> bool:
        """Whether steps over the data set ``X``, ``Y`` (rows ``index`` (…, K, b), weights
        ``w``) can run as one compiled call per thread (:mod:`mlpx.member_step`)."""
        if self._step_plan is None or index is None:
            return False
        if loss.name not in LOSS_CODES or int(index.shape[-1]) < 2 or optimizer.kind not in (Adam, SGD):
            return False
        dtype = self.params.dtype
        arrays = (X, Y, w, index, self.params, self.grads, *optimizer.state.values())
        return all(isinstance(a, np.ndarray) and a.flags.c_contiguous for a in arrays) and all(
            a.dtype == dtype for a in (X, Y, w, *optimizer.state.values()))

    def _compiled_step(self, active: np.ndarray, X: np.ndarray, Y: np.ndarray, index: np.ndarray, groups: Any,
                       w: np.ndarray, dev: np.ndarray, loss: OutputLoss, count_correct: bool, penalised: bool,
                       optimizer: StackedOptimizer) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """S steps of :meth:`_chunk_step` with the update for every member, one compiled
        call per thread; each member takes its S steps in turn.

        The calling thread and the stack's other threads take members with rows
        from one queue (frozen members cost nothing).

        Parameters
        ----------
        active : ndarray of bool, shape (S, K)
        X, Y : ndarrays, shapes (N, f) and (N, c)
        index : ndarray of int64, shape (S, K, b)
        groups : array_like of int, shape (K,)
        w : ndarray, shape (S, K, b)
        dev : ndarray, shape (S, 3 + r, K)
            Each step's :meth:`_head`.

        Returns
        -------
        loss, sq, correct : ndarrays, shape (S, K) (``correct`` None when not asked for)
        """
        S, K = active.shape
        out = {name: np.zeros((S, K), dtype=self.params.dtype) for name in ("loss", "sq", "hits")}
        queue = np.flatnonzero(active.any(axis=0)).astype(np.int64)
        counter = np.zeros(1, dtype=np.int64)
        n = min(len(self._chunks), max(1, queue.size)) if self._pool is not None else 1
        groups = np.asarray(groups, dtype=np.int64)
        state = [optimizer.state[name] for name in optimizer.state_names]
        opt = "adam" if optimizer.kind is Adam else "sgd"
        nesterov = optimizer.kind is SGD and bool(optimizer.members[0].nesterov)
        softmax = self.output.name == "softmax"

        def run(i: int) -> None:
            run_member_steps(self._step_plan, queue, counter, X, Y, index, groups, w, dev, self.params,
                             self.grads, state, opt, nesterov, self.n_weights, loss.name, penalised,
                             self._ws.setdefault(("compiled", i), {}), out, count_correct, softmax)

        # The threads share one queue of members: one that wakes up late takes fewer.
        others = [self._pool.submit(run, i) for i in range(1, n)] if n > 1 else []
        try:
            run(0)
        finally:
            concurrent.futures.wait(others)  # no thread may still write when this returns
        for f in others:
            f.result()
        return out["loss"], out["sq"], out["hits"] if count_correct else None

    def _backward(self, dZ: Array, saved: list[tuple[Any, ...]], rows: slice, ws: dict, grads: Array) -> Array | None:
        """Gradients of the members ``rows`` into ``grads`` (None), or (generic) a new (k, P) array."""
        be, xp = self.backend, self.backend.xp
        pieces: dict[tuple[int, int], Array] = {}
        in_place = True
        dH = dZ
        first = next(i for i, op in enumerate(self._ops) if isinstance(op, _Dense))
        for i in range(len(self._ops) - 1, -1, -1):
            op = self._ops[i]
            H_in, Zb, A, W = saved[i]
            k, n, u = (int(s) for s in dH.shape)
            if isinstance(op, _Dense):
                gW = self._views(grads, rows, op.W)
                gb = self._views(grads, rows, op.b)
                dH, db = be.run(member_dense_backward, dH, Zb, A, op.act, gb if self._in_place else None)
                if isinstance(H_in, _Shared):
                    for (lo, hi), Xg in zip(H_in.runs, H_in.X):
                        be.bmm(Xg, dH[lo:hi], trans_a=True, out=gW[lo:hi])
                    dW = gW
                else:
                    dW = be.bmm(H_in, dH, trans_a=True, out=gW)  # a shared 2-D input broadcasts
                if dW is not gW or db is not gb:
                    in_place = False
                pieces[op.W[:2]] = dW
                pieces[op.b[:2]] = db
                if i > first:
                    dH = be.bmm(dH, W, trans_b=True, out=self._ws_get(ws, ("dX", i), (k, n, op.W[2][0]),
                                                                        self.compute_dtype))
            elif i > first:
                flat = lambda a: xp.reshape(a, (k * n, u))  # noqa: E731
                dH = xp.reshape(op.backward(be, flat(dH), flat(H_in), flat(A), out=flat(dH)), (k, n, u))
        if in_place:
            return None
        order = sorted(pieces)
        return xp.concat([xp.reshape(pieces[s], (int(pieces[s].shape[0]), -1)) for s in order], axis=1)

    # ---------------------------------------------------------------- predict
    def predict_proba(self, X: Any, combine: str | None = "mean") -> np.ndarray:
        """Output activations: the members' mean (n, c), or each member's (K, n, c).

        Parameters
        ----------
        X : array_like, shape (n, n_features_in_)
        combine : {"mean", None}
        """
        return self._predict(X, combine, labels=False)

    def predict(self, X: Any, combine: str | None = "mean") -> np.ndarray:
        """Predictions from the members' averaged outputs, or each member's (``combine=None``).

        softmax: class indices (the arg-max of the mean probabilities, a soft
        vote); logistic: labels ``> 0.5``; other outputs: values (one output:
        shape (n,), or (K, n) per member).
        """
        return self._predict(X, combine, labels=True)

    def _predict(self, X: Any, combine: str | None, labels: bool) -> np.ndarray:
        if combine not in ("mean", None):
            raise ValueError(f"combine must be 'mean' or None, got {combine!r}")
        be = self.backend
        X = check_X(X, be, self.n_features_in_, dtype=self.compute_dtype)
        n = X.shape[0]
        K, c = self.n_members, self.n_outputs_
        P = np.empty((K, n, c), dtype=self.dtype)
        step = max(1, PREDICT_CHUNK // max(1, K))
        with self.compute_context(min(n, step), split=False), np.errstate(over="ignore", invalid="ignore"):
            for a, b in iter_chunks(n, step):
                _, Pc = self.infer(be.asarray(X[a:b, :], dtype=self.compute_dtype))
                P[:, a:b, :] = be.to_numpy(Pc)
        if combine == "mean":
            keep = ~self.diverged_
            out = P[keep].mean(axis=0) if keep.any() else P.mean(axis=0)
        else:
            out = P
        if not labels:
            return out
        name = self.output.name
        if name == "softmax":
            return np.argmax(out, axis=-1)
        if name == "logistic":
            lab = (out > 0.5).astype(np.int64)
            return lab[..., 0] if c == 1 else lab
        return out[..., 0] if c == 1 else out

    # -------------------------------------------------------------------- fit
    def fit(
        self,
        X: Any,
        y: Any = None,
        epochs: int = 10,
        batch_size: int = 32,
        optimizer: str | Sequence[Optimizer] | StackedOptimizer = "adam",
        *,
        lr: Any = None,
        l2: Any = 0.0,
        momentum: Any = None,
        nesterov: bool = False,
        beta_1: Any = None,
        beta_2: Any = None,
        epsilon: Any = None,
        schedule: Any = None,
        rows: Sequence[Any] | None = None,
        sample_weight: Any = None,
        validation_data: tuple[Any, ...] | None = None,
        shuffle: bool = True,
        max_epochs: Any = None,
        callbacks: Sequence[Callback] = (),
        member_callbacks: Sequence[Callback] | Sequence[Sequence[Callback]] | None = None,
        verbose: int = 0,
    ) -> History:
        """Train every member, each with its own settings, data and stopping.

        Settings marked "per member" take one value for all or a sequence of K.

        Parameters
        ----------
        X : array_like, shape (n, n_features_in_), a store, or a stream of batches
            The forms :meth:`Sequential.fit` takes: streamed data (a zarr, HDF5 or
            Dask array, a re-iterable of batches) trains every member on the same
            minibatches in the same order (no ``rows`` or per-member weights).
        y : array_like, optional
            Targets as :meth:`Sequential.fit` takes them (None for a stream).
        epochs : int
            Epochs of the stack (each member stops earlier if told to).
        batch_size : int
        optimizer : {"adam", "sgd"}, sequence of K optimizers, or StackedOptimizer
        lr, l2, momentum, beta_1, beta_2, epsilon : float or sequence, per member
            The learning rate, the L2 penalty (``alpha``'s scaling), SGD's
            momentum and Adam's settings (defaults: the optimizers').
        nesterov : bool
            SGD only; one value for the stack.
        schedule : str, Schedule or sequence, per member
            The rate policy (e.g. ``"invscaling"``, ``mlpx.InverseScaling(0.25)``);
            each member gets its own copy.
        rows : sequence of K integer arrays, optional
            Member ``k`` trains on rows ``rows[k]`` only (cross-validation folds,
            bootstrap samples); default: every member on every row.
        sample_weight : array_like, shape (n,) or (K, n), optional
            Shared, or one row per member (zeros leave rows out of a member's loss
            and gradient; they still take places in its minibatches: use ``rows``
            to train on a subset exactly as a fit on that subset would).
        validation_data : (X_val, y_val) or (X_val, y_val, w_val), optional
            Scored for every member after each epoch (``val_loss``,
            ``val_accuracy`` / ``val_r2``).
        shuffle : bool
            Each member reshuffles its rows every epoch with its own generator
            (the one ``Sequential(seed=seeds[k]).fit`` shuffles with).
        max_epochs : int or sequence, per member, optional
            Freeze a member after this many epochs.
        callbacks : sequence of Callback
            Callbacks of the stack: they see vector logs (one value per member).
        member_callbacks : sequence of Callback, or K sequences
            Each member's own callbacks (one list is copied for every member),
            e.g. ``[mlpx.EarlyStopping(patience=5)]``: they see the member's logs
            as floats, and stopping freezes that member only.
        verbose : int

        Returns
        -------
        History
            Per-epoch logs; every value an array of shape (K,) (NaN for members
            that were frozen).

        Raises
        ------
        InvalidParameterError, ValueError, TypeError
            A bad value, or a vector whose length is not K.
        """
        K, be = self.n_members, self.backend
        epochs = check_int("epochs", epochs, low=1)
        batch_size = check_int("batch_size", batch_size, low=1)
        loss = self.resolve_loss(None)
        # Stores and streams of batches (mlpx.streams): every member trains on every row.
        fed = streams.stack_source(self, X, y, sample_weight, rows, batch_size, shuffle, validation_data, MemberRows,
                                   loss.name)
        if fed is None:
            Xh = check_X(X, be, self.n_features_in_, dtype=self.compute_dtype)
            if not isinstance(Xh, np.ndarray):
                Xh = be.to_numpy(Xh)
            n = Xh.shape[0]
            Y = encode_targets(y, self.output.name, self.n_outputs_, n, dtype=self.dtype, loss=loss.name)
            member_rows = _member_rows(rows, K, n)
            w_rows, w_shared = _member_weights(sample_weight, K, n)
            if w_rows is not None:
                # Per-member weights: each member gets its own copy of the data set's rows.
                Xh = np.concatenate([Xh] * K)
                Y = np.concatenate([Y] * K)
                w_all = w_rows.reshape(-1)
                member_rows = [r + k * n for k, r in enumerate(member_rows)]
            else:
                w_all = w_shared
        opt = _stacked_optimizer(optimizer, K, lr=lr, momentum=momentum, nesterov=nesterov, beta_1=beta_1,
                                 beta_2=beta_2, epsilon=epsilon, schedule=schedule)
        l2v = np.array(_vector("l2", l2, K, low=0.0))
        if fed is None:
            source = MemberBatches(be, Xh, Y, w_all, member_rows, batch_size, self.compute_dtype,
                                   target_dtype=self.dtype)
        holdout = None
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
                raise ValueError("validation_data must be (X_val, y_val) or (X_val, y_val, w_val)")
            Xv = check_X(validation_data[0], be, self.n_features_in_, name="X_val", dtype=self.compute_dtype)
            Xv = Xv if isinstance(Xv, np.ndarray) else be.to_numpy(Xv)
            Yv = encode_targets(validation_data[1], self.output.name, self.n_outputs_, Xv.shape[0], dtype=self.dtype,
                                loss=loss.name)
            wv = None if len(validation_data) == 2 else _member_weights(validation_data[2], 1, Xv.shape[0])[1]
            holdout = MemberHoldout(be, Xv, Yv, wv, [np.arange(Xv.shape[0])] * K, self.compute_dtype, self.dtype)
        gens = [np.random.default_rng(None if s is None else [int(s), 1]) for s in self.seeds]
        if fed is None:
            sizes = [r.size for r in source.rows]
            order = self.member_order([(lambda g=g, m=m: g.permutation(m)) if shuffle else None
                                       for g, m in zip(gens, sizes)])
        else:
            source, order, weighted = fed
        per_member = _member_callback_lists(member_callbacks, K)
        self.diverged_[:] = False
        for k, cbs_k in enumerate(per_member):
            cbs_k.insert(0, _Divergence(self, k))
        if max_epochs is not None:
            for cbs, e in zip(per_member, _vector("max_epochs", max_epochs, K, integer=True)):
                cbs.append(StopAfter(int(e)))
        cbs = [MemberCallbacks(per_member)] + check_callbacks(callbacks)
        if verbose:
            cbs.append(_StackProgress(verbose))
        self.active[:] = True
        with self.compute_context(batch_size), np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return train(self, source, optimizer=opt, loss=loss, reducer=LocalReducer(be), epochs=epochs,
                         l2=l2v, order=order, callbacks=cbs, holdout=holdout,
                         count_correct=self.output.name in ("softmax", "logistic") and (
                             w_all is None if fed is None else not weighted),
                         raise_on_divergence=False)

    def member_order(self, orders: Sequence[Callable[[], Any] | None]) -> Callable[[], list[Any]]:
        """The loop's ``order``: each active member's own order; frozen members none.

        Parameters
        ----------
        orders : sequence of K callables or None
            Member ``k``'s permutation for the next epoch (None: its rows in order).
        """
        orders = list(orders)
        if len(orders) != self.n_members:
            raise ValueError(f"{len(orders)} orders for {self.n_members} members")
        empty = np.zeros(0, dtype=np.int64)

        def order() -> list[Any]:
            return [(empty if not self.active[k] else (None if o is None else o())) for k, o in enumerate(orders)]

        return order

    def __repr__(self) -> str:
        return (f"<Stack of {self.n_members} x {self.n_features_in_}->{self.n_outputs_} on {self.backend.name}, "
                f"{self.dtype}, {int(self.active.sum())} active>")


def _join(xp: Any, parts: list[Any]) -> Any:
    return parts[0] if len(parts) == 1 else xp.concat(parts, axis=0)


def _split(K: int, n: int) -> list[slice]:
    bounds = np.linspace(0, K, n + 1).round().astype(int)
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def _plan(template: Sequential) -> list[Any]:
    """The stack's layers from the template's: Dense slots and activation layers."""
    slots = {(i, name): (a, b, shape) for i, name, shape, a, b in template._slots}
    ops: list[Any] = []
    for i, layer in enumerate(template.layers):
        if isinstance(layer, Dense):
            ops.append(_Dense(slots[(i, "W")], slots[(i, "b")], layer.activation))
        elif isinstance(layer, ActivationLayer):
            if layer.activation.name == "softmax" and i < len(template.layers) - 1:
                pass  # row-wise over the last axis of the 2-D views: still correct
            ops.append(layer.activation)
        else:
            raise ValueError(
                f"a stack has Dense and activation layers only; layer {i} is {type(layer).__name__} "
                f"(fit networks with dropout one by one)")
    if not any(isinstance(op, _Dense) for op in ops):
        raise ValueError("a stack needs at least one Dense layer")
    return ops


def _draw(template: Sequential, seed: int | None) -> np.ndarray:
    """The flat starting weights ``Sequential(template layers, seed=seed)`` draws (host, float64)."""
    rng = np.random.default_rng(seed)
    host = np.zeros(template.n_params)
    drawn = {i: layer.init_params(rng) for i, layer in enumerate(template.layers)}
    for i, name, _shape, a, b in template._slots:
        host[a:b] = np.ravel(drawn[i][name])
    return host


def _vector(name: str, value: Any, K: int, low: float | None = None, integer: bool = False) -> list[Any]:
    """A per-member setting: one value for all, or a sequence of exactly K."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or np.ndim(value) == 0:
        values = [value] * K
    else:
        values = list(np.asarray(value).tolist()) if isinstance(value, np.ndarray) else list(value)
        if len(values) != K:
            raise ValueError(f"{name} has {len(values)} values for a stack of {K} members")
    if integer:
        return [check_int(f"{name}[{k}]", v, low=1) for k, v in enumerate(values)]
    return [check_real(f"{name}[{k}]", v, low) for k, v in enumerate(values)]


def _stacked_optimizer(spec: Any, K: int, **settings: Any) -> StackedOptimizer:
    if isinstance(spec, StackedOptimizer):
        if spec.n_members != K:
            raise ValueError(f"the optimizer has {spec.n_members} members, the stack {K}")
        return spec
    if not isinstance(spec, str):
        return StackedOptimizer(spec)
    name = spec.lower()
    if name not in ("adam", "sgd"):
        raise ValueError(f"a stack trains with 'adam' or 'sgd', got {spec!r}")
    keys = {"adam": ("lr", "beta_1", "beta_2", "epsilon"), "sgd": ("lr", "momentum")}[name]
    unused = [k for k, v in settings.items() if v is not None and k not in keys + ("schedule", "nesterov")
              and not (k == "nesterov" and v is False)]
    if unused:
        raise ValueError(f"{sorted(unused)} do not apply to {name!r}")
    vectors = {k: _vector(k, settings[k], K) for k in keys if settings.get(k) is not None}
    scheds = settings.get("schedule")
    if isinstance(scheds, (str, Schedule)) or scheds is None:
        scheds = [scheds] * K
    scheds = list(scheds)
    if len(scheds) != K:
        raise ValueError(f"schedule has {len(scheds)} values for a stack of {K} members")
    members = []
    for k in range(K):
        kw = {key: vals[k] for key, vals in vectors.items()}
        sched = copy.deepcopy(scheds[k]) if isinstance(scheds[k], Schedule) else scheds[k]
        if name == "sgd":
            kw["nesterov"] = settings.get("nesterov", False)
        members.append(get_optimizer(name, schedule=sched, **kw))
    return StackedOptimizer(members)


def _member_rows(rows: Any, K: int, n: int) -> list[np.ndarray]:
    if rows is None:
        return [np.arange(n)] * K
    if isinstance(rows, np.ndarray) and rows.ndim == 1:
        raise ValueError("rows must be a sequence of K index arrays, one per member")
    rows = list(rows)
    if len(rows) != K:
        raise ValueError(f"rows has {len(rows)} index arrays for a stack of {K} members")
    out = []
    for k, r in enumerate(rows):
        r = np.asarray(r)
        if r.dtype == bool:
            if r.shape != (n,):
                raise ValueError(f"rows[{k}] as a mask must have shape ({n},), got {r.shape}")
            r = np.flatnonzero(r)
        if r.ndim != 1 or r.dtype.kind not in "iu" or r.size == 0:
            raise ValueError(f"rows[{k}] must be a non-empty 1-D array of row indices (or a boolean mask)")
        if r.min() < 0 or r.max() >= n:
            raise ValueError(f"rows[{k}] has indices outside 0..{n - 1}")
        out.append(r.astype(np.int64))
    return out


def _member_weights(w: Any, K: int, n: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(per-member weights (K, n) or None, shared weights (n,) or None), checked."""
    if w is None:
        return None, None
    a = np.asarray(to_host(w), dtype=np.float64)
    if a.shape not in ((n,), (K, n)):
        raise ValueError(f"sample_weight must have shape ({n},) or ({K}, {n}), got {a.shape}")
    if not np.isfinite(a).all() or (a < 0).any():
        raise ValueError("sample_weight must be finite and non-negative")
    if a.ndim == 1:
        if a.sum() <= 0:
            raise ValueError("sample_weight sums to zero: nothing to train on")
        return None, a
    bad = np.flatnonzero(a.sum(axis=1) <= 0)
    if bad.size:
        raise ValueError(f"the sample weights of members {bad.tolist()} sum to zero: nothing to train on")
    return a, None


def _member_callback_lists(spec: Any, K: int) -> list[list[Callback]]:
    if spec is None:
        return [[] for _ in range(K)]
    spec = list(spec)
    if spec and all(isinstance(c, Callback) for c in spec):
        return [[copy.deepcopy(c) for c in spec] for _ in range(K)]
    if len(spec) != K:
        raise ValueError(f"member_callbacks has {len(spec)} lists for a stack of {K} members")
    return [check_callbacks(c) for c in spec]
