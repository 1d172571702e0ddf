"""Callbacks: hooks that the training loop calls at the start and end of training,
after every epoch and, where a callback asks for them, around every minibatch step.

A callback sees the model and the logs (a dict of floats: ``loss``, ``accuracy``,
``val_loss``, ...; for a :class:`~mlpx.stacked.Stack` each value is an array of
shape (K,), one per member). It may set ``model.stop_training = True`` to end
``fit`` after the current epoch.

Batch hooks (:meth:`Callback.on_batch_begin`, :meth:`Callback.on_batch_end`) cost
nothing when no callback overrides them: the loop then makes no per-step call at
all (:class:`BatchHooks`). When a model runs a whole epoch in one compiled call
(``train_epoch``: a stack on the CPU), the epoch's steps have all run before any
hook fires; the hooks then fire for each step in order, from the step results,
before ``on_epoch_end``. Either way each step's hooks see that step's loss.
"""

from __future__ import annotations

import math
import sys
from typing import Any, Iterable

import numpy as np

from mlpx.validation import check_bool, check_int, check_real

__all__ = ["BatchHooks", "Callback", "EarlyStopping", "ProgressBar", "check_callbacks", "check_mode", "monitor_sign"]


class Callback:
    """Base class; every hook is optional.

    Attributes
    ----------
    root_only : bool
        In data-parallel training, run on rank 0 only (printing, writing files).
    """

    root_only = False

    def on_train_begin(self, model: Any, epochs: int) -> None:
        """Called once before the first epoch.

        Parameters
        ----------
        model : Sequential or Stack
            The model being trained.
        epochs : int
            The number of epochs ``fit`` was asked for.
        """

    def on_batch_begin(self, model: Any, step: int, logs: dict[str, Any]) -> None:
        """Called before minibatch step ``step``.

        See the module docstring for when it fires on a compiled epoch.

        Parameters
        ----------
        model : Sequential or Stack
            The model being trained.
        step : int
            The step, from 0 within the epoch.
        logs : dict
            ``{"epoch": the epoch from 0, "size": the step's rows over all ranks}``
            (a stack's sizes one per member).
        """

    def on_batch_end(self, model: Any, step: int, logs: dict[str, Any]) -> None:
        """Called after minibatch step ``step``.

        Reading the logs costs one device synchronisation per step on a GPU.

        Parameters
        ----------
        model : Sequential or Stack
            The model being trained.
        step : int
            The step, from 0 within the epoch.
        logs : dict
            ``"epoch"`` and ``"size"`` as for :meth:`on_batch_begin`, ``"loss"``
            (the step's data term, plus the L2 term when ``l2`` is set; over all
            ranks with ``comm``) and, for classifiers, ``"accuracy"`` (the fraction
            of its rows predicted right; not logged with ``comm``).
        """

    def on_epoch_end(self, model: Any, epoch: int, logs: dict[str, float]) -> None:
        """Called after every epoch; set ``model.stop_training = True`` to stop.

        Parameters
        ----------
        model : Sequential or Stack
            The model being trained.
        epoch : int
            The epoch that ended, from 0, counted over all ``fit`` calls.
        logs : dict of str to float
            ``"loss"``, ``"accuracy"`` (classifiers) and their ``"val_"`` forms with
            validation data.
        """

    def on_train_end(self, model: Any) -> None:
        """Called once when training ends, also after a stop or a divergence.

        Parameters
        ----------
        model : Sequential or Stack
            The model being trained.
        """

    def batch_hooks(self) -> tuple[bool, bool]:
        """Whether the loop calls this callback's batch hooks.

        By default, the hooks its class overrides. A callback whose batch hooks are
        optional returns False for those it does not need, so that ``fit`` makes no
        per-step call for it.

        Returns
        -------
        (bool, bool)
            Whether to call ``on_batch_begin`` and whether to call ``on_batch_end``.
        """
        cls = type(self)
        return (cls.on_batch_begin is not Callback.on_batch_begin,
                cls.on_batch_end is not Callback.on_batch_end)


class BatchHooks:
    """The batch hooks of a ``fit``'s callbacks, as the training loop calls them.

    Built with :meth:`of`, which returns None when no callback wants batch hooks,
    so the loop pays one ``is None`` test per step and nothing else.

    Parameters
    ----------
    begin, end : list of Callback
        The callbacks whose ``on_batch_begin`` / ``on_batch_end`` are called.
    distributed : bool
        With several ranks, an exception in a hook is handed back to the loop
        (which makes every rank raise it at the next collective) instead of
        escaping on one rank.
    """

    def __init__(self, begin: list[Callback], end: list[Callback], distributed: bool) -> None:
        self._begin, self._end, self._distributed = begin, end, distributed

    @classmethod
    def of(cls, callbacks: Iterable[Callback], distributed: bool = False) -> "BatchHooks | None":
        """The batch hooks of ``callbacks``.

        Parameters
        ----------
        callbacks : iterable of Callback
            A ``fit``'s callbacks (:meth:`Callback.batch_hooks` says which hooks each wants).
        distributed : bool, default False
            Whether several ranks train (see the class).

        Returns
        -------
        BatchHooks or None
            None when no callback wants batch hooks.
        """
        begin, end = [], []
        for cb in callbacks:
            wants_begin, wants_end = cb.batch_hooks()
            if wants_begin:
                begin.append(cb)
            if wants_end:
                end.append(cb)
        return cls(begin, end, distributed) if begin or end else None

    def begin(self, model: Any, step: int, epoch: int, size: Any,
              pending: BaseException | None) -> BaseException | None:
        """Call the callbacks' ``on_batch_begin``.

        Parameters
        ----------
        model : Network
            The model being trained.
        step : int
            The step, from 0 within the epoch.
        epoch : int
            The epoch, from 0 over all ``fit`` calls.
        size : array_like, shape (K,)
            The step's rows of each member over all ranks.
        pending : BaseException or None
            A failure not yet reported; while there is one, no hook is called.

        Returns
        -------
        BaseException or None
            The failure to hand on: ``pending``, or one a hook raised (distributed
            training; otherwise it propagates).
        """
        if pending is not None or not self._begin:
            return pending
        logs = {"epoch": epoch, "size": _rows(model, size)}
        return self._call(self._begin, "on_batch_begin", model, step, logs)

    def end(self, model: Any, step: int, epoch: int, size: Any, loss: Any, correct: Any,
            pending: BaseException | None) -> BaseException | None:
        """Call the callbacks' ``on_batch_end`` with the step's results (device values are read here).

        Parameters
        ----------
        model : Network
            The model being trained.
        step : int
            The step, from 0 within the epoch.
        epoch : int
            The epoch, from 0 over all ``fit`` calls.
        size : array_like, shape (K,)
            The step's rows of each member over all ranks.
        loss : array, shape (K,)
            The step's loss per member, on the device.
        correct : array, shape (K,), or None
            Rows predicted right per member (None: not counted).
        pending : BaseException or None
            A failure not yet reported; while there is one, no hook is called.

        Returns
        -------
        BaseException or None
            The failure to hand on, as :meth:`begin` returns it.
        """
        if pending is not None or not self._end:
            return pending
        rows = _rows(model, size)
        values = {"loss": _host(model.backend, loss)}
        if correct is not None and not self._distributed:  # a rank counts its own rows only
            values["accuracy"] = _host(model.backend, correct) / np.maximum(np.asarray(size, np.float64), 1.0)
        logs: dict[str, Any] = {"epoch": epoch, "size": rows, **model.present(values)}
        return self._call(self._end, "on_batch_end", model, step, logs)

    def _call(self, callbacks: list[Callback], hook: str, model: Any, step: int,
              logs: dict[str, Any]) -> BaseException | None:
        try:
            for cb in callbacks:
                getattr(cb, hook)(model, step, logs)
        except BaseException as exc:
            if not self._distributed:
                raise
            return exc
        return None


def _rows(model: Any, size: Any) -> Any:
    """A step's rows as the model presents its logs: an int for a single network, one
    int per member (int64 array) for a stack."""
    rows = np.rint(np.asarray(size, dtype=np.float64)).astype(np.int64).reshape(-1)
    shown = model.present({"size": rows})["size"]
    return int(shown) if np.ndim(shown) == 0 else np.asarray(shown, dtype=np.int64)


def _host(be: Any, value: Any) -> np.ndarray:
    """A step's device value (one per member) as a float64 host array."""
    return np.asarray(be.to_numpy(value) if not isinstance(value, (int, float)) else value,
                      dtype=np.float64).reshape(-1)


def check_callbacks(callbacks: Iterable[Callback] | Callback | None) -> list[Callback]:
    """The ``callbacks=`` argument of ``fit`` as a list of :class:`Callback` instances.

    Parameters
    ----------
    callbacks : iterable of Callback, a single Callback, or None
        What was passed to ``fit``.

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
                f"(subclass it and override on_train_begin / on_batch_begin / on_batch_end / "
                f"on_epoch_end / on_train_end)"
            )
    return out


def check_mode(mode: Any) -> str:
    """A monitor's ``mode``, checked.

    Parameters
    ----------
    mode : str
        One of "auto", "min", "max".

    Returns
    -------
    str
        ``mode``.

    Raises
    ------
    ValueError
        Any other value.
    """
    if not isinstance(mode, str) or mode not in ("auto", "min", "max"):
        raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
    return mode


def monitor_sign(key: str, mode: str) -> float:
    """Which way a monitored value improves.

    Parameters
    ----------
    key : str
        The logged value's name (``"val_loss"``, ``"val_accuracy"``...).
    mode : {"auto", "min", "max"}
        "auto" maximises keys containing "accuracy" or "r2" and minimises the rest.

    Returns
    -------
    float
        +1.0 where a lower value is better, -1.0 where a higher one is.
    """
    if mode == "max" or (mode == "auto" and ("accuracy" in key or "r2" in key)):
        return -1.0
    return 1.0


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
        check_mode(mode)
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
        return monitor_sign(key, self.mode)

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
    """Epoch progress on stderr: a tqdm bar when tqdm is installed, else one line an epoch.

    Parameters
    ----------
    verbose : int, default 1
        0 shows nothing; 1 or more shows the progress.
    """

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
