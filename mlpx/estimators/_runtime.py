"""What an estimator keeps on the device between calls: the network and its optimizer.

Private to the estimators; nothing here imports scikit-learn.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from mlpx.backends import Backend
from mlpx.layers import Dense
from mlpx.model import Sequential
from mlpx.optimizers import Optimizer

__all__ = ["Runtime", "glorot_draws"]

Array = Any


def glorot_draws(rng: np.random.RandomState, layer_units: list[int], activation: str
                 ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Initial ``coefs_``/``intercepts_`` drawn exactly as scikit-learn's ``_init_coef``.

    scikit-learn uses the *hidden* activation's factor (2 for logistic, else 6) on
    every layer, the output layer included, and draws W then b per layer.
    """
    factor = 2.0 if activation == "logistic" else 6.0
    coefs, intercepts = [], []
    for fan_in, fan_out in zip(layer_units[:-1], layer_units[1:]):
        bound = np.sqrt(factor / (fan_in + fan_out))
        coefs.append(rng.uniform(-bound, bound, (fan_in, fan_out)))
        intercepts.append(rng.uniform(-bound, bound, fan_out))
    return coefs, intercepts


class Runtime:
    """The estimator's network (a :class:`~mlpx.model.Sequential`) and optimizer on a backend.

    Not pickled as such: :meth:`state` turns what is not in ``coefs_`` into host
    data, from which the estimator rebuilds it on whatever backend it is asked for.

    Parameters
    ----------
    be : Backend
    dtype : {"float32", "float64"}
    layer_units : list of int
        ``[n_features, hidden..., n_outputs]``.
    activation, out_activation : str
        scikit-learn's names (``"logistic"`` is mlpx's too).

    Attributes
    ----------
    model : Sequential
    loss : OutputLoss
        The output's canonical loss (scikit-learn's choice for each output).
    optimizer : Optimizer or None
    best : array, shape (n_params,), or None
        Device copy of the best parameters (early stopping).
    """

    def __init__(self, be: Backend, dtype: str, layer_units: list[int], activation: str,
                 out_activation: str) -> None:
        self.be, self.dtype = be, dtype
        layers = [
            Dense(a, b, activation=out_activation if i == len(layer_units) - 2 else activation)
            for i, (a, b) in enumerate(zip(layer_units[:-1], layer_units[1:]))
        ]
        self.model = Sequential(layers, backend=be, dtype=dtype, seed=0)
        self.loss = self.model.resolve_loss(None)
        self.optimizer: Optimizer | None = None
        self.best: Array | None = None
        self._pushed: list[np.ndarray] | None = None  # host arrays last copied to the device
        self._push_lock = threading.Lock()

    def push(self, coefs: list[np.ndarray], intercepts: list[np.ndarray]) -> None:
        """Copy host ``coefs``/``intercepts`` into the flat device buffer (one transfer).

        Skipped when they equal what was pushed last, so concurrent predictions
        never write the weights another thread is reading.
        """
        arrays = list(coefs) + list(intercepts)
        layout = list(self.model.layout().values())
        order = [s for s in layout if len(s[2]) == 2] + [s for s in layout if len(s[2]) == 1]
        if len(arrays) != len(order) or any(np.shape(a) != s[2] for a, s in zip(arrays, order)):
            raise ValueError(
                "coefs_/intercepts_ do not match the network's layer sizes "
                f"{[s[2] for s in order[: len(order) // 2]]}; assign arrays of the same shapes"
            )
        with self._push_lock:
            pushed = self._pushed
            if pushed is not None and len(pushed) == len(arrays) and all(
                np.array_equal(a, b) for a, b in zip(arrays, pushed)
            ):
                return
            flat = np.concatenate([np.ravel(a) for a in arrays])
            self.set_flat(flat)
            self._pushed = [np.array(a, copy=True) for a in arrays]

    def set_flat(self, flat: np.ndarray) -> None:
        """Overwrite the parameters from a host vector, shape (n_params,)."""
        self.model.set_flat_params(np.asarray(flat, dtype=self.dtype))
        self._pushed = None

    def pull(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Host copies of the parameters as scikit-learn's ``coefs_``, ``intercepts_``."""
        flat = self.model.get_flat_params()
        layout = self.model.layout().values()
        coefs = [flat[a:b].reshape(shape) for a, b, shape in layout if len(shape) == 2]
        intercepts = [flat[a:b].reshape(shape) for a, b, shape in layout if len(shape) == 1]
        self._pushed = [np.array(a, copy=True) for a in coefs + intercepts]
        return coefs, intercepts

    def keep_best(self) -> None:
        """Copy the current parameters to ``best`` on the device (no host round trip)."""
        be, model = self.be, self.model
        if self.best is None:
            self.best = be.empty(model.n_params, self.dtype)
        with model.parameter_lock.read():
            self.best = be.copy(model.params, self.best)

    def state(self) -> dict[str, Any]:
        """What lives only on the device, as host data: the optimizer's state, ``best``."""
        state: dict[str, Any] = {"dtype": self.dtype, "optimizer": None, "best": None}
        if self.best is not None:
            state["best"] = np.array(self.be.to_numpy(self.best), copy=True)
        if self.optimizer is not None:
            state["optimizer"] = self.optimizer.state_dict()
        return state

    def restore(self, state: dict[str, Any]) -> None:
        """Load :meth:`state` (from another backend, or a pickle)."""
        be, model = self.be, self.model
        if state.get("best") is not None:
            self.best = be.asarray(np.asarray(state["best"], dtype=self.dtype), dtype=self.dtype)
        saved = state.get("optimizer")
        if saved is not None:
            opt = Optimizer.from_state_dict(saved)
            if saved.get("state"):
                opt.bind(be, model.params, model.grads, model.n_weights, owner=model)
            self.optimizer = opt
