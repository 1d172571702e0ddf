"""Callbacks: hooks that the training loop calls once per epoch.

A callback sees the model and the epoch's logs (a dict of floats: ``loss``,
``accuracy``, ``val_loss``, ...). It may set ``model.stop_training = True``.
"""

from __future__ import annotations

import math
import sys
from typing import Any

__all__ = ["Callback", "EarlyStopping", "ProgressBar", "check_callbacks"]


class Callback:
    """Base class; every hook is optional.

    Attributes
    ----------
    root_only : bool
        In data-parallel training, run on rank 0 only (printing, writing files).
    """

    root_only = False

    def on_train_begin(self, model: Any, epochs: int) -> None:
        pass

    def on_epoch_end(self, model: Any, epoch: int, logs: dict[str, float]) -> None:
        pass

    def on_train_end(self, model: Any) -> None:
        pass


class EarlyStopping(Callback):
    """Stop when a monitored value stops improving; optionally restore the best weights.

    Parameters
    ----------
    monitor : str, default "val_loss"
        A key of the epoch logs. Falls back to "loss" when there is no validation data.
    patience : int, default 5
        Epochs without improvement before stopping.
    min_delta : float, default 0
        Smallest change that counts as an improvement.
    mode : {"auto", "min", "max"}
        "auto" maximises keys containing "accuracy" or "r2", minimises the rest.
    restore_best_weights : bool, default True
        Copy the best epoch's parameters back when training ends (kept on the device,
        so this costs one buffer copy per improvement, no transfer).

    Attributes
    ----------
    best : float
    best_epoch : int
    stopped_epoch : int or None
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        patience: int = 5,
        min_delta: float = 0.0,
        mode: str = "auto",
        restore_best_weights: bool = True,
    ) -> None:
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
        if patience < 0:
            raise ValueError("patience must be >= 0")
        self.monitor, self.patience, self.min_delta = monitor, int(patience), abs(float(min_delta))
        self.mode, self.restore_best_weights = mode, restore_best_weights

    def on_train_begin(self, model: Any, epochs: int) -> None:
        self.best = math.inf
        self.best_epoch = -1
        self.wait = 0
        self.stopped_epoch: int | None = None
        self._best_params = None
        self._key: str | None = None

    def _sign(self, key: str) -> float:
        if self.mode == "max" or (self.mode == "auto" and ("accuracy" in key or "r2" in key)):
            return -1.0
        return 1.0

    def on_epoch_end(self, model: Any, epoch: int, logs: dict[str, float]) -> None:
        key = self.monitor if self.monitor in logs else "loss"
        if key not in logs:
            raise KeyError(f"EarlyStopping monitors {self.monitor!r}, not among {sorted(logs)}")
        self._key = key
        value = self._sign(key) * logs[key]
        if value < self.best - self.min_delta:
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best_weights:
                be = model.backend
                if self._best_params is None:
                    self._best_params = be.empty(model.params.shape, model.dtype)
                with model.parameter_lock.read():
                    be.copy(model.params, self._best_params)
        else:
            self.wait += 1
            if self.wait > self.patience:
                self.stopped_epoch = epoch
                model.stop_training = True

    def on_train_end(self, model: Any) -> None:
        if self.restore_best_weights and self._best_params is not None:
            model.assign_params(self._best_params)
        if self._key is not None:
            self.best = self._sign(self._key) * self.best


class ProgressBar(Callback):
    """Epoch progress on stderr: a tqdm bar when tqdm is installed, else one line an epoch."""

    root_only = True

    def __init__(self, verbose: int = 1) -> None:
        self.verbose = verbose

    def on_train_begin(self, model: Any, epochs: int) -> None:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            self._bar = None
        else:
            self._bar = tqdm(total=epochs, unit="epoch", desc=f"mlpx {model.backend.name}", file=sys.stderr)
        self._epochs = epochs

    def on_epoch_end(self, model: Any, epoch: int, logs: dict[str, float]) -> None:
        text = " ".join(f"{k}={v:.4g}" for k, v in logs.items())
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)
            self._bar.update(1)
        else:
            print(f"epoch {epoch + 1}/{self._epochs}: {text}", file=sys.stderr, flush=True)

    def on_train_end(self, model: Any) -> None:
        if self._bar is not None:
            self._bar.close()


def check_callbacks(callbacks: Any) -> list[Callback]:
    """The callbacks as a list; a ``TypeError`` naming :class:`Callback` for anything else."""
    if callbacks is None:
        return []
    if isinstance(callbacks, Callback):
        return [callbacks]
    try:
        items = list(callbacks)
    except TypeError:
        raise TypeError(f"callbacks must be a sequence of mlpx.Callback, got {callbacks!r}") from None
    for cb in items:
        if not isinstance(cb, Callback):
            raise TypeError(
                f"callbacks must be mlpx.Callback instances (subclass mlpx.Callback and override "
                f"on_epoch_end), got {cb!r}"
            )
    return items
