"""The seed example: 64 → 128 → 64 → 32 → 10 on scikit-learn's digits, ≥ 0.97 test accuracy.

80/20 stratified split, sigmoid hidden layers and ReLU hidden layers, CPU backend.
The recipe: the training images plus copies shifted by one pixel up, down, left and
right (the classic augmentation for 8×8 digits; the test images are untouched),
standardised with the training statistics, Adam with a cosine-annealed rate.

Without the shifts both networks fit the 1437 training images perfectly and stop
near 0.96 (sigmoid) / 0.975 (ReLU), which scikit-learn's MLPClassifier reproduces
on the same split, so the margin to 0.97 would be luck. With them, over five
initialisation seeds on this split the recipe gave 0.975–0.986 (sigmoid) and
0.986–0.994 (ReLU); over three splits × two seeds, min 0.975 (sigmoid).
"""

from __future__ import annotations

import numpy as np
import pytest

import mlpx

sklearn = pytest.importorskip("sklearn")
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

SIZES = [64, 128, 64, 32, 10]


def shifted_copies(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The images and their one-pixel shifts in four directions (zeros shifted in)."""
    imgs = X.reshape(-1, 8, 8)
    out = [imgs]
    for axis in (1, 2):
        for step in (1, -1):
            s = np.roll(imgs, step, axis=axis)
            edge = 0 if step == 1 else -1
            if axis == 1:
                s[:, edge, :] = 0
            else:
                s[:, :, edge] = 0
            out.append(s)
    return np.concatenate(out).reshape(-1, 64), np.tile(y, len(out))


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, random_state=0, stratify=y)
    assert X_train.shape == (1437, 64) and X_test.shape == (360, 64)
    Xa, ya = shifted_copies(X_train, y_train)
    mean, scale = Xa.mean(0), Xa.std(0) + 1.0  # +1 (pixel units): near-constant pixels stay tame
    return (Xa - mean) / scale, ya, (X_test - mean) / scale, y_test


@pytest.mark.slow
@pytest.mark.parametrize(
    "activation, epochs, batch_size, lr",
    [("logistic", 40, 32, 3e-3), ("relu", 20, 64, 2e-3)],
    ids=["sigmoid", "relu"],
)
def test_digits_accuracy(digits, activation: str, epochs: int, batch_size: int, lr: float) -> None:
    X_train, y_train, X_test, y_test = digits
    model = mlpx.MLP(SIZES, activation=activation, output="softmax", backend="cpu", seed=0)
    opt = mlpx.Adam(lr=lr, schedule=mlpx.Cosine(T_max=epochs))
    hist = model.fit(X_train, y_train, epochs=epochs, batch_size=batch_size, optimizer=opt)
    assert hist["loss"][-1] < 0.1 * hist["loss"][0]
    accuracy = float(np.mean(model.predict(X_test) == y_test))
    assert accuracy >= 0.97, f"{activation}: test accuracy {accuracy:.4f}"
    assert model.evaluate(X_test, y_test)["accuracy"] == pytest.approx(accuracy)


def test_shifted_copies() -> None:
    X = np.arange(64.0).reshape(1, 64)
    Xa, ya = shifted_copies(X, np.array([7]))
    assert Xa.shape == (5, 64) and list(ya) == [7] * 5
    img = X.reshape(8, 8)
    down = Xa[1].reshape(8, 8)
    np.testing.assert_array_equal(down[1:], img[:-1])
    np.testing.assert_array_equal(down[0], 0)
    left = Xa[4].reshape(8, 8)
    np.testing.assert_array_equal(left[:, :-1], img[:, 1:])
    np.testing.assert_array_equal(left[:, -1], 0)
