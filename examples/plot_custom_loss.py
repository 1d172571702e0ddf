"""
A custom loss on a non-canonical output
=======================================

Every output activation has a canonical loss whose gradient with respect to the
logits is simply ``(Ŷ − Y)/n`` (softmax + cross-entropy, identity + squared
error, ...). Any other loss works on any output whose values lie in its domain:
mlpx computes the loss on the outputs ``Ŷ = g(Z)`` and applies the chain rule
``dZ = ∂L/∂Ŷ ⊙ g'(Z)``.

Here a Huber loss, defined in a few lines as a :class:`mlpx.losses.Loss`, trains
a regression network with a ``tanh`` output on targets in (−1, 1); its gradient
is checked against finite differences in float64 first.
"""

import matplotlib.pyplot as plt
import numpy as np

import mlpx
from mlpx.backends import kernel
from mlpx.gradcheck import check_gradients
from mlpx.losses import Loss

DELTA = 0.1


@kernel
def huber(xp, P, Y, w, inv_d, dP):
    """Huber loss of K members' outputs ``P`` against ``Y`` (both (K, n, k)) and ∂L/∂P.

    ``w`` (K, n) holds the rows' weights (None: 1 each) and ``inv_d`` (K,) each
    member's ``1/d``; a single network is K = 1.
    """
    R = P - Y
    small = xp.abs(R) <= DELTA
    per_element = xp.where(small, 0.5 * R * R, DELTA * (xp.abs(R) - 0.5 * DELTA))
    per_row = xp.sum(per_element, axis=2)  # (K, n)
    scale = inv_d[:, None] if w is None else w * inv_d[:, None]  # (K, n): w_i / d
    total = xp.sum(scale * per_row, axis=1)  # (K,)
    grad = None if dP is None else scale[:, :, None] * xp.where(small, R, DELTA * xp.sign(R))
    return total, grad


# The same function serves as the loss on the logits of its canonical output
# (identity, where Ŷ = Z) and on any output ("*").
HUBER = Loss("huber", "identity", huber, huber, ("*",))

rng = np.random.default_rng(0)
X = rng.uniform(-2, 2, size=(512, 1))
y = np.tanh(1.5 * np.sin(2 * X[:, 0])) * 0.9 + rng.normal(0, 0.05, size=512)
y[::25] += rng.choice([-1.5, 1.5], size=y[::25].shape)  # outliers the Huber loss resists
y = np.clip(y, -0.99, 0.99)

# %%
# The gradient through the tanh output, against central finite differences.
probe = mlpx.MLP([1, 16, 1], activation="tanh", output="tanh", dtype="float64", seed=0)
report = check_gradients(probe, X[:32], y[:32], loss=HUBER)
print(f"largest relative gradient error: {report['max_rel_error']:.2e}")

# %%
# Training with it, against the same network trained with squared error.
fig, ax = plt.subplots(figsize=(6, 3.5))
order = np.argsort(X[:, 0])
ax.scatter(X[:, 0], y, s=4, color="0.6", label="data")
for loss in (HUBER, "squared_error"):
    model = mlpx.MLP([1, 32, 32, 1], activation="tanh", output="tanh", seed=0)
    model.fit(X, y, epochs=150, batch_size=64, optimizer=mlpx.Adam(lr=1e-2), loss=loss)
    name = loss if isinstance(loss, str) else loss.name
    ax.plot(X[order, 0], model.predict(X[order]).ravel(), label=name)
ax.legend()
fig.tight_layout()
