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
:meth:`~GridSearchCV.stacking_report` and on the ``mlpx`` logger: ``solver="lbfgs"``
(full-batch steps with a line search of its own), sparse ``X``, an estimator that
is not an mlpx MLP, fit parameters other than ``sample_weight``, a Pipeline that
reports its own steps to scikit-learn callbacks. ``cv_results_`` has exactly
scikit-learn's keys.

Callbacks (scikit-learn >= 1.9, :mod:`sklearn.callback`): ``set_callbacks`` works
as on scikit-learn's searches, with the same task tree: the search's root task,
its ``search`` task, one ``candidate-split-evaluation`` task per candidate and
fold (each stacked member fit too: its task begins before the stack trains and
ends once the member is scored) and ``refit-with-best-params``. Callbacks
auto-propagated to a Pipeline (``ProgressBar``, for one) would report the
Pipeline's own steps, which only ``Pipeline.fit`` reports: such a Pipeline is
fitted one fold at a time.

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
>>> bool(search.stacking_report()["stacked"].all())    # all 4 × 3 fits trained as one stack
True
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import numbers
import time
import traceback
from collections import defaultdict
from typing import Any, Callable, TypeVar, cast

import numpy as np
import sklearn
from sklearn import model_selection as _sk
from sklearn.base import _fit_context, clone, is_classifier
from sklearn.metrics._scorer import _MultimetricScorer
from sklearn.model_selection import check_cv
from sklearn.model_selection._validation import (
    _fit_and_score,
    _insert_error_scores,
    _score,
    _warn_or_raise_about_fit_failures,
)
from sklearn.pipeline import Pipeline
from sklearn.utils.fixes import parse_version
from sklearn.utils.metaestimators import _safe_split
from sklearn.utils.parallel import Parallel, delayed
from sklearn.utils.validation import _check_method_params, _num_samples, check_is_fitted, indexable

from mlpx.estimators._base import BaseMLP
from mlpx.estimators._stacked import fit_stacked, stack_refusal

try:  # scikit-learn >= 1.9
    from sklearn.callback import AutoPropagatedCallback
except ImportError:  # no callbacks to report to
    AutoPropagatedCallback = None

__all__ = ["GridSearchCV", "RandomizedSearchCV"]

log = logging.getLogger("mlpx")

# scikit-learn >= 1.9 reports each fit of _fit_and_score to the search's callbacks.
_FIT_AND_SCORE_CALLBACKS = "callback_ctx" in inspect.signature(_fit_and_score).parameters
# The words of the installed scikit-learn's own error (its tests match them).
_RETURN = "return" if parse_version(sklearn.__version__).release >= (1, 9) else "returned"
CALLBACK_PIPELINE_REASON = ("the Pipeline reports its own steps to the search's callbacks, "
                            "which only Pipeline.fit does")


def _reports_own_tasks(est: Any, search: Any) -> bool:
    """Whether ``est.fit`` would report tasks of its own to scikit-learn callbacks.

    True for an estimator with callback support (a Pipeline, in scikit-learn >= 1.9)
    that has callbacks, or gets the search's auto-propagated ones: a stack runs no
    ``est.fit`` to report them.
    """
    if not hasattr(est, "set_callbacks"):
        return False
    if getattr(est, "_skl_callbacks", None):
        return True
    return AutoPropagatedCallback is not None and any(
        isinstance(cb, AutoPropagatedCallback) for cb in getattr(search, "_skl_callbacks", []))


def _one_blas_thread() -> Any:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


class _Task:
    """One candidate on one fold: what to fit, on what, and its result."""

    def __init__(self, cand: int, split: int, params: dict[str, Any], train: np.ndarray, test: np.ndarray,
                 ctx: Any = None) -> None:
        self.cand, self.split, self.params, self.train, self.test = cand, split, params, train, test
        self.ctx = ctx  # its "candidate-split-evaluation" callback context (scikit-learn >= 1.9)
        self.estimator: Any = None  # the (pipeline or bare) estimator scored
        self.member: Any = None  # the mlpx estimator fitted in a stack
        self.X_fold: Any = None  # the fold's training X, as the callbacks see it
        self.Xt: Any = None  # the member's training X (after preprocessing)
        self.y_train: Any = None
        self.fold_params: dict[str, Any] = {}  # the search's fit parameters, split to the fold
        self.fit_params: dict[str, Any] = {}  # what the member's fit takes of them
        self.reason: str | None = None  # why not stacked
        self.error: str | None = None
        self.prep_time = 0.0
        self.result: dict[str, Any] | None = None

    def report(self, hook: str, search: Any) -> None:
        """Call the callbacks' ``on_fit_task_begin`` / ``_end`` hook, as ``_fit_and_score`` does.

        Parameters
        ----------
        hook : {"begin", "end"}
        search : GridSearchCV or RandomizedSearchCV
            The search, passed to the hooks as the estimator (scikit-learn's ``caller``).
        """
        if self.ctx is None:
            return
        w = self.fold_params.get("sample_weight")
        getattr(self.ctx, f"call_on_fit_task_{hook}")(estimator=search, X=self.X_fold, y=self.y_train,
                                                      metadata=None if w is None else {"sample_weight": w})


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
            Training data, split by the cross-validation folds.
        y : array-like of shape (n_samples,) or (n_samples, n_outputs), optional
            Targets (None for unsupervised estimators).
        **params : dict of str -> object
            Fit parameters (``sample_weight``, split by the folds; ``groups`` for
            the splitter), routed as scikit-learn routes them.

        Returns
        -------
        self
            The fitted search (``best_estimator_`` refitted when ``refit``).
        """
        scorers, refit_metric = self._get_scorers()
        X, y = indexable(X, y)
        params = _check_method_params(X, params=params)
        routed = self._get_routed_params_for_fit(params)
        sample_weight = params.get("sample_weight")
        cb_meta = None if sample_weight is None else {"sample_weight": sample_weight}
        root_ctx = None
        if hasattr(self, "_init_callback_context"):  # scikit-learn >= 1.9
            root_ctx = self._init_callback_context(max_subtasks=1 + (self.refit is not False))
            root_ctx.call_on_fit_task_begin(estimator=self, X=X, y=y, metadata=cb_meta)
        self._checked_cv_orig = check_cv(self.cv, y, classifier=is_classifier(self.estimator))
        if hasattr(self, "_check_input_parameters"):  # scikit-learn >= 1.9: a subclass's own input checks
            self._check_input_parameters(X=X, y=y, split_params=routed.splitter.split)
        self.n_splits_ = self._checked_cv_orig.get_n_splits(X, y, **routed.splitter.split)
        base = clone(self.estimator)
        all_params: list[dict[str, Any]] = []
        all_out: list[dict[str, Any]] = []
        all_more: dict[str, list[Any]] = defaultdict(list)
        stacking: dict[str, list[Any]] = {"stacked": [], "reason": []}
        results: dict[str, Any] = {}

        def evaluate_candidates(candidate_params: Any, cv: Any = None, more_results: Any = None,
                                callback_ctx: Any = None) -> dict[str, Any]:
            nonlocal results
            cv = cv or self._checked_cv_orig
            candidate_params = list(candidate_params)
            n_splits = self.n_splits_
            splits = list(cv.split(X, y, **routed.splitter.split))
            if len(splits) != n_splits:
                raise ValueError(f"cv.split and cv.get_n_splits {_RETURN} inconsistent results. "
                                 f"Expected {n_splits} splits, got {len(splits)}")
            if self.verbose > 0:
                print(f"Fitting {n_splits} folds for each of {len(candidate_params)} candidates, "
                      f"totalling {n_splits * len(candidate_params)} fits")
            n_tasks = len(candidate_params) * n_splits
            contexts = [None] * n_tasks if callback_ctx is None else [
                callback_ctx.subcontext(task_name="candidate-split-evaluation", task_id=i) for i in range(n_tasks)]
            out, stacked, reasons = self._evaluate(base, X, y, candidate_params, splits, scorers, routed, contexts)
            if len(out) < 1:
                raise ValueError("No fits were performed. Was the CV iterator empty? Were there no candidates?")
            _warn_or_raise_about_fit_failures(out, self.error_score)
            if callable(self.scoring):
                _insert_error_scores(out, self.error_score)
            all_params.extend(candidate_params)
            all_out.extend(out)
            stacking["stacked"].extend(stacked)
            stacking["reason"].extend(reasons)
            for key, value in (more_results or {}).items():
                all_more[key].extend(value)
            results = self._format_results(all_params, n_splits, all_out, all_more)
            return results

        if root_ctx is not None and "callback_ctx" in inspect.signature(self._run_search).parameters:
            self._run_search(evaluate_candidates, callback_ctx=root_ctx)
        else:  # scikit-learn < 1.9, or a subclass's own search
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
            refit_ctx = None if root_ctx is None else root_ctx.subcontext(task_name="refit-with-best-params")
            with contextlib.ExitStack() as propagation:
                if refit_ctx is not None:
                    propagation.enter_context(refit_ctx.propagate_callback_context(self.best_estimator_))
                    refit_ctx.call_on_fit_task_begin(estimator=self, X=X, y=y, metadata=cb_meta)
                t0 = time.time()
                if y is not None:
                    self.best_estimator_.fit(X, y, **routed.estimator.fit)
                else:
                    self.best_estimator_.fit(X, **routed.estimator.fit)
                self.refit_time_ = time.time() - t0
            if hasattr(self.best_estimator_, "feature_names_in_"):
                self.feature_names_in_ = self.best_estimator_.feature_names_in_
            if refit_ctx is not None:
                refit_ctx.call_on_fit_task_end(estimator=self, X=X, y=y, metadata=cb_meta)
        self.scorer_ = scorers._scorers if isinstance(scorers, _MultimetricScorer) else scorers
        self.cv_results_ = results
        self._stacking = {"stacked": np.asarray(stacking["stacked"], dtype=bool),
                          "reason": np.asarray(stacking["reason"], dtype=object)}
        if root_ctx is not None:
            root_ctx.call_on_fit_task_end(estimator=self, X=X, y=y, metadata=cb_meta)
        return self

    def stacking_report(self) -> dict[str, np.ndarray]:
        """How each candidate was fitted: in stacks, or one fold at a time, and why.

        A method, not a fitted attribute: scikit-learn's own tests compare every
        fitted attribute of a search with a plain ``BaseSearchCV``'s, so a drop-in
        search adds none.

        Returns
        -------
        dict of str -> ndarray of shape (n_candidates,)
            ``"stacked"`` (bool: every fold of the candidate trained in a stack) and
            ``"reason"`` (str, "" when stacked: why some fold was fitted by itself),
            one entry per row of ``cv_results_``: ``pandas.DataFrame(report)`` lines
            up with ``pandas.DataFrame(cv_results_)``.

        Raises
        ------
        sklearn.exceptions.NotFittedError
            Before ``fit``.
        """
        check_is_fitted(self, "_stacking")
        return {k: v.copy() for k, v in self._stacking.items()}

    # ------------------------------------------------------------ evaluation
    def _evaluate(self, base: Any, X: Any, y: Any, candidates: list[dict[str, Any]], splits: list[Any],
                  scorer: Any, routed: Any, contexts: list[Any]) -> tuple[list[dict[str, Any]], list[bool], list[str]]:
        """Every candidate on every fold.

        Returns ``_fit_and_score``'s results in its order (candidate-major), and per
        candidate whether every fold trained in a stack and why not.
        """
        fit_params = routed.estimator.fit
        score_params = routed.scorer.score
        pairs = [(c, p, s, tr, te) for c, p in enumerate(candidates) for s, (tr, te) in enumerate(splits)]
        tasks = [_Task(c, s, p, np.asarray(tr), np.asarray(te), ctx)
                 for (c, p, s, tr, te), ctx in zip(pairs, contexts)]
        cache: dict[Any, Any] = {}
        for task in tasks:
            self._prepare(task, base, X, y, fit_params, cache)
        ours = [t for t in tasks if t.reason is None]  # fitted here; the others by _fit_and_score
        begun: list[_Task] = []
        try:
            with contextlib.ExitStack() as propagation:
                for t in ours:
                    if t.ctx is not None:
                        propagation.enter_context(t.ctx.propagate_callback_context(t.estimator))
                    begun.append(t)
                    t.report("begin", self)
                for t in ours:
                    self._preprocess(t, cache)
                self._fit_stacks([t for t in ours if t.error is None])
            with _one_blas_thread():  # held-out folds are small: BLAS threads only wait for each other
                for t in ours:
                    t.result = self._scored(t, X, y, scorer, score_params)
                    begun.remove(t)
                    t.report("end", self)
        finally:  # every task begun ends, as _fit_and_score's do when a fit raises
            for t in begun:
                t.report("end", self)
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
                                        candidate_progress=(t.cand, len(candidates)), **kwargs,
                                        **({"caller": self, "callback_ctx": t.ctx} if _FIT_AND_SCORE_CALLBACKS else {}))
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
        return results, stacked, reasons

    def _fit_stacks(self, tasks: list[_Task]) -> None:
        """Train the tasks' members in stacks; a fit's error is kept (or raised with ``error_score="raise"``)."""
        if not tasks:
            return
        outcomes = fit_stacked([t.member for t in tasks], [t.Xt for t in tasks], [t.y_train for t in tasks],
                               [t.fit_params.get("sample_weight") for t in tasks], max_members=self.max_stack)
        for task, o in zip(tasks, outcomes):
            if o.error is not None:
                if self.error_score == "raise":
                    raise o.error
                task.error = "".join(traceback.format_exception(o.error))
            if not o.stacked:  # fitted alone by fit_stacked: scored as it is
                task.reason = o.reason
            task.prep_time += o.fit_time

    def _prepare(self, task: _Task, base: Any, X: Any, y: Any, fit_params: dict[str, Any],
                 cache: dict[Any, Any]) -> None:
        """The task's estimator, fold and member, or why it cannot stack (known before any fit)."""
        est = clone(base).set_params(**clone(task.params, safe=False))
        task.estimator = est
        fp = _check_method_params(X, params=fit_params, indices=task.train)
        task.fold_params = fp
        # One training split per fold, shared by every candidate: the stack then
        # holds one copy of it and gathers each step's rows once for the fold's
        # members that draw the same minibatches (their MemberRows group).
        split_key = ("split", task.split)
        if split_key not in cache:
            cache[split_key] = _safe_split(est, X, y, task.train)
        task.X_fold, task.y_train = cache[split_key]
        if task.ctx is not None and _reports_own_tasks(est, self):
            task.reason = CALLBACK_PIPELINE_REASON
            return
        if isinstance(est, Pipeline):
            name, final = est.steps[-1]
            own = {k: v for k, v in fp.items() if k != f"{name}__sample_weight"}
            if own:
                task.reason = f"fit parameters {sorted(own)} (only {name}__sample_weight is passed to a stack)"
                return
            if f"{name}__sample_weight" in fp:
                task.fit_params = {"sample_weight": fp[f"{name}__sample_weight"]}
            task.member = final
            # Sparse output of the preprocessing is found by fit_stacked, which fits that member alone.
            task.reason = stack_refusal(final, None)
            return
        own = {k: v for k, v in fp.items() if k != "sample_weight"}
        if own:
            task.reason = f"fit parameters {sorted(own)} (only sample_weight is passed to a stack)"
            return
        task.fit_params = fp
        task.member = est
        task.Xt = task.X_fold
        task.reason = stack_refusal(est, task.X_fold)

    def _preprocess(self, task: _Task, cache: dict[Any, Any]) -> None:
        """A Pipeline's steps before its member, fitted on the fold (once per fold and their parameters)."""
        est = task.estimator
        if not isinstance(est, Pipeline):
            return
        name = est.steps[-1][0]
        pre = {k: v for k, v in task.params.items() if not (k == name or k.startswith(name + "__"))}
        key = (task.split, tuple(sorted((k, repr(v)) for k, v in pre.items())))
        t0 = time.time()
        try:
            if key not in cache:
                Xt = task.X_fold
                fitted = []
                for step_name, step in est.steps[:-1]:
                    if step is not None and step != "passthrough":
                        Xt = step.fit_transform(Xt, task.y_train)
                    fitted.append((step_name, step))
                cache[key] = (fitted, Xt)
            fitted, task.Xt = cache[key]
            est.steps[:-1] = list(fitted)
        except Exception:  # noqa: BLE001 - the pipeline's fit failed, as fit would
            if self.error_score == "raise":
                raise
            task.error = traceback.format_exc()
        task.prep_time = time.time() - t0

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
        scikit-learn's, with exactly its keys (which fits trained in stacks:
        :meth:`stacking_report`).
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
    cv_results_, best_estimator_, best_score_, best_params_, best_index_, scorer_, n_splits_
        As in :class:`GridSearchCV`.
    refit_time_, multimetric_
        As in scikit-learn.
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
