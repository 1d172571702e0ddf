"""mlpx: multi-layer perceptrons on the CPU (NumPy/BLAS) and NVIDIA GPUs (CuPy/cuBLAS).

One model code, two devices: pick ``backend="cpu"``, ``"gpu"`` or ``"auto"``.

>>> import mlpx
>>> from sklearn.datasets import load_digits
>>> X, y = load_digits(return_X_y=True)
>>> model = mlpx.MLP([64, 128, 64, 32, 10], activation="relu", output="softmax", seed=0)
>>> history = model.fit(X / 16.0, y, epochs=20, batch_size=64)
>>> model.evaluate(X / 16.0, y)["accuracy"] > 0.95
True
>>> path = model.save("digits.npz")
>>> on_gpu = mlpx.load("digits.npz", backend="gpu")  # doctest: +GPU
>>> bool((on_gpu.predict(X / 16.0) == model.predict(X / 16.0)).all())  # doctest: +GPU
True
"""

import importlib.util as _importlib_util
import os as _os
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

# backends/ is installed as mlpx.backends (pyproject maps it). When mlpx is imported
# straight from a source checkout without installing, find it beside mlpx/ instead.
if _importlib_util.find_spec("mlpx.backends") is None:  # pragma: no cover - uninstalled checkout
    __path__.append(_os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))))

from mlpx.activations import ACTIVATIONS
from mlpx.backends import available_backends, get_backend
from mlpx.callbacks import Callback, EarlyStopping, ProgressBar
from mlpx.chunked import BlockShuffle
from mlpx.determinism import deterministic, is_deterministic, set_deterministic
from mlpx.layers import GELU, Dense, Dropout, Identity, LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from mlpx.locking import ConcurrentTrainingError
from mlpx.loggers import CSVLogger, MLflowLogger, TensorBoardLogger
from mlpx.losses import LOSSES
from mlpx.loading import load
from mlpx.model import MLP, Sequential
from mlpx.optimizers import SGD, Adam, AdamW, RMSprop
from mlpx.saving import ModelCheckpoint, ModelFileError, load_checkpoint, save_checkpoint
from mlpx.schedules import Adaptive, Constant, Cosine, InverseScaling, StepDecay
from mlpx.stacked import Stack
from mlpx.training import History, TrainingDivergedError
from mlpx.validation import InvalidParameterError

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS",
    "Adaptive",
    "GELU",
    "LOSSES",
    "MLP",
    "SGD",
    "Adam",
    "AdamW",
    "BlockShuffle",
    "CSVLogger",
    "Callback",
    "ConcurrentTrainingError",
    "Constant",
    "Cosine",
    "Dense",
    "Dropout",
    "EarlyStopping",
    "History",
    "Identity",
    "InvalidParameterError",
    "InverseScaling",
    "LeakyReLU",
    "MLflowLogger",
    "ModelCheckpoint",
    "ProgressBar",
    "RMSprop",
    "ReLU",
    "Sequential",
    "Sigmoid",
    "Stack",
    "Softmax",
    "StepDecay",
    "Tanh",
    "TensorBoardLogger",
    "MLPClassifier",
    "MLPRegressor",
    "ModelFileError",
    "TrainingDivergedError",
    "available_backends",
    "deterministic",
    "get_backend",
    "is_deterministic",
    "load",
    "load_checkpoint",
    "save_checkpoint",
    "set_deterministic",
]


if _TYPE_CHECKING:  # imported lazily at run time (below); type checkers see the classes
    from mlpx.estimators import MLPClassifier, MLPRegressor


def __getattr__(name: str) -> _Any:
    # The scikit-learn estimators import scikit-learn: load them on first access so
    # that ``import mlpx`` works without it.
    if name in ("MLPClassifier", "MLPRegressor"):
        from mlpx import estimators

        return getattr(estimators, name)
    raise AttributeError(f"module 'mlpx' has no attribute {name!r}")
