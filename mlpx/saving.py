"""Save and load models: a portable ``.npz`` with a JSON architecture record.

The file holds two entries: ``config`` (JSON text: format version, layers, dtype)
and ``params`` (the flat parameter buffer as a host array); checkpoints add
``opt_<name>`` arrays of optimizer state. Nothing in it is pickled code, so loading
an untrusted file runs nothing.

Reading (:func:`read_model_file`, used by :func:`mlpx.load`) trusts nothing in the file: the
archive, each entry's header, the JSON record and every layer record are checked,
and the parameter count implied by the layers is compared with the stored array's
header *before* any array is read or any layer is built. A file that is too short
to hold what its headers claim is refused before allocation, so a crafted 1.5 KB
file cannot make ``load`` allocate gigabytes. Every defect raises
:class:`ModelFileError` (a ``ValueError``) saying what is wrong.

Writing (:func:`write_model_file`, used by ``Sequential.save`` and by checkpoints)
is atomic (:func:`mlpx.atomic_write.write_atomically`, which ONNX exports share):
the data goes to a temporary file beside the target, named
``.<name>.mlpx-tmp-<pid>-<random>``, is flushed to disk and renamed over the target.
An exception removes the temporary file; a temporary file left by a process that
was killed is removed by the next save of the same path (on POSIX systems, where
the process table can be asked). An existing file keeps its permission bits, and a
path that is a symbolic link is written through: the link's target is replaced and
the link stays a link.

A checkpoint is a model file plus the training state: the optimizer's
``state_dict()`` (its arrays as ``opt_<name>`` entries), the epoch and sample
counters and the fp16 loss scale, so :func:`load_checkpoint` resumes exactly.
:class:`ModelCheckpoint` writes one every few epochs (on rank 0 only in
data-parallel training). ``Sequential.save`` writes a model file and
:func:`mlpx.load` (:mod:`mlpx.model`) builds a model from what
:func:`read_model_file` returns.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from mlpx.activations import ACTIVATIONS
from mlpx.atomic_write import write_atomically
from mlpx.callbacks import Callback
from mlpx.distributed import make_reducer
from mlpx.initializers import INITIALIZERS
from mlpx.optimizers import OPTIMIZERS, Optimizer
from mlpx.precision import PRECISIONS

__all__ = [
    "FORMAT_VERSION",
    "MAX_PARAMS",
    "ModelCheckpoint",
    "ModelFileError",
    "check_architecture",
    "load_checkpoint",
    "read_model_file",
    "save_checkpoint",
    "write_model_file",
]

FORMAT = "mlpx"
FORMAT_VERSION = 1

#: Default cap on the parameters a file may describe (4 GiB of float32). Larger
#: models load with ``load(path, max_params=...)``.
MAX_PARAMS = 1 << 30
_MAX_LAYERS = 100_000
_MAX_CONFIG_BYTES = 1 << 26  # 16 Mi characters of JSON (UCS-4 in the .npy)
# Deflate cannot expand data by more than about 1032:1; a header that claims more
# than that from the compressed bytes present is a lie, refused before allocating.
_DEFLATE_RATIO = 1100
_OPT_ENTRY = re.compile(r"opt_[A-Za-z_][A-Za-z0-9_]*")

_RECORD_KEYS = {"format", "version", "layers", "dtype", "seed"}
_OPTIONAL_KEYS = {"precision", "train_state"}
_LAYER_KEYS = {
    "Dense": {"type", "n_in", "n_out", "activation", "init"},
    "ActivationLayer": {"type", "activation"},
    "Dropout": {"type", "p", "seed"},
}


class ModelFileError(ValueError):
    """A model file or record that mlpx cannot read.

    Raised for every defect of the file itself: not an ``.npz`` archive (or a
    ``.npy`` given for one), damaged or truncated, a config that is not a JSON
    object, missing or unknown keys, a bad layer record (unknown type or
    activation, a width that is not a positive integer, widths that do not chain),
    an unsupported dtype, parameters that are not a real float array of the
    record's dtype and exact length or are not finite, a network above the
    parameter cap, or a format version newer than this mlpx reads. The message
    names the file and the defect.
    """


# ------------------------------------------------------------------ writing
def write_model_file(
    path: str | os.PathLike[str], config: dict[str, Any], arrays: dict[str, np.ndarray]
) -> Path:
    """Atomically write an mlpx ``.npz``: ``config`` as JSON beside host ``arrays``.

    Used by :func:`save` and by training checkpoints, which add optimizer state.

    * Readers see the old file or the new one, never a partial one: the data is
      written to ``.<name>.mlpx-tmp-<pid>-<random>`` in the target's folder,
      flushed to disk, and renamed over the target.
    * Any exception (KeyboardInterrupt included) removes the temporary file.
      Temporary files of this target left by processes that no longer run (killed
      mid-save) are removed first (POSIX only).
    * An existing target keeps its permission bits (and, where allowed, its owner
      and group); a new one gets the usual ``0o666 & ~umask``.
    * A symbolic link is written through: its target is replaced, the link stays.

    Returns
    -------
    Path
        The path as given (with ``.npz`` appended when missing).
    """
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    record = {"format": FORMAT, "version": FORMAT_VERSION, **config}
    # Before any file is touched: a record that cannot be written as strict JSON
    # (NumPy scalars, NaN) is an error here, not a temporary file left behind.
    text = json.dumps(record, allow_nan=False)
    write_atomically(path, lambda fh: np.savez(fh, config=np.array(text), **arrays))
    return path


# ------------------------------------------------------------------ reading
def read_model_file(
    path: str | os.PathLike[str], *, max_params: int = MAX_PARAMS
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read and check an mlpx file without building a model.

    Returns
    -------
    record : dict
        The checked JSON record (``format``, ``version``, ``layers``, ``dtype``,
        ``seed``, and ``precision`` / ``train_state`` where present).
    arrays : dict of str -> ndarray
        ``"params"``, shape (n_params,), in the record's dtype, finite; and any
        ``"opt_<name>"`` checkpoint arrays, same shape and dtype.

    Raises
    ------
    ModelFileError
    """
    where = str(path)
    with open(path, "rb") as fh:
        head = fh.read(6)
        if head.startswith(b"\x93NUMPY"):
            raise ModelFileError(
                f"{where} is a .npy file (one array), not an mlpx model file (.npz archive)"
            )
        fh.seek(0)
        size = os.fstat(fh.fileno()).st_size
        try:
            with zipfile.ZipFile(fh) as zf:
                return _read_archive(zf, size, where, max_params)
        except ModelFileError:
            raise
        except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, struct.error, EOFError, OSError,
                NotImplementedError, RuntimeError, ValueError, UnicodeError, OverflowError) as exc:
            raise ModelFileError(
                f"{where} is not a readable mlpx model file (damaged, truncated or not an "
                f".npz archive): {type(exc).__name__}: {exc}"
            ) from None


def _read_archive(
    zf: zipfile.ZipFile, size: int, where: str, max_params: int
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    entries: dict[str, zipfile.ZipInfo] = {}
    for info in zf.infolist():
        if info.filename in entries:
            raise ModelFileError(f"{where}: the entry {info.filename!r} appears twice")
        entries[info.filename] = info
    names = sorted(entries)
    for key in ("config", "params"):
        if f"{key}.npy" not in entries:
            raise ModelFileError(f"{where} is not an mlpx model file (no {key!r} entry; entries: {names})")
    for name in names:
        key = name[:-4]
        if not (name.endswith(".npy") and (key in ("config", "params") or _OPT_ENTRY.fullmatch(key))):
            raise ModelFileError(f"{where} is not an mlpx model file: unexpected entry {name!r}")
    entries = {name[:-4]: info for name, info in entries.items()}
    text = _read_entry(zf, entries["config"], size, where, "config", shape=(), kind="U")
    record = _parse_record(text, where)
    n_params = check_architecture(record, max_params=max_params, where=where)
    dtype = np.dtype(record["dtype"])
    arrays = {}
    for key, info in entries.items():
        if key != "config":
            arrays[key] = _read_entry(zf, info, size, where, key, shape=(n_params,), kind=dtype)
            if not np.isfinite(arrays[key]).all():
                raise ModelFileError(f"{where}: {key!r} contains NaN or infinity")
    return record, arrays


def _read_entry(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, size: int, where: str, key: str,
    shape: tuple[int, ...], kind: Any,
) -> Any:
    """One ``.npy`` entry, its header checked before its data is read.

    ``kind`` is ``"U"`` (the JSON text: returns a str) or the float dtype the
    array must have (returns an array of ``shape``, native byte order).
    """
    if info.flag_bits & 0x1:
        raise ModelFileError(f"{where}: entry {key!r} is encrypted")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise ModelFileError(f"{where}: entry {key!r} uses an unsupported compression ({info.compress_type})")
    if info.header_offset + info.compress_size > size:
        raise ModelFileError(f"{where}: entry {key!r} extends past the end of the file (truncated)")
    with zf.open(info) as fp:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            stored_shape, _fortran, dtype = np.lib.format.read_array_header_1_0(fp)
        elif version == (2, 0):
            stored_shape, _fortran, dtype = np.lib.format.read_array_header_2_0(fp)
        else:
            raise ModelFileError(f"{where}: entry {key!r} has an unsupported .npy version {version}")
        header = fp.tell()
        if dtype.hasobject:
            raise ModelFileError(f"{where}: entry {key!r} holds Python objects; mlpx files never do")
        if isinstance(kind, str):
            if dtype.kind != "U" or stored_shape != ():
                raise ModelFileError(
                    f"{where}: 'config' must be JSON text (a 0-d unicode array), got "
                    f"dtype {dtype} shape {stored_shape}"
                )
            if dtype.itemsize > _MAX_CONFIG_BYTES:
                raise ModelFileError(f"{where}: 'config' is implausibly large ({dtype.itemsize} bytes)")
        else:
            expected = np.dtype(kind)
            if dtype.kind != "f" or dtype.newbyteorder("=") != expected.newbyteorder("="):
                raise ModelFileError(
                    f"{where}: {key!r} must be a {expected.name} array (the record's dtype), "
                    f"got dtype {dtype}"
                )
            if stored_shape != shape:
                raise ModelFileError(
                    f"{where}: {key!r} has shape {stored_shape}, but the layers describe "
                    f"{shape[0]} parameters"
                )
        need = math.prod(stored_shape) * dtype.itemsize
        limit = info.compress_size * (1 if info.compress_type == zipfile.ZIP_STORED else _DEFLATE_RATIO)
        if info.file_size != header + need or header + need > limit:
            raise ModelFileError(
                f"{where}: entry {key!r} claims {need} bytes of data, which the archive does "
                f"not hold (truncated or inconsistent)"
            )
        data = fp.read(need + 1)  # reading to the end verifies the entry's CRC
    if len(data) != need:
        raise ModelFileError(f"{where}: entry {key!r} is truncated ({len(data)} of {need} bytes)")
    if isinstance(kind, str):
        codec = "utf-32-be" if dtype.byteorder == ">" else "utf-32-le"
        return data.decode(codec).rstrip("\x00")
    return np.frombuffer(data, dtype=dtype).astype(np.dtype(kind), copy=True).reshape(shape)


def _parse_record(text: str, where: str) -> dict[str, Any]:
    def constant(name: str) -> Any:
        raise ModelFileError(f"{where}: the config holds {name}, which is not JSON")

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            raise ModelFileError(f"{where}: the config repeats a key ({sorted(keys)})")
        return dict(pairs)

    try:
        record = json.loads(text, parse_constant=constant, object_pairs_hook=unique)
    except ModelFileError:
        raise
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ModelFileError(f"{where}: the config is not valid JSON ({type(exc).__name__}: {exc})") from None
    if not isinstance(record, dict):
        raise ModelFileError(f"{where}: the config must be a JSON object, got {type(record).__name__}")
    if record.get("format") != FORMAT:
        raise ModelFileError(f"{where} is not an mlpx model file (format {record.get('format')!r})")
    version = record.get("version")
    if not _is_int(version) or version < 1:
        raise ModelFileError(f"{where}: bad format version {version!r}")
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{where} was written by a newer mlpx (format {version}; this mlpx reads up to "
            f"{FORMAT_VERSION}); upgrade mlpx to read it"
        )
    missing = _RECORD_KEYS - set(record)
    if missing:
        raise ModelFileError(f"{where}: the config lacks {sorted(missing)}")
    unknown = set(record) - _RECORD_KEYS - _OPTIONAL_KEYS
    if unknown:
        raise ModelFileError(f"{where}: the config has unknown keys {sorted(unknown)}")
    if "train_state" in record:
        _check_train_state(record["train_state"], where)
    return record


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_architecture(
    config: dict[str, Any], *, max_params: int = MAX_PARAMS, where: str = "model record"
) -> int:
    """Check an architecture record (layers, dtype, seed, precision); return n_params.

    Works on the record alone, so nothing is allocated: the widths are checked to
    chain from layer to layer, and the parameter count they imply (Σ n_in·n_out +
    n_out over the Dense layers) against ``max_params``.

    Raises
    ------
    ModelFileError
    """
    if not isinstance(config, dict):
        raise ModelFileError(f"{where}: the config must be a JSON object")
    dtype = config.get("dtype")
    if not isinstance(dtype, str) or dtype not in ("float32", "float64"):
        raise ModelFileError(f"{where}: dtype must be 'float32' or 'float64', got {dtype!r}")
    seed = config.get("seed")
    if seed is not None and not (_is_int(seed) and seed >= 0):
        raise ModelFileError(f"{where}: seed must be null or a non-negative integer, got {seed!r}")
    precision = config.get("precision")
    if precision is not None and precision != dtype:
        if not isinstance(precision, str) or precision not in PRECISIONS:
            raise ModelFileError(f"{where}: unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
        if dtype != "float32":
            raise ModelFileError(f"{where}: precision {precision!r} needs dtype float32, got {dtype!r}")
    layers = config.get("layers")
    if not isinstance(layers, list) or not 1 <= len(layers) <= _MAX_LAYERS:
        raise ModelFileError(f"{where}: layers must be a non-empty list of layer records")
    width: int | None = None
    n_params = 0
    for i, layer in enumerate(layers):
        _check_layer(layer, i, max_params, where)
        if layer["type"] != "Dense":
            continue
        n_in, n_out = layer["n_in"], layer["n_out"]
        if width is not None and n_in != width:
            raise ModelFileError(
                f"{where}: layer {i} (Dense) expects {n_in} inputs, but the previous layers give {width}"
            )
        width = n_out
        n_params += n_in * n_out + n_out
        if n_params > max_params:
            raise ModelFileError(
                f"{where}: the layers describe more than {max_params} parameters (the cap); "
                f"pass max_params= to load a larger model"
            )
    if width is None:
        raise ModelFileError(f"{where}: the network has no Dense layer")
    return n_params


def _check_layer(layer: Any, i: int, max_params: int, where: str) -> None:
    if not isinstance(layer, dict):
        raise ModelFileError(f"{where}: layer {i} must be a JSON object, got {layer!r}")
    kind = layer.get("type")
    if not isinstance(kind, str) or kind not in _LAYER_KEYS:
        raise ModelFileError(f"{where}: layer {i} has unknown type {kind!r}; known: {sorted(_LAYER_KEYS)}")
    if set(layer) != _LAYER_KEYS[kind]:
        raise ModelFileError(
            f"{where}: layer {i} ({kind}) must have exactly the fields "
            f"{sorted(_LAYER_KEYS[kind])}, got {sorted(layer)}"
        )
    act = layer.get("activation")
    if "activation" in layer and not (isinstance(act, str) and act in ACTIVATIONS):
        raise ModelFileError(
            f"{where}: layer {i} has unknown activation {act!r}; valid: {', '.join(sorted(ACTIVATIONS))}"
        )
    if kind == "Dense":
        for field in ("n_in", "n_out"):
            v = layer[field]
            if not (_is_int(v) and 1 <= v <= max_params):
                raise ModelFileError(
                    f"{where}: layer {i} (Dense) {field} must be an integer in [1, {max_params}], got {v!r}"
                )
        if not (isinstance(layer["init"], str) and layer["init"] in INITIALIZERS):
            raise ModelFileError(f"{where}: layer {i} has unknown init {layer['init']!r}")
    elif kind == "Dropout":
        p, seed = layer["p"], layer["seed"]
        if not (_is_real(p) and 0 <= p < 1):
            raise ModelFileError(f"{where}: layer {i} (Dropout) p must be a number in [0, 1), got {p!r}")
        if seed is not None and not (_is_int(seed) and seed >= 0):
            raise ModelFileError(f"{where}: layer {i} (Dropout) seed must be null or >= 0, got {seed!r}")


def _check_train_state(state: Any, where: str) -> None:
    """A checkpoint's training state: known fields checked, others left to the reader."""
    if not isinstance(state, dict):
        raise ModelFileError(f"{where}: train_state must be a JSON object")
    for key in ("epochs_done", "samples_seen"):
        if key in state and not (_is_int(state[key]) and state[key] >= 0):
            raise ModelFileError(f"{where}: train_state.{key} must be a non-negative integer")
    scaler = state.get("loss_scaler")
    if scaler is not None:
        if not (isinstance(scaler, dict) and set(scaler) == {"scale", "good_steps", "skipped"}
                and _is_real(scaler["scale"]) and scaler["scale"] > 0
                and all(_is_int(scaler[k]) and scaler[k] >= 0 for k in ("good_steps", "skipped"))):
            raise ModelFileError(f"{where}: bad train_state.loss_scaler {scaler!r}")
    opt = state.get("optimizer")
    if opt is not None:
        if not (isinstance(opt, dict) and {"optimizer", "config", "t", "lr"} <= set(opt)
                and isinstance(opt["optimizer"], str) and opt["optimizer"].lower() in OPTIMIZERS
                and isinstance(opt["config"], dict) and _is_int(opt["t"]) and opt["t"] >= 0
                and _is_real(opt["lr"]) and opt["lr"] > 0):
            raise ModelFileError(f"{where}: bad train_state.optimizer record")
        try:  # settings only; allocates nothing
            Optimizer.from_state_dict({**opt, "state": {}})
        except (TypeError, ValueError) as exc:
            raise ModelFileError(f"{where}: bad optimizer settings in train_state: {exc}") from None


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
            opt.bind(be, model.params, model.grads, model.n_weights, owner=model)
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
