"""
CPU vs GPU with the same code
=============================

.. note::

   Needs CuPy and an NVIDIA GPU (``pip install -e ".[gpu]"``): this example is
   shown, not run, when the documentation is built. No GPU timing of mlpx has
   been measured yet; on a GPU machine ``python -m benchmarks --gpu-check``
   produces them.

The same model code runs on the CPU (NumPy and its BLAS) and on the GPU (CuPy
and cuBLAS): only ``backend=`` changes. Initial weights are drawn on the host
from the seed, so both start from the same weights; the minibatch order is the
same too, and in float64 the two runs agree to rounding.
"""

import time

import numpy as np
from sklearn.datasets import load_digits

import mlpx

print(mlpx.available_backends())  # 'gpu' appears where CuPy finds a CUDA device

X, y = load_digits(return_X_y=True)
X = X / 16.0

models = {}
for backend in ("cpu", "gpu"):
    model = mlpx.MLP([64, 128, 64, 32, 10], backend=backend, dtype="float64", seed=0)
    start = time.perf_counter()
    model.fit(X, y, epochs=20, batch_size=64)
    print(f"{backend}: {time.perf_counter() - start:.2f} s, accuracy {model.evaluate(X, y)['accuracy']:.3f}")
    models[backend] = model

# Same weights after training, to float64 rounding.
print(np.abs(models["cpu"].get_flat_params() - models["gpu"].get_flat_params()).max())

# A GPU-trained model saves and loads anywhere; and moves between devices.
models["gpu"].save("digits-gpu.npz")
on_cpu = mlpx.load("digits-gpu.npz", backend="cpu")
back_on_gpu = on_cpu.to("gpu")

# Mixed precision on the GPU: bfloat16 products, float32 master weights.
fast = mlpx.MLP([64, 128, 64, 32, 10], backend="gpu", precision="bf16", seed=0)
fast.fit(X.astype(np.float32), y, epochs=20, batch_size=64)
