"""
Early stopping and learning-rate schedules
==========================================

The same digits network trained four ways: a constant rate, step decay, cosine
annealing, and a constant rate with :class:`mlpx.EarlyStopping` watching the
validation loss (restoring the best epoch's weights when it stops). Each
optimizer takes a schedule; :class:`mlpx.History` keeps the per-epoch logs.
"""

import matplotlib.pyplot as plt
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import mlpx

X, y = load_digits(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X / 16.0, y, test_size=0.2, random_state=0)

runs = {
    "constant": (mlpx.SGD(lr=0.1, momentum=0.9), []),
    "step decay (x0.5 every 10)": (mlpx.SGD(lr=0.1, momentum=0.9, schedule=mlpx.StepDecay(10, 0.5)), []),
    "cosine to 0 over 40": (mlpx.SGD(lr=0.1, momentum=0.9, schedule=mlpx.Cosine(T_max=40)), []),
    "early stopping": (mlpx.SGD(lr=0.1, momentum=0.9), [mlpx.EarlyStopping(patience=4)]),
}
fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
for name, (optimizer, callbacks) in runs.items():
    model = mlpx.MLP([64, 64, 10], seed=0)
    history = model.fit(X_train, y_train, epochs=40, batch_size=64, optimizer=optimizer,
                        validation_data=(X_test, y_test), callbacks=callbacks)
    left.plot(history["loss"], label=name)
    right.plot(history["val_loss"], label=name)
    print(f"{name:28s} epochs {history.epochs:2d}  test accuracy {model.evaluate(X_test, y_test)['accuracy']:.3f}")
left.set_title("training loss")
right.set_title("validation loss")
for ax in (left, right):
    ax.set_xlabel("epoch")
    ax.set_yscale("log")
right.legend(fontsize=8)
fig.tight_layout()
