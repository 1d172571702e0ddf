"""A member's whole training step as one compiled CPU loop.

A network of K members (:class:`~mlpx.network.Network`; a single network is K = 1)
of small layers on the CPU spends its time between the matrix products: every phase
of a step (a product, a bias and activation pass, the loss, a backward pass, the
update) is a Python call, and in a stack each phase goes over all of a thread's
members before the next starts, so each member's weights, activations and optimizer
state leave the caches between phases. Here one compiled call (numba, without the
GIL) runs members one after another, each member's steps (one, or a block of an
epoch's: :meth:`~mlpx.network_step.NetworkStep.train_epoch`) from gather to update while its
data are in the core's cache, with the products on the BLAS ``numpy.matmul`` calls
(:func:`mlpx.backends.blas.numpy_cblas`), called as ``numpy.matmul`` calls it.

The per-row pieces (bias and activation, bias gradient: :mod:`mlpx.layers`; the
losses: :mod:`mlpx.losses`; the hit count: :mod:`mlpx.metrics`; the updates:
:mod:`mlpx.optimizers`) are defined once, beside their phase-by-phase kernels, whose
numba variants run them too, so both paths give the same bits;
``tests/test_member_step.py`` checks that they do.

What the loop covers (:func:`member_step_plan` says why not, otherwise): the NumPy
backend with numba and NumPy's bundled BLAS; float32 or float64 without mixed
precision; Dense layers with any activation of :data:`mlpx.activations.ACTIVATIONS`
(GELU, whose derivative reads its input, keeps ``Z + b`` beside its output); every
canonical loss; every optimizer; every dimension of every product at least 2 (NumPy
hands products with a dimension of 1 to other BLAS routines). Not dropout: its masks
come from each member's generator on the host, drawn step by step as the
phase-by-phase path draws them.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from mlpx.activations import get_activation
from mlpx.backends import Backend
from mlpx.backends.blas import CBLAS_NO_TRANS, CBLAS_ROW_MAJOR, CBLAS_TRANS, NumpyCblas, numpy_cblas
from mlpx.backends.jit import fetch_add, lazy_njit, numba_enabled
from mlpx.layers import bias_activation_rows, bias_gradient_rows
from mlpx.losses import LOSS_CODES, loss_rows
from mlpx.metrics import hit_rows
from mlpx.updates import adam_row, rmsprop_row, sgd_row

__all__ = ["MemberStepPlan", "RULE_CODES", "member_step_plan", "run_member_steps"]

#: The rules the loop updates with, by optimizer class name.
RULE_CODES = {"Adam": 0, "AdamW": 0, "SGD": 1, "RMSprop": 2}


class MemberStepPlan:
    """What :func:`run_member_steps` needs of a network, decided once.

    Attributes
    ----------
    layers : ndarray of int64, shape (L, 6)
        Per Dense layer: weight offset, bias offset (into a member's flat
        parameters), fan-in, fan-out, the activation's code
        (:attr:`~mlpx.activations.Activation.code`) and whether ``Z + b`` is kept
        beside the output (1: the derivative reads it).
    width : int
        The widest layer (fan-in or fan-out).
    cblas : NumpyCblas
    """

    #: The canonical losses the loop computes (:data:`mlpx.losses.LOSS_CODES`).
    losses = frozenset(LOSS_CODES)

    def __init__(self, layers: np.ndarray, cblas: NumpyCblas) -> None:
        self.layers = layers
        self.cblas = cblas
        self.width = int(max(layers[:, 2].max(), layers[:, 3].max()))
        #: Activations per row of a step: every layer's output, and ``Z + b`` where kept.
        self.row_size = int((layers[:, 3] * (1 + layers[:, 5])).sum())


def member_step_plan(be: Backend, dense: Sequence[tuple[tuple[int, int, tuple[int, ...]],
                                                        tuple[int, int, tuple[int, ...]], str] | None],
                     dtype: str, mixed: bool) -> tuple[MemberStepPlan | None, str]:
    """The compiled step's plan for a network, or None and the reason.

    Parameters
    ----------
    be : Backend
    dense : sequence
        The network's layers in order: ``(W slot, b slot, activation name)`` per
        Dense layer, None for any other operation. A slot is ``(start, stop, shape)``.
    dtype : str
    mixed : bool
        Mixed precision (the loop computes in one dtype).
    """
    if "numpy" not in be.kinds or be.is_gpu:
        return None, "the compiled step runs on the NumPy backend"
    if not numba_enabled():
        return None, "numba is not installed (pip install 'mlpx[fast]') or MLPX_NUMBA=0"
    if mixed or dtype not in ("float32", "float64"):
        return None, f"the compiled step computes in float32 or float64, not {dtype} or mixed precision"
    cblas = numpy_cblas()
    if cblas is None:
        return None, "NumPy links a BLAS other than its bundled OpenBLAS"
    rows = []
    for op in dense:
        if op is None:
            return None, ("layers other than Dense: an activation layer of its own, or dropout (each member's "
                          "masks are drawn on the host, step by step)")
        (wa, _wb, shape), (ba, _bb, _), name = op
        act = get_activation(name)
        if act.code is None:
            return None, f"activation {name!r} (the compiled step has those of mlpx.activations)"
        rows.append((wa, ba, int(shape[0]), int(shape[1]), act.code, int(not act.from_output)))
    layers = np.array(rows, dtype=np.int64).reshape(-1, 6)
    if (layers[:, 2:4] < 2).any():
        return None, "a layer of width 1 (NumPy multiplies it with other BLAS routines)"
    return MemberStepPlan(layers, cblas), ""


def run_member_steps(plan: MemberStepPlan, queue: np.ndarray, counter: np.ndarray, X: np.ndarray, Y: np.ndarray,
                     index: np.ndarray, widths: np.ndarray, groups: np.ndarray, w: np.ndarray, dev: np.ndarray,
                     params: np.ndarray, grads: np.ndarray, state: Sequence[np.ndarray], rule: str, n_weights: int,
                     loss: str, penalised: bool, ws: dict[str, Any], out: dict[str, np.ndarray],
                     count_correct: bool, output: str) -> None:
    """S training steps of the members in ``queue``: gather, forward, loss, backward, L2, update.

    Each member takes its S steps one after another (the members are independent
    within an epoch), so its weights and optimizer state stay in the core's cache.
    Several threads may call this at once with the same ``queue`` and ``counter``:
    each takes the next member from the queue until it is empty, so a thread that
    starts late simply steps fewer members.

    Parameters
    ----------
    plan : MemberStepPlan
    queue : ndarray of int64, shape (q,)
        The members to step (those with rows).
    counter : ndarray of int64, shape (1,)
        Shared by the threads: the next place in ``queue`` (0 to start).
    X, Y : ndarrays, shapes (N, f) and (N, c)
        The data set (C-contiguous, in the parameters' dtype).
    index : ndarray of int64, shape (S, K, b)
        Each member's rows of each step.
    widths : ndarray of int64, shape (S,)
        How many of its ``b`` places step ``s`` takes.
    groups : ndarray of int64, shape (K,)
        Members with one label have the same rows (with S = 1, gathered once in a run).
    w : ndarray, shape (S, K, b)
        Row weights (0: padding).
    dev : ndarray, shape (S, 3 + r, K)
        Per step, rows ``1/d``, ``l2/d``, loss scale, then the optimizer's ``r`` rows
        (:meth:`~mlpx.optimizers.Optimizer.vectors`); ``1/d = 0``: the member
        has no rows in that step.
    params, grads : ndarrays, shape (K, n_params)
    state : sequence of ndarrays, shape (K, n_params)
        The rule's state: Adam's ``m`` and ``v``, SGD's velocity, RMSprop's ``s``.
    rule : str
        The optimizer's class name, a key of :data:`RULE_CODES`.
    n_weights : int
    loss : str
        A key of :data:`LOSS_CODES`.
    penalised : bool
        Whether ``Σ W²`` is needed (the penalty's loss term).
    ws : dict of str -> ndarray
        The calling thread's own workspaces (allocated here on first use), and under
        ``"key"`` the batch width and dtype they were allocated for.
    out : dict
        ``"loss"``, ``"sq"``, ``"hits"``: arrays of shape (S, K); the members
        stepped here are written.
    count_correct : bool
        Also count each member's rows of positive weight predicted right (``hits``),
        as :func:`~mlpx.metrics.correct_count` counts them.
    output : str
        The output activation's name (softmax: a hit is the arg-max; else every
        logit's sign agrees with ``y > 0.5``).
    """
    dtype = params.dtype
    b = int(index.shape[2])
    key = (b, dtype.str)
    if ws.get("key") != key:
        L = plan.layers
        ws.clear()
        ws["key"] = key
        ws["Xg"] = np.empty(b * int(X.shape[1]), dtype=dtype)
        ws["Yg"] = np.empty(b * int(Y.shape[1]), dtype=dtype)
        ws["acts"] = np.empty(b * plan.row_size, dtype=dtype)
        ws["starts"] = np.empty(len(L), dtype=np.int64)
        ws["dA"] = np.empty(b * plan.width, dtype=dtype)
        ws["dB"] = np.empty(b * plan.width, dtype=dtype)
        ws["acc"] = np.empty(plan.width, dtype=dtype)
        ws["consts"] = np.array([0, 1], dtype=dtype)
    code = RULE_CODES[rule]
    s2 = state[1] if len(state) > 1 else state[0]
    name = dtype.name
    _steps()(plan.cblas.gemm[name], plan.cblas.dot[name], queue, counter, X, Y, index, widths, groups, w, dev, params,
             grads, state[0], s2, plan.layers, LOSS_CODES[loss], code, int(n_weights), bool(penalised),
             bool(count_correct), output == "softmax", ws["consts"], ws["Xg"], ws["Yg"], ws["acts"], ws["starts"],
             ws["dA"], ws["dB"], ws["acc"], out["loss"], out["sq"], out["hits"])


_fetch_add: Any = None


def _steps() -> Any:
    """The compiled loop, with its queue's atomic counter built first (both on first use)."""
    global _fetch_add
    if _fetch_add is None:
        _fetch_add = fetch_add()
    return _member_steps


@lazy_njit
def _member_steps(gemm: Callable[..., None], dot: Callable[..., float], queue: np.ndarray, counter: np.ndarray,
                  X: np.ndarray, Y: np.ndarray, index: np.ndarray, widths: np.ndarray, groups: np.ndarray,
                  w: np.ndarray, dev: np.ndarray, params: np.ndarray, grads: np.ndarray, s1: np.ndarray,
                  s2: np.ndarray, layers: np.ndarray, loss_code: int, opt_code: int, nw: int, penalised: bool,
                  count_correct: bool, softmax: bool, consts: np.ndarray, Xg: np.ndarray, Yg: np.ndarray,
                  acts: np.ndarray, starts: np.ndarray, dA: np.ndarray, dB: np.ndarray, acc: np.ndarray,
                  loss: np.ndarray, sq: np.ndarray, hits: np.ndarray) -> None:  # pragma: no cover - compiled
    S = index.shape[0]
    f0 = X.shape[1]
    c = Y.shape[1]
    L = layers.shape[0]
    P = params.shape[1]
    isz = params.itemsize
    zero, one = consts[0], consts[1]
    p_base = params.ctypes.data
    g_base = grads.ctypes.data
    acts_base = acts.ctypes.data
    gathered = -1
    while True:
        q = _fetch_add(counter, 1)
        if q >= queue.size:
            break
        k = queue[q]
        for s in range(S):  # a member's steps in turn: its weights and state stay in the core's cache
            b = widths[s]
            inv_d = dev[s, 0, k]
            if not inv_d > 0:  # no rows this step
                loss[s, k] = zero
                sq[s, k] = zero
                hits[s, k] = zero
                continue
            # ---- the member's rows (one step: shared by a run of members with one label)
            if S > 1 or gathered < 0 or groups[k] != groups[gathered]:  # (S = 1: one width)
                for i in range(b):
                    r = index[s, k, i]
                    for j in range(f0):
                        Xg[i * f0 + j] = X[r, j]
                    for j in range(c):
                        Yg[i * c + j] = Y[r, j]
                gathered = k
            # ---- forward: Z = H W (BLAS), then Z + b and the activation; a layer's
            # block of acts holds its output (in place of Z), after Z + b where kept
            h_addr = Xg.ctypes.data
            off = 0
            for ly in range(L):
                wo, fi, fo, keep = layers[ly, 0], layers[ly, 2], layers[ly, 3], layers[ly, 5]
                bo, code = layers[ly, 1], layers[ly, 4]
                starts[ly] = off
                z = acts[off : off + b * fo].reshape((b, fo))
                gemm(CBLAS_ROW_MAJOR, CBLAS_NO_TRANS, CBLAS_NO_TRANS, b, fo, fi, one, h_addr, fi,
                     p_base + (k * P + wo) * isz, fo, zero, z.ctypes.data, fo)
                off += b * fo * keep
                h = acts[off : off + b * fo].reshape((b, fo))
                bias_activation_rows(z, params[k, bo : bo + fo], h, acc, code, keep == 0)
                h_addr = h.ctypes.data
                off += b * fo
            out_off = off - b * c
            # ---- loss and the output delta into dA (the phase kernels' own rows)
            Z = acts[out_off : out_off + b * c].reshape((b, c))
            Yk = Yg[: b * c].reshape((b, c))
            dZ = dA[: b * c].reshape((b, c))
            acc_k = loss_rows(loss_code, Z, Yk, w[s, k, :b], inv_d, dZ, acc, True)
            loss[s, k] = acc_k * inv_d
            hits[s, k] = hit_rows(Z, Yk, w[s, k, :b], softmax) if count_correct else zero
            # ---- backward: dZ = dH ⊙ g'(Z) and db in one pass, dW = Hᵀ dZ, dH = dZ Wᵀ
            d_cur, d_next = dA, dB
            for ly in range(L - 1, -1, -1):
                wo, fi, fo, keep = layers[ly, 0], layers[ly, 2], layers[ly, 3], layers[ly, 5]
                bo, code = layers[ly, 1], layers[ly, 4]
                z_off = starts[ly]
                h_off = z_off + b * fo * keep
                d = d_cur[: b * fo].reshape((b, fo))
                bias_gradient_rows(d, acts[z_off : z_off + b * fo].reshape((b, fo)),
                                   acts[h_off : h_off + b * fo].reshape((b, fo)), grads[k, bo : bo + fo], acc, code)
                if ly == 0:
                    h_addr = Xg.ctypes.data
                else:
                    h_addr = acts_base + (starts[ly - 1] + b * fi * layers[ly - 1, 5]) * isz
                gemm(CBLAS_ROW_MAJOR, CBLAS_TRANS, CBLAS_NO_TRANS, fi, fo, b, one, h_addr, fi, d_cur.ctypes.data, fo,
                     zero, g_base + (k * P + wo) * isz, fo)
                if ly > 0:
                    gemm(CBLAS_ROW_MAJOR, CBLAS_NO_TRANS, CBLAS_TRANS, b, fi, fo, one, d_cur.ctypes.data, fo,
                         p_base + (k * P + wo) * isz, fo, zero, d_next.ctypes.data, fi)
                    d_cur, d_next = d_next, d_cur
            # ---- Σ W² before the step, then the L2 term and the update (the stacked optimizer's loops)
            sq[s, k] = dot(nw, p_base + k * P * isz, 1, p_base + k * P * isz, 1) if penalised else zero
            cf = dev[s, 1, k]
            if opt_code == 0:
                if dev[s, 10, k] > 0:
                    adam_row(params, grads, s1, s2, k, nw, penalised, cf, dev[s, 3, k], dev[s, 4, k], dev[s, 5, k],
                             dev[s, 6, k], dev[s, 7, k], dev[s, 8, k], dev[s, 9, k])
            elif opt_code == 1:
                if dev[s, 6, k] > 0:
                    sgd_row(params, grads, s1, k, nw, penalised, cf, dev[s, 3, k], dev[s, 4, k], dev[s, 5, k] > 0)
            elif dev[s, 7, k] > 0:
                rmsprop_row(params, grads, s1, k, nw, penalised, cf, dev[s, 3, k], dev[s, 4, k], dev[s, 5, k],
                            dev[s, 6, k])
