"""Benchmark data: scikit-learn's embedded digits, and a seeded synthetic mixture.

Neither needs a download: ``load_digits`` ships inside scikit-learn.
"""

from __future__ import annotations

import numpy as np

__all__ = ["digits", "synthetic"]

Split = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def digits(n_train: int, n_test: int) -> Split:
    """The 8x8 digits, pixels scaled to [0, 1], stratified 80/20 split (seed 0).

    Returns
    -------
    X_train : float32 (n_train, 64), y_train : int64 (n_train,), X_test, y_test
        ``n_train``/``n_test`` cap the 1437/360 samples of the split.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.2, stratify=y, random_state=0)
    return Xtr[:n_train], ytr[:n_train].astype(np.int64), Xte[:n_test], yte[:n_test].astype(np.int64)


def synthetic(n_features: int, n_classes: int, n_train: int, n_test: int, seed: int = 0) -> Split:
    """A 10-class Gaussian mixture: ``x = c_y + e``, ``e ~ N(0, I)``.

    The class centres are drawn once (seeded) with pairwise distances of about 6
    noise standard deviations: the best possible accuracy is about 99 %, reached only
    after enough samples, so the test accuracy says whether training worked.

    Returns
    -------
    X_train : float32 (n_train, n_features), y_train : int64, X_test, y_test
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_classes, n_features), dtype=np.float32) * np.float32(6.0 / np.sqrt(2 * n_features))

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, n_classes, size=n)
        X = rng.standard_normal((n, n_features), dtype=np.float32)
        X += centres[y]
        return X, y.astype(np.int64)

    Xtr, ytr = draw(n_train)
    Xte, yte = draw(n_test)
    return Xtr, ytr, Xte, yte
