"""The model: a stack of layers on one backend, with one flat parameter buffer.

``Sequential`` owns the parameters of all its layers in a single contiguous 1-D
buffer (weights of every layer first, then every bias) and the gradients in a
second buffer of the same layout. Layers see ``(n_in, n_out)`` and ``(n_out,)``
views into them. Consequences: an optimizer step is a few whole-buffer operations,
the L2 penalty is one operation on the weight prefix, save/load and CPU↔GPU moves
are one transfer, and a data-parallel all-reduce is one call.

On an immutable backend (JAX, ``backend.mutable`` False) there are no views: every
write of the flat parameters (an update, ``set_flat_params``, a rollback) makes a new
array, from which the layers' arrays are sliced again, and after each backward pass
the flat gradient is assembled from the layers' gradient arrays in slot order.

The last activation of the stack is the *output* activation. It is kept apart from
the layers during training: the last layer produces logits ``Z`` and the loss bound
to the output activation (:func:`mlpx.losses.pair`) turns them into the loss and
the output delta ``dZ`` (the ``(Ŷ − Y)/n`` shortcut for the canonical pairs).

Training goes through one public step, :meth:`Sequential.train_step` (forward,
backward, all-reduce across ranks, L2 penalty, update), which :func:`mlpx.training.fit`
and the scikit-learn estimators drive. Inference (``predict``, ``evaluate``) is
thread-safe: each thread has its own workspaces, and a prediction holds the
parameter lock for reading, so it sees the weights of one moment, between two
updates, even while ``fit`` runs in another thread.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterable, NamedTuple, Sequence

import numpy as np

from mlpx import streams, training
from mlpx.activations import Activation, get_activation
from mlpx.backends import Backend, BackendError, get_backend, kernel
from mlpx.distributed import LocalReducer, Reducer
from mlpx.layers import ActivationLayer, Dense, Dropout, Layer, layer_from_config
from mlpx.locking import ReadWriteLock
from mlpx.losses import Loss, OutputLoss, l2_penalty, pair
from mlpx.metrics import PREDICT_CHUNK, correct_count, holdout_scores, iter_chunks
from mlpx.optimizers import Optimizer
from mlpx.precision import all_finite, get_precision, scale_cast
from mlpx.saving import MAX_PARAMS, ModelFileError, check_architecture, read_model_file, write_model_file
from mlpx.validation import check_int, check_real, check_sample_weight, check_seed, check_X, encode_targets

__all__ = ["MLP", "Sequential", "StepResult", "load"]

Array = Any


class StepResult(NamedTuple):
    """What one :meth:`Sequential.train_step` produced.

    Attributes
    ----------
    loss : float or 0-d array
        The data term ``Σ w_i l_i / denom`` summed over ranks (on the device: read
        it once per epoch, not per step).
    penalty : float or 0-d array
        The L2 term ``½ l2 Σ‖W‖² / denom`` (0.0 without L2).
    correct : 0-d array or None
        Rows of this rank's batch predicted right (``count_correct=True``).
    applied : bool or None
        Whether the update was applied (False: an fp16 step skipped on overflow);
        None without an optimizer.
    error : BaseException or None
        A failure after the all-reduce on this rank (data-parallel training reports
        it at the next collective); always None for single-process training.
    """

    loss: Any
    penalty: Any
    correct: Any
    applied: bool | None
    error: BaseException | None


@kernel
def _zero(xp: Any, a: Array) -> Array:
    """Zeros like ``a`` (in ``a`` on NumPy and CuPy): a rank without rows this step
    contributes zero gradients."""
    return xp.zeros_like(a)


@_zero.register("numpy")
def _zero_np(xp: Any, a: Array) -> Array:
    a.fill(0)
    return a


def _check_dtype(dtype: Any) -> str:
    """``"float32"`` or ``"float64"`` from a name, a NumPy dtype or a scalar type."""
    try:
        name = np.dtype(dtype).name if dtype is not None else None
    except TypeError:
        name = None
    if name not in ("float32", "float64"):
        raise TypeError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return name


class Sequential:
    """Layers applied in order, trained as one network.

    Parameters
    ----------
    layers : sequence of Layer, optional
        The first parameterised layer must be a :class:`~mlpx.layers.Dense` (it fixes
        the input width). The last activation (a fused Dense activation or a trailing
        activation layer) is the output activation. Layers can also be appended one
        by one with :meth:`add`.
    backend : str or Backend, default "cpu"
        ``"cpu"``, ``"gpu"``, ``"gpu:N"``, ``"auto"``, ``"array_api_strict"`` or an
        instance (see :func:`mlpx.backends.get_backend`).
    dtype : {"float32", "float64"}, default "float32"
        Dtype of parameters, gradients, optimizer state and computation.
    seed : int, optional
        Seeds the host generator for initial weights (and dropout masks and the
        shuffling in ``fit``); the same seed gives the same starting weights on
        every backend. A NumPy integer is accepted and stored as a Python int.
    precision : {None, "float32", "tf32", "bf16", "fp16"}, optional
        How a step computes (:mod:`mlpx.precision`): None computes in ``dtype``;
        "tf32" uses TF32 tensor cores for the float32 products (GPU); "bf16" and
        "fp16" run activations and products in that dtype with float32 master
        weights and optimizer state (fp16 with dynamic loss scaling).

    Attributes
    ----------
    params : array, shape (n_params,)
        Flat parameter buffer on the backend.
    grads : array, shape (n_params,)
        Flat gradient buffer, same layout.
    n_weights : int
        Length of the weight prefix of ``params`` (biases follow).
    precision_ : Precision
        The resolved precision mode; ``compute_dtype`` is its compute dtype.
    output : Activation
        The output activation.
    parameter_lock : ReadWriteLock
        Held for reading by inference and for writing by every update of
        ``params``; hold it (``with model.parameter_lock.write():``) to write
        ``params`` yourself while other threads predict.
    n_features_in_, n_outputs_ : int
    history : History or None
        The logs of the last ``fit``.
    optimizer_ : Optimizer or None
        The optimizer of the last ``fit``, with its state.
    loss_ : OutputLoss or None
        The loss of the last ``fit`` (``evaluate`` reports it).
    epochs_done_, samples_seen_ : int
        Epochs and samples trained on so far, over all ``fit`` calls (they drive
        learning-rate schedules and resume exactly from checkpoints).
    shuffle_rng_ : numpy.random.Generator or None
        The generator of ``fit``'s minibatch order, kept across ``fit`` calls.
    stop_training : bool
        Set by a callback to end ``fit`` after the current epoch.
    """

    def __init__(
        self,
        layers: Sequence[Layer] = (),
        backend: str | Backend = "cpu",
        dtype: str = "float32",
        seed: int | None = None,
        precision: str | None = None,
    ) -> None:
        self.backend = get_backend(backend)
        self.dtype = _check_dtype(dtype)
        if precision in ("bf16", "fp16") and not self.backend.mutable:
            # Mixed precision keeps a low-precision copy of the weights that layers view.
            raise BackendError(
                f"precision={precision!r} computes with low-precision copies written into "
                f"preallocated buffers, and backend {self.backend.name!r} has immutable "
                f"arrays; use precision=None"
            )
        self.precision_ = get_precision(precision, self.dtype, self.backend)
        self.compute_dtype = self.precision_.compute_dtype
        # A NumPy integer seed would break the JSON record and the per-layer dropout
        # seeds (seed + 1 + k): normalise it to a Python int once, here.
        self.seed = seed = check_seed(seed)
        self.parameter_lock = ReadWriteLock()
        self._one_rank = LocalReducer(self.backend)  # the reducer of single-process steps
        self.history: Any = None
        self.optimizer_: Optimizer | None = None
        self.loss_: OutputLoss | None = None
        self.epochs_done_ = 0
        self.samples_seen_ = 0
        self.shuffle_rng_: np.random.Generator | None = None
        self.stop_training = False
        self._given: list[Layer] = []
        self._ws: dict[tuple[str, int], Array] = {}
        self._tls = threading.local()
        self._dropout_rank = 0
        self._shuffle_rank = 0
        self.layers: list[Layer] = []
        self.output: Activation = get_activation("identity")
        self.params: Array = None
        self.grads: Array = None
        for layer in layers:
            self._check_layer(layer)
        self._given = list(layers)
        if not self._given and not isinstance(layers, (list, tuple)):
            raise ValueError("Sequential needs a sequence of layers")
        if self._given:
            self._build()
            self.initialize(seed)

    # ------------------------------------------------------------------ build
    @staticmethod
    def _check_layer(layer: Any) -> None:
        if not isinstance(layer, Layer):
            raise TypeError(f"not a layer: {layer!r}")

    def add(self, layer: Layer) -> "Sequential":
        """Append a layer, as the classic ``Network.add``; returns the model.

        The network is rebuilt and re-initialised from ``seed`` (layers before the
        new one get the same starting weights as before). A model that has been
        trained refuses: build the whole stack first.
        """
        self._check_layer(layer)
        if self.history is not None or self.epochs_done_:
            raise RuntimeError("add() builds a network before training; this model has been trained")
        self._given.append(layer)
        if any(isinstance(l, Dense) for l in self._given):
            self._build()
            self.initialize(self.seed)
        return self

    @property
    def built(self) -> bool:
        """Whether the network has its parameters (it needs a Dense layer)."""
        return self.params is not None

    def _require_built(self) -> None:
        if self.params is None:
            raise ValueError(
                "this Sequential has no Dense layer yet: add layers with add() or pass them "
                "to Sequential([...])"
            )

    def _build(self) -> None:
        be, dtype = self.backend, self.dtype
        mixed = self.precision_.mixed
        self.layers, self.output = _split_output(self._given)
        first = next((l for l in self.layers if isinstance(l, Dense)), None)
        if first is None:
            raise ValueError("Sequential needs at least one Dense layer")
        self.n_features_in_ = n = first.n_in
        for layer in self.layers:
            n = layer.build(be, self.compute_dtype, n)
        self.n_outputs_ = n
        # Flat layout: all weights, then all biases, so the L2 term touches a prefix.
        specs = [(i, name, shape, kind) for i, l in enumerate(self.layers) for name, shape, kind in l.param_shapes()]
        ordered = [s for s in specs if s[3] == "weight"] + [s for s in specs if s[3] != "weight"]
        self._slots: list[tuple[int, str, tuple[int, ...], int, int]] = []
        offset = 0
        for i, name, shape, _kind in ordered:
            size = int(np.prod(shape))
            self._slots.append((i, name, shape, offset, offset + size))
            offset += size
        self.n_params = offset
        self.n_weights = sum(int(np.prod(s[2])) for s in ordered if s[3] == "weight")
        self.params = be.zeros(offset, dtype)
        self.grads = be.zeros(offset, dtype)
        # Mixed precision: layers compute with low-precision copies (refreshed from the
        # master weights by every forward pass) and write low-precision gradients,
        # which the step converts into the master gradient buffer.
        self._params_c = be.zeros(offset, self.compute_dtype) if mixed else self.params
        self._grads_c = be.zeros(offset, self.compute_dtype) if mixed else self.grads
        self._bind_layers(self._grads_c)
        self._ws.clear()
        self._tls = threading.local()

    def _bind_layers(self, grads: Array | None) -> None:
        """Hand each layer its parameter arrays, cut from the compute copy of ``params``,
        and its gradient arrays cut from ``grads`` (None: the layer keeps its own)."""
        be = self.backend
        stops = [s[4] for s in self._slots[:-1]]
        shaped = self._shaped
        params = [shaped(p, s[2]) for p, s in zip(be.split(self._params_c, stops), self._slots)]
        flat_grads = None if grads is None else [shaped(g, s[2]) for g, s in zip(be.split(grads, stops), self._slots)]
        views: dict[int, tuple[dict[str, Array], dict[str, Array]]] = {}
        for k, (i, name, _shape, _a, _b) in enumerate(self._slots):
            pv, gv = views.setdefault(i, ({}, {}))
            pv[name] = params[k]
            if flat_grads is not None:
                gv[name] = flat_grads[k]
        for i, layer in enumerate(self.layers):
            pv, gv = views.get(i, ({}, {}))
            layer.bind(pv, gv if grads is not None else getattr(layer, "grads", gv))
        if flat_grads is not None:
            self._grad_views = flat_grads

    def _shaped(self, piece: Array, shape: tuple[int, ...]) -> Array:
        # 1-D pieces (biases) are already shaped: a reshape is one more operation
        # on namespaces where every operation costs (JAX).
        return piece if len(shape) == 1 else self.backend.xp.reshape(piece, shape)

    def _store_params(self, params: Array) -> None:
        """Make ``params`` the flat parameters (caller holds the write lock).

        Where arrays can be written every write goes into the buffer itself and this
        is a no-op; on an immutable backend ``params`` is a new array and the layers'
        arrays are cut from it again.
        """
        if params is self.params:
            return
        self.params = params
        if not self.precision_.mixed:
            self._params_c = params
            self._bind_layers(None)

    def _gather_grads(self) -> None:
        """After backward: the flat gradient from the layers' gradient arrays, unless the
        layers wrote them into the views of it (NumPy, CuPy). The generic backend
        returns new arrays (on JAX nothing can be written), gathered here in slot order.
        """
        arrays = [self.layers[i].grads[name] for i, name, _shape, _a, _b in self._slots]
        if all(a is v for a, v in zip(arrays, self._grad_views)):
            return
        xp = self.backend.xp
        flat = xp.concat([a if len(a.shape) == 1 else xp.reshape(a, (-1,)) for a in arrays])
        if self.precision_.mixed:
            self._grads_c = flat  # converted into the master gradients by the caller
        else:
            self.grads = self._grads_c = flat

    def initialize(self, seed: Any = None) -> None:
        """Draw fresh starting weights on the host and move them once.

        Parameters
        ----------
        seed : int, None, or a generator
            An int/None seeds ``numpy.random.default_rng``; an object with
            ``uniform(low, high, size)`` (a ``RandomState``, as scikit-learn uses)
            is drawn from directly, layer by layer, W before b.
        """
        self._require_built()
        rng = seed if hasattr(seed, "uniform") else np.random.default_rng(seed)
        host = np.zeros(self.n_params)
        drawn = {i: layer.init_params(rng) for i, layer in enumerate(self.layers)}
        for i, name, _shape, a, b in self._slots:
            host[a:b] = np.ravel(drawn[i][name])
        self.set_flat_params(host)
        for k, layer in enumerate(self.layers):
            if isinstance(layer, Dropout):
                layer.reseed(seed + 1 + k if isinstance(seed, (int, np.integer)) else None)

    # ------------------------------------------------------------ parameters
    def parameters(self) -> dict[str, Array]:
        """Parameter views on the backend, named ``"<layer>.<name>"`` (e.g. ``"0.W"``).

        Views of the master buffer ``params`` (in ``dtype``, whatever the precision).
        """
        return self._views(self.params)

    def gradients(self) -> dict[str, Array]:
        """Gradient views on the backend, same names as :meth:`parameters`."""
        return self._views(self.grads)

    def layout(self) -> dict[str, tuple[int, int, tuple[int, ...]]]:
        """Where each parameter lives in the flat buffer: name -> (start, stop, shape)."""
        self._require_built()
        return {f"{i}.{name}": (a, b, shape) for i, name, shape, a, b in self._layer_order()}

    def _views(self, flat: Array) -> dict[str, Array]:
        self._require_built()
        reshape = self.backend.xp.reshape
        return {f"{i}.{name}": reshape(flat[a:b], shape) for i, name, shape, a, b in self._layer_order()}

    def _layer_order(self) -> list[tuple[int, str, tuple[int, ...], int, int]]:
        return sorted(self._slots, key=lambda s: (s[0], s[1] != "W"))

    def get_weights(self) -> list[np.ndarray]:
        """Host copies of the parameters in layer order: ``[W0, b0, W1, b1, ...]``."""
        flat = self.get_flat_params()
        return [flat[a:b].reshape(shape).copy() for _i, _n, shape, a, b in self._layer_order()]

    def set_weights(self, weights: Iterable[Any]) -> None:
        """Set all parameters from host arrays in the order of :meth:`get_weights`."""
        self._require_built()
        weights = list(weights)
        order = self._layer_order()
        if len(weights) != len(order):
            raise ValueError(f"expected {len(order)} arrays, got {len(weights)}")
        flat = np.empty(self.n_params)
        for w, (i, name, shape, a, b) in zip(weights, order):
            w = np.asarray(w)
            if w.shape != shape:
                raise ValueError(f"layer {i} {name}: expected shape {shape}, got {w.shape}")
            flat[a:b] = w.ravel()
        self.set_flat_params(flat)

    def get_flat_params(self) -> np.ndarray:
        """A host copy of the flat parameter buffer, shape (n_params,)."""
        self._require_built()
        with self.parameter_lock.read():
            return np.array(self.backend.to_numpy(self.params), copy=True)

    def set_flat_params(self, flat: Any) -> None:
        """Overwrite the flat parameter buffer from a host array (one transfer)."""
        self._require_built()
        flat = np.asarray(flat)
        if flat.shape != (self.n_params,):
            raise ValueError(f"expected shape ({self.n_params},), got {flat.shape}")
        if not np.isfinite(flat).all():
            raise ValueError("parameters contain NaN or infinity")
        be = self.backend
        src = be.asarray(flat.astype(self.dtype), dtype=self.dtype)
        with self.parameter_lock.write():
            self._store_params(be.copy(src, self.params))

    def assign_params(self, src: Array) -> None:
        """Copy a device buffer (shape (n_params,), on this backend) into ``params``."""
        with self.parameter_lock.write():
            self._store_params(self.backend.copy(src, self.params))

    # ---------------------------------------------------------------- forward
    def forward(self, X: Array, train: bool = False, workspace: dict | None = None) -> Array:
        """Logits of the last layer for a batch already on the backend.

        Parameters
        ----------
        X : array, shape (n, n_features_in_), on the backend, in the compute dtype.
        train : bool
            Keep what the backward pass needs (training only).
        workspace : dict, optional
            Per-layer buffers to compute in (inference passes this thread's);
            None uses the layers' own training workspaces.

        Returns
        -------
        array, shape (n, n_outputs_): a workspace overwritten by the next call.
        In mixed precision, X and the logits are in ``compute_dtype``.
        """
        self._require_built()
        if self.precision_.mixed:
            # One conversion of the whole flat buffer per pass: the compute copy can
            # never be stale, whoever last wrote the master weights. (Mixed precision
            # runs on mutable backends only: the copy is written in place.)
            self.backend.copy(self.params, self._params_c)
        H = X
        for i, layer in enumerate(self.layers):
            H = layer.forward(H, train, None if workspace is None else workspace.setdefault(i, {}))
        return H

    def infer(self, X: Array) -> tuple[Array, Array]:
        """Logits ``Z`` and outputs ``P = g(Z)`` of a batch on the backend (thread-safe).

        Parameters
        ----------
        X : array, shape (n, n_features_in_), on the backend, in the compute dtype.

        Returns
        -------
        Z, P : arrays, shape (n, n_outputs_), in the master dtype
            This thread's workspaces, overwritten by its next call.
        """
        ws = self._thread_workspace()
        with self.parameter_lock.read():
            Z = self._master(self.forward(X, train=False, workspace=ws), ws)
        n = Z.shape[0]
        P = self.output.forward(self.backend, Z, out=self._buffer(ws, "P", n, self.n_outputs_))
        return Z, P

    def _thread_workspace(self) -> dict:
        ws = getattr(self._tls, "ws", None)
        if ws is None:
            ws = self._tls.ws = {}
        return ws

    def _buffer(self, ws: dict, tag: str, n: int, width: int, dtype: str | None = None) -> Array:
        key = (tag, n)
        buf = ws.get(key)
        if buf is None:
            if len(ws) > 16:
                for k in [k for k in ws if isinstance(k, tuple)]:
                    del ws[k]
            buf = ws[key] = self.backend.empty((n, width), dtype or self.dtype)
        return buf

    def _master(self, Z: Array, ws: dict) -> Array:
        """Logits in the master dtype (a converted workspace copy in mixed precision)."""
        if not self.precision_.mixed:
            return Z
        return self.backend.copy(Z, self._buffer(ws, "Z", Z.shape[0], self.n_outputs_))

    def gemm_flops(self, n: int) -> float:
        """Flops (2·n·n_in·n_out) of the largest matrix product for a batch of n rows."""
        return max((2.0 * n * l.n_in * l.n_out for l in self.layers if isinstance(l, Dense)), default=0.0)

    def check_input(self, X: Any, name: str = "X") -> Any:
        """:func:`~mlpx.validation.check_X` against this model: its width, and the range
        of its compute dtype (a value the cast would turn into infinity is refused)."""
        self._require_built()
        return check_X(X, self.backend, self.n_features_in_, name=name, dtype=self.compute_dtype)

    def _predict_raw(self, X: Any, apply_output: bool = True, argmax: bool = False) -> np.ndarray:
        """Host array (n, n_outputs_) of outputs, computed in chunks of PREDICT_CHUNK rows.

        With ``argmax`` the class index of each row is taken on the device and only
        the (n,) indices come back: no per-chunk transfer beyond the result. The
        whole call holds the parameter lock for reading: one set of weights.
        """
        if streams.is_stream(X):
            return streams.predict_raw(self, X, apply_output, argmax)
        X = self.check_input(X)
        be = self.backend
        n = X.shape[0]
        result = np.empty((n,) if argmax else (n, self.n_outputs_), dtype=np.int64 if argmax else self.dtype)
        with self.compute_context(min(n, PREDICT_CHUNK)), self.parameter_lock.read():
            for start, stop in iter_chunks(n, PREDICT_CHUNK):
                Xc = be.asarray(X[start:stop, :], dtype=self.compute_dtype)
                Z, P = self.infer(Xc)
                if argmax:
                    result[start:stop] = be.to_numpy(be.xp.argmax(Z, axis=1))
                else:
                    result[start:stop] = be.to_numpy(P if apply_output else Z)
        return result

    def compute_context(self, batch: int) -> contextlib.ExitStack:
        """Device, BLAS threads and GEMM precision for passes over ``batch`` rows."""
        be = self.backend
        stack = contextlib.ExitStack()
        stack.enter_context(be.activated())
        stack.enter_context(be.blas_threads(self.gemm_flops(batch)))
        if self.precision_.tf32:
            stack.enter_context(be.tf32_matmul())
        return stack

    def predict_proba(self, X: Any) -> np.ndarray:
        """Output activation values (class probabilities for softmax / logistic).

        Thread-safe; see the module docstring.

        Returns
        -------
        ndarray, shape (n, n_outputs_), host.
        """
        return self._predict_raw(X)

    def predict(self, X: Any) -> np.ndarray:
        """Predictions on the host (thread-safe).

        softmax: class indices, shape (n,); logistic: 0/1 labels, shape (n,) for one
        output or (n, k); other outputs: values, shape (n,) for one output or (n, k).
        """
        out = self.output.name
        if out == "softmax":
            return self._predict_raw(X, argmax=True)
        if out == "logistic":
            labels = (self._predict_raw(X) > 0.5).astype(np.int64)
            return labels[:, 0] if labels.shape[1] == 1 else labels
        P = self._predict_raw(X)
        return P[:, 0] if P.shape[1] == 1 else P

    # ------------------------------------------------------------- losses
    def resolve_loss(self, loss: str | Loss | OutputLoss | None) -> OutputLoss:
        """``loss`` bound to this model's output activation (None: its canonical loss).

        Any loss works on any output whose values lie in its domain (chain rule);
        see :func:`mlpx.losses.pair`.
        """
        if isinstance(loss, OutputLoss):
            if loss.activation.name != self.output.name:
                raise ValueError(f"{loss!r} is bound to another output than {self.output.name!r}")
            return loss
        return pair(loss, self.output)

    # ---------------------------------------------------------- training step
    def forward_backward(self, X: Array, Y: Array, w: Array | None = None, *,
                         loss: OutputLoss, denom: float) -> Array:
        """The data term of one minibatch and its gradient, into ``grads``.

        Parameters
        ----------
        X : array, shape (n, n_features_in_), on the backend (compute dtype)
        Y : array, shape (n, n_outputs_), encoded targets (master dtype)
        w : array, shape (n,), optional sample weights
        loss : OutputLoss
            From :meth:`resolve_loss`.
        denom : float
            Normaliser ``d`` of ``Σ w_i l_i / d``: the rows (or Σ w) of the whole step
            (of every rank's batch in data-parallel training).

        Returns
        -------
        0-d array
            ``Σ w_i l_i / d``; ``grads`` holds its gradient (no L2 term).
        """
        be = self.backend
        n = X.shape[0]
        prec = self.precision_
        Z = self._logits = self._master(self.forward(X, train=True), self._ws)
        dZ = self._train_buffer("dZ", n, self.n_outputs_)
        P = None if loss.canonical else self._train_buffer("P", n, self.n_outputs_)
        value, dZ = loss.delta(be, Z, Y, dZ, w, denom, P)
        if prec.mixed:
            # The output delta goes back in the compute dtype, multiplied by the loss
            # scale (fp16) so small gradients do not flush to zero on the way.
            dZc = self._train_buffer("dZc", n, self.n_outputs_, self.compute_dtype)
            dZ = be.run(scale_cast, dZ, prec.loss_scale, dZc)
        dH: Array | None = dZ
        first_param = next(i for i, l in enumerate(self.layers) if l.param_shapes())
        for i in range(len(self.layers) - 1, -1, -1):
            dH = self.layers[i].backward(dH, need_dX=i > first_param)
            if dH is None:
                break
        self._gather_grads()
        if prec.mixed:
            self.grads = be.assign(self.grads, be.run(scale_cast, self._grads_c, 1.0 / prec.loss_scale, self.grads))
        return value

    def _train_buffer(self, tag: str, n: int, width: int, dtype: str | None = None) -> Array:
        return self._buffer(self._ws, tag, n, width, dtype)

    def add_l2_penalty(self, l2: float, denom: float) -> Array:
        """Add ``l2 W / d`` to the weight gradients; return the loss term ``½ l2 Σ‖W‖² / d``.

        Kept apart from the data term so a data-parallel step all-reduces the data
        gradients first and adds the penalty once, with the global ``d``.
        """
        be, nw = self.backend, self.n_weights
        tmp = self._ws.get(("l2", nw))
        if tmp is None:
            tmp = self._ws[("l2", nw)] = be.empty(nw, self.dtype)
        sq, grads = be.run(l2_penalty, self.params, self.grads, nw, float(l2) / denom, tmp)
        self.grads = be.assign(self.grads, grads)
        return (0.5 * float(l2) / denom) * sq

    def apply_update(self, optimizer: Optimizer) -> bool:
        """Apply ``optimizer`` to the master weights; False if the step was skipped.

        With fp16 loss scaling, a step whose gradients overflowed is skipped and the
        scale lowered (one flag read back from the device per step, as in
        ``torch.amp.GradScaler``); every other mode always applies the step. Holds
        the parameter lock for writing.
        """
        scaler = self.precision_.scaler
        with self.parameter_lock.write():
            if scaler is None:
                self._store_params(optimizer.step(self.params, self.grads))
                return True
            found_inf = not bool(self.backend.run(all_finite, self.grads))
            scaler.update(found_inf)
            if not found_inf:
                self._store_params(optimizer.step(self.params, self.grads))
            return not found_inf

    def train_step(
        self,
        X: Array | None,
        Y: Array | None,
        w: Array | None = None,
        *,
        denom: float,
        loss: OutputLoss,
        optimizer: Optimizer | None,
        l2: float = 0.0,
        reducer: Reducer | None = None,
        count_correct: bool = False,
        pending: BaseException | None = None,
        where: str = "",
    ) -> StepResult:
        """One minibatch step: forward, backward, all-reduce, L2 penalty, update.

        Every training loop of mlpx runs on this step: ``fit`` (one process or many)
        and the scikit-learn estimators' SGD and Adam solvers.

        Parameters
        ----------
        X, Y, w : arrays on the backend, shapes (n, n_features_in_), (n, n_outputs_), (n,)
            This rank's minibatch; ``X=None`` when this rank has no rows this step
            (it still joins the all-reduce).
        denom : float
            The step's loss normaliser: rows (or Σ w) of every rank's batch together.
        loss : OutputLoss
            From :meth:`resolve_loss`.
        optimizer : Optimizer or None
            Bound to this model; None computes the loss and gradient only.
        l2 : float
            L2 penalty, scaled as scikit-learn's ``alpha``: ``½ l2 Σ‖W‖² / denom``.
        reducer : Reducer, optional
            Combines the ranks' gradients (:mod:`mlpx.distributed`); default: one rank.
        count_correct : bool
            Also count this batch's correct predictions (from the logits).
        pending : BaseException, optional
            A failure of this rank since the last collective: skip the local work and
            make every rank raise.
        where : str
            Named in the error other ranks raise.

        Returns
        -------
        StepResult
        """
        reducer = reducer if reducer is not None else self._one_rank
        value: Any = 0.0
        correct = None
        error = pending
        if X is not None and error is None:
            try:
                value = self.forward_backward(X, Y, w, loss=loss, denom=denom)
                if count_correct:
                    correct = self.backend.run(correct_count, self._logits, Y, self.output.name)
            except BaseException as exc:
                if reducer.size == 1:
                    raise
                error = exc
        elif X is None and error is None:
            self.grads = self.backend.assign(self.grads, self.backend.run(_zero, self.grads))
        value = reducer.allreduce_gradients(self.grads, value, error=error, where=where)
        penalty: Any = 0.0
        applied: bool | None = None
        late: BaseException | None = error
        if late is None:
            try:
                if l2:
                    penalty = self.add_l2_penalty(l2, denom)
                if optimizer is not None:
                    applied = self.apply_update(optimizer)
            except BaseException as exc:
                if reducer.size == 1:
                    raise
                late = exc
        return StepResult(value, penalty, correct, applied, late)

    def loss_and_grads(
        self,
        X: Any,
        y: Any,
        sample_weight: Any = None,
        loss: str | Loss | None = None,
        l2: float = 0.0,
    ) -> tuple[float, dict[str, np.ndarray]]:
        """Loss and every parameter's gradient for one batch (custom loops, checks).

        Parameters
        ----------
        X : array_like, shape (n, n_features_in_)
        y : array_like
            Targets as :meth:`fit` takes them.
        sample_weight : array_like, shape (n,), optional
        loss : str or Loss, optional
            Defaults to the loss paired with the output activation.
        l2 : float
            L2 penalty strength (``alpha`` in scikit-learn's scaling).

        Returns
        -------
        loss : float
        grads : dict of name -> ndarray
            Host copies, named as in :meth:`parameters`.
        """
        be = self.backend
        l2 = check_real("l2", l2, 0.0)
        X = self.check_input(X)
        lossfn = self.resolve_loss(loss)
        Y = encode_targets(y, self.output.name, self.n_outputs_, X.shape[0], dtype=self.dtype, loss=lossfn.name)
        w = check_sample_weight(sample_weight, X.shape[0], dtype=self.dtype)
        with self.compute_context(X.shape[0]):
            Xd = be.asarray(X, dtype=self.compute_dtype)
            Yd = be.asarray(Y, dtype=self.dtype)
            wd = None if w is None else be.asarray(w, dtype=self.dtype)
            denom = float(X.shape[0]) if w is None else float(w.sum())
            scaler = self.precision_.scaler
            with np.errstate(over="ignore", invalid="ignore"):
                value = self._loss_and_grads_once(Xd, Yd, wd, lossfn, denom, l2)
                # fp16: lower the loss scale until the scaled gradients fit float16
                # (here a caller wants the gradients, so retrying beats skipping).
                while scaler is not None and scaler.scale > 1.0 and not bool(be.run(all_finite, self.grads)):
                    scaler.update(found_inf=True)
                    value = self._loss_and_grads_once(Xd, Yd, wd, lossfn, denom, l2)
            grads = {k: np.array(be.to_numpy(v), copy=True) for k, v in self.gradients().items()}
            return be.to_float(value), grads

    def _loss_and_grads_once(self, X: Array, Y: Array, w: Array | None, loss: OutputLoss,
                             denom: float, l2: float) -> Any:
        step = self.train_step(X, Y, w, denom=denom, loss=loss, optimizer=None, l2=l2)
        return step.loss + step.penalty

    # -------------------------------------------------------------- scoring
    def evaluate(self, X: Any, y: Any = None, sample_weight: Any = None,
                 loss: str | Loss | None = None) -> dict[str, float]:
        """Mean loss and a metric on ``(X, y)``: accuracy (softmax / logistic) or R².

        Thread-safe. The loss is ``loss``, else the loss of the last ``fit``, else
        the output's canonical loss; accuracy uses ``predict``'s labels. ``X`` takes
        the forms of :meth:`fit` (a store read in chunks, or a stream of batches with
        ``y=None``).

        Returns
        -------
        dict
            ``{"loss": ..., "accuracy": ...}`` or ``{"loss": ..., "r2": ...}``.
        """
        if y is None or streams.is_stream(X):
            return streams.evaluate(self, X, y, sample_weight, loss)
        be = self.backend
        X = self.check_input(X)
        lossfn = self.resolve_loss(loss if loss is not None else self.loss_)
        Y = encode_targets(y, self.output.name, self.n_outputs_, X.shape[0], dtype=self.dtype, loss=lossfn.name)
        w = check_sample_weight(sample_weight, X.shape[0], dtype=self.dtype)
        n = X.shape[0]

        def chunks() -> Iterable[tuple[Array, Array, Array | None]]:
            for a, b in iter_chunks(n, PREDICT_CHUNK):
                yield (be.asarray(X[a:b, :], dtype=self.compute_dtype), be.asarray(Y[a:b], dtype=self.dtype),
                       None if w is None else be.asarray(w[a:b], dtype=self.dtype))

        with self.compute_context(min(n, PREDICT_CHUNK)), self.parameter_lock.read():
            scores = holdout_scores(self, chunks, self._one_rank, lossfn)
        del scores["weight"]
        return scores

    # --------------------------------------------------------------- training
    def fit(
        self,
        X: Any,
        y: Any = None,
        epochs: int = 10,
        batch_size: int = 32,
        optimizer: str | Optimizer = "adam",
        loss: str | Loss | None = None,
        validation_data: tuple[Any, ...] | None = None,
        validation_split: float = 0.0,
        shuffle: bool = True,
        callbacks: Sequence[Any] = (),
        verbose: int = 0,
        sample_weight: Any = None,
        l2: float = 0.0,
        lr: float | None = None,
        comm: Any = None,
        stream_data: bool | None = None,
    ) -> Any:
        """Train on ``(X, y)`` with minibatch gradient descent.

        Parameters
        ----------
        X : array_like, shape (n_samples, n_features), a store, or a stream of batches
            Host data, or an array already on the backend; a zarr array, an
            ``h5py.Dataset`` or a Dask array (read in chunks, in the background); or
            a re-iterable of ``(X, y)`` / ``(X, y, w)`` batches (a generator factory,
            a ``torch.utils.data.DataLoader``) with ``y=None``. See
            :mod:`mlpx.streams` and the data guide.
        y : array_like, optional
            Class labels (n,) or one-hot / probability rows (n, k) for softmax; 0/1
            (n,) or (n, k) for logistic; values (n,) or (n, k) otherwise. In memory or
            in a store like X; None when X is a stream of batches.
        epochs : int
        batch_size : int
            Clipped to n_samples (per rank with ``comm``).
        optimizer : str or Optimizer, default "adam"
            "sgd", "adam", "adamw", "rmsprop" or an instance (its state carries over
            between ``fit`` calls when the same instance is passed again).
        loss : str or Loss, optional
            Defaults to the output's canonical loss; any loss whose domain the output
            covers works (chain rule, :mod:`mlpx.losses`).
        validation_data : (X_val, y_val) or (X_val, y_val, w_val), or a stream, optional
            Arrays, or the forms X takes.
        validation_split : float in [0, 1)
            Hold out this fraction (a seeded random subset) when ``validation_data``
            is not given (in-memory X only).
        shuffle : bool or BlockShuffle
            Reshuffle the training samples every epoch: exactly for NumPy arrays;
            by :class:`~mlpx.chunked.BlockShuffle` (permuted chunk-aligned blocks,
            rows shuffled within windows) for stores, or for any array given a
            ``BlockShuffle``. A stream of batches keeps its own order.
        callbacks : sequence of Callback
            e.g. :class:`~mlpx.callbacks.EarlyStopping`,
            :class:`~mlpx.saving.ModelCheckpoint`.
        verbose : int
            0 silent; 1 a progress bar (tqdm if installed) with the epoch's logs.
        sample_weight : array_like, shape (n_samples,), optional
        l2 : float
            L2 penalty, scaled as scikit-learn's ``alpha``: ``½ l2 Σ‖W‖² / n``.
        lr : float, optional
            Learning rate when ``optimizer`` is given by name.
        comm : mpi4py communicator, "mpi" or "nccl", optional
            Train data-parallel across ranks (see :mod:`mlpx.distributed`); each rank
            passes its own shard, ``batch_size`` is per rank, logs are global.
        stream_data : bool, optional
            Keep the training set in host memory and stream minibatches to the device
            through pinned, double-buffered copies (:mod:`mlpx.data`). ``None``
            (default) streams only on a GPU whose free memory the data would more than
            half fill; ``False`` moves it to the device once.

        Returns
        -------
        History
            ``history.history`` maps "loss", "accuracy" (classifiers) and the "val_"
            versions to per-epoch lists.

        Raises
        ------
        TrainingDivergedError
            The loss became non-finite; the weights and the optimizer's state from the
            start of that epoch are kept.
        RankFailedError
            With ``comm``: another rank failed (its message is attached).
        """
        return training.fit(
            self, X, y, epochs=epochs, batch_size=batch_size, optimizer=optimizer, loss=loss,
            validation_data=validation_data, validation_split=validation_split, shuffle=shuffle,
            callbacks=callbacks, verbose=verbose, sample_weight=sample_weight, l2=l2, lr=lr,
            comm=comm, stream_data=stream_data,
        )

    def shuffle_generator(self, rank: int = 0) -> np.random.Generator:
        """The generator of ``fit``'s minibatch order on ``rank``, kept across fits.

        Seeded from ``seed``; rank 0's is the single-process one, so a one-rank
        data-parallel fit shuffles exactly as a plain fit.
        """
        if self.shuffle_rng_ is None or self._shuffle_rank != rank:
            seed = None if self.seed is None else [int(self.seed), 1] + ([rank] if rank else [])
            self.shuffle_rng_ = np.random.default_rng(seed)
            self._shuffle_rank = rank
        return self.shuffle_rng_

    def decorrelate_dropout(self, rank: int) -> None:
        """Give this rank its own dropout masks (the same seed drops the same units).

        Rank 0 keeps its generators, so a one-rank run matches a plain fit.
        """
        if rank == 0 or self._dropout_rank == rank:
            return
        for layer in self.layers:
            if isinstance(layer, Dropout):
                layer.fork(rank)
        self._dropout_rank = rank

    def train_state(self) -> dict[str, Any]:
        """Progress as data: counters, the optimizer's and the loss scaler's state."""
        state: dict[str, Any] = {"epochs_done": int(self.epochs_done_), "samples_seen": int(self.samples_seen_)}
        if self.optimizer_ is not None:
            state["optimizer"] = self.optimizer_.state_dict()
        if self.loss_ is not None:
            state["loss"] = self.loss_.name
        scaler = self.precision_.scaler
        if scaler is not None:  # fp16: resume with the scale reached, not from 2**16 again
            state["loss_scaler"] = scaler.get_state()
        return state

    def load_train_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`train_state` (the optimizer is rebuilt, bound at the next fit)."""
        self.epochs_done_ = int(state.get("epochs_done", 0))
        self.samples_seen_ = int(state.get("samples_seen", 0))
        if state.get("optimizer") is not None:
            self.optimizer_ = Optimizer.from_state_dict(state["optimizer"])
            if self.built:
                self.optimizer_.bind(self.backend, self.params, self.grads, self.n_weights, owner=self)
        if state.get("loss") is not None:
            self.loss_ = self.resolve_loss(state["loss"])
        scaler = self.precision_.scaler
        if "loss_scaler" in state and scaler is not None:
            scaler.set_state(state["loss_scaler"])

    # ------------------------------------------------------------- save/load
    def get_config(self) -> dict[str, Any]:
        """Architecture record (JSON-serialisable) that :func:`mlpx.load` rebuilds from."""
        self._require_built()
        layers = [l.get_config() for l in self.layers]
        last = layers[-1] if layers else {}
        # A Dense without activation at the end carries the output activation itself;
        # anything else gets an explicit output layer (also an identity one after an
        # activated Dense, whose activation would otherwise be read as the output).
        if last.get("type") == "Dense" and last.get("activation") == "identity":
            layers[-1] = {**last, "activation": self.output.name}
        elif self.output.name != "identity" or last.get("type") == "Dense":
            layers.append({"type": "ActivationLayer", "activation": self.output.name})
        seed = None if self.seed is None else int(self.seed)
        cfg: dict[str, Any] = {"layers": layers, "dtype": self.dtype, "seed": seed}
        if self.precision_.name != self.dtype:
            cfg["precision"] = self.precision_.name
        return cfg

    @classmethod
    def from_config(cls, config: dict[str, Any], params: np.ndarray | None = None,
                    backend: str | Backend = "cpu") -> "Sequential":
        """Rebuild a model from :meth:`get_config` (and flat host parameters, shape (n_params,)).

        Raises
        ------
        ModelFileError
            A bad record (checked before anything is allocated), or parameters of
            the wrong length or dtype, or not finite.
        """
        n_params = check_architecture(config, max_params=max(MAX_PARAMS, int(np.size(params))))
        if params is not None:
            params = np.asarray(params)
            if params.dtype.kind != "f" or params.shape != (n_params,):
                raise ModelFileError(
                    f"model record: params must be a float array of shape ({n_params},), got "
                    f"dtype {params.dtype} shape {params.shape}"
                )
            if not np.isfinite(params).all():
                raise ModelFileError("model record: params contain NaN or infinity")
        try:
            layers = [layer_from_config(c) for c in config["layers"]]
            model = cls(layers, backend=backend, dtype=config["dtype"], seed=config.get("seed"),
                        precision=config.get("precision"))
        except (ModelFileError, BackendError):
            raise
        except ValueError as exc:  # InvalidParameterError included: the record is at fault
            raise ModelFileError(f"model record: {exc}") from None
        if params is not None:
            model.set_flat_params(params)
        return model

    def save(self, path: Any) -> Any:
        """Write the model to ``path`` (``.npz``: architecture JSON + host parameters).

        The write is atomic (temporary file, then rename): a crash never leaves a
        half-written model behind. Returns the path written.
        """
        return write_model_file(path, self.get_config(), {"params": self.get_flat_params()})

    def to(self, backend: str | Backend) -> "Sequential":
        """A copy of this model on another backend: parameters, counters and optimizer state."""
        model = Sequential.from_config(self.get_config(), self.get_flat_params(), backend)
        model.load_train_state(self.train_state())
        return model

    def __reduce__(self) -> tuple[Any, ...]:
        return (_unpickle, (self.get_config(), self.get_flat_params(), self.backend.name, self.train_state()))

    def summary(self) -> str:
        """A short text table of layers, shapes and parameter counts."""
        self._require_built()
        rows = [f"Sequential on {self.backend.name} ({self.dtype}), {self.n_params} parameters"]
        for i, layer in enumerate(self.layers):
            n = sum(int(np.prod(s)) for _, s, _ in layer.param_shapes())
            rows.append(f"  {i}: {layer!r}  params={n}")
        rows.append(f"  output: {self.output.name}")
        return "\n".join(rows)

    def __repr__(self) -> str:
        if not self.built:
            return f"<Sequential (not built: {len(self._given)} layers) on {self.backend.name}>"
        prec = "" if self.precision_.name == self.dtype else f", precision={self.precision_.name}"
        return f"<Sequential {self.n_features_in_}->{self.n_outputs_} on {self.backend.name}, {self.dtype}{prec}>"

    # ----------------------------------------------------------------- deploy
    def to_onnx(self, path: Any = None, **options: Any) -> Any:
        """This network as an ``onnx.ModelProto``, also written to ``path`` if given.

        See :func:`mlpx.onnx.to_onnx` (options ``dtype``, ``target_opset``; needs
        ``mlpx[onnx]``).
        """
        from mlpx.onnx import to_onnx

        return to_onnx(self, path, **options)

    def to_torch(self, **options: Any) -> Any:
        """This network as a ``torch.nn.Sequential`` (:func:`mlpx.torch.to_torch`:
        ``device``, ``copy``); shares the parameter memory unless ``copy=True``."""
        from mlpx.torch import to_torch

        return to_torch(self, **options)

    @classmethod
    def from_torch(cls, module: Any, backend: str | Backend = "cpu", seed: int | None = None) -> "Sequential":
        """A Sequential from a ``torch.nn.Sequential`` (:func:`mlpx.torch.layers_from_torch`)."""
        from mlpx.torch import layers_from_torch

        layers, weights, dtype = layers_from_torch(module)
        model = cls(layers, backend=backend, dtype=dtype, seed=seed)
        model.set_weights(weights)
        return model


def _unpickle(config: dict[str, Any], params: np.ndarray, backend: str, state: dict[str, Any]) -> Sequential:
    model = Sequential.from_config(config, params, backend)
    model.load_train_state(state)
    return model


def _split_output(layers: list[Layer]) -> tuple[list[Layer], Activation]:
    """Separate the output activation from the stack (the last layer yields logits).

    A last Dense with an activation is replaced, in the stack the model runs, by a
    Dense without one; the caller's layer objects are left as they were.
    """
    last = layers[-1]
    if isinstance(last, ActivationLayer):
        return list(layers[:-1]), last.activation
    if isinstance(last, Dense) and last.activation.name != "identity":
        bare = Dense(last.n_in, last.n_out, activation="identity", init=last.init)
        return list(layers[:-1]) + [bare], last.activation
    return list(layers), get_activation("identity")


def load(path: Any, backend: str | Backend = "cpu", *, max_params: int = MAX_PARAMS) -> Sequential:
    """Load a model saved by :meth:`Sequential.save` (or a checkpoint) onto ``backend``.

    Parameters
    ----------
    path : str or path
    backend : str or Backend, default "cpu"
    max_params : int, default :data:`mlpx.saving.MAX_PARAMS`
        Refuse files that describe more parameters than this.

    Raises
    ------
    ModelFileError
        Anything wrong with the file (:func:`mlpx.saving.read_model_file`); nothing
        is allocated for the network before its description has been checked
        against the stored data.
    OSError
        The file cannot be opened (missing, a directory, no permission).
    """
    be = get_backend(backend)
    record, arrays = read_model_file(path, max_params=max_params)
    try:
        return Sequential.from_config(record, arrays["params"], be)
    except ModelFileError as exc:
        raise ModelFileError(f"{path}: {exc}") from None


def MLP(
    sizes: Sequence[int],
    activation: str = "relu",
    output: str = "softmax",
    backend: str | Backend = "cpu",
    dtype: str = "float32",
    seed: int | None = None,
    dropout: float = 0.0,
    init: str = "glorot",
    precision: str | None = None,
) -> Sequential:
    """A multi-layer perceptron from its layer widths.

    Parameters
    ----------
    sizes : sequence of int
        ``[n_features, hidden_1, ..., n_outputs]``, e.g. ``[64, 128, 64, 32, 10]``.
    activation : str, default "relu"
        Hidden activation (identity, relu, leaky_relu, logistic/sigmoid, tanh, gelu).
    output : str, default "softmax"
        Output activation: softmax (multiclass), logistic (binary / multilabel),
        identity (regression), exp (Poisson), or any hidden activation (pass a
        ``loss=`` to ``fit`` that suits it).
    dropout : float in [0, 1), default 0
        Dropout rate after each hidden layer.
    seed : int, optional
        NumPy integers are accepted (and stored as Python ints).

    Raises
    ------
    InvalidParameterError
        (a ValueError and TypeError) A width that is not a positive integer: 8.7 is
        refused, not truncated, and so is 8.0, as scikit-learn does.
    precision : {None, "float32", "tf32", "bf16", "fp16"}, optional
        See :class:`Sequential` and :mod:`mlpx.precision`.

    Examples
    --------
    >>> import mlpx
    >>> model = mlpx.MLP([64, 128, 64, 32, 10], activation="relu", output="softmax", seed=0)
    >>> model.n_params
    19754
    """
    if isinstance(sizes, (str, bytes)) or not hasattr(sizes, "__iter__"):
        raise TypeError(f"sizes must be a sequence of layer widths, got {sizes!r}")
    sizes = [check_int(f"sizes[{k}]", s, low=1) for k, s in enumerate(sizes)]
    if len(sizes) < 2:
        raise ValueError("sizes needs at least [n_features, n_outputs]")
    dropout = check_real("dropout", dropout, 0.0, 1.0, high_open=True)
    get_activation(activation)  # an unknown name fails even when there is no hidden layer
    layers: list[Layer] = []
    for k, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        is_last = k == len(sizes) - 2
        layers.append(Dense(a, b, activation=output if is_last else activation, init=init))
        if dropout and not is_last:
            layers.append(Dropout(dropout))
    return Sequential(layers, backend=backend, dtype=dtype, seed=seed, precision=precision)
