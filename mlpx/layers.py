"""Layers: ``forward(X, train) -> Y`` and ``backward(dY) -> dX``.

The layer protocol (what :class:`~mlpx.model.Sequential` relies on):

``build(backend, dtype, n_in) -> n_out``
    Fix the input width and return the output width.
``param_shapes() -> list[(name, shape, kind)]``
    Parameters the layer owns; ``kind`` is ``"weight"`` (L2-penalised) or ``"bias"``.
``init_params(rng) -> dict[name, ndarray]``
    Host (NumPy, float64) starting values, drawn from ``rng``.
``bind(params, grads)``
    Dicts of the layer's parameter and gradient arrays: views into the model's flat
    buffers (on an immutable backend, arrays sliced from them, handed again after
    every write of the flat parameters).
``forward(X, train, workspace) -> Y`` and ``backward(dY, need_dX) -> dX``
    The dL/dZ interface: ``backward`` receives dL/dY, stores its parameter
    gradients in its ``grads`` dict (written into the views, or new arrays on an
    immutable backend, which the model gathers into its flat buffer), and returns
    dL/dX. It never forms a Jacobian. It may overwrite ``dY`` (the model only hands
    it buffers it owns).

Layers allocate their output and gradient workspaces once per batch size and reuse
them, so a training step allocates nothing but what the array library does inside
its own operations. Consequence: the array ``forward`` returns is overwritten by the
next ``forward`` of the same batch size; copy it if you keep it. Inference passes
its own ``workspace`` dict (one per thread, :meth:`mlpx.model.Sequential.infer`), so
predictions in several threads never share a buffer with each other or with
training.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mlpx.activations import ACTIVATIONS, Activation, get_activation
from mlpx.backends import Backend, kernel
from mlpx.backends.cuda import lazy_elementwise
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
    "ReLU",
    "Sigmoid",
    "Softmax",
    "Tanh",
    "layer_from_config",
]

Array = Any
_MAX_WORKSPACES = 4  # batch sizes kept: the full batch, the last partial one, predict chunks


@kernel
def add_bias(xp: Any, Z: Array, b: Array) -> Array:
    """``Z + b`` row by row (in ``Z`` on NumPy and CuPy); Z shape (n, units), b shape (units,)."""
    return Z + b


@add_bias.register("numpy")
def _add_bias_np(xp: Any, Z: Array, b: Array) -> Array:
    return xp.add(Z, b, out=Z)


@kernel
def bias_activation(xp: Any, Z: Array, b: Array, act: Activation, out: Array) -> Array:
    """``g(Z + b)`` (in ``out`` on NumPy and CuPy): Z shape (n, units), b shape (units,).

    ``out`` may be ``Z``; ``Z`` is scratch either way (its content afterwards is
    unspecified). The generic and NumPy versions run the bias and the activation as
    two kernels; the CUDA version is one launch.
    """
    return act.forward_kernel.generic(xp, add_bias.generic(xp, Z, b), out)


@bias_activation.register("numpy")
def _bias_activation_np(xp: Any, Z: Array, b: Array, act: Activation, out: Array) -> Array:
    _add_bias_np(xp, Z, b)
    H = act.forward_kernel.resolve(("numpy",))(xp, Z, out)
    if H is not out:  # an activation without a NumPy variant (gelu) returns a new array
        out[...] = H
    return out


# numba: bias and activation in one pass over Z (NumPy needs two calls and passes).
@lazy_njit
def _bias_relu_loop(Z, b, out):  # pragma: no cover - compiled
    for i in range(Z.shape[0]):
        for j in range(Z.shape[1]):
            x = Z[i, j] + b[j]
            out[i, j] = x if x > 0 else x * 0


@lazy_njit
def _bias_identity_loop(Z, b, out):  # pragma: no cover - compiled
    for i in range(Z.shape[0]):
        for j in range(Z.shape[1]):
            out[i, j] = Z[i, j] + b[j]


_BIAS_ACT_NUMBA = {
    "relu": _bias_relu_loop,
    "identity": _bias_identity_loop,
}


@bias_activation.register("numba")
def _bias_activation_numba(xp: Any, Z: Array, b: Array, act: Activation, out: Array) -> Array:
    loop = _BIAS_ACT_NUMBA.get(act.name)
    if loop is None or out is not Z:
        return _bias_activation_np(xp, Z, b, act, out)
    loop(Z, b, out)
    return out


def _bias_act_cuda(act: Activation) -> Any:
    # Z (n, units) is contiguous; b (units,) broadcasts over the rows, so CuPy keeps
    # both 2-D (b with a zero row stride) and writes y = Z in place.
    return lazy_elementwise(
        "T z, T b", "T y", f"T x = z + b; y = {act.cuda_forward};", f"mlpx_bias_{act.name}",
        layouts=[{"z": (2, True), "b": (2, False), "y": (2, True)}],
    )


# One fused kernel per activation with a CUDA expression, declared (not compiled) at
# import so that the offline compile test sees every one of them.
_BIAS_ACT_CUDA: dict[str, Any] = {
    name: _bias_act_cuda(act) for name, act in ACTIVATIONS.items() if act.cuda_forward is not None
}


@bias_activation.register("cupy")
def _bias_activation_cupy(xp: Any, Z: Array, b: Array, act: Activation, out: Array) -> Array:
    if act.cuda_forward is None or out is not Z:
        # softmax is row-wise: no elementwise expression.
        return _bias_activation_np(xp, Z, b, act, out)
    k = _BIAS_ACT_CUDA.get(act.name)
    if k is None:  # an Activation built outside mlpx.activations
        k = _BIAS_ACT_CUDA[act.name] = _bias_act_cuda(act)
    k(Z, b, out)  # b broadcasts over rows
    return out


@kernel
def multiply(xp: Any, a: Array, b: Array, out: Array) -> Array:
    """``a ⊙ b`` (same shapes; in ``out`` on NumPy and CuPy, and ``out`` may be ``a``)."""
    return a * b


@multiply.register("numpy")
def _multiply_np(xp: Any, a: Array, b: Array, out: Array) -> Array:
    return xp.multiply(a, b, out=out)


class Layer:
    """Base class: a parameter-free layer that passes its input through."""

    be: Backend
    dtype: str
    n_in: int
    n_out: int

    def build(self, be: Backend, dtype: str, n_in: int) -> int:
        self.be, self.dtype, self.n_in = be, dtype, n_in
        self.n_out = n_in
        self._ws: dict[tuple[str, int], Array] = {}
        return self.n_out

    def param_shapes(self) -> list[tuple[str, tuple[int, ...], str]]:
        return []

    def init_params(self, rng: Any) -> dict[str, np.ndarray]:
        return {}

    def bind(self, params: dict[str, Array], grads: dict[str, Array]) -> None:
        self.params, self.grads = params, grads

    def forward(self, X: Array, train: bool = False, workspace: dict | None = None) -> Array:
        """``H`` for input ``X`` (n, n_in); ``workspace``: buffers to use instead of the layer's."""
        return X

    def backward(self, dY: Array, need_dX: bool = True) -> Array | None:
        return dY if need_dX else None

    def get_config(self) -> dict[str, Any]:
        return {"type": type(self).__name__}

    def _workspace(self, tag: str, n: int, width: int, workspace: dict | None = None) -> Array:
        """A reusable (n, width) buffer, allocated on first use for this batch size.

        ``workspace`` is a caller's dict of buffers (inference); None: the layer's own.
        """
        ws = self._ws if workspace is None else workspace
        key = (tag, n)
        buf = ws.get(key)
        if buf is None:
            if len(ws) >= 3 * _MAX_WORKSPACES:
                ws.clear()  # unusual batch sizes (predict chunks) must not pile up
            buf = ws[key] = self.be.empty((n, width), self.dtype)
        return buf

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

    Attributes
    ----------
    W : array, shape (n_in, n_out)
        View into the model's flat parameter buffer (samples are rows, so the
        forward pass is ``X @ W``, as in scikit-learn's ``coefs_``).
    b : array, shape (n_out,)
    dW, db : arrays of the same shapes, views into the flat gradient buffer
        (new arrays after each backward pass on an immutable backend).
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

    def build(self, be: Backend, dtype: str, n_in: int) -> int:
        if n_in != self.n_in:
            raise ValueError(f"Dense expects {self.n_in} inputs but the previous layer gives {n_in}")
        n_out = self.n_out
        super().build(be, dtype, n_in)
        self.n_out = n_out
        return n_out

    def param_shapes(self) -> list[tuple[str, tuple[int, ...], str]]:
        return [("W", (self.n_in, self.n_out), "weight"), ("b", (self.n_out,), "bias")]

    def init_params(self, rng: Any) -> dict[str, np.ndarray]:
        W, b = get_initializer(self.init)(rng, self.n_in, self.n_out, self.activation.name)
        return {"W": W, "b": b}

    def bind(self, params: dict[str, Array], grads: dict[str, Array]) -> None:
        super().bind(params, grads)
        self.W, self.b = params["W"], params["b"]
        self.dW, self.db = grads["W"], grads["b"]

    def forward(self, X: Array, train: bool = False, workspace: dict | None = None) -> Array:
        """``H = g(X W + b)``; X shape (n, n_in) -> H shape (n, n_out)."""
        be, act = self.be, self.activation
        n = X.shape[0]
        Z = be.gemm(X, self.W, out=self._workspace("Z", n, self.n_out, workspace))
        if act.from_output:
            H = be.run(bias_activation, Z, self.b, act, Z)  # g' is read off H: Z may go
            Z = None
        else:  # g' reads Z + b (gelu): kept, and H in a buffer of its own
            Z = be.run(add_bias, Z, self.b)
            H = act.forward(be, Z, out=self._workspace("H", n, self.n_out, workspace))
        if train:
            self._X, self._Z, self._H = X, Z, H
        return H

    def backward(self, dY: Array, need_dX: bool = True) -> Array | None:
        """From dL/dH (n, n_out): fill ``dW``, ``db`` and return dL/dX (n, n_in).

        ``dZ = dH ⊙ g'(Z)`` overwrites ``dY``; then ``dW = Xᵀ dZ``,
        ``db = Σ_rows dZ`` and ``dX = dZ Wᵀ``.
        """
        be = self.be
        dZ = self.activation.backward(be, dY, self._Z, self._H, out=dY)
        # Rebound as well as written: on an immutable backend these are new arrays.
        self.dW = self.grads["W"] = be.gemm(self._X, dZ, trans_a=True, out=self.dW)
        self.db = self.grads["b"] = be.sum(dZ, axis=0, out=self.db)
        if not need_dX:
            return None
        return be.gemm(dZ, self.W, trans_b=True, out=self._workspace("dX", dZ.shape[0], self.n_in))

    def get_config(self) -> dict[str, Any]:
        return {
            "type": "Dense",
            "n_in": self.n_in,
            "n_out": self.n_out,
            "activation": self.activation.name,
            "init": self.init,
        }


class ActivationLayer(Layer):
    """A standalone activation ``H = g(X)`` (same shape in and out)."""

    def __init__(self, activation: str) -> None:
        self.activation = get_activation(activation)

    def forward(self, X: Array, train: bool = False, workspace: dict | None = None) -> Array:
        # Own output buffer: X may be the previous Dense's output, which that layer
        # still needs for its backward pass.
        H = self.activation.forward(self.be, X, out=self._workspace("H", X.shape[0], self.n_out, workspace))
        if train:
            self._X, self._H = X, H
        return H

    def backward(self, dY: Array, need_dX: bool = True) -> Array | None:
        if not need_dX:
            return None
        return self.activation.backward(self.be, dY, self._X, self._H, out=dY)

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
    """Inverted dropout: in training, zero each input with probability ``p`` and
    scale the rest by ``1 / (1 - p)``; identity at inference.

    The mask is drawn on the host from the layer's seeded generator and moved to
    the device, so the same seed drops the same units on every backend.

    Parameters
    ----------
    p : float in [0, 1)
        Python or NumPy number; anything else (NaN, 1, "0.5") raises
        :class:`~mlpx.validation.InvalidParameterError`.
    seed : int, optional
        Seed of the mask generator (the model passes its own seed when None).
    """

    def __init__(self, p: float = 0.5, seed: int | None = None) -> None:
        self.p = check_real("Dropout: p", p, 0.0, 1.0, high_open=True)
        self.seed = check_seed(seed, "Dropout: seed")
        self._rng = np.random.default_rng(self.seed)

    def reseed(self, seed: int | None) -> None:
        """Seed the mask generator from the model's seed (unless the layer has its own)."""
        if self.seed is None:
            self._rng = np.random.default_rng(seed)

    def get_rng_state(self) -> dict:
        """The mask generator's state (to replay the same masks)."""
        return self._rng.bit_generator.state

    def set_rng_state(self, state: dict) -> None:
        self._rng.bit_generator.state = state

    def fork(self, rank: int) -> None:
        """A mask generator of its own for data-parallel rank ``rank``, derived from this one."""
        self._rng = np.random.default_rng([int(self._rng.integers(2**62)), rank])

    def forward(self, X: Array, train: bool = False, workspace: dict | None = None) -> Array:
        if not train or self.p == 0.0:
            if train:
                self._mask = None
            return X
        n, width = X.shape
        keep = (self._rng.random((n, width)) >= self.p) / (1.0 - self.p)
        self._mask = self.be.asarray(keep, dtype=self.dtype)
        return self.be.run(multiply, X, self._mask, self._workspace("H", n, width))

    def backward(self, dY: Array, need_dX: bool = True) -> Array | None:
        if not need_dX:
            return None
        if self._mask is None:
            return dY
        return self.be.run(multiply, dY, self._mask, dY)

    def get_config(self) -> dict[str, Any]:
        return {"type": "Dropout", "p": self.p, "seed": self.seed}


#: Layer class by the name model files record.
LAYERS: dict[str, type[Layer]] = {
    "Dense": Dense,
    "ActivationLayer": ActivationLayer,
    "Dropout": Dropout,
}


def layer_from_config(config: dict[str, Any]) -> Layer:
    """Rebuild a layer from ``Layer.get_config()`` output (used by ``mlpx.load``)."""
    if not isinstance(config, dict):
        raise ValueError(f"a layer record must be a JSON object, got {config!r}")
    config = dict(config)
    kind = config.pop("type", None)
    if not isinstance(kind, str) or kind not in LAYERS:
        raise ValueError(f"unknown layer type {kind!r} in saved model; known: {sorted(LAYERS)}")
    return LAYERS[kind](**config)
