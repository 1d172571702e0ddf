"""scikit-learn's own MLP tests, run against mlpx's estimators.

The installed scikit-learn's ``sklearn/neural_network/tests/test_mlp.py`` (read from
the installed package, never vendored) is copied twice into a temporary folder: as it
is (the control) and with only its import of ``MLPClassifier`` and ``MLPRegressor``
swapped to ``mlpx``'s. Both run in pytest subprocesses side by side, with
scikit-learn's ``sklearn/conftest.py`` as a plugin (its seed fixtures). The swapped
file must fail only where the control fails, and in the three tests that read
scikit-learn's private attributes (:data:`PRIVATE`), which mlpx's estimators do not
have.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from _sklearn_suite import installed_suite, outcomes, run_side_by_side

SUITE = "sklearn.neural_network.tests.test_mlp"
SKLEARN_IMPORT = "from sklearn.neural_network import MLPClassifier, MLPRegressor\n"
MLPX_IMPORT = "from mlpx import MLPClassifier, MLPRegressor\n"

#: Tests of the file that read scikit-learn's private internals: the L-BFGS loss
#: function ``_loss_grad_lbfgs`` and the optimizer object ``_optimizer``.
PRIVATE = {"test_gradient": "_loss_grad_lbfgs", "test_learning_rate_warmstart": "_optimizer",
           "test_adaptive_learning_rate": "_optimizer"}


def _failed(junit: Path) -> set[str]:
    """Names of the failed or erroring tests (parametrised ids dropped)."""
    return {name.split("[")[0] for name, state in outcomes(junit).items() if state == "failed"}


def test_the_swap_changes_one_line():
    source = installed_suite(SUITE).read_text()
    assert source.count(SKLEARN_IMPORT) == 1, "test_mlp.py's import of the estimators changed: look at the swap"


@pytest.mark.slow
def test_scikit_learns_mlp_tests_pass_on_mlpx_estimators_but_for_private_attributes(tmp_path):
    import sklearn

    source = installed_suite(SUITE).read_text()
    runs = {"control": source, "swapped": source.replace(SKLEARN_IMPORT, MLPX_IMPORT)}
    logs = run_side_by_side(tmp_path, "test_mlp.py", runs)
    control, swapped = (_failed(tmp_path / name / "junit.xml") for name in runs)
    n = len(outcomes(tmp_path / "swapped" / "junit.xml"))
    assert n == len(outcomes(tmp_path / "control" / "junit.xml")) and n > 50
    print(f"scikit-learn {sklearn.__version__} test_mlp.py: {n} tests, control failed {sorted(control)}, "
          f"swapped failed {sorted(swapped)}")
    assert swapped - control <= set(PRIVATE), (
        f"failing only with mlpx's estimators: {sorted(swapped - control - set(PRIVATE))}\n{logs['swapped'][-4000:]}")
    for test, attribute in PRIVATE.items():  # they fail for the private attribute, not for a result
        if test in swapped - control:
            assert attribute in logs["swapped"], test
