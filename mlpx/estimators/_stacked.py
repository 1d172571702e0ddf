"""Many estimator fits at once: fits of one architecture train as one :class:`~mlpx.stacked.Stack`.

:func:`fit_stacked` takes estimators (``MLPClassifier``/``MLPRegressor``, each with
its own hyperparameters) and their data, and leaves each fitted exactly as
``est.fit(X, y, sample_weight=w)`` would: every estimator prepares its own fit
(checks, labels, initial draw, early-stopping split, shuffling generator, in
``fit``'s order), fits that share what a stack shares train together through the
one training loop, and each takes its weights, optimizer state and bookkeeping back.

What a stack shares (the *stack key*): backend, dtype, layer sizes (features, hidden
layers, outputs), activation, output activation, solver, batch size, Nesterov's
flag (SGD). Everything else may differ between members: ``alpha``,
``learning_rate_init``, ``learning_rate`` and ``power_t``, ``momentum``, ``beta_1``,
``beta_2``, ``epsilon``, ``random_state``, ``tol``, ``n_iter_no_change``,
``max_iter``, ``shuffle``, ``early_stopping`` and ``validation_fraction``, and the
data. What cannot stack is fitted alone by its own ``fit``, and the reason is
returned: ``solver="lbfgs"``, sparse ``X``, a warm start from fitted weights. (A
fit without partners trains as a stack of one.)
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple, Sequence

import numpy as np

from mlpx.data import is_sparse
from mlpx.distributed import LocalReducer
from mlpx.estimators._base import BaseMLP, StackPlan
from mlpx.optimizers import Optimizer
from mlpx.member_batches import MemberBatches, MemberHoldout
from mlpx.stacked import MemberCallbacks, Stack, StopAfter
from mlpx.training import train

__all__ = ["StackOutcome", "fit_stacked", "stack_key", "stack_refusal"]

LBFGS_REASON = ("solver='lbfgs': SciPy's L-BFGS-B takes full-batch steps with its own line search per fit, "
                "so there is no minibatch step to share")


class StackOutcome(NamedTuple):
    """How one estimator was fitted by :func:`fit_stacked`.

    Attributes
    ----------
    error : BaseException or None
        What its fit raised (None: fitted).
    stacked : bool
        Trained in a stack with other fits.
    reason : str
        Why not, when ``stacked`` is False ("" otherwise).
    group : int
        Its stack (-1 when fitted alone).
    fit_time : float
        Seconds: its own preparation and finish, plus its share of the stack's
        training time.
    """

    error: BaseException | None
    stacked: bool
    reason: str
    group: int
    fit_time: float


def stack_refusal(est: Any, X: Any) -> str | None:
    """Why ``est.fit(X, ...)`` cannot train in a stack, or None.

    Parameters
    ----------
    est : estimator
    X : array_like of shape (n_samples, n_features) or None
        The training data; None asks about the estimator alone (data not known yet).

    Returns
    -------
    str or None
    """
    if not isinstance(est, BaseMLP):
        return f"{type(est).__name__} is not an mlpx MLPClassifier or MLPRegressor"
    if est.solver == "lbfgs":
        return LBFGS_REASON
    if is_sparse(X):
        return "sparse X: a stack gathers dense minibatch rows from one array on the device"
    if est.warm_start and hasattr(est, "coefs_"):
        return "warm_start=True from fitted weights continues that fit's own state"
    return None


def stack_key(plan: StackPlan) -> tuple[Any, ...]:
    """What fits must share to train in one stack."""
    est, rt = plan.est, plan.rt
    units = tuple(int(c.shape[0]) for c in est.coefs_) + (int(est.coefs_[-1].shape[1]),)
    nesterov = bool(est.nesterovs_momentum) if est.solver == "sgd" else None
    return (rt.be.name, rt.dtype, units, est.activation, est.out_activation_, est.solver, plan.batch_size,
            nesterov, plan.loss_scale)


def fit_stacked(
    estimators: Sequence[Any],
    Xs: Sequence[Any],
    ys: Sequence[Any],
    sample_weights: Sequence[Any] | None = None,
    *,
    threads: int | None = None,
    max_members: int | None = None,
) -> list[StackOutcome]:
    """Fit ``estimators[k]`` on ``(Xs[k], ys[k], sample_weights[k])``, stacking what can stack.

    Each estimator ends as ``fit`` leaves it (same weights to rounding, same
    ``n_iter_``, ``loss_curve_``, ``t_``, early-stopping state, optimizer state and
    warnings). Pass the *same* array object for fits on the same data: they share
    one copy on the device.

    Parameters
    ----------
    estimators : sequence of estimators
    Xs, ys : sequences of array_like
    sample_weights : sequence of array_like or None, optional
    threads : int, optional
        CPU threads per stack (:class:`~mlpx.stacked.Stack`).
    max_members : int, optional
        Split larger stacks (memory grows linearly with the members).

    Returns
    -------
    list of StackOutcome
        One per estimator, in order. Errors are returned, not raised.
    """
    K = len(estimators)
    if len(Xs) != K or len(ys) != K or (sample_weights is not None and len(sample_weights) != K):
        raise ValueError("fit_stacked needs one X, y (and sample_weight) per estimator")
    sws = list(sample_weights) if sample_weights is not None else [None] * K
    outcomes: list[StackOutcome | None] = [None] * K
    plans: dict[int, tuple[StackPlan, float]] = {}
    for k, est in enumerate(estimators):
        reason = stack_refusal(est, Xs[k])
        if reason is not None:
            outcomes[k] = _alone(est, Xs[k], ys[k], sws[k], reason)
            continue
        t0 = time.perf_counter()
        try:
            plan = est._stack_plan(Xs[k], ys[k], sws[k])
        except Exception as exc:  # noqa: BLE001 - reported per fit, as GridSearchCV does
            outcomes[k] = StackOutcome(exc, False, "", -1, time.perf_counter() - t0)
            continue
        plans[k] = (plan, time.perf_counter() - t0)
    groups: dict[tuple[Any, ...], list[int]] = {}
    for k, (plan, _) in plans.items():
        groups.setdefault(stack_key(plan), []).append(k)
    g = 0
    for members in groups.values():
        size = len(members) if not max_members else max(1, int(max_members))
        for a in range(0, len(members), size):
            part = members[a : a + size]
            for k, outcome in zip(part, _train_group(g, [plans[k] for k in part], [Xs[k] for k in part], threads)):
                outcomes[k] = outcome
            g += 1
    return outcomes  # type: ignore[return-value]


def _alone(est: Any, X: Any, y: Any, w: Any, reason: str, prep: float = 0.0) -> StackOutcome:
    """Fit one estimator by itself (its ``fit``)."""
    t0 = time.perf_counter()
    try:
        if w is None:
            est.fit(X, y)
        else:
            est.fit(X, y, sample_weight=w)
    except Exception as exc:  # noqa: BLE001
        return StackOutcome(exc, False, reason, -1, prep + time.perf_counter() - t0)
    return StackOutcome(None, False, reason, -1, prep + time.perf_counter() - t0)


class _Keeper:
    """``keep_best()`` of one member: its current row of the stack into the best buffer."""

    def __init__(self, stack: Stack, best: list[Any], k: int) -> None:
        self.stack, self.best, self.k = stack, best, k

    def keep_best(self) -> None:
        stack = self.stack
        with stack.parameter_lock.read():
            self.best[0][self.k, :] = stack.params[self.k, :]


def _train_group(g: int, plans: list[tuple[StackPlan, float]], Xs: list[Any], threads: int | None,
                 _sorted: bool = False) -> list[StackOutcome]:
    """Train one stack of prepared fits and finish each; errors are per member."""
    # Fits on the same data with the same seed draw the same minibatches: side by side
    # in the stack they share each step's gather (MemberRows.shared).
    keys = [(id(X), repr(p.est.random_state) if isinstance(p.est.random_state, (int, np.integer)) else f"#{k}")
            for k, ((p, _), X) in enumerate(zip(plans, Xs))]
    order = sorted(range(len(plans)), key=lambda k: keys[k])
    if not _sorted and order != list(range(len(plans))):
        out = _train_group(g, [plans[k] for k in order], [Xs[k] for k in order], threads, _sorted=True)
        position = {k: pos for pos, k in enumerate(order)}
        return [out[position[k]] for k in range(len(plans))]
    t0 = time.perf_counter()
    K = len(plans)
    try:
        first = plans[0][0]
        be, dtype = first.rt.be, first.rt.dtype
        # One device copy per distinct data set (the same X object with the same targets).
        datasets: list[tuple[int, StackPlan]] = []
        where: list[int] = []
        for (plan, _), X in zip(plans, Xs):
            for i, (xid, other) in enumerate(datasets):
                if xid == id(X) and _same(other, plan):
                    where.append(i)
                    break
            else:
                datasets.append((id(X), plan))
                where.append(len(datasets) - 1)
        offsets = np.cumsum([0] + [p.X.shape[0] for _, p in datasets])
        X_all = np.concatenate([np.asarray(p.X) for _, p in datasets]).astype(dtype, copy=False)
        Y_all = np.concatenate([p.Y for _, p in datasets])
        weighted = any(p.w is not None for _, p in datasets)
        w_all = np.concatenate([np.ones(p.X.shape[0]) if p.w is None else np.asarray(p.w, dtype=np.float64)
                                for _, p in datasets]) if weighted else None
        rows = [offsets[d] + plan.train_rows for (plan, _), d in zip(plans, where)]
        val = [None if plan.val_rows is None else offsets[d] + plan.val_rows for (plan, _), d in zip(plans, where)]
        stack = Stack.from_models([plan.rt.model for plan, _ in plans], threads=threads)
        source = MemberBatches(be, X_all, Y_all, w_all, rows, first.batch_size, dtype)
        holdout = None
        if any(v is not None for v in val):
            holdout = MemberHoldout(be, source.X, source.Y, w_all, val, dtype)
        best = [be.copy(stack.params, be.empty(stack.params.shape, dtype))]
        optimizer = Optimizer.stack([plan.optimizer for plan, _ in plans])
        member_cbs = [[plan.est._stack_policy(plan, _Keeper(stack, best, k), optimizer, k), StopAfter(plan.epochs)]
                      for k, (plan, _) in enumerate(plans)]
        epoch_order = stack.member_order([plan.order for plan, _ in plans])
        with stack.training_context(first.batch_size), np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            train(stack, source, optimizer=optimizer, loss=stack.resolve_loss(None), reducer=LocalReducer(be),
                  epochs=max(plan.epochs for plan, _ in plans), broadcast=False,
                  l2=np.array([float(plan.est.alpha) for plan, _ in plans]), order=epoch_order,
                  callbacks=[MemberCallbacks(member_cbs)], holdout=holdout, loss_weights="rows",
                  loss_scale=first.loss_scale, divergence="freeze")
        params = stack.get_params_host()
        best_host = np.array(be.to_numpy(best[0]), copy=True)
    except Exception as exc:  # noqa: BLE001 - the whole stack failed: every member reports it
        share = (time.perf_counter() - t0) / K
        return [StackOutcome(exc, True, "", g, prep + share) for _, prep in plans]
    share = (time.perf_counter() - t0) / K
    out = []
    for k, (plan, prep) in enumerate(plans):
        t1 = time.perf_counter()
        try:
            plan.est._stack_finish(plan, params[k], best_host[k] if plan.val_rows is not None else None,
                                   optimizer.member(k).state_dict())
            error = None
        except Exception as exc:  # noqa: BLE001
            error = exc
        out.append(StackOutcome(error, True, "", g, prep + share + time.perf_counter() - t1))
    return out


def _same(a: StackPlan, b: StackPlan) -> bool:
    """Whether two fits on the same X object also have the same targets and weights."""
    if a.X.shape != b.X.shape or a.Y.shape != b.Y.shape or not np.array_equal(a.Y, b.Y):
        return False
    if (a.w is None) != (b.w is None):
        return False
    return a.w is None or (b.w is not None and np.array_equal(a.w, b.w))
