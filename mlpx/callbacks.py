"""Callbacks: hooks that the training loop calls once per epoch.

A callback sees the model and the epoch's logs (a dict of floats: ``loss``,
``accuracy``, ``val_loss``, ...). It may set ``model.stop_training = True``.
"""

from __future__ import annotations

import math
import sys
from typing import Any, Iterable

from mlpx.validation import check_bool, check_int, check_real

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


def check_callbacks(callbacks: Iterable[Callback] | Callback | None) -> list[Callback]:
    """The ``callbacks=`` argument of ``fit`` as a list of :class:`Callback` instances.

    Parameters
    ----------
    callbacks : iterable of Callback, a single Callback, or None

    Returns
    -------
    list of Callback
        A new list (``fit`` may append its own, e.g. the progress bar).

    Raises
    ------
    TypeError
        An element that is not a :class:`Callback` instance (a class instead of an
        instance included), or a ``callbacks`` that is not iterable.
    """
    if callbacks is None:
        return []
    if isinstance(callbacks, Callback):
        return [callbacks]
    if isinstance(callbacks, (str, bytes)) or not hasattr(callbacks, "__iter__"):
        raise TypeError(f"callbacks must be a list of mlpx.Callback instances, got {callbacks!r}")
    out = list(callbacks)
    for i, cb in enumerate(out):
        if not isinstance(cb, Callback):
            what = (
                f"the class {cb.__name__} (instantiate it: {cb.__name__}())"
                if isinstance(cb, type) and issubclass(cb, Callback)
                else f"{cb!r} of type {type(cb).__name__}"
            )
            raise TypeError(
                f"callbacks[{i}] is {what}; every callback must be an instance of mlpx.Callback "
                f"(subclass it and override on_train_begin / on_epoch_end / on_train_end)"
            )
    return out


class EarlyStopping(Callback):
    """Stop when a monitored value stops improving; optionally restore the best weights.

    Parameters
    ----------
    monitor : str, default "val_loss"
        A key of the epoch logs (``loss``, ``accuracy``, ``r2``, ``val_loss``,
        ``val_accuracy``, ``val_r2``, ... as the fit logs them). A fit without
        validation data logs no ``val_*`` key: ``val_<name>`` then watches
        ``<name>`` (so the default watches ``loss``). Any other key that is not
        in the logs raises ``ValueError`` at the end of the first epoch, naming
        the keys there are: a misspelt key is never silently replaced.
    patience : int, default 5
        Epochs without improvement before stopping.
    min_delta : float >= 0, default 0
        Smallest change that counts as an improvement (a negative value is refused,
        not silently made positive).
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

    Raises
    ------
    ValueError
        From ``fit``, at the first epoch's end: ``monitor`` is not among the logged
        keys (the message lists them).
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        patience: int = 5,
        min_delta: float = 0.0,
        mode: str = "auto",
        restore_best_weights: bool = True,
    ) -> None:
        if not isinstance(mode, str) or mode not in ("auto", "min", "max"):
            raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
        if not isinstance(monitor, str):
            raise TypeError(f"monitor must be the name of a logged value, got {monitor!r}")
        self.monitor = monitor
        self.patience = check_int("patience", patience, low=0)
        self.min_delta = check_real("min_delta", min_delta, 0.0)
        self.mode = mode
        self.restore_best_weights = check_bool("restore_best_weights", restore_best_weights)

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

    def _monitored(self, logs: dict[str, float]) -> str:
        """The key of ``logs`` that ``monitor`` names (see the class docstring)."""
        key = self.monitor
        if key not in logs and key.startswith("val_") and not any(k.startswith("val_") for k in logs):
            key = key.removeprefix("val_")  # no validation data: its training counterpart
        if key not in logs:
            raise ValueError(
                f"EarlyStopping(monitor={self.monitor!r}): the fit logs no such value; "
                f"available keys: {', '.join(sorted(logs))}"
            )
        return key

    def on_epoch_end(self, model: Any, epoch: int, logs: dict[str, float]) -> None:
        key = self._key if self._key is not None and self._key in logs else self._monitored(logs)
        self._key = key
        value = self._sign(key) * logs[key]
        if value < self.best - self.min_delta:
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best_weights:
                be = model.backend
                if self._best_params is None:
                    self._best_params = be.empty(model.params.shape, model.dtype)
                with model.parameter_lock.read():
                    self._best_params = be.copy(model.params, self._best_params)
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
        if isinstance(verbose, bool):
            verbose = int(verbose)
        self.verbose = check_int("verbose", verbose, low=0)

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
