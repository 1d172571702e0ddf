"""Learning-rate schedules, evaluated on the host once per epoch.

A schedule maps the initial rate ``lr0``, the number of finished epochs and the
number of samples seen so far to the rate for the next epoch. The result is a Python
float handed to the optimizer's update kernel, so changing it costs no device work.

==============  ====================================================================
constant        ``lr0``
step            ``lr0 · gamma^floor(epoch / step_size)``
invscaling      ``lr0 / (t + 1)^power_t``, t = samples seen (scikit-learn's rule)
cosine          ``eta_min + (lr0 − eta_min)(1 + cos(π · min(epoch, T_max) / T_max)) / 2``
==============  ====================================================================
"""

from __future__ import annotations

import math
from typing import Any

from mlpx.validation import check_int, check_real

__all__ = ["SCHEDULES", "Constant", "Cosine", "InverseScaling", "Schedule", "StepDecay", "get_schedule"]


class Schedule:
    """Base class: the constant schedule."""

    def __call__(self, lr0: float, epoch: int, samples_seen: int) -> float:
        return lr0

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class Constant(Schedule):
    """``lr = lr0`` throughout."""


class StepDecay(Schedule):
    """Multiply the rate by ``gamma`` every ``step_size`` epochs.

    Parameters
    ----------
    step_size : int >= 1
    gamma : float in (0, 1]
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
        return lr0 / (samples_seen + 1) ** self.power_t


class Cosine(Schedule):
    """Cosine annealing from ``lr0`` to ``eta_min`` over ``T_max`` epochs.

    Parameters
    ----------
    T_max : int >= 1
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


SCHEDULES: dict[str, type[Schedule]] = {
    "constant": Constant,
    "step": StepDecay,
    "invscaling": InverseScaling,
    "cosine": Cosine,
}


def get_schedule(spec: Any) -> Schedule:
    """A schedule from a name, an instance, or None (constant)."""
    if spec is None:
        return Constant()
    if isinstance(spec, Schedule):
        return spec
    if isinstance(spec, str) and spec in SCHEDULES:
        return SCHEDULES[spec]()
    raise ValueError(f"unknown schedule {spec!r}; valid: {', '.join(SCHEDULES)}")
