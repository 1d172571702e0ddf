"""Model files and training checkpoints: a portable ``.npz`` with a JSON record.

A model file holds two entries: ``config`` (JSON text: format version, layers,
dtype) and ``params`` (the flat parameter buffer as a host array). Nothing in it is
pickled code, so loading an untrusted file runs nothing. A model trained on the
GPU loads on the CPU (or any backend) and predicts the same. ``Sequential.save``
writes one and :func:`mlpx.load` (:mod:`mlpx.model`) builds a model from what
:func:`read_model_file` returns.

A checkpoint is a model file plus the training state: the optimizer's
``state_dict()`` (its arrays as ``opt_<name>`` entries), the epoch and sample
counters and the fp16 loss scale, so :func:`load_checkpoint` resumes exactly.
:class:`ModelCheckpoint` writes one every few epochs (on rank 0 only in
data-parallel training).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from mlpx.callbacks import Callback
from mlpx.distributed import make_reducer
from mlpx.optimizers import Optimizer

__all__ = [
    "FORMAT_VERSION",
    "ModelCheckpoint",
    "load_checkpoint",
    "read_model_file",
    "save_checkpoint",
    "write_model_file",
]

FORMAT = "mlpx"
FORMAT_VERSION = 1


def write_model_file(
    path: str | os.PathLike[str], config: dict[str, Any], arrays: dict[str, np.ndarray]
) -> Path:
    """Atomically write an mlpx ``.npz``: ``config`` as JSON beside host ``arrays``.

    Used by :func:`save` and by training checkpoints, which add optimizer state.
    """
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    record = {"format": FORMAT, "version": FORMAT_VERSION, **config}
    folder = path.parent if str(path.parent) else Path(".")
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, config=np.array(json.dumps(record)), **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def read_model_file(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The JSON record and the host arrays of an mlpx file (model or checkpoint).

    Returns
    -------
    record : dict
        ``format``, ``version``, ``layers``, ``dtype``, ... (and ``train_state`` in a
        checkpoint).
    arrays : dict of str -> ndarray
        ``params`` (shape (n_params,)) and a checkpoint's ``opt_<name>`` buffers.

    Raises
    ------
    ValueError
        Not an mlpx file, or a newer format version than this mlpx reads.
    """
    with np.load(path, allow_pickle=False) as data:
        if "config" not in data or "params" not in data:
            raise ValueError(f"{path} is not an mlpx model file (missing config/params)")
        record = json.loads(str(data["config"]))
        arrays = {k: np.array(data[k]) for k in data.files if k != "config"}
    if record.get("format") != FORMAT:
        raise ValueError(f"{path} is not an mlpx model file")
    if int(record.get("version", 0)) > FORMAT_VERSION:
        raise ValueError(
            f"{path} was written by a newer mlpx (format {record['version']}); upgrade mlpx to read it"
        )
    return record, arrays


# ------------------------------------------------------------------ checkpoints
def save_checkpoint(path: str | os.PathLike[str], model: Any, optimizer: Optimizer | None = None) -> Path:
    """Write model, optimizer state and progress to ``path`` atomically.

    The file is an mlpx model file (``mlpx.load`` reads it) with the training state
    added (``model.train_state()``; ``optimizer`` replaces the model's own), so
    :func:`load_checkpoint` resumes training exactly.
    """
    state = model.train_state()
    opt = optimizer if optimizer is not None else model.optimizer_
    arrays: dict[str, np.ndarray] = {"params": model.get_flat_params()}
    state.pop("optimizer", None)
    if opt is not None:
        saved = opt.state_dict()
        for name, value in saved.pop("state").items():
            arrays[f"opt_{name}"] = np.asarray(value)
        state["optimizer"] = saved
    return write_model_file(path, {**model.get_config(), "train_state": state}, arrays)


def load_checkpoint(
    path: str | os.PathLike[str], model: Any, optimizer: Optimizer | None = None, comm: Any = None
) -> Optimizer | None:
    """Restore a checkpoint written by :func:`save_checkpoint` into ``model``.

    With ``comm``, rank 0 reads the file and broadcasts it (other ranks need not
    see the file system); every rank checks it against its own model, and a
    mismatch (architecture, dtype, format, version) raises on every rank. Sets the
    parameters, ``epochs_done_``, ``samples_seen_`` and the loss scale, and returns
    the optimizer (``optimizer``, or a new one of the saved kind) bound to the model
    with its saved state, ready to pass to ``fit(..., optimizer=...)``; None when
    the checkpoint holds no optimizer.
    """
    reducer = make_reducer(comm, model.backend)
    data = None
    error: BaseException | None = None
    if reducer.is_root:
        try:
            data = read_model_file(path)
        except Exception as exc:
            error = exc
    reducer.check_errors(error, f"reading checkpoint {path}")
    record, arrays = reducer.bcast(data)

    def restore() -> Optimizer | None:
        mine = model.get_config()
        for key in ("layers", "dtype"):
            if record.get(key) != mine[key]:
                raise ValueError(
                    f"checkpoint {path} holds another model: its {key} {record.get(key)!r} differ "
                    f"from this model's {mine[key]!r}"
                )
        state = dict(record.get("train_state", {}))
        saved = state.pop("optimizer", None)
        model.set_flat_params(arrays["params"])
        model.load_train_state(state)
        if saved is None:
            return optimizer
        saved = {**saved, "state": {k[4:]: v for k, v in arrays.items() if k.startswith("opt_")}}
        opt = optimizer if optimizer is not None else Optimizer.from_state_dict(saved)
        if optimizer is not None:
            optimizer.load_state_dict(saved)
        be = model.backend
        with be.activated():
            opt.bind(be, model.params, model.grads, model.n_weights)
        return opt

    error, result = None, None
    try:
        result = restore()
    except Exception as exc:
        if reducer.size == 1:
            raise
        error = exc
    reducer.check_errors(error, f"loading checkpoint {path}")
    return result


class ModelCheckpoint(Callback):
    """Save a resumable checkpoint every ``every`` epochs (rank 0 only in distributed fits).

    Parameters
    ----------
    path : str or path
        Overwritten each time (atomically); read back with :func:`load_checkpoint`.
    every : int, default 1
    """

    root_only = True

    def __init__(self, path: str | os.PathLike[str], every: int = 1) -> None:
        if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
            raise ValueError(f"every must be a positive integer, got {every!r}")
        self.path = path
        self.every = int(every)
        self.writes = 0

    def on_epoch_end(self, model: Any, epoch: int, logs: dict[str, float]) -> None:
        if (epoch + 1) % self.every == 0:
            save_checkpoint(self.path, model)
            self.writes += 1
