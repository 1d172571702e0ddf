"""Searches in one pass: stacked fits equal fits one by one, and scikit-learn's searches.

References: each stacked estimator against the same estimator fitted by itself
(``fit``: weights to 1e-10, the same ``n_iter_``, loss curve, early-stopping state),
and :class:`mlpx.model_selection.GridSearchCV` / ``RandomizedSearchCV`` against
scikit-learn's own searches over scikit-learn's ``MLPClassifier`` / ``MLPRegressor``
on the same grid and folds (equal ``cv_results_`` scores).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import sklearn.model_selection as skms
import sklearn.neural_network as sknn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.base import clone
from sklearn.datasets import load_digits, make_regression
from sklearn.exceptions import ConvergenceWarning, FitFailedWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import mlpx
from mlpx.estimators._stacked import LBFGS_REASON, fit_stacked
from mlpx.model_selection import GridSearchCV, RandomizedSearchCV

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X[:500] / 16.0, y[:500]


@pytest.fixture(scope="module")
def regression():
    X, y = make_regression(300, 8, n_targets=2, noise=1.0, random_state=0)
    return X, y / 100.0


def _same_fit(a, b, tol=1e-10):
    for x, z in zip(a.coefs_ + a.intercepts_, b.coefs_ + b.intercepts_):
        np.testing.assert_allclose(x, z, rtol=0, atol=tol)
    assert a.n_iter_ == b.n_iter_ and a.t_ == b.t_
    np.testing.assert_allclose(a.loss_curve_, b.loss_curve_, rtol=1e-12)
    if a.early_stopping:
        np.testing.assert_allclose(a.validation_scores_, b.validation_scores_, rtol=0, atol=1e-12)
        assert a.best_validation_score_ == pytest.approx(b.best_validation_score_, abs=1e-12)
    else:
        assert a.best_loss_ == pytest.approx(b.best_loss_, rel=1e-12)


# ------------------------------------------------------------ fit_stacked
@pytest.mark.parametrize("kind", ["classifier", "regressor"])
def test_every_stacked_fit_equals_its_own_fit(kind, digits, regression):
    X, y = digits if kind == "classifier" else regression
    cls = mlpx.MLPClassifier if kind == "classifier" else mlpx.MLPRegressor
    base = cls(hidden_layer_sizes=(12,), max_iter=8, batch_size=40, random_state=0)
    halves = [(X[: 2 * len(y) // 3], y[: 2 * len(y) // 3]), (X[len(y) // 4 :], y[len(y) // 4 :])]
    w = np.random.default_rng(0).uniform(0.2, 2.0, len(y))
    ws = [w[: 2 * len(y) // 3], w[len(y) // 4 :]]
    grid = [dict(solver=s, alpha=a, learning_rate_init=lr, early_stopping=es, random_state=rs, tol=tol,
                 n_iter_no_change=nc, learning_rate=sched, momentum=mom, beta_1=b1)
            for s, a, lr, es, rs, tol, nc, sched, mom, b1 in [
                ("adam", 1e-4, 1e-3, False, 0, 1e-4, 10, "constant", 0.9, 0.9),
                ("adam", 1e-1, 1e-2, True, 1, 1e-4, 2, "constant", 0.9, 0.8),
                ("adam", 1e-3, 3e-2, False, 2, 1e-2, 1, "constant", 0.9, 0.5),
                ("sgd", 1e-4, 1e-2, False, 0, 1e-4, 10, "invscaling", 0.9, 0.9),
                ("sgd", 1e-2, 1e-1, True, 3, 1e-4, 3, "adaptive", 0.5, 0.9),
                ("sgd", 1e-3, 5e-2, False, 4, 1e-1, 1, "adaptive", 0.0, 0.9),
            ]]
    ests, Xs, ys, sws = [], [], [], []
    for i, g in enumerate(grid * 2):
        ests.append(clone(base).set_params(**g))
        Xs.append(halves[i % 2][0])
        ys.append(halves[i % 2][1])
        sws.append(ws[i % 2] if i >= len(grid) else None)
    out = fit_stacked(ests, Xs, ys, sws)
    assert all(o.error is None and o.stacked for o in out), [o.error for o in out]
    assert len({o.group for o in out}) == 2  # adam and sgd: two stacks
    for est, X_k, y_k, w_k in zip(ests, Xs, ys, sws):
        ref = clone(est).fit(X_k, y_k, sample_weight=w_k)
        _same_fit(est, ref)
        np.testing.assert_allclose(est.predict(X_k), ref.predict(X_k), rtol=0, atol=1e-10)


def test_stacked_fits_continue_like_their_own_fits(digits):
    """The optimizer state comes back to each estimator: partial_fit continues exactly."""
    X, y = digits
    est = mlpx.MLPClassifier(hidden_layer_sizes=(10,), max_iter=3, batch_size=50, random_state=0)
    a, b = clone(est), clone(est).set_params(learning_rate_init=1e-2)
    fit_stacked([a, b], [X, X], [y, y])
    ref = clone(est).fit(X, y)
    a.partial_fit(X, y)
    ref.partial_fit(X, y)
    _same_fit(a, ref)


def test_unstackable_fits_run_alone_and_say_why(digits):
    X, y = digits
    import scipy.sparse as sp

    lb = mlpx.MLPClassifier(hidden_layer_sizes=(8,), solver="lbfgs", max_iter=5, random_state=0)
    sparse = mlpx.MLPClassifier(hidden_layer_sizes=(8,), max_iter=2, random_state=0)
    out = fit_stacked([lb, sparse, LogisticRegression(max_iter=50)], [X, sp.csr_matrix(X), X], [y, y, y])
    assert [o.stacked for o in out] == [False, False, False]
    assert out[0].reason == LBFGS_REASON and "sparse X" in out[1].reason and "LogisticRegression" in out[2].reason
    _same_fit(sparse, clone(sparse).fit(sp.csr_matrix(X), y))


def test_fit_errors_are_returned_per_fit(digits):
    X, y = digits
    good = mlpx.MLPClassifier(hidden_layer_sizes=(8,), max_iter=2, random_state=0)
    bad = clone(good).set_params(alpha=-1.0)  # refused by the parameter check, as fit refuses it
    out = fit_stacked([good, bad], [X, X], [y, y])
    assert out[0].error is None
    assert isinstance(out[1].error, ValueError) and "alpha" in str(out[1].error)
    with pytest.raises(ValueError, match="alpha"):
        clone(bad).fit(X, y)


# ------------------------------------------------------- against sklearn
def _compare(a, b, keys=("mean_test_score", "split0_test_score", "std_test_score")):
    for k in keys:
        np.testing.assert_allclose(a.cv_results_[k], b.cv_results_[k], rtol=0, atol=1e-10, err_msg=k)
    assert [str(p) for p in a.cv_results_["params"]] == [str(p) for p in b.cv_results_["params"]]
    ranks = [k for k in b.cv_results_ if k.startswith("rank_test_")]
    assert ranks and all(np.array_equal(a.cv_results_[k], b.cv_results_[k]) for k in ranks)


@pytest.mark.parametrize("solver", ["adam", "sgd"])
@pytest.mark.parametrize("kind", ["classifier", "regressor"])
def test_grid_scores_equal_scikit_learn(solver, kind, digits, regression):
    X, y = digits if kind == "classifier" else regression
    ours, theirs = (mlpx.MLPClassifier, sknn.MLPClassifier) if kind == "classifier" else \
        (mlpx.MLPRegressor, sknn.MLPRegressor)
    kw = dict(hidden_layer_sizes=(16,), solver=solver, max_iter=10, batch_size=32, random_state=0)
    grid = {"alpha": [1e-4, 1e-1], "learning_rate_init": [1e-3, 1e-2], "early_stopping": [False, True]}
    sw = np.random.default_rng(1).uniform(0.2, 2.0, len(y))
    a = GridSearchCV(ours(**kw), grid, cv=3, return_train_score=True).fit(X, y, sample_weight=sw)
    b = skms.GridSearchCV(theirs(**kw), grid, cv=3, return_train_score=True).fit(X, y, sample_weight=sw)
    _compare(a, b, ("mean_test_score", "split2_test_score", "mean_train_score", "split1_train_score"))
    report = a.stacking_report()
    assert report["stacked"].all() and (report["reason"] == "").all()
    assert set(a.cv_results_) == set(b.cv_results_)
    assert a.best_params_ == b.best_params_ and a.best_index_ == b.best_index_
    assert a.best_score_ == pytest.approx(b.best_score_, abs=1e-12)
    assert a.n_splits_ == b.n_splits_ == 3 and a.multimetric_ is b.multimetric_ is False
    # the refit best estimator is an ordinary mlpx fit of the best candidate
    np.testing.assert_allclose(a.best_estimator_.coefs_[0], b.best_estimator_.coefs_[0], rtol=0, atol=1e-10)
    np.testing.assert_allclose(a.predict(X[:20]), b.predict(X[:20]), rtol=0, atol=1e-10)
    assert a.refit_time_ > 0


@given(
    alphas=st.lists(st.sampled_from([0.0, 1e-4, 1e-2, 1.0]), min_size=1, max_size=2, unique=True),
    lrs=st.lists(st.sampled_from([1e-3, 1e-2, 5e-2]), min_size=1, max_size=2, unique=True),
    hidden=st.lists(st.sampled_from([(4,), (8,), (6, 3)]), min_size=1, max_size=2, unique=True),
    batch=st.sampled_from([16, 50, "auto"]),
    folds=st.integers(2, 3),
    seed=st.integers(0, 3),
)
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_small_grids_equal_scikit_learn(alphas, lrs, hidden, batch, folds, seed, digits):
    X, y = digits
    X, y = X[:240], y[:240]
    kw = dict(max_iter=4, batch_size=batch, random_state=seed)
    grid = {"alpha": alphas, "learning_rate_init": lrs, "hidden_layer_sizes": hidden}
    a = GridSearchCV(mlpx.MLPClassifier(**kw), grid, cv=folds).fit(X, y)
    b = skms.GridSearchCV(sknn.MLPClassifier(**kw), grid, cv=folds).fit(X, y)
    _compare(a, b)


def test_randomized_search_draws_and_scores_as_scikit_learn(regression):
    from scipy.stats import loguniform

    X, y = regression
    kw = dict(hidden_layer_sizes=(8,), max_iter=6, batch_size=32, random_state=0)
    dist = {"alpha": loguniform(1e-5, 1e-1), "learning_rate_init": loguniform(1e-4, 1e-2)}
    a = RandomizedSearchCV(mlpx.MLPRegressor(**kw), dist, n_iter=5, cv=3, random_state=0).fit(X, y)
    b = skms.RandomizedSearchCV(sknn.MLPRegressor(**kw), dist, n_iter=5, cv=3, random_state=0).fit(X, y)
    _compare(a, b)


def test_multimetric_scoring_and_refit_by_name(digits):
    X, y = digits
    kw = dict(hidden_layer_sizes=(10,), max_iter=5, batch_size=50, random_state=0)
    grid = {"alpha": [1e-4, 1e-1]}
    scoring = ["accuracy", "neg_log_loss", "f1_macro"]
    a = GridSearchCV(mlpx.MLPClassifier(**kw), grid, cv=2, scoring=scoring, refit="neg_log_loss").fit(X, y)
    b = skms.GridSearchCV(sknn.MLPClassifier(**kw), grid, cv=2, scoring=scoring, refit="neg_log_loss").fit(X, y)
    _compare(a, b, [f"mean_test_{s}" for s in scoring])
    assert a.multimetric_ and set(a.scorer_) == set(scoring) and a.best_index_ == b.best_index_
    with pytest.raises(ValueError):
        GridSearchCV(mlpx.MLPClassifier(**kw), grid, cv=2, scoring="no_such_scorer").fit(X, y)


def test_pipelines_fit_their_preprocessing_per_fold(digits):
    X, y = digits
    kw = dict(hidden_layer_sizes=(10,), max_iter=5, batch_size=50, random_state=0)
    grid = {"mlpclassifier__alpha": [1e-4, 1e-1], "standardscaler__with_mean": [True, False]}
    sw = np.random.default_rng(2).uniform(0.5, 1.5, len(y))
    a = GridSearchCV(make_pipeline(StandardScaler(), mlpx.MLPClassifier(**kw)), grid, cv=3)
    a.fit(X, y, mlpclassifier__sample_weight=sw)
    b = skms.GridSearchCV(make_pipeline(StandardScaler(), sknn.MLPClassifier(**kw)), grid, cv=3)
    b.fit(X, y, mlpclassifier__sample_weight=sw)
    _compare(a, b)
    assert a.stacking_report()["stacked"].all()
    # fit parameters for other steps: fitted one by one (and the same scores)
    a2 = GridSearchCV(make_pipeline(StandardScaler(), mlpx.MLPClassifier(**kw)), {"mlpclassifier__alpha": [1e-4]},
                      cv=2).fit(X, y, standardscaler__sample_weight=sw)
    report = a2.stacking_report()
    assert not report["stacked"].any() and "standardscaler__sample_weight" in report["reason"][0]


def test_lbfgs_and_foreign_estimators_are_searched_one_fit_at_a_time(digits):
    X, y = digits
    kw = dict(hidden_layer_sizes=(8,), max_iter=20, random_state=0)
    grid = {"alpha": [1e-4, 1e-1], "solver": ["lbfgs", "adam"]}
    a = GridSearchCV(mlpx.MLPClassifier(**kw), grid, cv=2).fit(X, y)
    b = skms.GridSearchCV(sknn.MLPClassifier(**kw), grid, cv=2).fit(X, y)
    _compare(a, b)
    lbfgs = np.array([p["solver"] == "lbfgs" for p in a.cv_results_["params"]])
    report = a.stacking_report()
    assert (report["stacked"] == ~lbfgs).all() and (report["reason"][~lbfgs] == "").all()
    assert all(r == LBFGS_REASON for r in report["reason"][lbfgs])
    c = GridSearchCV(LogisticRegression(max_iter=200), {"C": [0.1, 1.0]}, cv=2).fit(X, y)
    d = skms.GridSearchCV(LogisticRegression(max_iter=200), {"C": [0.1, 1.0]}, cv=2).fit(X, y)
    _compare(c, d)
    assert not c.stacking_report()["stacked"].any()
    assert set(c.cv_results_) == set(d.cv_results_)


@pytest.mark.filterwarnings("ignore:One or more of the test scores are non-finite")
def test_failing_candidates_get_the_error_score_or_raise(digits):
    X, y = digits
    kw = dict(hidden_layer_sizes=(8,), max_iter=3, random_state=0)
    grid = {"alpha": [1e-4, -1.0]}  # a negative alpha fails the parameter check in fit
    with pytest.warns(FitFailedWarning):
        a = GridSearchCV(mlpx.MLPClassifier(**kw), grid, cv=2).fit(X, y)
    assert np.isnan(a.cv_results_["mean_test_score"][1]) and np.isfinite(a.cv_results_["mean_test_score"][0])
    with pytest.raises(ValueError, match="alpha"):
        GridSearchCV(mlpx.MLPClassifier(**kw), grid, cv=2, error_score="raise").fit(X, y)


def test_max_stack_splits_stacks_without_changing_results(digits):
    X, y = digits
    kw = dict(hidden_layer_sizes=(8,), max_iter=3, batch_size=64, random_state=0)
    grid = {"alpha": [1e-4, 1e-2, 1e-1], "learning_rate_init": [1e-3, 1e-2]}
    a = GridSearchCV(mlpx.MLPClassifier(**kw), grid, cv=2, max_stack=5).fit(X, y)
    b = GridSearchCV(mlpx.MLPClassifier(**kw), grid, cv=2).fit(X, y)
    _compare(a, b)
    assert a.get_params()["max_stack"] == 5
    with pytest.raises(ValueError):
        GridSearchCV(mlpx.MLPClassifier(**kw), grid, max_stack="many").fit(X, y)


def test_cv_splitters_groups_and_refit_false(digits):
    X, y = digits
    groups = np.arange(len(y)) % 4
    kw = dict(hidden_layer_sizes=(8,), max_iter=3, random_state=0)
    grid = {"alpha": [1e-4, 1e-2]}
    cv = skms.GroupKFold(n_splits=2)
    a = GridSearchCV(mlpx.MLPClassifier(**kw), grid, cv=cv, refit=False).fit(X, y, groups=groups)
    b = skms.GridSearchCV(sknn.MLPClassifier(**kw), grid, cv=cv, refit=False).fit(X, y, groups=groups)
    _compare(a, b)
    assert not hasattr(a, "best_estimator_") and a.best_params_ == b.best_params_


def test_convergence_warnings_come_from_every_fit_as_alone(digits):
    X, y = digits
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        GridSearchCV(mlpx.MLPClassifier(hidden_layer_sizes=(4,), max_iter=2, random_state=0),
                     {"alpha": [1e-4, 1e-2]}, cv=2, refit=False).fit(X, y)
    assert sum(issubclass(w.category, ConvergenceWarning) for w in caught) == 4
