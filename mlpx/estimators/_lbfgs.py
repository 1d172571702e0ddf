"""The L-BFGS solver of the estimators: SciPy's driver on the network's full-batch loss."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.optimize

from mlpx.data import is_sparse, make_batches
from mlpx.distributed import Reducer
from mlpx.estimators._runtime import Runtime
from mlpx.metrics import PREDICT_CHUNK

__all__ = ["fit_lbfgs"]


def fit_lbfgs(rt: Runtime, X: Any, y: np.ndarray, sample_weight: np.ndarray | None, reducer: Reducer, *,
              alpha: float, loss_scale: float, max_fun: int, max_iter: int, tol: float,
              verbose: bool) -> tuple[int, float]:
    """Train the network ``rt`` with SciPy's L-BFGS-B on the full-batch loss.

    Each evaluation runs every chunk of this rank's rows (one for dense X,
    ``PREDICT_CHUNK`` rows each for sparse X) through the model's
    forward/backward pass, one all-reduce combines the ranks, and the L2 term is
    added with the global denominator: every rank hands SciPy identical numbers.

    Parameters
    ----------
    rt : Runtime
        The estimator's network; it holds the solution when this returns.
    X : array or sparse matrix, shape (n, n_features)
        This rank's rows, host or device.
    y : ndarray, shape (n, n_outputs)
        Their encoded targets.
    sample_weight : ndarray, shape (n,), or None
    reducer : Reducer
        Combines the ranks' losses and gradients (one rank without ``comm``).
    alpha : float
        The L2 penalty, scikit-learn's ``alpha``.
    loss_scale : float
        Factor of the loss (1 / n_outputs for the squared error, as scikit-learn).
    max_fun, max_iter : int
        SciPy's ``maxfun`` and ``maxiter``.
    tol : float
        SciPy's ``gtol``.
    verbose : bool
        Let SciPy print its progress (on rank 0).

    Returns
    -------
    n_iter : int
        The iterations SciPy ran.
    loss : float
        The final loss.
    """
    be, model = rt.be, rt.model
    sparse = is_sparse(X)

    def local_source() -> Any:
        n = X.shape[0]
        return make_batches(be, X, np.asarray(y, dtype=np.float64), sample_weight,
                            PREDICT_CHUNK if sparse else n, rt.dtype, stream=False)

    source = reducer.agreed("moving the shard", local_source)
    local_denom = float(source.n) if sample_weight is None else float(np.sum(sample_weight))
    denom = reducer.allreduce_sum([local_denom])[0] if reducer.size > 1 else local_denom
    acc = be.empty(model.n_params, rt.dtype) if source.n_batches > 1 else None

    def local_loss_grad() -> Any:
        nonlocal acc
        total: Any = None
        for k, batch in enumerate(source.epoch(None)):
            value = model.forward_backward(batch.X, batch.Y, batch.w, loss=rt.loss, denom=denom)
            if acc is not None:
                if k == 0:
                    acc = be.copy(model.grads, acc)
                else:
                    acc += model.grads  # in place where arrays are writable, else rebound
            total = value if total is None else total + value
        if acc is not None:
            model.grads = be.copy(acc, model.grads)
        return total

    def loss_grad(packed: np.ndarray) -> tuple[float, np.ndarray]:
        # SciPy works on the host: parameters in, loss and gradient out.
        rt.set_flat(packed)
        value, error = 0.0, None
        try:
            value = local_loss_grad()
        except BaseException as exc:  # raised on every rank by the all-reduce
            if reducer.size == 1:
                raise
            error = exc
        total = reducer.allreduce_gradients(model.grads, value, error=error, where="L-BFGS evaluation")
        if loss_scale != 1.0:
            total = total * loss_scale
        if alpha:
            total = total + model.add_l2_penalty(alpha, denom)
        grad = np.array(be.to_numpy(model.grads), dtype=np.float64, copy=True)
        return (total if isinstance(total, float) else be.to_float(total)), grad

    iprint = 1 if verbose and reducer.is_root else -1  # only rank 0 prints
    try:
        from sklearn.utils.fixes import _get_additional_lbfgs_options_dict

        extra = _get_additional_lbfgs_options_dict("iprint", iprint)
    except ImportError:  # pragma: no cover - older/newer scikit-learn
        extra = {}
    x0 = model.get_flat_params().astype(np.float64)
    opt_res = scipy.optimize.minimize(
        loss_grad, x0, method="L-BFGS-B", jac=True,
        options={"maxfun": max_fun, "maxiter": max_iter, "gtol": tol, **extra},
    )
    try:
        from sklearn.utils.optimize import _check_optimize_result

        n_iter = int(_check_optimize_result("lbfgs", opt_res, max_iter))
    except ImportError:  # pragma: no cover
        n_iter = int(opt_res.nit)
    rt.set_flat(opt_res.x)
    return n_iter, float(opt_res.fun)
