"""Losses over K members at once, each paired with the output activation whose
canonical link it is.

Every loss kernel takes the logits of K members, ``Z`` of shape (K, n, c), their
targets ``Y`` (K, n, c), row weights ``w`` (K, n) (the sample weight; 0 for a padding
row; None for unit weights) and each member's ``1/d`` (K,), and returns each
member's loss ``Σ_i w_i l_i / d`` (K,) and the output delta ``w_i dl_i / d``. A single
network is K = 1. For each canonical pair the derivative with respect to the
*logits* collapses to the same simple form, so no softmax Jacobian is ever formed:

=====================  ==========  =============================================  ==========================
loss                   output      per-sample loss  l_i                           delta dL/dZ
=====================  ==========  =============================================  ==========================
cross_entropy          softmax     logsumexp(z_i) − Σ_j y_ij z_ij                 w_i (Ŷ − Y) / d
binary_cross_entropy   logistic    Σ_j softplus(z_ij) − y_ij z_ij                 w_i (Ŷ − Y) / d
squared_error          identity    ½ Σ_j (z_ij − y_ij)²                           w_i (Ŷ − Y) / d
poisson                exp         Σ_j y log(y/ŷ) − y + ŷ                         w_i (Ŷ − Y) / d
=====================  ==========  =============================================  ==========================

``d = n`` by default; with sample weights ``d = Σ_i w_i``, the scaling scikit-learn
uses. Cross-entropies are computed from the logits (log-sum-exp, softplus), so they
stay finite where probabilities round to 0 or 1. A member whose ``1/d`` is 0 (no
rows in the step) has loss 0, even where its outputs overflowed (0 · inf is NaN).

Any loss also works on any output activation whose values lie in its domain, by
the chain rule: the loss is computed on the outputs ``Ŷ = g(Z)``, its derivative
``∂L/∂Ŷ`` is formed, and the activation's backward turns it into
``dZ = ∂L/∂Ŷ ⊙ g'(Z)`` (:class:`OutputLoss`; e.g. a sigmoid output trained with
squared error). The canonical pairs keep their one-kernel shortcut.

=====================  ================================  ==================================
loss on outputs Ŷ      per-sample loss l_i               ∂l_i/∂ŷ_ij, outputs allowed
=====================  ================================  ==================================
squared_error          ½ Σ_j (ŷ_ij − y_ij)²              ŷ − y; any output
cross_entropy          −Σ_j y_ij log ŷ_ij                −y/ŷ; softmax, logistic, exp
binary_cross_entropy   −Σ_j y log ŷ + (1−y) log(1−ŷ)     (ŷ − y)/(ŷ(1 − ŷ)); logistic, softmax
poisson                Σ_j ŷ − y log ŷ + y log y − y     1 − y/ŷ; exp, softmax, logistic
=====================  ================================  ==================================

Where the output reaches a boundary of the domain (a probability that rounds to
0), the logarithm's argument is clipped to the dtype's smallest normal number, so
the loss stays finite.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, cast

import numpy as np

from mlpx.backends import Backend, BackendError, Kernel, kernel
from mlpx.backends.cuda import ACCUMULATOR_PREAMBLE, lazy_elementwise
from mlpx.backends.jit import lazy_njit

if TYPE_CHECKING:
    from mlpx.activations import Activation

__all__ = ["LOSSES", "OUTPUT_LOSS", "Loss", "OutputLoss", "get_loss", "l2_penalty", "pair"]

Array = Any
#: Per-row losses (..., n) and the unscaled delta (..., n, c) of ``(xp, Z, Y)``.
_Rows = Callable[[Any, Array, Array], "tuple[Array, Array]"]
#: A loss kernel's definition: ``(xp, Z, Y, w, inv_d, dZ) -> (loss, delta)``.
_LossFn = Callable[[Any, Array, Array, "Array | None", Array, "Array | None"], "tuple[Array, Array | None]"]


# --------------------------------------------------------- per-row pieces
# Each returns the per-row losses (..., n) and the unscaled delta (..., n, c).
def _ce_rows(xp: Any, Z: Array, Y: Array) -> tuple[Array, Array]:
    m = xp.max(Z, axis=-1, keepdims=True)
    E = xp.exp(Z - m)
    s = xp.sum(E, axis=-1, keepdims=True)
    lse = xp.log(s) + m
    return xp.sum(Y * (lse - Z), axis=-1), E / s - Y


def _bce_rows(xp: Any, Z: Array, Y: Array) -> tuple[Array, Array]:
    e = xp.exp(-xp.abs(Z))  # softplus(z) = max(z, 0) + log1p(exp(-|z|)), never overflows
    softplus = xp.where(Z > 0, Z, xp.zeros_like(Z)) + xp.log1p(e)
    delta = xp.where(Z >= 0, 1.0 / (1.0 + e), e / (1.0 + e)) - Y
    return xp.sum(softplus - Y * Z, axis=-1), delta


def _se_rows(xp: Any, Z: Array, Y: Array) -> tuple[Array, Array]:
    R = Z - Y
    return 0.5 * xp.sum(R * R, axis=-1), R


def _ylogy(xp: Any, Y: Array) -> Array:
    pos = Y > 0
    return xp.where(pos, Y * xp.log(xp.where(pos, Y, xp.ones_like(Y))), xp.zeros_like(Y))


def _poisson_rows(xp: Any, Z: Array, Y: Array) -> tuple[Array, Array]:
    P = xp.exp(Z)
    return xp.sum(_ylogy(xp, Y) - Y * Z - Y + P, axis=-1), P - Y


def _clip(xp: Any, P: Array) -> Array:
    tiny = xp.finfo(P.dtype).smallest_normal
    return xp.where(P > tiny, P, xp.full_like(P, tiny))


def _se_out_rows(xp: Any, P: Array, Y: Array) -> tuple[Array, Array]:
    return _se_rows(xp, P, Y)


def _ce_out_rows(xp: Any, P: Array, Y: Array) -> tuple[Array, Array]:
    Pc = _clip(xp, P)
    return -xp.sum(Y * xp.log(Pc), axis=-1), -Y / Pc


def _bce_out_rows(xp: Any, P: Array, Y: Array) -> tuple[Array, Array]:
    Pc, Qc = _clip(xp, P), _clip(xp, 1.0 - P)
    return -xp.sum(Y * xp.log(Pc) + (1.0 - Y) * xp.log(Qc), axis=-1), (P - Y) / (Pc * Qc)


def _poisson_out_rows(xp: Any, P: Array, Y: Array) -> tuple[Array, Array]:
    Pc = _clip(xp, P)
    return xp.sum(P - Y * xp.log(Pc) + _ylogy(xp, Y) - Y, axis=-1), 1.0 - Y / Pc


def _scaled(xp: Any, per_row: Array, delta: Array | None, w: Array | None,
            inv_d: Array) -> tuple[Array, Array | None]:
    """Each member's ``Σ w l · (1/d)`` (0 without rows) and ``(δ · w) · (1/d)``."""
    K = per_row.shape[0]
    total = xp.sum(per_row if w is None else per_row * w, axis=1) * inv_d
    # A member without rows adds nothing, even once its outputs overflowed (its
    # padding rows' 0 · inf is NaN); the compiled step skips it alike.
    total = xp.where(inv_d > 0, total, xp.zeros_like(total))
    if delta is None:
        return total, None
    if w is not None:
        delta = delta * xp.reshape(w, (K, -1, 1))
    return total, delta * xp.reshape(inv_d, (K, 1, 1))


def _generic(rows: _Rows, name: str) -> _LossFn:
    def fn(xp: Any, Z: Array, Y: Array, w: Array | None, inv_d: Array,
           dZ: Array | None) -> tuple[Array, Array | None]:
        per_row, delta = rows(xp, Z, Y)
        return _scaled(xp, per_row, None if dZ is None else delta, w, inv_d)

    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = """``(loss (K,), delta (K, n, c) or None)`` of the members' ``Z``, ``Y`` (K, n, c),
    row weights ``w`` (K, n) or None and ``inv_d`` (K,); the delta goes into ``dZ``
    (which may be ``Z``) on NumPy and CuPy, and is None without ``dZ``."""
    return fn


cross_entropy = kernel(_generic(_ce_rows, "cross_entropy"))
binary_cross_entropy = kernel(_generic(_bce_rows, "binary_cross_entropy"))
squared_error = kernel(_generic(_se_rows, "squared_error"))
poisson = kernel(_generic(_poisson_rows, "poisson"))
# The same losses on the outputs Ŷ: the delta is ∂L/∂Ŷ, which the activation's
# backward turns into dL/dZ.
squared_error_on_outputs = kernel(_generic(_se_out_rows, "squared_error_on_outputs"))
cross_entropy_on_outputs = kernel(_generic(_ce_out_rows, "cross_entropy_on_outputs"))
binary_cross_entropy_on_outputs = kernel(_generic(_bce_out_rows, "binary_cross_entropy_on_outputs"))
poisson_on_outputs = kernel(_generic(_poisson_out_rows, "poisson_on_outputs"))


# NumPy: the cross-entropy and squared error in place, without the temporaries.
def _np_scale(xp: Any, dZ: Array, w: Array | None, inv_d: Array) -> None:
    if w is not None:
        xp.multiply(dZ, w[:, :, None], out=dZ)
    # One member's 1/d as a scalar: ufuncs broadcast a (1, 1, 1) operand more slowly.
    xp.multiply(dZ, inv_d[0] if inv_d.shape[0] == 1 else inv_d[:, None, None], out=dZ)


def _np_total(xp: Any, per_row: Array, w: Array | None, inv_d: Array) -> Array:
    total = (per_row.sum(axis=1) if w is None else xp.einsum("kn,kn->k", per_row, w)) * inv_d
    if type(total) is np.ndarray:  # on the host: mask only the members without rows
        if total.shape[0] == 1:
            if not inv_d[0] > 0:
                total[0] = 0
        elif not (inv_d > 0).all():
            total[inv_d <= 0] = 0
        return total
    return xp.where(inv_d > 0, total, xp.zeros_like(total))


@cross_entropy.register("numpy")
def _cross_entropy_np(xp: Any, Z: Array, Y: Array, w: Array | None, inv_d: Array,
                      dZ: Array | None) -> tuple[Array, Array | None]:
    m = Z.max(axis=-1, keepdims=True)
    E = xp.subtract(Z, m, out=dZ) if dZ is not None else Z - m
    # Σ_j y_ij (lse_i − z_ij) = lse_i Σ_j y_ij − Σ_j y_ij z_ij, with z shifted by m
    yz = xp.einsum("knc,knc->kn", Y, E)
    xp.exp(E, out=E)
    s = E.sum(axis=-1, keepdims=True)
    per_row = xp.log(s[..., 0]) * Y.sum(axis=-1) - yz
    if dZ is not None:
        xp.divide(E, s, out=dZ)
        xp.subtract(dZ, Y, out=dZ)
        _np_scale(xp, dZ, w, inv_d)
    return _np_total(xp, per_row, w, inv_d), dZ


@squared_error.register("numpy")
def _squared_error_np(xp: Any, Z: Array, Y: Array, w: Array | None, inv_d: Array,
                      dZ: Array | None) -> tuple[Array, Array | None]:
    R = xp.subtract(Z, Y, out=dZ) if dZ is not None else Z - Y
    per_row = 0.5 * xp.einsum("knc,knc->kn", R, R)
    total = _np_total(xp, per_row, w, inv_d)
    if dZ is not None:
        _np_scale(xp, dZ, w, inv_d)
    return total, dZ


# numba: one pass per row instead of about ten NumPy calls. The row functions are the
# compiled training step's too (mlpx.member_step), so both paths give the same bits.
@lazy_njit
def cross_entropy_rows(Z: np.ndarray, Y: np.ndarray, w: np.ndarray, inv_d: np.floating[Any], dZ: np.ndarray,
                       ex: np.ndarray, has_dz: bool) -> np.floating[Any]:  # pragma: no cover - compiled
    """Softmax cross-entropy of logits Z (n, c) against Y (n, c), rows weighted by w (n,).

    Returns ``Σ_i w_i l_i``; with ``has_dz``, ``dZ`` (n, c) receives
    ``(softmax(Z) − Y)·w/d`` (``inv_d`` = 1/d). ``ex`` (≥ c) is scratch.
    """
    n, c = Z.shape
    total: np.floating[Any] = Z[0, 0] * 0
    for i in range(n):
        m = Z[i, 0]
        for j in range(1, c):
            if Z[i, j] > m:
                m = Z[i, j]
        s = Z[i, 0] * 0
        for j in range(c):
            e = np.exp(Z[i, j] - m)
            s += e
            ex[j] = e
        lse = np.log(s) + m
        wi = w[i]
        a = s * 0
        for j in range(c):
            y = Y[i, j]
            a += y * (lse - Z[i, j])
            if has_dz:
                dZ[i, j] = ((ex[j] / s - y) * wi) * inv_d
        total += a * wi
    return total


@lazy_njit
def binary_cross_entropy_rows(Z: np.ndarray, Y: np.ndarray, w: np.ndarray, inv_d: np.floating[Any], dZ: np.ndarray,
                              has_dz: bool) -> np.floating[Any]:  # pragma: no cover - compiled
    """Binary cross-entropy of logits Z (n, c) against Y: ``Σ_i w_i l_i``; with
    ``has_dz``, ``dZ`` receives ``(σ(Z) − Y)·w/d``."""
    n, c = Z.shape
    total: np.floating[Any] = Z[0, 0] * 0
    for i in range(n):
        wi = w[i]
        a = Z[0, 0] * 0
        for j in range(c):
            z = Z[i, j]
            y = Y[i, j]
            e = np.exp(-abs(z))
            a += ((z if z > 0 else z * 0) + np.log1p(e)) - y * z
            if has_dz:
                p = 1 / (1 + e) if z >= 0 else e / (1 + e)
                dZ[i, j] = ((p - y) * wi) * inv_d
        total += a * wi
    return total


@lazy_njit
def squared_error_rows(Z: np.ndarray, Y: np.ndarray, w: np.ndarray, inv_d: np.floating[Any], dZ: np.ndarray,
                       has_dz: bool) -> np.floating[Any]:  # pragma: no cover - compiled
    """Half the squared error of Z (n, c) against Y, rows weighted by w (n,): returns
    ``Σ_i w_i l_i``; with ``has_dz``, ``dZ`` receives ``(Z − Y)·w/d``."""
    n, c = Z.shape
    total: np.floating[Any] = Z[0, 0] * 0
    for i in range(n):
        wi = w[i]
        a = Z[0, 0] * 0
        for j in range(c):
            r = Z[i, j] - Y[i, j]
            a += r * r
            if has_dz:
                dZ[i, j] = (r * wi) * inv_d
        total += (a * 0.5) * wi
    return total


@lazy_njit
def poisson_rows(Z: np.ndarray, Y: np.ndarray, w: np.ndarray, inv_d: np.floating[Any], dZ: np.ndarray,
                 has_dz: bool) -> np.floating[Any]:  # pragma: no cover - compiled
    """Poisson deviance of log-rates Z (n, c) against counts Y: ``Σ_i w_i l_i``; with
    ``has_dz``, ``dZ`` receives ``(exp(Z) − Y)·w/d``."""
    n, c = Z.shape
    total: np.floating[Any] = Z[0, 0] * 0
    for i in range(n):
        wi = w[i]
        a = Z[0, 0] * 0
        for j in range(c):
            y = Y[i, j]
            p = np.exp(Z[i, j])
            a += ((y * np.log(y) if y > 0 else y * 0) - y * Z[i, j] - y) + p
            if has_dz:
                dZ[i, j] = ((p - y) * wi) * inv_d
        total += a * wi
    return total


#: The losses the compiled loops compute, by name, in the order of their codes.
LOSS_CODES = {"cross_entropy": 0, "binary_cross_entropy": 1, "squared_error": 2, "poisson": 3}


@lazy_njit
def loss_rows(code: int, Z: np.ndarray, Y: np.ndarray, w: np.ndarray, inv_d: np.floating[Any], dZ: np.ndarray,
              ex: np.ndarray, has_dz: bool) -> np.floating[Any]:  # pragma: no cover - compiled
    """The loss of :data:`LOSS_CODES` ``code`` over rows Z, Y (n, c): ``Σ_i w_i l_i``."""
    # total is annotated: a compiled function is Any to the type checker.
    if code == 0:
        total: np.floating[Any] = cross_entropy_rows(Z, Y, w, inv_d, dZ, ex, has_dz)
    elif code == 1:
        total = binary_cross_entropy_rows(Z, Y, w, inv_d, dZ, has_dz)
    elif code == 2:
        total = squared_error_rows(Z, Y, w, inv_d, dZ, has_dz)
    else:
        total = poisson_rows(Z, Y, w, inv_d, dZ, has_dz)
    return total


@lazy_njit
def _loss_loop(code: int, Z: np.ndarray, Y: np.ndarray, w: np.ndarray, inv_d: np.ndarray, dZ: np.ndarray,
               has_dz: bool, loss: np.ndarray) -> None:  # pragma: no cover - compiled
    ex = np.empty(Z.shape[2], dtype=Z.dtype)
    for k in range(Z.shape[0]):
        total = loss_rows(code, Z[k], Y[k], w[k], inv_d[k], dZ[k], ex, has_dz)
        loss[k] = total * inv_d[k] if inv_d[k] > 0 else 0


def _numba_variant(name: str, fallback: _LossFn) -> _LossFn:
    code = LOSS_CODES[name]

    def fn(xp: Any, Z: Array, Y: Array, w: Array | None, inv_d: Array,
           dZ: Array | None) -> tuple[Array, Array | None]:
        if Z.shape[1] == 0 or not (Z.flags.c_contiguous and Y.flags.c_contiguous) or Z.dtype.itemsize < 4 or (
                dZ is not None and not dZ.flags.c_contiguous):
            return fallback(xp, Z, Y, w, inv_d, dZ)
        K, n = Z.shape[:2]
        loss = np.empty(K, dtype=Z.dtype)
        wts = np.ones((K, n), dtype=Z.dtype) if w is None else np.ascontiguousarray(w)
        _loss_loop(code, Z, Y, wts, np.ascontiguousarray(inv_d), Z if dZ is None else dZ, dZ is not None, loss)
        return loss, dZ

    return fn


for _kernel, _fallback in ((cross_entropy, _cross_entropy_np), (binary_cross_entropy, binary_cross_entropy.generic),
                           (squared_error, _squared_error_np), (poisson, poisson.generic)):
    _kernel.register("numba")(_numba_variant(_kernel.name, _fallback))


# CUDA: softmax, cross-entropy and the output delta in one launch, one thread per row
# of the (K·n, c) logits, plus one reduction per member for the loss. The row's max,
# sum and loss are kept in A (float, or double for double): half-precision types
# have no `+= float`, and a sum of c exponentials in float16 loses digits.
_cross_entropy_cuda = lazy_elementwise(
    "raw T Z, raw T Y, raw T W, raw T inv_d, int32 c, int32 n, bool has_w, bool has_dz",
    "raw T dZ, T loss_row",
    """
    typedef mlpx_acc<T>::type A;
    const ptrdiff_t r = (ptrdiff_t)i * c;
    A m = (A)Z[r];
    for (int j = 1; j < c; ++j) m = max(m, (A)Z[r + j]);
    A s = 0;
    for (int j = 0; j < c; ++j) s += exp((A)Z[r + j] - m);
    const A lse = log(s) + m;
    const A wi = has_w ? (A)W[i] : (A)1;
    const A scale = wi * (A)inv_d[i / n];
    A l = 0;
    for (int j = 0; j < c; ++j) {
        const A z = (A)Z[r + j], y = (A)Y[r + j];
        l += y * (lse - z);
        if (has_dz) dZ[r + j] = (T)((exp(z - m) / s - y) * scale);
    }
    loss_row = (T)(l * wi);
    """,
    "mlpx_softmax_cross_entropy",
    preamble=ACCUMULATOR_PREAMBLE,
    scalars=("c", "n", "has_w", "has_dz"),
    # Z, Y, dZ: (K, n, c) C-contiguous; W: the (K, n) row weights, or Z again without any.
    layouts=[
        {"Z": (3, True), "Y": (3, True), "W": (3, True), "inv_d": (1, True), "dZ": (3, True)},
        {"Z": (3, True), "Y": (3, True), "W": (2, True), "inv_d": (1, True), "dZ": (3, True)},
    ],
)


# Σ w l / d of each member (K,), 0 for a member without rows (whose outputs may be inf).
_member_total_cuda = lazy_elementwise(
    "T total, T inv_d", "T loss", "loss = inv_d > (T)0 ? (T)(total * inv_d) : (T)0;", "mlpx_member_total"
)


@cross_entropy.register("cupy")
def _cross_entropy_cupy(xp: Any, Z: Array, Y: Array, w: Array | None, inv_d: Array,
                        dZ: Array | None) -> tuple[Array, Array | None]:
    K, n, c = (int(d) for d in Z.shape)
    Z, Y = xp.ascontiguousarray(Z), xp.ascontiguousarray(Y)
    loss_row = xp.empty((K, n), dtype=Z.dtype)
    _cross_entropy_cuda(Z, Y, Z if w is None else xp.ascontiguousarray(w), xp.ascontiguousarray(inv_d), c, n,
                        w is not None, dZ is not None, Z if dZ is None else dZ, loss_row)
    total = xp.sum(loss_row, axis=1)
    return _member_total_cuda(total, inv_d, total), dZ


# ------------------------------------------------------------ L2 penalty
@kernel
def l2_penalty(xp: Any, W: Array, dW: Array, coef: Array) -> tuple[Array, Array]:
    """``dW + coef · W`` and ``Σ W²`` per member (the L2 term without an update).

    Parameters
    ----------
    W, dW : arrays, shape (K, n_weights)
        The weight prefixes of the members' parameters and gradients.
    coef : array, shape (K,)
        ``l2 / d`` of each member.

    Returns
    -------
    dW : array, shape (K, n_weights)
        The penalised gradient: ``dW`` itself on NumPy (updated in place).
    sq : array, shape (K,)
        ``Σ W²`` of each member's weights.
    """
    return dW + W * xp.reshape(coef, (-1, 1)), xp.sum(W * W, axis=1)


@l2_penalty.register("numpy")
def _l2_penalty_np(xp: Any, W: Array, dW: Array, coef: Array) -> tuple[Array, Array]:
    xp.add(dW, W * coef[:, None], out=dW)
    vecdot = getattr(xp, "vecdot", None)  # a BLAS dot per row (CuPy: an einsum)
    return dW, (vecdot(W, W) if vecdot is not None else xp.einsum("kp,kp->k", W, W))


# ----------------------------------------------------------------- Loss
class Loss:
    """A loss paired with its output activation.

    Parameters
    ----------
    name : str
        The name :func:`get_loss` finds it under (``"cross_entropy"``).
    output : str
        Name of the output activation this loss is the canonical link of.
    fn : Kernel
        ``fn(xp, Z, Y, w, inv_d, dZ) -> (loss, delta)`` over K members (see the module
        docstring): the delta goes into ``dZ`` on NumPy and CuPy.
    on_outputs : Kernel, optional
        The same loss on the outputs: ``fn(xp, P, Y, w, inv_d, dP) -> (loss, ∂L/∂Ŷ)``;
        required for any output but ``output``.
    outputs : tuple of str
        The output activations whose values lie in the loss's domain ("*": all).
    """

    def __init__(self, name: str, output: str, fn: Kernel, on_outputs: Kernel | None = None,
                 outputs: tuple[str, ...] = ()) -> None:
        self.name, self.output, self.kernel = name, output, fn
        self.on_outputs = on_outputs
        self.outputs = outputs  # output activations whose values lie in the domain

    def __call__(self, be: Backend, Z: Array, Y: Array, dZ: Array | None = None,
                 sample_weight: Array | None = None, denom: float | None = None) -> Array:
        """Loss of logits ``Z`` against targets ``Y`` (both shape (n, k)).

        ``dZ`` (optional, shape (n, k), may be ``Z``) receives the delta; that needs
        writable arrays, so an immutable backend (JAX) refuses it: use
        :meth:`value_and_delta` there. Other parameters as :meth:`value_and_delta`.

        Returns
        -------
        array, shape ()
            The loss on the backend (read it with ``be.to_float`` once per epoch).
        """
        if dZ is not None and not be.mutable:
            raise BackendError(
                f"Loss({self.name!r}) cannot write the delta into dZ: backend {be.name!r} has "
                f"immutable arrays; use loss.value_and_delta(...), which returns it"
            )
        value, delta = self.value_and_delta(be, Z, Y, dZ, sample_weight, denom)
        if dZ is not None:
            be.assign(dZ, delta)
        return value

    def value_and_delta(self, be: Backend, Z: Array, Y: Array, dZ: Array | None = None,
                        sample_weight: Array | None = None,
                        denom: float | None = None) -> tuple[Array, Array | None]:
        """Loss of one network's logits ``Z`` against targets ``Y`` (both shape (n, k)), and its delta.

        Parameters
        ----------
        be : Backend
            The backend the arrays are on.
        Z : array, shape (n, k)
            Logits (pre-activation output of the last layer).
        Y : array, shape (n, k)
            Targets: one-hot rows for cross-entropy, {0, 1} (or probabilities)
            for binary cross-entropy, real values for squared error.
        dZ : array, shape (n, k), optional
            Where the NumPy and CuPy variants put the delta ``w_i (Ŷ − Y) / d`` (may
            be ``Z`` itself); None: no delta.
        sample_weight : array, shape (n,), optional
            The rows' weights ``w_i`` (default: 1 each).
        denom : float, optional
            ``d``; defaults to n (or Σ w when weights are given).

        Returns
        -------
        loss : array, shape ()
            ``Σ_i w_i l_i / d``, on the backend.
        delta : array, shape (n, k), or None
            ``dZ`` itself where a NumPy or CuPy variant wrote it, else a new array;
            None without ``dZ``.
        """
        xp = be.xp
        n, k = (int(d) for d in Z.shape)
        if denom is None:
            denom = float(n) if sample_weight is None else be.to_float(be.sum(sample_weight))
        inv_d = be.asarray(np.array([1.0 / denom]), dtype=Z.dtype)
        def one(a: Array | None) -> Array | None:
            return None if a is None else xp.reshape(a, (1, n, k))

        w = None if sample_weight is None else xp.reshape(sample_weight, (1, n))
        value, delta = be.run(self.kernel, one(Z), one(Y), w, inv_d, one(dZ))
        return value[0], None if delta is None else xp.reshape(delta, (n, k))

    def __repr__(self) -> str:
        return f"Loss({self.name!r}, output={self.output!r})"


#: Loss by name (``loss=`` of ``fit``), with the outputs each applies to.
LOSSES: dict[str, Loss] = {
    "cross_entropy": Loss("cross_entropy", "softmax", cross_entropy, cross_entropy_on_outputs,
                          ("softmax", "logistic", "exp")),
    "binary_cross_entropy": Loss("binary_cross_entropy", "logistic", binary_cross_entropy,
                                 binary_cross_entropy_on_outputs, ("logistic", "softmax")),
    "squared_error": Loss("squared_error", "identity", squared_error, squared_error_on_outputs, ("*",)),
    "poisson": Loss("poisson", "exp", poisson, poisson_on_outputs, ("exp", "softmax", "logistic")),
}
_ALIASES = {
    "log_loss": "cross_entropy",
    "categorical_crossentropy": "cross_entropy",
    "bce": "binary_cross_entropy",
    "binary_log_loss": "binary_cross_entropy",
    "mse": "squared_error",
}
#: The loss each output activation is paired with by default.
OUTPUT_LOSS = {loss.output: name for name, loss in LOSSES.items()}


class OutputLoss:
    """A loss bound to a model's output activation: the logits' delta either way.

    For the canonical pair (:data:`OUTPUT_LOSS`) the loss kernel turns logits into
    the delta ``w (Ŷ − Y) / d`` in one step. For any other pair the loss is taken
    on ``Ŷ = g(Z)`` and the chain rule gives ``dZ = ∂L/∂Ŷ ⊙ g'(Z)``.

    Parameters
    ----------
    loss : Loss
        The loss (its ``outputs`` must allow ``activation``).
    activation : Activation
        The model's output activation.

    Attributes
    ----------
    canonical : bool
        Whether ``activation`` is the loss's canonical link (one kernel for both).
    name : str
        The loss's name.
    """

    def __init__(self, loss: Loss, activation: Activation) -> None:
        self.loss, self.activation = loss, activation
        self.name = loss.name
        self.canonical = loss.output == activation.name

    def delta(self, be: Backend, Z: Array, Y: Array, dZ: Array, w: Array | None, inv_d: Array,
              P: Array | None = None) -> tuple[Array, Array]:
        """Each member's loss of its logits ``Z``, and the delta dL/dZ.

        Parameters
        ----------
        be : Backend
            The backend the arrays are on.
        Z : array, shape (K, n, k)
            The members' logits.
        Y : array, shape (K, n, k)
            Their targets.
        dZ : array, shape (K, n, k)
            Where NumPy and CuPy write the delta; it may be ``Z`` only for the
            canonical pair (``g'`` may read ``Z``).
        w : array, shape (K, n), or None
            The rows' weights (0 for padding rows); None: 1 each.
        inv_d : array, shape (K,)
            Each member's ``1/d`` (0 for a member without rows in the step).
        P : array, shape (K, n, k), optional
            A workspace for the outputs ``g(Z)`` of a non-canonical pair.

        Returns
        -------
        loss : array, shape (K,)
            ``Σ_i w_i l_i / d`` of each member.
        dZ : array, shape (K, n, k)
            The delta: ``dZ`` itself where a NumPy or CuPy variant wrote it, else a
            new array.
        """
        if self.canonical:
            out: tuple[Array, Array] = be.run(self.loss.kernel, Z, Y, w, inv_d, dZ)
            return out
        act, xp = self.activation, be.xp
        K, n, k = (int(d) for d in Z.shape)

        def flat(a: Array) -> Array:
            return xp.reshape(a, (K * n, k))

        P = xp.reshape(act.forward(be, flat(Z), out=flat(P) if P is not None else xp.zeros((K * n, k),
                                   dtype=Z.dtype)), (K, n, k))
        # Not canonical: pair() allowed this output, which a Loss without on_outputs
        # (outputs=()) never allows.
        value, dP = be.run(cast(Kernel, self.loss.on_outputs), P, Y, w, inv_d, dZ)
        return value, xp.reshape(act.backward(be, flat(dP), flat(Z), flat(P), out=flat(dP)), (K, n, k))

    def value(self, be: Backend, Z: Array, P: Array, Y: Array, w: Array | None, inv_d: Array) -> Array:
        """Each member's loss from its logits ``Z`` and outputs ``P = g(Z)``, without a delta.

        Parameters
        ----------
        be : Backend
            The backend the arrays are on.
        Z : array, shape (K, n, k)
            The members' logits (read by the canonical pair).
        P : array, shape (K, n, k)
            Their outputs ``g(Z)`` (read by any other pair).
        Y : array, shape (K, n, k)
            Their targets.
        w : array, shape (K, n), or None
            The rows' weights (0 for padding rows); None: 1 each.
        inv_d : array, shape (K,)
            Each member's ``1/d`` (0 for a member without rows).

        Returns
        -------
        array, shape (K,)
            ``Σ_i w_i l_i / d`` of each member.
        """
        if self.canonical:
            return be.run(self.loss.kernel, Z, Y, w, inv_d, None)[0]
        return be.run(cast(Kernel, self.loss.on_outputs), P, Y, w, inv_d, None)[0]  # as in delta()


    def __repr__(self) -> str:
        return f"OutputLoss({self.name!r} on {self.activation.name!r})"


def pair(loss: str | Loss | None, activation: Activation) -> OutputLoss:
    """Bind ``loss`` (default: the activation's canonical loss) to an output activation.

    Parameters
    ----------
    loss : str, Loss or None
        A name or alias of :data:`LOSSES`, a :class:`Loss`, or None for the one paired
        with ``activation`` by default (:data:`OUTPUT_LOSS`).
    activation : Activation
        The model's output activation.

    Returns
    -------
    OutputLoss
        The loss bound to the activation.

    Raises
    ------
    ValueError
        No loss is paired with the activation by default, or the activation's values
        leave the loss's domain (e.g. cross-entropy on a tanh output).
    """
    if loss is None:
        name = OUTPUT_LOSS.get(activation.name)
        if name is None:
            raise ValueError(
                f"no loss is paired with output activation {activation.name!r} by default; pass "
                f"loss= explicitly (squared_error works on any output), or end the network with "
                f"one of: {', '.join(sorted(OUTPUT_LOSS))}"
            )
        return OutputLoss(LOSSES[name], activation)
    loss = get_loss(loss)
    if "*" not in loss.outputs and activation.name not in loss.outputs:
        raise ValueError(
            f"loss {loss.name!r} needs outputs in its domain, which a {activation.name!r} output "
            f"does not guarantee; it works on: {', '.join(loss.outputs)}"
        )
    return OutputLoss(loss, activation)


def get_loss(name: str | Loss) -> Loss:
    """Look up a loss by name (or pass a :class:`Loss` through).

    Parameters
    ----------
    name : str or Loss
        A name of :data:`LOSSES` or an alias (``"log_loss"``, ``"mse"``...), in any
        case; a :class:`Loss` is passed through.

    Returns
    -------
    Loss
        The loss (shared: the same object for every model that names it).

    Raises
    ------
    ValueError
        For an unknown name; the message lists the valid ones.
    """
    if isinstance(name, Loss):
        return name
    key = _ALIASES.get(str(name).lower(), str(name).lower())
    if key not in LOSSES:
        valid = sorted(LOSSES) + sorted(_ALIASES)
        raise ValueError(f"unknown loss {name!r}; valid: {', '.join(valid)}")
    return LOSSES[key]
