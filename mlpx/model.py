"""The model: a stack of layers on one backend, with one flat parameter buffer.

``Sequential`` owns the parameters of all its layers in a single contiguous 1-D
buffer (weights of every layer first, then every bias) and the gradients in a
second buffer of the same layout. Layers see ``(n_in, n_out)`` and ``(n_out,)``
views into them. Consequences: an optimizer step is a few whole-buffer operations,
the L2 penalty is one operation on the weight prefix, save/load and CPU↔GPU moves
are one transfer, and a data-parallel all-reduce is one call.

The last activation of the stack is the *output* activation. It is kept apart from
the layers during training: the last layer produces logits ``Z`` and the loss paired
with the output activation (:mod:`mlpx.losses`) turns them into the loss and the
output delta ``(Ŷ − Y)/n`` in one step.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterable, Sequence

import numpy as np

from mlpx.activations import Activation, get_activation
from mlpx.backends import Backend, get_backend
from mlpx.layers import ActivationLayer, Dense, Dropout, Layer
from mlpx.losses import OUTPUT_LOSS, Loss, get_loss, l2_penalty
from mlpx.metrics import correct_count, r2_score
from mlpx.precision import all_finite, check_range, get_precision, scale_cast
from mlpx.validation import check_sample_weight, check_X, encode_targets

__all__ = ["MLP", "Sequential"]

Array = Any
PREDICT_CHUNK = 8192  # rows per forward pass in predict: bounds workspace memory


def _check_dtype(dtype: Any) -> str:
    name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if name not in ("float32", "float64"):
        raise TypeError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return name


class Sequential:
    """Layers applied in order, trained as one network.

    Parameters
    ----------
    layers : sequence of Layer
        The first parameterised layer must be a :class:`~mlpx.layers.Dense` (it fixes
        the input width). The last activation (a fused Dense activation or a trailing
        activation layer) is the output activation.
    backend : str or Backend, default "cpu"
        ``"cpu"``, ``"gpu"``, ``"gpu:N"``, ``"auto"``, ``"array_api_strict"`` or an
        instance (see :func:`mlpx.backends.get_backend`).
    dtype : {"float32", "float64"}, default "float32"
        Dtype of parameters, gradients, optimizer state and computation.
    seed : int, optional
        Seeds the host generator for initial weights (and dropout masks); the same
        seed gives the same starting weights on every backend.
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
    n_features_in_ : int
    n_outputs_ : int
    """

    def __init__(
        self,
        layers: Sequence[Layer],
        backend: str | Backend = "cpu",
        dtype: str = "float32",
        seed: int | None = None,
        precision: str | None = None,
    ) -> None:
        layers = list(layers)
        if not layers:
            raise ValueError("Sequential needs at least one layer")
        for layer in layers:
            if not isinstance(layer, Layer):
                raise TypeError(f"not a layer: {layer!r}")
        self.backend = get_backend(backend)
        self.dtype = _check_dtype(dtype)
        self.precision_ = get_precision(precision, self.dtype, self.backend)
        self.compute_dtype = self.precision_.compute_dtype
        self.seed = seed
        self.layers, self.output = _split_output(layers)
        self.stop_training = False
        self.history: Any = None
        self._ws: dict[tuple[str, int], Array] = {}
        self._build()
        self.initialize(seed)

    # ------------------------------------------------------------------ build
    def _build(self) -> None:
        be, dtype = self.backend, self.dtype
        mixed = self.precision_.mixed
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
        views: dict[int, tuple[dict[str, Array], dict[str, Array]]] = {}
        for i, name, shape, a, b in self._slots:
            pv, gv = views.setdefault(i, ({}, {}))
            pv[name] = be.xp.reshape(self._params_c[a:b], shape)
            gv[name] = be.xp.reshape(self._grads_c[a:b], shape)
        for i, layer in enumerate(self.layers):
            layer.bind(*views.get(i, ({}, {})))

    def initialize(self, seed: Any = None) -> None:
        """Draw fresh starting weights on the host and move them once.

        Parameters
        ----------
        seed : int, None, or a generator
            An int/None seeds ``numpy.random.default_rng``; an object with
            ``uniform(low, high, size)`` (a ``RandomState``, as scikit-learn uses)
            is drawn from directly, layer by layer, W before b.
        """
        rng = seed if hasattr(seed, "uniform") else np.random.default_rng(seed)
        host = np.zeros(self.n_params)
        drawn = {i: layer.init_params(rng) for i, layer in enumerate(self.layers)}
        for i, name, _shape, a, b in self._slots:
            host[a:b] = np.ravel(drawn[i][name])
        self.set_flat_params(host)
        for k, layer in enumerate(self.layers):
            if isinstance(layer, Dropout):
                layer.reseed(seed + 1 + k if isinstance(seed, int) else None)

    # ------------------------------------------------------------ parameters
    def parameters(self) -> dict[str, Array]:
        """Parameter views on the backend, named ``"<layer>.<name>"`` (e.g. ``"0.W"``).

        Views of the master buffer ``params`` (in ``dtype``, whatever the precision).
        """
        return self._views(self.params)

    def gradients(self) -> dict[str, Array]:
        """Gradient views on the backend, same names as :meth:`parameters`."""
        return self._views(self.grads)

    def _views(self, flat: Array) -> dict[str, Array]:
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
        return np.array(self.backend.to_numpy(self.params), copy=True)

    def set_flat_params(self, flat: Any) -> None:
        """Overwrite the flat parameter buffer from a host array (one transfer)."""
        flat = np.asarray(flat)
        if flat.shape != (self.n_params,):
            raise ValueError(f"expected shape ({self.n_params},), got {flat.shape}")
        if not np.isfinite(flat).all():
            raise ValueError("parameters contain NaN or infinity")
        be = self.backend
        be.copy(be.asarray(flat.astype(self.dtype), dtype=self.dtype), self.params)

    # ---------------------------------------------------------------- forward
    def forward(self, X: Array, train: bool = False) -> Array:
        """Logits of the last layer for a batch already on the backend.

        Parameters
        ----------
        X : array, shape (n, n_features_in_), on the backend, in the model dtype.

        Returns
        -------
        array, shape (n, n_outputs_): a workspace overwritten by the next call.
        In mixed precision, X and the logits are in ``compute_dtype``.
        """
        if self.precision_.mixed:
            # One conversion of the whole flat buffer per pass: the compute copy can
            # never be stale, whoever last wrote the master weights.
            self.backend.copy(self.params, self._params_c)
        H = X
        for layer in self.layers:
            H = layer.forward(H, train)
        return H

    def gemm_flops(self, n: int) -> float:
        """Flops (2·n·n_in·n_out) of the largest matrix product for a batch of n rows."""
        return max((2.0 * n * l.n_in * l.n_out for l in self.layers if isinstance(l, Dense)), default=0.0)

    def _check_X(self, X: Any, name: str = "X") -> Any:
        """:func:`~mlpx.validation.check_X`, plus the compute dtype's range (fp16)."""
        X = check_X(X, self.backend, self.n_features_in_, name=name)
        check_range(X, self.compute_dtype, name)
        return X

    def _workspace(self, tag: str, n: int, width: int, dtype: str | None = None) -> Array:
        key = (tag, n)
        buf = self._ws.get(key)
        if buf is None:
            if len(self._ws) > 8:
                self._ws.clear()
            buf = self._ws[key] = self.backend.empty((n, width), dtype or self.dtype)
        return buf

    def _predict_raw(self, X: Any, apply_output: bool = True, argmax: bool = False) -> np.ndarray:
        """Host array (n, n_outputs_) of outputs, computed in chunks of PREDICT_CHUNK rows.

        With ``argmax`` the class index of each row is taken on the device and only
        the (n,) indices come back: no per-chunk transfer beyond the result.
        """
        X = self._check_X(X)
        be = self.backend
        n = X.shape[0]
        result = np.empty((n,) if argmax else (n, self.n_outputs_), dtype=np.int64 if argmax else self.dtype)
        with self.compute_context(min(n, PREDICT_CHUNK)):
            for start in range(0, n, PREDICT_CHUNK):
                stop = min(start + PREDICT_CHUNK, n)  # strict namespaces reject out-of-range stops
                Xc = be.asarray(X[start:stop, :], dtype=self.compute_dtype)
                Z = self._logits_master(self.forward(Xc, train=False))
                if argmax:
                    Z = be.xp.argmax(Z, axis=1)
                elif apply_output:
                    Z = self.output.forward(be, Z, out=Z)
                result[start:stop] = be.to_numpy(Z)
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

    def _logits_master(self, Z: Array) -> Array:
        """Logits in the master dtype (a converted workspace copy in mixed precision)."""
        if not self.precision_.mixed:
            return Z
        return self.backend.copy(Z, self._workspace("Z", Z.shape[0], self.n_outputs_))

    def predict_proba(self, X: Any) -> np.ndarray:
        """Output activation values (class probabilities for softmax / logistic).

        Returns
        -------
        ndarray, shape (n, n_outputs_), host.
        """
        return self._predict_raw(X)

    def predict(self, X: Any) -> np.ndarray:
        """Predictions on the host.

        softmax: class indices, shape (n,); logistic: 0/1 labels, shape (n,) for one
        output or (n, k); identity/exp: values, shape (n,) for one output or (n, k).
        """
        out = self.output.name
        if out == "softmax":
            return self._predict_raw(X, argmax=True)
        if out == "logistic":
            labels = (self._predict_raw(X, apply_output=False) > 0).astype(np.int64)
            return labels[:, 0] if labels.shape[1] == 1 else labels
        P = self._predict_raw(X)
        return P[:, 0] if P.shape[1] == 1 else P

    # ------------------------------------------------------------- gradients
    def default_loss(self) -> Loss:
        """The loss paired with the output activation."""
        name = OUTPUT_LOSS.get(self.output.name)
        if name is None:
            raise ValueError(
                f"no loss is paired with output activation {self.output.name!r}; end the "
                f"network with one of: {', '.join(sorted(OUTPUT_LOSS))}"
            )
        return get_loss(name)

    def resolve_loss(self, loss: str | Loss | None) -> Loss:
        """Check that ``loss`` matches the output activation and return it."""
        if loss is None:
            return self.default_loss()
        loss = get_loss(loss)
        if loss.output != self.output.name:
            raise ValueError(
                f"loss {loss.name!r} needs a {loss.output!r} output, but this model ends in "
                f"{self.output.name!r}; pairs: "
                + ", ".join(f"{o}+{n}" for o, n in sorted(OUTPUT_LOSS.items()))
            )
        return loss

    def _forward_backward(
        self,
        X: Array,
        Y: Array,
        loss: Loss,
        w: Array | None = None,
        denom: float | None = None,
        l2: float = 0.0,
    ) -> Array:
        """Loss of one batch (0-d device array); fills ``self.grads``.

        Parameters
        ----------
        X : array, shape (n, n_features_in_)
        Y : array, shape (n, n_outputs_), encoded targets
        w : array, shape (n,), optional sample weights
        denom : float, optional
            Normaliser d (n, or Σ w); computed on the host by the caller.
        l2 : float
            Adds the L2 term (:meth:`_add_l2`) after the data term.
        """
        be = self.backend
        n = X.shape[0]
        if denom is None:
            denom = float(n)
        prec = self.precision_
        Z = self._logits = self._logits_master(self.forward(X, train=True))
        dZ = self._workspace("dZ", n, self.n_outputs_)
        value = loss(be, Z, Y, dZ, w, denom)
        if prec.mixed:
            # The output delta goes back in the compute dtype, multiplied by the loss
            # scale (fp16) so small gradients do not flush to zero on the way.
            dZc = self._workspace("dZc", n, self.n_outputs_, self.compute_dtype)
            dZ = be.run(scale_cast, dZ, prec.loss_scale, dZc)
        dH: Array | None = dZ
        first_param = next(i for i, l in enumerate(self.layers) if l.param_shapes())
        for i in range(len(self.layers) - 1, -1, -1):
            dH = self.layers[i].backward(dH, need_dX=i > first_param)
            if dH is None:
                break
        if prec.mixed:
            be.run(scale_cast, self._grads_c, 1.0 / prec.loss_scale, self.grads)
        if l2:
            value = value + self._add_l2(l2, denom)
        return value

    def _apply_update(self, opt: Any) -> bool:
        """Apply ``opt`` to the master weights; False if the step was skipped.

        With fp16 loss scaling, a step whose gradients overflowed is skipped and the
        scale lowered (one flag read back from the device per step, as in
        ``torch.amp.GradScaler``); every other mode always applies the step.
        """
        scaler = self.precision_.scaler
        if scaler is None:
            opt.step()
            return True
        found_inf = not bool(self.backend.run(all_finite, self.grads))
        scaler.update(found_inf)
        if not found_inf:
            opt.step()
        return not found_inf

    def _add_l2(self, l2: float, denom: float) -> Array:
        """Add ``l2 W / d`` to the weight gradients; return the loss term ``½ l2 Σ‖W‖² / d``.

        Kept apart from the data term so a data-parallel step can all-reduce the data
        gradients first and add the penalty once, with the global ``d``.
        """
        be, nw = self.backend, self.n_weights
        tmp = self._ws.get(("l2", nw))
        if tmp is None:
            tmp = self._ws[("l2", nw)] = be.empty(nw, self.dtype)
        sq = be.run(l2_penalty, self.params[:nw], self.grads[:nw], l2 / denom, tmp)
        return (0.5 * l2 / denom) * sq

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
        X = self._check_X(X)
        Y = encode_targets(y, self.output.name, self.n_outputs_, X.shape[0])
        w = check_sample_weight(sample_weight, X.shape[0])
        lossfn = self.resolve_loss(loss)
        with self.compute_context(X.shape[0]):
            Xd = be.asarray(X, dtype=self.compute_dtype)
            Yd = be.asarray(Y, dtype=self.dtype)
            wd = None if w is None else be.asarray(w, dtype=self.dtype)
            denom = float(X.shape[0]) if w is None else float(w.sum())
            scaler = self.precision_.scaler
            with np.errstate(over="ignore", invalid="ignore"):
                value = self._forward_backward(Xd, Yd, lossfn, wd, denom, l2)
                # fp16: lower the loss scale until the scaled gradients fit float16
                # (here a caller wants the gradients, so retrying beats skipping).
                while scaler is not None and scaler.scale > 1.0 and not bool(be.run(all_finite, self.grads)):
                    scaler.update(found_inf=True)
                    value = self._forward_backward(Xd, Yd, lossfn, wd, denom, l2)
            grads = {k: np.array(be.to_numpy(v), copy=True) for k, v in self.gradients().items()}
            return be.to_float(value), grads

    def evaluate(self, X: Any, y: Any, sample_weight: Any = None) -> dict[str, float]:
        """Mean loss and a metric on ``(X, y)``: accuracy (classifiers) or R² (regressors)."""
        be = self.backend
        X = self._check_X(X)
        Y = encode_targets(y, self.output.name, self.n_outputs_, X.shape[0])
        w = check_sample_weight(sample_weight, X.shape[0])
        lossfn = self.default_loss()
        denom = float(X.shape[0]) if w is None else float(w.sum())
        total = 0.0
        hits = 0.0
        with self.compute_context(min(X.shape[0], PREDICT_CHUNK)):
            for a in range(0, X.shape[0], PREDICT_CHUNK):
                b = min(a + PREDICT_CHUNK, X.shape[0])
                Z = self._logits_master(self.forward(be.asarray(X[a:b, :], dtype=self.compute_dtype)))
                Yd = be.asarray(Y[a:b], dtype=self.dtype)
                wd = None if w is None else be.asarray(w[a:b], dtype=self.dtype)
                total += be.to_float(lossfn(be, Z, Yd, None, wd, denom))
                if self.output.name in ("softmax", "logistic") and w is None:
                    hits += be.to_float(be.run(correct_count, Z, Yd, self.output.name))
        result = {"loss": total}
        if self.output.name in ("softmax", "logistic"):
            if w is None:
                result["accuracy"] = hits / X.shape[0]
            else:
                pred = self.predict(X).reshape(len(Y), -1)
                truth = Y.argmax(1) if self.output.name == "softmax" else (Y > 0.5)
                pred = pred[:, 0] if self.output.name == "softmax" else pred
                match = (pred.reshape(truth.shape) == truth).reshape(len(Y), -1).all(1)
                result["accuracy"] = float(np.average(match, weights=w))
        else:
            result["r2"] = r2_score(Y, self.predict_proba(X), w)
        return result

    # --------------------------------------------------------------- training
    def fit(self, X: Any, y: Any, **kwargs: Any) -> Any:
        """Train on ``(X, y)``; see :func:`mlpx.training.fit` for the arguments.

        Returns
        -------
        History
            ``history.history`` maps "loss", "accuracy" (classifiers) and the
            "val_" versions to per-epoch lists.
        """
        from mlpx.training import fit

        return fit(self, X, y, **kwargs)

    # ------------------------------------------------------------- save/load
    def get_config(self) -> dict[str, Any]:
        """Architecture record (JSON-serialisable) that :func:`mlpx.load` rebuilds from."""
        layers = [l.get_config() for l in self.layers]
        if self.output.name != "identity" or not layers or layers[-1]["type"] != "Dense":
            out_cfg = {"type": "ActivationLayer", "activation": self.output.name}
            if layers and layers[-1]["type"] == "Dense" and layers[-1]["activation"] == "identity":
                layers[-1] = {**layers[-1], "activation": self.output.name}
            else:
                layers.append(out_cfg)
        cfg: dict[str, Any] = {"layers": layers, "dtype": self.dtype, "seed": self.seed}
        if self.precision_.name != self.dtype:
            cfg["precision"] = self.precision_.name
        return cfg

    def save(self, path: Any) -> None:
        """Write the model to ``path`` (``.npz``: architecture JSON + host parameters).

        The write is atomic (temporary file, then rename): a crash never leaves a
        half-written model behind.
        """
        from mlpx.saving import save

        save(self, path)

    def to(self, backend: str | Backend) -> "Sequential":
        """A copy of this model on another backend (parameters moved once)."""
        from mlpx.saving import from_config

        return from_config(self.get_config(), self.get_flat_params(), backend)

    def __reduce__(self) -> tuple[Any, ...]:
        from mlpx.saving import from_config

        return (from_config, (self.get_config(), self.get_flat_params(), self.backend.name))

    def summary(self) -> str:
        """A short text table of layers, shapes and parameter counts."""
        rows = [f"Sequential on {self.backend.name} ({self.dtype}), {self.n_params} parameters"]
        for i, layer in enumerate(self.layers):
            n = sum(int(np.prod(s)) for _, s, _ in layer.param_shapes())
            rows.append(f"  {i}: {layer!r}  params={n}")
        rows.append(f"  output: {self.output.name}")
        return "\n".join(rows)

    def __repr__(self) -> str:
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


def _split_output(layers: list[Layer]) -> tuple[list[Layer], Activation]:
    """Separate the output activation from the stack (the last layer yields logits)."""
    last = layers[-1]
    if isinstance(last, ActivationLayer):
        return layers[:-1], last.activation
    if isinstance(last, Dense):
        output = last.activation
        last.activation = get_activation("identity")
        return layers, output
    return layers, get_activation("identity")


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
        identity (regression) or exp (Poisson).
    dropout : float, default 0
        Dropout rate after each hidden layer.
    precision : {None, "float32", "tf32", "bf16", "fp16"}, optional
        See :class:`Sequential` and :mod:`mlpx.precision`.

    Examples
    --------
    >>> import mlpx
    >>> model = mlpx.MLP([64, 128, 64, 32, 10], activation="relu", output="softmax", seed=0)
    >>> model.n_params
    19754
    """
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2:
        raise ValueError("sizes needs at least [n_features, n_outputs]")
    get_activation(activation)  # an unknown name fails even when there is no hidden layer
    layers: list[Layer] = []
    for k, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        is_last = k == len(sizes) - 2
        layers.append(Dense(a, b, activation=output if is_last else activation, init=init))
        if dropout and not is_last:
            layers.append(Dropout(dropout))
    return Sequential(layers, backend=backend, dtype=dtype, seed=seed, precision=precision)
