"""``mlpx.load``: any file mlpx writes, read back as what was saved.

* a model (``Sequential.save``) or a checkpoint (:class:`~mlpx.saving.ModelCheckpoint`):
  a :class:`~mlpx.model.Sequential` (:func:`mlpx.model.load`);
* a stack (``Stack.save``) or a stack's checkpoint: a :class:`~mlpx.stacked.Stack`
  (:func:`mlpx.stacked.load`);
* a fitted estimator (``MLPClassifier.save`` / ``MLPRegressor.save``): the fitted
  estimator (:func:`mlpx.estimators.load_estimator`, which needs scikit-learn).

Every kind is read with the checks of :class:`~mlpx.saving.ModelFile`.
"""

from __future__ import annotations

from typing import Any

from mlpx.backends import Backend
from mlpx.model import load as load_model
from mlpx.stacked import load as load_stack
from mlpx.saving import MAX_PARAMS, ModelFile

__all__ = ["load"]


def load(path: Any, backend: str | Backend = "cpu", *, max_params: int = MAX_PARAMS) -> Any:
    """Load what ``save`` wrote: a model, a checkpoint's model, or a fitted estimator.

    Parameters
    ----------
    path : str or path
        ``path + ".npz"`` is found when ``path`` does not exist (``save("model")``
        writes ``model.npz``).
    backend : str or Backend, default "cpu"
        Where the model computes (an estimator's ``backend`` parameter).
    max_params : int, default :data:`mlpx.saving.MAX_PARAMS`
        Refuse files that describe more parameters than this.

    Returns
    -------
    Sequential, Stack, MLPClassifier or MLPRegressor
        What was saved, with its weights (an estimator fitted).

    Raises
    ------
    ModelFileError
        Anything wrong with the file: see :class:`mlpx.saving.ModelFile`. No file,
        however crafted, makes a load allocate more than the arrays its record
        declares (a model: its parameters and gradients) plus a few MiB.
    OSError
        The file cannot be opened (missing, no permission).
    ImportError
        An estimator file without scikit-learn installed.

    Examples
    --------
    >>> import mlpx
    >>> model = mlpx.MLP([4, 8, 3], seed=0)
    >>> model.save("model")                       # doctest: +SKIP
    >>> mlpx.load("model")                        # finds model.npz   # doctest: +SKIP
    <Sequential 4->3 on cpu, float32>
    """
    with ModelFile(path, max_params=max_params) as f:
        estimator = "estimator" in f.record
        stack = f.n_members is not None
    if stack:
        return load_stack(path, backend, max_params=max_params)
    if not estimator:
        return load_model(path, backend, max_params=max_params)
    try:
        from mlpx.estimators import load_estimator
    except ImportError as exc:
        raise ImportError(f"{path} holds a scikit-learn estimator; loading it needs scikit-learn: "
                          f'pip install "mlpx[sklearn]" ({exc})') from None
    return load_estimator(path, backend, max_params=max_params)
