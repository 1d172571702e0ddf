"""Save and load models: a portable ``.npz`` with a JSON architecture record.

The file holds two entries: ``config`` (JSON text: format version, layers, dtype)
and ``params`` (the flat parameter buffer as a host array); checkpoints add
``opt_<name>`` arrays of optimizer state. Nothing in it is pickled code, so loading
an untrusted file runs nothing.

Reading (:class:`ModelFile`, used by :func:`read_model_file`, :func:`mlpx.load` and
:func:`load_checkpoint`) trusts nothing in the file (:mod:`mlpx.archive`): only a
regular file is opened (a device such as ``/dev/zero``, a FIFO or a directory is
refused at once), its zip structure is checked before ``zipfile`` reads it, the
JSON record and every layer record are checked, and every array's header is
compared with the parameter count the layers imply *before* any array is read or
any layer is built. Only the entries a reader needs are decompressed, in bounded
chunks and never past the size the record declares; entries other than
``config``, ``params`` and the state arrays of a checkpoint's optimizer are
refused by name. So no file, however crafted, makes a load allocate more than the
arrays its record declares plus a constant (a few MiB). Every defect raises
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

import contextlib
import json
import math
import os
from pathlib import Path
from typing import Any, TypeGuard, cast

import numpy as np

from mlpx.activations import ACTIVATIONS
from mlpx.archive import Archive, ModelFileError
from mlpx.atomic_write import write_atomically
from mlpx.callbacks import Callback, check_mode, monitor_sign
from mlpx.distributed import make_reducer
from mlpx.generators import check_generator_states, generator_states, restore_generator_states
from mlpx.initializers import INITIALIZERS
from mlpx.layers import Dropout
from mlpx.optimizers import OPTIMIZERS, Optimizer
from mlpx.precision import PRECISIONS
from mlpx.validation import check_bool, check_int

__all__ = [
    "FORMAT_VERSION",
    "MAX_PARAMS",
    "ModelCheckpoint",
    "ModelFile",
    "ModelFileError",
    "check_architecture",
    "checkpoint_contents",
    "load_checkpoint",
    "read_model_file",
    "resume",
    "save_checkpoint",
    "write_model_file",
]

FORMAT = "mlpx"
#: Version of the model-file format this mlpx writes; newer files are refused.
FORMAT_VERSION = 1

#: Default cap on the parameters a file may describe (4 GiB of float32). Larger
#: models load with ``load(path, max_params=...)``.
MAX_PARAMS = 1 << 30
_MAX_LAYERS = 100_000
# The JSON record: ample for 10,000 layers. Parsing JSON costs up to ~25 bytes of
# Python objects per character, so this also bounds what the record can allocate.
_MAX_CONFIG_CHARS = 1 << 20

_RECORD_KEYS = {"format", "version", "layers", "dtype", "seed"}
_TRAIN_STATE_KEYS = {"epochs_done", "samples_seen", "loss", "loss_scaler", "optimizer", "generators", "active",
                     "diverged"}
_OPTIONAL_KEYS = {"precision", "train_state", "estimator", "members"}
#: The most members a stack's file may hold.
MAX_MEMBERS = 1 << 16
_LAYER_KEYS = {
    "Dense": {"type", "n_in", "n_out", "activation", "init"},
    "ActivationLayer": {"type", "activation"},
    "Dropout": {"type", "p", "seed"},
}


# ------------------------------------------------------------------ writing
def write_model_file(
    path: str | os.PathLike[str], config: dict[str, Any], arrays: dict[str, np.ndarray]
) -> Path:
    """Atomically write an mlpx ``.npz``: ``config`` as JSON beside host ``arrays``.

    Used by ``Sequential.save`` and by training checkpoints, which add optimizer state.

    * Readers see the old file or the new one, never a partial one: the data is
      written to ``.<name>.mlpx-tmp-<pid>-<random>`` in the target's folder,
      flushed to disk, and renamed over the target.
    * Any exception (KeyboardInterrupt included) removes the temporary file.
      Temporary files of this target left by processes that no longer run (killed
      mid-save) are removed first (POSIX only).
    * An existing target keeps its permission bits (and, where allowed, its owner
      and group); a new one gets the usual ``0o666 & ~umask``.
    * A symbolic link is written through: its target is replaced, the link stays.

    Parameters
    ----------
    path : str or path-like
        The file; ``.npz`` is appended when missing.
    config : dict
        JSON-serialisable record (architecture, dtype, training state).
    arrays : dict of str to ndarray
        Host arrays to store beside it (``"params"``, optimizer state).

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
    # (cast: NumPy's stub types the keyword arguments as allow_pickle's bool)
    write_atomically(path, lambda fh: cast(Any, np.savez)(fh, config=np.array(text), **arrays))
    return path


# ------------------------------------------------------------------ reading
class ModelFile:
    """An mlpx file opened for reading: its record checked, its arrays not read yet.

    Opening checks the file (:class:`~mlpx.archive.Archive`: a regular file, a
    sound zip structure), the entry names, the JSON record and the architecture it
    describes; each array is then read by a method that checks its header against
    the record before reading any data, and streams the data into its destination.
    Use as a context manager.

    Parameters
    ----------
    path : str or path
        ``path + ".npz"`` is found when ``path`` does not exist (what ``save(path)`` wrote).
    max_params : int, default :data:`MAX_PARAMS`
        Refuse files that describe more parameters than this (over all members).

    Attributes
    ----------
    record : dict
        The checked record (``format``, ``version``, ``layers``, ``dtype``, ``seed``,
        and ``precision`` / ``train_state`` / ``estimator`` where present).
    n_params : int
        Parameters the layers describe (one member's).
    n_members : int or None
        The members of a stack's file (``members`` in the record), else None.
    shape : tuple of int
        The shape of every array in the file: (n_params,), or (n_members, n_params).
    dtype : numpy.dtype
        The record's dtype (float32 or float64), native byte order.
    optimizer_entries : tuple of str
        The optimizer state arrays a checkpoint holds (``"m"``, ``"v"`` for Adam,
        ``"velocity"`` for SGD); empty for a model file.
    path : Path
        The file opened.

    Raises
    ------
    ModelFileError
        Anything wrong with the file, found before any array is allocated. Entries
        other than ``config``, ``params`` and the state arrays of the checkpoint's
        optimizer are refused by name; a checkpoint lacking one of its optimizer's
        state arrays is refused.
    FileNotFoundError, PermissionError
    """

    def __init__(self, path: str | os.PathLike[str], *, max_params: int = MAX_PARAMS) -> None:
        self._archive = Archive(path)
        try:
            self.path = self._archive.path
            where = self._archive.where
            names = self._archive.names
            for key in ("config", "params"):
                if key not in names:
                    raise ModelFileError(f"{where} is not an mlpx model file (no {key!r} entry; entries: "
                                         f"{[n + '.npy' for n in names]})")
            text = self._archive.read_text("config", _MAX_CONFIG_CHARS)
            self.record = _parse_record(text, where)
            self.n_members = member_count(self.record, where)
            K = 1 if self.n_members is None else self.n_members
            self.n_params = check_architecture(self.record, max_params=max_params // K, where=where)
            self.shape = (self.n_params,) if self.n_members is None else (self.n_members, self.n_params)
            self.dtype = np.dtype(self.record["dtype"])
            saved = (self.record.get("train_state") or {}).get("optimizer")
            kind = None if saved is None else str(saved["optimizer"])  # (checked with the record)
            self.optimizer_entries: tuple[str, ...] = (
                () if kind is None else tuple(OPTIMIZERS[kind.lower()].state_names))
            allowed = {"config", "params", *(f"opt_{n}" for n in self.optimizer_entries)}
            for name in names:
                if name not in allowed:
                    raise ModelFileError(f"{where} is not an mlpx model file: unexpected entry {name + '.npy'!r}")
            missing = [f"opt_{n}" for n in self.optimizer_entries if f"opt_{n}" not in names]
            if missing:
                raise ModelFileError(
                    f"{where}: the checkpoint's {kind} state lacks {missing}; its optimizer "
                    f"cannot resume (a missing state array is never taken as zeros)"
                )
            # Every array's header before any array is allocated (by the caller too).
            for key in ("params", *(f"opt_{n}" for n in self.optimizer_entries)):
                self._archive.check_array(key, self.shape, self.dtype)
        except BaseException:
            self._archive.close()
            raise

    def __enter__(self) -> "ModelFile":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Close the file (the context manager's exit does it)."""
        self._archive.close()

    def read_params(self, out: np.ndarray | None = None) -> np.ndarray:
        """Read the parameters, checked to be finite.

        Parameters
        ----------
        out : ndarray, optional
            Of the file's ``shape`` and ``dtype``: the data is streamed into it.

        Returns
        -------
        ndarray
            ``out``, or a new array, of the file's ``shape`` and ``dtype``.
        """
        return self._archive.read_array("params", self.shape, self.dtype, out=out)

    def read_optimizer_state(self) -> dict[str, np.ndarray]:
        """Read the checkpoint's optimizer state arrays.

        Returns
        -------
        dict of str -> ndarray
            By name (``optimizer_entries``), each of the file's ``shape``; empty for
            a model file.
        """
        return {name: self._archive.read_array(f"opt_{name}", self.shape, self.dtype)
                for name in self.optimizer_entries}


def read_model_file(
    path: str | os.PathLike[str], *, max_params: int = MAX_PARAMS
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read and check an mlpx file without building a model.

    Allocates the arrays the record declares and a constant besides (at most
    :data:`~mlpx.archive.CHUNK_BYTES` of decompression buffer and the record):
    see :class:`ModelFile`.

    Parameters
    ----------
    path : str or path
        ``path + ".npz"`` is found when ``path`` does not exist.
    max_params : int, default :data:`MAX_PARAMS`
        Refuse files that describe more parameters than this.

    Returns
    -------
    record : dict
        The checked JSON record (``format``, ``version``, ``layers``, ``dtype``,
        ``seed``, and ``precision`` / ``train_state`` where present).
    arrays : dict of str -> ndarray
        ``"params"``, shape (n_params,), in the record's dtype, finite; and a
        checkpoint's ``"opt_<name>"`` optimizer state arrays, same shape and dtype.

    Raises
    ------
    ModelFileError
    FileNotFoundError, PermissionError
    """
    with ModelFile(path, max_params=max_params) as f:
        arrays = {"params": f.read_params()}
        arrays.update({f"opt_{k}": v for k, v in f.read_optimizer_state().items()})
        return f.record, arrays


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
    if "estimator" in record and not isinstance(record["estimator"], dict):
        raise ModelFileError(f"{where}: the estimator record must be a JSON object")
    if "train_state" in record:
        layers = record.get("layers")
        n_dropout = (sum(isinstance(l, dict) and l.get("type") == "Dropout" for l in layers)
                     if isinstance(layers, list) else None)
        _check_train_state(record["train_state"], where, n_dropout, member_count(record, where))
    return record


def member_count(record: dict[str, Any], where: str) -> int | None:
    """The members of a stack's record (``{"members": {"seeds": [...]}}``), or None.

    Raises
    ------
    ModelFileError
        A members record that is not a list of 1 to :data:`MAX_MEMBERS` seeds (null or
        non-negative integers).
    """
    members = record.get("members")
    if members is None:
        return None
    seeds = members.get("seeds") if isinstance(members, dict) and set(members) == {"seeds"} else None
    if not (isinstance(seeds, list) and 1 <= len(seeds) <= MAX_MEMBERS
            and all(s is None or (_is_int(s) and s >= 0) for s in seeds)):
        raise ModelFileError(f"{where}: members must be {{'seeds': [1 to {MAX_MEMBERS} seeds, null or >= 0]}}")
    return len(seeds)


def _each(value: Any, ok: Any, n_members: int | None) -> bool:
    """``ok(value)``, or, for a stack of ``n_members``, a list of that many values each ok."""
    if n_members is None:
        return bool(ok(value))
    return isinstance(value, list) and len(value) == n_members and all(ok(v) for v in value)


def _is_int(v: Any) -> TypeGuard[int]:
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

    Parameters
    ----------
    config : dict
        The record.
    max_params : int, default MAX_PARAMS
        The largest parameter count accepted.
    where : str, default "model record"
        What the record is, for the message.

    Returns
    -------
    int
        The number of parameters the layers imply.

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


def check_params(params: Any, shape: tuple[int, ...], where: str) -> np.ndarray:
    """Parameters given with a record (``from_config``), checked.

    Parameters
    ----------
    params : array_like
        Host parameters.
    shape : tuple of int
        The shape the record implies: (n_params,), or (K, n_params) for a stack.
    where : str
        What the record is, for the message.

    Returns
    -------
    ndarray
        ``params`` as a float array of ``shape``.

    Raises
    ------
    ModelFileError
        Another shape, a dtype that is not floating point, or NaN or infinity.
    """
    host = np.asarray(params)
    if host.dtype.kind != "f" or host.shape != shape:
        raise ModelFileError(f"{where}: params must be a float array of shape {shape}, got "
                             f"dtype {host.dtype} shape {host.shape}")
    if not np.isfinite(host).all():
        raise ModelFileError(f"{where}: params contain NaN or infinity")
    return host


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


def _check_train_state(state: Any, where: str, n_dropout: int | None = None, n_members: int | None = None) -> None:
    """A checkpoint's training state, every field checked (``n_dropout``: the record's
    Dropout layers; ``n_members``: a stack's members, whose counters are lists)."""
    if not isinstance(state, dict):
        raise ModelFileError(f"{where}: train_state must be a JSON object")
    unknown = set(state) - _TRAIN_STATE_KEYS
    if unknown:
        raise ModelFileError(f"{where}: train_state has unknown keys {sorted(unknown)}")
    loss = state.get("loss")
    if loss is not None and not (isinstance(loss, str) and len(loss) <= 100):
        raise ModelFileError(f"{where}: train_state.loss must be the name of a loss, got {loss!r}")
    if "generators" in state:
        check_generator_states(state["generators"], where, n_dropout, n_members)

    def count(v: Any) -> bool:
        return _is_int(v) and v >= 0

    if "epochs_done" in state and not count(state["epochs_done"]):
        raise ModelFileError(f"{where}: train_state.epochs_done must be a non-negative integer")
    if "samples_seen" in state and not _each(state["samples_seen"], count, n_members):
        raise ModelFileError(f"{where}: train_state.samples_seen must be a non-negative integer"
                             + ("" if n_members is None else f" per member ({n_members})"))
    for key in ("active", "diverged"):
        if key in state and not (n_members is not None and _each(state[key], lambda v: isinstance(v, bool),
                                                                  n_members)):
            raise ModelFileError(f"{where}: train_state.{key} must be a list of the members' flags")
    scaler = state.get("loss_scaler")
    if scaler is not None:
        def good(sc: Any) -> bool:
            return (isinstance(sc, dict) and set(sc) == {"scale", "good_steps", "skipped"}
                    and _is_real(sc["scale"]) and sc["scale"] > 0
                    and all(_is_int(sc[k]) and sc[k] >= 0 for k in ("good_steps", "skipped")))

        if not _each(scaler, good, n_members):
            raise ModelFileError(f"{where}: bad train_state.loss_scaler {scaler!r}")
    opt = state.get("optimizer")
    if opt is not None:
        if not (isinstance(opt, dict) and {"optimizer", "config", "t", "lr"} <= set(opt)
                and isinstance(opt["optimizer"], str) and opt["optimizer"].lower() in OPTIMIZERS
                and isinstance(opt["config"], dict) and _each(opt["t"], count, n_members)
                and _each(opt["lr"], lambda v: _is_real(v) and v > 0, n_members)):
            raise ModelFileError(f"{where}: bad train_state.optimizer record")
        try:  # settings only; allocates nothing
            Optimizer.from_state_dict({**opt, "state": {}})
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise ModelFileError(f"{where}: bad optimizer settings in train_state: {exc}") from None


# ------------------------------------------------------------------ checkpoints
def save_checkpoint(path: str | os.PathLike[str], model: Any, optimizer: Optimizer | None = None) -> Path:
    """Write model, optimizer state, progress and generator states to ``path`` atomically.

    The file is an mlpx model file (``mlpx.load`` reads it) with the training state
    added: ``model.train_state()`` (epoch and sample counters, the loss, the fp16
    loss scale), the optimizer's settings, step count, rate and schedule with its
    state arrays as ``opt_<name>`` entries (``optimizer`` replaces the model's
    own), and the states of the shuffle and dropout generators
    (:mod:`mlpx.generators`). :func:`load_checkpoint` puts all of it back, so a
    resumed run ends bit-identical to an uninterrupted one.

    Parameters
    ----------
    path : str or path
        ``.npz`` is appended when missing.
    model : Sequential or Stack
        The model to save, with its training state.
    optimizer : Optimizer, optional
        The optimizer whose state to save (default: the model's ``optimizer_``).

    Returns
    -------
    Path
        The path written.

    Examples
    --------
    >>> import numpy as np, mlpx
    >>> model = mlpx.MLP([4, 8, 3], seed=0)
    >>> X, y = np.random.default_rng(0).normal(size=(64, 4)), np.arange(64) % 3
    >>> _ = model.fit(X, y, epochs=2)
    >>> path = mlpx.save_checkpoint(tmp / "run.npz", model)   # doctest: +SKIP
    """
    config, arrays = checkpoint_contents(model, optimizer)
    return write_model_file(path, config, arrays)


def checkpoint_contents(model: Any, optimizer: Optimizer | None = None
                        ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """What :func:`save_checkpoint` writes: the record (with ``train_state``) and the arrays.

    Parameters
    ----------
    model : Sequential or Stack
        The model to save.
    optimizer : Optimizer, optional
        The optimizer whose state to save (default: the model's ``optimizer_``).

    Returns
    -------
    config : dict
        ``model.get_config()`` with ``"train_state"``.
    arrays : dict of str -> ndarray
        ``"params"`` and the optimizer's ``"opt_<name>"`` arrays, each of shape (n_params,).
    """
    state = model.train_state()
    opt = optimizer if optimizer is not None else model.optimizer_
    params = model.get_params_host()
    if model.get_config().get("members") is None:
        params = params[0]  # a single network's file keeps its 1-D parameters
    arrays: dict[str, np.ndarray] = {"params": params}
    state.pop("optimizer", None)
    if opt is not None:
        saved = opt.state_dict()
        values = saved.pop("state")
        for name in type(opt).state_names:
            # An optimizer that never ran has no buffers yet: its state is zeros.
            value = values.get(name)
            arrays[f"opt_{name}"] = (np.zeros(params.shape, model.dtype) if value is None
                                     else np.asarray(value).reshape(params.shape))
        state["optimizer"] = saved
    state["generators"] = generator_states(model)
    return {**model.get_config(), "train_state": state}, arrays


def load_checkpoint(
    path: str | os.PathLike[str], model: Any, optimizer: Optimizer | str | None = None, comm: Any = None
) -> Optimizer | None:
    """Restore a checkpoint written by :func:`save_checkpoint` into ``model``.

    Sets the parameters, ``epochs_done_``, ``samples_seen_``, the loss scale and the
    shuffle and dropout generators, and returns the optimizer (``optimizer``, or a
    new one of the saved kind) bound to the model with its saved state, ready to
    pass to ``fit(..., optimizer=...)``; None when the checkpoint holds no
    optimizer. ``fit(..., resume_from=path)`` does all of this and runs the
    remaining epochs.

    Everything is checked before the model is changed: a bad file, a checkpoint of
    another architecture or dtype, or an ``optimizer`` of another class than the
    saved one leaves ``model`` as it was.

    Parameters
    ----------
    path : str or path
        ``path + ".npz"`` is found when ``path`` does not exist.
    model : Sequential
        Built with the checkpoint's architecture and dtype.
    optimizer : Optimizer or str, optional
        Receives the saved state (it must be of the saved class, with the saved
        settings: rate, schedule, momenta). A name ("adam",
        "sgd", ...) only checks that the saved optimizer is of that kind; the
        returned one is new.
    comm : communicator, optional
        Rank 0 reads the file and broadcasts it (other ranks need not see the file
        system); every rank checks it against its own model, and a mismatch raises
        on every rank. Only rank 0's shuffle generator was saved, and only rank 0
        takes it back: the other ranks keep theirs.

    Returns
    -------
    Optimizer or None
        The optimizer to continue with, bound and with its state; None when the
        checkpoint holds no optimizer (``optimizer`` is returned when given).

    Raises
    ------
    ModelFileError
        The file is damaged or crafted (see :class:`ModelFile`), or lacks part of
        its optimizer's state.
    ValueError
        A checkpoint of another model (layers or dtype), or of another optimizer
        class or settings than ``optimizer``.
    """
    reducer = make_reducer(comm, model.backend)
    data = None
    error: BaseException | None = None
    if reducer.is_root:
        try:
            data = _read_checkpoint(path, model)
        except Exception as exc:
            error = exc
    reducer.check_errors(error, f"reading checkpoint {path}")
    record, params, opt_state = reducer.bcast(data)

    error, result = None, None
    try:
        result = _restore(path, record, params, opt_state, model, optimizer, reducer.is_root)
    except Exception as exc:
        if reducer.size == 1:
            raise
        error = exc
    reducer.check_errors(error, f"loading checkpoint {path}")
    return result


def _read_checkpoint(path: Any, model: Any) -> tuple[dict[str, Any], np.ndarray, dict[str, np.ndarray]]:
    """The record and arrays of a checkpoint for ``model`` (another model's is refused unread)."""
    with ModelFile(path) as f:
        _check_same_model(path, f.record, model)
        return f.record, f.read_params(), f.read_optimizer_state()


def _check_same_model(path: Any, record: dict[str, Any], model: Any) -> None:
    mine = model.get_config()
    theirs = member_count(record, str(path))
    if theirs != (None if mine.get("members") is None else model.n_members):
        raise ValueError(f"checkpoint {path} holds {'a network' if theirs is None else f'{theirs} members'}, "
                         f"not the {model.n_members} member(s) of this model")
    for key in ("layers", "dtype"):
        if record.get(key) != mine[key]:
            raise ValueError(
                f"checkpoint {path} holds another model: its {key} {record.get(key)!r} differ "
                f"from this model's {mine[key]!r}"
            )


def _restore(path: Any, record: dict[str, Any], params: np.ndarray, opt_state: dict[str, np.ndarray],
             model: Any, optimizer: Optimizer | str | None, root: bool) -> Optimizer | None:
    """Put a read checkpoint into ``model``: everything that can fail is checked first."""
    _check_same_model(path, record, model)
    state = dict(record.get("train_state", {}))
    saved = state.pop("optimizer", None)
    generators = state.pop("generators", None)
    if generators is not None:
        check_generator_states(generators, str(path), sum(isinstance(l, Dropout) for l in model.layers),
                               member_count(record, str(path)))
    if state.get("loss") is not None:
        try:
            model.resolve_loss(state["loss"])
        except ValueError:  # a loss this mlpx does not know by name: fit's loss= decides
            del state["loss"]
    if isinstance(optimizer, str):
        kind = OPTIMIZERS.get(optimizer.lower())
        if kind is None:
            raise ValueError(f"unknown optimizer {optimizer!r}; valid: {', '.join(sorted(OPTIMIZERS))}")
        if saved is not None and saved["optimizer"] != kind.__name__:
            raise ValueError(
                f"checkpoint {path} was trained with {saved['optimizer']}, not {kind.__name__} "
                f"(optimizer={optimizer!r}); pass optimizer={saved['optimizer'].lower()!r} to resume it"
            )
        optimizer = None
    opt: Optimizer | None = None  # the optimizer that resumes (None: the checkpoint holds none)
    if saved is not None:
        saved = {**saved, "state": opt_state}
        if optimizer is None:
            opt = Optimizer.from_state_dict(saved)
        elif saved["optimizer"] != type(optimizer).__name__:
            raise ValueError(
                f"checkpoint {path} holds {saved['optimizer']} state, which cannot be loaded into "
                f"{type(optimizer).__name__}"
            )
        elif json.loads(json.dumps(optimizer.get_config())) != saved["config"]:
            # Its state would be continued under other settings: not the run it resumes.
            raise ValueError(
                f"checkpoint {path} was trained with {saved['optimizer']} settings {saved['config']}, "
                f"the optimizer given has {optimizer.get_config()}; pass "
                f"optimizer={saved['optimizer'].lower()!r} to resume with the saved settings"
            )
        else:
            opt = optimizer
    model.set_params_host(np.asarray(params).reshape(model.n_members, -1))
    model.load_train_state(state)
    if generators is not None:
        restore_generator_states(model, generators, shuffle=root)
    if opt is None:
        return optimizer
    if optimizer is not None:
        optimizer.load_state_dict(saved)
    be = model.backend
    with be.activated():
        opt.bind(be, model.params, model.grads, model.n_weights, owner=model)
    return opt


def resume(path: str | os.PathLike[str], model: Any, optimizer: Optimizer | str, epochs: int, *,
           lr: float | None = None, validation_split: float = 0.0,
           comm: Any = None) -> tuple[Optimizer | str, int]:
    """What ``fit(..., resume_from=path)`` does before it trains.

    Loads the checkpoint into ``model`` (:func:`load_checkpoint`: weights, optimizer
    state, counters, generator states) and tells how many of the ``epochs`` are
    left: ``epochs`` counts from the start of the run, as Keras' ``epochs`` with
    ``initial_epoch``.

    Parameters
    ----------
    path : str or path
        The checkpoint (``path + ".npz"`` is found when ``path`` does not exist).
    model : Sequential
        Built with the checkpoint's architecture and dtype; it receives the state.
    optimizer : Optimizer or str
        ``fit``'s argument: an instance receives the saved state; a name must name
        the saved optimizer's kind.
    epochs : int
        The run's total.
    lr : None
        A rate would break the exact continuation: set it on an optimizer instance.
    validation_split : float
        Must be 0: the held-out rows are drawn from the shuffle generator when
        ``fit`` starts, so a resumed fit would hold out other rows than the run it
        continues. Pass ``validation_data`` instead.
    comm : communicator, optional
        As for :func:`load_checkpoint`: rank 0 reads, every rank checks.

    Returns
    -------
    optimizer : Optimizer or str
        The one to train with (the checkpoint's, or ``optimizer`` when it holds none).
    epochs_left : int
        ``epochs`` less the checkpoint's ``epochs_done``; 0 or less: nothing to run.

    Raises
    ------
    ValueError
        ``lr`` or ``validation_split`` given, a checkpoint of another model, or of
        another optimizer than ``optimizer``.
    ModelFileError
    """
    reducer = make_reducer(comm, model.backend)
    # Agreed: a rank that refuses its arguments must not leave the others in the broadcast.
    epochs = reducer.agreed("checking resume_from", _check_resume, epochs, lr, validation_split)
    restored = load_checkpoint(path, model, optimizer, reducer)
    return (restored if restored is not None else optimizer), epochs - int(model.epochs_done_)


def _check_resume(epochs: Any, lr: Any, validation_split: Any) -> int:
    n_epochs = check_int("epochs", epochs, low=1)
    if lr is not None:
        raise ValueError("lr= cannot be combined with resume_from (the checkpoint's optimizer carries its rate); "
                         "to change the rate, pass an optimizer instance and set its lr after loading")
    if validation_split:
        raise ValueError("validation_split cannot be combined with resume_from: a resumed fit would hold out "
                         "other rows than the run it continues; pass validation_data")
    return n_epochs


class ModelCheckpoint(Callback):
    """Save resumable checkpoints during ``fit`` (rank 0 only in distributed fits).

    Each file is a :func:`save_checkpoint` file: ``mlpx.load`` reads it as a model,
    and ``fit(..., resume_from=path)`` (or :func:`load_checkpoint`) continues the
    run bit-identically. Files are written atomically, at the end of an epoch,
    after the epoch's counters are updated.

    Parameters
    ----------
    path : str or path
        The file, or a template formatted with ``epoch`` (1-based: the number of
        epochs done, as Keras numbers them) and the epoch's logs, e.g.
        ``"ckpt-{epoch:03d}.npz"`` or ``"best-{val_loss:.4f}.npz"``. A plain path
        is overwritten each time.
    every : int, default 1
        Consider saving every ``every`` epochs (the epochs whose number is a
        multiple of it).
    monitor : str, optional
        A key of the epoch logs (``"loss"``, ``"val_loss"``, ``"val_accuracy"``...)
        whose best value is tracked (``best``, ``best_epoch``). A key that
        the logs do not hold raises ``ValueError`` naming the keys they hold, at the
        first epoch considered.
    mode : {"auto", "min", "max"}, default "auto"
        Whether a lower or a higher ``monitor`` is better; "auto" maximises keys
        containing "accuracy" or "r2" and minimises the rest.
    save_best_only : bool, default False
        Write only when ``monitor`` improved on the best value written so far
        (needs ``monitor``). A NaN never improves.
    keep_last : int, optional
        Keep only the last ``keep_last`` files this callback wrote (older ones are
        deleted after the new one is in place); None keeps all. Useful with a
        template path.

    Attributes
    ----------
    writes : int
        Files written so far.
    best : float or None
        Best ``monitor`` value seen at the epochs considered (None before any, or
        without ``monitor``).
    best_epoch : int or None
        Its 0-based epoch.
    last_path : Path or None
        The last file written.
    kept : list of Path
        The files written and not deleted by ``keep_last``, oldest first.

    Raises
    ------
    ValueError
        Bad settings (``save_best_only`` without ``monitor``, an unknown ``mode``,
        ``every`` or ``keep_last`` not a positive integer).

    Examples
    --------
    Keep the three best models by validation loss and resume after a crash:

    >>> import numpy as np, mlpx
    >>> X = np.random.default_rng(0).normal(size=(200, 4)); y = (X[:, 0] > 0).astype(int)
    >>> model = mlpx.MLP([4, 16, 2], seed=0)
    >>> best = mlpx.ModelCheckpoint("ckpt-{epoch:03d}.npz", monitor="val_loss",
    ...                             save_best_only=True, keep_last=3)
    >>> model.fit(X, y, epochs=20, validation_split=0.2, callbacks=[best])  # doctest: +SKIP
    >>> mlpx.load(best.last_path)                                          # doctest: +SKIP
    """

    root_only = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        every: int = 1,
        monitor: str | None = None,
        mode: str = "auto",
        save_best_only: bool = False,
        keep_last: int | None = None,
    ) -> None:
        self.path = path
        self.every = check_int("every", every, low=1)
        if monitor is not None and not isinstance(monitor, str):
            raise TypeError(f"monitor must be the name of a logged value or None, got {monitor!r}")
        self.monitor = monitor
        self.mode = check_mode(mode)
        self.save_best_only = check_bool("save_best_only", save_best_only)
        if self.save_best_only and monitor is None:
            raise ValueError("save_best_only=True needs monitor= (the logged value that decides what is best)")
        self.keep_last = None if keep_last is None else check_int("keep_last", keep_last, low=1)
        self.writes = 0
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.last_path: Path | None = None
        self.kept: list[Path] = []

    def on_epoch_end(self, model: Any, epoch: int, logs: dict[str, float]) -> None:
        if (epoch + 1) % self.every:
            return
        improved = True
        if self.monitor is not None:
            if self.monitor not in logs:
                raise ValueError(
                    f"ModelCheckpoint monitors {self.monitor!r}, which the logs do not hold; they hold "
                    f"{sorted(logs)} (val_* keys need validation_data or validation_split)"
                )
            sign = monitor_sign(self.monitor, self.mode)
            value = float(logs[self.monitor])
            improved = not math.isnan(value) and (self.best is None or sign * value < sign * self.best)
            if improved:
                self.best, self.best_epoch = value, epoch
        if self.save_best_only and not improved:
            return
        target = self._target(epoch, logs)
        written = Path(os.path.abspath(save_checkpoint(target, model)))
        self.writes += 1
        self.last_path = written
        self.kept = [p for p in self.kept if p != written] + [written]
        if self.keep_last is not None:
            while len(self.kept) > self.keep_last:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.kept.pop(0))

    def _target(self, epoch: int, logs: dict[str, float]) -> str:
        template = os.fspath(self.path)
        try:
            return template.format(epoch=epoch + 1, **{k: float(v) for k, v in logs.items() if np.ndim(v) == 0})
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"ModelCheckpoint path {template!r} cannot be formatted with epoch and the logs "
                f"{sorted(logs)}: {type(exc).__name__}: {exc}"
            ) from None
