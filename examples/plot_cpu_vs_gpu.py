"""
CPU vs GPU with the same code
=============================

The same model code runs on the CPU (NumPy and its BLAS), on the GPU (CuPy and
cuBLAS) and on any Array API namespace: only ``backend=`` changes. Initial
weights are drawn on the host from the seed, so every backend starts from the
same weights, and the minibatch order is the same too; in float64 the runs agree
to rounding.

.. note::

   The GPU half needs CuPy and an NVIDIA GPU (``pip install -e ".[gpu]"``). The
   machine that builds this documentation has none, so below only the CPU and
   Array API runs executed; on a GPU machine the same script adds the GPU row. No
   GPU timing of mlpx has been measured yet (``python -m benchmarks --gpu-check``
   produces them).
"""

import time

import numpy as np
from sklearn.datasets import load_digits

import mlpx

available = mlpx.available_backends()
print("available here:", available)
backends = [b for b in ("cpu", "array_api_strict", "gpu") if b in available]

X, y = load_digits(return_X_y=True)
X = X / 16.0

models = {}
for backend in backends:
    model = mlpx.MLP([64, 128, 64, 32, 10], backend=backend, dtype="float64", seed=0)
    start = time.perf_counter()
    model.fit(X, y, epochs=10, batch_size=64)
    print(f"{backend:17s} {time.perf_counter() - start:5.2f} s  accuracy {model.evaluate(X, y)['accuracy']:.4f}")
    models[backend] = model

# %%
# The trained weights, compared with the CPU's. The timings above are one-off
# runs on a shared build machine; the benchmark suite measures properly.
reference = models["cpu"].get_flat_params()
for backend, model in models.items():
    print(f"{backend:17s} largest weight difference from cpu: {np.abs(model.get_flat_params() - reference).max():.1e}")

# %%
# A model moves between devices with its optimizer state, and a model file
# loads on any backend:
#
# .. code-block:: python
#
#    on_gpu = models["cpu"].to("gpu")
#    on_gpu.save("digits.npz")
#    on_cpu = mlpx.load("digits.npz", backend="cpu")
#
# Mixed precision on the GPU (bfloat16 products, float32 master weights):
#
# .. code-block:: python
#
#    fast = mlpx.MLP([64, 128, 64, 32, 10], backend="gpu", precision="bf16", seed=0)
#    fast.fit(X.astype(np.float32), y, epochs=20, batch_size=64)
