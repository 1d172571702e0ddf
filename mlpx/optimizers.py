"""Optimizers: one rule each, stepping the K members of a model at once.

A model keeps its parameters in one ``(K, n_params)`` buffer: K members of one
architecture, each row laid out as one network's flat buffer (every weight, then
every bias). A single network is K = 1. An optimizer step is one kernel over that
buffer per rule (:mod:`mlpx.updates`: generic Array API, NumPy, numba and CUDA
variants). Each member's
scalars for the step (its rate, bias correction, momentum...) are one column of a
small ``(r, K)`` array that :meth:`Optimizer.vectors` computes on the host, so every
setting may differ between members: it is a scalar (all members) or a sequence of K
(optax's ``inject_hyperparams``: hyperparameters as state).

==========  =======================================================================
SGD         ``v ← μ v − η g``;  ``p ← p + v``  (Nesterov: ``p ← p + μ v − η g``)
Adam        ``m ← β₁m + (1−β₁)g``; ``v ← β₂v + (1−β₂)g²``;
            ``p ← p − η_t m / (√v + ε)``, ``η_t = η √(1−β₂ᵗ) / (1−β₁ᵗ)``
AdamW       Adam, after the decoupled decay of the weights: ``W ← W − η λ W``
RMSprop     ``s ← ρ s + (1−ρ) g²``;  ``p ← p − η g / (√s + ε)``
==========  =======================================================================

SGD and Adam follow scikit-learn's update rules exactly (including where ε sits and
the bias correction folded into ``η_t``), so results are interchangeable with it.

The L2 penalty's gradient ``c_k · W`` (``c_k = l2 / d`` of member k) is added to the
weights' gradient in the same pass, and ``Σ W²`` before the step is returned for the
penalty's loss term. A member whose ``active`` entry is 0 (no rows in the step, or
stopped) keeps its parameters and state.
"""

from __future__ import annotations

import copy
import math
import operator
from typing import Any, Sequence, cast

import numpy as np

from mlpx.backends import Backend
from mlpx.backends.jit import numba_enabled
from mlpx.data import numpy_dtype
from mlpx.schedules import Constant, Schedule, get_schedule, get_schedule_from_state
from mlpx.updates import adam_update, rmsprop_update, sgd_update
from mlpx.validation import (SettingCheck, check_flag, check_positive, check_real, check_setting, per_member,
                             unit_interval)

__all__ = ["OPTIMIZERS", "SGD", "Adam", "AdamW", "Optimizer", "RMSprop", "get_optimizer"]

Array = Any


# --------------------------------------------------------------- optimizers
def _out(values: np.ndarray, single: bool, integer: bool = False) -> Any:
    """A per-member array as the caller sees it: a Python number for a single network."""
    if single:
        return int(values[0]) if integer else float(values[0])
    return values.copy()


class Optimizer:
    """Base class: a rule that updates the K members of a model's parameters.

    Every numeric setting (``lr``, ``momentum``, ``beta_1``, ``beta_2``, ``rho`` in
    [0, 1); ``epsilon`` > 0; ``weight_decay`` >= 0) takes Python or NumPy numbers and
    must be finite; anything else raises
    :class:`~mlpx.validation.InvalidParameterError` (a ValueError and a TypeError).
    Assigning an attribute the optimizer does not have raises AttributeError (a
    misspelt or removed setting is never silently ignored).

    Parameters
    ----------
    lr : float or sequence of float > 0
        Initial learning rate ``η``: one for every member or one per member.
    schedule : str, Schedule or sequence of them, optional
        The rate policy (:mod:`mlpx.schedules`): the rate for the next epoch is set
        by :meth:`iteration_ends` after each epoch, and :meth:`trigger_stopping` asks
        the policy what to do when training stops improving. Each member gets its
        own copy (a sequence: one each).
    **settings
        The rule's own settings (``momentum``, ``beta_1``...): a number, or a
        sequence with one value per member.

    Attributes
    ----------
    lr : float or ndarray of shape (K,)
        The rate in force now: a float for a single network (K = 1), one per member
        otherwise.
    t : int or ndarray of int64, shape (K,)
        Steps taken (per member).
    n_members : int or None
        K once bound (or given by a per-member setting), else None.
    state : dict of str -> array
        Per-parameter state on the backend (``velocity``; ``m``, ``v``; ``s``), each
        of the shape of the bound parameters, allocated by :meth:`bind`.
        :meth:`state_dict` and :meth:`load_state_dict` turn it, with ``t``, ``lr``
        and the schedules' state, into plain data and back (checkpoints, pickling,
        backend moves, divergence rollback).
    """

    #: Names of the per-parameter state buffers.
    state_names: tuple[str, ...] = ()
    #: The rule's settings besides ``lr``, with their checks.
    _checks: dict[str, SettingCheck] = {}
    _kernel: Any = None
    # Set in __init__ (by _members), and by bind (the bound buffers).
    _K: int
    params: Array
    _shape: tuple[int, ...]
    #: What :meth:`bind` attaches (assignable: an immutable backend's new arrays).
    _bound_names = frozenset({"be", "params", "grads", "n_weights", "dtype", "state"})

    def __init__(self, lr: Any, schedule: Any = None, **settings: Any) -> None:
        object.__setattr__(self, "_ready", False)
        self._settings: dict[str, float | np.ndarray] = {}
        for name, check in self._checks.items():
            self._settings[name] = check_setting(name, settings.pop(name), check)
        if settings:
            raise TypeError(f"{type(self).__name__} got unexpected settings {sorted(settings)}")
        self._schedule_spec = schedule
        self._bound: tuple[Any, ...] | None = None
        self._owner: Any = None
        self._pending: dict[str, Any] | None = None
        self._static: np.ndarray | None = None
        self._rows: tuple[list[Array], list[Array]] | None = None
        self._tmp: dict[tuple[Any, Any], Array] = {}
        self.state: dict[str, Array] = {}
        self._members(self._given_members())
        self.lr = lr
        self._ready = True

    # ------------------------------------------------------------ settings
    def _given_members(self) -> int:
        sizes = {len(cast(np.ndarray, v)) for v in self._settings.values() if np.ndim(v)}
        if isinstance(self._schedule_spec, (list, tuple)):
            sizes.add(len(self._schedule_spec))
        if len(sizes) > 1:
            raise ValueError(f"per-member settings of {type(self).__name__} have different lengths {sorted(sizes)}")
        return sizes.pop() if sizes else 1

    def _members(self, K: int) -> None:
        """Size the per-member state (rates, counts, schedules) for K members."""
        spec = self._schedule_spec
        if isinstance(spec, (list, tuple)):
            if len(spec) != K:
                raise ValueError(f"schedule has {len(spec)} entries for {K} members")
            schedules = [copy.deepcopy(get_schedule(s)) for s in spec]
        else:
            one = get_schedule(spec)
            schedules = [one] + [copy.deepcopy(one) for _ in range(K - 1)]
        old = getattr(self, "_t", None)
        self._schedules = schedules
        self._t = np.zeros(K, dtype=np.int64) if old is None or old.size != K else old
        self._K = K
        self._static = None

    @property
    def n_members(self) -> int | None:
        """K, the members this optimizer steps: None before :meth:`bind` unless a per-member setting fixed it."""
        return self._K if (self._bound is not None or self._vector_given()) else None

    def _vector_given(self) -> bool:
        return any(np.ndim(v) for v in self._settings.values()) or np.ndim(self._lr0_given) > 0

    @property
    def _single(self) -> bool:
        return self._K == 1 and not (self._bound is None and self._vector_given())

    def __getattr__(self, name: str) -> Any:
        settings = self.__dict__.get("_settings")
        if settings is not None and name in settings:
            return settings[name]
        raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_") or not self.__dict__.get("_ready", False) or name in self._bound_names:
            object.__setattr__(self, name, value)
            return
        if name in self._checks:
            self._settings[name] = check_setting(name, value, self._checks[name])
            if np.ndim(self._settings[name]) and self._bound is not None:
                per_member(self._settings[name], self._K, name)
            self._static = None
            return
        cls = type(self)
        if isinstance(getattr(cls, name, None), property) and getattr(cls, name).fset is not None:
            object.__setattr__(self, name, value)
            return
        valid = ["lr", "t", *self._checks]
        raise AttributeError(
            f"{cls.__name__} has no setting {name!r} to assign; its settings are {', '.join(valid)} "
            f"(the rate in force is `lr`; the schedule is fixed at construction)")

    @property
    def lr(self) -> Any:
        """The rate in force now (a float for a single network, else shape (K,)).

        Setting it sets the base rate ``lr0`` too (e.g. to retry at a lower rate after
        :class:`~mlpx.training.TrainingDivergedError`); a scalar sets every member.
        """
        return _out(self._lr, self._single)

    @lr.setter
    def lr(self, value: Any) -> None:
        # Python floats from here on: NumPy scalars (np.float32(1e-3), as GridSearchCV
        # grids give) would reach the kernels, which strict namespaces refuse.
        given = check_setting("lr (learning rate)", value, lambda n, v: check_real(n, v, 0.0, low_open=True))
        K = self._K
        if np.ndim(given) and len(vector := cast(np.ndarray, given)) != K:
            if self._bound is not None or K != 1:
                raise ValueError(f"lr has {len(vector)} values for {K} members")
            self._members(len(vector))
            K = self._K
        lr0 = per_member(given, K, "lr")
        for sched, lr in zip(self._schedules, lr0):
            sched(float(lr), 0, 0)  # a schedule that cannot start from this rate fails now
        self._lr0_given = given
        self._lr0 = lr0
        self._lr = lr0.copy()

    @property
    def lr0(self) -> Any:
        """The base rate the schedules start from (read-only: set :attr:`lr`)."""
        return _out(self._lr0, self._single)

    @property
    def t(self) -> Any:
        """Steps taken: an int for a single network, else shape (K,)."""
        return _out(self._t, self._single, integer=True)

    @t.setter
    def t(self, value: Any) -> None:
        t = np.broadcast_to(np.asarray(value, dtype=np.int64), (self._K,))
        if (t < 0).any():
            raise ValueError(f"t must be non-negative, got {value!r}")
        self._t = t.copy()

    @property
    def schedule(self) -> Any:
        """The rate policy: the Schedule of a single network, else a list of K."""
        return self._schedules[0] if self._single else list(self._schedules)

    @property
    def bound(self) -> bool:
        """Whether :meth:`bind` has attached the optimizer to a model's buffers."""
        return self._bound is not None

    # ---------------------------------------------------------------- bind
    def bind(self, be: Backend, params: Array, grads: Array, n_weights: int, owner: Any = None) -> None:
        """Attach to a model's parameter buffers and allocate state (once per model).

        Parameters
        ----------
        be : Backend
            The backend the buffers are on (the state is allocated there).
        params, grads : arrays, shape (K, n_params), or (n_params,) for one network
            The model's parameter and gradient buffers.
        n_weights : int
            Length of the weight prefix of each row (biases follow).
        owner : object, optional
            The model the buffers belong to. Bound again to the same owner (or to the
            same ``params``), the optimizer keeps its state and takes the buffers as
            they are now: on an immutable backend every write of the parameters makes
            a new array.

        Raises
        ------
        ValueError
            Per-member settings whose length is not K.
        """
        shape = tuple(int(d) for d in params.shape)
        if self._bound is not None and shape == self._shape and (
            params is self.params or (owner is not None and owner is self._owner)
        ):
            self.params, self.grads = params, grads
            return
        K = 1 if len(shape) == 1 else shape[0]
        if K != self._K:
            if self._vector_given():
                raise ValueError(f"the optimizer has settings for {self._K} members; the model has {K}")
            lr0, lr = float(self._lr0[0]), float(self._lr[0])
            self._members(K)
            self._lr0, self._lr = np.full(K, lr0), np.full(K, lr)
        for name, value in self._settings.items():
            per_member(value, K, name)
        self.be, self.params, self.grads, self.n_weights = be, params, grads, int(n_weights)
        self._shape = shape
        self._owner = owner
        self.dtype = params.dtype
        self.state = {name: be.zeros(shape, params.dtype) for name in self.state_names}
        self._bound = (be, params)
        self._static = None
        self._tmp = {}
        pending, self._pending = self._pending, None
        if pending is not None:
            self._copy_in(pending)

    # ---------------------------------------------------------- the rows
    def _rule_rows(self, lr: np.ndarray, t: np.ndarray, on: np.ndarray) -> np.ndarray:
        """The rule's per-step rows for the members ``on`` (host, float64).

        Parameters
        ----------
        lr : ndarray, shape (n,)
            The rate in force of each stepping member.
        t : ndarray of int64, shape (n,)
            Its step count after this step.
        on : ndarray of int, shape (n,)
            The members (their indices).

        Returns
        -------
        ndarray, shape (r, n)
            The rows that change with the step (the others are :meth:`_static_rows`).
        """
        raise NotImplementedError

    def _static_rows(self) -> np.ndarray:
        """Rows that do not change between steps, shape (r, K) (the rule's settings)."""
        raise NotImplementedError

    #: Rows of the step's scalars that :meth:`_rule_rows` fills.
    _dynamic: tuple[int, ...] = (0,)

    def vectors(self, active: Any, advance: bool = True) -> np.ndarray:
        """Each member's scalars for one step, or for S steps in a row (host, float64).

        Advances the step count of the members active in each step, as their own
        steps would (``advance=False``: the caller does, with :meth:`advance`, as the
        steps run), and computes each one's rate as the rule defines it (Adam's
        ``lr · √(1 − β₂ᵗ) / (1 − β₁ᵗ)`` in Python floats, once per distinct
        ``(β₁, β₂, t)``). The rates in force do not change between steps: the
        schedules move them at the end of an epoch (:meth:`iteration_ends`).

        Parameters
        ----------
        active : array_like of bool, shape (K,) or (S, K)
            The members that step (in each of S steps); the others keep their
            parameters, state and count.
        advance : bool
            Whether to add the steps to the members' counts now.

        Returns
        -------
        ndarray, shape (r, K) or (S, r, K)
            The rule's rows (see its kernel), the last one ``active`` (0 or 1).
        """
        K = self._K
        steps = np.asarray(active, dtype=bool).reshape(-1, K)
        S = steps.shape[0]
        if self._static is None:
            self._static = self._static_rows()
            r = self._static.shape[0] + len(self._dynamic) + 1
            self._places = (r, [i for i in range(r - 1) if i not in self._dynamic], list(self._dynamic))
        r, rest, dynamic = self._places
        vec = np.zeros((S, r, K))
        vec[:, rest] = self._static
        vec[:, r - 1] = steps
        s_on, on = np.nonzero(steps)
        if on.size:
            # Each member's count after each of its steps: its own steps add one each.
            t_after = self._t + np.cumsum(steps, axis=0)
            rows = self._rule_rows(self._lr[on], t_after[s_on, on], on)
            for i, d in enumerate(dynamic):
                vec[s_on, d, on] = rows[i]
        if advance:
            self.advance(steps.sum(axis=0))
        return vec if np.ndim(active) == 2 else vec[0]

    def advance(self, steps: Any) -> None:
        """Add ``steps`` to the members' step counts.

        Parameters
        ----------
        steps : array_like of bool or int, shape (K,)
            Whether each member stepped, or how many steps it took.
        """
        np.add(self._t, steps, out=self._t, casting="unsafe")

    # ------------------------------------------------------------- update
    def update(self, params: Array, grads: Array, vec: Array, coef: Array | None = None,
               rows: slice = slice(None)) -> tuple[Array, Array | None]:
        """Update ``params[rows]`` with the step's rows ``vec`` (on the device).

        Parameters
        ----------
        params, grads : arrays, shape (K, n_params)
            The bound buffers as they are now (2-D).
        vec : array, shape (r, K)
            :meth:`vectors`, on the device in the parameters' dtype.
        coef : array, shape (K,), optional
            ``l2 / d`` per member, added to the weights' gradient in the same pass.
        rows : slice
            The members to update (a chunk of a stack); the default is all.

        Returns
        -------
        params : array, shape of ``params[rows]``
            Updated in place on NumPy and CuPy; a new array on the generic path.
        sq : array, shape (len(rows),), or None
            ``Σ W²`` per member before the step (None without ``coef``).
        """
        whole = rows.start is None and rows.stop is None
        state = self.state_rows()
        if whole:
            p, g, v, c, mine = params, grads, vec, coef, state
        else:
            p, g, v, mine = params[rows], grads[rows], vec[:, rows], [s[rows] for s in state]
            c = None if coef is None else coef[rows]
        tmp = self._scratch(rows, p) if self._keeps_scratch else None
        p, *new, sq = self.be.run(self._kernel, p, g, *mine, v, c, self.n_weights, tmp=tmp)
        if whole and any(a is not b for a, b in zip(new, state)):  # not updated in place
            self._store_state(new)
        return p, sq

    @property
    def _keeps_scratch(self) -> bool:
        # The NumPy variants' temporary (the numba and CUDA ones need none).
        be = self.be
        return be.in_place and not be.is_gpu and not numba_enabled()

    def _scratch(self, rows: slice, p: Array) -> Array:
        """A buffer of ``p``'s shape for the update of ``rows``, kept between steps."""
        key = (rows.start, rows.stop)
        buf = self._tmp.get(key)
        if buf is None or buf.shape != p.shape or buf.dtype != p.dtype:
            buf = self._tmp[key] = self.be.empty(tuple(p.shape), p.dtype)
        return buf

    def state_rows(self) -> list[Array]:
        """Every state buffer, in ``state_names`` order, as rows of the K members.

        Returns
        -------
        list of arrays, shape (K, n_params)
            The state buffers themselves, or views of those of a network bound with
            1-D buffers (kept while the buffers are).
        """
        cached = self._rows
        if cached is not None and all(map(operator.is_, cached[0], map(self.state.__getitem__, self.state_names))):
            return cached[1]
        xp = self.be.xp
        rows = [xp.reshape(self.state[n], (1, -1)) if len(self._shape) == 1 else self.state[n]
                for n in self.state_names]
        self._rows = ([self.state[n] for n in self.state_names], rows)
        return rows

    def _store_state(self, arrays: Sequence[Array]) -> None:
        """Keep the kernel's new state arrays (an immutable backend's)."""
        xp = self.be.xp
        for name, a in zip(self.state_names, arrays):
            if len(self._shape) == 1:
                a = xp.reshape(a, self._shape)
            self.state[name] = self.be.assign(self.state[name], a)

    def step(self, params: Array | None = None, grads: Array | None = None) -> Array:
        """One step of every member from the gradients; return the updated parameters.

        Parameters
        ----------
        params, grads : arrays, shape of the bound ones, optional
            The bound model's buffers as they are now (default: the bound ones). An
            immutable backend makes new arrays at every write, so the model passes
            its current ones.

        Returns
        -------
        array
            The updated parameters: ``params`` itself, updated in place, on mutable
            backends; a new array on immutable ones (the caller stores it).
        """
        if self._bound is None:
            raise RuntimeError(f"{type(self).__name__} is not bound to a model's parameters: call bind() first")
        if params is not None:
            self.params = params
        if grads is not None:
            self.grads = grads
        be, xp = self.be, self.be.xp
        vec = self.vectors(np.ones(self._K, dtype=bool))
        dev = be.asarray(vec.astype(numpy_dtype(self.dtype)), dtype=self.dtype)
        flat = len(self._shape) == 1
        p2 = xp.reshape(self.params, (1, -1)) if flat else self.params
        g2 = xp.reshape(self.grads, (1, -1)) if flat else self.grads
        p2, _ = self.update(p2, g2, dev)
        self.params = be.assign(self.params, xp.reshape(p2, self._shape) if flat else p2)
        return self.params

    # -------------------------------------------------------- rate policy
    def iteration_ends(self, epochs_done: int, samples_seen: Any) -> None:
        """Set each member's rate for the next epoch from its schedule (after each epoch).

        Parameters
        ----------
        epochs_done : int
            Epochs completed by the model so far.
        samples_seen : int or array_like of shape (K,)
            Samples each member has trained on so far (scikit-learn's ``t_``).
        """
        seen = np.broadcast_to(np.asarray(samples_seen), (self._K,))
        for k, sched in enumerate(self._schedules):
            self._lr[k] = sched(float(self._lr0[k]), int(epochs_done), int(seen[k]))

    def trigger_stopping(self, message: str = "", verbose: bool = False, member: int | None = None) -> bool:
        """Training stopped improving: True to stop, False when the policy lowered the rate.

        As scikit-learn's optimizers: only an adaptive schedule continues (dividing the
        rate by 5) until the rate falls to 1e-6.

        Parameters
        ----------
        message : str
            Printed first when ``verbose``.
        verbose : bool
            Print what the policy decided.
        member : int, optional
            The member that stopped improving (required when K > 1).

        Returns
        -------
        bool
            True to stop training the member; False when its rate was lowered.
        """
        if member is None:
            if self._K != 1:
                raise ValueError(f"trigger_stopping needs the member (0..{self._K - 1}) for {self._K} members")
            member = 0
        sched = self._schedules[member]
        lr = sched.on_plateau(float(self._lr[member]))
        if lr is None:
            if verbose:
                print(message + (" Learning rate too small. Stopping." if sched.adaptive else " Stopping."))
            return True
        self._lr[member] = lr
        if verbose:
            print(message + " Setting learning rate to %f" % lr)
        return False

    # --------------------------------------------------------------- state
    def state_dict(self, to_host: bool = True) -> dict[str, Any]:
        """The optimizer's whole state as data.

        Parameters
        ----------
        to_host : bool, default True
            Host (NumPy) copies of the state buffers; False keeps device copies
            (a cheap snapshot for rollback).

        Returns
        -------
        dict
            ``{"optimizer": class name, "config": get_config(), "t", "lr",
            "schedule": schedule state, "state": {name: array}}``; for a single
            network ``t`` is an int, ``lr`` a float and ``schedule`` one schedule's
            state, else lists of K. ``state`` is empty before :meth:`bind`.
        """
        arrays: dict[str, Any] = {}
        single = self._single
        for name, buf in self.state.items():
            if to_host:
                arrays[name] = np.array(self.be.to_numpy(buf), copy=True)
                if single:  # a network's state is saved as it always was: (n_params,)
                    arrays[name] = arrays[name].reshape(-1)
            else:
                arrays[name] = self.be.copy(buf, self.be.empty(buf.shape, buf.dtype))
        if not arrays and self._pending is not None:
            arrays = dict(self._pending)
        scheds = [s.state_dict() for s in self._schedules]
        return {
            "optimizer": type(self).__name__,
            "config": self.get_config(),
            "t": _out(self._t, single, integer=True) if single else self._t.tolist(),
            "lr": float(self._lr[0]) if single else self._lr.tolist(),
            "schedule": scheds[0] if single else scheds,
            "state": arrays,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (host or device arrays).

        Before :meth:`bind` the buffers are kept and copied in when the optimizer
        is bound.

        Parameters
        ----------
        state : dict
            A record of :meth:`state_dict`, of this optimizer class.

        Raises
        ------
        ValueError
            The state belongs to another optimizer class, another number of members
            or another parameter count.
        """
        if state.get("optimizer") != type(self).__name__:
            raise ValueError(f"state of {state.get('optimizer')!r} cannot be loaded into {type(self).__name__}")
        arrays = state.get("state", {})
        unknown = set(arrays) - set(self.state_names)
        if unknown:
            raise ValueError(f"{type(self).__name__} has no state named {sorted(unknown)}")
        t = np.atleast_1d(np.asarray(state["t"], dtype=np.int64))
        lr = np.atleast_1d(np.asarray(state["lr"], dtype=np.float64))
        scheds = state.get("schedule", {})
        scheds = scheds if isinstance(scheds, list) else [scheds] * t.size
        if not t.size == lr.size == len(scheds):
            raise ValueError("saved optimizer state: t, lr and schedule disagree on the number of members")
        if t.size != self._K:
            if self._bound is not None or self._vector_given():
                raise ValueError(f"saved state of {t.size} members cannot be loaded into {self._K}")
            lr0 = float(self._lr0[0])
            self._members(t.size)
            self._lr0 = np.full(t.size, lr0)
        self._t = t.copy()
        self._lr = lr.copy()
        for sched, s in zip(self._schedules, scheds):
            sched.load_state_dict(s or {})
        if self._bound is None:
            self._pending = dict(arrays)
            return
        self._copy_in(arrays)

    def _copy_in(self, arrays: dict[str, Any]) -> None:
        be = self.be
        for name, value in arrays.items():
            buf = self.state[name]
            if tuple(value.shape) != tuple(buf.shape) and self._K == 1 and int(np.prod(value.shape)) == int(
                    np.prod(buf.shape)) and len(value.shape) in (1, 2):
                value = be.xp.reshape(value, tuple(buf.shape)) if not isinstance(value, np.ndarray) \
                    else value.reshape(buf.shape)  # one network's state, saved 1-D or 2-D
            if tuple(value.shape) != tuple(buf.shape):
                raise ValueError(f"state {name!r} has shape {tuple(value.shape)}, the optimizer {tuple(buf.shape)}")
            src = be.asarray(value, dtype=buf.dtype) if isinstance(value, np.ndarray) else value
            self.state[name] = be.copy(src, buf)

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "Optimizer":
        """A new optimizer of the saved class and settings, holding the saved state.

        Parameters
        ----------
        state : dict
            A record of :meth:`state_dict`.

        Returns
        -------
        Optimizer
            An optimizer of the class the record names (whatever class this is
            called on).
        """
        kind = OPTIMIZERS.get(str(state.get("optimizer", "")).lower())
        if kind is None:
            raise ValueError(f"unknown optimizer {state.get('optimizer')!r} in saved state")
        config = dict(state.get("config", {}))
        schedule = config.pop("schedule", None)
        if isinstance(schedule, list):
            schedule = [get_schedule_from_state(s) for s in schedule]
        else:
            schedule = get_schedule_from_state(schedule)
        opt = kind(**config, schedule=schedule)
        opt.load_state_dict(state)
        return opt

    # ------------------------------------------------------------- members
    @classmethod
    def stack(cls, optimizers: Sequence["Optimizer"]) -> "Optimizer":
        """One optimizer stepping K members, from K single-network optimizers of one class.

        Each member takes its optimizer's settings, rate, step count, schedule and
        (bound or saved) state, as ``torch.func.stack_module_state`` stacks modules.

        Parameters
        ----------
        optimizers : sequence of Optimizer
            K optimizers of single networks, all of one class.

        Returns
        -------
        Optimizer
            A new optimizer of that class for K members, member k from
            ``optimizers[k]``; its state is copied in when it is bound.

        Raises
        ------
        TypeError
            Not optimizers, or of different classes.
        ValueError
            No optimizers, or one that steps several members already.
        """
        opts = list(optimizers)
        if not opts:
            raise ValueError("Optimizer.stack needs at least one optimizer")
        if not all(isinstance(o, Optimizer) for o in opts):
            raise TypeError("Optimizer.stack takes mlpx optimizers")
        kinds = {type(o) for o in opts}
        if len(kinds) > 1:
            raise TypeError(f"a stack steps one optimizer class; got {sorted(k.__name__ for k in kinds)}")
        if any(o._K != 1 for o in opts):
            raise ValueError("Optimizer.stack takes optimizers of single networks")
        kind = kinds.pop()
        saved = [o.state_dict() for o in opts]
        config: dict[str, Any] = {}
        for name in ("lr", *kind._checks):
            values = [s["config"][name] for s in saved]
            config[name] = values[0] if len(set(map(float, values))) == 1 else values
        config["schedule"] = [copy.deepcopy(o._schedules[0]) for o in opts]
        out = kind(**config)
        out._lr0 = np.array([float(o._lr0[0]) for o in opts])
        out._lr = np.array([s["lr"] for s in saved], dtype=np.float64)
        out._t = np.array([s["t"] for s in saved], dtype=np.int64)
        for o, sched in zip(opts, out._schedules):
            sched.load_state_dict(o._schedules[0].state_dict())
        if any(s["state"] for s in saved):
            P = next(np.size(a) for s in saved for a in s["state"].values())
            out._pending = {name: np.stack([np.asarray(s["state"].get(name, np.zeros(P))).reshape(P)
                                            for s in saved]) for name in kind.state_names}
        return out

    def member(self, k: int) -> "Optimizer":
        """Member ``k`` as a single-network optimizer.

        Parameters
        ----------
        k : int
            The member (negative counts from the end).

        Returns
        -------
        Optimizer
            A new optimizer of this class with the member's settings, rate, count,
            schedule and state (host copies, loaded into the model it is bound to
            next).

        Raises
        ------
        IndexError
            ``k`` is out of range.
        """
        K = self._K
        if not -K <= int(k) < K:
            raise IndexError(f"member {k} out of range for {K} members")
        k = int(k) % K
        config = {name: self._plain(name, v if np.ndim(v) == 0 else cast(np.ndarray, v)[k])
                  for name, v in self._settings.items()}
        out = type(self)(lr=float(self._lr0[k]), schedule=copy.deepcopy(self._schedules[k]), **config)
        out._lr = np.array([self._lr[k]])
        out._t = np.array([self._t[k]], dtype=np.int64)
        arrays = {name: np.array(self.be.to_numpy(self.state_rows()[i][k]), copy=True)
                  for i, name in enumerate(self.state_names)} if self.state else {}
        if not arrays and self._pending:
            arrays = {name: np.asarray(a)[k] for name, a in self._pending.items()}
        if arrays:
            out._pending = arrays
        return out

    # ------------------------------------------------------------ config
    @staticmethod
    def _plain(name: str, value: Any) -> Any:
        """One member's setting as the constructor takes it."""
        return float(value)

    def get_config(self) -> dict[str, Any]:
        """The settings as plain data, from which the optimizer is rebuilt.

        Returns
        -------
        dict
            ``lr`` (the base rate), ``schedule`` (its config, or a list of K) and the
            rule's settings: numbers, or lists of K.
        """
        def plain(v: Any) -> Any:
            return v.tolist() if isinstance(v, np.ndarray) else v

        scheds = [s.get_config() for s in self._schedules]
        same_lr = bool((self._lr0 == self._lr0[0]).all()) and np.ndim(self._lr0_given) == 0
        lr0 = float(self._lr0[0]) if self._single or same_lr else self._lr0.tolist()
        same = all(s == scheds[0] for s in scheds)
        return {"lr": lr0, "schedule": scheds[0] if same and not isinstance(self._schedule_spec, (list, tuple))
                else scheds, **{k: plain(v) for k, v in self._settings.items()}}

    def __getstate__(self) -> dict[str, Any]:
        # Device buffers do not pickle portably: pickle the state as host data.
        return {"saved": self.state_dict()}

    def __setstate__(self, data: dict[str, Any]) -> None:
        new = type(self).from_state_dict(data["saved"])
        self.__dict__.update(new.__dict__)

    def __deepcopy__(self, memo: dict[int, Any]) -> "Optimizer":
        return type(self).from_state_dict(self.state_dict())

    def __repr__(self) -> str:
        cfg = self.get_config()
        sched = cfg.pop("schedule")
        args = ", ".join(f"{k}={v!r}" for k, v in cfg.items())
        if sched != Constant().get_config():
            args += f", schedule={self.schedule!r}"
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent with (Nesterov) momentum, as scikit-learn's.

    Parameters
    ----------
    lr : float or sequence, default 0.01
        Initial learning rate ``η`` (> 0): one for every member or one per member.
    momentum : float or sequence in [0, 1], default 0.9
        ``μ``; it may be 1, as scikit-learn allows.
    nesterov : bool or sequence of bool, default False
        Nesterov's momentum (the step looks ahead along the velocity).
    schedule : str, Schedule or sequence, optional
        The rate policy (:mod:`mlpx.schedules`); default constant.
    """

    state_names = ("velocity",)
    _checks = {"momentum": unit_interval(), "nesterov": check_flag}
    _kernel = sgd_update

    def __init__(self, lr: Any = 0.01, momentum: Any = 0.9, nesterov: Any = False, schedule: Any = None) -> None:
        super().__init__(lr, schedule, momentum=momentum, nesterov=nesterov)

    def __getattr__(self, name: str) -> Any:
        value = super().__getattr__(name)
        if name == "nesterov":
            return bool(value) if np.ndim(value) == 0 else value.astype(bool)
        return value

    @staticmethod
    def _plain(name: str, value: Any) -> Any:
        return bool(value) if name == "nesterov" else float(value)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        nest = config["nesterov"]
        config["nesterov"] = bool(nest) if np.ndim(nest) == 0 else [bool(v) for v in nest]
        return config

    def _static_rows(self) -> np.ndarray:
        K = self._K
        return np.stack([per_member(self._settings["momentum"], K, "momentum"),
                         per_member(self._settings["nesterov"], K, "nesterov")])

    def _rule_rows(self, lr: np.ndarray, t: np.ndarray, on: np.ndarray) -> np.ndarray:
        return lr[None, :]


class Adam(Optimizer):
    """Adam (Kingma & Ba), with scikit-learn's placement of ε and bias correction.

    Parameters
    ----------
    lr : float or sequence, default 1e-3
        Initial learning rate ``η`` (> 0): one for every member or one per member.
    beta_1 : float or sequence in [0, 1), default 0.9
        Decay rate ``β₁`` of the gradients' running mean.
    beta_2 : float or sequence in [0, 1), default 0.999
        Decay rate ``β₂`` of the squared gradients' running mean.
    epsilon : float or sequence > 0, default 1e-8
        ``ε``, added to ``√v`` (keeps the step finite where ``v`` is 0).
    schedule : str, Schedule or sequence, optional
        The rate policy (:mod:`mlpx.schedules`); default constant.
    **settings
        A subclass's own settings (AdamW's ``weight_decay``).
    """

    state_names = ("m", "v")
    _checks = {"beta_1": unit_interval(high_open=True), "beta_2": unit_interval(high_open=True),
               "epsilon": check_positive}
    _kernel = adam_update

    def __init__(self, lr: Any = 1e-3, beta_1: Any = 0.9, beta_2: Any = 0.999, epsilon: Any = 1e-8,
                 schedule: Any = None, **settings: Any) -> None:
        super().__init__(lr, schedule, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, **settings)

    def _static_rows(self) -> np.ndarray:
        K = self._K
        b1 = per_member(self._settings["beta_1"], K, "beta_1")
        b2 = per_member(self._settings["beta_2"], K, "beta_2")
        eps = per_member(self._settings["epsilon"], K, "epsilon")
        pairs: dict[tuple[float, float], int] = {}
        self._beta_group = [pairs.setdefault((float(a), float(b)), len(pairs)) for a, b in zip(b1, b2)]
        self._beta_pairs = list(pairs)
        return np.stack([b1, 1.0 - b1, b2, 1.0 - b2, eps])

    _dynamic = (0, 6)

    def _rule_rows(self, lr: np.ndarray, t: np.ndarray, on: np.ndarray) -> np.ndarray:
        # The bias corrections in Python floats (C's pow, as scikit-learn's), once per
        # distinct (β₁, β₂, t): one per step for members of one setting.
        c = np.empty((2, on.size))
        memo: dict[tuple[int, int], tuple[float, float]] = {}
        group, pairs = self._beta_group, self._beta_pairs
        for i, (k, tk) in enumerate(zip(on.tolist(), t.tolist())):
            key = (group[k], tk)
            got = memo.get(key)
            if got is None:
                b1, b2 = pairs[key[0]]
                got = memo[key] = (math.sqrt(1 - b2**tk), 1 - b1**tk)
            c[0, i], c[1, i] = got
        return np.stack([-(lr * c[0] / c[1]), self._decay(lr, on)])

    def _decay(self, lr: np.ndarray, on: np.ndarray) -> np.ndarray:
        return np.ones(on.size)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter) on the weights only.

    Biases are not decayed: they sit after the weights in the flat buffer, so the
    decay is a factor ``1 − η λ`` on the weight prefix, in the update's own pass.

    Parameters
    ----------
    lr : float or sequence, default 1e-3
        Initial learning rate ``η`` (> 0): one for every member or one per member.
    weight_decay : float or sequence >= 0, default 0.01
        ``λ``: each step multiplies the weights by ``1 − η λ``.
    **kwargs
        Adam's settings (``beta_1``, ``beta_2``, ``epsilon``, ``schedule``).
    """

    _checks = {**Adam._checks, "weight_decay": lambda name, v: check_real(name, v, 0.0)}

    def __init__(self, lr: Any = 1e-3, weight_decay: Any = 0.01, **kwargs: Any) -> None:
        super().__init__(lr, weight_decay=weight_decay, **kwargs)

    def _decay(self, lr: np.ndarray, on: np.ndarray) -> np.ndarray:
        factor: np.ndarray = 1.0 - lr * per_member(self._settings["weight_decay"], self._K, "weight_decay")[on]
        return factor


class RMSprop(Optimizer):
    """RMSprop (Hinton): per-parameter rates from a running mean of g².

    Parameters
    ----------
    lr : float or sequence, default 1e-3
        Initial learning rate ``η`` (> 0): one for every member or one per member.
    rho : float or sequence in [0, 1), default 0.9
        Decay rate ``ρ`` of the squared gradients' running mean.
    epsilon : float or sequence > 0, default 1e-8
        ``ε``, added to ``√s`` (keeps the step finite where ``s`` is 0).
    schedule : str, Schedule or sequence, optional
        The rate policy (:mod:`mlpx.schedules`); default constant.
    """

    state_names = ("s",)
    _checks = {"rho": unit_interval(high_open=True), "epsilon": check_positive}
    _kernel = rmsprop_update

    def __init__(self, lr: Any = 1e-3, rho: Any = 0.9, epsilon: Any = 1e-8, schedule: Any = None) -> None:
        super().__init__(lr, schedule, rho=rho, epsilon=epsilon)

    def _static_rows(self) -> np.ndarray:
        K = self._K
        rho = per_member(self._settings["rho"], K, "rho")
        return np.stack([rho, 1.0 - rho, per_member(self._settings["epsilon"], K, "epsilon")])

    def _rule_rows(self, lr: np.ndarray, t: np.ndarray, on: np.ndarray) -> np.ndarray:
        return lr[None, :]


#: Optimizer class by name (``optimizer=`` of ``fit``).
OPTIMIZERS: dict[str, type[Optimizer]] = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop}


def get_optimizer(spec: str | Optimizer, **kwargs: Any) -> Optimizer:
    """An optimizer from a name and settings, or an instance passed through.

    Parameters
    ----------
    spec : str or Optimizer
        A name of :data:`OPTIMIZERS`, in any case, or an instance.
    **kwargs
        The settings of a named optimizer (scalars, or per-member sequences).
        Settings given with an instance are an error, not silently dropped:
        configure the instance itself (``Adam(lr=0.01)``).

    Returns
    -------
    Optimizer
        A new optimizer, or ``spec`` itself.

    Raises
    ------
    ValueError
        An unknown name, or settings given with an instance.
    """
    if isinstance(spec, Optimizer):
        if kwargs:
            raise ValueError(
                f"settings {sorted(kwargs)} were given with an optimizer instance {spec!r}; "
                f"set them on the instance instead, e.g. {type(spec).__name__}(lr=...)"
            )
        return spec
    key = str(spec).lower()
    if key not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {spec!r}; valid: {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[key](**kwargs)
