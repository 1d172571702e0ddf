"""scikit-learn compatible estimators: :class:`MLPClassifier` and :class:`MLPRegressor`.

Drop-in replacements for scikit-learn's ``neural_network`` estimators that train on
any mlpx backend. ``_base`` holds what both share, ``_classifier`` and
``_regressor`` what differs, ``_runtime`` the device-side state behind them.
"""

from typing import Any

from mlpx.estimators._classifier import MLPClassifier
from mlpx.estimators._persistence import load_estimator as _load
from mlpx.estimators._regressor import MLPRegressor
from mlpx.saving import MAX_PARAMS

__all__ = ["MLPClassifier", "MLPRegressor", "load_estimator"]


def load_estimator(path: Any, backend: Any = "cpu", *, max_params: int = MAX_PARAMS) -> Any:
    """A fitted estimator written by ``est.save(path)``; ``mlpx.load`` calls this for such files.

    Parameters
    ----------
    path : str or path
        ``path + ".npz"`` is found when ``path`` does not exist.
    backend : str or Backend, default "cpu"
        The loaded estimator's ``backend`` parameter (where it predicts and trains).
    max_params : int, default :data:`mlpx.saving.MAX_PARAMS`
        Refuse files that describe more parameters than this.

    Returns
    -------
    MLPClassifier or MLPRegressor
        Fitted: its hyperparameters, weights, fitted attributes, label encoding and
        optimizer state, so ``predict``, ``predict_proba``, ``score`` and
        ``partial_fit`` continue as on the estimator saved.

    Raises
    ------
    mlpx.ModelFileError
        A damaged or crafted file (checked as a model file, and every estimator
        field against the network, before the weights are read).
    """
    return _load(path, {"MLPClassifier": MLPClassifier, "MLPRegressor": MLPRegressor}, backend,
                 max_params=max_params)
