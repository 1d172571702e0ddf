"""Losses, each paired with the output activation whose canonical link it is.

For each pair the derivative of the loss with respect to the *logits* Z of the last
layer collapses to the same simple form, so the loss returns the output delta
directly and no softmax Jacobian is ever formed:

=====================  ==========  =============================================  ==========================
loss                   output      per-sample loss  l_i                           delta dL/dZ
=====================  ==========  =============================================  ==========================
cross_entropy          softmax     logsumexp(z_i) − Σ_j y_ij z_ij                 w_i (Ŷ − Y) / d
binary_cross_entropy   logistic    Σ_j softplus(z_ij) − y_ij z_ij                 w_i (Ŷ − Y) / d
squared_error          identity    ½ Σ_j (z_ij − y_ij)²                           w_i (Ŷ − Y) / d
poisson                exp         Σ_j y log(y/ŷ) − y + ŷ                         w_i (Ŷ − Y) / d
=====================  ==========  =============================================  ==========================

``L = Σ_i w_i l_i / d`` with ``w_i = 1`` and ``d = n`` by default; with sample weights
``d = Σ_i w_i``, the scaling scikit-learn uses. Cross-entropies are computed from
the logits (log-sum-exp, softplus), so they stay finite where probabilities round
to 0 or 1.

Any loss also works on any output activation whose values lie in its domain, by
the chain rule: the loss is computed on the outputs ``Ŷ = g(Z)``, its derivative
``∂L/∂Ŷ`` is formed, and the activation's backward turns it into
``dZ = ∂L/∂Ŷ ⊙ g'(Z)`` (:class:`OutputLoss`; e.g. a sigmoid output trained with
squared error). The canonical pairs above keep their one-kernel shortcut.

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

from typing import Any

import numpy as np

from mlpx.backends import BackendError, kernel
from mlpx.backends.cuda import ACCUMULATOR_PREAMBLE, lazy_elementwise
from mlpx.backends.jit import lazy_njit

__all__ = ["LOSSES", "OUTPUT_LOSS", "Loss", "OutputLoss", "get_loss", "pair"]

Array = Any


def _weighted_total(xp: Any, per_row: Array, w: Array | None, denom: float) -> Array:
    """``Σ_i w_i l_i / d`` as a 0-d device array (no host synchronisation)."""
    if w is not None:
        per_row = per_row * w
    return xp.sum(per_row) / denom


def _scale_delta(xp: Any, dZ: Array, w: Array | None, denom: float) -> Array:
    """``w_i dZ_i / d``, row by row."""
    if w is None:
        return dZ * (1.0 / denom)
    return dZ * (xp.reshape(w, (-1, 1)) * (1.0 / denom))


# Every loss kernel is ``fn(xp, Z, Y, dZ, w, denom) -> (L, delta)``: the 0-d total ``L``
# and, unless ``dZ`` is None (then None), the delta ``w_i (Ŷ − Y) / d`` (in ``dZ`` on
# NumPy and CuPy; ``dZ`` may be ``Z``).


# ------------------------------------------------------------ cross-entropy
@kernel
def cross_entropy(xp: Any, Z: Array, Y: Array, dZ: Array | None, w: Array | None,
                  denom: float) -> tuple[Array, Array | None]:
    m = xp.max(Z, axis=1, keepdims=True)
    E = xp.exp(Z - m)
    s = xp.sum(E, axis=1, keepdims=True)
    lse = xp.log(s) + m
    per_row = xp.sum(Y * (lse - Z), axis=1)
    delta = None if dZ is None else _scale_delta(xp, E / s - Y, w, denom)
    return _weighted_total(xp, per_row, w, denom), delta


@cross_entropy.register("numpy")
def _cross_entropy_np(xp: Any, Z: Array, Y: Array, dZ: Array | None, w: Array | None,
                      denom: float) -> tuple[Array, Array | None]:
    m = xp.max(Z, axis=1, keepdims=True)
    E = xp.subtract(Z, m, out=dZ) if dZ is not None else Z - m
    # Σ_j y_ij (lse_i − z_ij) = lse_i Σ_j y_ij − Σ_j y_ij z_ij, with z shifted by m
    yz = xp.einsum("ij,ij->i", Y, E)
    xp.exp(E, out=E)
    s = xp.sum(E, axis=1, keepdims=True)
    per_row = xp.log(s[:, 0]) * xp.sum(Y, axis=1) - yz
    if dZ is not None:
        xp.divide(E, s, out=dZ)
        xp.subtract(dZ, Y, out=dZ)
        _scale_delta_np(xp, dZ, w, denom)
    return _weighted_total_np(xp, per_row, w, denom), dZ


def _scale_delta_np(xp: Any, dZ: Array, w: Array | None, denom: float) -> None:
    if w is None:
        xp.multiply(dZ, 1.0 / denom, out=dZ)
    else:
        xp.multiply(dZ, w[:, None], out=dZ)
        xp.multiply(dZ, 1.0 / denom, out=dZ)


def _weighted_total_np(xp: Any, per_row: Array, w: Array | None, denom: float) -> Array:
    total = xp.sum(per_row) if w is None else xp.dot(per_row, w)
    return total / denom


# CUDA: softmax, cross-entropy and the output delta in one launch, one thread per
# row (rows are short: one per class), plus one reduction for the total. The row's
# max, sum and loss are kept in A (float, or double for double): half-precision
# types have no `+= float`, and a sum of k exponentials in float16 loses digits.
_cross_entropy_cuda = lazy_elementwise(
    "raw T Z, raw T Y, raw T W, int32 k, T inv_d, bool has_w, bool has_dz",
    "raw T dZ, T loss_row",
    """
    typedef mlpx_acc<T>::type A;
    const ptrdiff_t r = (ptrdiff_t)i * k;
    A m = (A)Z[r];
    for (int j = 1; j < k; ++j) m = max(m, (A)Z[r + j]);
    A s = 0;
    for (int j = 0; j < k; ++j) s += exp((A)Z[r + j] - m);
    const A lse = log(s) + m;
    const A scale = (has_w ? (A)W[i] : (A)1) * (A)inv_d;
    A l = 0;
    for (int j = 0; j < k; ++j) {
        const A z = (A)Z[r + j], y = (A)Y[r + j];
        l += y * (lse - z);
        if (has_dz) dZ[r + j] = (T)((exp(z - m) / s - y) * scale);
    }
    loss_row = (T)(l * scale);
    """,
    "mlpx_softmax_cross_entropy",
    preamble=ACCUMULATOR_PREAMBLE,
    scalars=("k", "inv_d", "has_w", "has_dz"),
    # Z, Y, dZ: (n, k) C-contiguous; W: the (n,) sample weights, or Z again when there are none.
    layouts=[
        {"Z": (2, True), "Y": (2, True), "W": (2, True), "dZ": (2, True)},
        {"Z": (2, True), "Y": (2, True), "W": (1, True), "dZ": (2, True)},
    ],
)


@cross_entropy.register("cupy")
def _cross_entropy_cupy(
    xp: Any, Z: Array, Y: Array, dZ: Array | None, w: Array | None, denom: float
) -> tuple[Array, Array | None]:
    Z = xp.ascontiguousarray(Z)
    Y = xp.ascontiguousarray(Y)
    loss_row = xp.empty(Z.shape[0], dtype=Z.dtype)
    _cross_entropy_cuda(
        Z, Y, Z if w is None else w, Z.shape[1], 1.0 / denom, w is not None, dZ is not None,
        Z if dZ is None else dZ, loss_row,
    )
    return xp.sum(loss_row), dZ


# numba: the same row loop on the CPU, one pass instead of about ten NumPy calls.
@lazy_njit
def _cross_entropy_loop(Z, Y, dZ, w, inv_d, has_w, has_dz, loss_row):  # pragma: no cover
    n, k = Z.shape
    ex = np.empty(k, dtype=Z.dtype)
    for i in range(n):
        m = Z[i, 0]
        for j in range(1, k):
            if Z[i, j] > m:
                m = Z[i, j]
        s = Z[i, 0] * 0
        for j in range(k):
            e = np.exp(Z[i, j] - m)
            s += e
            ex[j] = e  # kept for the delta (dZ may be Z): exp is the loop's costly part
        lse = np.log(s) + m
        scale = (w[i] if has_w else 1) * inv_d
        acc = s * 0
        for j in range(k):
            z = Z[i, j]
            y = Y[i, j]
            acc += y * (lse - z)
            if has_dz:
                dZ[i, j] = (ex[j] / s - y) * scale
        loss_row[i] = acc * scale


@cross_entropy.register("numba")
def _cross_entropy_numba(
    xp: Any, Z: Array, Y: Array, dZ: Array | None, w: Array | None, denom: float
) -> tuple[Array, Array | None]:
    loss_row = np.empty(Z.shape[0], dtype=Z.dtype)
    t = Z.dtype.type
    _cross_entropy_loop(
        Z, Y, Z if dZ is None else dZ, loss_row if w is None else w, t(1.0 / denom),
        w is not None, dZ is not None, loss_row,
    )
    return loss_row.sum(dtype=Z.dtype), dZ


# ----------------------------------------------------- binary cross-entropy
@kernel
def binary_cross_entropy(
    xp: Any, Z: Array, Y: Array, dZ: Array | None, w: Array | None, denom: float
) -> tuple[Array, Array | None]:
    e = xp.exp(-xp.abs(Z))  # softplus(z) = max(z, 0) + log1p(exp(-|z|)), never overflows
    softplus = xp.maximum(Z, 0.0) + xp.log1p(e)
    per_row = xp.sum(softplus - Y * Z, axis=1)
    delta = None
    if dZ is not None:
        delta = _scale_delta(xp, xp.where(Z >= 0, 1.0, e) / (1.0 + e) - Y, w, denom)
    return _weighted_total(xp, per_row, w, denom), delta


# ------------------------------------------------------------ squared error
@kernel
def squared_error(xp: Any, Z: Array, Y: Array, dZ: Array | None, w: Array | None,
                  denom: float) -> tuple[Array, Array | None]:
    R = Z - Y
    per_row = 0.5 * xp.sum(R * R, axis=1)
    delta = None if dZ is None else _scale_delta(xp, R, w, denom)
    return _weighted_total(xp, per_row, w, denom), delta


@squared_error.register("numpy")
def _squared_error_np(xp: Any, Z: Array, Y: Array, dZ: Array | None, w: Array | None,
                      denom: float) -> tuple[Array, Array | None]:
    R = xp.subtract(Z, Y, out=dZ) if dZ is not None else Z - Y
    per_row = 0.5 * xp.einsum("ij,ij->i", R, R)
    total = _weighted_total_np(xp, per_row, w, denom)
    if dZ is not None:
        _scale_delta_np(xp, dZ, w, denom)
    return total, dZ


# ------------------------------------------------------------------ poisson
@kernel
def poisson(xp: Any, Z: Array, Y: Array, dZ: Array | None, w: Array | None,
            denom: float) -> tuple[Array, Array | None]:
    P = xp.exp(Z)
    pos = Y > 0
    ylogy = xp.where(pos, Y * xp.log(xp.where(pos, Y, 1.0)), 0.0)
    per_row = xp.sum(ylogy - Y * Z - Y + P, axis=1)
    delta = None if dZ is None else _scale_delta(xp, P - Y, w, denom)
    return _weighted_total(xp, per_row, w, denom), delta


# ------------------------------------------------- losses on the outputs Ŷ
# Each is ``fn(xp, P, Y, dP, w, denom) -> (L, ∂L/∂Ŷ)``, with ∂L/∂Ŷ = w_i ∂l_i/∂ŷ / d
# (None when dP is None).
def _clip(xp: Any, P: Array) -> Array:
    tiny = xp.finfo(P.dtype).smallest_normal
    return xp.where(P > tiny, P, tiny)


@kernel
def squared_error_on_outputs(
    xp: Any, P: Array, Y: Array, dP: Array | None, w: Array | None, denom: float
) -> tuple[Array, Array | None]:
    R = P - Y
    per_row = 0.5 * xp.sum(R * R, axis=1)
    delta = None if dP is None else _scale_delta(xp, R, w, denom)
    return _weighted_total(xp, per_row, w, denom), delta


@kernel
def cross_entropy_on_outputs(
    xp: Any, P: Array, Y: Array, dP: Array | None, w: Array | None, denom: float
) -> tuple[Array, Array | None]:
    Pc = _clip(xp, P)
    per_row = -xp.sum(Y * xp.log(Pc), axis=1)
    delta = None if dP is None else _scale_delta(xp, -Y / Pc, w, denom)
    return _weighted_total(xp, per_row, w, denom), delta


@kernel
def binary_cross_entropy_on_outputs(
    xp: Any, P: Array, Y: Array, dP: Array | None, w: Array | None, denom: float
) -> tuple[Array, Array | None]:
    Pc = _clip(xp, P)
    Qc = _clip(xp, 1.0 - P)
    per_row = -xp.sum(Y * xp.log(Pc) + (1.0 - Y) * xp.log(Qc), axis=1)
    delta = None if dP is None else _scale_delta(xp, (P - Y) / (Pc * Qc), w, denom)
    return _weighted_total(xp, per_row, w, denom), delta


@kernel
def poisson_on_outputs(
    xp: Any, P: Array, Y: Array, dP: Array | None, w: Array | None, denom: float
) -> tuple[Array, Array | None]:
    Pc = _clip(xp, P)
    pos = Y > 0
    ylogy = xp.where(pos, Y * xp.log(xp.where(pos, Y, 1.0)), 0.0)
    per_row = xp.sum(P - Y * xp.log(Pc) + ylogy - Y, axis=1)
    delta = None if dP is None else _scale_delta(xp, 1.0 - Y / Pc, w, denom)
    return _weighted_total(xp, per_row, w, denom), delta


class Loss:
    """A loss paired with its output activation.

    Parameters
    ----------
    name : str
    output : str
        Name of the output activation this loss is the canonical link of.
    fn : Kernel
        ``fn(xp, Z, Y, dZ, w, denom) -> (L, delta)``: the 0-d loss and, unless ``dZ``
        is None, the delta (in ``dZ`` on NumPy and CuPy).
    on_outputs : Kernel
        The same loss on the outputs: ``fn(xp, P, Y, dP, w, denom) -> (L, ∂L/∂Ŷ)``.
    outputs : tuple of str
        The output activations whose values lie in the loss's domain ("*": all).
    """

    def __init__(self, name: str, output: str, fn: Any, on_outputs: Any = None,
                 outputs: tuple[str, ...] = ()) -> None:
        self.name, self.output, self.kernel = name, output, fn
        self.on_outputs = on_outputs
        self.outputs = outputs  # output activations whose values lie in the domain

    def __call__(
        self,
        be: Any,
        Z: Array,
        Y: Array,
        dZ: Array | None = None,
        sample_weight: Array | None = None,
        denom: float | None = None,
    ) -> Array:
        """Loss of logits ``Z`` against targets ``Y`` (both shape (n, k)).

        ``dZ`` (optional, shape (n, k), may be ``Z``) receives the delta; that needs
        writable arrays, so an immutable backend (JAX) refuses it: use
        :meth:`value_and_delta` there. Other parameters as :meth:`value_and_delta`.

        Returns
        -------
        0-d array on the backend (read it with ``be.to_float`` once per epoch).
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

    def value_and_delta(
        self,
        be: Any,
        Z: Array,
        Y: Array,
        dZ: Array | None = None,
        sample_weight: Array | None = None,
        denom: float | None = None,
    ) -> tuple[Array, Array | None]:
        """Loss of logits ``Z`` against targets ``Y`` (both shape (n, k)), and its delta.

        Parameters
        ----------
        be : Backend
        Z : array, shape (n, k)
            Logits (pre-activation output of the last layer).
        Y : array, shape (n, k)
            Targets: one-hot rows for cross-entropy, {0, 1} (or probabilities)
            for binary cross-entropy, real values for squared error.
        dZ : array, shape (n, k), optional
            Where the NumPy and CuPy variants put the delta ``w_i (Ŷ − Y) / d`` (may
            be ``Z`` itself); None: no delta.
        sample_weight : array, shape (n,), optional
        denom : float, optional
            ``d``; defaults to n (or Σ w when weights are given).

        Returns
        -------
        loss : 0-d array on the backend
        delta : array, shape (n, k), or None
            ``dZ`` itself where a NumPy or CuPy variant wrote it, else a new array;
            None without ``dZ``.
        """
        if denom is None:
            denom = float(Z.shape[0]) if sample_weight is None else be.to_float(be.sum(sample_weight))
        return be.run(self.kernel, Z, Y, dZ, sample_weight, denom)

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
    activation : Activation
        The model's output activation.

    Attributes
    ----------
    canonical : bool
    name : str
    """

    def __init__(self, loss: Loss, activation: Any) -> None:
        self.loss, self.activation = loss, activation
        self.name = loss.name
        self.canonical = loss.output == activation.name

    def delta(self, be: Any, Z: Array, Y: Array, dZ: Array, w: Array | None, denom: float,
              P: Array | None = None) -> tuple[Array, Array]:
        """Loss of logits ``Z`` (n, k), a 0-d array, and its delta dL/dZ (n, k).

        The delta is ``dZ`` itself where a NumPy or CuPy variant wrote it, else a
        new array. ``P`` (n, k) is a workspace for the outputs of a non-canonical pair;
        ``dZ`` must not be ``Z`` then (``g'`` may read ``Z``).
        """
        if self.canonical:
            return be.run(self.loss.kernel, Z, Y, dZ, w, denom)
        act = self.activation
        P = act.forward(be, Z, out=P)
        value, dP = be.run(self.loss.on_outputs, P, Y, dZ, w, denom)
        return value, act.backward(be, dP, Z, P, out=dP)

    def value(self, be: Any, Z: Array, P: Array, Y: Array, w: Array | None, denom: float) -> Array:
        """The loss (0-d array) from logits ``Z`` and outputs ``P = g(Z)``, no delta."""
        if self.canonical:
            return be.run(self.loss.kernel, Z, Y, None, w, denom)[0]
        return be.run(self.loss.on_outputs, P, Y, None, w, denom)[0]

    def __repr__(self) -> str:
        return f"OutputLoss({self.name!r} on {self.activation.name!r})"


def pair(loss: str | Loss | None, activation: Any) -> OutputLoss:
    """Bind ``loss`` (default: the activation's canonical loss) to an output activation.

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
    """Look up a loss by name (or pass a :class:`Loss` through)."""
    if isinstance(name, Loss):
        return name
    key = _ALIASES.get(str(name).lower(), str(name).lower())
    if key not in LOSSES:
        valid = sorted(LOSSES) + sorted(_ALIASES)
        raise ValueError(f"unknown loss {name!r}; valid: {', '.join(valid)}")
    return LOSSES[key]


# ------------------------------------------------------------ L2 penalty
@kernel
def l2_penalty(xp: Any, p: Array, g: Array, n: int, coef: float, tmp: Array) -> tuple[Array, Array]:
    """``(Σ W², g')`` with ``g' = g + coef · W`` on the weight prefix ``W = p[:n]``.

    ``p``, ``g`` are the flat parameter and gradient buffers, shape (n_params,);
    ``g'`` is ``g`` written in place on NumPy and CuPy; ``tmp`` (n,) is scratch.
    """
    W = p[:n]
    g = xp.concat([g[:n] + coef * W, g[n:]])
    return xp.sum(W * W), g


@l2_penalty.register("numpy")
def _l2_penalty_np(xp: Any, p: Array, g: Array, n: int, coef: float, tmp: Array) -> tuple[Array, Array]:
    W, dW = p[:n], g[:n]
    xp.multiply(W, coef, out=tmp)
    xp.add(dW, tmp, out=dW)
    return xp.dot(W, W), g
