"""Layers in member form: each computes K networks of one architecture at once.

A layer is configuration (widths, activation, rate) plus the math of its forward
and backward pass over K members' arrays; the network (:mod:`mlpx.network`) owns
the parameters, in one ``(K, n_params)`` buffer, and hands each layer its members'
views. Samples are rows and the member axis comes first:

``Z = X W + b``, ``H = g(Z)``;  ``dZ = dH ⊙ g'(Z)``, ``dW = Xᵀ dZ``, ``db = Σ_rows dZ``,
``dX = dZ Wᵀ``

with X (k, n, n_in), W (k, n_in, n_out), b (k, n_out): one batched product per
phase (BLAS per member on the CPU, one strided batched cuBLAS call on the GPU).
A single network is k = 1.

The layer protocol (what :class:`~mlpx.network.Network` relies on):

``build(n_in) -> n_out``
    Fix the input width and return the output width.
``param_shapes() -> list[(name, shape, kind)]``
    One member's parameters; ``kind`` is ``"weight"`` (L2-penalised) or ``"bias"``.
``init_params(rng) -> dict[name, ndarray]``
    One member's host (NumPy, float64) starting values, drawn from ``rng``.
``forward(ctx, i, H, params) -> (H, saved)``
    ``params`` maps names to the members' views, shape ``(k, *shape)``; ``saved`` is
    what ``backward`` needs (None outside training).
``backward(ctx, i, dH, saved, params, grads, need_dX) -> (dX, grads)``
    From dL/dH: dL/dX (None unless ``need_dX``) and the parameter gradients,
    written into ``grads``' views where the backend writes in place (NumPy, CuPy),
    else new arrays. It never forms a Jacobian and may overwrite ``dH``.

``ctx`` is a :class:`Pass`: the backend, the compute dtype, the members, whether
this is training, the workspaces (reused from step to step, so a step allocates
nothing but what the array library does inside its operations) and the members'
dropout generators. ``i`` is the layer's index (its workspaces' key).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, cast

import numpy as np

from mlpx.activations import (
    ACTIVATIONS,
    EXP as EXP_CODE,
    GELU as GELU_CODE,
    LEAKY_RELU as LEAKY_RELU_CODE,
    LOGISTIC as LOGISTIC_CODE,
    RELU as RELU_CODE,
    SOFTMAX as SOFTMAX_CODE,
    TANH as TANH_CODE,
    Activation,
    activation_rows,
    exp_grad,
    exp_value,
    gelu_grad,
    gelu_value,
    get_activation,
    leaky_relu_grad,
    leaky_relu_value,
    logistic_grad,
    logistic_value,
    relu_grad,
    relu_value,
    softmax_grad_row,
    softmax_row,
    tanh_grad,
    tanh_value,
)
from mlpx.backends import Backend, kernel
from mlpx.backends.cuda import ACCUMULATOR_PREAMBLE, lazy_elementwise
from mlpx.backends.jit import lazy_njit
from mlpx.initializers import get_initializer
from mlpx.validation import check_int, check_real, check_seed

__all__ = [
    "GELU",
    "LAYERS",
    "ActivationLayer",
    "Dense",
    "Dropout",
    "Identity",
    "Layer",
    "LeakyReLU",
    "Pass",
    "ReLU",
    "Sigmoid",
    "Softmax",
    "Tanh",
    "bias_activation",
    "bias_activation_inference",
    "dense_backward",
    "layer_from_config",
]

Array = Any
_NUMPY = ("numpy",)  # the variant the NumPy kernels resolve their activation to
_MAX_WORKSPACES = 64  # buffers kept per pass: unusual batch sizes (predict chunks) must not pile up


# ------------------------------------------------------------------ kernels
@kernel
def bias_activation(xp: Any, Z: Array, b: Array, act: Activation, out: Array) -> tuple[Array, Array]:
    """``Zb = Z + b`` per member and ``H = g(Zb)``.

    Parameters
    ----------
    Z : array, shape (K, n, u)
        The members' products ``X W``; the fast variants write ``Zb`` into it.
    b : array, shape (K, u)
        The members' biases.
    act : Activation
        The activation ``g``.
    out : array, shape (K, n, u)
        Where ``H`` may go (it may be ``Z``: activations whose derivative is read
        off their output need no ``Zb`` afterwards).

    Returns
    -------
    Zb, H : arrays, shape (K, n, u)
        New arrays here; the fast variants return ``Z`` (holding ``Zb``, or ``H``
        when ``out is Z``) and ``out``.
    """
    K, n, u = Z.shape
    Zb = Z + xp.reshape(b, (K, 1, u))
    flat = xp.reshape(Zb, (K * n, u))
    H = act.forward_kernel.generic(xp, flat, xp.zeros_like(flat))
    return Zb, xp.reshape(H, (K, n, u))


@bias_activation.register("numpy")
def _bias_activation_np(xp: Any, Z: Array, b: Array, act: Activation, out: Array) -> tuple[Array, Array]:
    xp.add(Z, b[:, None, :], out=Z)
    # The activation's result may be its input itself (identity): use what it returns.
    return Z, act.forward_kernel.resolve(_NUMPY)(xp, Z, out)


@lazy_njit
def bias_activation_rows(Z: np.ndarray, b: np.ndarray, H: np.ndarray, tmp: np.ndarray, code: int,
                         in_place: bool) -> None:  # pragma: no cover - compiled
    """``Z + b`` and the activation numbered ``code`` (``Activation.code``) over
    one member's rows: Z (n, u), b (u,).

    With ``in_place``, ``g(Z + b)`` overwrites ``Z`` (``H`` is not used; ``tmp``, of at
    least u elements, is scratch for a row of softmax); else ``Z`` receives ``Z + b``
    and ``H`` (another (n, u) array) ``g(Z + b)``. One pass over the rows, with one
    loop per activation (see :func:`~mlpx.activations.activation_rows`).
    """
    n, u = Z.shape
    if not in_place:
        for i in range(n):
            for j in range(u):
                Z[i, j] = Z[i, j] + b[j]
        activation_rows(code, Z, H)
    elif code == RELU_CODE:
        for i in range(n):
            for j in range(u):
                Z[i, j] = relu_value(Z[i, j] + b[j])
    elif code == TANH_CODE:
        for i in range(n):
            for j in range(u):
                Z[i, j] = tanh_value(Z[i, j] + b[j])
    elif code == LOGISTIC_CODE:
        for i in range(n):
            for j in range(u):
                Z[i, j] = logistic_value(Z[i, j] + b[j])
    elif code == GELU_CODE:
        for i in range(n):
            for j in range(u):
                Z[i, j] = gelu_value(Z[i, j] + b[j])
    elif code == LEAKY_RELU_CODE:
        for i in range(n):
            for j in range(u):
                Z[i, j] = leaky_relu_value(Z[i, j] + b[j])
    elif code == EXP_CODE:
        for i in range(n):
            for j in range(u):
                Z[i, j] = exp_value(Z[i, j] + b[j])
    elif code == SOFTMAX_CODE:
        x = tmp[:u]
        for i in range(n):
            for j in range(u):
                x[j] = Z[i, j] + b[j]
            softmax_row(x, Z[i])
    else:
        for i in range(n):
            for j in range(u):
                Z[i, j] = Z[i, j] + b[j]


@lazy_njit
def _bias_activation_loop(Z: np.ndarray, b: np.ndarray, H: np.ndarray, code: int,
                          in_place: bool) -> None:  # pragma: no cover - compiled
    tmp = np.empty(Z.shape[2], dtype=Z.dtype)
    for k in range(Z.shape[0]):
        bias_activation_rows(Z[k], b[k], H[k], tmp, code, in_place)


@bias_activation.register("numba")
def _bias_activation_numba(xp: Any, Z: Array, b: Array, act: Activation, out: Array) -> tuple[Array, Array]:
    if act.code is None or not (Z.flags.c_contiguous and out.flags.c_contiguous):
        return _bias_activation_np(xp, Z, b, act, out)
    _bias_activation_loop(Z, b, out, act.code, out is Z)
    return Z, out


#: The activations whose compiled loop gives NumPy's own bits (comparisons and
#: products, no approximation of exp or tanh).
_EXACT_IN_LOOPS = frozenset({"identity", "relu", "leaky_relu"})


@kernel
def bias_activation_inference(xp: Any, Z: Array, b: Array, act: Activation, out: Array) -> tuple[Array, Array]:
    """:func:`bias_activation` for inference: ``Zb = Z + b`` and ``H = g(Zb)``.

    Training runs the compiled loops, whose ``exp`` and ``tanh`` are the compiled
    step's own (:mod:`mlpx.backends.jit_math`), so that both training paths give the
    same bits. Predictions keep NumPy's own functions on the CPU, the numbers
    scikit-learn's ``predict`` computes from the same weights: the compiled loop runs
    only where its bits are NumPy's (``_EXACT_IN_LOOPS``), and a process that
    only predicts compiles nothing else.

    Parameters
    ----------
    Z : array, shape (K, n, u)
        The members' products ``X W``; the fast variants write ``Zb`` into it.
    b : array, shape (K, u)
        The members' biases.
    act : Activation
        The activation ``g``.
    out : array, shape (K, n, u)
        Where ``H`` may go (it may be ``Z``).

    Returns
    -------
    Zb, H : arrays, shape (K, n, u)
        As :func:`bias_activation` returns them.
    """
    result: tuple[Array, Array] = bias_activation.generic(xp, Z, b, act, out)
    return result


@bias_activation_inference.register("numba")
def _bias_activation_inference_numba(xp: Any, Z: Array, b: Array, act: Activation,
                                     out: Array) -> tuple[Array, Array]:
    if act.name in _EXACT_IN_LOOPS:
        return _bias_activation_numba(xp, Z, b, act, out)
    return _bias_activation_np(xp, Z, b, act, out)


bias_activation_inference.register("numpy")(_bias_activation_np)


def _bias_act_cuda(act: Activation, keep: bool = False) -> Any:
    # Z (K, n, u) is contiguous; member k's bias is row k of b (K, u), read raw (a
    # member's row of the flat parameters: strided when K > 1). ``keep``: Z receives
    # Z + b and y the activation (a derivative that reads Z + b); else y may be Z.
    op = "const ptrdiff_t k = i / nu, j = i % u; T x = z + b[k * u + j]; "
    return lazy_elementwise(
        "raw T b, int64 nu, int64 u" if keep else "T z, raw T b, int64 nu, int64 u",
        "T z, T y" if keep else "T y",
        op + ("z = x; " if keep else "") + f"y = {act.cuda_forward};",
        f"mlpx_bias_{act.name}" + ("_keep" if keep else ""),
        preamble=ACCUMULATOR_PREAMBLE + act.cuda_preamble if act.cuda_preamble else "",
        scalars=("nu", "u"),
        layouts=[{"b": (2, True)}, {"b": (2, False)}],
    )


# One fused kernel per activation with a CUDA expression (and, for those whose
# derivative reads Z + b, one that keeps it), declared (not compiled) at import so that
# the offline compile test sees every one of them.
_BIAS_ACT_CUDA: dict[str, Any] = {
    name: _bias_act_cuda(act) for name, act in ACTIVATIONS.items() if act.cuda_forward is not None
}
_BIAS_ACT_KEEP_CUDA: dict[str, Any] = {
    name: _bias_act_cuda(act, keep=True) for name, act in ACTIVATIONS.items()
    if act.cuda_forward is not None and not act.from_output
}


@bias_activation.register("cupy")
def _bias_activation_cupy(xp: Any, Z: Array, b: Array, act: Activation, out: Array) -> tuple[Array, Array]:
    keep = out is not Z
    if act.cuda_forward is None or (keep and act.from_output):
        # softmax is row-wise: Z + b, then its own row kernel (mlpx.activations).
        return _bias_activation_np(xp, Z, b, act, out)
    kernels = _BIAS_ACT_KEEP_CUDA if keep else _BIAS_ACT_CUDA
    k = kernels.get(act.name)
    if k is None:  # an Activation built outside mlpx.activations
        k = kernels[act.name] = _bias_act_cuda(act, keep)
    K, n, u = (int(d) for d in Z.shape)
    if keep:
        k(b, n * u, u, Z, out)
        return Z, out
    k(Z, b, n * u, u, Z)
    return Z, Z


bias_activation_inference.register("cupy")(_bias_activation_cupy)


@kernel
def dense_backward(xp: Any, dH: Array, Z: Array | None, H: Array, act: Activation,
                   db: Array | None) -> tuple[Array, Array]:
    """``dZ = dH ⊙ g'(Z)`` and the bias gradient ``db = Σ_rows dZ`` of every member.

    Parameters
    ----------
    dH : array, shape (K, n, u)
        The loss's gradient with respect to the layer's outputs; may be overwritten
        by ``dZ`` (the fast variants do).
    Z : array, shape (K, n, u), or None
        ``Z + b`` (needed by activations whose derivative is not read off ``H``).
    H : array, shape (K, n, u)
        The layer's outputs ``g(Z + b)``.
    act : Activation
        The activation ``g``.
    db : array, shape (K, u), or None
        Where the bias gradient may go (the flat gradient buffer's view).

    Returns
    -------
    dZ : array, shape (K, n, u)
        The gradient with respect to ``Z + b`` (``dH`` itself where a fast variant
        wrote it).
    db : array, shape (K, u)
        Its sum over the rows (``db`` itself where a fast variant wrote it).
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


@dense_backward.register("numpy")
def _dense_backward_np(xp: Any, dH: Array, Z: Array | None, H: Array, act: Activation,
                       db: Array | None) -> tuple[Array, Array]:
    if act.backward_kernel is not None:
        # A kernel without a NumPy variant returns a new array instead of writing dH.
        dH = act.backward_kernel.resolve(_NUMPY)(xp, dH, Z, H, dH)
    if dH.dtype.itemsize < 4:  # half precision: accumulate in float32, as Backend.sum does
        total = dH.sum(axis=1, dtype=xp.float32)
        if db is None:
            return dH, total.astype(dH.dtype)
        xp.copyto(db, total, casting="unsafe")
        return dH, db
    return dH, dH.sum(axis=1, out=db)


#: Rows up to which the GPU's activation backward and bias gradient run as one
#: launch (one thread per unit and member, summing its rows); beyond, the rows'
#: serial sum would cost more than the second launch it saves (the activation
#: backward, then CuPy's parallel reduction).
FUSED_BIAS_GRADIENT_ROWS = 256


def _backward_bias_cuda(act: Activation) -> Any:
    # dZ = dH ⊙ g' and db = Σ_rows dZ: one thread per (member, unit), its n rows in
    # turn, summed in A (float for the 16-bit types, as Backend.sum does). DH, Z, H
    # and dZ are (K, n, u) C-contiguous, read raw (dZ may be DH); db is (K, u), a view
    # of the flat gradients (strided when K > 1) or a new array.
    return lazy_elementwise(
        "raw T DH, raw T Z, raw T H, int64 n, int64 u", "raw T dZ, T db",
        f"""
        typedef mlpx_acc<T>::type A;
        const ptrdiff_t k = i / u, j = i % u;
        A acc = 0;
        for (ptrdiff_t r = 0; r < n; ++r) {{
            const ptrdiff_t q = (k * n + r) * u + j;
            const T dh = DH[q], z = Z[q], h = H[q];
            const T g = (T)({act.cuda_backward});
            dZ[q] = g;
            acc += (A)g;
        }}
        db = (T)acc;
        """,
        f"mlpx_{act.name}_backward_bias",
        preamble=ACCUMULATOR_PREAMBLE + act.cuda_preamble,
        scalars=("n", "u"),
        layouts=[{a: (3, True) for a in ("DH", "Z", "H", "dZ")},
                 {**{a: (3, True) for a in ("DH", "Z", "H", "dZ")}, "db": (2, False)}],
    )


_BACKWARD_BIAS_CUDA: dict[str, Any] = {
    name: _backward_bias_cuda(act) for name, act in ACTIVATIONS.items()
    if act.cuda_backward is not None and act.backward_kernel is not None
}


@lazy_njit
def bias_gradient_rows(dH: np.ndarray, Z: np.ndarray, H: np.ndarray, db: np.ndarray, acc: np.ndarray,
                       code: int) -> None:  # pragma: no cover - compiled
    """``dZ = dH ⊙ g'`` of the activation numbered ``code``, in place, and the bias
    gradient ``db = Σ_rows dZ`` over one member's rows, in one pass: dH, Z, H (n, u)
    (``Z`` is the activation's input, read by GELU only: it may be ``H`` for the
    others); db (u,); acc, at least u elements, is scratch."""
    n, u = dH.shape
    a = acc[:u]
    for j in range(u):
        a[j] = 0
    if code == RELU_CODE:
        for i in range(n):
            for j in range(u):
                x = relu_grad(dH[i, j], H[i, j])
                dH[i, j] = x
                a[j] += x
    elif code == TANH_CODE:
        for i in range(n):
            for j in range(u):
                x = tanh_grad(dH[i, j], H[i, j])
                dH[i, j] = x
                a[j] += x
    elif code == LOGISTIC_CODE:
        for i in range(n):
            for j in range(u):
                x = logistic_grad(dH[i, j], H[i, j])
                dH[i, j] = x
                a[j] += x
    elif code == GELU_CODE:
        for i in range(n):
            for j in range(u):
                x = gelu_grad(dH[i, j], Z[i, j])
                dH[i, j] = x
                a[j] += x
    elif code == LEAKY_RELU_CODE:
        for i in range(n):
            for j in range(u):
                x = leaky_relu_grad(dH[i, j], H[i, j])
                dH[i, j] = x
                a[j] += x
    elif code == EXP_CODE:
        for i in range(n):
            for j in range(u):
                x = exp_grad(dH[i, j], H[i, j])
                dH[i, j] = x
                a[j] += x
    elif code == SOFTMAX_CODE:
        for i in range(n):
            softmax_grad_row(dH[i], H[i])
            for j in range(u):
                a[j] += dH[i, j]
    else:
        for i in range(n):
            for j in range(u):
                a[j] += dH[i, j]
    for j in range(u):
        db[j] = a[j]


@lazy_njit
def _dense_backward_loop(dH: np.ndarray, Z: np.ndarray, H: np.ndarray, db: np.ndarray,
                         code: int) -> None:  # pragma: no cover - compiled
    acc = np.empty(dH.shape[2], dtype=dH.dtype)
    for k in range(dH.shape[0]):
        bias_gradient_rows(dH[k], Z[k], H[k], db[k], acc, code)


@dense_backward.register("numba")
def _dense_backward_numba(xp: Any, dH: Array, Z: Array | None, H: Array, act: Activation,
                          db: Array | None) -> tuple[Array, Array]:
    if act.code is None or not (dH.flags.c_contiguous and H.flags.c_contiguous) or dH.dtype.itemsize < 4 or (
            Z is not None and not Z.flags.c_contiguous) or (Z is None and not act.from_output):
        return _dense_backward_np(xp, dH, Z, H, act, db)
    K, _, u = dH.shape
    if db is None:
        db = np.empty((K, u), dtype=dH.dtype)
    _dense_backward_loop(dH, H if Z is None else Z, H, db, act.code)
    return dH, db


@dense_backward.register("cupy")
def _dense_backward_cupy(xp: Any, dH: Array, Z: Array | None, H: Array, act: Activation,
                         db: Array | None) -> tuple[Array, Array]:
    K, n, u = (int(d) for d in dH.shape)
    fused = _BACKWARD_BIAS_CUDA.get(act.name) if act.backward_kernel is not None else None
    if fused is None or n > FUSED_BIAS_GRADIENT_ROWS or not (dH.flags.c_contiguous and H.flags.c_contiguous) or (
            Z is not None and not Z.flags.c_contiguous) or (Z is None and not act.from_output):
        # Identity (a sum), softmax (row-wise) or many rows: the activation's own
        # backward kernel (one launch on CuPy), then the sum.
        if act.backward_kernel is not None:
            flat = dH.reshape(K * n, u)
            dH = act.backward_kernel.resolve(("cupy", "numpy"))(
                xp, flat, None if Z is None else Z.reshape(K * n, u), H.reshape(K * n, u), flat).reshape(K, n, u)
        return _dense_backward_np(xp, dH, None, H, ACTIVATIONS["identity"], db)
    if db is None:
        db = xp.empty((K, u), dtype=dH.dtype)
    fused(dH, H if Z is None else Z, H, n, u, dH, db)
    return dH, db


@kernel
def multiply(xp: Any, a: Array, b: Array, out: Array) -> Array:
    """``a ⊙ b`` (same shapes; in ``out`` on NumPy and CuPy, and ``out`` may be ``a``)."""
    return a * b


@multiply.register("numpy")
def _multiply_np(xp: Any, a: Array, b: Array, out: Array) -> Array:
    return xp.multiply(a, b, out=out)


# ---------------------------------------------------------------- a pass
class Pass:
    """What one forward or backward pass over a group of members computes with.

    Parameters
    ----------
    be : Backend
        The backend the pass runs on.
    dtype : str
        The compute dtype.
    ws : dict
        Workspaces of this group of members (and this thread), reused across steps.
    train : bool
        Keep what the backward pass needs; dropout drops.
    rngs : dict of int -> list of numpy.random.Generator, optional
        Layer index -> the members' dropout generators (one per member).
    """

    __slots__ = ("be", "dtype", "ws", "train", "rngs", "in_place")

    def __init__(self, be: Backend, dtype: str, ws: dict[Any, Array], train: bool,
                 rngs: dict[int, list[np.random.Generator]] | None = None) -> None:
        self.be, self.dtype, self.ws, self.train = be, dtype, ws, train
        self.rngs = rngs or {}
        self.in_place = "numpy" in be.kinds  # NumPy and CuPy write results into buffers

    def buffer(self, key: Hashable, shape: tuple[int, ...], dtype: str | None = None) -> Array | None:
        """A workspace of ``shape`` kept under ``key``, or None on functional backends.

        Parameters
        ----------
        key : hashable
            The workspace's name in this pass (``("Z", i)`` for layer ``i``).
        shape : tuple of int
            Its shape; a workspace of another shape under ``key`` is replaced.
        dtype : str, optional
            Its dtype; default the pass's compute dtype.

        Returns
        -------
        array or None
            The workspace (its contents are left over from earlier steps), or None
            where results are new arrays (the generic path computes functionally).
        """
        if not self.in_place:
            return None
        buf = self.ws.get(key)
        if buf is None or buf.shape != shape:
            if len(self.ws) > _MAX_WORKSPACES:
                self.ws.clear()
            buf = self.ws[key] = self.be.empty(shape, dtype or self.dtype)
        return buf


# ----------------------------------------------------------------- layers
class Layer:
    """Base class: a parameter-free layer that passes its input through."""

    n_in: int
    n_out: int

    def build(self, n_in: int) -> int:
        """Fix the input width and give the output width.

        Parameters
        ----------
        n_in : int
            The width of the layer's input (the previous layer's ``n_out``).

        Returns
        -------
        int
            The width of the layer's output.
        """
        self.n_in = self.n_out = int(n_in)
        return self.n_out

    def param_shapes(self) -> list[tuple[str, tuple[int, ...], str]]:
        """One member's parameters, in the order of the flat buffer.

        Returns
        -------
        list of (str, tuple of int, str)
            ``(name, shape, kind)`` per parameter; ``kind`` is ``"weight"``
            (L2-penalised) or ``"bias"``. Empty for a layer without parameters.
        """
        return []

    def init_params(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """One member's starting values.

        Parameters
        ----------
        rng : numpy.random.Generator
            The member's generator, which the values are drawn from.

        Returns
        -------
        dict of str -> ndarray
            Each parameter of :meth:`param_shapes` by name, on the host in float64.
        """
        return {}

    def forward(self, ctx: Pass, i: int, H: Array, params: dict[str, Array]) -> tuple[Array, Any]:
        """The layer's output for K members, and what :meth:`backward` needs.

        Parameters
        ----------
        ctx : Pass
            The pass's backend, dtype, workspaces and dropout generators.
        i : int
            The layer's index in the network (its workspaces' key).
        H : array, shape (k, n, n_in)
            The members' inputs.
        params : dict of str -> array
            The members' parameters by name, views of shape ``(k, *shape)``.

        Returns
        -------
        H : array, shape (k, n, n_out)
            The members' outputs.
        saved : object
            What :meth:`backward` needs; None outside training.
        """
        return H, None

    def backward(self, ctx: Pass, i: int, dH: Array, saved: Any, params: dict[str, Array],
                 grads: dict[str, Array] | None, need_dX: bool) -> tuple[Array | None, dict[str, Array]]:
        """The gradients with respect to the layer's input and its parameters.

        Parameters
        ----------
        ctx : Pass
            The pass's backend, dtype and workspaces.
        i : int
            The layer's index in the network (its workspaces' key).
        dH : array, shape (k, n, n_out)
            The loss's gradient with respect to the layer's output; may be
            overwritten.
        saved : object
            What :meth:`forward` returned for the backward pass.
        params : dict of str -> array
            The members' parameters by name, views of shape ``(k, *shape)``.
        grads : dict of str -> array, or None
            Where the parameters' gradients may go (views of the flat gradient
            buffer, written in place where the backend writes in place).
        need_dX : bool
            Whether to compute the input's gradient (not for the first layer).

        Returns
        -------
        dX : array, shape (k, n, n_in), or None
            The gradient with respect to the input; None unless ``need_dX``.
        grads : dict of str -> array
            The parameters' gradients by name (``grads``' views, or new arrays).
        """
        return (dH if need_dX else None), {}

    def get_config(self) -> dict[str, Any]:
        """The layer as a JSON record (:func:`layer_from_config` rebuilds it).

        Returns
        -------
        dict
            ``{"type": class name, ...}`` and the constructor's arguments.
        """
        return {"type": type(self).__name__}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "type")
        return f"{type(self).__name__}({args})"


class Dense(Layer):
    """Fully connected layer ``H = g(X W + b)``.

    Parameters
    ----------
    n_in : int
        Input width (features).
    n_out : int
        Output width (units).
    activation : str, default "identity"
        Fused into the layer (see :mod:`mlpx.activations`).
    init : {"glorot", "he"}, default "glorot"
        Glorot uniform as scikit-learn draws it (factor 2 for logistic, else 6),
        or He uniform.

    Notes
    -----
    A member's ``W`` has shape (n_in, n_out) (samples are rows, so the forward pass
    is ``X @ W``, as in scikit-learn's ``coefs_``) and ``b`` shape (n_out,); the
    network's views of them (:meth:`mlpx.Sequential.parameters`) are views into
    its flat parameter buffer.
    """

    def __init__(
        self, n_in: int, n_out: int, activation: str | None = "identity", init: str = "glorot"
    ) -> None:
        # Widths must be integers: 8.7 (or 8.0) is refused, never truncated.
        self.n_in = check_int("Dense: n_in", n_in, low=1)
        self.n_out = check_int("Dense: n_out", n_out, low=1)
        self.activation: Activation = get_activation(activation)
        if not (isinstance(init, str) or callable(init)):
            raise TypeError(f"Dense: init must be a name or a callable, got {init!r}")
        self.init = init
        get_initializer(init)  # fail early on an unknown name

    def build(self, n_in: int) -> int:
        if n_in != self.n_in:
            raise ValueError(f"Dense expects {self.n_in} inputs but the previous layer gives {n_in}")
        return self.n_out

    def param_shapes(self) -> list[tuple[str, tuple[int, ...], str]]:
        return [("W", (self.n_in, self.n_out), "weight"), ("b", (self.n_out,), "bias")]

    def init_params(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        W, b = get_initializer(self.init)(rng, self.n_in, self.n_out, self.activation.name)
        return {"W": W, "b": b}

    def forward(self, ctx: Pass, i: int, H: Array, params: dict[str, Array]) -> tuple[Array, Any]:
        """The layer's output ``g(H W + b)`` for K members, and what :meth:`backward` needs.

        Parameters
        ----------
        ctx : Pass
            The pass's backend, dtype and workspaces.
        i : int
            The layer's index in the network (its workspaces' key).
        H : array, shape (k, n, n_in) or (n, n_in), or SharedRows
            The members' inputs: their own rows, rows shared by all of them, or runs
            of members sharing rows (``runs`` and ``X``: one gathered block per run).
        params : dict of str -> array
            ``W`` (k, n_in, n_out) and ``b`` (k, n_out), views of the members'
            parameters.

        Returns
        -------
        H : array, shape (k, n, n_out)
            The members' outputs.
        saved : tuple or None
            The input, ``Z + b`` (None when ``g'`` is read off the output) and the
            output, in training; None outside it.
        """
        be, act = ctx.be, self.activation
        W, b = params["W"], params["b"]
        k = int(W.shape[0])
        runs = getattr(H, "runs", None)
        n = int(H.shape[-2])
        shape = (k, n, self.n_out)
        Z = ctx.buffer(("Z", i), shape)
        if runs is not None:  # one gathered block per run of members with the same rows
            # Runs come only on in-place backends (mlpx.network_step), whose buffer() is one.
            Zw = cast(Array, Z)
            for (lo, hi), Xg in zip(runs, H.X):
                be.bmm(Xg, W[lo:hi], out=Zw[lo:hi])
        else:
            Z = be.bmm(H, W, out=Z)  # a shared 2-D input broadcasts over the members
        keep_Z = not act.from_output
        out = ctx.buffer(("H", i), shape) if keep_Z else Z
        kern = bias_activation if ctx.train else bias_activation_inference
        Zb, A = be.run(kern, Z, b, act, out if out is not None else Z)
        return A, ((H, Zb if keep_Z else None, A) if ctx.train else None)

    def backward(self, ctx: Pass, i: int, dH: Array, saved: Any, params: dict[str, Array],
                 grads: dict[str, Array] | None, need_dX: bool) -> tuple[Array | None, dict[str, Array]]:
        """The gradients ``dZ = dH ⊙ g'(Z)``, ``dW = Xᵀ dZ``, ``db = Σ_rows dZ``, ``dX = dZ Wᵀ``.

        Parameters
        ----------
        ctx : Pass
            The pass's backend, dtype and workspaces.
        i : int
            The layer's index in the network (its workspaces' key).
        dH : array, shape (k, n, n_out)
            The loss's gradient with respect to the layer's output; overwritten by
            ``dZ`` where the backend writes in place.
        saved : tuple
            What :meth:`forward` returned in training.
        params : dict of str -> array
            ``W`` (k, n_in, n_out) and ``b`` (k, n_out).
        grads : dict of str -> array, or None
            ``W`` and ``b``: where the gradients may go (views of the flat gradient
            buffer); None: new arrays.
        need_dX : bool
            Whether to compute ``dX`` (not for the first layer).

        Returns
        -------
        dX : array, shape (k, n, n_in), or None
            The gradient with respect to the input; None unless ``need_dX``.
        grads : dict of str -> array
            ``dW`` (k, n_in, n_out) and ``db`` (k, n_out).
        """
        be = ctx.be
        H_in, Zb, A = saved
        gW = None if grads is None else grads["W"]
        gb = None if grads is None else grads["b"]
        dZ, db = be.run(dense_backward, dH, Zb, A, self.activation, gb)
        runs = getattr(H_in, "runs", None)
        if runs is not None:
            # Runs come only on in-place backends, which pass the gradient buffer's views.
            gW = cast(Array, gW)
            for (lo, hi), Xg in zip(runs, H_in.X):
                be.bmm(Xg, dZ[lo:hi], trans_a=True, out=gW[lo:hi])
            dW = gW
        else:
            dW = be.bmm(H_in, dZ, trans_a=True, out=gW)  # a shared 2-D input broadcasts
        dX = None
        if need_dX:
            k, n = int(dZ.shape[0]), int(dZ.shape[1])
            dX = be.bmm(dZ, params["W"], trans_b=True, out=ctx.buffer(("dX", i), (k, n, self.n_in)))
        return dX, {"W": dW, "b": db}

    def get_config(self) -> dict[str, Any]:
        return {
            "type": "Dense",
            "n_in": self.n_in,
            "n_out": self.n_out,
            "activation": self.activation.name,
            "init": self.init,
        }


class ActivationLayer(Layer):
    """A standalone activation ``H = g(X)`` (same shape in and out).

    Parameters
    ----------
    activation : str
        See :mod:`mlpx.activations`.
    """

    def __init__(self, activation: str) -> None:
        self.activation = get_activation(activation)

    def forward(self, ctx: Pass, i: int, H: Array, params: dict[str, Array]) -> tuple[Array, Any]:
        xp = ctx.be.xp
        k, n, u = (int(d) for d in H.shape)
        # Own output buffer: H may be the previous Dense's output, which that layer
        # still needs for its backward pass.
        out = ctx.buffer(("A", i), (k, n, u))
        src = xp.reshape(H, (k * n, u))
        A = self.activation.forward(ctx.be, src, out=xp.reshape(out, (k * n, u)) if out is not None
                                    else xp.zeros_like(src))
        A = xp.reshape(A, (k, n, u))
        return A, ((H, A) if ctx.train else None)

    def backward(self, ctx: Pass, i: int, dH: Array, saved: Any, params: dict[str, Array],
                 grads: dict[str, Array] | None, need_dX: bool) -> tuple[Array | None, dict[str, Array]]:
        if not need_dX:
            return None, {}
        xp = ctx.be.xp
        H_in, A = saved
        k, n, u = (int(d) for d in dH.shape)
        def flat(a: Array) -> Array:
            return xp.reshape(a, (k * n, u))

        dX = self.activation.backward(ctx.be, flat(dH), flat(H_in), flat(A), out=flat(dH))
        return xp.reshape(dX, (k, n, u)), {}

    def get_config(self) -> dict[str, Any]:
        return {"type": "ActivationLayer", "activation": self.activation.name}


def _fixed(name: str, doc: str) -> type[ActivationLayer]:
    def __init__(self: ActivationLayer) -> None:
        ActivationLayer.__init__(self, name)

    return type(doc.split()[0], (ActivationLayer,), {"__init__": __init__, "__doc__": doc})


Identity = _fixed("identity", "Identity activation layer.")
ReLU = _fixed("relu", "ReLU activation layer.")
Sigmoid = _fixed("logistic", "Sigmoid (logistic) activation layer.")
Tanh = _fixed("tanh", "Tanh activation layer.")
GELU = _fixed("gelu", "GELU activation layer (tanh approximation).")
Softmax = _fixed("softmax", "Softmax activation layer (rows).")


class LeakyReLU(ActivationLayer):
    """Leaky ReLU activation layer (slope 0.01 for negative inputs)."""

    def __init__(self) -> None:
        super().__init__("leaky_relu")


class Dropout(Layer):
    """Inverted dropout: in training, each input is zeroed with probability ``p``.

    The inputs kept are scaled by ``1 / (1 - p)``; at inference the layer passes its
    input through.

    Each member draws its masks on the host from its own seeded generator (the
    network's, :meth:`mlpx.network.Network.dropout_generators`) and they move to the
    device, so the same seed drops the same units on every backend, and a member of
    a stack drops what the same network trained alone drops.

    Parameters
    ----------
    p : float in [0, 1)
        Python or NumPy number; anything else (NaN, 1, "0.5") raises
        :class:`~mlpx.validation.InvalidParameterError`.
    seed : int, optional
        Seed of every member's mask generator (default: the member's seed + 1 + the
        layer's index).
    """

    def __init__(self, p: float = 0.5, seed: int | None = None) -> None:
        self.p = check_real("Dropout: p", p, 0.0, 1.0, high_open=True)
        self.seed = check_seed(seed, "Dropout: seed")

    def generator(self, member_seed: int | None, index: int) -> np.random.Generator:
        """A member's mask generator: this layer's seed, else the member's seed + 1 + ``index``.

        Parameters
        ----------
        member_seed : int or None
            The member's seed (None: a generator seeded from the operating system,
            unless the layer has its own seed).
        index : int
            The layer's index in the network.

        Returns
        -------
        numpy.random.Generator
            A new generator, which the member's masks are drawn from.
        """
        if self.seed is not None:
            return np.random.default_rng(self.seed)
        return np.random.default_rng(None if member_seed is None else member_seed + 1 + index)

    def forward(self, ctx: Pass, i: int, H: Array, params: dict[str, Array]) -> tuple[Array, Any]:
        if not ctx.train or self.p == 0.0:
            return H, None
        k, n, u = (int(d) for d in H.shape)
        keep = np.stack([g.random((n, u)) >= self.p for g in ctx.rngs[i]]) / (1.0 - self.p)
        mask = ctx.be.asarray(keep, dtype=ctx.dtype)
        out = ctx.buffer(("D", i), (k, n, u))
        H = ctx.be.run(multiply, H, mask, out if out is not None else mask)
        return H, mask

    def backward(self, ctx: Pass, i: int, dH: Array, saved: Any, params: dict[str, Array],
                 grads: dict[str, Array] | None, need_dX: bool) -> tuple[Array | None, dict[str, Array]]:
        if not need_dX:
            return None, {}
        if saved is None:
            return dH, {}
        return ctx.be.run(multiply, dH, saved, dH), {}

    def get_config(self) -> dict[str, Any]:
        return {"type": "Dropout", "p": self.p, "seed": self.seed}


#: Layer class by the name model files record.
LAYERS: dict[str, type[Layer]] = {
    "Dense": Dense,
    "ActivationLayer": ActivationLayer,
    "Dropout": Dropout,
}


def layer_from_config(config: dict[str, Any]) -> Layer:
    """Rebuild a layer from ``Layer.get_config()`` output (used by ``mlpx.load``).

    Parameters
    ----------
    config : dict
        A record of :meth:`Layer.get_config`: ``"type"`` (a name of :data:`LAYERS`)
        and the constructor's arguments.

    Returns
    -------
    Layer
        A new layer of that type and configuration.

    Raises
    ------
    ValueError
        The record is not a dict, or names an unknown layer type.
    """
    if not isinstance(config, dict):
        raise ValueError(f"a layer record must be a JSON object, got {config!r}")
    config = dict(config)
    kind = config.pop("type", None)
    if not isinstance(kind, str) or kind not in LAYERS:
        raise ValueError(f"unknown layer type {kind!r} in saved model; known: {sorted(LAYERS)}")
    return LAYERS[kind](**config)
