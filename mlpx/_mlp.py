"""The MLP builder: a :class:`~mlpx.model.Sequential` of Dense (and Dropout) layers from the layer widths.

:mod:`mlpx.model` re-exports :func:`MLP` (it is ``mlpx.MLP``); it lives apart from
the class it builds to keep that module under 1000 lines, and imports the class when
called, as :mod:`mlpx.model` imports this module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from mlpx.activations import get_activation
from mlpx.backends import Backend
from mlpx.layers import Dense, Dropout, Layer
from mlpx.validation import check_int, check_real

if TYPE_CHECKING:
    from mlpx.model import Sequential

__all__ = ["MLP"]


def MLP(
    sizes: Sequence[int],
    activation: str = "relu",
    output: str = "softmax",
    backend: str | Backend = "cpu",
    dtype: str = "float32",
    seed: int | None = None,
    dropout: float = 0.0,
    init: str = "glorot",
    precision: str | None = None,
) -> Sequential:
    """A multi-layer perceptron from its layer widths.

    Parameters
    ----------
    sizes : sequence of int
        ``[n_features, hidden_1, ..., n_outputs]``, e.g. ``[64, 128, 64, 32, 10]``.
    activation : str, default "relu"
        Hidden activation (identity, relu, leaky_relu, logistic/sigmoid, tanh, gelu).
    output : str, default "softmax"
        Output activation: softmax (multiclass), logistic (binary / multilabel),
        identity (regression), exp (Poisson), or any hidden activation (pass a
        ``loss=`` to ``fit`` that suits it).
    backend : str or Backend, default "cpu"
        ``"cpu"``, ``"cpu:mkl"``, ``"cpu:blis"``, ``"gpu"``, ``"gpu:N"``, ``"auto"``,
        ``"array_api_strict"``, ``"array-api:<module>"`` or a Backend instance.
    dtype : {"float32", "float64"}, default "float32"
        The dtype of parameters, gradients and optimizer state.
    seed : int, optional
        Seeds the initial weights (drawn on the host, so every backend starts from
        the same ones). NumPy integers are accepted (and stored as Python ints).
    dropout : float in [0, 1), default 0
        Dropout rate after each hidden layer.
    init : {"glorot", "he"} or callable, default "glorot"
        Weight initialiser (:mod:`mlpx.initializers`).
    precision : {None, "float32", "tf32", "bf16", "fp16"}, optional
        See :class:`Sequential` and :mod:`mlpx.precision`.

    Returns
    -------
    Sequential
        Dense layers ``sizes[k] -> sizes[k + 1]``, not yet trained.

    Raises
    ------
    InvalidParameterError
        (a ValueError and TypeError) A width that is not a positive integer: 8.7 is
        refused, not truncated, and so is 8.0, as scikit-learn does.

    Examples
    --------
    >>> import mlpx
    >>> model = mlpx.MLP([64, 128, 64, 32, 10], activation="relu", output="softmax", seed=0)
    >>> model.n_params
    18986
    """
    if isinstance(sizes, (str, bytes)) or not hasattr(sizes, "__iter__"):
        raise TypeError(f"sizes must be a sequence of layer widths, got {sizes!r}")
    sizes = [check_int(f"sizes[{k}]", s, low=1) for k, s in enumerate(sizes)]
    if len(sizes) < 2:
        raise ValueError("sizes needs at least [n_features, n_outputs]")
    dropout = check_real("dropout", dropout, 0.0, 1.0, high_open=True)
    get_activation(activation)  # an unknown name fails even when there is no hidden layer
    layers: list[Layer] = []
    for k, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        is_last = k == len(sizes) - 2
        layers.append(Dense(a, b, activation=output if is_last else activation, init=init))
        if dropout and not is_last:
            layers.append(Dropout(dropout))
    from mlpx.model import Sequential

    return Sequential(layers, backend=backend, dtype=dtype, seed=seed, precision=precision)

