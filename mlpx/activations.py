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
overwrite ``Z`` with ``H`` and keep one buffer per layer instead of two.
GELU uses the tanh approximation (as PyTorch's ``approximate="tanh"``) because the
Array API standard has no ``erf``.
"""

from __future__ import annotations

import math
from typing import Any

from mlpx.backends import Kernel, kernel
from mlpx.backends.cuda import ACCUMULATOR_PREAMBLE, lazy_elementwise

__all__ = ["ACTIVATIONS", "Activation", "get_activation"]

Array = Any


class Activation:
    """An elementwise (or row-wise, for softmax) activation and its derivative.

    Parameters
    ----------
    name : str
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
    """

    def __init__(
        self,
        name: str,
        forward: Kernel,
        backward: Kernel | None,
        from_output: bool,
        cuda_forward: str | None = None,
    ) -> None:
        self.name = name
        self.forward_kernel = forward
        self.backward_kernel = backward
        self.from_output = from_output
        self.cuda_forward = cuda_forward

    def forward(self, be: Any, Z: Array, out: Array) -> Array:
        """``g(Z)``, shape (n, units): ``out`` (which may be ``Z``), or a new array on
        backends that compute functionally; use the returned array."""
        return be.run(self.forward_kernel, Z, out)

    def backward(self, be: Any, dH: Array, Z: Array | None, H: Array, out: Array) -> Array:
        """``dH ⊙ g'(Z)``, shape (n, units): ``out`` (which may be ``dH``) or a new array.

        ``Z`` may be ``None`` (or already overwritten) when ``from_output`` is True.
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


# --------------------------------------------------------------------- gelu
GELU_C = math.sqrt(2.0 / math.pi)
GELU_A = 0.044715


def _is_half(xp: Any, dtype: Any) -> bool:
    return xp.finfo(dtype).bits < 32


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


# ------------------------------------------------------------------ softmax
@kernel
def softmax_forward(xp: Any, Z: Array, out: Array) -> Array:
    E = xp.exp(Z - xp.max(Z, axis=1, keepdims=True))
    return E / xp.sum(E, axis=1, keepdims=True)


@softmax_forward.register("numpy")
def _softmax_forward_np(xp: Any, Z: Array, out: Array) -> Array:
    m = xp.max(Z, axis=1, keepdims=True)
    xp.subtract(Z, m, out=out)
    xp.exp(out, out=out)
    s = xp.sum(out, axis=1, keepdims=True)
    return xp.divide(out, s, out=out)


@kernel
def softmax_backward(xp: Any, dH: Array, Z: Array, H: Array, out: Array) -> Array:
    # dZ = H ⊙ (dH − Σ_j dH_j H_j): the Jacobian-vector product, row by row.
    return H * (dH - xp.sum(dH * H, axis=1, keepdims=True))


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


# ------------------------------------------------------- CUDA variants
# One launch per backward pass (the NumPy variants are two or three on CuPy).
# Each expression must match the generic definition above; tests/test_gpu.py checks.
# dH ⊙ g'(Z) computed in A = mlpx_acc<T>::type (float for the 16-bit types, where z²
# overflows at |z| >= 256 and gives 0·inf = NaN; T itself for float32/float64).
_GELU_PREAMBLE = ACCUMULATOR_PREAMBLE + f"""
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


def _cuda_backward_from_output(expr: str, name: str) -> Any:
    k = lazy_elementwise("T dh, T h", "T dz", f"dz = {expr};", f"mlpx_{name}_backward")

    def variant(xp: Any, dH: Array, Z: Array, H: Array, out: Array) -> Array:
        k(dH, H, out)
        return out

    return variant


relu_backward.register("cupy")(_cuda_backward_from_output("h > (T)0 ? dh : (T)0", "relu"))
leaky_relu_backward.register("cupy")(
    # (T)(...): in half precision T * T is a float, and `c ? T : float` is ambiguous.
    _cuda_backward_from_output(f"h > (T)0 ? dh : (T)(dh * (T){LEAKY_SLOPE!r})", "leaky_relu")
)
logistic_backward.register("cupy")(_cuda_backward_from_output("dh * h * ((T)1 - h)", "logistic"))
tanh_backward.register("cupy")(_cuda_backward_from_output("dh * ((T)1 - h * h)", "tanh"))
exp_backward.register("cupy")(_cuda_backward_from_output("dh * h", "exp"))

_gelu_backward_cuda = lazy_elementwise(
    "T dh, T z", "T dz", "dz = mlpx_gelu_dz(dh, z);", "mlpx_gelu_backward", preamble=_GELU_PREAMBLE
)


@gelu_backward.register("cupy")
def _gelu_backward_cupy(xp: Any, dH: Array, Z: Array, H: Array, out: Array) -> Array:
    _gelu_backward_cuda(dH, Z, out)
    return out


# No numba variants here: NumPy's SIMD exp/tanh beat numba's scalar ones, and for the
# ReLU backward NumPy's multiply by the mask beat a compiled loop (the timings are in
# benchmarks/README.md; ``python -m benchmarks.kernels`` measures them).


#: Activation by name (``activation=`` and ``output=`` of the layers and ``MLP``).
ACTIVATIONS: dict[str, Activation] = {
    "identity": Activation("identity", identity_forward, None, True, "x"),
    "relu": Activation("relu", relu_forward, relu_backward, True, "x > (T)0 ? x : (T)0"),
    "leaky_relu": Activation(
        "leaky_relu", leaky_relu_forward, leaky_relu_backward, True,
        f"x > (T)0 ? x : (T)(x * (T){LEAKY_SLOPE!r})",
    ),
    "logistic": Activation(
        "logistic", logistic_forward, logistic_backward, True,
        "x >= (T)0 ? (T)1 / ((T)1 + exp(-x)) : exp(x) / ((T)1 + exp(x))",
    ),
    "tanh": Activation("tanh", tanh_forward, tanh_backward, True, "tanh(x)"),
    "gelu": Activation(
        "gelu", gelu_forward, gelu_backward, False,
        f"(T)0.5 * x * ((T)1 + tanh((T){GELU_C!r} * (x + (T){GELU_A!r} * x * x * x)))",
    ),
    "softmax": Activation("softmax", softmax_forward, softmax_backward, True),  # row-wise
    "exp": Activation("exp", exp_forward, exp_backward, True, "exp(x)"),
}
_ALIASES = {"sigmoid": "logistic", "linear": "identity", "none": "identity"}


def get_activation(name: str | Activation | None) -> Activation:
    """Look up an activation by name (``None`` means identity).

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
