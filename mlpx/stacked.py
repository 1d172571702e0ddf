"""Stacks: K networks of one architecture with their own settings, data and stopping.

A :class:`Stack` is a :class:`~mlpx.network.Network` of K *members* (a single
network is the K = 1 case, :class:`~mlpx.model.Sequential`): one ``(K, n_params)``
parameter buffer whose row ``k`` is member ``k``'s flat buffer, so a member leaves
the stack as an ordinary ``Sequential`` (:meth:`Stack.member`) and enters it from
one (:meth:`Stack.from_models`). The math of a step is the network's, for every
layer, loss and optimizer; what is here is about members:

* each member's seed (its starting weights, dropout masks and minibatch order);
* each member's rows of one data set (cross-validation folds, early-stopping
  splits, bootstrap samples) and sample weights: its minibatches come from
  :class:`~mlpx.member_batches.MemberBatches`; members with fewer rows, or fewer rows left
  in an epoch, fill their places with rows of weight zero, which add nothing to
  the loss or the gradient, and a member without rows in a step takes no
  optimizer step. So each member trains exactly as it would alone, to rounding;
* each member's settings (rate, L2, the optimizer's settings, schedule): a scalar
  for all or one per member;
* each member's callbacks (:class:`MemberCallbacks`): stopping one freezes it (no
  rows, no update); the stack ends when every member has stopped. A member whose
  loss stops being finite is frozen and left out of the averaged predictions.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable, Sequence

import numpy as np

from mlpx import streams
from mlpx._member_settings import (member_callback_lists, member_optimizer, member_vector, rows_per_member,
                                   shuffler, weights_per_member)
from mlpx.backends import Backend, get_backend
from mlpx.callbacks import Callback, ProgressBar, check_callbacks
from mlpx.data import is_sparse, make_batches, to_host
from mlpx.member_batches import MemberBatches, MemberHoldout, MemberRows
from mlpx.distributed import make_reducer
from mlpx.locking import exclusive_training
from mlpx.losses import OutputLoss
from mlpx.model import Sequential
from mlpx.network import Network
from mlpx.optimizers import Optimizer
from mlpx.saving import MAX_PARAMS, ModelFile, ModelFileError, check_params, member_count, write_model_file
from mlpx.streams import MemberFeedBatches
from mlpx.training import History, TrainingDivergedError, host_shard, train
from mlpx.validation import check_int, check_real, check_sample_weight, check_sparse_X, check_X, encode_targets

__all__ = ["MemberCallbacks", "MemberView", "Stack", "StopAfter", "load"]

Array = Any


def _unpickle(config: dict[str, Any], params: np.ndarray, backend: Any, threads: int, state: dict[str, Any]) -> "Stack":
    stack = Stack.from_config(config, params, backend, threads=threads)
    stack.load_train_state(state)
    return stack


def load(path: Any, backend: str | Backend = "cpu", *, max_params: int = MAX_PARAMS) -> "Stack":
    """Load a stack written by :meth:`Stack.save` (or a stack's checkpoint) onto ``backend``.

    Parameters
    ----------
    path : str or path
        ``path + ".npz"`` is found when ``path`` does not exist.
    backend : str or Backend, default "cpu"
        Where the stack computes.
    max_params : int, default :data:`mlpx.saving.MAX_PARAMS`
        Refuse files that describe more parameters than this (over all members).

    Returns
    -------
    Stack
        With the saved members' weights, counters and flags (a checkpoint's optimizer
        resumes through :func:`mlpx.saving.load_checkpoint`).

    Raises
    ------
    ModelFileError
        Anything wrong with the file (:class:`mlpx.saving.ModelFile`), or a single
        network's file.
    """
    with ModelFile(path, max_params=max_params) as f:
        params = f.read_params()
        record = f.record
        where = f.path
    try:
        stack = Stack.from_config(record, params, get_backend(backend))
    except ModelFileError as exc:
        raise ModelFileError(f"{where}: {exc}") from None
    state = dict(record.get("train_state", {}))
    state.pop("optimizer", None)  # a checkpoint's optimizer resumes through load_checkpoint
    state.pop("generators", None)
    stack.load_train_state(state)
    return stack


# ================================================================ callbacks
class MemberView:
    """One member of a stack as the callbacks of a single model see it.

    ``params`` is the member's row of the stack's buffer, ``assign_params`` writes
    it, ``samples_seen_`` is the member's own count, and setting
    ``stop_training`` freezes the member (:class:`MemberCallbacks`).

    Parameters
    ----------
    stack : Stack
        The stack the member belongs to.
    k : int
        The member's index.
    """

    def __init__(self, stack: "Stack", k: int) -> None:
        self.stack, self.k = stack, k
        self.backend = stack.backend
        self.dtype = stack.dtype
        self.parameter_lock = stack.parameter_lock
        self.stop_training = False

    @property
    def params(self) -> Array:
        """The member's parameters, shape (n_params,): a view of its row of the stack's buffer."""
        return self.stack.params[self.k, :]

    def assign_params(self, src: Array) -> None:
        """Overwrite the member's parameters (:meth:`Stack.set_member_params`).

        Parameters
        ----------
        src : array, shape (n_params,)
            On the host or the stack's backend.
        """
        self.stack.set_member_params(self.k, src)

    @property
    def samples_seen_(self) -> int:
        """Samples the member has trained on."""
        return int(self.stack.samples_seen_[self.k])

    @property
    def epochs_done_(self) -> int:
        """Epochs the stack has run."""
        return int(self.stack.epochs_done_)

    @property
    def history(self) -> History | None:
        """The stack's history (each value one per member)."""
        history: History | None = self.stack.history
        return history


class MemberCallbacks(Callback):
    """Run each member's own callbacks on its own logs; freeze members that stop.

    After every epoch the stack's ``stop_training`` is set once every member has
    stopped (a callback of the stack itself may also stop them all).

    Parameters
    ----------
    callbacks : sequence of K sequences of Callback
        Member ``k``'s callbacks (e.g. an :class:`~mlpx.callbacks.EarlyStopping`,
        or the scikit-learn estimators' stopping policy), called with a
        :class:`MemberView` and the epoch's logs of that member (floats).
    """

    def __init__(self, callbacks: Sequence[Sequence[Callback]]) -> None:
        self.callbacks = [check_callbacks(c) for c in callbacks]
        self.views: list[MemberView] = []

    def on_train_begin(self, model: Any, epochs: int) -> None:
        if len(self.callbacks) != model.n_members:
            raise ValueError(f"{len(self.callbacks)} lists of member callbacks for {model.n_members} members")
        self.views = [MemberView(model, k) for k in range(model.n_members)]
        for view, cbs in zip(self.views, self.callbacks):
            for cb in cbs:
                cb.on_train_begin(view, epochs)

    def on_epoch_end(self, model: Any, epoch: int, logs: dict[str, Any]) -> None:
        for k, (view, cbs) in enumerate(zip(self.views, self.callbacks)):
            if not model.active[k]:
                continue
            mine = {key: float(np.asarray(v).reshape(-1)[k]) if np.ndim(v) else float(v) for key, v in logs.items()}
            for cb in cbs:
                cb.on_epoch_end(view, epoch, mine)
            if view.stop_training:
                model.freeze(k)
        model.stop_training = model.stop_training or not model.active.any()

    def on_train_end(self, model: Any) -> None:
        for view, cbs in zip(self.views, self.callbacks):
            for cb in cbs:
                cb.on_train_end(view)


class _StackProgress(ProgressBar):
    """The progress bar of a stack: each logged value as the median over active members."""

    def on_epoch_end(self, model: Any, epoch: int, logs: dict[str, Any]) -> None:
        keep = model.active
        short = {}
        for k, v in logs.items():
            v = np.asarray(v, dtype=np.float64).reshape(-1)
            v = v[keep] if v.size == keep.size and keep.any() else v
            short[f"median {k}"] = float(np.nanmedian(v)) if np.isfinite(v).any() else math.nan
        short["active"] = float(keep.sum())
        super().on_epoch_end(model, epoch, short)


class StopAfter(Callback):
    """A member callback: freeze the member after its own number of epochs.

    Parameters
    ----------
    epochs : int >= 1
        The member's number of epochs.
    """

    def __init__(self, epochs: int) -> None:
        self.epochs = check_int("epochs", epochs, low=1)
        self.done = 0

    def on_epoch_end(self, model: Any, epoch: int, logs: dict[str, float]) -> None:
        self.done += 1
        if self.done >= self.epochs:
            model.stop_training = True


# ==================================================================== stack
class Stack(Network):
    """K networks of one architecture, trained together.

    Parameters
    ----------
    template : Sequential
        A built network: its layers (Dense, activation and Dropout layers), output,
        backend, dtype and precision are every member's. Its own weights are not used.
    seeds : sequence of int or None, optional
        One per member: member ``k`` starts from the weights ``Sequential(...,
        seed=seeds[k])`` draws (and drops and shuffles as that network would in
        :meth:`fit`). Default: ``n_members`` seeds counting up from the template's
        seed (fresh entropy when it has none).
    n_members : int, optional
        K, when ``seeds`` is not given.
    params : array, shape (K, n_params), optional
        Starting weights of every member instead of drawing them.
    threads : int, optional
        CPU threads the members are split over for small products (default: the
        usable cores; 1 disables). Ignored on the GPU and Array API backends.

    Attributes
    ----------
    params, grads : arrays, shape (K, n_params)
        Row ``k`` is member ``k``'s flat buffer (the layout of ``template.params``).
    n_members, n_params, n_weights : int
    active : ndarray of bool, shape (K,)
        Members still training; a frozen member gets no rows and no updates.
    samples_seen_ : ndarray of int64, shape (K,)
        Samples each member has trained on (drives ``invscaling``).
    epochs_done_ : int
        Epochs the stack has run.
    history : History or None
        The last ``fit``'s logs: each value a per-member array of shape (K,).
    diverged_ : ndarray of bool, shape (K,)
        Members whose loss stopped being finite in the last :meth:`fit` (frozen
        there, and left out of the averaged predictions).
    optimizer_ : Optimizer or None
        The last fit's optimizer, stepping all K members.
    compiled_step_reason : str
        "" where each member's steps run as one compiled loop on the CPU
        (:mod:`mlpx.member_step`; an epoch's in one call), else why the steps run
        phase by phase.

    Examples
    --------
    >>> import mlpx
    >>> template = mlpx.MLP([64, 32, 10], seed=0, dtype="float64")
    >>> stack = mlpx.Stack(template, seeds=[0, 1, 2, 3])
    >>> hist = stack.fit(X, y, epochs=5, batch_size=64, lr=[1e-3, 3e-3, 1e-2, 3e-2])  # doctest: +SKIP
    >>> stack.predict(X)                       # the members' averaged probabilities, arg-max   # doctest: +SKIP
    >>> stack.member(2)                        # an ordinary Sequential                          # doctest: +SKIP
    """

    def __init__(
        self,
        template: Sequential,
        seeds: Sequence[int | None] | None = None,
        *,
        n_members: int | None = None,
        params: Any = None,
        threads: int | None = None,
    ) -> None:
        if not isinstance(template, Sequential):
            raise TypeError(f"template must be an mlpx.Sequential, got {type(template).__name__}")
        template._require_built()
        if seeds is None:
            if n_members is None:
                if params is None:
                    raise ValueError("give the members' seeds, n_members or params")
                n_members = int(np.shape(params)[0])
            n_members = check_int("n_members", n_members, low=1)
            seeds = [None if template.seed is None else template.seed + k for k in range(n_members)]
        else:
            if isinstance(seeds, (int, np.integer)) or not hasattr(seeds, "__iter__"):
                raise TypeError(f"seeds must be a sequence (one per member), got {seeds!r}")
            seeds = [None if s is None else check_int(f"seeds[{i}]", s, low=0) for i, s in enumerate(seeds)]
            if not seeds:
                raise ValueError("a stack needs at least one member")
            if n_members is not None and n_members != len(seeds):
                raise ValueError(f"n_members={n_members} but {len(seeds)} seeds")
        threads = None if threads is None else check_int("threads", threads, low=1)
        super().__init__(copy.deepcopy(template._given), seeds=seeds, backend=template.backend,
                         dtype=template.dtype, precision=template.precision_, threads=threads)
        self.template = template
        self._build()
        K = self.n_members
        if params is None:
            host = np.stack([self._draw(np.random.default_rng(s)) for s in self.seeds])
        else:
            host = np.asarray(to_host(params), dtype=np.float64)
            if host.shape != (K, self.n_params):
                raise ValueError(f"params must have shape ({K}, {self.n_params}), got {host.shape}")
        self.set_params_host(host)
        self._seed_dropout(self.seeds)
        self.shuffle_rngs_: list[np.random.Generator] | None = None
        self._shuffle_rank = 0

    # --------------------------------------------------------------- members
    @property
    def samples_seen_(self) -> np.ndarray:
        """Samples each member has trained on, shape (K,)."""
        return self.member_samples_

    @samples_seen_.setter
    def samples_seen_(self, value: Any) -> None:
        self.member_samples_ = np.broadcast_to(np.asarray(value, dtype=np.int64), (self.n_members,)).copy()

    @classmethod
    def from_models(cls, models: Sequence[Sequential], *, threads: int | None = None) -> "Stack":
        """A stack whose members are copies of ``models`` (weights and seeds).

        Parameters
        ----------
        models : sequence of Sequential
            Built networks of one architecture, dtype, precision and backend.
        threads : int, optional
            As for :class:`Stack`.

        Returns
        -------
        Stack
            Member ``k`` a copy of ``models[k]``, its sample count included.

        Raises
        ------
        ValueError
            No models, or models that differ in architecture, dtype, precision or
            backend (a stack has one architecture).
        """
        models = list(models)
        if not models:
            raise ValueError("Stack.from_models needs at least one model")
        if not all(isinstance(m, Sequential) for m in models):
            raise TypeError("Stack.from_models takes mlpx.Sequential models")
        first = models[0]
        first._require_built()
        arch = first.get_config()["layers"]
        for i, m in enumerate(models[1:], 1):
            m._require_built()
            if m.get_config()["layers"] != arch:
                raise ValueError(f"models[{i}] has another architecture than models[0]: a stack has one "
                                 f"architecture ({m.get_config()['layers']} != {arch})")
            if (m.dtype, m.precision_.name, m.backend.name) != (first.dtype, first.precision_.name, first.backend.name):
                raise ValueError(f"models[{i}] differs from models[0] in dtype, precision or backend: "
                                 f"{(m.dtype, m.precision_.name, m.backend.name)} != "
                                 f"{(first.dtype, first.precision_.name, first.backend.name)}")
        params = np.stack([m.get_flat_params() for m in models])
        stack = cls(first, seeds=[m.seed for m in models], params=params, threads=threads)
        stack.samples_seen_ = np.array([m.samples_seen_ for m in models], dtype=np.int64)
        return stack

    def member(self, k: int, backend: Any = None) -> Sequential:
        """Member ``k`` as an ordinary :class:`~mlpx.model.Sequential`.

        Parameters
        ----------
        k : int
            The member's index (negative counts from the end).
        backend : str or Backend, optional
            Where the model computes (default: the stack's backend).

        Returns
        -------
        Sequential
            A copy of the member's weights, with its seed and counters.
        """
        k = self._index(k)
        cfg = dict(self.template.get_config())
        cfg["seed"] = self.seeds[k]
        model = Sequential.from_config(cfg, self.get_member_params(k), backend or self.backend)
        model.samples_seen_ = int(self.samples_seen_[k])
        model.epochs_done_ = int(self.epochs_done_)
        return model

    def to_onnx(self, path: Any = None, member: int | None = None, **options: Any) -> Any:
        """The averaged ensemble, or one member, as an ONNX model (:func:`mlpx.onnx.to_onnx`).

        The ensemble computes what :meth:`predict` and :meth:`predict_proba` do.
        Needs ``mlpx[onnx]``.

        Parameters
        ----------
        path : str or path, optional
            Also write the model to this file.
        member : int, optional
            Export this member alone instead of the ensemble.
        **options
            ``dtype`` and ``target_opset``, as :func:`mlpx.onnx.to_onnx` takes them.

        Returns
        -------
        onnx.ModelProto
            The exported graph.
        """
        from mlpx.onnx import to_onnx

        if member is None and self.diverged_.all():
            raise TrainingDivergedError(max(0, self.epochs_done_ - 1), self.optimizer_.lr if self.optimizer_
                                        else math.nan, what="every member of the stack")
        return to_onnx(self, path, member=member, **options)

    def members(self) -> list[Sequential]:
        """Every member as a :class:`~mlpx.model.Sequential`.

        Returns
        -------
        list of Sequential
            :meth:`member` of each index, in order.
        """
        return [self.member(k) for k in range(self.n_members)]

    def _index(self, k: int) -> int:
        k = check_int("member", k)
        if not -self.n_members <= k < self.n_members:
            raise IndexError(f"member {k} out of range for a stack of {self.n_members}")
        return k % self.n_members

    def get_member_params(self, k: int) -> np.ndarray:
        """A host copy of member ``k``'s flat parameters.

        Parameters
        ----------
        k : int
            The member's index (negative counts from the end).

        Returns
        -------
        ndarray, shape (n_params,)
            In the layout of the template's ``params``.
        """
        k = self._index(k)
        with self.parameter_lock.read():
            return np.array(self.backend.to_numpy(self.flat[k, :]), copy=True)

    def set_member_params(self, k: int, src: Any) -> None:
        """Overwrite member ``k``'s parameters from a host or device vector.

        Parameters
        ----------
        k : int
            The member's index (negative counts from the end).
        src : array_like, shape (n_params,)
            Finite numbers, on the host or the stack's backend.

        Raises
        ------
        ValueError
            The wrong shape, or NaN or infinity.
        """
        self._member_params_write(self._index(k), src)

    def assign_params(self, src: Array) -> None:
        """Copy a device buffer into ``params`` (:meth:`~mlpx.network.Network.assign_flat`).

        Parameters
        ----------
        src : array, shape (K, n_params)
            On the stack's backend, in its dtype.
        """
        self.assign_flat(src)

    def freeze(self, k: int) -> None:
        """Stop member ``k``: from the next epoch it gets no rows and no updates.

        Parameters
        ----------
        k : int
            The member's index (negative counts from the end).
        """
        self.active[self._index(k)] = False

    # ---------------------------------------------------------------- predict
    def predict_proba(self, X: Any, combine: str | None = "mean") -> np.ndarray:
        """Output activations: the members' mean (n, c), or each member's (K, n, c).

        Parameters
        ----------
        X : array_like, shape (n, n_features_in_), a store, or a stream of batches
            The rows to predict, in the forms :meth:`fit` takes.
        combine : {"mean", None}
            Average the members that did not diverge, or keep each member's.

        Returns
        -------
        ndarray, shape (n, n_outputs_) or (K, n, n_outputs_)
            On the host.

        Raises
        ------
        TrainingDivergedError
            Every member diverged (``combine="mean"``): there is nothing to average.
        """
        return self._predict(X, combine, labels=False)

    def predict(self, X: Any, combine: str | None = "mean") -> np.ndarray:
        """Predictions from the members' averaged outputs, or each member's (``combine=None``).

        Parameters
        ----------
        X : array_like, shape (n, n_features_in_), a store, or a stream of batches
            The rows to predict, in the forms :meth:`fit` takes.
        combine : {"mean", None}
            Predict from the mean outputs of the members that did not diverge, or
            each member on its own.

        Returns
        -------
        ndarray, shape (n,) or (n, k), or (K, n) or (K, n, k) with ``combine=None``
            Class indices for a softmax output (the arg-max of the mean
            probabilities: a soft vote), labels ``> 0.5`` for a logistic one, values
            otherwise (one output: no last axis).

        Raises
        ------
        TrainingDivergedError
            Every member diverged (``combine="mean"``).
        """
        return self._predict(X, combine, labels=True)

    def _predict(self, X: Any, combine: str | None, labels: bool) -> np.ndarray:
        if combine not in ("mean", None):
            raise ValueError(f"combine must be 'mean' or None, got {combine!r}")
        if combine == "mean" and self.diverged_.all():
            raise TrainingDivergedError(max(0, self.epochs_done_ - 1), self.optimizer_.lr if self.optimizer_
                                        else math.nan, what="every member of the stack")
        P = self.member_outputs(X)
        out = P[~self.diverged_].mean(axis=0) if combine == "mean" else P
        if not labels:
            return out
        name, c = self.output.name, self.n_outputs_
        if name == "softmax":
            indices: np.ndarray = np.argmax(out, axis=-1)
            return indices
        if name == "logistic":
            lab = (out > 0.5).astype(np.int64)
            return lab[..., 0] if c == 1 else lab
        return out[..., 0] if c == 1 else out

    # -------------------------------------------------------------------- fit
    @exclusive_training
    def fit(
        self,
        X: Any,
        y: Any = None,
        epochs: int = 10,
        batch_size: int = 32,
        optimizer: str | Sequence[Optimizer] | Optimizer = "adam",
        *,
        lr: Any = None,
        l2: Any = 0.0,
        momentum: Any = None,
        nesterov: Any = False,
        beta_1: Any = None,
        beta_2: Any = None,
        epsilon: Any = None,
        rho: Any = None,
        weight_decay: Any = None,
        schedule: Any = None,
        loss: Any = None,
        rows: Sequence[Any] | None = None,
        sample_weight: Any = None,
        validation_data: tuple[Any, ...] | None = None,
        shuffle: bool = True,
        max_epochs: Any = None,
        validation_split: float = 0.0,
        callbacks: Sequence[Callback] = (),
        member_callbacks: Sequence[Callback] | Sequence[Sequence[Callback]] | None = None,
        verbose: int = 0,
        comm: Any = None,
        stream_data: bool | None = None,
    ) -> History:
        """Train every member, each with its own settings, data and stopping.

        Settings marked "per member" take one value for all or a sequence of K.

        Parameters
        ----------
        X : array_like or sparse matrix, shape (n, n_features_in_), a store, or a stream of batches
            The forms :meth:`Sequential.fit <mlpx.model.Sequential.fit>` takes. A
            store or stream (a zarr, HDF5 or Dask array, a re-iterable of batches),
            sparse ``X`` and ``stream_data=True`` train every member on the same
            minibatches in the same order (the first member's shuffle), without
            ``rows``, per-member weights or ``validation_split``.
        y : array_like, optional
            Targets as :meth:`Sequential.fit <mlpx.model.Sequential.fit>` takes them
            (None for a stream of ``(X, y)`` batches).
        epochs : int
            Epochs of the stack (each member stops earlier if told to).
        batch_size : int
            Rows of each member's minibatches.
        optimizer : {"adam", "sgd", "adamw", "rmsprop"}, sequence of K optimizers, or Optimizer
            A name (configured by the settings below), one single-network optimizer
            per member (:meth:`Optimizer.stack <mlpx.optimizers.Optimizer.stack>`),
            or an optimizer whose settings are scalars or vectors of K.
        lr, l2, momentum : float or sequence, per member
            The learning rate, the L2 penalty (``alpha``'s scaling) and SGD's
            momentum (defaults: the optimizer's).
        nesterov : bool or sequence of bool, per member
            SGD only.
        beta_1, beta_2, epsilon, rho, weight_decay : float or sequence, per member
            The other optimizers' own settings (defaults: the optimizer's).
        schedule : str, Schedule or sequence, per member
            The rate policy (e.g. ``"invscaling"``, ``mlpx.InverseScaling(0.25)``);
            each member gets its own copy.
        loss : str or Loss, optional
            Any loss on the output, as :meth:`Sequential.fit <mlpx.model.Sequential.fit>`
            takes it (default: the output's canonical loss).
        rows : sequence of K arrays of int, optional
            Member ``k`` trains on rows ``rows[k]`` only (cross-validation folds,
            bootstrap samples); default: every member on every row.
        sample_weight : array_like, shape (n,) or (K, n), optional
            Shared, or one row per member (zeros leave rows out of a member's loss
            and gradient; they still take places in its minibatches: use ``rows``
            to train on a subset exactly as a fit on that subset would).
        validation_data : (X_val, y_val) or (X_val, y_val, w_val), optional
            Scored for every member after each epoch (``val_loss``,
            ``val_accuracy`` / ``val_r2``).
        shuffle : bool
            Each member reshuffles its rows every epoch with its own generator
            (the one ``Sequential(seed=seeds[k]).fit`` shuffles with).
        max_epochs : int or sequence, per member, optional
            Freeze a member after this many epochs.
        validation_split : float in [0, 1)
            Without ``validation_data``: each member holds out this fraction of its
            rows, drawn by its shuffle generator as its own network's ``fit`` draws it.
        callbacks : sequence of Callback
            Callbacks of the stack: they see vector logs (one value per member).
        member_callbacks : sequence of Callback, or K sequences
            Each member's own callbacks (one list is copied for every member),
            e.g. ``[mlpx.EarlyStopping(patience=5)]``: they see the member's logs
            as floats, and stopping freezes that member only.
        verbose : int
            0 silent; 1 a progress bar with each log's median over the active members.
        comm : mpi4py communicator, "mpi" or "nccl", optional
            Train data-parallel across ranks (:mod:`mlpx.distributed`): every rank
            holds every member and passes its own shard of the data (``rows``
            index the rank's shard); the gradients of all members are all-reduced
            once per step; logs and member stopping are global.
        stream_data : bool, optional
            As :meth:`Sequential.fit <mlpx.model.Sequential.fit>`: True uploads the
            minibatches from the host as the steps run instead of keeping the data
            set on the device (default: when it would not fit).

        Returns
        -------
        History
            Per-epoch logs; every value an array of shape (K,) (NaN for members
            that were frozen).

        Raises
        ------
        InvalidParameterError, ValueError, TypeError
            A bad value, or a vector whose length is not K.
        """
        be = self.backend
        reducer = make_reducer(comm, be)
        if reducer.backend.name != be.name:
            raise ValueError(f"the reducer works on {reducer.backend.name}, the model on {be.name}")
        setup = reducer.agreed(
            "setup", self._prepare, reducer, X, y, epochs, batch_size, optimizer, loss, rows, sample_weight,
            validation_data, validation_split, shuffle, max_epochs, callbacks, member_callbacks, verbose,
            dict(lr=lr, momentum=momentum, nesterov=nesterov, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, rho=rho,
                 weight_decay=weight_decay, schedule=schedule), l2, stream_data)
        source, holdout, opt, lossfn, l2v, order, cbs, weighted = setup
        reducer.agree_settings({
            "architecture": self.get_config()["layers"], "members": self.n_members, "dtype": self.dtype,
            "precision": self.precision_.name, "loss": lossfn.name,
            "optimizer": [type(opt).__name__, opt.get_config()], "epochs": int(epochs),
            "batch_size": int(batch_size), "l2": l2v.tolist(), "shuffle": bool(shuffle),
            "validation": [validation_data is not None, float(validation_split)], "epochs_done": self.epochs_done_,
            "shared_rows": bool(streams.is_stream(X) or is_sparse(X) or stream_data),
        })
        if reducer.size > 1 and reducer.allreduce_max(0 if source is None else source.n) == 0:
            raise ValueError("no rank holds any training rows")
        self.active[:] = True
        self.diverged_[:] = False
        with self.training_context(batch_size), np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return train(self, source, optimizer=opt, loss=lossfn, reducer=reducer, epochs=int(epochs),
                         l2=l2v, order=order, callbacks=cbs, holdout=holdout,
                         count_correct=self.output.name in ("softmax", "logistic") and not weighted,
                         divergence="freeze")

    def _prepare(self, reducer: Any, X: Any, y: Any, epochs: Any, batch_size: Any, optimizer: Any, loss: Any,
                 rows: Any, sample_weight: Any, validation_data: Any, validation_split: Any, shuffle: bool,
                 max_epochs: Any, callbacks: Any, member_callbacks: Any, verbose: int, settings: dict[str, Any],
                 l2: Any, stream_data: bool | None) -> tuple[Any, ...]:
        """This rank's checked arguments: source, holdout, optimizer, loss, l2, order, callbacks."""
        K, be = self.n_members, self.backend
        check_int("epochs", epochs, low=1)
        batch_size = check_int("batch_size", batch_size, low=1)
        split = check_real("validation_split", validation_split, 0.0, 1.0, high_open=True)
        lossfn = self.resolve_loss(loss)
        opt = member_optimizer(optimizer, K, **settings)
        l2v = np.array(member_vector("l2", l2, K, low=0.0))
        gens = self.shuffle_generators(reducer.rank)
        per_member = member_callback_lists(member_callbacks, K)
        if max_epochs is not None:
            for cbs, e in zip(per_member, member_vector("max_epochs", max_epochs, K, integer=True)):
                cbs.append(StopAfter(int(e)))
        cbs = [MemberCallbacks(per_member)] + check_callbacks(callbacks)
        if verbose and reducer.is_root:
            cbs.append(_StackProgress(verbose))
        # Stores, streams of batches, sparse X and streamed uploads: every member the same rows.
        fed = streams.stack_source(self, reducer, X, y, sample_weight, rows, batch_size, shuffle, validation_data,
                                   split, stream_data, gens[0], MemberRows, lossfn.name)
        if fed is None and (is_sparse(X) or stream_data):
            fed = self._shared_source(reducer, X, y, sample_weight, rows, batch_size, shuffle, split, stream_data,
                                      gens[0], lossfn)
        if fed is not None:
            holdout = self._holdout(validation_data, lossfn) if validation_data is not None else None
            return fed[0], holdout, opt, lossfn, l2v, fed[1], cbs, fed[2]
        Xh = check_X(X, be, self.n_features_in_, dtype=self.compute_dtype)
        if not isinstance(Xh, np.ndarray):
            Xh = be.to_numpy(Xh)
        n = Xh.shape[0]
        Y = encode_targets(y, self.output.name, self.n_outputs_, n, dtype=self.dtype, loss=lossfn.name)
        member_rows = rows_per_member(rows, K, n)
        w_rows, w_shared = weights_per_member(sample_weight, K, n)
        w_all: np.ndarray | None
        if w_rows is not None:
            # Per-member weights: each member gets its own copy of the data set's rows.
            Xh = np.concatenate([Xh] * K)
            Y = np.concatenate([Y] * K)
            w_all = w_rows.reshape(-1)
            member_rows = [r + k * n for k, r in enumerate(member_rows)]
        else:
            w_all = w_shared
        holdout = None
        if validation_data is not None:
            holdout = self._holdout(validation_data, lossfn)
        elif split:
            # Each member holds out a random fraction of its rows, drawn as its own
            # network's fit draws it (its shuffle generator, before the epochs).
            val_rows = []
            for k, g in enumerate(gens):
                r = member_rows[k]
                n_val = int(round(r.size * split))
                if n_val < 1 or n_val >= r.size:
                    raise ValueError(f"validation_split={validation_split} leaves member {k} no training or "
                                     f"validation rows ({r.size} rows)")
                idx = g.permutation(r.size)
                val_rows.append(r[idx[:n_val]])
                member_rows[k] = r[idx[n_val:]]
            holdout = MemberHoldout(be, Xh, Y, w_all, val_rows, self.compute_dtype, self.dtype)
        source = MemberBatches(be, Xh, Y, w_all, member_rows, batch_size, self.compute_dtype,
                               target_dtype=self.dtype)
        sizes = [r.size for r in source.rows]
        order = self.member_order([shuffler(g, m) if shuffle else None for g, m in zip(gens, sizes)])
        return source, holdout, opt, lossfn, l2v, order, cbs, w_all is not None

    def _holdout(self, validation_data: Any, lossfn: OutputLoss) -> MemberHoldout:
        """Every member's held-out set: ``validation_data`` in memory."""
        be, K = self.backend, self.n_members
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
            raise ValueError("validation_data must be (X_val, y_val) or (X_val, y_val, w_val)")
        Xv = check_X(validation_data[0], be, self.n_features_in_, name="X_val", dtype=self.compute_dtype)
        Xv = Xv if isinstance(Xv, np.ndarray) else be.to_numpy(Xv)
        Yv = encode_targets(validation_data[1], self.output.name, self.n_outputs_, Xv.shape[0], dtype=self.dtype,
                            loss=lossfn.name)
        wv = None if len(validation_data) == 2 else weights_per_member(validation_data[2], 1, Xv.shape[0])[1]
        return MemberHoldout(be, Xv, Yv, wv, [np.arange(Xv.shape[0])] * K, self.compute_dtype, self.dtype)

    def _shared_source(self, reducer: Any, X: Any, y: Any, sample_weight: Any, rows: Any, batch_size: int,
                       shuffle: bool, split: float, stream_data: bool | None, rng: np.random.Generator,
                       lossfn: OutputLoss) -> tuple[Any, Any, bool]:
        """Sparse ``X``, or minibatches uploaded from the host (``stream_data``): one
        source of minibatches that every member takes, in the order ``rng`` shuffles."""
        what = "sparse X" if is_sparse(X) else "stream_data=True"
        Yh: np.ndarray | None
        if rows is not None or (sample_weight is not None and np.ndim(sample_weight) == 2):
            raise ValueError(f"per-member rows and weights gather each member's rows of a data set on the device; "
                             f"with {what} every member trains on every row")
        if split:
            raise ValueError(f"validation_split holds out each member's own rows; with {what} pass validation_data")
        if is_sparse(X):
            Xh = check_sparse_X(X, self.n_features_in_, dtype=self.compute_dtype)
            n = Xh.shape[0]
            Yh = encode_targets(y, self.output.name, self.n_outputs_, n, dtype=self.dtype, loss=lossfn.name)
            wh = check_sample_weight(sample_weight, n, dtype=self.dtype)
        else:
            Xh, Yh, wh = host_shard(self, X, y, sample_weight, "X", allow_empty=reducer.size > 1, loss=lossfn.name)
            if Xh is None:
                return None, None, False
        base = make_batches(self.backend, Xh, Yh, wh, batch_size, self.compute_dtype, stream_data or None,
                            target_dtype=self.dtype)
        n = base.n
        order = (lambda: rng.permutation(n)) if shuffle else None
        return MemberFeedBatches(base, self.active, MemberRows), order, wh is not None

    def shuffle_generators(self, rank: int = 0) -> list[np.random.Generator]:
        """Each member's generator of ``fit``'s minibatch order on ``rank``, kept across fits.

        Member ``k``'s is the one ``Sequential(seed=seeds[k]).shuffle_generator(rank)``
        is, so a member shuffles as its own network does.

        Parameters
        ----------
        rank : int, default 0
            This process's rank in data-parallel training.

        Returns
        -------
        list of numpy.random.Generator
            One per member; also kept as ``shuffle_rngs_``.
        """
        if self.shuffle_rngs_ is None or self._shuffle_rank != rank:
            self.shuffle_rngs_ = [np.random.default_rng(None if s is None else [int(s), 1] + ([rank] if rank else []))
                                  for s in self.seeds]
            self._shuffle_rank = rank
        return self.shuffle_rngs_

    def get_config(self) -> dict[str, Any]:
        """The stack's record, from which :func:`mlpx.load` rebuilds it.

        Returns
        -------
        dict
            JSON-ready: the members' architecture and their seeds (``members``).
        """
        return {**self.architecture(), "seed": None, "members": {"seeds": list(self.seeds)}}

    @classmethod
    def from_config(cls, config: dict[str, Any], params: Any = None, backend: str | Backend = "cpu",
                    threads: int | None = None) -> "Stack":
        """Rebuild a stack from :meth:`get_config`.

        Parameters
        ----------
        config : dict
            A :meth:`get_config` record.
        params : array_like, shape (K, n_params), optional
            Host parameters; None draws each member's starting weights from its seed.
        backend : str or Backend, default "cpu"
            Where the stack computes.
        threads : int, optional
            As for :class:`Stack`.

        Returns
        -------
        Stack
            The stack, with ``params`` or freshly drawn weights.

        Raises
        ------
        ModelFileError
            A bad record, or parameters of the wrong shape or not finite.
        """
        K = member_count(config, "stack record")
        if K is None:
            raise ModelFileError("stack record: no 'members' entry (a single network's record: use mlpx.load)")
        template = Sequential.from_config({k: v for k, v in config.items() if k != "members"}, None, backend)
        if params is not None:
            params = check_params(params, (K, template.n_params), "stack record")
        return cls(template, seeds=config["members"]["seeds"], params=params, threads=threads)

    def save(self, path: Any) -> Any:
        """Write every member to one file, atomically; :func:`mlpx.load` returns the stack.

        The ``.npz`` holds the record and a (K, n_params) parameter array.
        ``member(k).save(path)`` writes member ``k`` as an ordinary model file.

        Parameters
        ----------
        path : str or path
            The file; ``.npz`` is appended when missing.

        Returns
        -------
        Path
            The path written.
        """
        return write_model_file(path, self.get_config(), {"params": self.get_params_host()})

    def __reduce__(self) -> tuple[Any, ...]:
        return (_unpickle, (self.get_config(), self.get_params_host(), self.backend.name, self.threads,
                            self.train_state()))

    def __deepcopy__(self, memo: dict[int, Any]) -> "Stack":
        return _unpickle(self.get_config(), self.get_params_host(), self.backend, self.threads, self.train_state())

    def evaluate(self, X: Any, y: Any = None, sample_weight: Any = None, loss: Any = None) -> dict[str, np.ndarray]:
        """Each member's mean loss and metric on ``(X, y)``: accuracy or R², shape (K,) each.

        Thread-safe; as :meth:`Sequential.evaluate <mlpx.model.Sequential.evaluate>`
        for every member at once.

        Parameters
        ----------
        X : array_like, shape (n, n_features_in_), a store, or a stream of batches
            The forms :meth:`fit` takes.
        y : array_like, optional
            None for a stream of ``(X, y)`` batches.
        sample_weight : array_like, shape (n,), optional
            Row weights of the means.
        loss : str or Loss, optional
            Default: the loss of the last ``fit``, else the output's canonical loss.

        Returns
        -------
        dict of str -> ndarray, shape (K,)
            ``"loss"`` and ``"accuracy"`` or ``"r2"``.
        """
        return self.evaluate_members(X, y, sample_weight, loss)

    def member_order(self, orders: Sequence[Callable[[], Any] | None]) -> Callable[[], list[Any]]:
        """The loop's ``order``: each active member's own order; frozen members none.

        Parameters
        ----------
        orders : sequence of K callables or None
            Member ``k``'s permutation for the next epoch (None: its rows in order).

        Returns
        -------
        callable
            Returns a list of K orders: each active member's permutation (or None),
            an empty array for a frozen member.
        """
        orders = list(orders)
        if len(orders) != self.n_members:
            raise ValueError(f"{len(orders)} orders for {self.n_members} members")
        empty = np.zeros(0, dtype=np.int64)

        def order() -> list[Any]:
            return [(empty if not self.active[k] else (None if o is None else o())) for k, o in enumerate(orders)]

        return order

    def __repr__(self) -> str:
        return (f"<Stack of {self.n_members} x {self.n_features_in_}->{self.n_outputs_} on {self.backend.name}, "
                f"{self.dtype}, {int(self.active.sum())} active>")
