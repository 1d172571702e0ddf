"""
The seed network
================

The network the project grew from: digits (8×8 images, 10 classes), a
64-128-64-10 perceptron with sigmoid units everywhere, mean squared error on
one-hot targets and plain stochastic gradient descent (rate 0.5, minibatches of
64) — the classic lecture ``Network.add`` toy, built here with
:meth:`mlpx.Sequential.add`.

The full lecture schedule (40,000 steps) reaches 97.2 % test accuracy in
``tests/test_training_loop.py``; this page trains a shorter run so that the
documentation builds in seconds, and shows the accuracy it got.
"""

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import mlpx

X, y = load_digits(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X / 16.0, y, test_size=0.2, random_state=42)
Y_train = np.eye(10)[y_train]  # one-hot targets for the squared error

# %%
# Layer by layer, as the toy's ``Network.add``: each ``Dense`` holds its
# weights and its activation.
net = mlpx.Sequential(dtype="float64", seed=0)
net.add(mlpx.Dense(64, 128, activation="sigmoid", init="he"))
net.add(mlpx.Dense(128, 64, activation="sigmoid", init="he"))
net.add(mlpx.Dense(64, 10, activation="sigmoid", init="he"))
print(net.summary())

# %%
# Squared error on a sigmoid output is not the sigmoid's canonical loss
# (binary cross-entropy); mlpx applies the chain rule through the output's
# derivative. 150 epochs of 23 steps each: 3,450 of the lecture's 40,000 steps.
history = net.fit(X_train, Y_train, epochs=150, batch_size=64, optimizer=mlpx.SGD(lr=0.5, momentum=0.0),
                  loss="squared_error", validation_data=(X_test, np.eye(10)[y_test]))
# A logistic output predicts each unit's 0/1 indicator; the class is the most
# probable unit.
accuracy = float(np.mean(net.predict_proba(X_test).argmax(axis=1) == y_test))
print(f"test accuracy after {history.epochs} epochs: {accuracy:.3f}")

# %%
# The loss curve, on the training and the held-out rows.
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(history["loss"], label="training")
ax.plot(history["val_loss"], label="test")
ax.set_xlabel("epoch")
ax.set_ylabel("squared error")
ax.set_yscale("log")
ax.legend()
fig.tight_layout()
