"""Weight initialisers, drawn on the host from a seeded NumPy generator.

Drawing on the host and then moving the result to the device makes the starting
weights identical on every backend for the same seed, which is what CPU/GPU parity
tests (and reproducible experiments) rest on.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

__all__ = ["INITIALIZERS", "glorot_uniform", "he_uniform", "get_initializer"]

Init = Callable[[Any, int, int, str], tuple[np.ndarray, np.ndarray]]


def glorot_uniform(
    rng: Any, n_in: int, n_out: int, activation: str = "relu"
) -> tuple[np.ndarray, np.ndarray]:
    """Glorot-uniform weights and biases, exactly as scikit-learn's MLP draws them.

    ``bound = sqrt(factor / (n_in + n_out))`` with ``factor = 6`` (2 for logistic),
    ``W ~ U(-bound, bound)`` of shape (n_in, n_out), then ``b`` of shape (n_out,)
    from the same distribution and the same stream.

    Parameters
    ----------
    rng : numpy.random.Generator or numpy.random.RandomState
        Anything with ``uniform(low, high, size)``.
    n_in, n_out : int
        The layer's input and output widths.
    activation : str, default "relu"
        The layer's activation (``"logistic"`` narrows the bound).

    Returns
    -------
    W : ndarray, shape (n_in, n_out), float64
        The weights.
    b : ndarray, shape (n_out,), float64
        The biases.
    """
    factor = 2.0 if activation == "logistic" else 6.0
    bound = np.sqrt(factor / (n_in + n_out))
    W = rng.uniform(-bound, bound, (n_in, n_out))
    b = rng.uniform(-bound, bound, n_out)
    return W, b


def he_uniform(
    rng: Any, n_in: int, n_out: int, activation: str = "relu"
) -> tuple[np.ndarray, np.ndarray]:
    """He (Kaiming) uniform weights for ReLU-family layers; zero biases.

    ``W ~ U(-sqrt(6 / n_in), sqrt(6 / n_in))``, shape (n_in, n_out).

    Parameters
    ----------
    rng : numpy.random.Generator or numpy.random.RandomState
        Anything with ``uniform(low, high, size)``.
    n_in, n_out : int
        The layer's input and output widths.
    activation : str, default "relu"
        Accepted for the initialiser signature; not used.

    Returns
    -------
    W : ndarray, shape (n_in, n_out), float64
        The weights.
    b : ndarray, shape (n_out,), float64
        Zeros.
    """
    bound = np.sqrt(6.0 / n_in)
    return rng.uniform(-bound, bound, (n_in, n_out)), np.zeros(n_out)


#: Initialiser by name, for ``init=`` of :class:`~mlpx.Dense` and :func:`~mlpx.MLP`.
INITIALIZERS: dict[str, Init] = {"glorot": glorot_uniform, "he": he_uniform}


def get_initializer(name: str | Init) -> Init:
    """Look up an initialiser by name, or pass a callable through.

    Parameters
    ----------
    name : str or callable
        A key of :data:`INITIALIZERS` (``"glorot"``, ``"he"``), or an initialiser
        with the signature of :func:`glorot_uniform`.

    Returns
    -------
    callable
        ``init(rng, n_in, n_out, activation) -> (W, b)``.

    Raises
    ------
    ValueError
        An unknown name (the message lists the valid ones).
    """
    if callable(name):
        return name
    if not isinstance(name, str) or name not in INITIALIZERS:
        raise ValueError(f"unknown init {name!r}; valid: {', '.join(sorted(INITIALIZERS))}")
    return INITIALIZERS[name]
