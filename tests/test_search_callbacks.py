"""scikit-learn's search callbacks (``sklearn.callback``, scikit-learn >= 1.9) on mlpx's searches.

Reference: scikit-learn's own ``GridSearchCV`` / ``RandomizedSearchCV`` over the same
mlpx estimator, which fits one candidate and fold at a time through
``_fit_and_score``. mlpx's searches train those fits as stacks and must report the
same task tree to the callbacks: the same hooks, tasks, data and metadata, one
``candidate-split-evaluation`` task per member fit, every task begun inside its
parent and ended before it.
"""

from __future__ import annotations

import hashlib
import warnings
from collections import Counter
from typing import Any

import numpy as np
import pytest
import sklearn.model_selection as skms
from scipy.stats import loguniform
from sklearn.datasets import load_digits
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import mlpx
from mlpx.model_selection import CALLBACK_PIPELINE_REASON, GridSearchCV, RandomizedSearchCV

pytest.importorskip("sklearn.callback", reason="scikit-learn < 1.9 has no search callbacks")

pytestmark = [
    pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning"),
    # the mlpx estimators take no callbacks of their own: scikit-learn says so when it propagates
    pytest.mark.filterwarnings("ignore:The estimator .* does not support callbacks"),
]


def _digest(a: Any) -> str | None:
    if a is None:
        return None
    a = np.ascontiguousarray(np.asarray(a))
    return f"{a.shape}:{hashlib.sha1(a.tobytes()).hexdigest()[:12]}"


class Recorder:
    """A FitCallback that records every hook call with its task path and arguments."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def setup(self, estimator: Any, context: Any) -> None:
        self.events.append(("setup", type(estimator).__name__))

    def teardown(self, estimator: Any, context: Any) -> None:
        self.events.append(("teardown", type(estimator).__name__))

    def _task(self, hook: str, estimator: Any, context: Any, X: Any, y: Any, metadata: Any) -> None:
        path = []
        c = context
        while c is not None:
            path.append((c.estimator_name, c.task_name, c.task_id))
            c = c.parent
        sw = None if not metadata else _digest(metadata.get("sample_weight"))
        self.events.append((hook, tuple(reversed(path)), type(estimator).__name__, _digest(X), _digest(y), sw))

    def on_fit_task_begin(self, estimator: Any, context: Any, *, X: Any = None, y: Any = None,
                          metadata: Any = None) -> None:
        self._task("begin", estimator, context, X, y, metadata)

    def on_fit_task_end(self, estimator: Any, context: Any, *, X: Any = None, y: Any = None,
                        metadata: Any = None) -> None:
        self._task("end", estimator, context, X, y, metadata)


class AutoRecorder(Recorder):
    """The same, auto-propagated to the sub-estimators at every depth."""

    max_propagation_depth = None


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X[:300] / 16.0, y[:300]


def _tasks(rec: Recorder) -> Counter:
    return Counter(e for e in rec.events if e[0] in ("begin", "end"))


def _well_nested(rec: Recorder) -> None:
    """Each task begins once and ends once after it, inside its parent's begin and end."""
    pos: dict[tuple[str, tuple[Any, ...]], list[int]] = {}
    for i, e in enumerate(rec.events):
        if e[0] in ("begin", "end"):
            pos.setdefault((e[0], e[1]), []).append(i)
    for (hook, path), at in pos.items():
        assert len(at) == 1, (hook, path)
        if hook != "begin":
            continue
        (b,), (e,) = at, pos[("end", path)]
        assert b < e, path
        if len(path) > 1:
            assert pos[("begin", path[:-1])][0] < b and e < pos[("end", path[:-1])][0], path
    assert rec.events[0][0] == "setup" and rec.events[-1][0] == "teardown"


def _run(search: Any, X: Any, y: Any, **fit_params: Any) -> tuple[Recorder, Recorder]:
    plain, auto = Recorder(), AutoRecorder()
    search.set_callbacks(plain, auto).fit(X, y, **fit_params)
    return plain, auto


@pytest.mark.parametrize("refit", [True, False])
def test_stacked_grid_search_reports_every_member_fit_as_scikit_learn(refit, digits):
    X, y = digits
    est = mlpx.MLPClassifier(hidden_layer_sizes=(8,), max_iter=3, batch_size=32, random_state=0)
    grid = {"alpha": [1e-4, 1e-2], "learning_rate_init": [1e-3, 1e-2, 3e-2]}
    sw = np.random.default_rng(0).uniform(0.5, 2.0, len(y))
    ours = GridSearchCV(est, grid, cv=3, refit=refit)
    theirs = skms.GridSearchCV(est, grid, cv=3, refit=refit)
    got, want = _run(ours, X, y, sample_weight=sw), _run(theirs, X, y, sample_weight=sw)
    assert ours.stacking_report()["stacked"].all()
    for g, w in zip(got, want):
        assert _tasks(g) == _tasks(w)
        _well_nested(g)
        evaluations = [e for e in g.events if e[0] == "begin" and e[1][-1][1] == "candidate-split-evaluation"]
        assert len(evaluations) == 6 * 3  # one per member fit
        assert all(e[2] == "GridSearchCV" and e[5] is not None for e in evaluations)  # the search, its weights
        assert sum(e[0] == "begin" for e in g.events) == 1 + 1 + refit + 18
    np.testing.assert_allclose(ours.cv_results_["mean_test_score"], theirs.cv_results_["mean_test_score"],
                               rtol=0, atol=1e-10)


def test_stacked_randomized_search_reports_as_scikit_learn(digits):
    X, y = digits
    est = mlpx.MLPRegressor(hidden_layer_sizes=(6,), max_iter=2, batch_size=50, random_state=0)
    dist = {"alpha": loguniform(1e-5, 1e-1)}
    ours = RandomizedSearchCV(est, dist, n_iter=4, cv=2, random_state=0)
    theirs = skms.RandomizedSearchCV(est, dist, n_iter=4, cv=2, random_state=0)
    got, want = _run(ours, X, y.astype(float)), _run(theirs, X, y.astype(float))
    assert ours.stacking_report()["stacked"].all()
    for g, w in zip(got, want):
        assert _tasks(g) == _tasks(w) and g.events.count(("setup", "RandomizedSearchCV")) == 1
        _well_nested(g)


def test_a_pipeline_that_reports_its_steps_is_fitted_by_its_own_fit(digits):
    X, y = digits
    pipe = make_pipeline(StandardScaler(), mlpx.MLPClassifier(hidden_layer_sizes=(8,), max_iter=2, random_state=0))
    grid = {"mlpclassifier__alpha": [1e-4, 1e-2]}
    # auto-propagated callbacks reach the Pipeline's steps: only Pipeline.fit reports those
    ours, theirs = GridSearchCV(pipe, grid, cv=2), skms.GridSearchCV(pipe, grid, cv=2)
    got, want = _run(ours, X, y), _run(theirs, X, y)
    for g, w in zip(got, want):
        assert _tasks(g) == _tasks(w)
        _well_nested(g)
    assert any(e[0] == "begin" and e[2] == "StandardScaler" for e in got[1].events)  # the steps report
    report = ours.stacking_report()
    assert not report["stacked"].any() and set(report["reason"]) == {CALLBACK_PIPELINE_REASON}
    # callbacks the Pipeline does not get: it stacks, and the search's tasks are scikit-learn's
    plain_ours, plain_theirs = Recorder(), Recorder()
    ours = GridSearchCV(pipe, grid, cv=2).set_callbacks(plain_ours).fit(X, y)
    skms.GridSearchCV(pipe, grid, cv=2).set_callbacks(plain_theirs).fit(X, y)
    assert ours.stacking_report()["stacked"].all()
    assert _tasks(plain_ours) == _tasks(plain_theirs)
    _well_nested(plain_ours)


@pytest.mark.filterwarnings("ignore:One or more of the test scores are non-finite")
def test_failing_member_fits_report_as_scikit_learn_and_every_begun_task_ends(digits):
    X, y = digits
    est = mlpx.MLPClassifier(hidden_layer_sizes=(8,), max_iter=2, random_state=0)
    grid = {"alpha": [1e-4, -1.0]}  # a negative alpha fails the parameter check in fit
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FitFailedWarning
        got, want = _run(GridSearchCV(est, grid, cv=2), X, y), _run(skms.GridSearchCV(est, grid, cv=2), X, y)
    for g, w in zip(got, want):
        assert _tasks(g) == _tasks(w)
        _well_nested(g)
    rec = Recorder()
    with pytest.raises(ValueError, match="alpha"):
        GridSearchCV(est, grid, cv=2, error_score="raise").set_callbacks(rec).fit(X, y)
    hooks = Counter((e[0], e[1][-1][1]) for e in rec.events if e[0] in ("begin", "end"))
    assert hooks[("begin", "candidate-split-evaluation")] == hooks[("end", "candidate-split-evaluation")] == 4
    assert rec.events[-1] == ("teardown", "GridSearchCV")


def test_stacking_report_before_and_after_fit(digits):
    X, y = digits
    search = GridSearchCV(mlpx.MLPClassifier(hidden_layer_sizes=(4,), max_iter=2, random_state=0),
                          {"solver": ["adam", "lbfgs"]}, cv=2)
    with pytest.raises(NotFittedError):
        search.stacking_report()
    search.fit(X, y)
    report = search.stacking_report()
    assert list(report["stacked"]) == [True, False] and report["reason"][0] == "" and "lbfgs" in report["reason"][1]
    report["stacked"][:] = False  # a copy: the search keeps its own
    assert search.stacking_report()["stacked"][0]
    assert set(search.cv_results_) == set(skms.GridSearchCV(search.estimator, search.param_grid, cv=2)
                                         .fit(X, y).cv_results_)
