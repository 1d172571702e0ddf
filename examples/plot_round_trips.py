"""
PyTorch and scikit-learn round trips
====================================

An mlpx network converts to a ``torch.nn.Sequential`` and back, and an
:class:`mlpx.MLPClassifier` to scikit-learn's ``MLPClassifier`` and back. The
converted models predict what the originals predict; this page checks it.
"""

import numpy as np
import sklearn.neural_network
import torch
from sklearn.datasets import load_digits

import mlpx

X, y = load_digits(return_X_y=True)
X = X / 16.0

# %%
# To PyTorch. The module's parameters are the model's own arrays (shared
# through DLPack, not copied): training either side changes both, unless
# ``to_torch(copy=True)``.
model = mlpx.MLP([64, 128, 10], activation="gelu", output="softmax", seed=0)
model.fit(X.astype(np.float32), y, epochs=5, batch_size=64)
net = model.to_torch()
print(net)
with torch.no_grad():
    out = net(torch.from_numpy(X[:5].astype(np.float32)))
np.testing.assert_allclose(out.numpy(), model.predict_proba(X[:5]), rtol=1e-6, atol=1e-6)
back = mlpx.Sequential.from_torch(net)
print("round trip predicts the same:", bool((back.predict(X) == model.predict(X)).all()))

# %%
# To scikit-learn: hyperparameters, weights and fitted attributes are carried
# (the optimizer's state is not).
clf = mlpx.MLPClassifier(hidden_layer_sizes=(64,), max_iter=20, random_state=0).fit(X, y)
sk_clf = clf.to_sklearn()
assert isinstance(sk_clf, sklearn.neural_network.MLPClassifier)
print("scikit-learn predicts the same:", bool((sk_clf.predict(X) == clf.predict(X)).all()))
print("largest probability difference:", float(np.abs(sk_clf.predict_proba(X) - clf.predict_proba(X)).max()))
again = mlpx.MLPClassifier.from_sklearn(sk_clf, backend="cpu")
print("and back:", bool((again.predict(X) == clf.predict(X)).all()))
