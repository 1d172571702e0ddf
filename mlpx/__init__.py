"""mlpx: multi-layer perceptrons on the CPU (NumPy/BLAS) and NVIDIA GPUs (CuPy/cuBLAS).

One model code, two devices: pick ``backend="cpu"``, ``"gpu"`` or ``"auto"``.

>>> import mlpx
>>> model = mlpx.MLP([64, 128, 64, 32, 10], activation="relu", output="softmax", seed=0)
>>> history = model.fit(X, y, epochs=20, batch_size=64)        # doctest: +SKIP
>>> model.save("digits.npz"); mlpx.load("digits.npz", backend="gpu")  # doctest: +SKIP
"""

import importlib.util as _importlib_util
import os as _os

# backends/ is installed as mlpx.backends (pyproject maps it). When mlpx is imported
# straight from a source checkout without installing, find it beside mlpx/ instead.
if _importlib_util.find_spec("mlpx.backends") is None:  # pragma: no cover - uninstalled checkout
    __path__.append(_os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))))

from mlpx.activations import ACTIVATIONS
from mlpx.backends import available_backends, get_backend
from mlpx.callbacks import Callback, EarlyStopping, ProgressBar
from mlpx.chunked import BlockShuffle
from mlpx.layers import GELU, Dense, Dropout, Identity, LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from mlpx.losses import LOSSES
from mlpx.model import MLP, Sequential, load
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
    "Callback",
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
    "MLPClassifier",
    "MLPRegressor",
    "ModelFileError",
    "TrainingDivergedError",
    "available_backends",
    "get_backend",
    "load",
    "load_checkpoint",
    "save_checkpoint",
]


def __getattr__(name: str):
    # The scikit-learn estimators import scikit-learn: load them on first access so
    # that ``import mlpx`` works without it.
    if name in ("MLPClassifier", "MLPRegressor"):
        from mlpx import estimators

        return getattr(estimators, name)
    raise AttributeError(f"module 'mlpx' has no attribute {name!r}")
