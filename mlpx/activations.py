"""Activation functions and their derivatives, as backend kernels.

Each activation is an :class:`Activation` with a forward kernel ``g`` and a
backward kernel that turns ``dH = dL/dH`` into ``dZ = dH ⊙ g'(Z)`` without ever
forming a Jacobian. The generic definitions are plain Array API code (they are the
reference, and what runs on ``array-api-strict``); the ``"numpy"`` variants write
through ``out=`` and run unchanged on CuPy.

=============  ==========================================  ======================  ===========
name           g(z)                                        g'(z) written from      in place
=============  ==========================================  ======================  ===========
identity       z                                           -                       yes
relu           max(z, 0)                                   output H                yes
leaky_relu     z if z > 0 else a·z  (a = 0.01)             output H                yes
logistic       1 / (1 + exp(-z))   (alias: sigmoid)        output H: H(1-H)        yes
tanh           tanh z                                      output H: 1 - H²        yes
gelu           z/2 · (1 + tanh(√(2/π)(z + 0.044715 z³)))   input Z                 no
softmax        exp(z_i) / Σ_j exp(z_j)   (rows)            output H                yes
exp            exp z    (Poisson output)                   output H                yes
=============  ==========================================  ======================  ===========

"In place" activations derive ``g'`` from the output, so the forward pass may
overwrite ``Z`` with ``H`` and keep one buffer per layer instead of two. The kernels
take arrays of any shape (..., u): softmax works along the last axis.

Compiled loops (numba: :func:`mlpx.layers.bias_activation` and
:func:`mlpx.layers.dense_backward`'s variants, and the whole-step loop of
:mod:`mlpx.member_step`) compute each activation with the scalar pieces written
beside it below (``*_value`` and ``*_grad``), picked by its
``Activation.code`` once per block of rows, so both give the same bits. Their
``exp`` and ``tanh`` are :mod:`mlpx.backends.jit_math`'s, which LLVM vectorises.
GELU uses the tanh approximation (as PyTorch's ``approximate="tanh"``) because the
Array API standard has no ``erf``.
"""

from __future__ import annotations

import math
from typing import Any, TypeVar

import numpy as np

from mlpx.backends import Backend, Kernel, kernel
from mlpx.backends.cuda import ACCUMULATOR_PREAMBLE, lazy_elementwise
from mlpx.backends.jit import lazy_njit
from mlpx.backends.jit_math import exp, tanh, typed

__all__ = ["ACTIVATIONS", "Activation", "activation_rows", "get_activation"]

Array = Any
#: A scalar of a compiled loop's array (the loops compute in their arrays' precision).
_Float = TypeVar("_Float", np.float32, np.float64)

# The activations' numbers in compiled loops (Activation.code, activation_row).
IDENTITY, RELU, LEAKY_RELU, LOGISTIC, TANH, GELU, SOFTMAX, EXP = range(8)


class Activation:
    """An elementwise (or row-wise, for softmax) activation and its derivative.

    Parameters
    ----------
    name : str
        The name :func:`get_activation` finds it under (``"relu"``).
    forward : Kernel
        ``forward(xp, Z, out) -> H``: ``H = g(Z)``, in ``out`` on NumPy and CuPy
        (``out`` may be ``Z``).
    backward : Kernel or None
        ``backward(xp, dH, Z, H, out) -> dZ``: ``dZ = dH ⊙ g'(Z)``, in ``out`` on
        NumPy and CuPy (``out`` may be ``dH``). ``None`` for identity (``dZ = dH``).
    from_output : bool
        True when ``backward`` needs only ``H`` (so ``forward`` may run in place).
    cuda_forward : str, optional
        CUDA expression of ``g`` in the variable ``x`` (type ``T``), used by the GPU's
        fused bias + activation kernel (``mlpx.layers.bias_activation``).
    cuda_backward : str, optional
        CUDA expression of ``dh ⊙ g'`` in the variables ``dh``, ``h`` (the output) and
        ``z`` (the input; only when not ``from_output``), of type ``T``: the GPU's
        activation backward, alone and fused with the bias gradient
        (``mlpx.layers.dense_backward``).
    cuda_preamble : str
        Device functions the CUDA expressions use; they may use ``mlpx_acc<T>``
        (``mlpx.backends.cuda.ACCUMULATOR_PREAMBLE``, which the kernels put
        before them).
    code : int, optional
        The activation's number in the compiled loops (:func:`activation_rows`);
        None for an activation they do not know.
    """

    def __init__(
        self,
        name: str,
        forward: Kernel,
        backward: Kernel | None,
        from_output: bool,
        cuda_forward: str | None = None,
        cuda_backward: str | None = None,
        cuda_preamble: str = "",
        code: int | None = None,
    ) -> None:
        self.name = name
        self.forward_kernel = forward
        self.backward_kernel = backward
        self.from_output = from_output
        self.cuda_forward = cuda_forward
        self.cuda_backward = cuda_backward
        self.cuda_preamble = cuda_preamble
        self.code = code

    def forward(self, be: Backend, Z: Array, out: Array) -> Array:
        """The activation ``H = g(Z)``, by the backend's fastest variant.

        Parameters
        ----------
        be : Backend
            The backend that runs the kernel.
        Z : array, shape (n, u)
            The pre-activations (softmax works along the last axis).
        out : array, shape (n, u)
            Where NumPy and CuPy write ``H``; it may be ``Z``.

        Returns
        -------
        H : array, shape (n, u)
            ``out`` where the backend wrote it, else a new array (backends that
            compute functionally): use the returned array.
        """
        return be.run(self.forward_kernel, Z, out)

    def backward(self, be: Backend, dH: Array, Z: Array | None, H: Array, out: Array) -> Array:
        """The gradient ``dZ = dH ⊙ g'(Z)``, without forming a Jacobian.

        Parameters
        ----------
        be : Backend
            The backend that runs the kernel.
        dH : array, shape (n, u)
            The loss's gradient with respect to the outputs ``H``.
        Z : array, shape (n, u), or None
            The pre-activations; may be None (or already overwritten) when
            ``from_output`` is True.
        H : array, shape (n, u)
            The outputs ``g(Z)``.
        out : array, shape (n, u)
            Where NumPy and CuPy write ``dZ``; it may be ``dH``.

        Returns
        -------
        dZ : array, shape (n, u)
            ``out`` (or ``dH`` itself for identity) where the backend wrote it, else a
            new array: use the returned array.
        """
        if self.backward_kernel is None:
            return dH if out is dH else be.copy(dH, out)
        return be.run(self.backward_kernel, dH, Z, H, out)

    def __repr__(self) -> str:
        return f"Activation({self.name!r})"


# ----------------------------------------------------------------- identity
@kernel
def identity_forward(xp: Any, Z: Array, out: Array) -> Array:
    return Z


# The scalar pieces of the compiled loops (see activation_row): g(x), and dh ⊙ g'
# from the output h (or the input z), in the arguments' precision.
@lazy_njit(inline=True)
def identity_value(x: _Float) -> _Float:  # pragma: no cover - compiled
    return x


# --------------------------------------------------------------------- relu
@kernel
def relu_forward(xp: Any, Z: Array, out: Array) -> Array:
    return xp.maximum(Z, 0.0)


@relu_forward.register("numpy")
def _relu_forward_np(xp: Any, Z: Array, out: Array) -> Array:
    return xp.maximum(Z, 0, out=out)


@kernel
def relu_backward(xp: Any, dH: Array, Z: Array, H: Array, out: Array) -> Array:
    return xp.where(H > 0, dH, 0.0)


@relu_backward.register("numpy")
def _relu_backward_np(xp: Any, dH: Array, Z: Array, H: Array, out: Array) -> Array:
    return xp.multiply(dH, H > 0, out=out)


@lazy_njit(inline=True)
def relu_value(x: _Float) -> _Float:  # pragma: no cover - compiled
    return x if x > 0 or x != x else typed(x, 0.0)  # as maximum(x, 0): NaN stays NaN


@lazy_njit(inline=True)
def relu_grad(dh: _Float, h: _Float) -> _Float:  # pragma: no cover - compiled
    return dh if h > 0 else dh * 0


# --------------------------------------------------------------- leaky relu
LEAKY_SLOPE = 0.01


@kernel
def leaky_relu_forward(xp: Any, Z: Array, out: Array) -> Array:
    # max(z, a·z) equals leaky ReLU for 0 < a < 1.
    return xp.maximum(Z, Z * LEAKY_SLOPE)


@leaky_relu_forward.register("numpy")
def _leaky_relu_forward_np(xp: Any, Z: Array, out: Array) -> Array:
    # max(z, a·z) equals leaky ReLU for 0 < a < 1.
    return xp.maximum(Z, Z * LEAKY_SLOPE, out=out)


@kernel
def leaky_relu_backward(xp: Any, dH: Array, Z: Array, H: Array, out: Array) -> Array:
    # sign(H) == sign(Z) for a > 0, so the output suffices.
    return xp.where(H > 0, dH, dH * LEAKY_SLOPE)


@lazy_njit(inline=True)
def leaky_relu_value(x: _Float) -> _Float:  # pragma: no cover - compiled
    return x if x > 0 else x * typed(x, LEAKY_SLOPE)


@lazy_njit(inline=True)
def leaky_relu_grad(dh: _Float, h: _Float) -> _Float:  # pragma: no cover - compiled
    return dh if h > 0 else dh * typed(dh, LEAKY_SLOPE)


# ----------------------------------------------------------------- logistic
@kernel
def logistic_forward(xp: Any, Z: Array, out: Array) -> Array:
    # exp(-|z|) never overflows; the two branches are the same function.
    e = xp.exp(-xp.abs(Z))
    return xp.where(Z >= 0, 1.0, e) / (1.0 + e)


@logistic_forward.register("numpy")
def _logistic_forward_np(xp: Any, Z: Array, out: Array) -> Array:
    e = xp.exp(-xp.abs(Z))
    pos = Z >= 0
    xp.add(e, 1.0, out=out)
    xp.divide(xp.where(pos, 1.0, e), out, out=out)
    return out


@kernel
def logistic_backward(xp: Any, dH: Array, Z: Array, H: Array, out: Array) -> Array:
    return dH * H * (1.0 - H)


@logistic_backward.register("numpy")
def _logistic_backward_np(xp: Any, dH: Array, Z: Array, H: Array, out: Array) -> Array:
    g = H * (1.0 - H)
    return xp.multiply(dH, g, out=out)


@lazy_njit(inline=True)
def logistic_value(x: _Float) -> _Float:  # pragma: no cover - compiled
    e: _Float = exp(-abs(x))
    one = typed(x, 1.0)
    h: _Float = (one if x >= 0 else e) / (one + e)  # typed: NumPy's float32 stubs give Any
    return h


@lazy_njit(inline=True)
def logistic_grad(dh: _Float, h: _Float) -> _Float:  # pragma: no cover - compiled
    dz: _Float = dh * h * (typed(h, 1.0) - h)
    return dz


# --------------------------------------------------------------------- tanh
@kernel
def tanh_forward(xp: Any, Z: Array, out: Array) -> Array:
    return xp.tanh(Z)


@tanh_forward.register("numpy")
def _tanh_forward_np(xp: Any, Z: Array, out: Array) -> Array:
    return xp.tanh(Z, out=out)


@kernel
def tanh_backward(xp: Any, dH: Array, Z: Array, H: Array, out: Array) -> Array:
    return dH * (1.0 - H * H)


@tanh_backward.register("numpy")
def _tanh_backward_np(xp: Any, dH: Array, Z: Array, H: Array, out: Array) -> Array:
    g = H * H
    xp.subtract(1.0, g, out=g)
    return xp.multiply(dH, g, out=out)


@lazy_njit(inline=True)
def tanh_value(x: _Float) -> _Float:  # pragma: no cover - compiled
    h: _Float = tanh(x)  # typed: a compiled function is Any to the type checker
    return h


@lazy_njit(inline=True)
def tanh_grad(dh: _Float, h: _Float) -> _Float:  # pragma: no cover - compiled
    dz: _Float = dh * (typed(h, 1.0) - h * h)
    return dz


# --------------------------------------------------------------------- gelu
GELU_C = math.sqrt(2.0 / math.pi)
GELU_A = 0.044715


def _is_half(xp: Any, dtype: Any) -> bool:
    half: bool = xp.finfo(dtype).bits < 32
    return half


# GELU's cubic term overflows half precision: z³ beyond |z| ≈ 40 (float16's max is
# 65504) and z² at |z| ≥ 256, where g' = ... + (1 − t²)·z·(1 + 3a z²) becomes 0·inf =
# NaN. For float16 and bfloat16 both are computed in float32 and cast once at the end.
def _gelu(xp: Any, Z: Array) -> Array:
    return 0.5 * Z * (1.0 + xp.tanh(GELU_C * (Z + GELU_A * Z * Z * Z)))


def _gelu_grad(xp: Any, Z: Array) -> Array:
    Z2 = Z * Z
    t = xp.tanh(GELU_C * Z * (1.0 + GELU_A * Z2))
    return 0.5 * (1.0 + t) + 0.5 * Z * (1.0 - t * t) * GELU_C * (1.0 + 3.0 * GELU_A * Z2)


@kernel
def gelu_forward(xp: Any, Z: Array, out: Array) -> Array:
    if _is_half(xp, Z.dtype):
        return xp.astype(_gelu(xp, xp.astype(Z, xp.float32)), Z.dtype)
    return _gelu(xp, Z)


@kernel
def gelu_backward(xp: Any, dH: Array, Z: Array, H: Array, out: Array) -> Array:
    if _is_half(xp, Z.dtype):
        f32 = xp.float32
        return xp.astype(xp.astype(dH, f32) * _gelu_grad(xp, xp.astype(Z, f32)), dH.dtype)
    return dH * _gelu_grad(xp, Z)


@lazy_njit(inline=True)
def gelu_value(x: _Float) -> _Float:  # pragma: no cover - compiled
    # As _gelu, operation by operation.
    t: _Float = tanh(typed(x, GELU_C) * (x + typed(x, GELU_A) * x * x * x))
    h: _Float = typed(x, 0.5) * x * (typed(x, 1.0) + t)
    return h


@lazy_njit(inline=True)
def gelu_grad(dh: _Float, z: _Float) -> _Float:  # pragma: no cover - compiled
    # As _gelu_grad, operation by operation.
    z2 = z * z
    one, half, c = typed(z, 1.0), typed(z, 0.5), typed(z, GELU_C)
    t: _Float = tanh(c * z * (one + typed(z, GELU_A) * z2))
    dz: _Float = dh * (half * (one + t) + half * z * (one - t * t) * c * (one + typed(z, 3.0 * GELU_A) * z2))
    return dz


# ------------------------------------------------------------------ softmax
@kernel
def softmax_forward(xp: Any, Z: Array, out: Array) -> Array:
    E = xp.exp(Z - xp.max(Z, axis=-1, keepdims=True))
    return E / xp.sum(E, axis=-1, keepdims=True)


@softmax_forward.register("numpy")
def _softmax_forward_np(xp: Any, Z: Array, out: Array) -> Array:
    m = xp.max(Z, axis=-1, keepdims=True)
    xp.subtract(Z, m, out=out)
    xp.exp(out, out=out)
    s = xp.sum(out, axis=-1, keepdims=True)
    return xp.divide(out, s, out=out)


@kernel
def softmax_backward(xp: Any, dH: Array, Z: Array, H: Array, out: Array) -> Array:
    # dZ = H ⊙ (dH − Σ_j dH_j H_j): the Jacobian-vector product, row by row.
    return H * (dH - xp.sum(dH * H, axis=-1, keepdims=True))


@lazy_njit
def softmax_row(x: np.ndarray, y: np.ndarray) -> None:  # pragma: no cover - compiled
    """``y = softmax(x)`` over one row (u,); ``x`` and ``y`` are different arrays."""
    u = x.shape[0]
    m = x[0]
    for j in range(1, u):
        m = max(m, x[j])
    for j in range(u):  # apart from the sums, which keep their order: vectorised
        y[j] = exp(x[j] - m)
    s = y[0] * 0
    for j in range(u):
        s += y[j]
    for j in range(u):
        y[j] = y[j] / s


@lazy_njit
def softmax_grad_row(dh: np.ndarray, h: np.ndarray) -> None:  # pragma: no cover - compiled
    """``dh ← h ⊙ (dh − Σ_j dh_j h_j)`` over one row (u,)."""
    s = dh[0] * 0
    for j in range(dh.shape[0]):
        s += dh[j] * h[j]
    for j in range(dh.shape[0]):
        dh[j] = h[j] * (dh[j] - s)


# ---------------------------------------------------------------------- exp
@kernel
def exp_forward(xp: Any, Z: Array, out: Array) -> Array:
    return xp.exp(Z)


@exp_forward.register("numpy")
def _exp_forward_np(xp: Any, Z: Array, out: Array) -> Array:
    return xp.exp(Z, out=out)


@kernel
def exp_backward(xp: Any, dH: Array, Z: Array, H: Array, out: Array) -> Array:
    return dH * H


@lazy_njit(inline=True)
def exp_value(x: _Float) -> _Float:  # pragma: no cover - compiled
    h: _Float = exp(x)  # typed: a compiled function is Any to the type checker
    return h


@lazy_njit(inline=True)
def exp_grad(dh: _Float, h: _Float) -> _Float:  # pragma: no cover - compiled
    dz: _Float = dh * h  # typed: NumPy's float32 stubs give Any
    return dz


# ------------------------------------------------------- compiled rows
@lazy_njit
def activation_rows(code: int, X: np.ndarray, Y: np.ndarray) -> None:  # pragma: no cover - compiled
    """``Y = g(X)`` over rows, for the activation numbered ``code`` (compiled loops).

    One loop per activation, chosen once: a loop whose body branched on the code
    would not be vectorised (nor one that reads and writes one array under two
    names, hence the separate arrays; ``mlpx.layers.bias_activation_rows``
    runs the activations in place).

    Parameters
    ----------
    code : int
        The activation's ``Activation.code``; an unknown one copies ``X``.
    X : ndarray, shape (n, u)
        The pre-activations, float32 or float64 (not changed).
    Y : ndarray, shape (n, u)
        Receives ``g(X)``: another array than ``X``, of its dtype.
    """
    n, u = X.shape
    if code == RELU:
        for i in range(n):
            for j in range(u):
                Y[i, j] = relu_value(X[i, j])
    elif code == TANH:
        for i in range(n):
            for j in range(u):
                Y[i, j] = tanh_value(X[i, j])
    elif code == LOGISTIC:
        for i in range(n):
            for j in range(u):
                Y[i, j] = logistic_value(X[i, j])
    elif code == GELU:
        for i in range(n):
            for j in range(u):
                Y[i, j] = gelu_value(X[i, j])
    elif code == LEAKY_RELU:
        for i in range(n):
            for j in range(u):
                Y[i, j] = leaky_relu_value(X[i, j])
    elif code == EXP:
        for i in range(n):
            for j in range(u):
                Y[i, j] = exp_value(X[i, j])
    elif code == SOFTMAX:
        for i in range(n):
            softmax_row(X[i], Y[i])
    else:
        for i in range(n):
            for j in range(u):
                Y[i, j] = identity_value(X[i, j])


# ------------------------------------------------------- CUDA variants
# One launch per backward pass (the NumPy variants are two or three on CuPy).
# Each expression must match the generic definition above; tests/test_gpu.py checks.
# dH ⊙ g'(Z) computed in A = mlpx_acc<T>::type (float for the 16-bit types, where z²
# overflows at |z| >= 256 and gives 0·inf = NaN; T itself for float32/float64).
_GELU_DZ = f"""
template <typename T> __device__ T mlpx_gelu_dz(T dh, T z_) {{
    typedef typename mlpx_acc<T>::type A;
    const A c = {GELU_C!r}, a = {GELU_A!r};
    const A z = (A)z_;
    const A z2 = z * z;
    const A t = tanh(c * z * ((A)1 + a * z2));
    const A g = (A)0.5 * ((A)1 + t) + (A)0.5 * z * ((A)1 - t * t) * c * ((A)1 + (A)3 * a * z2);
    return (T)((A)dh * g);
}}
"""
_GELU_PREAMBLE = ACCUMULATOR_PREAMBLE + _GELU_DZ


#: ``dh ⊙ g'`` in CUDA, from ``dh``, the output ``h`` and the input ``z`` (GELU).
_CUDA_BACKWARD = {
    "identity": "dh",
    "relu": "h > (T)0 ? dh : (T)0",
    # (T)(...): in half precision T * T is a float, and `c ? T : float` is ambiguous.
    "leaky_relu": f"h > (T)0 ? dh : (T)(dh * (T){LEAKY_SLOPE!r})",
    "logistic": "dh * h * ((T)1 - h)",
    "tanh": "dh * ((T)1 - h * h)",
    "exp": "dh * h",
    "gelu": "mlpx_gelu_dz(dh, z)",
}


def _cuda_backward_from_output(name: str) -> Any:
    k = lazy_elementwise("T dh, T h", "T dz", f"dz = {_CUDA_BACKWARD[name]};", f"mlpx_{name}_backward")

    def variant(xp: Any, dH: Array, Z: Array, H: Array, out: Array) -> Array:
        k(dH, H, out)
        return out

    return variant


for _name, _kernel in (("relu", relu_backward), ("leaky_relu", leaky_relu_backward),
                       ("logistic", logistic_backward), ("tanh", tanh_backward), ("exp", exp_backward)):
    _kernel.register("cupy")(_cuda_backward_from_output(_name))

_gelu_backward_cuda = lazy_elementwise(
    "T dh, T z", "T dz", f"dz = {_CUDA_BACKWARD['gelu']};", "mlpx_gelu_backward", preamble=_GELU_PREAMBLE
)


@gelu_backward.register("cupy")
def _gelu_backward_cupy(xp: Any, dH: Array, Z: Array, H: Array, out: Array) -> Array:
    _gelu_backward_cuda(dH, Z, out)
    return out


# softmax, row-wise: one thread per row of the (rows, u) array, in A (as the loss).
_softmax_forward_cuda = lazy_elementwise(
    "raw T Z, int64 u", "raw T H",
    """
    typedef mlpx_acc<T>::type A;
    const ptrdiff_t r = i * u;
    A m = (A)Z[r];
    for (ptrdiff_t j = 1; j < u; ++j) m = max(m, (A)Z[r + j]);
    A s = 0;
    for (ptrdiff_t j = 0; j < u; ++j) s += exp((A)Z[r + j] - m);
    for (ptrdiff_t j = 0; j < u; ++j) H[r + j] = (T)(exp((A)Z[r + j] - m) / s);
    """,
    "mlpx_softmax_forward",
    preamble=ACCUMULATOR_PREAMBLE,
    scalars=("u",),
    layouts=[{"Z": (2, True), "H": (2, True)}],
)
_softmax_backward_cuda = lazy_elementwise(
    "raw T DH, raw T H, int64 u", "raw T dZ",
    """
    typedef mlpx_acc<T>::type A;
    const ptrdiff_t r = i * u;
    A s = 0;
    for (ptrdiff_t j = 0; j < u; ++j) s += (A)DH[r + j] * (A)H[r + j];
    for (ptrdiff_t j = 0; j < u; ++j) dZ[r + j] = (T)((A)H[r + j] * ((A)DH[r + j] - s));
    """,
    "mlpx_softmax_backward",
    preamble=ACCUMULATOR_PREAMBLE,
    scalars=("u",),
    layouts=[{"DH": (2, True), "H": (2, True), "dZ": (2, True)}],
)


@softmax_forward.register("cupy")
def _softmax_forward_cupy(xp: Any, Z: Array, out: Array) -> Array:
    if not (Z.flags.c_contiguous and out.flags.c_contiguous):
        return _softmax_forward_np(xp, Z, out)
    n, u = (int(d) for d in Z.shape)
    _softmax_forward_cuda(Z, u, out, size=n)
    return out


@softmax_backward.register("cupy")
def _softmax_backward_cupy(xp: Any, dH: Array, Z: Array, H: Array, out: Array) -> Array:
    if not (dH.flags.c_contiguous and H.flags.c_contiguous and out.flags.c_contiguous):
        return softmax_backward.generic(xp, dH, Z, H, out)
    n, u = (int(d) for d in dH.shape)
    _softmax_backward_cuda(dH, H, u, out, size=n)
    return out


# No numba variants of the kernels above: NumPy's own ufuncs run them in one pass
# each. The compiled loops fuse them with the bias (mlpx.layers) and the whole step
# (mlpx.member_step) through activation_row and activation_grad_row instead.


def _activation(name: str, code: int, forward: Kernel, backward: Kernel | None, from_output: bool,
                cuda_forward: str | None) -> Activation:
    return Activation(name, forward, backward, from_output, cuda_forward, _CUDA_BACKWARD.get(name),
                      _GELU_DZ if name == "gelu" else "", code)


#: Activation by name (``activation=`` and ``output=`` of the layers and ``MLP``).
ACTIVATIONS: dict[str, Activation] = {
    "identity": _activation("identity", IDENTITY, identity_forward, None, True, "x"),
    "relu": _activation("relu", RELU, relu_forward, relu_backward, True, "x > (T)0 ? x : (T)0"),
    "leaky_relu": _activation(
        "leaky_relu", LEAKY_RELU, leaky_relu_forward, leaky_relu_backward, True,
        f"x > (T)0 ? x : (T)(x * (T){LEAKY_SLOPE!r})",
    ),
    "logistic": _activation(
        "logistic", LOGISTIC, logistic_forward, logistic_backward, True,
        "x >= (T)0 ? (T)1 / ((T)1 + exp(-x)) : exp(x) / ((T)1 + exp(x))",
    ),
    "tanh": _activation("tanh", TANH, tanh_forward, tanh_backward, True, "tanh(x)"),
    "gelu": _activation(
        "gelu", GELU, gelu_forward, gelu_backward, False,
        f"(T)0.5 * x * ((T)1 + tanh((T){GELU_C!r} * (x + (T){GELU_A!r} * x * x * x)))",
    ),
    "softmax": _activation("softmax", SOFTMAX, softmax_forward, softmax_backward, True, None),  # row-wise
    "exp": _activation("exp", EXP, exp_forward, exp_backward, True, "exp(x)"),
}
_ALIASES = {"sigmoid": "logistic", "linear": "identity", "none": "identity"}


def get_activation(name: str | Activation | None) -> Activation:
    """Look up an activation by name (``None`` means identity).

    Parameters
    ----------
    name : str, Activation or None
        A name of :data:`ACTIVATIONS` or an alias (``"sigmoid"``, ``"linear"``,
        ``"none"``), in any case; an :class:`Activation` is passed through.

    Returns
    -------
    Activation
        The activation (shared: the same object for every layer that names it).

    Raises
    ------
    ValueError
        For an unknown name; the message lists the valid ones.
    """
    if isinstance(name, Activation):
        return name
    if name is None:
        return ACTIVATIONS["identity"]
    key = _ALIASES.get(str(name).lower(), str(name).lower())
    if key not in ACTIVATIONS:
        valid = sorted(ACTIVATIONS) + sorted(_ALIASES)
        raise ValueError(f"unknown activation {name!r}; valid: {', '.join(valid)}")
    return ACTIVATIONS[key]
