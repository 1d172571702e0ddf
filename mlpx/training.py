"""The training loop: one epoch function for every way mlpx trains.

Single-process training is the one-rank case of data-parallel training: :func:`train`
runs on a reducer (:mod:`mlpx.distributed`), the identity one for a single process.
``Sequential.fit`` (with or without ``comm=``) and the scikit-learn estimators' SGD
and Adam solvers all run this loop; what differs between them is parameters and
callbacks (how the epoch loss is averaged, whether divergence raises, the stopping
rules), never a copy of the loop.

Per epoch:

1. the rate policy was set by the optimizer at the end of the last epoch
   (:meth:`~mlpx.optimizers.Optimizer.iteration_ends`);
2. each rank draws its minibatch order on the host; the ranks agree on every
   step's global denominator (rows, or Σ sample weights, of all ranks' batches) in
   one small all-reduce, so a step needs no other host round trip;
3. every step is :meth:`~mlpx.model.Sequential.train_step`: forward and backward
   on the rank's minibatch, one all-reduce, L2 penalty, update. Ranks whose rows
   ran out join with nothing. The loss is summed on the device;
4. at the end: the loss is read back once, failures and divergence are agreed,
   the held-out set is scored (:func:`mlpx.metrics.holdout_scores`), callbacks run
   and a stop asked on any rank stops every rank.

Data moves to the backend once per ``fit`` (or is streamed, :mod:`mlpx.data`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from mlpx import streams
from mlpx.callbacks import BatchHooks, Callback, ProgressBar, check_callbacks
from mlpx.data import (Batch, ResidentBatches, SparseBatches, StreamedBatches, is_sparse, make_batches,
                       should_stream, to_host)
from mlpx.member_batches import MemberBatches
from mlpx.distributed import Reducer, is_agreed, make_reducer, mark_agreed
from mlpx.locking import exclusive_training
from mlpx.losses import Loss
from mlpx.metrics import PREDICT_CHUNK, Chunk, holdout_scores, iter_chunks
from mlpx.optimizers import Optimizer, get_optimizer
from mlpx.precision import all_finite
from mlpx.saving import resume
from mlpx.validation import check_dtype_range, check_real, check_sample_weight, encode_targets

__all__ = ["History", "Holdout", "TrainingDivergedError", "fit", "train"]

Array = Any


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the model holds the last finite weights.

    The weights, the optimizer's state (moments, step count, rate) and the fp16
    loss scale are those from the start of the diverging epoch, so a retry with the
    same optimizer at a lower rate trains as a fresh optimizer would from them.
    A stack whose every member diverged raises it from ``predict`` too.

    Parameters
    ----------
    epoch : int
        The (0-based) epoch in which the loss stopped being finite.
    lr : float or array_like
        The rate(s) in force.
    what : str
        What diverged (named in the message).

    Attributes
    ----------
    epoch : int
        The (0-based) epoch in which the loss stopped being finite.
    """

    def __init__(self, epoch: int, lr: Any, what: str = "") -> None:
        self.epoch = epoch
        # A stack of networks has one rate per member.
        rate = f"{lr:g}" if np.ndim(lr) == 0 else "[" + ", ".join(f"{v:g}" for v in np.ravel(lr)) + "]"
        if what:
            msg = (f"training of {what} diverged by epoch {epoch + 1}: no finite model is left to predict with. "
                   f"Train again with a lower learning rate (was {rate}), standardised inputs, or an L2 penalty.")
        else:
            msg = (f"training diverged in epoch {epoch + 1}: the loss is not finite. The model keeps "
                   f"the weights (and the optimizer its state) from the start of that epoch. Try a "
                   f"lower learning rate (now {rate}), standardised inputs, or an L2 penalty.")
        super().__init__(msg)


class History:
    """Per-epoch logs of one ``fit`` call.

    Attributes
    ----------
    history : dict of str -> list of float
        "loss" and, where they apply, "accuracy", "val_loss", "val_accuracy", "val_r2";
        for a stack each entry is an array of shape (K,), one value per member.
    epochs : int
        Epochs actually run (fewer than asked when a callback stopped training).
    """

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {}
        self.epochs = 0

    def append(self, logs: dict[str, float]) -> None:
        """Record one epoch's logs.

        Parameters
        ----------
        logs : dict of str -> float
            The epoch's values (a stack's one array per key), each appended to its list.
        """
        for k, v in logs.items():
            self.history.setdefault(k, []).append(v)
        self.epochs += 1

    def __getitem__(self, key: str) -> list[float]:
        return self.history[key]

    def __repr__(self) -> str:
        last = {k: np.round(np.asarray(v[-1], dtype=np.float64), 5).tolist() for k, v in self.history.items()}
        return f"History(epochs={self.epochs}, last={last})"


@dataclass
class Holdout:
    """A held-out set on the device that every member is scored on after every epoch.

    Parameters
    ----------
    X : array, shape (n, f), optional
        The rows on the backend (None on a rank without rows).
    Y : array, shape (n, k), optional
        Their encoded targets.
    w : array, shape (n,), optional
        Their sample weights.
    dense : callable, optional
        Turns a chunk of X into dense device rows (sparse X).
    """

    X: Any = None
    Y: Any = None
    w: Any = None
    dense: Callable[[Any], Any] | None = None

    def chunks(self) -> Iterable[Chunk]:
        """The set in chunks of at most ``PREDICT_CHUNK`` rows.

        Yields
        ------
        (X, Y, w, None)
            One chunk's rows on the device (dense), targets and weights (or None).
        """
        if self.X is None:
            return
        n = self.X.shape[0]
        for a, b in iter_chunks(n, PREDICT_CHUNK):
            X = self.X[a:b] if self.dense is not None else self.X[a:b, :]
            yield (self.dense(X) if self.dense is not None else X, self.Y[a:b, :],
                   None if self.w is None else self.w[a:b], None)

    def scores(self, model: Any, reducer: Reducer, loss: Any) -> dict[str, Any]:
        """The scores of ``model`` on this set (:func:`~mlpx.metrics.holdout_scores`; collective).

        Parameters
        ----------
        model : Network
            The model being trained.
        reducer : Reducer
            Sums the ranks' parts.
        loss : OutputLoss
            The loss to report.

        Returns
        -------
        dict of str -> ndarray, shape (K,)
            ``"loss"`` and ``"accuracy"`` or ``"r2"`` per member.
        """
        return holdout_scores(model, self.chunks, reducer, loss)


@dataclass
class _Epoch:
    """What the steps of one epoch add up, per member (device sums where they live on
    the device)."""

    total: Any = 0.0
    weight: Any = 0.0
    hits: Any = 0.0
    pending: BaseException | None = None


@exclusive_training
def train(
    model: Any,
    source: Any,
    *,
    optimizer: Optimizer,
    loss: Any,
    reducer: Reducer,
    epochs: int,
    broadcast: bool = True,
    l2: Any = 0.0,
    order: Callable[[], Any] | None = None,
    callbacks: Sequence[Callback] = (),
    holdout: Any = None,
    history: History | None = None,
    count_correct: bool = False,
    loss_weights: str = "denom",
    loss_scale: float = 1.0,
    divergence: str = "raise",
) -> History:
    """Run ``epochs`` epochs of minibatch training: the one loop of mlpx (collective).

    Parameters
    ----------
    model : Network
        A :class:`~mlpx.network.Network` of K members (a Sequential is K = 1), built
        on the reducer's backend; ``optimizer`` is bound to it here. Every step's
        loss, the epoch's logs, the samples seen and the penalty are per-member
        vectors; the model presents the logs to callbacks and the history
        (``model.present``: floats for a single network). The model may run a
        process's whole epoch in one call (:meth:`~mlpx.network_step.NetworkStep.train_epoch`),
        which returns every step's :class:`~mlpx.network_step.StepResult`, or None to go
        step by step.
    source : batch source or None
        This rank's minibatches (:mod:`mlpx.data`); None for a rank without rows. Its
        ``step_rows`` and ``denominators`` give one column per member.
    optimizer : Optimizer
        Steps every member (bound to the model here).
    loss : OutputLoss
        From ``model.resolve_loss``.
    reducer : Reducer
        :class:`~mlpx.distributed.LocalReducer` for one process.
    epochs : int
        Epochs to run (callbacks may stop earlier).
    broadcast : bool
        Start from rank 0's weights (False: the caller has broadcast them).
    l2 : float or array of shape (K,)
        L2 penalty (scikit-learn's ``alpha`` scaling), per member.
    order : callable, optional
        Returns this rank's order for the next epoch (None: contiguous).
    callbacks : sequence of Callback
        Run on every rank, except those marked ``root_only`` (rank 0 only).
    holdout : Holdout, optional
        Scored after every epoch: ``val_loss`` and ``val_accuracy`` / ``val_r2``.
    history : History, optional
        The history to append to (default: a new one).
    count_correct : bool
        Log the training ``accuracy`` (softmax / logistic outputs).
    loss_weights : {"denom", "rows"}
        Average the steps' losses over the epoch weighted by each step's
        denominator (Σ w: the weighted mean loss) or by its rows (scikit-learn's
        ``loss_curve_``).
    loss_scale : float
        Factor on the data term of the logged loss (scikit-learn reports the
        squared error averaged over outputs; its gradient is not).
    divergence : {"raise", "freeze", "continue"}
        What a non-finite epoch loss (or weights) of a member does: "raise" restores
        the start of the epoch and raises :class:`TrainingDivergedError` on every
        rank (a single network's default); "freeze" marks the member in
        ``model.diverged_`` and stops it while the others go on (searches);
        "continue" goes on, as scikit-learn does.

    Returns
    -------
    History
        ``history`` with the epochs run appended (also ``model.history``).
    """
    if divergence not in ("raise", "freeze", "continue"):
        raise ValueError(f"divergence must be 'raise', 'freeze' or 'continue', got {divergence!r}")
    be = model.backend
    history = history if history is not None else History()
    try:
        K = model.n_members
        l2v = np.broadcast_to(np.asarray(l2, dtype=np.float64), (K,)).copy()
        return _train(model, source, optimizer, loss, reducer, int(epochs), broadcast, l2v, order,
                      list(callbacks), holdout, history, count_correct, loss_weights, loss_scale, divergence)
    except BaseException as exc:
        if reducer.size > 1 and not is_agreed(exc):
            reducer.abort(exc)  # escaped the failure agreement: end every rank now
        raise
    finally:
        be.synchronize()


def _train(model: Any, source: Any, optimizer: Optimizer, loss: Any, reducer: Reducer, epochs: int,
           broadcast: bool, l2: np.ndarray, order: Callable[[], Any] | None, callbacks: list[Callback],
           holdout: Any, history: History, count_correct: bool, loss_weights: str,
           loss_scale: float, divergence: str) -> History:
    be = model.backend
    K = model.n_members
    if loss_weights not in ("denom", "rows"):
        raise ValueError(f"loss_weights must be 'denom' or 'rows', got {loss_weights!r}")
    root = reducer.is_root
    callbacks = [cb for cb in callbacks if root or not getattr(cb, "root_only", False)]
    # Steps per epoch: the most over ranks (every rank runs them all).
    local_steps = 0 if source is None else source.n_batches
    n_steps = reducer.allreduce_max(local_steps)
    penalised = bool(l2.any())

    reducer.agreed("binding the optimizer", optimizer.bind, be, model.params, model.grads, model.n_weights,
                   owner=model)
    model.optimizer_ = optimizer
    model.loss_ = loss
    model.history = history
    model.stop_training = False
    model.decorrelate_dropout(reducer.rank)
    if broadcast and reducer.size > 1:
        with model.parameter_lock.write():
            reducer.broadcast_params(be.xp.reshape(model.flat, (-1,)))  # rank 0's weights everywhere
    epoch0 = model.epochs_done_
    reducer.agreed("on_train_begin", _each, callbacks, "on_train_begin", model, epochs)
    hooks = BatchHooks.of(callbacks, distributed=reducer.size > 1)  # None: no per-step call

    for e in range(epochs):
        epoch = epoch0 + e
        where = f"epoch {epoch + 1}"
        snapshot = _snapshot(model, optimizer) if divergence == "raise" else None
        state = _Epoch()
        perm = reducer.agreed(f"{where}: ordering the shard", _order, order, source)
        # Every step's rows and denominator (Σ w) of every member over all ranks, in
        # one all-reduce: arrays of shape (n_steps, K).
        step_rows, D = _epoch_sizes(source, perm, n_steps, reducer, K)
        n_global = np.rint(step_rows.sum(axis=0)).astype(np.int64)
        weights = D if loss_weights == "denom" else step_rows
        weights_dev = be.asarray(weights, dtype=model.dtype)  # once per epoch
        learns = np.any(D > 0, axis=1)
        # The model may run the epoch's steps in one call: the same results as its
        # steps one by one.
        done = None if source is None or reducer.collective else model.train_epoch(
            source, perm, D, loss=loss, optimizer=optimizer, l2=l2, count_correct=count_correct)
        batches = iter(source.epoch(perm)) if source is not None and done is None else iter(())
        # Step by step: the epoch's scalars go to the device once, not once per step.
        heads = None if done is not None else model.epoch_heads(D, l2, optimizer)
        for j in range(n_steps):
            batch: Batch | None = None
            if state.pending is None and done is None:
                try:
                    batch = next(batches, None)
                except BaseException as exc:
                    if reducer.size == 1:
                        raise
                    state.pending = exc
            if not learns[j]:
                continue  # no rows (or only zero weights) on any rank: nothing to learn
            if hooks is not None:
                state.pending = hooks.begin(model, j, epoch, step_rows[j], state.pending)
            res = done[j] if done is not None else model.step_members(
                None if batch is None else batch.X, None if batch is None else batch.Y,
                None if batch is None else batch.w, denom=D[j], loss=loss, optimizer=optimizer,
                l2=l2, reducer=reducer, count_correct=count_correct, pending=state.pending,
                where=f"{where}, step {j + 1}", head=None if heads is None else heads[j, :, :],
            )
            state.pending = res.error
            data = res.loss if loss_scale == 1.0 else res.loss * loss_scale
            term = data + res.penalty if penalised else data
            state.total = state.total + term * weights_dev[j, :]
            state.weight = state.weight + weights[j]
            if res.correct is not None:
                state.hits = state.hits + res.correct
            if hooks is not None:
                state.pending = hooks.end(model, j, epoch, step_rows[j], term, res.correct, state.pending)
        close = getattr(batches, "close", None)
        if close is not None:
            close()  # an epoch left early (a failure) must release a streamed source
        logs = _epoch_end(model, reducer, state, where, n_global, count_correct, holdout, loss)
        model.member_samples_ = model.member_samples_ + n_global
        bad = ~np.isfinite(np.asarray(logs["loss"], dtype=np.float64)) & model.active
        if divergence != "continue":
            bad |= ~model.finite_members() & model.active
        if divergence == "raise" and reducer.agree_any(bool(bad.any())):
            _restore(model, optimizer, snapshot)
            model.member_samples_ = model.member_samples_ - n_global
            reducer.agreed("on_train_end", _each, [c for c in callbacks if isinstance(c, ProgressBar)],
                           "on_train_end", model)
            raise mark_agreed(TrainingDivergedError(epoch, optimizer.lr))
        if divergence == "freeze":
            for k in np.flatnonzero(bad):
                model.diverged_[k] = True
                model.freeze(k)
        shown = model.present(logs)
        history.append(shown)
        # Counters current before callbacks, so a checkpoint written now resumes exactly.
        model.epochs_done_ = epoch0 + history.epochs
        reducer.agreed(f"{where}: callbacks", _each, callbacks, "on_epoch_end", model, epoch, shown)
        optimizer.iteration_ends(model.epochs_done_, model.member_samples_)
        model.stop_training = reducer.agree_any(model.stop_training or not model.active.any())
        if model.stop_training:
            break
    reducer.agreed("on_train_end", _each, callbacks, "on_train_end", model)
    return history


def _each(callbacks: list[Callback], hook: str, *args: Any) -> None:
    for cb in callbacks:
        getattr(cb, hook)(*args)


def _order(order: Callable[[], Any] | None, source: Any) -> Any:
    if order is None or source is None:
        return None
    return order()


def _epoch_sizes(source: Any, perm: Any, n_steps: int, reducer: Reducer, K: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows and denominators of every step of the epoch per member, summed over ranks.

    Returns
    -------
    rows, denoms : ndarray, shape (n_steps, K)
    """
    if source is None:
        rows = denoms = np.zeros((n_steps, K))
    else:
        rows = np.asarray(source.step_rows(perm), float).reshape(-1, K)
        denoms = np.asarray(source.denominators(perm), float).reshape(-1, K)
        if rows.shape[0] < n_steps:  # a rank with fewer batches joins the last steps empty
            pad = ((0, n_steps - rows.shape[0]), (0, 0))
            rows, denoms = np.pad(rows, pad), np.pad(denoms, pad)
    if reducer.size == 1:
        return rows, denoms
    both = np.asarray(reducer.allreduce_sum(np.concatenate([rows.ravel(), denoms.ravel()]).tolist()))
    return both[: n_steps * K].reshape(n_steps, K), both[n_steps * K :].reshape(n_steps, K)


def _host(be: Any, value: Any, K: int) -> np.ndarray:
    """A loop sum as a float64 host vector of the K members."""
    if isinstance(value, float):
        return np.full(K, value)
    host: np.ndarray = np.asarray(be.to_numpy(value), dtype=np.float64).reshape(K)
    return host


def _ratio(total: Any, weight: Any) -> np.ndarray:
    w = np.asarray(weight, dtype=np.float64)
    t = np.broadcast_to(np.asarray(total, dtype=np.float64), w.shape)
    out = np.full(w.shape, math.nan)
    np.divide(t, w, out=out, where=w > 0)
    return out


def _epoch_end(model: Any, reducer: Reducer, state: _Epoch, where: str, n_global: np.ndarray,
               count_correct: bool, holdout: Any, loss: Any) -> dict[str, np.ndarray]:
    """The epoch's logs, one value per member, identical on every rank (collective)."""
    be = model.backend
    K = model.n_members

    def local() -> list[Any]:
        if state.pending is not None:
            raise state.pending
        return [_host(be, state.total, K), _host(be, state.hits, K)]

    total, hits = reducer.agreed(where, local)
    logs = {"loss": _ratio(total, np.broadcast_to(state.weight, (K,)))}
    if count_correct:
        hits = np.asarray(reducer.allreduce_sum(list(hits))) if reducer.size > 1 else hits
        logs["accuracy"] = _ratio(hits, n_global)
    if holdout is not None:
        with model.parameter_lock.read():
            scores = holdout.scores(model, reducer, loss)
        logs["val_loss"] = scores["loss"]
        logs.update({f"val_{k}": v for k, v in scores.items() if k in ("accuracy", "r2")})
    # Rank 0's numbers decide for everyone: no rank can stop (or log) alone.
    agreed: dict[str, np.ndarray] = reducer.bcast(logs)
    return agreed


def _snapshot(model: Any, optimizer: Optimizer) -> dict[str, Any]:
    """Device copies of the weights and optimizer state; the loss scale (rollback)."""
    be = model.backend
    scaler = model.precision_.scaler
    return {
        "params": be.copy(model.flat, be.empty(model.flat.shape, model.dtype)),
        "optimizer": optimizer.state_dict(to_host=False),
        "scaler": None if scaler is None else scaler.get_state(),
    }


def _restore(model: Any, optimizer: Optimizer, snapshot: dict[str, Any] | None) -> None:
    if snapshot is None:
        return
    model.assign_flat(snapshot["params"])
    optimizer.load_state_dict(snapshot["optimizer"])
    if snapshot["scaler"] is not None:
        model.precision_.scaler.set_state(snapshot["scaler"])


def loss_and_grads(model: Any, X: Any, y: Any, sample_weight: Any, loss: Any,
                   l2: float) -> tuple[float, dict[str, np.ndarray]]:
    """:meth:`Sequential.loss_and_grads <mlpx.model.Sequential.loss_and_grads>`: one batch's
    loss (the L2 term included) and host copies of every parameter's gradient."""
    be = model.backend
    l2 = check_real("l2", l2, 0.0)
    X = model.check_input(X)
    lossfn = model.resolve_loss(loss)
    Y = encode_targets(y, model.output.name, model.n_outputs_, X.shape[0], dtype=model.dtype, loss=lossfn.name)
    w = check_sample_weight(sample_weight, X.shape[0], dtype=model.dtype)
    with model.compute_context(X.shape[0]):
        Xd = be.asarray(X, dtype=model.compute_dtype)
        Yd = be.asarray(Y, dtype=model.dtype)
        wd = None if w is None else be.asarray(w, dtype=model.dtype)
        denom = float(X.shape[0]) if w is None else float(w.sum())
        scaler = model.precision_.scaler

        def once() -> Any:
            step = model.train_step(Xd, Yd, wd, denom=denom, loss=lossfn, optimizer=None, l2=l2)
            return step.loss + step.penalty

        with np.errstate(over="ignore", invalid="ignore"):
            value = once()
            # fp16: lower the loss scale until the scaled gradients fit float16
            # (here a caller wants the gradients, so retrying beats skipping).
            while scaler is not None and scaler.scale > 1.0 and not bool(be.run(all_finite, model.flat_grads)):
                scaler.update(found_inf=True)
                value = once()
        grads = {k: np.array(be.to_numpy(v), copy=True) for k, v in model.gradients().items()}
        return be.to_float(value), grads


# ------------------------------------------------------------------- fit
def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


@dataclass
class _Setup:
    """One rank's checked inputs for ``fit``."""

    source: Any
    holdout: Holdout | streams.StreamHoldout | None
    optimizer: Optimizer
    loss: Any
    epochs: int
    batch_size: int
    l2: float
    order: Callable[[], np.ndarray | None] | None
    callbacks: list[Callback]


@exclusive_training
def fit(
    model: Any,
    X: Any,
    y: Any = None,
    epochs: int = 10,
    batch_size: int = 32,
    optimizer: str | Optimizer = "adam",
    loss: str | Loss | None = None,
    validation_data: tuple[Any, ...] | None = None,
    validation_split: float = 0.0,
    shuffle: bool = True,
    callbacks: Sequence[Callback] = (),
    verbose: int = 0,
    sample_weight: Any = None,
    l2: float = 0.0,
    lr: float | None = None,
    comm: Any = None,
    stream_data: bool | None = None,
    resume_from: Any = None,
) -> History:
    """Train ``model`` on ``(X, y)``: see :meth:`mlpx.model.Sequential.fit`.

    With ``comm`` every rank passes its own shard (``X`` may have no rows), and:
    ``batch_size`` is per rank (the effective batch is the sum over ranks);
    ``validation_split`` holds out that fraction of each rank's shard; logs are
    global and identical on every rank, and so are callback decisions; only rank 0
    shows progress and runs callbacks marked ``root_only``. Every rank must pass the
    same settings (architecture, dtype, precision, loss, optimizer and its
    settings, epochs, batch size, l2, shuffle, validation, callbacks): a mismatch
    raises ``ValueError`` on every rank.

    Parameters
    ----------
    model : Sequential
        The network to train (stacks train with :meth:`mlpx.stacked.Stack.fit`).
    X : array_like, shape (n_samples, n_features), a store, or a stream of batches
        This rank's training rows, in the forms ``Sequential.fit`` takes.
    y : array_like, optional
        Their targets (None for a stream of ``(X, y)`` batches).
    epochs : int
        Epochs to run (with ``resume_from``: the run's total).
    batch_size : int
        Rows per minibatch, per rank.
    optimizer : str or Optimizer, default "adam"
        A name, or an instance whose state carries over between calls.
    loss : str or Loss, optional
        Defaults to the output's canonical loss.
    validation_data : tuple or stream, optional
        ``(X_val, y_val)`` or ``(X_val, y_val, w_val)``, or the forms X takes.
    validation_split : float in [0, 1)
        Without ``validation_data``: hold out this fraction of this rank's rows.
    shuffle : bool or BlockShuffle
        Reshuffle the rows every epoch.
    callbacks : sequence of Callback
        Hooks run during training.
    verbose : int
        0 silent; 1 a progress bar (rank 0).
    sample_weight : array_like, shape (n_samples,), optional
        Row weights of the loss.
    l2 : float
        L2 penalty, scaled as scikit-learn's ``alpha``.
    lr : float, optional
        Learning rate when ``optimizer`` is a name.
    comm : mpi4py communicator, "mpi" or "nccl", optional
        Train data-parallel across ranks (:mod:`mlpx.distributed`).
    stream_data : bool, optional
        Stream the minibatches from host memory (None: only where the data would
        fill more than half of a GPU's free memory).
    resume_from : str or path, optional
        A checkpoint of this run to continue (:func:`mlpx.saving.resume`).

    Returns
    -------
    History
        The logs of the epochs run.

    Raises
    ------
    TrainingDivergedError
        The loss became non-finite; the state from the start of that epoch is kept.
    """
    be = model.backend
    reducer = make_reducer(comm, be)
    if reducer.backend.name != be.name:
        raise ValueError(f"the reducer works on {reducer.backend.name}, the model on {be.name}")
    if resume_from is not None:
        optimizer, epochs = resume(resume_from, model, optimizer, epochs, lr=lr,
                                   validation_split=validation_split, comm=reducer)
        if epochs < 1:
            return History()  # the checkpoint has done every epoch asked for
    setup: _Setup = reducer.agreed(
        "setup", _prepare, model, reducer, X, y, epochs, batch_size, optimizer, loss,
        validation_data, validation_split, shuffle, callbacks, sample_weight, l2, lr, stream_data,
    )
    fingerprint = {
        "architecture": model.get_config()["layers"],
        "dtype": model.dtype,
        "precision": model.precision_.name,
        "loss": setup.loss.name,
        "optimizer": [type(setup.optimizer).__name__, setup.optimizer.get_config()],
        "optimizer_state": [setup.optimizer.t, setup.optimizer.lr],
        "epochs": setup.epochs,
        "batch_size": int(batch_size),
        "l2": setup.l2,
        "shuffle": bool(shuffle),
        "validation": [validation_data is not None, float(validation_split)],
        "callbacks": sorted(type(cb).__name__ for cb in setup.callbacks if not getattr(cb, "root_only", False)),
        "epochs_done": model.epochs_done_,
        "sample_weight": sample_weight is not None,
    }
    reducer.agree_settings(fingerprint)
    if reducer.size > 1:
        n_local = 0 if setup.source is None else setup.source.n
        if reducer.allreduce_max(n_local) == 0:
            raise mark_agreed(ValueError("no rank holds any training rows"))
        w_local = 0.0 if setup.source is None or setup.source.w_host is None else float(setup.source.w_host.sum())
        if sample_weight is not None and reducer.allreduce_sum([w_local])[0] <= 0:
            raise mark_agreed(ValueError("sample_weight sums to zero over all ranks: nothing to train on"))
    callbacks_run = list(setup.callbacks)
    if verbose and reducer.is_root:
        callbacks_run.append(ProgressBar(verbose))
    with (
        model.compute_context(setup.batch_size),
        # Overflow inside a step is not an error here: a non-finite epoch loss is
        # turned into TrainingDivergedError (with the last finite state kept).
        np.errstate(over="ignore", invalid="ignore", divide="ignore"),
    ):
        return train(
            model, setup.source, optimizer=setup.optimizer, loss=setup.loss, reducer=reducer,
            epochs=setup.epochs, l2=setup.l2, order=setup.order, callbacks=callbacks_run,
            holdout=setup.holdout, count_correct=model.output.name in ("softmax", "logistic"),
        )


def _prepare(model: Any, reducer: Reducer, X: Any, y: Any, epochs: Any, batch_size: Any,
             optimizer: Any, loss: Any, validation_data: Any, validation_split: Any, shuffle: bool,
             callbacks: Sequence[Callback], sample_weight: Any, l2: Any, lr: Any,
             stream_data: bool | None) -> _Setup:
    """Check this rank's arguments and shard; move it to the device (raises on bad input)."""
    be = model.backend
    epochs = _check_positive_int("epochs", epochs)
    batch_size = _check_positive_int("batch_size", batch_size)
    if not 0.0 <= float(validation_split) < 1.0:
        raise ValueError(f"validation_split must be in [0, 1), got {validation_split!r}")
    l2 = check_real("l2", l2, 0.0)
    callbacks = check_callbacks(callbacks)
    lossfn = model.resolve_loss(loss)
    opt = get_optimizer(optimizer, **({} if lr is None else {"lr": lr}))
    rng = model.shuffle_generator(reducer.rank)
    # Stores, lazy arrays and streams of batches (mlpx.streams); None for in-memory arrays.
    holdout: Holdout | streams.StreamHoldout | None = streams.holdout(model, reducer, validation_data, lossfn.name)
    fed = streams.training_source(model, reducer, X, y, sample_weight, batch_size, shuffle, validation_split,
                                  stream_data, rng, lossfn.name)
    shard = (None, None, None) if fed else host_shard(model, X, y, sample_weight, "X", allow_empty=reducer.size > 1,
                                                        loss=lossfn.name)

    if holdout is None and validation_data is not None:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
            raise ValueError("validation_data must be (X_val, y_val) or (X_val, y_val, w_val)")
        wv = validation_data[2] if len(validation_data) == 3 else None
        Xv, Yv, wv = host_shard(model, validation_data[0], validation_data[1], wv, "X_val",
                            allow_empty=reducer.size > 1, loss=lossfn.name)
        holdout = _holdout(model, Xv, Yv, wv)
    elif holdout is None and validation_split:
        Xh, Yh, wh = shard
        n = 0 if Xh is None else Xh.shape[0]
        n_val = int(round(n * float(validation_split)))
        if reducer.size == 1 and (n_val < 1 or n_val >= n):
            raise ValueError(f"validation_split={validation_split} leaves no training or validation samples")
        if n_val >= n and n:
            raise ValueError(f"validation_split={validation_split} leaves no training samples on rank {reducer.rank}")
        if n_val and Yh is not None:  # (n_val > 0: this rank has rows, so targets too)
            idx = rng.permutation(n)
            vi, ti = idx[:n_val], idx[n_val:]
            Xh = Xh if isinstance(Xh, np.ndarray) else be.to_numpy(Xh)
            holdout = _holdout(model, Xh[vi], Yh[vi], None if wh is None else wh[vi])
            shard = (Xh[ti], Yh[ti], None if wh is None else wh[ti])
        else:
            holdout = Holdout()
    if fed:
        return _Setup(fed[0], holdout, opt, lossfn, epochs, batch_size, l2, fed[1], callbacks)
    Xh, Yh, wh = shard
    source: ResidentBatches | SparseBatches | StreamedBatches | MemberBatches | None = None
    if Xh is not None:
        if is_sparse(Xh) or stream_data or (stream_data is None and should_stream(
                be, Xh, Yh, wh, model.compute_dtype, model.dtype)):
            source = make_batches(be, Xh, Yh, wh, batch_size, model.compute_dtype, stream_data,
                                  target_dtype=model.dtype)
        else:  # resident: the network's own batch source, a single member over every row
            source = MemberBatches(be, Xh, Yh, wh, [np.arange(Xh.shape[0])], batch_size, model.compute_dtype,
                                   target_dtype=model.dtype)
    order = None
    if shuffle and source is not None:
        n = source.n
        order = lambda: rng.permutation(n)  # noqa: E731
    return _Setup(source, holdout, opt, lossfn, epochs, batch_size, l2, order, callbacks)


def host_shard(model: Any, X: Any, y: Any, sample_weight: Any, name: str, allow_empty: bool,
               loss: str) -> tuple[Any, np.ndarray | None, np.ndarray | None]:
    """Host ``(X, Y, w)`` of this rank's data (X may stay on the device); Nones if empty."""
    shape = getattr(X, "shape", None)
    if allow_empty and shape is not None and len(shape) == 2 and shape[0] == 0:
        if shape[1] != model.n_features_in_:
            raise ValueError(f"{name} has {shape[1]} features, but the model expects {model.n_features_in_}")
        return None, None, None
    X = model.check_input(X, name=name)
    Y = encode_targets(y, model.output.name, model.n_outputs_, X.shape[0], dtype=model.dtype, loss=loss)
    if allow_empty:
        # A shard's weights may sum to zero (other ranks carry the weight).
        w = None
        if sample_weight is not None:
            w = np.asarray(to_host(sample_weight), dtype=np.float64)
            if w.shape != (X.shape[0],):
                raise ValueError(f"sample_weight must have shape ({X.shape[0]},), got {w.shape}")
            if not (np.isfinite(w).all() and (w >= 0).all()):
                raise ValueError("sample_weight must be finite and non-negative")
            check_dtype_range(w, model.dtype, "sample_weight")
    else:
        w = check_sample_weight(to_host(sample_weight), X.shape[0], dtype=model.dtype)
    return X, Y, w


def _holdout(model: Any, X: Any, Y: np.ndarray | None, w: np.ndarray | None) -> Holdout:
    """A held-out set moved to the device once (an empty one for a rank without rows)."""
    if X is None:
        return Holdout()
    be = model.backend
    return Holdout(be.asarray(X, dtype=model.compute_dtype), be.asarray(Y, dtype=model.dtype),
                   None if w is None else be.asarray(w, dtype=model.dtype))
