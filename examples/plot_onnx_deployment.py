"""
ONNX deployment, checked in ONNX Runtime
========================================

A trained network leaves mlpx as an ONNX graph (``pip install "mlpx[onnx]"``)
and is served by ONNX Runtime without mlpx. Both routes are shown: a
:class:`mlpx.Sequential`, whose graph gives ``label`` and ``probabilities``,
and a :class:`mlpx.MLPClassifier`, whose graph has skl2onnx's outputs (so
serving code can switch between it and scikit-learn's ``MLPClassifier``). Each
is checked against mlpx's own predictions.
"""

import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
from sklearn.datasets import load_digits

import mlpx

X, y = load_digits(return_X_y=True)
X = (X / 16.0).astype(np.float32)
folder = Path(tempfile.mkdtemp())

# %%
# A network with a GELU hidden layer (exported in mlpx's tanh form).
model = mlpx.MLP([64, 64, 10], activation="gelu", seed=0)
model.fit(X, y, epochs=10, batch_size=64)
proto = model.to_onnx(folder / "net.onnx")
print("opset", proto.opset_import[0].version, "inputs", [i.name for i in proto.graph.input],
      "outputs", [o.name for o in proto.graph.output])

session = ort.InferenceSession(str(folder / "net.onnx"), providers=["CPUExecutionProvider"])
label, proba = session.run(None, {"X": X[:100]})
print("labels equal:", bool((label == model.predict(X[:100])).all()))
print("largest probability difference:", float(np.abs(proba - model.predict_proba(X[:100])).max()))

# %%
# The estimator: with ``zipmap=False`` the outputs are ``label`` and
# ``probabilities``, as skl2onnx names them for scikit-learn's classifier.
clf = mlpx.MLPClassifier(hidden_layer_sizes=(64,), max_iter=15, random_state=0).fit(X, y)
clf.to_onnx(folder / "clf.onnx", zipmap=False)
session = ort.InferenceSession(str(folder / "clf.onnx"), providers=["CPUExecutionProvider"])
label, proba = session.run(None, {"X": X[:100]})
assert (label == clf.predict(X[:100])).all()
np.testing.assert_allclose(proba, clf.predict_proba(X[:100]), rtol=1e-5, atol=1e-6)
print("estimator graph agrees with predict and predict_proba")
