"""Save and load models: a portable ``.npz`` with a JSON architecture record.

The file holds two entries: ``config`` (JSON text: format version, layers, dtype)
and ``params`` (the flat parameter buffer as a host array). Nothing in it is pickled
code, so loading an untrusted file runs nothing. A model trained on the GPU loads
on the CPU (or any backend) and predicts the same.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from mlpx.backends import Backend
from mlpx.layers import layer_from_config

__all__ = ["FORMAT_VERSION", "from_config", "load", "save", "write_model_file"]

FORMAT = "mlpx"
FORMAT_VERSION = 1


def save(model: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``model`` to ``path`` atomically; return the path written.

    ``.npz`` is appended when missing. The data goes to a temporary file in the same
    folder, is flushed to disk, and then renamed over ``path``: readers see the old
    file or the new one, never a partial one.
    """
    return write_model_file(path, model.get_config(), {"params": model.get_flat_params()})


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


def load(path: str | os.PathLike[str], backend: str | Backend = "cpu") -> Any:
    """Load a model saved by :meth:`Sequential.save` onto ``backend``.

    Raises
    ------
    ValueError
        Not an mlpx file, or a newer format version than this mlpx reads.
    """
    with np.load(path, allow_pickle=False) as data:
        if "config" not in data or "params" not in data:
            raise ValueError(f"{path} is not an mlpx model file (missing config/params)")
        record = json.loads(str(data["config"]))
        params = np.array(data["params"])
    if record.get("format") != FORMAT:
        raise ValueError(f"{path} is not an mlpx model file")
    if int(record.get("version", 0)) > FORMAT_VERSION:
        raise ValueError(
            f"{path} was written by a newer mlpx (format {record['version']}); upgrade mlpx to read it"
        )
    return from_config(record, params, backend)


def from_config(config: dict[str, Any], params: np.ndarray, backend: Any = "cpu") -> Any:
    """Rebuild a Sequential from its architecture record and flat host parameters."""
    from mlpx.model import Sequential

    layers = [layer_from_config(c) for c in config["layers"]]
    model = Sequential(
        layers, backend=backend, dtype=config["dtype"], seed=config.get("seed"),
        precision=config.get("precision"),
    )
    model.set_flat_params(params)
    return model
