"""scikit-learn compatible estimators: :class:`MLPClassifier` and :class:`MLPRegressor`.

Drop-in replacements for scikit-learn's ``neural_network`` estimators that train on
any mlpx backend. ``_base`` holds what both share, ``_classifier`` and
``_regressor`` what differs, ``_runtime`` the device-side state behind them.
"""

from mlpx.estimators._classifier import MLPClassifier
from mlpx.estimators._regressor import MLPRegressor

__all__ = ["MLPClassifier", "MLPRegressor"]
