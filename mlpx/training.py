"""The training loop: shuffled minibatches, cut on the device.

Data moves to the backend once per ``fit``. Each epoch draws a permutation on the
host (seeded, so runs repeat), moves those n indices to the device in one transfer,
and gathers every minibatch on the device into a preallocated buffer. A training set
too large for the GPU is streamed instead, through pinned double buffers
(:mod:`mlpx.streaming`). The loss is accumulated on the device and read back once
per epoch, so a GPU step never waits for the host.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from mlpx.callbacks import Callback, ProgressBar
from mlpx.losses import Loss
from mlpx.metrics import correct_count, r2_score
from mlpx.optimizers import Optimizer, get_optimizer
from mlpx.streaming import batch_denominator, make_batches
from mlpx.validation import check_sample_weight, encode_targets

__all__ = ["History", "TrainingDivergedError", "fit"]

Array = Any


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the model holds the last finite weights.

    Attributes
    ----------
    epoch : int
        The (0-based) epoch in which the loss stopped being finite.
    """

    def __init__(self, epoch: int, lr: float) -> None:
        self.epoch = epoch
        super().__init__(
            f"training diverged in epoch {epoch + 1}: the loss is not finite. The model keeps "
            f"the weights from the start of that epoch. Try a lower learning rate "
            f"(now {lr:g}), standardised inputs, or an L2 penalty."
        )


class History:
    """Per-epoch logs of one ``fit`` call.

    Attributes
    ----------
    history : dict of str -> list of float
        "loss" and, where they apply, "accuracy", "val_loss", "val_accuracy", "val_r2".
    epochs : int
        Epochs actually run (fewer than asked when a callback stopped training).
    """

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {}
        self.epochs = 0

    def append(self, logs: dict[str, float]) -> None:
        for k, v in logs.items():
            self.history.setdefault(k, []).append(v)
        self.epochs += 1

    def __getitem__(self, key: str) -> list[float]:
        return self.history[key]

    def __repr__(self) -> str:
        last = {k: round(v[-1], 5) for k, v in self.history.items()}
        return f"History(epochs={self.epochs}, last={last})"


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def fit(
    model: Any,
    X: Any,
    y: Any,
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
) -> History:
    """Train ``model`` on ``(X, y)`` with minibatch gradient descent.

    Parameters
    ----------
    model : Sequential
    X : array_like, shape (n_samples, n_features)
    y : array_like
        Class labels (n,) or one-hot (n, k) for softmax; 0/1 (n,) or (n, k) for
        logistic; values (n,) or (n, k) for identity/exp outputs.
    epochs : int
    batch_size : int
        Clipped to n_samples.
    optimizer : str or Optimizer, default "adam"
        "sgd", "adam", "adamw", "rmsprop" or an instance (its state carries over
        between ``fit`` calls when the same instance is passed again).
    loss : str or Loss, optional
        Must match the output activation; defaults to its paired loss.
    validation_data : (X_val, y_val) or (X_val, y_val, w_val), optional
    validation_split : float in [0, 1)
        Hold out this fraction (a seeded random subset) when ``validation_data``
        is not given.
    shuffle : bool
        Reshuffle the training samples every epoch.
    callbacks : sequence of Callback
        e.g. :class:`~mlpx.callbacks.EarlyStopping`.
    verbose : int
        0 silent; 1 a progress bar (tqdm if installed) with the epoch's logs.
    sample_weight : array_like, shape (n_samples,), optional
    l2 : float
        L2 penalty, scaled as scikit-learn's ``alpha``: ``½ l2 Σ‖W‖² / n``.
    lr : float, optional
        Learning rate when ``optimizer`` is given by name.
    comm : mpi4py communicator or "nccl", optional
        Train data-parallel across ranks (see :mod:`mlpx.distributed`); each rank
        passes its own shard of the data.
    stream_data : bool, optional
        Keep the training set in host memory and stream minibatches to the device
        through pinned, double-buffered copies (:mod:`mlpx.streaming`). ``None``
        (default) streams only on a GPU whose free memory the data would more than
        half fill; ``False`` moves it to the device once.

    Returns
    -------
    History

    Raises
    ------
    TrainingDivergedError
        The loss became non-finite; the weights from the start of that epoch are kept.
    """
    if comm is not None:
        if stream_data:
            raise ValueError("stream_data is not supported with comm= (each rank's shard is moved once)")
        from mlpx.distributed import fit_distributed

        return fit_distributed(
            model, X, y, comm=comm, epochs=epochs, batch_size=batch_size, optimizer=optimizer,
            loss=loss, validation_data=validation_data, validation_split=validation_split,
            shuffle=shuffle, callbacks=callbacks, verbose=verbose, sample_weight=sample_weight,
            l2=l2, lr=lr,
        )
    be = model.backend
    epochs = _check_positive_int("epochs", epochs)
    batch_size = _check_positive_int("batch_size", batch_size)
    if not 0.0 <= float(validation_split) < 1.0:
        raise ValueError(f"validation_split must be in [0, 1), got {validation_split!r}")
    if l2 < 0 or not math.isfinite(l2):
        raise ValueError(f"l2 must be a finite number >= 0, got {l2!r}")
    lossfn = model.resolve_loss(loss)
    opt = get_optimizer(optimizer, **({} if lr is None else {"lr": lr}))
    out = model.output.name

    X = model._check_X(X)
    Y = encode_targets(y, out, model.n_outputs_, X.shape[0])
    w = check_sample_weight(sample_weight, X.shape[0])
    rng = _shuffle_rng(model)

    val = None
    if validation_data is not None:
        if len(validation_data) not in (2, 3):
            raise ValueError("validation_data must be (X_val, y_val) or (X_val, y_val, w_val)")
        Xv = model._check_X(validation_data[0], name="X_val")
        Yv = encode_targets(validation_data[1], out, model.n_outputs_, Xv.shape[0])
        wv = check_sample_weight(validation_data[2], Xv.shape[0]) if len(validation_data) == 3 else None
        val = (Xv, Yv, wv)
    elif validation_split:
        n_val = int(round(X.shape[0] * validation_split))
        if n_val < 1 or n_val >= X.shape[0]:
            raise ValueError(f"validation_split={validation_split} leaves no training or validation samples")
        order = rng.permutation(X.shape[0])
        vi, ti = order[:n_val], order[n_val:]
        X = be.to_numpy(X) if not isinstance(X, np.ndarray) else X
        val = (X[vi], Y[vi], None if w is None else w[vi])
        X, Y, w = X[ti], Y[ti], None if w is None else w[ti]

    n = X.shape[0]
    batch_size = min(batch_size, n)
    history = History()
    model.history = history
    model.stop_training = False
    callbacks = list(callbacks)
    if verbose:
        callbacks.append(ProgressBar(verbose))

    # Overflow inside a step is not an error here: a non-finite epoch loss is caught
    # below and turned into TrainingDivergedError (with the last finite weights kept).
    with (
        model.compute_context(batch_size),
        np.errstate(over="ignore", invalid="ignore", divide="ignore"),
    ):
        # One transfer of the training set (minibatches are cut on the device), or,
        # for a set too large for the device, minibatches streamed from the host.
        batches = make_batches(
            be, X, Y, w, batch_size, model.compute_dtype, stream_data, target_dtype=model.dtype
        )
        vald = None
        if val is not None:
            vald = (
                be.asarray(val[0], dtype=model.compute_dtype),
                be.asarray(val[1], dtype=model.dtype),
                None if val[2] is None else be.asarray(val[2], dtype=model.dtype),
                val[1],
                val[2],
            )
        opt.bind(be, model.params, model.grads, model.n_weights)
        model.optimizer_ = opt  # callbacks (mlpx.distributed.ModelCheckpoint) save its state
        snapshot = be.empty(model.params.shape, model.dtype)
        samples_seen = getattr(model, "samples_seen_", 0)
        epoch0 = getattr(model, "epochs_done_", 0)
        track_acc = out in ("softmax", "logistic")

        for cb in callbacks:
            cb.on_train_begin(model, epochs)
        for epoch in range(epochs):
            opt.set_epoch(epoch0 + epoch, samples_seen)
            be.copy(model.params, snapshot)
            perm = rng.permutation(n) if shuffle else None
            total: Any = 0.0
            hits: Any = 0.0
            denom_sum = 0.0
            for Xb, Yb, wb, a, b in batches.epoch(perm):
                denom = batch_denominator(w, perm, a, b)
                value = model._forward_backward(Xb, Yb, lossfn, wb, denom, l2)
                if track_acc:
                    # The last layer's output (logits) is still intact after backward.
                    hits = hits + be.run(correct_count, model._logits, Yb, out)
                model._apply_update(opt)
                total = total + value * denom
                denom_sum += denom
            samples_seen += n
            epoch_loss = be.to_float(total) / denom_sum
            # The epoch's last step can overflow the weights after a finite loss: check
            # them too (inf·0 is NaN), so the weights kept are always finite ones.
            if math.isfinite(epoch_loss) and not math.isfinite(be.to_float(be.sum(model.params * 0.0))):
                epoch_loss = math.nan
            if not math.isfinite(epoch_loss):
                be.copy(snapshot, model.params)
                for cb in callbacks:
                    if isinstance(cb, ProgressBar):
                        cb.on_train_end(model)
                raise TrainingDivergedError(epoch0 + epoch, opt.lr)
            logs = {"loss": epoch_loss}
            if track_acc:
                logs["accuracy"] = be.to_float(hits) / n
            if vald is not None:
                logs.update(_validation_logs(model, lossfn, vald))
            history.append(logs)
            # Counters current before callbacks, so a checkpoint written now resumes exactly.
            model.samples_seen_, model.epochs_done_ = samples_seen, epoch0 + history.epochs
            for cb in callbacks:
                cb.on_epoch_end(model, epoch0 + epoch, logs)
            if model.stop_training:
                break
        model.samples_seen_ = samples_seen
        model.epochs_done_ = epoch0 + history.epochs
        model.optimizer_ = opt
        for cb in callbacks:
            cb.on_train_end(model)
    return history


def _shuffle_rng(model: Any) -> np.random.Generator:
    rng = getattr(model, "_shuffle_rng", None)
    if rng is None:
        seed = None if model.seed is None else [model.seed, 1]
        rng = model._shuffle_rng = np.random.default_rng(seed)
    return rng


def _validation_logs(model: Any, lossfn: Loss, vald: tuple[Any, ...]) -> dict[str, float]:
    """Validation loss and metric, computed on the device-resident validation set."""
    be = model.backend
    Xv, Yv, wv, Yv_host, wv_host = vald
    n = Xv.shape[0]
    denom = float(n) if wv_host is None else float(wv_host.sum())
    total: Any = 0.0
    hits: Any = 0.0
    preds = []
    out = model.output.name
    chunk = 8192
    for a in range(0, n, chunk):
        b = min(a + chunk, n)
        Z = model._logits_master(model.forward(Xv[a:b, :]))
        wb = None if wv is None else wv[a:b]
        total = total + lossfn(be, Z, Yv[a:b, :], None, wb, denom)
        if out in ("softmax", "logistic"):
            if wv is None:
                hits = hits + be.run(correct_count, Z, Yv[a:b, :], out)
            else:
                preds.append(be.to_numpy(Z).copy())
        else:
            preds.append(be.to_numpy(model.output.forward(be, Z, out=Z)).copy())
    logs = {"val_loss": be.to_float(total)}
    if out in ("softmax", "logistic"):
        if wv is None:
            logs["val_accuracy"] = be.to_float(hits) / n
        else:
            Z = np.concatenate(preds)
            if out == "softmax":
                match = Z.argmax(1) == Yv_host.argmax(1)
            else:
                match = ((Z > 0) == (Yv_host > 0.5)).all(1)
            logs["val_accuracy"] = float(np.average(match, weights=wv_host))
    else:
        logs["val_r2"] = r2_score(Yv_host, np.concatenate(preds), wv_host)
    return logs
