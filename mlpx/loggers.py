"""Experiment tracking: callbacks that write a run's logs to a CSV file, TensorBoard or MLflow.

* :class:`CSVLogger`: one row per epoch in a CSV file (standard library only).
* :class:`TensorBoardLogger`: scalars in a TensorBoard event file, through
  `tensorboardX <https://github.com/lanpa/tensorboardX>`_ or, where tensorboardX
  is missing and PyTorch and TensorBoard are installed,
  ``torch.utils.tensorboard`` (``pip install "mlpx[tensorboard]"``).
* :class:`MLflowLogger`: parameters and metrics of an MLflow run, through
  ``mlflow.tracking.MlflowClient`` (``pip install "mlpx[mlflow]"``: the
  ``mlflow-skinny`` client, no server).

The libraries are imported when a logger is created, never by ``import mlpx``; a
missing one raises ``ImportError`` naming the extra to install. All loggers run on
rank 0 only in data-parallel training (``root_only``), where the logs are global.

Epoch ``e`` (0-based, counted over all ``fit`` calls of the model, so a run resumed
with ``fit(..., resume_from=...)`` continues the numbering) is logged at step ``e``.
A :class:`~mlpx.stacked.Stack`'s per-member values (arrays of shape (K,)) become
one metric per member, ``"<key>/<k>"`` (``"<key>[<k>]"`` in a CSV header).
With ``batch_every=n``, the TensorBoard and MLflow loggers also log every n-th
step's ``batch_loss`` (and ``batch_accuracy``) at a step counted over the batches
the logger has seen; without it they add no per-step cost.
"""

from __future__ import annotations

import csv
import importlib
import os
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from mlpx.callbacks import Callback
from mlpx.validation import check_bool, check_int

__all__ = ["CSVLogger", "MLflowLogger", "TensorBoardLogger"]


def _scalars(logs: dict[str, Any], member: str = "{key}/{k}") -> Iterator[tuple[str, float]]:
    """``(name, value)`` pairs of a logs dict: scalars as they are, arrays one per member."""
    for key, value in logs.items():
        array = np.asarray(value, dtype=np.float64)
        if array.ndim == 0:
            yield key, float(array)
        else:
            for k, v in enumerate(array.ravel()):
                yield member.format(key=key, k=k), float(v)


def _batch_every(value: Any) -> int | None:
    return None if value is None else check_int("batch_every", value, low=1)


def _import(module: str, extra: str, what: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{what} needs {module.split('.')[0]}: pip install \"mlpx[{extra}]\" ({exc})") from None


class CSVLogger(Callback):
    """Append each epoch's logs to a CSV file, as Keras' ``CSVLogger``.

    The first column is ``epoch`` (0-based, counted over all ``fit`` calls), then
    the log keys in the order of the first epoch. Each row is written and flushed
    at the end of its epoch, so a crash loses nothing already logged.

    Parameters
    ----------
    path : str or path
        The CSV file (its folder is created).
    separator : str, default ","
        A single character.
    append : bool, default False
        Add to an existing file (keeping its header: a resumed run continues the
        same table) instead of starting a new one.

    Raises
    ------
    ValueError
        A separator that is not one character; with ``append``, an existing file
        whose header lacks a key the logs hold.

    Examples
    --------
    >>> import numpy as np, mlpx
    >>> X = np.random.default_rng(0).normal(size=(100, 4)); y = (X[:, 0] > 0).astype(int)
    >>> model = mlpx.MLP([4, 8, 2], seed=0)
    >>> _ = model.fit(X, y, epochs=3, callbacks=[mlpx.CSVLogger("run.csv")])  # doctest: +SKIP
    >>> import pandas as pd; pd.read_csv("run.csv").columns.tolist()        # doctest: +SKIP
    ['epoch', 'loss', 'accuracy']
    """

    root_only = True

    def __init__(self, path: str | os.PathLike[str], separator: str = ",", append: bool = False) -> None:
        if not isinstance(separator, str) or len(separator) != 1:
            raise ValueError(f"separator must be one character, got {separator!r}")
        self.path = Path(path)
        self.separator = separator
        self.append = check_bool("append", append)
        self._fields: list[str] | None = None

    def on_train_begin(self, model: Any, epochs: int) -> None:
        self._fields = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.append and self.path.exists() and self.path.stat().st_size:
            with open(self.path, newline="") as fh:
                self._fields = next(csv.reader(fh, delimiter=self.separator), None)
        elif not self.append or not self.path.exists():
            self.path.write_text("")

    def on_epoch_end(self, model: Any, epoch: int, logs: dict[str, float]) -> None:
        row = {"epoch": str(epoch), **{k: repr(v) for k, v in _scalars(logs, "{key}[{k}]")}}
        new = self._fields is None
        if self._fields is None:
            self._fields = list(row)
        fields = self._fields
        missing = set(row) - set(fields)
        if missing:
            raise ValueError(f"CSVLogger: {self.path} has the columns {fields}, not {sorted(missing)}")
        with open(self.path, "a", newline="") as fh:
            writer = csv.DictWriter(fh, fields, delimiter=self.separator, restval="")
            if new:
                writer.writeheader()
            writer.writerow(row)


class TensorBoardLogger(Callback):
    """Write the logs as TensorBoard scalars (``tensorboard --logdir <log_dir>`` shows them).

    Parameters
    ----------
    log_dir : str or path
        Where the event file is written (created).
    batch_every : int, optional
        Also log ``batch_loss`` (and ``batch_accuracy``) every ``batch_every`` steps.
        None (default): epochs only, with no per-step cost.
    backend : {"auto", "tensorboardX", "torch"}, default "auto"
        The writer: tensorboardX if installed, else ``torch.utils.tensorboard``.

    Attributes
    ----------
    writer : SummaryWriter
        The library's writer (open between ``on_train_begin`` and ``on_train_end``).

    Raises
    ------
    ImportError
        Neither writer is installed (``pip install "mlpx[tensorboard]"``).

    Examples
    --------
    >>> tb = mlpx.TensorBoardLogger("runs/mlp", batch_every=10)              # doctest: +SKIP
    >>> model.fit(X, y, epochs=20, validation_split=0.1, callbacks=[tb])      # doctest: +SKIP
    """

    root_only = True

    def __init__(self, log_dir: str | os.PathLike[str], batch_every: int | None = None,
                 backend: str = "auto") -> None:
        if backend not in ("auto", "tensorboardX", "torch"):
            raise ValueError(f"backend must be 'auto', 'tensorboardX' or 'torch', got {backend!r}")
        self.log_dir = Path(log_dir)
        self.batch_every = _batch_every(batch_every)
        self._writer_class = self._find_writer(backend)
        self.writer: Any = None
        self._batches = 0

    @staticmethod
    def _find_writer(backend: str) -> Any:
        if backend in ("auto", "tensorboardX"):
            try:
                return importlib.import_module("tensorboardX").SummaryWriter
            except ImportError:
                if backend == "tensorboardX":
                    return _import("tensorboardX", "tensorboard", "TensorBoardLogger").SummaryWriter
        return _import("torch.utils.tensorboard", "tensorboard", "TensorBoardLogger").SummaryWriter

    def batch_hooks(self) -> tuple[bool, bool]:
        return False, self.batch_every is not None

    def on_train_begin(self, model: Any, epochs: int) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.writer = self._writer_class(str(self.log_dir))

    def on_batch_end(self, model: Any, step: int, logs: dict[str, Any]) -> None:
        self._batches += 1
        if self.batch_every is not None and self._batches % self.batch_every == 0:
            for key in ("loss", "accuracy"):
                if key in logs:
                    for name, value in _scalars({f"batch_{key}": logs[key]}):
                        self.writer.add_scalar(name, value, self._batches)

    def on_epoch_end(self, model: Any, epoch: int, logs: dict[str, float]) -> None:
        for name, value in _scalars(logs):
            self.writer.add_scalar(name, value, epoch)
        self.writer.flush()

    def on_train_end(self, model: Any) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class MLflowLogger(Callback):
    """Log parameters and per-epoch metrics to an MLflow run.

    Uses ``mlflow.tracking.MlflowClient`` directly (not MLflow's global active
    run), so several loggers, threads or models do not interfere.

    Parameters
    ----------
    tracking_uri : str, optional
        E.g. ``"file:/path/mlruns"``, ``"sqlite:///mlflow.db"``,
        ``"http://host:5000"``; None: MLflow's default (``MLFLOW_TRACKING_URI``).
    experiment : str, default "mlpx"
        Experiment name (created if missing); ignored when ``run_id`` is given.
    run_id : str, optional
        Log into this existing run (to continue its curves after a resume) and
        leave its status alone; None creates a run at ``on_train_begin`` and marks
        it FINISHED at ``on_train_end``.
    run_name : str, optional
        The name of the run created (MLflow's default: a generated one).
    params : dict, optional
        Extra parameters to log with the model's (``n_params``, ``dtype``,
        ``layers``, ``optimizer`` and its settings).
    batch_every : int, optional
        Also log ``batch_loss`` (and ``batch_accuracy``) every ``batch_every`` steps.

    Attributes
    ----------
    client : MlflowClient
    run_id : str or None
        The run logged into (set at ``on_train_begin``).

    Raises
    ------
    ImportError
        MLflow is not installed (``pip install "mlpx[mlflow]"``).

    Examples
    --------
    >>> ml = mlpx.MLflowLogger(tracking_uri="sqlite:///mlflow.db", experiment="digits")  # doctest: +SKIP
    >>> model.fit(X, y, epochs=20, callbacks=[ml])                                       # doctest: +SKIP
    >>> ml.client.get_metric_history(ml.run_id, "loss")                                  # doctest: +SKIP
    """

    root_only = True

    def __init__(self, tracking_uri: str | None = None, experiment: str = "mlpx", run_id: str | None = None,
                 run_name: str | None = None, params: dict[str, Any] | None = None,
                 batch_every: int | None = None) -> None:
        tracking = _import("mlflow.tracking", "mlflow", "MLflowLogger")
        self._entities = importlib.import_module("mlflow.entities")
        if params is not None and not isinstance(params, dict):
            raise TypeError(f"params must be a dict, got {type(params).__name__}")
        self.client = tracking.MlflowClient(tracking_uri=tracking_uri)
        self.experiment = experiment
        self.run_id = run_id
        self._own_run = run_id is None
        self.run_name = run_name
        self.params = dict(params or {})
        self.batch_every = _batch_every(batch_every)
        self._batches = 0

    def batch_hooks(self) -> tuple[bool, bool]:
        return False, self.batch_every is not None

    def on_train_begin(self, model: Any, epochs: int) -> None:
        if self.run_id is None:
            found = self.client.get_experiment_by_name(self.experiment)
            exp_id = found.experiment_id if found is not None else self.client.create_experiment(self.experiment)
            self.run_id = self.client.create_run(exp_id, run_name=self.run_name).info.run_id
            self._log_params({**self._model_params(model), **self.params})

    @staticmethod
    def _model_params(model: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if hasattr(model, "get_config"):
            config = model.get_config()
            out["dtype"] = config.get("dtype")
            out["layers"] = " ".join(
                f"{l['type']}({l['n_in']}->{l['n_out']},{l['activation']})" if l["type"] == "Dense"
                else l["type"] for l in config.get("layers", []))
        if hasattr(model, "n_params"):
            out["n_params"] = model.n_params
        opt = getattr(model, "optimizer_", None)
        if opt is not None:
            out["optimizer"] = type(opt).__name__
            out.update({f"optimizer.{k}": v for k, v in opt.get_config().items()})
        return out

    def _log_params(self, params: dict[str, Any]) -> None:
        entries = [self._entities.Param(str(k), str(v)[:6000]) for k, v in params.items()]
        if entries:
            self.client.log_batch(self.run_id, params=entries)

    def _log(self, values: Iterator[tuple[str, float]], step: int) -> None:
        now = int(time.time() * 1000)
        metrics = [self._entities.Metric(k, v, now, step) for k, v in values]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def on_batch_end(self, model: Any, step: int, logs: dict[str, Any]) -> None:
        self._batches += 1
        if self.batch_every is not None and self._batches % self.batch_every == 0:
            self._log(_scalars({f"batch_{k}": logs[k] for k in ("loss", "accuracy") if k in logs}),
                      self._batches)

    def on_epoch_end(self, model: Any, epoch: int, logs: dict[str, float]) -> None:
        self._log(_scalars(logs), epoch)

    def on_train_end(self, model: Any) -> None:
        if self._own_run and self.run_id is not None:
            self.client.set_terminated(self.run_id, "FINISHED")
