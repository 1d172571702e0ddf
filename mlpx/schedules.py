"""Learning-rate schedules, evaluated on the host once per epoch.

A schedule maps the initial rate ``lr0``, the number of finished epochs and the
number of samples seen so far to the rate for the next epoch; the optimizer asks it
after every epoch (:meth:`mlpx.optimizers.Optimizer.iteration_ends`). When training
stops improving, :meth:`Schedule.on_plateau` decides whether to stop or to go on at a
lower rate (scikit-learn's ``learning_rate="adaptive"``). The result is a Python
float handed to the optimizer's update kernel, so changing it costs no device work.

==============  ====================================================================
constant        ``lr0``
step            ``lr0 · gamma^floor(epoch / step_size)``
invscaling      ``lr0 / (t + 1)^power_t``, t = samples seen (scikit-learn's rule)
cosine          ``eta_min + (lr0 − eta_min)(1 + cos(π · min(epoch, T_max) / T_max)) / 2``
adaptive        the current rate, divided by 5 on each plateau until it falls to 1e-6
==============  ====================================================================
"""

from __future__ import annotations

import math
from typing import Any

from mlpx.validation import check_int, check_real

__all__ = [
    "SCHEDULES",
    "Adaptive",
    "Constant",
    "Cosine",
    "InverseScaling",
    "Schedule",
    "StepDecay",
    "get_schedule",
    "get_schedule_from_state",
]


class Schedule:
    """Base class: the constant schedule.

    Attributes
    ----------
    adaptive : bool
        Whether :meth:`on_plateau` lowers the rate instead of stopping.
    """

    adaptive = False

    def __call__(self, lr0: float, epoch: int, samples_seen: int) -> float:
        return lr0

    def on_plateau(self, lr: float) -> float | None:
        """The rate to continue with after a plateau, or None to stop training.

        Parameters
        ----------
        lr : float
            The current rate.

        Returns
        -------
        float or None
            The new rate; ``None`` stops training (the default: any plateau stops).
        """
        return None

    def get_config(self) -> dict[str, Any]:
        """Name and settings, from which :func:`get_schedule_from_state` rebuilds it.

        Returns
        -------
        dict
            JSON-serialisable: ``"name"`` and the constructor's arguments.
        """
        return {"name": _NAMES.get(type(self), type(self).__name__), **self._settings()}

    def _settings(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def state_dict(self) -> dict[str, Any]:
        """What changes during training (empty for the stateless schedules).

        Returns
        -------
        dict
            JSON-serialisable; :meth:`load_state_dict` restores it.
        """
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`.

        Parameters
        ----------
        state : dict
            From :meth:`state_dict` of a schedule of the same kind.
        """

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._settings().items())
        return f"{type(self).__name__}({args})"


class Constant(Schedule):
    """``lr = lr0`` throughout."""


class StepDecay(Schedule):
    """Multiply the rate by ``gamma`` every ``step_size`` epochs.

    Parameters
    ----------
    step_size : int >= 1
        Epochs between two multiplications.
    gamma : float in (0, 1]
        The factor.
    """

    def __init__(self, step_size: int = 10, gamma: float = 0.1) -> None:
        self.step_size = check_int("StepDecay: step_size", step_size, low=1)
        self.gamma = check_real("StepDecay: gamma", gamma, 0.0, 1.0, low_open=True)

    def __call__(self, lr0: float, epoch: int, samples_seen: int) -> float:
        return lr0 * self.gamma ** (epoch // self.step_size)


class InverseScaling(Schedule):
    """``lr0 / (t + 1)^power_t`` with t the number of samples seen (as scikit-learn).

    Parameters
    ----------
    power_t : float >= 0
        A negative power would make the rate grow without bound.
    """

    def __init__(self, power_t: float = 0.5) -> None:
        self.power_t = check_real("InverseScaling: power_t", power_t, 0.0)

    def __call__(self, lr0: float, epoch: int, samples_seen: int) -> float:
        return float(lr0 / (samples_seen + 1) ** self.power_t)


class Cosine(Schedule):
    """Cosine annealing from ``lr0`` to ``eta_min`` over ``T_max`` epochs.

    Parameters
    ----------
    T_max : int >= 1
        Epochs from ``lr0`` down to ``eta_min`` (the rate stays there after).
    eta_min : float >= 0
        Must not exceed the optimizer's ``lr0`` (checked when the schedule is used:
        annealing "down" to a larger rate would make it rise).
    """

    def __init__(self, T_max: int = 100, eta_min: float = 0.0) -> None:
        self.T_max = check_int("Cosine: T_max", T_max, low=1)
        self.eta_min = check_real("Cosine: eta_min", eta_min, 0.0)

    def __call__(self, lr0: float, epoch: int, samples_seen: int) -> float:
        if self.eta_min > lr0:
            raise ValueError(
                f"Cosine: eta_min={self.eta_min:g} exceeds the initial learning rate {lr0:g}; "
                f"the rate would rise instead of anneal. Lower eta_min or raise lr"
            )
        e = min(epoch, self.T_max)
        return self.eta_min + (lr0 - self.eta_min) * (1 + math.cos(math.pi * e / self.T_max)) / 2


class Adaptive(Schedule):
    """Keep the rate, divide it by ``factor`` on each plateau (scikit-learn's adaptive rate).

    Training stops on a plateau once the rate is at or below ``min_lr``.

    Parameters
    ----------
    factor : float > 1, default 5.0
        The divisor applied on each plateau (scikit-learn's is 5).
    min_lr : float >= 0, default 1e-6
        The rate at or below which a plateau stops training.

    Raises
    ------
    ValueError
        ``factor <= 1`` or ``min_lr < 0``.
    """

    adaptive = True

    def __init__(self, factor: float = 5.0, min_lr: float = 1e-6) -> None:
        if not factor > 1 or not min_lr >= 0:
            raise ValueError("Adaptive needs factor > 1 and min_lr >= 0")
        self.factor, self.min_lr = float(factor), float(min_lr)
        self._lr: float | None = None

    def __call__(self, lr0: float, epoch: int, samples_seen: int) -> float:
        return lr0 if self._lr is None else self._lr

    def on_plateau(self, lr: float) -> float | None:
        if lr <= self.min_lr:
            return None
        # Divided in place, step by step, so the rate has scikit-learn's exact bits.
        self._lr = lr / self.factor
        return self._lr

    def state_dict(self) -> dict[str, Any]:
        return {"lr": self._lr}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        lr = state.get("lr")
        self._lr = None if lr is None else float(lr)


#: Schedule class by name, for ``schedule=`` of the optimizers.
SCHEDULES: dict[str, type[Schedule]] = {
    "constant": Constant,
    "step": StepDecay,
    "invscaling": InverseScaling,
    "cosine": Cosine,
    "adaptive": Adaptive,
}
_NAMES = {kind: name for name, kind in SCHEDULES.items()}


def get_schedule(spec: Any) -> Schedule:
    """A schedule from a name, an instance, or None (constant).

    Parameters
    ----------
    spec : str, Schedule or None
        A key of :data:`SCHEDULES`, an instance (returned as is), or None.

    Returns
    -------
    Schedule
        A new schedule, or ``spec`` itself.
    """
    if spec is None:
        return Constant()
    if isinstance(spec, Schedule):
        return spec
    if isinstance(spec, str) and spec in SCHEDULES:
        return SCHEDULES[spec]()
    raise ValueError(f"unknown schedule {spec!r}; valid: {', '.join(SCHEDULES)}")


def get_schedule_from_state(config: dict[str, Any] | None) -> Schedule:
    """Rebuild a schedule from :meth:`Schedule.get_config` (None: constant).

    Parameters
    ----------
    config : dict or None
        From :meth:`Schedule.get_config`.

    Returns
    -------
    Schedule
        A new schedule with those settings.
    """
    if config is None:
        return Constant()
    config = dict(config)
    name = config.pop("name", "constant")
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r} in saved state; valid: {', '.join(SCHEDULES)}")
    return SCHEDULES[name](**config)
