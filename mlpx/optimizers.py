"""Optimizers: updates over the model's flat parameter buffer.

The model keeps every parameter in one contiguous 1-D buffer (weights first, then
biases) and every gradient in a second one. An optimizer step is therefore a few
whole-buffer operations, one kernel launch on the GPU, not a loop over layers.
Scalars (learning rate, bias corrections) are computed on the host as Python floats.
On NumPy and CuPy the buffers are updated in place; on an immutable backend (JAX) a
step returns new parameter and state arrays, which the optimizer keeps and
:meth:`Optimizer.step` returns to the model.

==========  =======================================================================
SGD         ``v ← μ v − η g``;  ``p ← p + v``  (Nesterov: ``p ← p + μ v − η g``)
Adam        ``m ← β₁m + (1−β₁)g``; ``v ← β₂v + (1−β₂)g²``;
            ``p ← p − η_t m / (√v + ε)``, ``η_t = η √(1−β₂ᵗ) / (1−β₁ᵗ)``
AdamW       Adam, then decoupled decay of the weights: ``W ← W − η λ W``
RMSprop     ``s ← ρ s + (1−ρ) g²``;  ``p ← p − η g / (√s + ε)``
==========  =======================================================================

SGD and Adam follow scikit-learn's update rules exactly (including where ε sits and
the bias correction folded into ``η_t``), so results are interchangeable with it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mlpx.backends import Backend, kernel
from mlpx.backends.cuda import lazy_elementwise
from mlpx.backends.jit import lazy_njit
from mlpx.schedules import Constant, Schedule, get_schedule, get_schedule_from_state
from mlpx.validation import check_bool, check_real

__all__ = ["OPTIMIZERS", "SGD", "Adam", "AdamW", "Optimizer", "RMSprop", "get_optimizer"]

Array = Any


# ------------------------------------------------------------------ kernels
# Each returns the updated parameters and state, (p, v), (p, m, v) or (p, s): the very
# buffers for the fast variants, which update them in place; ``tmp`` is scratch.
@kernel
def sgd_update(
    xp: Any, p: Array, g: Array, v: Array, tmp: Array, lr: float, momentum: float, nesterov: bool
) -> tuple[Array, Array]:
    v = momentum * v - lr * g
    if nesterov:
        return p + (momentum * v - lr * g), v
    return p + v, v


@sgd_update.register("numpy")
def _sgd_update_np(
    xp: Any, p: Array, g: Array, v: Array, tmp: Array, lr: float, momentum: float, nesterov: bool
) -> tuple[Array, Array]:
    xp.multiply(g, lr, out=tmp)
    xp.multiply(v, momentum, out=v)
    xp.subtract(v, tmp, out=v)
    if nesterov:
        # p += μ v − η g, with tmp still holding η g
        xp.subtract(p, tmp, out=p)
        xp.multiply(v, momentum, out=tmp)
        xp.add(p, tmp, out=p)
    else:
        xp.add(p, v, out=p)
    return p, v


@kernel
def adam_update(
    xp: Any, p: Array, g: Array, m: Array, v: Array, tmp: Array, lr_t: float, beta_1: float, beta_2: float,
    epsilon: float,
) -> tuple[Array, Array, Array]:
    m = beta_1 * m + (1.0 - beta_1) * g
    v = beta_2 * v + (1.0 - beta_2) * (g * g)
    return p + (-lr_t * m / (xp.sqrt(v) + epsilon)), m, v


@adam_update.register("numpy")
def _adam_update_np(
    xp: Any, p: Array, g: Array, m: Array, v: Array, tmp: Array, lr_t: float, beta_1: float, beta_2: float,
    epsilon: float,
) -> tuple[Array, Array, Array]:
    xp.multiply(m, beta_1, out=m)
    xp.multiply(g, 1.0 - beta_1, out=tmp)
    xp.add(m, tmp, out=m)
    xp.multiply(v, beta_2, out=v)
    xp.multiply(g, g, out=tmp)
    xp.multiply(tmp, 1.0 - beta_2, out=tmp)
    xp.add(v, tmp, out=v)
    xp.sqrt(v, out=tmp)
    xp.add(tmp, epsilon, out=tmp)
    xp.divide(m, tmp, out=tmp)
    xp.multiply(tmp, -lr_t, out=tmp)
    xp.add(p, tmp, out=p)
    return p, m, v


@kernel
def rmsprop_update(
    xp: Any, p: Array, g: Array, s: Array, tmp: Array, lr: float, rho: float, epsilon: float
) -> tuple[Array, Array]:
    s = rho * s + (1.0 - rho) * (g * g)
    return p - lr * g / (xp.sqrt(s) + epsilon), s


@rmsprop_update.register("numpy")
def _rmsprop_update_np(
    xp: Any, p: Array, g: Array, s: Array, tmp: Array, lr: float, rho: float, epsilon: float
) -> tuple[Array, Array]:
    xp.multiply(s, rho, out=s)
    xp.multiply(g, g, out=tmp)
    xp.multiply(tmp, 1.0 - rho, out=tmp)
    xp.add(s, tmp, out=s)
    xp.sqrt(s, out=tmp)
    xp.add(tmp, epsilon, out=tmp)
    xp.divide(g, tmp, out=tmp)
    xp.multiply(tmp, lr, out=tmp)
    xp.subtract(p, tmp, out=p)
    return p, s


# numba variants: one pass over the flat buffers instead of 4-12 NumPy passes
# (timings in benchmarks/README.md). The loops repeat
# the NumPy variants' operations in the same order, and the scalars are converted
# to the buffers' dtype first, as NumPy converts Python floats, so both give the
# same bits. Without fastmath the loop still vectorises: the sqrt and the division
# are IEEE operations that LLVM maps onto SIMD instructions.
@lazy_njit
def _sgd_loop(p: Array, g: Array, v: Array, lr: Any, momentum: Any, nesterov: bool) -> None:
    for i in range(p.shape[0]):
        step = g[i] * lr
        vi = v[i] * momentum - step
        v[i] = vi
        if nesterov:
            p[i] = (p[i] - step) + vi * momentum
        else:
            p[i] = p[i] + vi


@sgd_update.register("numba")
def _sgd_update_numba(
    xp: Any, p: Array, g: Array, v: Array, tmp: Array, lr: float, momentum: float, nesterov: bool
) -> tuple[Array, Array]:
    t = p.dtype.type
    _sgd_loop(p, g, v, t(lr), t(momentum), bool(nesterov))
    return p, v


@lazy_njit
def _adam_loop(
    p: Array, g: Array, m: Array, v: Array, neg_lr_t: Any, beta_1: Any, c_1: Any, beta_2: Any, c_2: Any,
    epsilon: Any,
) -> None:
    for i in range(p.shape[0]):
        gi = g[i]
        mi = m[i] * beta_1 + gi * c_1
        vi = v[i] * beta_2 + (gi * gi) * c_2
        m[i] = mi
        v[i] = vi
        p[i] = p[i] + (mi / (np.sqrt(vi) + epsilon)) * neg_lr_t


@adam_update.register("numba")
def _adam_update_numba(
    xp: Any, p: Array, g: Array, m: Array, v: Array, tmp: Array, lr_t: float, beta_1: float, beta_2: float,
    epsilon: float,
) -> tuple[Array, Array, Array]:
    t = p.dtype.type
    _adam_loop(p, g, m, v, t(-lr_t), t(beta_1), t(1.0 - beta_1), t(beta_2), t(1.0 - beta_2), t(epsilon))
    return p, m, v


@lazy_njit
def _rmsprop_loop(p: Array, g: Array, s: Array, lr: Any, rho: Any, c_rho: Any, epsilon: Any) -> None:
    for i in range(p.shape[0]):
        gi = g[i]
        si = s[i] * rho + (gi * gi) * c_rho
        s[i] = si
        p[i] = p[i] - (gi / (np.sqrt(si) + epsilon)) * lr


@rmsprop_update.register("numba")
def _rmsprop_update_numba(
    xp: Any, p: Array, g: Array, s: Array, tmp: Array, lr: float, rho: float, epsilon: float
) -> tuple[Array, Array]:
    t = p.dtype.type
    _rmsprop_loop(p, g, s, t(lr), t(rho), t(1.0 - rho), t(epsilon))
    return p, s


@kernel
def scale_(xp: Any, a: Array, n: int, factor: float) -> Array:
    """``a`` with its prefix ``a[:n]`` multiplied by ``factor`` (in place on NumPy and CuPy)."""
    return xp.concat([a[:n] * factor, a[n:]])


@scale_.register("numpy")
def _scale_np(xp: Any, a: Array, n: int, factor: float) -> Array:
    xp.multiply(a[:n], factor, out=a[:n])
    return a


# CUDA variants: one launch over the whole flat buffer. Scalars arrive as Python
# floats and are cast to T, as the NumPy definitions cast them.
_sgd_cuda = lazy_elementwise(
    "T g, T lr, T momentum, bool nesterov",
    "T p, T v",
    """
    T vi = momentum * v - lr * g;
    v = vi;
    p = nesterov ? p + (momentum * vi - lr * g) : p + vi;
    """,
    "mlpx_sgd_update",
    scalars=("lr", "momentum", "nesterov"),
)


@sgd_update.register("cupy")
def _sgd_update_cupy(
    xp: Any, p: Array, g: Array, v: Array, tmp: Array, lr: float, momentum: float, nesterov: bool
) -> tuple[Array, Array]:
    _sgd_cuda(g, lr, momentum, bool(nesterov), p, v)
    return p, v


_adam_cuda = lazy_elementwise(
    "T g, T lr_t, T beta_1, T c_1, T beta_2, T c_2, T epsilon",
    "T p, T m, T v",
    """
    T mi = beta_1 * m + c_1 * g;
    T vi = beta_2 * v + c_2 * (g * g);
    m = mi;
    v = vi;
    p = p + (-lr_t * mi / (sqrt(vi) + epsilon));
    """,
    "mlpx_adam_update",
    scalars=("lr_t", "beta_1", "c_1", "beta_2", "c_2", "epsilon"),
)


@adam_update.register("cupy")
def _adam_update_cupy(
    xp: Any, p: Array, g: Array, m: Array, v: Array, tmp: Array, lr_t: float, beta_1: float, beta_2: float,
    epsilon: float,
) -> tuple[Array, Array, Array]:
    _adam_cuda(g, lr_t, beta_1, 1.0 - beta_1, beta_2, 1.0 - beta_2, epsilon, p, m, v)
    return p, m, v


_rmsprop_cuda = lazy_elementwise(
    "T g, T lr, T rho, T c_rho, T epsilon",
    "T p, T s",
    """
    T si = rho * s + c_rho * (g * g);
    s = si;
    p = p - lr * g / (sqrt(si) + epsilon);
    """,
    "mlpx_rmsprop_update",
    scalars=("lr", "rho", "c_rho", "epsilon"),
)


@rmsprop_update.register("cupy")
def _rmsprop_update_cupy(
    xp: Any, p: Array, g: Array, s: Array, tmp: Array, lr: float, rho: float, epsilon: float
) -> tuple[Array, Array]:
    _rmsprop_cuda(g, lr, rho, 1.0 - rho, epsilon, p, s)
    return p, s


# --------------------------------------------------------------- optimizers
class Optimizer:
    """Base class: a rule that updates a flat parameter buffer from its gradient.

    Parameters
    ----------
    lr : float > 0
        Initial learning rate ``η``.
    schedule : str or Schedule, optional
        The rate policy (:mod:`mlpx.schedules`): the rate for the next epoch is
        set by :meth:`iteration_ends` after each epoch, and :meth:`trigger_stopping`
        asks the policy what to do when training stops improving.

    Every numeric setting (``lr``, ``momentum``, ``beta_1``, ``beta_2``, ``rho`` in
    [0, 1); ``epsilon`` > 0; ``weight_decay`` >= 0) takes a Python or NumPy number,
    is stored as a Python float, and must be finite; anything else raises
    :class:`~mlpx.validation.InvalidParameterError` (a ValueError and a TypeError).

    Attributes
    ----------
    lr : float
        The rate in force now.
    t : int
        Number of steps taken.
    state : dict of str -> array
        Per-parameter state on the backend (``velocity``; ``m``, ``v``; ``s``), each
        of shape (n_params,), allocated by :meth:`bind`. :meth:`state_dict` and
        :meth:`load_state_dict` turn it, with ``t``, ``lr`` and the schedule's own
        state, into plain data and back (checkpoints, pickling, backend moves,
        divergence rollback).
    """

    #: Names of the per-parameter state buffers.
    state_names: tuple[str, ...] = ()

    def __init__(self, lr: float, schedule: str | Schedule | None = None) -> None:
        self.schedule = get_schedule(schedule)
        self.lr = lr  # the base rate and the rate in force (a Python float: see the setter)
        self.t = 0
        self.state: dict[str, Array] = {}
        self._bound: tuple[Any, ...] | None = None
        self._owner: Any = None
        self._pending: dict[str, Any] | None = None

    def bind(self, be: Backend, params: Array, grads: Array, n_weights: int, owner: Any = None) -> None:
        """Attach to a model's flat buffers and allocate state (once per model).

        Parameters
        ----------
        params, grads : arrays, shape (n_params,)
            The model's flat parameter and gradient buffers.
        n_weights : int
            Length of the weight prefix ``params[:n_weights]`` (biases follow).
        owner : object, optional
            The model the buffers belong to. Bound again to the same owner (or to
            the same ``params``), the optimizer keeps its state and takes the
            buffers as they are now: on an immutable backend (JAX) every write of
            the parameters makes a new array.
        """
        if self._bound is not None and tuple(params.shape) == tuple(self.params.shape) and (
            params is self.params or (owner is not None and owner is self._owner)
        ):
            self.params, self.grads = params, grads
            return
        self.be, self.params, self.grads, self.n_weights = be, params, grads, n_weights
        self._owner = owner
        self.dtype = params.dtype
        self._tmp = be.zeros(params.shape, params.dtype)
        # Bound to another model, the optimizer starts from zero state; state saved
        # with state_dict() and loaded before bind() is copied in now.
        self.state = {name: be.zeros(params.shape, params.dtype) for name in self.state_names}
        self._bound = (be, params)
        pending, self._pending = self._pending, None
        if pending is not None:
            self._copy_in(pending["state"])

    @property
    def lr(self) -> float:
        """The rate in force now. Setting it sets the base rate ``lr0`` too (e.g. to
        retry at a lower rate after :class:`~mlpx.training.TrainingDivergedError`)."""
        return self._lr

    @lr.setter
    def lr(self, value: float) -> None:
        # Python floats from here on: NumPy scalars (np.float32(1e-3), as GridSearchCV
        # grids give) would reach the kernels, which strict namespaces refuse.
        lr = check_real("lr (learning rate)", value, 0.0, low_open=True)
        self.schedule(lr, 0, 0)  # a schedule that cannot start from this rate fails now
        self.lr0 = self._lr = lr

    @property
    def bound(self) -> bool:
        """Whether :meth:`bind` has attached the optimizer to a model's buffers."""
        return self._bound is not None

    # ----------------------------------------------------------- rate policy
    def iteration_ends(self, epochs_done: int, samples_seen: int) -> None:
        """Set the rate for the next epoch from the schedule (called after each epoch).

        Parameters
        ----------
        epochs_done : int
            Epochs completed by the model so far.
        samples_seen : int
            Samples the model has trained on so far (scikit-learn's ``t_``).
        """
        self._lr = self.schedule(self.lr0, epochs_done, samples_seen)

    def trigger_stopping(self, message: str = "", verbose: bool = False) -> bool:
        """Training stopped improving: True to stop, False when the policy lowered the rate.

        As scikit-learn's optimizers: only an adaptive schedule continues (dividing
        the rate by 5) until the rate falls to 1e-6.
        """
        lr = self.schedule.on_plateau(self._lr)
        if lr is None:
            if verbose:
                print(message + (" Learning rate too small. Stopping." if self.schedule.adaptive else " Stopping."))
            return True
        self._lr = lr
        if verbose:
            print(message + " Setting learning rate to %f" % self.lr)
        return False

    # ----------------------------------------------------------------- state
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
            "schedule": schedule state, "state": {name: array (n_params,)}}``;
            ``state`` is empty before :meth:`bind`.
        """
        arrays: dict[str, Any] = {}
        for name, buf in self.state.items():
            if to_host:
                arrays[name] = np.array(self.be.to_numpy(buf), copy=True)
            else:
                arrays[name] = self.be.copy(buf, self.be.empty(buf.shape, buf.dtype))
        if not arrays and self._pending is not None:
            arrays = dict(self._pending["state"])
        return {
            "optimizer": type(self).__name__,
            "config": self.get_config(),
            "t": int(self.t),
            "lr": float(self.lr),
            "schedule": self.schedule.state_dict(),
            "state": arrays,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (host or device arrays).

        Before :meth:`bind` the buffers are kept and copied in when the optimizer
        is bound. Raises ValueError when the state belongs to another optimizer
        class or another parameter count.
        """
        if state.get("optimizer") != type(self).__name__:
            raise ValueError(f"state of {state.get('optimizer')!r} cannot be loaded into {type(self).__name__}")
        arrays = state.get("state", {})
        unknown = set(arrays) - set(self.state_names)
        if unknown:
            raise ValueError(f"{type(self).__name__} has no state named {sorted(unknown)}")
        self.t = int(state["t"])
        self._lr = float(state["lr"])
        self.schedule.load_state_dict(state.get("schedule", {}))
        if self._bound is None:
            self._pending = {"state": dict(arrays)}
            return
        self._copy_in(arrays)

    def _copy_in(self, arrays: dict[str, Any]) -> None:
        be = self.be
        for name, value in arrays.items():
            buf = self.state[name]
            if tuple(value.shape) != tuple(buf.shape):
                raise ValueError(f"state {name!r} has shape {tuple(value.shape)}, the optimizer {tuple(buf.shape)}")
            src = be.asarray(value, dtype=buf.dtype) if isinstance(value, np.ndarray) else value
            self.state[name] = be.copy(src, buf)

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "Optimizer":
        """A new optimizer of the saved class and settings, holding the saved state."""
        kind = OPTIMIZERS.get(str(state.get("optimizer", "")).lower())
        if kind is None:
            raise ValueError(f"unknown optimizer {state.get('optimizer')!r} in saved state")
        config = dict(state.get("config", {}))
        schedule = config.pop("schedule", None)
        opt = kind(**config, schedule=get_schedule_from_state(schedule))
        opt.load_state_dict(state)
        return opt

    # ------------------------------------------------------------------ step
    def step(self, params: Array | None = None, grads: Array | None = None) -> Array:
        """Update the parameters from the gradients; return the updated parameters.

        Parameters
        ----------
        params, grads : arrays, shape (n_params,), optional
            The bound model's flat buffers as they are now (default: the bound
            ones). An immutable backend makes new arrays at every write, so the
            model passes its current ones.

        Returns
        -------
        array, shape (n_params,)
            The updated parameters: ``params`` itself, updated in place, on mutable
            backends; a new array on immutable ones (the caller stores it).
        """
        if params is not None:
            self.params = params
        if grads is not None:
            self.grads = grads
        self._update()
        return self.params

    def _update(self) -> None:
        """One step of the rule on ``self.params`` / ``self.grads``; rebinds what it updates."""
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        return {"lr": self.lr0, "schedule": self.schedule.get_config()}

    def __getstate__(self) -> dict[str, Any]:
        # Device buffers do not pickle portably: pickle the state as host data.
        return {"config": self.get_config(), "saved": self.state_dict()}

    def __setstate__(self, data: dict[str, Any]) -> None:
        config = dict(data["config"])
        schedule = get_schedule_from_state(config.pop("schedule", None))
        self.__init__(**config, schedule=schedule)  # type: ignore[misc]
        self.load_state_dict(data["saved"])

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "schedule")
        if not isinstance(self.schedule, Constant):
            args += f", schedule={self.schedule!r}"
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent with (Nesterov) momentum, as scikit-learn's.

    ``momentum`` may be 1, as scikit-learn allows.
    """

    state_names = ("velocity",)

    def __init__(
        self,
        lr: float = 0.01,
        momentum: float = 0.9,
        nesterov: bool = False,
        schedule: str | Schedule | None = None,
    ) -> None:
        super().__init__(lr, schedule)
        # momentum = 1 is allowed, as scikit-learn allows it.
        self.momentum = check_real("momentum", momentum, 0.0, 1.0)
        self.nesterov = check_bool("nesterov", nesterov)

    def _update(self) -> None:
        self.t += 1
        p, self.state["velocity"] = self.be.run(
            sgd_update, self.params, self.grads, self.state["velocity"], self._tmp,
            self.lr, self.momentum, self.nesterov,
        )
        self.params = self.be.assign(self.params, p)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "momentum": self.momentum, "nesterov": self.nesterov}


class Adam(Optimizer):
    """Adam (Kingma & Ba), with scikit-learn's placement of ε and bias correction."""

    state_names = ("m", "v")

    def __init__(
        self,
        lr: float = 1e-3,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-8,
        schedule: str | Schedule | None = None,
    ) -> None:
        super().__init__(lr, schedule)
        self.beta_1 = check_real("beta_1", beta_1, 0.0, 1.0, high_open=True)
        self.beta_2 = check_real("beta_2", beta_2, 0.0, 1.0, high_open=True)
        # ε > 0: with ε = 0 a parameter whose gradients have all been zero divides 0 by 0.
        self.epsilon = check_real("epsilon", epsilon, 0.0, low_open=True)

    def _update(self) -> None:
        self.t += 1
        lr_t = self.lr * math.sqrt(1 - self.beta_2**self.t) / (1 - self.beta_1**self.t)
        p, self.state["m"], self.state["v"] = self.be.run(
            adam_update, self.params, self.grads, self.state["m"], self.state["v"], self._tmp,
            lr_t, self.beta_1, self.beta_2, self.epsilon,
        )
        self.params = self.be.assign(self.params, p)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon}


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter) on the weights only.

    Biases are not decayed: they sit after the weights in the flat buffer, so the
    decay is one operation on the weight prefix.
    """

    def __init__(self, lr: float = 1e-3, weight_decay: float = 0.01, **kwargs: Any) -> None:
        super().__init__(lr, **kwargs)
        self.weight_decay = check_real("weight_decay", weight_decay, 0.0)

    def _update(self) -> None:
        if self.weight_decay:
            decayed = self.be.run(scale_, self.params, self.n_weights, 1.0 - self.lr * self.weight_decay)
            self.params = self.be.assign(self.params, decayed)
        super()._update()

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "weight_decay": self.weight_decay}


class RMSprop(Optimizer):
    """RMSprop (Hinton): per-parameter rates from a running mean of g²."""

    state_names = ("s",)

    def __init__(
        self,
        lr: float = 1e-3,
        rho: float = 0.9,
        epsilon: float = 1e-8,
        schedule: str | Schedule | None = None,
    ) -> None:
        super().__init__(lr, schedule)
        self.rho = check_real("rho", rho, 0.0, 1.0, high_open=True)
        self.epsilon = check_real("epsilon", epsilon, 0.0, low_open=True)

    def _update(self) -> None:
        self.t += 1
        p, self.state["s"] = self.be.run(
            rmsprop_update, self.params, self.grads, self.state["s"], self._tmp,
            self.lr, self.rho, self.epsilon,
        )
        self.params = self.be.assign(self.params, p)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "rho": self.rho, "epsilon": self.epsilon}


#: Optimizer class by name (``optimizer=`` of ``fit``).
OPTIMIZERS: dict[str, type[Optimizer]] = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop}


def get_optimizer(spec: str | Optimizer, **kwargs: Any) -> Optimizer:
    """An optimizer from a name (with keyword settings) or an instance.

    Settings given with an instance are an error, not silently dropped: configure
    the instance itself (``Adam(lr=0.01)``).
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
