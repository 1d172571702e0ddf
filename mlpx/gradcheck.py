"""Numerical gradient checks: the engine's backward pass against finite differences.

In the manner of Chainer's ``gradient_check``: every analytic gradient the engine
computes (parameters, and optionally the network input) is compared with central
finite differences of the loss, evaluated in float64 so that the differences are
accurate to about ``eps²``.

>>> import numpy as np
>>> import mlpx
>>> from mlpx.gradcheck import check_gradients
>>> model = mlpx.MLP([4, 6, 3], activation="tanh", dtype="float64", seed=0)
>>> X = np.random.default_rng(0).normal(size=(5, 4)); y = [0, 1, 2, 1, 0]
>>> check_gradients(model, X, y)["max_rel_error"] < 1e-6
True

Errors are measured per parameter group (``"0.W"``, ``"0.b"``, ..., ``"X"``) as
``‖analytic − numeric‖∞ / max(‖analytic‖∞, ‖numeric‖∞)``, so a group of small
gradients is not drowned by a group of large ones, and a group that is all zero
compares exactly.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import numpy as np

__all__ = ["check_gradients", "numerical_grad", "relative_error"]

_TINY = 1e-300


def numerical_grad(f: Callable[[np.ndarray], float], x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central finite differences of a scalar function.

    Parameters
    ----------
    f : callable
        ``f(x) -> float``; called with ``x`` perturbed in place (one element at a
        time, restored afterwards).
    x : ndarray, any shape, float64
        The point; modified during the call and restored on return.
    eps : float
        Step; the truncation error is O(eps²), the rounding error O(ε_mach / eps).

    Returns
    -------
    ndarray, same shape as ``x``
        Element i is ``(f(x + eps e_i) − f(x − eps e_i)) / 2 eps``.
    """
    if not isinstance(x, np.ndarray) or x.dtype != np.float64:
        raise TypeError("numerical_grad needs a float64 NumPy array (differences in float32 are noise)")
    grad = np.empty_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    if not np.shares_memory(flat, x):
        raise ValueError("x must be contiguous so that it can be perturbed in place")
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        f_plus = float(f(x))
        flat[i] = old - eps
        f_minus = float(f(x))
        flat[i] = old
        gflat[i] = (f_plus - f_minus) / (2.0 * eps)
    return grad


def relative_error(analytic: np.ndarray, numeric: np.ndarray) -> float:
    """Compute ``‖a − n‖∞ / max(‖a‖∞, ‖n‖∞)`` (0 when both are exactly zero).

    Parameters
    ----------
    analytic, numeric : array_like
        Two gradients of the same size.

    Returns
    -------
    float
        The largest absolute difference relative to the larger maximum.

    Raises
    ------
    ValueError
        The sizes differ.
    """
    a = np.asarray(analytic, dtype=np.float64).ravel()
    n = np.asarray(numeric, dtype=np.float64).ravel()
    if a.shape != n.shape:
        raise ValueError(f"shapes differ: {a.shape} and {n.shape}")
    if a.size == 0:
        return 0.0
    scale = max(float(np.max(np.abs(a))), float(np.max(np.abs(n))), _TINY)
    return float(np.max(np.abs(a - n))) / scale


@contextlib.contextmanager
def _frozen_dropout(model: Any) -> Iterator[Callable[[], None]]:
    """Yield a function that resets every Dropout generator to its current state.

    Calling it before each loss evaluation makes every forward pass draw the same
    masks, so the loss is a deterministic function of the parameters. The state is
    restored on exit.
    """
    gens = [g for members in model.dropout_generators().values() for g in members]
    states = [g.bit_generator.state for g in gens]

    def reset() -> None:
        for g, s in zip(gens, states):
            g.bit_generator.state = s

    try:
        yield reset
    finally:
        reset()


def _float64_twin(model: Any) -> Any:
    """The model itself if it computes in float64, else a float64 copy on its backend."""
    if model.dtype == "float64":
        return model
    config = {**model.get_config(), "dtype": "float64"}
    config.pop("precision", None)
    return type(model).from_config(config, model.get_flat_params().astype(np.float64), model.backend)


def _input_grad(model: Any, X: np.ndarray, Y: np.ndarray, w: Any, lossfn: Any, denom: float) -> np.ndarray:
    """dL/dX (host, float64), back-propagating through every layer (the first too)."""
    be, xp = model.backend, model.backend.xp
    n, c = int(X.shape[0]), model.n_outputs_
    with be.activated():
        Xd = be.asarray(X[None], dtype=model.dtype)
        Yd = be.asarray(Y[None], dtype=model.dtype)
        wd = None if w is None else be.asarray(np.asarray(w)[None], dtype=model.dtype)
        inv_d = be.asarray(np.array([1.0 / denom]), dtype=model.dtype)
        ws: dict[Any, Any] = {}
        Z, tape = model._forward(Xd, slice(None), ws, train=True)
        _, dZ = lossfn.delta(be, Z, Yd, xp.zeros((1, n, c), dtype=Z.dtype), wd, inv_d,
                             xp.zeros((1, n, c), dtype=Z.dtype))
        dX = model._backward(dZ, tape, slice(None), ws, be.zeros(tuple(model.flat.shape), model.dtype),
                             to_input=True)
        # The L2 term does not depend on X.
        host: np.ndarray = np.array(be.to_numpy(dX), dtype=np.float64, copy=True)[0]
        return host


def check_gradients(
    model: Any,
    X: Any,
    y: Any,
    sample_weight: Any = None,
    l2: float = 0.0,
    eps: float = 1e-6,
    loss: Any = None,
    inputs: bool = False,
    params: bool = True,
) -> dict[str, Any]:
    """Compare a model's analytic gradients with central finite differences in float64.

    Parameters
    ----------
    model : Sequential
        A float32 model is checked through a float64 copy (same weights, backend).
        Dropout layers keep one fixed mask for the whole check.
    X : array_like, shape (n, n_features_in_)
        The inputs.
    y : array_like
        Targets as :meth:`Sequential.fit` takes them.
    sample_weight : array_like, shape (n,), optional
        Weights of the rows.
    l2 : float
        L2 penalty (included in the loss and its gradient).
    eps : float
        Finite-difference step.
    loss : str or Loss, optional
        Defaults to the loss paired with the output activation.
    inputs : bool
        Also check dL/dX (every layer's backward, the first one included).
    params : bool
        Check dL/dθ for every parameter (``model.n_params`` × 2 loss evaluations).

    Returns
    -------
    dict
        ``"loss"``: the loss at the given point; ``"max_rel_error"``: the largest
        per-group relative error; ``"errors"``: group name (``"0.W"``, ..., ``"X"``)
        -> relative error; ``"analytic"`` and ``"numeric"``: group name -> host
        float64 gradient arrays.
    """
    from mlpx.validation import check_sample_weight, check_X, encode_targets

    twin = _float64_twin(model)
    be = twin.backend
    Xh = np.array(be.to_numpy(check_X(X, be, twin.n_features_in_)), dtype=np.float64, copy=True)
    lossfn = twin.resolve_loss(loss)
    Y = encode_targets(y, twin.output.name, twin.n_outputs_, Xh.shape[0], loss=lossfn.name)
    w = check_sample_weight(sample_weight, Xh.shape[0])
    denom = float(Xh.shape[0]) if w is None else float(w.sum())
    start = twin.get_flat_params()
    nw = twin.n_weights
    with be.activated():
        Xd = be.asarray(Xh, dtype="float64")
        Yd = be.asarray(Y, dtype="float64")
        wd = None if w is None else be.asarray(w, dtype="float64")

    def loss_at(Xdev: Any, theta: np.ndarray) -> float:
        # Forward pass and loss value only; the L2 term is written out here on the
        # host (½ l2 Σ W² / d), independently of the engine's own L2 kernel.
        with be.activated():
            xp = be.xp
            logits = twin.forward(Xdev, train=True)
            P = twin.output.forward(be, logits, out=be.empty(tuple(logits.shape), "float64"))

            def one(a: Any) -> Any:  # one member's array in member form, (1, ...)
                return None if a is None else xp.reshape(a, (1,) + tuple(a.shape))

            inv_d = be.asarray(np.array([1.0 / denom]), dtype="float64")
            value = be.to_float(lossfn.value(be, one(logits), one(P), one(Yd), one(wd), inv_d)[0])
        return float(value + 0.5 * l2 * float(np.dot(theta[:nw], theta[:nw])) / denom)

    analytic: dict[str, np.ndarray] = {}
    numeric: dict[str, np.ndarray] = {}
    try:
        with _frozen_dropout(twin) as reset:
            reset()
            value, grads = twin.loss_and_grads(Xh, y, sample_weight=sample_weight, loss=lossfn, l2=l2)
            if params:
                flat = start.copy()

                def f_params(theta: np.ndarray) -> float:
                    twin.set_flat_params(theta)
                    reset()
                    return loss_at(Xd, theta)

                g_flat = numerical_grad(f_params, flat, eps)
                twin.set_flat_params(start)
                # Name every slice of the flat buffer as parameters() names it.
                for key, (a, b, shape) in twin.layout().items():
                    analytic[key] = np.asarray(grads[key], dtype=np.float64)
                    numeric[key] = g_flat[a:b].reshape(shape)
            if inputs:
                reset()
                analytic["X"] = _input_grad(twin, Xh, Y, w, lossfn, denom)

                def f_inputs(x: np.ndarray) -> float:
                    reset()
                    return loss_at(be.asarray(x, dtype="float64"), start)

                numeric["X"] = numerical_grad(f_inputs, Xh.copy(), eps)
    finally:
        twin.set_flat_params(start)
    errors = {k: relative_error(analytic[k], numeric[k]) for k in analytic}
    return {
        "loss": float(value),
        "max_rel_error": max(errors.values(), default=0.0),
        "errors": errors,
        "analytic": analytic,
        "numeric": numeric,
    }
