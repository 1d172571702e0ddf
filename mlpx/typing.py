"""Type aliases of mlpx's public signatures, for annotating code that calls mlpx.

mlpx ships ``py.typed``, so mypy and IDEs read its annotations; these aliases name
what the signatures accept::

    from mlpx.typing import ArrayLike, BackendLike

    def train(X: ArrayLike, y: ArrayLike, backend: BackendLike = "cpu") -> mlpx.Sequential: ...

Option names are ``Literal`` types, so a type checker catches a misspelt
``activation="rleu"`` before the run does.
"""

from __future__ import annotations

from typing import Literal, Union

import numpy.typing as npt

from mlpx.backends import Backend

__all__ = [
    "ActivationName",
    "ArrayLike",
    "BackendLike",
    "DTypeName",
    "EstimatorActivation",
    "LearningRateName",
    "RegressionLoss",
    "SolverName",
]

#: What mlpx accepts as data: NumPy arrays and anything ``numpy.asarray`` takes
#: (lists, pandas objects). SciPy sparse matrices (estimators only) and arrays
#: already on the model's backend (CuPy on the GPU) are accepted too.
ArrayLike = npt.ArrayLike

#: A backend by name (``"cpu"``, ``"cpu:mkl"``, ``"gpu"``, ``"gpu:1"``, ``"auto"``,
#: ``"array_api_strict"``, ``"array-api:<module>"``) or a :class:`~mlpx.backends.Backend`.
BackendLike = Union[str, Backend]

#: The dtypes parameters live in.
DTypeName = Literal["float32", "float64"]

#: Activations of the engine's layers (``"sigmoid"`` is ``"logistic"``).
ActivationName = Literal["identity", "relu", "leaky_relu", "logistic", "sigmoid", "tanh", "gelu",
                         "softmax", "exp"]

#: The estimators' hidden activations (scikit-learn's).
EstimatorActivation = Literal["identity", "logistic", "tanh", "relu"]

#: The estimators' solvers.
SolverName = Literal["lbfgs", "sgd", "adam"]

#: The estimators' learning-rate schedules (``solver="sgd"``).
LearningRateName = Literal["constant", "invscaling", "adaptive"]

#: :class:`~mlpx.MLPRegressor`'s losses.
RegressionLoss = Literal["squared_error", "poisson"]
