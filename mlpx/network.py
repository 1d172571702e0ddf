"""The network: K members of one architecture, computed and trained as one.

A :class:`Network` holds K *members* (K networks of one architecture, each with
its own weights) in one ``(K, n_params)`` parameter buffer whose row ``k`` is member
``k``'s flat buffer: every layer's weights, then every bias, so the L2 term touches a
prefix and saving, moving or all-reducing a member is one copy. A single network
(:class:`~mlpx.model.Sequential`) is K = 1; a :class:`~mlpx.stacked.Stack` is K
members with their own settings, data and stopping. Both run the code here and
in its base :class:`~mlpx.network_step.NetworkStep` (:mod:`mlpx.network_step`):
the forward and backward passes over the member axis and the training step.

The last activation of the layers is the *output* activation. It is kept apart
during training: the last layer produces logits ``Z`` and the loss bound to the
output (:func:`mlpx.losses.pair`) turns them into the loss and the output delta
``dZ`` (the ``(Ŷ − Y)/d`` shortcut for the canonical pairs).

Inference (:meth:`Network.infer_members` and the predictions built on it) is thread-safe: each thread
has its own workspaces, and a prediction holds the parameter lock for reading for
the whole call, so it sees the weights of one moment, between two updates, even
while a fit runs in another thread (and never that fit's threads).

On an immutable backend (JAX, ``backend.mutable`` False) every write of the
parameters makes a new array, which the network keeps; gradients are assembled from
the layers' new arrays after each backward pass.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Iterable, Iterator, Sequence, cast

import numpy as np

from mlpx import streams
from mlpx.activations import Activation, get_activation
from mlpx.backends import Backend, BackendError, get_backend
from mlpx.distributed import LocalReducer
from mlpx.layers import ActivationLayer, Dense, Dropout, Layer
from mlpx.locking import ReadWriteLock
from mlpx.losses import Loss, OutputLoss, pair
from mlpx.member_step import member_step_plan
from mlpx.metrics import PREDICT_CHUNK, holdout_scores, iter_chunks
from mlpx.network_step import MemberScalers, NetworkStep
from mlpx.optimizers import Optimizer
from mlpx.precision import LossScaler, Precision, get_precision
from mlpx.validation import check_int, check_real, check_sample_weight, check_X, encode_targets

__all__ = ["Network"]

Array = Any


def check_dtype(dtype: Any) -> str:
    """``"float32"`` or ``"float64"`` from a name, a NumPy dtype or a scalar type.

    Raises
    ------
    TypeError
        Any other dtype.
    """
    name: str | None = None
    try:
        name = np.dtype(dtype).name if dtype is not None else None
    except TypeError:
        pass
    if name is None or name not in ("float32", "float64"):
        raise TypeError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return name


def _default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def split_output(layers: Sequence[Layer]) -> tuple[list[Layer], Activation]:
    """Separate the output activation from the layers (the last layer yields logits).

    A last Dense with an activation is replaced, in the layers the network runs, by
    a Dense without one; the caller's layer objects are left as they were.
    """
    last = layers[-1]
    if isinstance(last, ActivationLayer):
        return list(layers[:-1]), last.activation
    if isinstance(last, Dense) and last.activation.name != "identity":
        bare = Dense(last.n_in, last.n_out, activation="identity", init=last.init)
        return list(layers[:-1]) + [bare], last.activation
    return list(layers), get_activation("identity")


def mlp_layers(sizes: Sequence[int], activation: str, output: str, dropout: float, init: Any) -> list[Layer]:
    """The layers of :func:`mlpx.model.MLP`: Dense ``sizes[k] -> sizes[k + 1]``, each hidden one
    followed by a Dropout when ``dropout`` is set; the last Dense has the ``output`` activation.

    Raises
    ------
    InvalidParameterError
        A width that is not a positive integer, or ``dropout`` outside [0, 1).
    TypeError, ValueError
        ``sizes`` not a sequence of at least two widths, or an unknown activation.
    """
    if isinstance(sizes, (str, bytes)) or not hasattr(sizes, "__iter__"):
        raise TypeError(f"sizes must be a sequence of layer widths, got {sizes!r}")
    widths = [check_int(f"sizes[{k}]", s, low=1) for k, s in enumerate(sizes)]
    if len(widths) < 2:
        raise ValueError("sizes needs at least [n_features, n_outputs]")
    rate = check_real("dropout", dropout, 0.0, 1.0, high_open=True)
    get_activation(activation)  # an unknown name fails even when there is no hidden layer
    layers: list[Layer] = []
    for k, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        is_last = k == len(widths) - 2
        layers.append(Dense(a, b, activation=output if is_last else activation, init=init))
        if rate and not is_last:
            layers.append(Dropout(rate))
    return layers


class Network(NetworkStep):
    """K networks of one architecture in one parameter buffer, trained as one.

    The engine of :class:`~mlpx.model.Sequential` (K = 1) and
    :class:`~mlpx.stacked.Stack`; see the module docstring. The passes and the
    training step (:meth:`~mlpx.network_step.NetworkStep.train_step`) are those of
    its base :class:`~mlpx.network_step.NetworkStep`.

    Parameters
    ----------
    layers : sequence of Layer
        The first parameterised layer must be a Dense (it fixes the input width).
        The last activation is the output activation.
    seeds : sequence of int or None
        One per member: seeds its starting weights, its dropout masks and (in
        ``fit``) its minibatch order. K is their number.
    backend : str or Backend
        Where the members compute (see :func:`mlpx.backends.get_backend`).
    dtype : {"float32", "float64"}
        Dtype of the parameters, gradients and optimizer state.
    precision : {None, "float32", "tf32", "bf16", "fp16"} or Precision, optional
        See :mod:`mlpx.precision` (a resolved mode is taken as it is).
    threads : int, optional
        CPU threads the members are split over for small products (default: the
        usable cores; 1 disables). Ignored on the GPU and Array API backends.

    Attributes
    ----------
    flat, flat_grads : arrays, shape (K, n_params)
        The members' parameters and gradients on the backend.
    n_members, n_params, n_weights : int
    n_features_in_, n_outputs_ : int
    output : Activation
    precision_ : Precision
    parameter_lock : ReadWriteLock
        Held for reading by inference and for writing by every update of the
        parameters.
    active : ndarray of bool, shape (K,)
        Members still training; a frozen member gets no rows and no updates.
    diverged_ : ndarray of bool, shape (K,)
        Members whose loss stopped being finite (frozen by the "freeze" policy).
    member_samples_ : ndarray of int64, shape (K,)
        Samples each member has trained on.
    epochs_done_ : int
    history, optimizer_, loss_
        The last fit's logs, optimizer (with its state) and loss.
    compiled_step_reason : str
        "" where the members' steps run as one compiled loop on the CPU, else why
        the steps run phase by phase.
    """

    def __init__(self, layers: Sequence[Layer], *, seeds: Sequence[int | None], backend: str | Backend = "cpu",
                 dtype: str = "float32", precision: str | Precision | None = None,
                 threads: int | None = None) -> None:
        self.backend = be = get_backend(backend)
        self.dtype = check_dtype(dtype)
        if precision in ("bf16", "fp16") and not be.mutable:
            # Mixed precision keeps a low-precision copy of the weights that layers view.
            raise BackendError(
                f"precision={precision!r} computes with low-precision copies written into "
                f"preallocated buffers, and backend {be.name!r} has immutable arrays; use precision=None")
        self.seeds = list(seeds)
        K = self.n_members = len(self.seeds)
        p = precision if isinstance(precision, Precision) else get_precision(precision, self.dtype, be)
        # A stack's members each have their own loss scale: MemberScalers stands in for
        # the one LossScaler that Precision's field is typed for (the step tells them apart).
        scaler = None if p.scaler is None else (LossScaler() if K == 1 else cast(LossScaler, MemberScalers(K)))
        self.precision_ = Precision(p.name, p.compute_dtype, p.master_dtype, tf32=p.tf32, scaler=scaler)
        self.compute_dtype = self.precision_.compute_dtype
        self.parameter_lock = ReadWriteLock()
        self._one_rank = LocalReducer(be)
        self.history: Any = None
        self.optimizer_: Optimizer | None = None
        self.loss_: OutputLoss | None = None
        self.epochs_done_ = 0
        self.member_samples_ = np.zeros(K, dtype=np.int64)
        self.active = np.ones(K, dtype=bool)
        self.diverged_ = np.zeros(K, dtype=bool)
        self.stop_training = False
        self._in_place = "numpy" in be.kinds
        n_threads = _default_threads() if threads is None else int(threads)
        self.threads = n_threads if (self._in_place and not be.is_gpu) else 1
        self._given: list[Layer] = list(layers)
        self.layers: list[Layer] = []
        self.output: Activation = get_activation("identity")
        self.flat: Array = None
        self.flat_grads: Array = None
        self._ws: dict[Any, Any] = {}
        self._tls = threading.local()
        self._train = threading.local()  # the running fit's member threads (its thread only)
        self._uploads: dict[tuple[int, ...], list[list[Any]]] = {}
        self._upload_i: dict[tuple[int, ...], int] = {}
        self._dropout: dict[int, list[np.random.Generator]] = {}
        self._dropout_rank = 0
        self._step_plan: Any = None
        self.compiled_step_reason = "the network has no Dense layer yet"

    # ------------------------------------------------------------------ build
    @property
    def built(self) -> bool:
        """Whether the network has its parameters (it needs a Dense layer)."""
        return self.flat is not None

    def _require_built(self) -> None:
        if self.flat is None:
            raise ValueError(
                "this network has no Dense layer yet: add layers with add() or pass them "
                "to Sequential([...])")

    def _build(self) -> None:
        be = self.backend
        self.layers, self.output = split_output(self._given)
        first = next((l for l in self.layers if isinstance(l, Dense)), None)
        if first is None:
            raise ValueError("a network needs at least one Dense layer")
        self.n_features_in_ = n = first.n_in
        for layer in self.layers:
            n = layer.build(n)
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
        self._layer_slots: list[dict[str, tuple[int, int, tuple[int, ...]]]] = [{} for _ in self.layers]
        for i, name, shape, a, b in self._slots:
            self._layer_slots[i][name] = (a, b, shape)
        K = self.n_members
        self.flat = be.zeros((K, offset), self.dtype)
        self.flat_grads = be.zeros((K, offset), self.dtype)
        mixed = self.precision_.mixed
        # Mixed precision: layers compute with low-precision copies (refreshed from the
        # master weights by every forward pass) and write low-precision gradients, which
        # the step converts into the master gradients.
        self._flat_c = be.zeros((K, offset), self.compute_dtype) if mixed else None
        self._grads_c = be.zeros((K, offset), self.compute_dtype) if mixed else None
        self._first_param = next(i for i, l in enumerate(self.layers) if l.param_shapes())
        self._step_plan, self.compiled_step_reason = member_step_plan(
            be, [((lambda s: (s["W"], s["b"], l.activation.name))(self._layer_slots[i]) if isinstance(l, Dense)
                  else None) for i, l in enumerate(self.layers)], self.compute_dtype, mixed)
        self._ws.clear()
        self._tls = threading.local()
        self._view_cache: dict[Any, Any] = {}

    def architecture(self) -> dict[str, Any]:
        """The members' architecture as a JSON record.

        Returns
        -------
        dict
            ``layers`` (the output activation included), ``dtype`` and, when not
            plain, ``precision``.
        """
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
        cfg: dict[str, Any] = {"layers": layers, "dtype": self.dtype}
        if self.precision_.name != self.dtype:
            cfg["precision"] = self.precision_.name
        return cfg

    def _layer_order(self) -> list[tuple[int, str, tuple[int, ...], int, int]]:
        """Every parameter's slot ``(layer, name, shape, start, stop)``, in layer order, W before b."""
        return sorted(self._slots, key=lambda s: (s[0], s[1] != "W"))

    def _named(self, flat: Array) -> dict[str, Array]:
        """One member's flat buffer (n_params,) as views named ``"<layer>.<name>"``, each in its shape."""
        self._require_built()
        reshape = self.backend.xp.reshape
        return {f"{i}.{name}": reshape(flat[a:b], shape) for i, name, shape, a, b in self._layer_order()}

    def _pack(self, weights: Iterable[Any]) -> np.ndarray:
        """One member's host arrays in :meth:`_layer_order` as its flat buffer (n_params,), checked."""
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
        return flat

    @staticmethod
    def _check_layer(layer: Any) -> None:
        if not isinstance(layer, Layer):
            raise TypeError(f"not a layer: {layer!r}")

    def _draw(self, rng: Any) -> np.ndarray:
        """One member's starting parameters, shape (n_params,) (host, float64), drawn
        layer by layer, W before b."""
        host = np.zeros(self.n_params)
        drawn = {i: layer.init_params(rng) for i, layer in enumerate(self.layers)}
        for i, name, _shape, a, b in self._slots:
            host[a:b] = np.ravel(drawn[i][name])
        return host

    def _seed_dropout(self, seeds: Sequence[Any]) -> None:
        """Each member's mask generator of every Dropout layer, from the members' seeds."""
        self._dropout = {i: [layer.generator(int(s) if isinstance(s, (int, np.integer)) else None, i) for s in seeds]
                         for i, layer in enumerate(self.layers) if isinstance(layer, Dropout)}
        self._dropout_rank = 0

    def dropout_generators(self) -> dict[int, list[np.random.Generator]]:
        """Each Dropout layer's mask generators, one per member (their states resume runs).

        Returns
        -------
        dict of int -> list of numpy.random.Generator
            Layer index -> the K members' generators, in member order.
        """
        return self._dropout

    def decorrelate_dropout(self, rank: int) -> None:
        """Give this rank its own dropout masks (the same seed drops the same units).

        Rank 0 keeps its generators, so a one-rank run matches a plain fit.

        Parameters
        ----------
        rank : int
            This process's rank in data-parallel training.
        """
        if rank == 0 or self._dropout_rank == rank:
            return
        self._dropout = {i: [np.random.default_rng([int(g.integers(2**62)), rank]) for g in gens]
                         for i, gens in self._dropout.items()}
        self._dropout_rank = rank

    # ------------------------------------------------------------ parameters
    @property
    def params(self) -> Array:
        """Every member's parameters on the backend, shape (K, n_params) (the buffer ``flat``)."""
        return self.flat

    @property
    def grads(self) -> Array:
        """Every member's gradients on the backend, shape (K, n_params) (the buffer ``flat_grads``)."""
        return self.flat_grads

    def get_params_host(self) -> np.ndarray:
        """A host copy of every member's parameters.

        Returns
        -------
        ndarray, shape (K, n_params)
            A new array in the network's dtype.
        """
        self._require_built()
        with self.parameter_lock.read():
            return np.array(self.backend.to_numpy(self.flat), copy=True)

    def set_params_host(self, host: Any) -> None:
        """Overwrite every member's parameters from a host array (one transfer).

        Parameters
        ----------
        host : array_like, shape (K, n_params)
            Finite numbers, cast to the network's dtype.

        Raises
        ------
        ValueError
            The wrong shape, or NaN or infinity.
        """
        self._require_built()
        host = np.asarray(host)
        if host.shape != (self.n_members, self.n_params):
            raise ValueError(f"expected shape ({self.n_members}, {self.n_params}), got {host.shape}")
        if host.dtype.kind not in "fiub" or not np.isfinite(host).all():
            raise ValueError("parameters contain NaN or infinity" if host.dtype.kind in "fiub"
                             else f"parameters must be numbers, got dtype {host.dtype}")
        be = self.backend
        src = be.asarray(host.astype(self.dtype), dtype=self.dtype)
        with self.parameter_lock.write():
            self._store(be.copy(src, self.flat))

    def assign_flat(self, src: Array) -> None:
        """Copy a device buffer into the parameters (under the write lock).

        Parameters
        ----------
        src : array, shape (K, n_params)
            On this network's backend, in its dtype.
        """
        with self.parameter_lock.write():
            self._store(self.backend.copy(src, self.flat))

    def present(self, logs: dict[str, Any]) -> dict[str, Any]:
        """An epoch's logs as callbacks and the history see them.

        Here they stay as they are; a single network shows floats
        (:meth:`mlpx.model.Sequential.present`).

        Parameters
        ----------
        logs : dict of str -> array, shape (K,)
            Each logged value, one per member.

        Returns
        -------
        dict of str -> array, shape (K,)
            ``logs`` itself.
        """
        return logs

    def _member_params_write(self, k: int, src: Any) -> None:
        """Overwrite member ``k``'s row from a host or device vector (n_params,), checked."""
        be, xp = self.backend, self.backend.xp
        if isinstance(src, np.ndarray) or not hasattr(src, "dtype"):
            host = np.asarray(src)
            if host.shape != (self.n_params,):
                raise ValueError(f"expected shape ({self.n_params},), got {host.shape}")
            if host.dtype.kind not in "fiub" or not np.isfinite(host).all():
                raise ValueError("parameters contain NaN or infinity")
            src = be.asarray(host.astype(self.dtype), dtype=self.dtype)
        elif not bool(be.to_numpy(xp.all(xp.isfinite(src)))):
            raise ValueError("parameters contain NaN or infinity")
        src = be.astype(src, self.dtype)
        with self.parameter_lock.write():
            if be.mutable:
                self.flat[k, :] = src
            else:
                self._store(xp.concat([self.flat[:k], xp.reshape(src, (1, -1)), self.flat[k + 1:]], axis=0))

    # ----------------------------------------------------------- computing

    def check_input(self, X: Any, name: str = "X") -> Any:
        """Check ``X`` against this network: its width and its compute dtype's range.

        Runs :func:`~mlpx.validation.check_X`: a value that the cast to the compute
        dtype would turn into infinity is refused.

        Parameters
        ----------
        X : array_like, shape (n, n_features_in_)
            Host data, or an array on the backend.
        name : str, default "X"
            The argument's name in error messages.

        Returns
        -------
        array, shape (n, n_features_in_)
            ``X`` checked: a host array, or the backend array it was given as.
        """
        self._require_built()
        return check_X(X, self.backend, self.n_features_in_, name=name, dtype=self.compute_dtype)

    def resolve_loss(self, loss: str | Loss | OutputLoss | None) -> OutputLoss:
        """``loss`` bound to this network's output activation.

        Any loss works on any output whose values lie in its domain (chain rule);
        see :func:`mlpx.losses.pair`.

        Parameters
        ----------
        loss : str, Loss, OutputLoss or None
            A loss by name or instance; None takes the output's canonical loss. An
            OutputLoss must be bound to this network's output already.

        Returns
        -------
        OutputLoss
            The loss paired with the output activation.
        """
        if isinstance(loss, OutputLoss):
            if loss.activation.name != self.output.name:
                raise ValueError(f"{loss!r} is bound to another output than {self.output.name!r}")
            return loss
        return pair(loss, self.output)


    def infer_members(self, X: Array) -> tuple[Array, Array]:
        """Logits and outputs of every member (thread-safe).

        Parameters
        ----------
        X : array, shape (n, n_features_in_) or (K, n, n_features_in_)
            Rows shared by every member, or each member's own, on the backend in
            the compute dtype.

        Returns
        -------
        Z, P : arrays, shape (K, n, n_outputs_), in the master dtype
            This thread's workspaces where the backend writes in place (overwritten
            by its next call).
        """
        be, xp = self.backend, self.backend.xp
        ws = self._thread_workspace()
        with self.parameter_lock.read():
            if self.precision_.mixed:
                be.copy(self.flat, self._flat_c)
            Z, _ = self._forward(X, slice(None), ws, train=False)
        K, n, c = (int(d) for d in Z.shape)
        if self.precision_.mixed:
            Z = be.copy(Z, self._ws_buffer(ws, ("Zm", n), (K, n, c), self.dtype)) \
                if self._in_place else be.astype(Z, self.dtype)
        Z2 = xp.reshape(Z, (K * n, c))
        out = self._ws_buffer(ws, ("P", n), (K, n, c), self.dtype)
        P = self.output.forward(be, Z2, out=xp.reshape(out, (K * n, c)) if out is not None else xp.zeros_like(Z2))
        return Z, xp.reshape(P, (K, n, c))

    infer = infer_members


    def member_outputs(self, X: Any, *, raw: bool = False, argmax: bool = False) -> np.ndarray:
        """Every member's outputs on the host, computed in chunks of rows (thread-safe).

        The whole call holds the parameter lock for reading: one set of weights.

        Parameters
        ----------
        X : array_like, shape (n, n_features_in_), a store, or a stream of batches
            The rows to predict, in the forms ``predict`` takes (:mod:`mlpx.streams`).
        raw : bool
            The logits instead of the outputs.
        argmax : bool
            Each row's arg-max, taken on the device: only the (K, n) indices come back.

        Returns
        -------
        ndarray, shape (K, n, n_outputs_), or (K, n) of int64 with ``argmax``
            Member ``k``'s outputs (or logits, or arg-max indices) in row ``k``.
        """
        if streams.is_stream(X):
            return streams.member_outputs(self, X, raw, argmax)
        X = self.check_input(X)
        be, xp = self.backend, self.backend.xp
        n, K = X.shape[0], self.n_members
        step = max(1, PREDICT_CHUNK // K)
        out = np.empty((K, n) if argmax else (K, n, self.n_outputs_), dtype=np.int64 if argmax else self.dtype)
        with self.compute_context(min(n, step)), self.parameter_lock.read(), \
                np.errstate(over="ignore", invalid="ignore"):
            for a, b in iter_chunks(n, step):
                Z, P = self.infer_members(be.asarray(X[a:b, :], dtype=self.compute_dtype))
                out[:, a:b] = be.to_numpy(xp.argmax(Z, axis=-1) if argmax else (Z if raw else P))
        return out

    def evaluate_members(self, X: Any, y: Any = None, sample_weight: Any = None,
                         loss: Any = None) -> dict[str, np.ndarray]:
        """Every member's mean loss and metric on ``(X, y)`` (thread-safe, one set of weights).

        Parameters
        ----------
        X : array_like, shape (n, n_features_in_), a store, or a stream of batches
            The forms ``fit`` takes (:mod:`mlpx.streams`).
        y : array_like, optional
            Targets as ``fit`` takes them (None for a stream of ``(X, y)`` batches).
        sample_weight : array_like, shape (n,), optional
            Row weights of the means (default: every row weighs 1).
        loss : str or Loss, optional
            Default: the loss of the last ``fit``, else the output's canonical loss.

        Returns
        -------
        dict of str -> ndarray, shape (K,)
            ``"loss"`` and ``"accuracy"`` (softmax / logistic) or ``"r2"``.
        """
        if y is None or streams.is_stream(X):
            return streams.evaluate(self, X, y, sample_weight, loss)
        be = self.backend
        X = self.check_input(X)
        lossfn = self.resolve_loss(loss if loss is not None else self.loss_)
        Y = encode_targets(y, self.output.name, self.n_outputs_, X.shape[0], dtype=self.dtype, loss=lossfn.name)
        w = check_sample_weight(sample_weight, X.shape[0], dtype=self.dtype)
        n = X.shape[0]

        def chunks() -> Iterator[tuple[Array, Array, Array | None, None]]:
            for a, b in iter_chunks(n, PREDICT_CHUNK):
                yield (be.asarray(X[a:b, :], dtype=self.compute_dtype), be.asarray(Y[a:b], dtype=self.dtype),
                       None if w is None else be.asarray(w[a:b], dtype=self.dtype), None)

        with self.compute_context(min(n, PREDICT_CHUNK)), self.parameter_lock.read():
            scores = holdout_scores(self, chunks, self._one_rank, lossfn)
        return {k: v for k, v in scores.items() if k != "weight"}


    # ------------------------------------------------------------------ state
    def train_state(self) -> dict[str, Any]:
        """Progress as data: the counters, the optimizer's state and the loss scalers'.

        Returns
        -------
        dict
            ``epochs_done``, ``samples_seen`` and, where they apply, ``optimizer`` (its
            ``state_dict()``, arrays included), ``loss`` and ``loss_scaler``; a stack's
            counters and its ``active`` and ``diverged`` flags per member.
        """
        seen = self.samples_seen_
        state: dict[str, Any] = {"epochs_done": int(self.epochs_done_),
                                 "samples_seen": seen.tolist() if isinstance(seen, np.ndarray) else int(seen)}
        if isinstance(seen, np.ndarray):
            state["active"] = [bool(a) for a in self.active]
            state["diverged"] = [bool(d) for d in self.diverged_]
        if self.optimizer_ is not None:
            state["optimizer"] = self.optimizer_.state_dict()
        if self.loss_ is not None:
            state["loss"] = self.loss_.name
        scaler = self.precision_.scaler
        if scaler is not None:  # fp16: resume with the scale reached, not from 2**16 again
            state["loss_scaler"] = scaler.get_state()
        return state

    def load_train_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`train_state` returned.

        The optimizer is rebuilt from its state (and bound to the parameters once
        the network is built).

        Parameters
        ----------
        state : dict
            A :meth:`train_state` record (keys it lacks keep their defaults).
        """
        self.epochs_done_ = int(state.get("epochs_done", 0))
        self.samples_seen_ = state.get("samples_seen", 0)
        for key, flags in (("active", self.active), ("diverged", self.diverged_)):
            if key in state:
                flags[:] = np.asarray(state[key], dtype=bool)
        if state.get("optimizer") is not None:
            self.optimizer_ = Optimizer.from_state_dict(state["optimizer"])
            if self.built:
                self.optimizer_.bind(self.backend, self.params, self.grads, self.n_weights, owner=self)
        if state.get("loss") is not None:
            self.loss_ = self.resolve_loss(state["loss"])
        scaler = self.precision_.scaler
        if "loss_scaler" in state and scaler is not None:
            scaler.set_state(state["loss_scaler"])

    def freeze(self, k: int) -> None:
        """Stop member ``k``: from the next epoch it gets no rows and no updates.

        Parameters
        ----------
        k : int
            The member's index.
        """
        self.active[int(k)] = False

    def finite_members(self) -> np.ndarray:
        """Which members' parameters are all finite (one device read).

        Returns
        -------
        ndarray of bool, shape (K,)
            True for a member without NaN or infinity.
        """
        be, xp = self.backend, self.backend.xp
        with self.parameter_lock.read():
            return np.asarray(be.to_numpy(xp.all(xp.isfinite(self.flat), axis=1)), dtype=bool).reshape(-1)
