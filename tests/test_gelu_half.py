"""GELU in float16 and bfloat16 beyond the range where its cubic term fits half precision.

z² overflows float16 at |z| >= 256 (and z³ well before), which once made the
derivative 0·inf = NaN. Every path that runs on the host (the generic definition, the
CPU backend's variant, the Activation object) is checked here against a float64
reference; the CUDA kernel is compiled for these dtypes in tests/test_cuda_compile.py
and run against the same reference in tests/test_gpu.py.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from mlpx.activations import gelu_backward, gelu_forward, get_activation
from mlpx.backends import get_backend

ml_dtypes = pytest.importorskip("ml_dtypes")

C, A = math.sqrt(2.0 / math.pi), 0.044715
# Large magnitudes on both sides, the float16 overflow thresholds, and ordinary values.
Z_VALUES = [-65504.0, -3000.0, -300.0, -256.0, -41.0, -3.0, -1.0, -0.25, 0.0, 0.5, 2.0, 7.0,
            40.0, 255.0, 256.0, 300.0, 1024.0, 60000.0]
DTYPES = {"float16": (np.float16, 2.0**-10), "bfloat16": (ml_dtypes.bfloat16, 2.0**-7)}


def gelu64(z: np.ndarray) -> np.ndarray:
    return 0.5 * z * (1.0 + np.tanh(C * (z + A * z**3)))


def gelu_grad64(z: np.ndarray) -> np.ndarray:
    # Written for float64 without overflow: (1 - t²) = sech²(u) is 0 long before z³ overflows.
    u = C * (z + A * z**3)
    sech2 = np.where(np.abs(u) > 40.0, 0.0, 1.0 / np.cosh(np.clip(u, -40.0, 40.0)) ** 2)
    return 0.5 * (1.0 + np.tanh(u)) + 0.5 * z * sech2 * C * (1.0 + 3.0 * A * z**2)


def test_the_float64_reference_is_the_derivative_of_gelu() -> None:
    z = np.linspace(-8.0, 8.0, 161)
    h = 1e-6
    fd = (gelu64(z + h) - gelu64(z - h)) / (2 * h)
    np.testing.assert_allclose(gelu_grad64(z), fd, rtol=1e-7, atol=1e-8)
    np.testing.assert_array_equal(gelu_grad64(np.array([-1e4, 1e4])), [0.0, 1.0])


def _inputs(dtype: object) -> tuple[np.ndarray, np.ndarray]:
    z = np.array(Z_VALUES).astype(dtype)
    dH = np.linspace(-2.0, 3.0, z.size).astype(dtype)
    return z, dH


def _backward_paths(z: np.ndarray, dH: np.ndarray) -> dict[str, np.ndarray]:
    out = {"generic": gelu_backward.generic(np, dH.copy(), z, None, np.empty_like(z))}
    be = get_backend("cpu")
    out["cpu backend"] = be.run(gelu_backward, dH.copy(), z, None, np.empty_like(z))
    d = dH.copy()
    out["Activation, out is dH"] = get_activation("gelu").backward(be, d, z, None, d)
    return out


@pytest.mark.parametrize("name", sorted(DTYPES))
def test_gelu_backward_in_half_precision_matches_float64(name: str) -> None:
    dtype, eps = DTYPES[name]
    z, dH = _inputs(dtype)
    z64, dH64 = z.astype(np.float64), dH.astype(np.float64)
    ref = dH64 * gelu_grad64(z64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow on the way
        results = _backward_paths(z, dH)
    for path, got in results.items():
        assert got.dtype == np.dtype(dtype), path
        got64 = got.astype(np.float64)
        assert np.isfinite(got64).all(), f"{path}: {got64}"
        # one rounding of the result to the half type, plus float32 arithmetic
        np.testing.assert_allclose(got64, ref, rtol=eps, atol=eps * 1e-3, err_msg=path)


@pytest.mark.parametrize("name", sorted(DTYPES))
def test_gelu_forward_in_half_precision_matches_float64(name: str) -> None:
    dtype, eps = DTYPES[name]
    z, _ = _inputs(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = gelu_forward.generic(np, z.copy(), np.empty_like(z))
        got_cpu = get_activation("gelu").forward(get_backend("cpu"), z.copy(), np.empty_like(z))
    ref = gelu64(z.astype(np.float64))
    for g in (got, got_cpu):
        assert g.dtype == np.dtype(dtype)
        np.testing.assert_allclose(g.astype(np.float64), ref, rtol=eps, atol=eps * 1e-3)


def test_float32_and_float64_results_are_unchanged_by_the_half_path() -> None:
    # The half path computes in float32; full-precision inputs keep their own arithmetic.
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        z = (rng.standard_normal(200) * 4).astype(dtype)
        dH = rng.standard_normal(200).astype(dtype)
        Z2 = z * z
        t = np.tanh(C * z * (1.0 + A * Z2))
        expected = dH * (0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * C * (1.0 + 3.0 * A * Z2))
        got = gelu_backward.generic(np, dH, z, None, np.empty_like(z))
        np.testing.assert_array_equal(got, expected.astype(dtype))
