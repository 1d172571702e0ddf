"""
A stacked grid search against scikit-learn's
============================================

:class:`mlpx.model_selection.GridSearchCV` is scikit-learn's ``GridSearchCV``
whose mlpx fits that share an architecture train together as one
:class:`mlpx.Stack`: one batched product per layer and step for all of them.
Here a grid of 6 settings × 3 folds = 18 fits (10 epochs each) runs three
ways, one after another: stacked, scikit-learn's search over its own ``MLPClassifier``, and
scikit-learn's search over ``mlpx.MLPClassifier`` one fit after another. In
float64 on the CPU each stacked member follows its own fit to rounding, so the
scores agree.

The measured comparison (60 fits of 50 epochs, interleaved rounds) is in the
benchmark report; this one is sized for the documentation build, and its
one-off timings on a shared machine are only indicative.
"""

import time

import numpy as np
import sklearn.model_selection
import sklearn.neural_network
from sklearn.datasets import load_digits

import mlpx
from mlpx.model_selection import GridSearchCV

X, y = load_digits(return_X_y=True)
X = X / 16.0
grid = {"alpha": [1e-4, 1e-2], "learning_rate_init": [1e-3, 1e-2, 3e-2]}
common = dict(hidden_layer_sizes=(64,), max_iter=10, batch_size=64, random_state=0)

searches = {
    "mlpx stacked": GridSearchCV(mlpx.MLPClassifier(**common, dtype="float64"), grid, cv=3),
    "scikit-learn, its MLPClassifier": sklearn.model_selection.GridSearchCV(
        sklearn.neural_network.MLPClassifier(**common), grid, cv=3),
    "scikit-learn, mlpx.MLPClassifier": sklearn.model_selection.GridSearchCV(
        mlpx.MLPClassifier(**common, dtype="float64"), grid, cv=3),
}
scores = {}
for name, search in searches.items():
    start = time.perf_counter()
    search.fit(X, y)
    scores[name] = search.cv_results_["mean_test_score"]
    print(f"{name:34s} {time.perf_counter() - start:6.2f} s  best {search.best_params_}")

# %%
# Every candidate trained in a stack, and the mean test scores equal
# scikit-learn's to rounding.
stacked = searches["mlpx stacked"]
print("stacked:", stacked.cv_results_["stacked"])
print("largest score difference vs scikit-learn:",
      np.max(np.abs(scores["mlpx stacked"] - scores["scikit-learn, its MLPClassifier"])))
