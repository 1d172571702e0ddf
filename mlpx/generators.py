"""A model's random generators as data, so that a checkpoint resumes bit-identically.

Training draws from host generators (:class:`numpy.random.Generator` on PCG64): the
minibatch order of ``fit`` (``Sequential.shuffle_rng_``, see
``Sequential.shuffle_generator``) and each :class:`~mlpx.layers.Dropout` layer's
masks (the network's generators, :meth:`~mlpx.network.Network.dropout_generators`). A resumed run draws what the uninterrupted run would have drawn only if it
starts from the same generator states, so checkpoints carry them
(:func:`generator_states`), check them like the rest of a file
(:func:`check_generator_states`, before anything is changed) and put them back
(:func:`restore_generator_states`).

The record is JSON: ``{"shuffle": <state> or null, "dropout": [<state>, ...]}``,
one dropout state per Dropout layer in layer order, each state NumPy's own
``bit_generator.state`` dict of a PCG64 generator (128-bit integers as JSON
integers). A stack of K members (:class:`~mlpx.stacked.Stack`) has a list of K
states in each place: ``"shuffle"`` (or null) and every Dropout layer's entry.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from mlpx.archive import ModelFileError

__all__ = ["check_generator_states", "generator_states", "restore_generator_states"]

_KEYS = {"shuffle", "dropout"}
_PCG64_KEYS = {"bit_generator", "state", "has_uint32", "uinteger"}


def _members(model: Any) -> bool:
    return hasattr(model, "shuffle_rngs_")


def _shuffle_generators(model: Any) -> list[np.random.Generator] | None:
    """The generators of ``fit``'s order: one (a network) or one per member (a stack)."""
    if _members(model):
        gens: list[np.random.Generator] | None = model.shuffle_rngs_
        return gens
    return None if model.shuffle_rng_ is None else [model.shuffle_rng_]


def _dropout_generators(model: Any) -> list[list[np.random.Generator]]:
    """Every Dropout layer's mask generators, in layer order (one per member)."""
    gens = model.dropout_generators()
    return [gens[i] for i in sorted(gens)]


def generator_states(model: Any) -> dict[str, Any]:
    """The states of ``model``'s shuffle and dropout generators, as JSON-ready data.

    Parameters
    ----------
    model : Sequential or Stack

    Returns
    -------
    dict
        ``{"shuffle": state or None (no fit has shuffled yet), "dropout": [state, ...]}``;
        for a stack every state is a list of the members' states.
    """
    stack = _members(model)

    def pick(states: list[dict[str, Any]]) -> Any:  # a stack keeps every member's state, a network its one
        return states if stack else states[0]

    shuffle = _shuffle_generators(model)
    return {
        "shuffle": None if shuffle is None else pick([_plain(g.bit_generator.state) for g in shuffle]),
        "dropout": [pick([_plain(g.bit_generator.state) for g in layer]) for layer in _dropout_generators(model)],
    }


def _plain(state: Mapping[str, Any]) -> dict[str, Any]:
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


def _check_members(state: Any, what: str, where: str, n_members: int | None) -> None:
    """One generator's state, or a list of the K members' (``n_members``)."""
    if n_members is None:
        _check_pcg64(state, what, where)
        return
    if not isinstance(state, list) or len(state) != n_members:
        raise ModelFileError(f"{where}: {what} must be a list of the {n_members} members' states")
    for k, st in enumerate(state):
        _check_pcg64(st, f"{what}[{k}]", where)


def check_generator_states(states: Any, where: str, n_dropout: int | None = None,
                           n_members: int | None = None) -> None:
    """Check a :func:`generator_states` record.

    Parameters
    ----------
    states : object
        The record as read from a file.
    where : str
        Named in the error.
    n_dropout : int, optional
        Dropout layers of the model it is for (checked when given).
    n_members : int, optional
        The members of the stack it is for (None: a single network).

    Raises
    ------
    ModelFileError
    """
    if not isinstance(states, dict) or set(states) != _KEYS:
        raise ModelFileError(f"{where}: train_state.generators must be an object with keys {sorted(_KEYS)}")
    if states["shuffle"] is not None:
        _check_members(states["shuffle"], "train_state.generators.shuffle", where, n_members)
    dropout = states["dropout"]
    if not isinstance(dropout, list):
        raise ModelFileError(f"{where}: train_state.generators.dropout must be a list")
    if n_dropout is not None and len(dropout) != n_dropout:
        raise ModelFileError(
            f"{where}: the checkpoint holds {len(dropout)} dropout generator states, the model has "
            f"{n_dropout} Dropout layers"
        )
    for i, state in enumerate(dropout):
        _check_members(state, f"train_state.generators.dropout[{i}]", where, n_members)


def restore_generator_states(model: Any, states: dict[str, Any], shuffle: bool = True) -> None:
    """Put :func:`generator_states` back into ``model`` (checked first: nothing changes on error).

    Parameters
    ----------
    model : Sequential or Stack
    states : dict
    shuffle : bool, default True
        Restore the shuffle generator too (in data-parallel training only rank 0's
        was saved, and only rank 0 takes it).

    Raises
    ------
    ModelFileError
        A bad record, or one for another number of Dropout layers.
    """
    layers = _dropout_generators(model)
    stack = _members(model)
    check_generator_states(states, "checkpoint", len(layers), model.n_members if stack else None)
    many = (lambda st: st) if stack else (lambda st: [st])  # noqa: E731
    if shuffle and states["shuffle"] is not None:
        gens = model.shuffle_generators(0) if stack else [model.shuffle_generator(0)]
        for g, st in zip(gens, many(states["shuffle"])):
            g.bit_generator.state = st
    for gens, state in zip(layers, states["dropout"]):
        for g, st in zip(gens, many(state)):
            g.bit_generator.state = st
