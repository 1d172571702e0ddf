"""A model's random generators as data, so that a checkpoint resumes bit-identically.

Training draws from host generators (:class:`numpy.random.Generator` on PCG64): the
minibatch order of ``fit`` (``Sequential.shuffle_rng_``, see
``Sequential.shuffle_generator``) and each :class:`~mlpx.layers.Dropout` layer's
masks. A resumed run draws what the uninterrupted run would have drawn only if it
starts from the same generator states, so checkpoints carry them
(:func:`generator_states`), check them like the rest of a file
(:func:`check_generator_states`, before anything is changed) and put them back
(:func:`restore_generator_states`).

The record is JSON: ``{"shuffle": <state> or null, "dropout": [<state>, ...]}``,
one dropout state per Dropout layer in layer order, each state NumPy's own
``bit_generator.state`` dict of a PCG64 generator (128-bit integers as JSON
integers).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mlpx.archive import ModelFileError
from mlpx.layers import Dropout

__all__ = ["check_generator_states", "generator_states", "restore_generator_states"]

_KEYS = {"shuffle", "dropout"}
_PCG64_KEYS = {"bit_generator", "state", "has_uint32", "uinteger"}


def _dropout_layers(model: Any) -> list[Dropout]:
    return [layer for layer in model.layers if isinstance(layer, Dropout)]


def generator_states(model: Any) -> dict[str, Any]:
    """The states of ``model``'s shuffle and dropout generators, as JSON-ready data.

    Parameters
    ----------
    model : Sequential

    Returns
    -------
    dict
        ``{"shuffle": state or None (no fit has shuffled yet), "dropout": [state, ...]}``.
    """
    rng = model.shuffle_rng_
    return {
        "shuffle": None if rng is None else _plain(rng.bit_generator.state),
        "dropout": [_plain(layer.get_rng_state()) for layer in _dropout_layers(model)],
    }


def _plain(state: dict[str, Any]) -> dict[str, Any]:
    """NumPy's state dict with Python ints only (JSON writes no NumPy integers)."""
    return {
        "bit_generator": str(state["bit_generator"]),
        "state": {k: int(v) for k, v in state["state"].items()},
        "has_uint32": int(state["has_uint32"]),
        "uinteger": int(state["uinteger"]),
    }


def _is_uint(value: Any, bits: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < (1 << bits)


def _check_pcg64(state: Any, what: str, where: str) -> None:
    ok = (
        isinstance(state, dict) and set(state) == _PCG64_KEYS and state["bit_generator"] == "PCG64"
        and isinstance(state["state"], dict) and set(state["state"]) == {"state", "inc"}
        and _is_uint(state["state"]["state"], 128) and _is_uint(state["state"]["inc"], 128)
        and state["has_uint32"] in (0, 1) and not isinstance(state["has_uint32"], bool)
        and _is_uint(state["uinteger"], 32)
    )
    if not ok:
        raise ModelFileError(f"{where}: {what} is not the state of a PCG64 generator")
    try:  # NumPy accepts it (allocates nothing of note)
        np.random.PCG64().state = state
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"{where}: {what} is not a valid PCG64 state ({exc})") from None


def check_generator_states(states: Any, where: str, n_dropout: int | None = None) -> None:
    """Check a :func:`generator_states` record.

    Parameters
    ----------
    states : object
        The record as read from a file.
    where : str
        Named in the error.
    n_dropout : int, optional
        Dropout layers of the model it is for (checked when given).

    Raises
    ------
    ModelFileError
    """
    if not isinstance(states, dict) or set(states) != _KEYS:
        raise ModelFileError(f"{where}: train_state.generators must be an object with keys {sorted(_KEYS)}")
    if states["shuffle"] is not None:
        _check_pcg64(states["shuffle"], "train_state.generators.shuffle", where)
    dropout = states["dropout"]
    if not isinstance(dropout, list):
        raise ModelFileError(f"{where}: train_state.generators.dropout must be a list")
    if n_dropout is not None and len(dropout) != n_dropout:
        raise ModelFileError(
            f"{where}: the checkpoint holds {len(dropout)} dropout generator states, the model has "
            f"{n_dropout} Dropout layers"
        )
    for i, state in enumerate(dropout):
        _check_pcg64(state, f"train_state.generators.dropout[{i}]", where)


def restore_generator_states(model: Any, states: dict[str, Any], shuffle: bool = True) -> None:
    """Put :func:`generator_states` back into ``model`` (checked first: nothing changes on error).

    Parameters
    ----------
    model : Sequential
    states : dict
    shuffle : bool, default True
        Restore the shuffle generator too (in data-parallel training only rank 0's
        was saved, and only rank 0 takes it).

    Raises
    ------
    ModelFileError
        A bad record, or one for another number of Dropout layers.
    """
    layers = _dropout_layers(model)
    check_generator_states(states, "checkpoint", len(layers))
    if shuffle and states["shuffle"] is not None:
        model.shuffle_generator(0).bit_generator.state = states["shuffle"]
    for layer, state in zip(layers, states["dropout"]):
        layer.set_rng_state(state)
