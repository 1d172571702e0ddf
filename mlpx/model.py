"""The model: a single network, the K = 1 case of :class:`~mlpx.network.Network`.

``Sequential`` computes and trains with the network engine's code (one member);
it adds the face of one network: 1-D views of the flat parameter buffer (every
weight first, then every bias, so the L2 term touches a prefix, and save/load,
CPU↔GPU moves and a data-parallel all-reduce are one transfer), ``add``,
``predict``, ``evaluate``, ``fit`` and the model file.

Training goes through one public step, :meth:`Sequential.train_step` (forward,
backward, all-reduce across ranks, L2 penalty, update), which :func:`mlpx.training.fit`
and the scikit-learn estimators drive. Inference (``predict``, ``evaluate``) is
thread-safe: each thread has its own workspaces, and a prediction holds the
parameter lock for reading, so it sees the weights of one moment, between two
updates, even while ``fit`` runs in another thread.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np

from mlpx import training
from mlpx.backends import Backend, BackendError, get_backend
from mlpx.distributed import Reducer
from mlpx.layers import Dense, Layer, layer_from_config
from mlpx.losses import Loss, OutputLoss
from mlpx.network import Network, mlp_layers
from mlpx.network_step import StepResult
from mlpx.optimizers import Optimizer
from mlpx.precision import all_finite
from mlpx.saving import MAX_PARAMS, ModelFile, ModelFileError, check_architecture, check_params, write_model_file
from mlpx.validation import check_seed

__all__ = ["MLP", "Sequential", "StepResult", "load"]

Array = Any


class Sequential(Network):
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
        Flat parameter buffer on the backend (a view of the network's ``flat`` row).
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
        # A NumPy integer seed would break the JSON record and the per-layer dropout
        # seeds (seed + 1 + k): normalise it to a Python int once, here.
        seed = check_seed(seed)
        if not isinstance(layers, (list, tuple)):
            if not layers:
                raise ValueError("Sequential needs a sequence of layers")
            layers = list(layers)
        for layer in layers:
            self._check_layer(layer)
        super().__init__(list(layers), seeds=[seed], backend=backend, dtype=dtype, precision=precision, threads=1)
        self.seed = seed
        self.shuffle_rng_: np.random.Generator | None = None
        self._shuffle_rank = 0
        if self._given:
            self._build()
            self.initialize(seed)

    # ------------------------------------------------------------------ build
    def add(self, layer: Layer) -> "Sequential":
        """Append a layer, as the classic ``Network.add``.

        The network is rebuilt and re-initialised from ``seed`` (layers before the
        new one get the same starting weights as before). A model that has been
        trained refuses: build the whole stack first.

        Parameters
        ----------
        layer : Layer
            The layer to append (a :class:`~mlpx.layers.Dense` fixes its input width).

        Returns
        -------
        Sequential
            This model, so that calls chain.
        """
        self._check_layer(layer)
        if self.history is not None or self.epochs_done_:
            raise RuntimeError("add() builds a network before training; this model has been trained")
        self._given.append(layer)
        if any(isinstance(l, Dense) for l in self._given):
            self._build()
            self.initialize(self.seed)
        return self

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
        self.set_flat_params(self._draw(rng))
        self._seed_dropout([seed])

    # ------------------------------------------------------------ parameters
    @property
    def params(self) -> Array:
        """The flat parameters, shape (n_params,) (a view on NumPy and CuPy)."""
        return None if self.flat is None else self.flat[0, :]

    @property
    def grads(self) -> Array:
        """The flat gradients, shape (n_params,)."""
        return None if self.flat_grads is None else self.flat_grads[0, :]

    @grads.setter
    def grads(self, value: Array) -> None:
        # A whole new gradient (an immutable backend, or an accumulation by the caller).
        xp = self.backend.xp
        self.flat_grads = self.backend.assign(self.flat_grads, xp.reshape(value, (1, -1)))

    @property
    def samples_seen_(self) -> int:
        """Samples trained on so far, over all ``fit`` calls."""
        return int(self.member_samples_[0])

    @samples_seen_.setter
    def samples_seen_(self, value: int) -> None:
        self.member_samples_ = np.array([int(value)], dtype=np.int64)

    def parameters(self) -> dict[str, Array]:
        """Parameter views on the backend, named ``"<layer>.<name>"`` (e.g. ``"0.W"``).

        Returns
        -------
        dict of str -> array
            Views of the master buffer ``params`` (in ``dtype``, whatever the
            precision), each in its layer's shape.
        """
        return self._named(self.params)

    def gradients(self) -> dict[str, Array]:
        """Gradient views on the backend.

        Returns
        -------
        dict of str -> array
            Views of ``grads``, named and shaped as in :meth:`parameters`.
        """
        return self._named(self.grads)

    def layout(self) -> dict[str, tuple[int, int, tuple[int, ...]]]:
        """Where each parameter lives in the flat buffer.

        Returns
        -------
        dict of str -> (int, int, tuple of int)
            Name (as in :meth:`parameters`) -> ``(start, stop, shape)`` in ``params``.
        """
        self._require_built()
        return {f"{i}.{name}": (a, b, shape) for i, name, shape, a, b in self._layer_order()}

    def get_weights(self) -> list[np.ndarray]:
        """Host copies of the parameters in layer order.

        Returns
        -------
        list of ndarray
            ``[W0, b0, W1, b1, ...]``, each in its layer's shape.
        """
        flat = self.get_flat_params()
        return [flat[a:b].reshape(shape).copy() for _i, _n, shape, a, b in self._layer_order()]

    def set_weights(self, weights: Iterable[Any]) -> None:
        """Set all parameters from host arrays.

        Parameters
        ----------
        weights : iterable of array_like
            One array per parameter, in the order and shapes of :meth:`get_weights`.
        """
        self.set_flat_params(self._pack(weights))

    def get_flat_params(self) -> np.ndarray:
        """A host copy of the flat parameter buffer.

        Returns
        -------
        ndarray, shape (n_params,)
            Every weight, then every bias (the layout of :meth:`layout`).
        """
        flat: np.ndarray = self.get_params_host()[0]
        return flat

    def set_flat_params(self, flat: Any) -> None:
        """Overwrite the flat parameter buffer from a host array (one transfer).

        Parameters
        ----------
        flat : array_like, shape (n_params,)
            Finite numbers in the layout of :meth:`layout`.

        Raises
        ------
        ValueError
            The wrong shape, or NaN or infinity.
        """
        self._require_built()
        flat = np.asarray(flat)
        if flat.shape != (self.n_params,):
            raise ValueError(f"expected shape ({self.n_params},), got {flat.shape}")
        self.set_params_host(flat[None, :])

    def assign_params(self, src: Array) -> None:
        """Copy a device buffer into ``params`` (under the write lock).

        Parameters
        ----------
        src : array, shape (n_params,) or (1, n_params)
            On this model's backend, in its dtype.
        """
        xp = self.backend.xp
        with self.parameter_lock.write():
            self._store(self.backend.copy(xp.reshape(src, (1, -1)), self.flat))

    # ---------------------------------------------------------------- forward
    def forward(self, X: Array, train: bool = False, workspace: dict[Any, Any] | None = None) -> Array:
        """Logits of the last layer for a batch already on the backend.

        Parameters
        ----------
        X : array, shape (n, n_features_in_)
            The batch, on the backend, in the compute dtype.
        train : bool
            Compute as training does (dropout drops).
        workspace : dict, optional
            Buffers to compute in (inference passes this thread's); None uses the
            network's training workspaces.

        Returns
        -------
        Z : array, shape (n, n_outputs_)
            A workspace, overwritten by the next call; in mixed precision, in
            ``compute_dtype``.
        """
        self._require_built()
        if self.precision_.mixed:
            self.backend.copy(self.flat, self._flat_c)
        Z, _ = self._forward(X, slice(None), self._ws if workspace is None else workspace, train)
        return Z[0, ...]

    def infer(self, X: Array) -> tuple[Array, Array]:
        """Logits ``Z`` and outputs ``P = g(Z)`` of a batch on the backend (thread-safe).

        Parameters
        ----------
        X : array, shape (n, n_features_in_)
            The batch, on the backend, in the compute dtype.

        Returns
        -------
        Z, P : arrays, shape (n, n_outputs_), in the master dtype
            This thread's workspaces, overwritten by its next call.
        """
        Z, P = self.infer_members(X)
        return Z[0, ...], P[0, ...]

    def predict_proba(self, X: Any) -> np.ndarray:
        """Output activation values (class probabilities for softmax / logistic).

        Thread-safe; see the module docstring.

        Parameters
        ----------
        X : array_like, shape (n, n_features_in_), a store, or a stream of batches
            The forms :meth:`fit` takes (read in chunks).

        Returns
        -------
        ndarray, shape (n, n_outputs_)
            On the host.
        """
        P: np.ndarray = self.member_outputs(X)[0]
        return P

    def predict(self, X: Any) -> np.ndarray:
        """Predictions on the host (thread-safe).

        Parameters
        ----------
        X : array_like, shape (n, n_features_in_), a store, or a stream of batches
            The forms :meth:`fit` takes (read in chunks).

        Returns
        -------
        ndarray, shape (n,) or (n, k)
            Class indices (n,) for a softmax output, 0/1 labels for a logistic one,
            values otherwise (shape (n,) for one output, else (n, k)).
        """
        out = self.output.name
        if out == "softmax":
            indices: np.ndarray = self.member_outputs(X, argmax=True)[0]
            return indices
        P: np.ndarray = self.member_outputs(X)[0]
        if out == "logistic":
            labels = (P > 0.5).astype(np.int64)
            return labels[:, 0] if labels.shape[1] == 1 else labels
        return P[:, 0] if P.shape[1] == 1 else P

    # ---------------------------------------------------------- training step
    def train_step(self, X: Array | None, Y: Array | None, w: Array | None = None, *, denom: float,
                   loss: OutputLoss, optimizer: Optimizer | None, l2: float = 0.0, reducer: Reducer | None = None,
                   count_correct: bool = False, pending: BaseException | None = None, where: str = "",
                   head: Array | None = None) -> StepResult:
        """One minibatch step: forward, backward, all-reduce, L2 penalty, update.

        Every training loop of mlpx runs on this step (the network's,
        :meth:`NetworkStep.step_members <mlpx.network_step.NetworkStep.step_members>`, of which
        this is the one-network face): ``fit`` (one process or many) and the
        scikit-learn estimators' SGD and Adam solvers.

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
        head : array, shape (3 + r, 1), optional
            This step's row of :meth:`~mlpx.network_step.NetworkStep.epoch_heads` (already on the device).

        Returns
        -------
        StepResult
            ``loss``, ``penalty`` and ``correct`` as 0-d arrays (or 0.0 / None).
        """
        res = self.step_members(X, Y, w, denom=denom, loss=loss, optimizer=optimizer, l2=l2, reducer=reducer,
                                count_correct=count_correct, pending=pending, where=where, head=head)
        def one(v: Any) -> Any:  # a member vector's only entry (0.0 and None stay as they are)
            return v if v is None or isinstance(v, float) else v[0]

        return StepResult(one(res.loss), one(res.penalty), one(res.correct), res.applied, res.error)

    def forward_backward(self, X: Array, Y: Array, w: Array | None = None, *, loss: OutputLoss,
                         denom: float) -> Array:
        """The data term of one minibatch and its gradient, into ``grads``.

        Parameters
        ----------
        X, Y, w : arrays, shapes (n, n_features_in_), (n, n_outputs_) and (n,)
            The batch on the backend (X in the compute dtype), its encoded targets and
            its sample weights (``w`` optional).
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
        return self.train_step(X, Y, w, denom=denom, loss=loss, optimizer=None).loss

    def add_l2_penalty(self, l2: float, denom: float) -> Array:
        """Add ``l2 W / d`` to the weight gradients and return the loss term it is the gradient of.

        Kept apart from the data term so a data-parallel step all-reduces the data
        gradients first and adds the penalty once, with the global ``d``.

        Parameters
        ----------
        l2 : float
            The penalty's strength (scikit-learn's ``alpha`` scaling).
        denom : float
            The step's normaliser ``d`` (rows, or Σ w, of every rank's batch).

        Returns
        -------
        0-d array
            ``½ l2 Σ‖W‖² / d`` on the backend.
        """
        coef = self.backend.asarray(np.array([float(l2) / denom]), dtype=self.dtype)
        return (0.5 * float(l2) / denom) * self._add_l2(coef)[0]

    def apply_update(self, optimizer: Optimizer) -> bool:
        """Apply ``optimizer`` to the master weights with the gradients in ``grads``.

        With fp16 loss scaling, a step whose gradients overflowed is skipped and the
        scale lowered (one flag read back from the device per step, as in
        ``torch.amp.GradScaler``); every other mode always applies the step. Holds
        the parameter lock for writing.

        Parameters
        ----------
        optimizer : Optimizer
            Bound to this model.

        Returns
        -------
        bool
            False if the step was skipped.
        """
        scaler = self.precision_.scaler
        with self.parameter_lock.write():
            found_inf = scaler is not None and not bool(self.backend.run(all_finite, self.flat_grads))
            if scaler is not None:
                scaler.update(found_inf)
            if not found_inf:
                vec = self._upload(optimizer.vectors(np.ones(1, dtype=bool)))
                params, _ = optimizer.update(self.flat, self.flat_grads, vec)
                self._store(params)
            return not found_inf

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
            The batch, on the host or the backend.
        y : array_like
            Targets as :meth:`fit` takes them.
        sample_weight : array_like, shape (n,), optional
            Row weights of the loss.
        loss : str or Loss, optional
            Defaults to the loss paired with the output activation.
        l2 : float
            L2 penalty strength (``alpha`` in scikit-learn's scaling).

        Returns
        -------
        loss : float
            The batch's loss, the L2 term included.
        grads : dict of name -> ndarray
            Host copies, named as in :meth:`parameters`.
        """
        return training.loss_and_grads(self, X, y, sample_weight, loss, l2)

    # -------------------------------------------------------------- scoring
    def evaluate(self, X: Any, y: Any = None, sample_weight: Any = None,
                 loss: str | Loss | None = None) -> dict[str, float]:
        """Mean loss and a metric on ``(X, y)``: accuracy (softmax / logistic) or R².

        Thread-safe. The loss is ``loss``, else the loss of the last ``fit``, else
        the output's canonical loss; accuracy uses ``predict``'s labels. ``X`` takes
        the forms of :meth:`fit` (a store read in chunks, or a stream of batches with
        ``y=None``).

        Parameters
        ----------
        X : array_like, shape (n, n_features_in_), a store, or a stream of batches
            The rows to score.
        y : array_like, optional
            Their targets (None for a stream of ``(X, y)`` batches).
        sample_weight : array_like, shape (n,), optional
            Row weights of the means.
        loss : str or Loss, optional
            The loss to report (default: the last ``fit``'s, else the canonical one).

        Returns
        -------
        dict
            ``{"loss": ..., "accuracy": ...}`` or ``{"loss": ..., "r2": ...}``.
        """
        return {k: float(v[0]) for k, v in self.evaluate_members(X, y, sample_weight, loss).items()}

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
        resume_from: Any = None,
    ) -> training.History:
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
            Epochs to run (with ``resume_from``: the run's total).
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
            Hooks run during training, e.g. :class:`~mlpx.callbacks.EarlyStopping`
            or :class:`~mlpx.saving.ModelCheckpoint`.
        verbose : int
            0 silent; 1 a progress bar (tqdm if installed) with the epoch's logs.
        sample_weight : array_like, shape (n_samples,), optional
            Row weights of the loss (and of the logged metrics).
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
        resume_from : str or path, optional
            A checkpoint (:class:`~mlpx.saving.ModelCheckpoint`) of this run to
            continue: its weights, optimizer state, counters and generator states
            are loaded first (:func:`mlpx.saving.resume`), then the remaining
            epochs run, so the result is bit-identical to the uninterrupted run.
            ``epochs`` is the run's total (as Keras' ``epochs`` with
            ``initial_epoch``): a checkpoint after 3 epochs and ``epochs=10`` runs 7.
            The checkpoint's optimizer is used (``optimizer`` must name its kind or
            be an instance of its class); ``lr`` and ``validation_split`` are refused.

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
            comm=comm, stream_data=stream_data, resume_from=resume_from,
        )

    def shuffle_generator(self, rank: int = 0) -> np.random.Generator:
        """The generator of ``fit``'s minibatch order on ``rank``, kept across fits.

        Seeded from ``seed``; rank 0's is the single-process one, so a one-rank
        data-parallel fit shuffles exactly as a plain fit.

        Parameters
        ----------
        rank : int, default 0
            This process's rank in data-parallel training.

        Returns
        -------
        numpy.random.Generator
            Also kept as ``shuffle_rng_``.
        """
        if self.shuffle_rng_ is None or self._shuffle_rank != rank:
            seed = None if self.seed is None else [int(self.seed), 1] + ([rank] if rank else [])
            self.shuffle_rng_ = np.random.default_rng(seed)
            self._shuffle_rank = rank
        return self.shuffle_rng_

    def present(self, logs: dict[str, Any]) -> dict[str, Any]:
        """The loop's per-member logs as a single network shows them.

        Parameters
        ----------
        logs : dict of str -> array, shape (1,)
            Each logged value of the one member.

        Returns
        -------
        dict of str -> float
            The values as floats.
        """
        return {k: float(np.asarray(v, dtype=np.float64).reshape(-1)[0]) for k, v in logs.items()}

    # ------------------------------------------------------------- save/load
    def get_config(self) -> dict[str, Any]:
        """The model's record, from which :func:`mlpx.load` rebuilds it.

        Returns
        -------
        dict
            JSON-ready: :meth:`~mlpx.network.Network.architecture` and ``seed``.
        """
        return {**self.architecture(), "seed": None if self.seed is None else int(self.seed)}

    @classmethod
    def from_config(cls, config: dict[str, Any], params: np.ndarray | None = None,
                    backend: str | Backend = "cpu") -> "Sequential":
        """Rebuild a model from :meth:`get_config`.

        Parameters
        ----------
        config : dict
            A :meth:`get_config` record (checked before anything is allocated).
        params : ndarray, shape (n_params,), optional
            Flat host parameters; None draws starting weights from the record's seed.
        backend : str or Backend, default "cpu"
            Where the model computes.

        Returns
        -------
        Sequential
            The model, with ``params`` or freshly drawn weights.

        Raises
        ------
        ModelFileError
            A bad record (checked before anything is allocated), or parameters of
            the wrong length or dtype, or not finite.
        """
        n_params = check_architecture(config, max_params=max(MAX_PARAMS, 0 if params is None else int(np.size(params))))
        if params is None:
            return _from_record(cls, config, backend, initialize=True)
        host = check_params(params, (n_params,), "model record")
        model = _from_record(cls, config, backend, initialize=False)
        model.set_flat_params(host)
        return model

    def save(self, path: Any) -> Any:
        """Write the model to ``path`` (``.npz``: architecture JSON + host parameters).

        The write is atomic (temporary file, then rename): a crash never leaves a
        half-written model behind.

        Parameters
        ----------
        path : str or path
            The file; ``.npz`` is appended when missing.

        Returns
        -------
        Path
            The path written.
        """
        return write_model_file(path, self.get_config(), {"params": self.get_flat_params()})

    def to(self, backend: str | Backend) -> "Sequential":
        """A copy of this model on another backend: parameters, counters and optimizer state.

        Parameters
        ----------
        backend : str or Backend
            Where the copy computes (e.g. ``"gpu"``).

        Returns
        -------
        Sequential
            The copy.
        """
        model = Sequential.from_config(self.get_config(), self.get_flat_params(), backend)
        model.load_train_state(self.train_state())
        return model

    def __reduce__(self) -> tuple[Any, ...]:
        return (_unpickle, (self.get_config(), self.get_flat_params(), self.backend.name, self.train_state()))

    def summary(self) -> str:
        """A short text table of layers, shapes and parameter counts.

        Returns
        -------
        str
            One line per layer, after a heading line.
        """
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
        """This network as an ONNX model (:func:`mlpx.onnx.to_onnx`; needs ``mlpx[onnx]``).

        Parameters
        ----------
        path : str or path, optional
            Also write the model to this file.
        **options
            ``dtype`` and ``target_opset``, as :func:`mlpx.onnx.to_onnx` takes them.

        Returns
        -------
        onnx.ModelProto
            The exported graph.
        """
        from mlpx.onnx import to_onnx

        return to_onnx(self, path, **options)

    def to_torch(self, **options: Any) -> Any:
        """This network as a ``torch.nn.Sequential`` (:func:`mlpx.torch.to_torch`).

        Parameters
        ----------
        **options
            ``device`` and ``copy``, as :func:`mlpx.torch.to_torch` takes them.

        Returns
        -------
        torch.nn.Sequential
            Sharing the parameter memory unless ``copy=True``.
        """
        from mlpx.torch import to_torch

        return to_torch(self, **options)

    @classmethod
    def from_torch(cls, module: Any, backend: str | Backend = "cpu", seed: int | None = None) -> "Sequential":
        """A Sequential from a ``torch.nn.Sequential`` (:func:`mlpx.torch.layers_from_torch`).

        Parameters
        ----------
        module : torch.nn.Sequential
            Linear and activation modules; their weights are copied.
        backend : str or Backend, default "cpu"
            Where the model computes.
        seed : int, optional
            Seeds its dropout masks and minibatch order.

        Returns
        -------
        Sequential
            With the module's layers, weights and dtype.
        """
        from mlpx.torch import layers_from_torch

        layers, weights, dtype = layers_from_torch(module)
        model = cls(layers, backend=backend, dtype=dtype, seed=seed)
        model.set_weights(weights)
        return model


def _unpickle(config: dict[str, Any], params: np.ndarray, backend: str, state: dict[str, Any]) -> Sequential:
    model = Sequential.from_config(config, params, backend)
    model.load_train_state(state)
    return model


def _from_record(cls: type[Sequential], config: dict[str, Any], backend: str | Backend,
                 initialize: bool) -> Sequential:
    """The network of a checked record; without ``initialize`` its weights are zeros
    (the caller sets them: no initial draw that they would replace)."""
    try:
        layers = [layer_from_config(c) for c in config["layers"]]
        model = cls([], backend=backend, dtype=config["dtype"], seed=config.get("seed"),
                    precision=config.get("precision"))
        model._given = layers
        model._build()
    except (ModelFileError, BackendError):
        raise
    except ValueError as exc:  # InvalidParameterError included: the record is at fault
        raise ModelFileError(f"model record: {exc}") from None
    if initialize:
        model.initialize(model.seed)
    else:
        model._seed_dropout([model.seed])
    return model


def load(path: Any, backend: str | Backend = "cpu", *, max_params: int = MAX_PARAMS) -> Sequential:
    """Load a model saved by :meth:`Sequential.save` (or a checkpoint) onto ``backend``.

    Parameters
    ----------
    path : str or path
        ``path + ".npz"`` is found when ``path`` does not exist (``save(path)``
        appends the suffix).
    backend : str or Backend, default "cpu"
        Where the model computes.
    max_params : int, default :data:`mlpx.saving.MAX_PARAMS`
        Refuse files that describe more parameters than this.

    Returns
    -------
    Sequential
        With the saved weights (a checkpoint's training state is not restored:
        see :func:`mlpx.saving.load_checkpoint`).

    Raises
    ------
    ModelFileError
        Anything wrong with the file (:class:`mlpx.saving.ModelFile`), a device,
        FIFO or directory included; nothing is allocated for the network before its
        description has been checked against the stored data. The parameters are
        streamed into the network's own buffer, so a load allocates the network
        (parameters and gradients: twice the parameter bytes) and a constant
        besides, whatever the file.
    OSError
        The file cannot be opened (missing, no permission).
    """
    be = get_backend(backend)
    with ModelFile(path, max_params=max_params) as f:
        try:
            model = _from_record(Sequential, f.record, be, initialize=False)
        except ModelFileError as exc:
            raise ModelFileError(f"{f.path}: {exc}") from None
        # On NumPy the file's data goes straight into the parameter buffer.
        direct = isinstance(model.params, np.ndarray) and model.params.dtype == f.dtype
        with model.parameter_lock.write():
            params = f.read_params(out=model.params if direct else None)
        if not direct:
            model.set_flat_params(params)
    return model


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
    backend : str or Backend, default "cpu"
        ``"cpu"``, ``"cpu:mkl"``, ``"cpu:blis"``, ``"gpu"``, ``"gpu:N"``, ``"auto"``,
        ``"array_api_strict"``, ``"array-api:<module>"`` or a Backend instance.
    dtype : {"float32", "float64"}, default "float32"
        The dtype of parameters, gradients and optimizer state.
    seed : int, optional
        Seeds the initial weights (drawn on the host, so every backend starts from
        the same ones). NumPy integers are accepted (and stored as Python ints).
    dropout : float in [0, 1), default 0
        Dropout rate after each hidden layer.
    init : {"glorot", "he"} or callable, default "glorot"
        Weight initialiser (:mod:`mlpx.initializers`).
    precision : {None, "float32", "tf32", "bf16", "fp16"}, optional
        See :class:`Sequential` and :mod:`mlpx.precision`.

    Returns
    -------
    Sequential
        Dense layers ``sizes[k] -> sizes[k + 1]``, not yet trained.

    Raises
    ------
    InvalidParameterError
        (a ValueError and TypeError) A width that is not a positive integer: 8.7 is
        refused, not truncated, and so is 8.0, as scikit-learn does.

    Examples
    --------
    >>> import mlpx
    >>> model = mlpx.MLP([64, 128, 64, 32, 10], activation="relu", output="softmax", seed=0)
    >>> model.n_params
    18986
    """
    layers = mlp_layers(sizes, activation, output, dropout, init)
    return Sequential(layers, backend=backend, dtype=dtype, seed=seed, precision=precision)

