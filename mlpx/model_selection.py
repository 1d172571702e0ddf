"""Hyperparameter search in one pass: scikit-learn's searches, with the fits stacked.

:class:`GridSearchCV` and :class:`RandomizedSearchCV` are scikit-learn's (they
subclass them: same parameters, ``cv_results_``, ``best_estimator_``,
``best_params_``, ``best_score_``, ``best_index_``, ``refit``, ``n_splits_``,
``multimetric_``, ``scorer_``, ``refit_time_``, predict/score delegation), with one
change: the candidates × folds fits of :class:`mlpx.MLPClassifier` /
:class:`mlpx.MLPRegressor` (or of a ``Pipeline`` ending in one) that share
architecture, activation, solver and batch size train together as one
:class:`~mlpx.stacked.Stack`: one batched product per layer and step, one optimizer
pass, one Python loop for all of them (:func:`mlpx.estimators._stacked.fit_stacked`).

Every fit in a stack follows the fit ``fit`` would make to rounding (in float64
on the CPU: the same weights to 1e-10 and the same ``n_iter_``), so
``cv_results_`` holds the scores scikit-learn's own search gives. Within a stack,
``alpha``, ``learning_rate_init``, ``learning_rate``, ``power_t``, ``momentum``,
``beta_1``, ``beta_2``, ``epsilon``, ``random_state``, ``tol``,
``n_iter_no_change``, ``max_iter``, ``early_stopping`` and ``validation_fraction``
may vary; different hidden layer sizes, activations, solvers or batch sizes make
separate stacks.

A Pipeline's preprocessing is fitted per fold (and per setting of its own
parameters, once), on the training fold, as ``Pipeline.fit`` does; its final
estimator is the member. Fits that cannot stack run one by one through
scikit-learn's own ``_fit_and_score`` (with ``n_jobs`` workers), and say why in
the ``cv_results_`` columns ``stacked`` (True when every fold of the candidate
trained in a stack) and ``not_stacked_reason``, and on the ``mlpx`` logger:
``solver="lbfgs"`` (full-batch steps with a line search of its own), sparse ``X``,
an estimator that is not an mlpx MLP, fit parameters other than
``sample_weight``.

Examples
--------
>>> from sklearn.datasets import load_digits
>>> from mlpx import MLPClassifier
>>> from mlpx.model_selection import GridSearchCV
>>> X, y = load_digits(return_X_y=True)
>>> search = GridSearchCV(MLPClassifier(hidden_layer_sizes=(32,), max_iter=10, batch_size=64, random_state=0),
...                       {"alpha": [1e-4, 1e-2], "learning_rate_init": [1e-3, 1e-2]},
...                       cv=3).fit(X / 16.0, y)
>>> sorted(search.best_params_)
['alpha', 'learning_rate_init']
>>> bool(search.cv_results_["stacked"].all())    # all 4 × 3 fits trained as one stack
True
"""

from __future__ import annotations

import contextlib
import logging
import numbers
import time
import traceback
from collections import defaultdict
from typing import Any, Callable, TypeVar, cast

import numpy as np
from sklearn import model_selection as _sk
from sklearn.base import _fit_context, clone, is_classifier
from sklearn.metrics._scorer import _MultimetricScorer
from sklearn.model_selection import ParameterGrid, ParameterSampler, check_cv
from sklearn.model_selection._validation import (
    _fit_and_score,
    _insert_error_scores,
    _score,
    _warn_or_raise_about_fit_failures,
)
from sklearn.pipeline import Pipeline
from sklearn.utils.metaestimators import _safe_split
from sklearn.utils.parallel import Parallel, delayed
from sklearn.utils.validation import _check_method_params, _num_samples, indexable

from mlpx.estimators._base import BaseMLP
from mlpx.estimators._stacked import fit_stacked, stack_refusal

__all__ = ["GridSearchCV", "RandomizedSearchCV"]

log = logging.getLogger("mlpx")


def _one_blas_thread() -> Any:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


class _Task:
    """One candidate on one fold: what to fit, on what, and its result."""

    def __init__(self, cand: int, split: int, params: dict[str, Any], train: np.ndarray, test: np.ndarray) -> None:
        self.cand, self.split, self.params, self.train, self.test = cand, split, params, train, test
        self.estimator: Any = None  # the (pipeline or bare) estimator scored
        self.member: Any = None  # the mlpx estimator fitted in a stack
        self.Xt: Any = None  # the member's training X (after preprocessing)
        self.y_train: Any = None
        self.fit_params: dict[str, Any] = {}
        self.reason: str | None = None  # why not stacked
        self.error: str | None = None
        self.prep_time = 0.0
        self.result: dict[str, Any] | None = None


_F = TypeVar("_F", bound=Callable[..., Any])


def _search_fit_context(method: _F) -> _F:
    # scikit-learn's decorator, typed: its package has no annotations, which would
    # make the decorated fit untyped.
    return cast(_F, _fit_context(prefer_skip_nested_validation=False)(method))


class _StackedSearch:
    """The ``fit`` shared by both searches: scikit-learn's, with the fits stacked."""

    max_stack: int | None

    @_search_fit_context
    def fit(self, X: Any, y: Any = None, **params: Any) -> Any:
        """Run fit with all sets of parameters (see scikit-learn's ``BaseSearchCV.fit``).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
        **params : dict of str -> object
            Fit parameters (``sample_weight``, split by the folds; ``groups`` for
            the splitter), routed as scikit-learn routes them.

        Returns
        -------
        self
        """
        scorers, refit_metric = self._get_scorers()
        X, y = indexable(X, y)
        params = _check_method_params(X, params=params)
        routed = self._get_routed_params_for_fit(params)
        self._checked_cv_orig = check_cv(self.cv, y, classifier=is_classifier(self.estimator))
        self._check_input_parameters(X=X, y=y, split_params=routed.splitter.split)
        self.n_splits_ = self._checked_cv_orig.get_n_splits(X, y, **routed.splitter.split)
        base = clone(self.estimator)
        all_params: list[dict[str, Any]] = []
        all_out: list[dict[str, Any]] = []
        all_more: dict[str, list[Any]] = defaultdict(list)
        results: dict[str, Any] = {}

        def evaluate_candidates(candidate_params: Any, cv: Any = None, more_results: Any = None) -> dict[str, Any]:
            nonlocal results
            cv = cv or self._checked_cv_orig
            candidate_params = list(candidate_params)
            n_splits = self.n_splits_
            splits = list(cv.split(X, y, **routed.splitter.split))
            if len(splits) != n_splits:
                raise ValueError(f"cv.split and cv.get_n_splits return inconsistent results. "
                                 f"Expected {n_splits} splits, got {len(splits)}")
            if self.verbose > 0:
                print(f"Fitting {n_splits} folds for each of {len(candidate_params)} candidates, "
                      f"totalling {n_splits * len(candidate_params)} fits")
            out, more = self._evaluate(base, X, y, candidate_params, splits, scorers, routed)
            if len(out) < 1:
                raise ValueError("No fits were performed. Was the CV iterator empty? Were there no candidates?")
            _warn_or_raise_about_fit_failures(out, self.error_score)
            if callable(self.scoring):
                _insert_error_scores(out, self.error_score)
            all_params.extend(candidate_params)
            all_out.extend(out)
            for key, value in {**more, **(more_results or {})}.items():
                all_more[key].extend(value)
            results = self._format_results(all_params, n_splits, all_out, all_more)
            return results

        self._run_search(evaluate_candidates)
        first_test_score = all_out[0]["test_scores"]
        self.multimetric_ = isinstance(first_test_score, dict)
        if callable(self.scoring) and self.multimetric_:
            self._check_refit_for_multimetric(first_test_score)
            refit_metric = self.refit
        if self.refit or not self.multimetric_:
            self.best_index_ = self._select_best_index(self.refit, refit_metric, results)
            if not callable(self.refit):
                self.best_score_ = results[f"mean_test_{refit_metric}"][self.best_index_]
            self.best_params_ = results["params"][self.best_index_]
        if self.refit:
            self.best_estimator_ = clone(base).set_params(**clone(self.best_params_, safe=False))
            t0 = time.time()
            if y is not None:
                self.best_estimator_.fit(X, y, **routed.estimator.fit)
            else:
                self.best_estimator_.fit(X, **routed.estimator.fit)
            self.refit_time_ = time.time() - t0
            if hasattr(self.best_estimator_, "feature_names_in_"):
                self.feature_names_in_ = self.best_estimator_.feature_names_in_
        self.scorer_ = scorers._scorers if isinstance(scorers, _MultimetricScorer) else scorers
        self.cv_results_ = results
        return self

    # ------------------------------------------------------------ evaluation
    def _evaluate(self, base: Any, X: Any, y: Any, candidates: list[dict[str, Any]], splits: list[Any],
                  scorer: Any, routed: Any) -> tuple[list[dict[str, Any]], dict[str, list[Any]]]:
        """Every candidate on every fold: ``_fit_and_score``'s results, in its order."""
        fit_params = routed.estimator.fit
        score_params = routed.scorer.score
        tasks = [_Task(c, s, p, np.asarray(tr), np.asarray(te))
                 for c, p in enumerate(candidates) for s, (tr, te) in enumerate(splits)]
        prep_cache: dict[Any, tuple[Any, Any]] = {}
        for task in tasks:
            self._prepare(task, base, X, y, fit_params, prep_cache)
        stackable = [t for t in tasks if t.reason is None and t.error is None]
        if stackable:
            outcomes = fit_stacked([t.member for t in stackable], [t.Xt for t in stackable],
                                   [t.y_train for t in stackable],
                                   [t.fit_params.get("sample_weight") for t in stackable],
                                   max_members=self.max_stack)
            for task, o in zip(stackable, outcomes):
                if o.error is not None:
                    if self.error_score == "raise":
                        raise o.error
                    task.error = "".join(traceback.format_exception(o.error))
                if not o.stacked:
                    task.reason = o.reason
                task.prep_time += o.fit_time
        with _one_blas_thread():  # held-out folds are small: BLAS threads only wait for each other
            for task in tasks:
                if task.reason is None or task.error is not None:
                    task.result = self._scored(task, X, y, scorer, score_params)
        alone = [t for t in tasks if t.result is None]
        if alone:
            for t in alone:
                log.info("mlpx search: candidate %d fold %d fitted alone: %s", t.cand, t.split, t.reason)
            kwargs = dict(scorer=scorer, fit_params=fit_params, score_params=score_params,
                          return_train_score=self.return_train_score, return_n_test_samples=True,
                          return_times=True, return_parameters=False, error_score=self.error_score,
                          verbose=self.verbose)
            outs = Parallel(n_jobs=self.n_jobs, pre_dispatch=self.pre_dispatch)(
                delayed(_fit_and_score)(clone(base), X, y, train=t.train, test=t.test, parameters=t.params,
                                        split_progress=(t.split, len(splits)),
                                        candidate_progress=(t.cand, len(candidates)), **kwargs)
                for t in alone)
            for t, res in zip(alone, outs):
                t.result = res
        n_splits = len(splits)
        stacked, reasons = [], []
        for c in range(len(candidates)):
            mine = tasks[c * n_splits : (c + 1) * n_splits]
            why = sorted({t.reason for t in mine if t.reason})
            stacked.append(not why)
            reasons.append("; ".join(why))
        if any(reasons) and self.verbose > 0:
            print(f"mlpx: {sum(1 for r in reasons if r)} candidate(s) fitted one fold at a time: "
                  f"{'; '.join(sorted(set(r for r in reasons if r)))}")
        results = cast("list[dict[str, Any]]", [t.result for t in tasks])  # every task has run
        return results, {"stacked": stacked, "not_stacked_reason": reasons}

    def _prepare(self, task: _Task, base: Any, X: Any, y: Any, fit_params: dict[str, Any],
                 cache: dict[Any, tuple[Any, Any]]) -> None:
        """The task's estimator, its member and the member's training data (preprocessed)."""
        est = clone(base).set_params(**clone(task.params, safe=False))
        task.estimator = est
        fp = _check_method_params(X, params=fit_params, indices=task.train)
        # One training split per fold, shared by every candidate: the stack then
        # holds one copy of it and gathers each step's rows once for the fold's
        # members that draw the same minibatches (their MemberRows group).
        split_key = ("split", task.split)
        if split_key not in cache:
            cache[split_key] = _safe_split(est, X, y, task.train)
        X_train, y_train = cache[split_key]
        task.y_train = y_train
        if isinstance(est, Pipeline):
            name, final = est.steps[-1]
            own = {k: v for k, v in fp.items() if k != f"{name}__sample_weight"}
            if own:
                task.reason = f"fit parameters {sorted(own)} (only {name}__sample_weight is passed to a stack)"
                return
            if f"{name}__sample_weight" in fp:
                task.fit_params = {"sample_weight": fp[f"{name}__sample_weight"]}
            task.member = final
            pre = {k: v for k, v in task.params.items() if not (k == name or k.startswith(name + "__"))}
            key = (task.split, tuple(sorted((k, repr(v)) for k, v in pre.items())))
            if not isinstance(final, BaseMLP):
                task.reason = stack_refusal(final, X_train)
                return
            t0 = time.time()
            try:
                if key not in cache:
                    Xt = X_train
                    fitted = []
                    for step_name, step in est.steps[:-1]:
                        if step is None or step == "passthrough":
                            fitted.append((step_name, step))
                            continue
                        Xt = step.fit_transform(Xt, y_train)
                        fitted.append((step_name, step))
                    cache[key] = (fitted, Xt)
                fitted, Xt = cache[key]
                est.steps[:-1] = [(n, s) for n, s in fitted]
            except Exception:  # noqa: BLE001 - the pipeline's fit failed, as fit would
                if self.error_score == "raise":
                    raise
                task.error = traceback.format_exc()
                task.prep_time = time.time() - t0
                return
            task.prep_time = time.time() - t0
            task.Xt = Xt
            task.reason = stack_refusal(final, Xt)
            return
        own = {k: v for k, v in fp.items() if k != "sample_weight"}
        if own:
            task.reason = f"fit parameters {sorted(own)} (only sample_weight is passed to a stack)"
            return
        task.fit_params = fp
        task.member = est
        task.Xt = X_train
        task.reason = stack_refusal(est, X_train)

    def _scored(self, task: _Task, X: Any, y: Any, scorer: Any, score_params: dict[str, Any]) -> dict[str, Any]:
        """``_fit_and_score``'s result for a task fitted in a stack (or whose fit failed)."""
        est = task.estimator
        X_train, y_train = _safe_split(est, X, y, task.train)
        X_test, y_test = _safe_split(est, X, y, task.test, task.train)
        result: dict[str, Any] = {"fit_error": task.error}
        if task.error is not None:
            if isinstance(scorer, _MultimetricScorer):
                test = {name: self.error_score for name in scorer._scorers}
            else:
                test = self.error_score
            result["test_scores"] = test
            if self.return_train_score:
                result["train_scores"] = test.copy() if isinstance(test, dict) else test
            score_time = 0.0
        else:
            t0 = time.time()
            sp_test = _check_method_params(X, params=score_params, indices=task.test)
            result["test_scores"] = _score(est, X_test, y_test, scorer, sp_test, self.error_score)
            score_time = time.time() - t0
            if self.return_train_score:
                sp_train = _check_method_params(X, params=score_params, indices=task.train)
                result["train_scores"] = _score(est, X_train, y_train, scorer, sp_train, self.error_score)
        result["n_test_samples"] = _num_samples(X_test)
        result["fit_time"] = task.prep_time
        result["score_time"] = score_time
        return result


class GridSearchCV(_StackedSearch, _sk.GridSearchCV):
    """Search a grid as scikit-learn's ``GridSearchCV`` does, training the mlpx fits as stacks.

    Parameters
    ----------
    estimator : MLPClassifier, MLPRegressor, Pipeline or estimator
        The fits of an mlpx MLP (or a ``Pipeline`` ending in one) stack; any other
        estimator is fitted one candidate at a time, as scikit-learn does.
    param_grid : dict or list of dict
        Parameter names to lists of values, as in scikit-learn.
    scoring : str, callable, list, tuple, dict or None, default=None
        The scorer(s), as in scikit-learn; None: the estimator's ``score``.
    n_jobs : int or None, default=None
        Workers for the fits that cannot stack (stacks run in this process).
    refit : bool, str or callable, default=True
        Refit the best candidate on the whole data, as in scikit-learn.
    cv : int, cross-validation generator or iterable, default=None
        The splits, as in scikit-learn (5-fold, stratified for classifiers).
    verbose : int, default=0
        The verbosity, as in scikit-learn.
    pre_dispatch : int or str, default="2*n_jobs"
        Jobs dispatched at once for the fits that cannot stack.
    error_score : "raise" or float, default=np.nan
        The score of a fit that raised, as in scikit-learn.
    return_train_score : bool, default=False
        Also score each fit on its training folds.
    max_stack : int, optional
        Most fits per stack (memory grows linearly with the members: one
        ``(n_params,)`` row each of weights, gradients and optimizer state, and
        each member's activations of a minibatch); default: no limit.

    Attributes
    ----------
    cv_results_ : dict
        scikit-learn's, plus ``stacked`` (bool per candidate) and
        ``not_stacked_reason`` (str per candidate, "" when stacked).
    best_estimator_, best_score_, best_params_, best_index_, scorer_, n_splits_, refit_time_, multimetric_
        As in scikit-learn.
    """

    _parameter_constraints: dict = {**_sk.GridSearchCV._parameter_constraints, "max_stack": [numbers.Integral, None]}

    def __init__(self, estimator: Any, param_grid: Any, *, scoring: Any = None, n_jobs: Any = None,
                 refit: Any = True, cv: Any = None, verbose: int = 0, pre_dispatch: Any = "2*n_jobs",
                 error_score: Any = np.nan, return_train_score: bool = False, max_stack: int | None = None) -> None:
        super().__init__(estimator, param_grid, scoring=scoring, n_jobs=n_jobs, refit=refit, cv=cv,
                         verbose=verbose, pre_dispatch=pre_dispatch, error_score=error_score,
                         return_train_score=return_train_score)
        self.max_stack = max_stack

    def _run_search(self, evaluate_candidates: Any) -> None:
        """Search all candidates in param_grid."""
        evaluate_candidates(ParameterGrid(self.param_grid))


class RandomizedSearchCV(_StackedSearch, _sk.RandomizedSearchCV):
    """Search sampled settings as scikit-learn's ``RandomizedSearchCV`` does, training mlpx fits as stacks.

    Parameters
    ----------
    estimator : MLPClassifier, MLPRegressor, Pipeline or estimator
        As in :class:`GridSearchCV`.
    param_distributions : dict or list of dict
        Parameter names to distributions or lists, as in scikit-learn.
    n_iter : int, default=10
        Candidates drawn.
    scoring : str, callable, list, tuple, dict or None, default=None
        The scorer(s), as in scikit-learn; None: the estimator's ``score``.
    n_jobs : int or None, default=None
        Workers for the fits that cannot stack (stacks run in this process).
    refit : bool, str or callable, default=True
        Refit the best candidate on the whole data, as in scikit-learn.
    cv : int, cross-validation generator or iterable, default=None
        The splits, as in scikit-learn (5-fold, stratified for classifiers).
    verbose : int, default=0
        The verbosity, as in scikit-learn.
    pre_dispatch : int or str, default="2*n_jobs"
        Jobs dispatched at once for the fits that cannot stack.
    random_state : int, RandomState instance or None, default=None
        Draws the candidates: the same ones as scikit-learn's for the same value.
    error_score : "raise" or float, default=np.nan
        The score of a fit that raised, as in scikit-learn.
    return_train_score : bool, default=False
        Also score each fit on its training folds.
    max_stack : int, optional
        Most fits per stack (see :class:`GridSearchCV`).

    Attributes
    ----------
    cv_results_, best_estimator_, best_score_, best_params_, best_index_, scorer_, n_splits_, refit_time_, multimetric_
        As in :class:`GridSearchCV`.
    """

    _parameter_constraints: dict = {**_sk.RandomizedSearchCV._parameter_constraints,
                                    "max_stack": [numbers.Integral, None]}

    def __init__(self, estimator: Any, param_distributions: Any, *, n_iter: int = 10, scoring: Any = None,
                 n_jobs: Any = None, refit: Any = True, cv: Any = None, verbose: int = 0,
                 pre_dispatch: Any = "2*n_jobs", random_state: Any = None, error_score: Any = np.nan,
                 return_train_score: bool = False, max_stack: int | None = None) -> None:
        super().__init__(estimator, param_distributions, n_iter=n_iter, scoring=scoring, n_jobs=n_jobs,
                         refit=refit, cv=cv, verbose=verbose, pre_dispatch=pre_dispatch, random_state=random_state,
                         error_score=error_score, return_train_score=return_train_score)
        self.max_stack = max_stack

    def _run_search(self, evaluate_candidates: Any) -> None:
        """Search n_iter candidates from param_distributions."""
        evaluate_candidates(ParameterSampler(self.param_distributions, self.n_iter, random_state=self.random_state))
