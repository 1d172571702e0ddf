"""Precision modes (tf32, bf16, fp16 with loss scaling) against float64 references.

The low-precision arithmetic runs on NumPy here (float16 natively, bfloat16 through
ml_dtypes), so the mixed-precision step -- master weights, compute copies, scaling
and unscaling, overflow skips -- is checked in CI; the GPU tests at the end run the
same checks on CuPy.
"""

from __future__ import annotations

import pickle
import sys
import warnings

import numpy as np
import pytest

import mlpx
from mlpx.backends import get_backend
from mlpx.precision import LossScaler, all_finite, get_precision, scale_cast

def _needs(mode: str) -> None:
    if mode == "bf16":
        pytest.importorskip("ml_dtypes", reason="bfloat16 on NumPy needs ml_dtypes")


def _model(mode, backend="cpu", sizes=(12, 24, 16, 4), seed=0, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "slower on the CPU"
        return mlpx.MLP(list(sizes), seed=seed, backend=backend, precision=mode, **kw)


def _blobs(n=256, d=12, k=4, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=2.0, size=(k, d))
    y = np.arange(n) % k
    return (centers[y] + rng.normal(size=(n, d))).astype(np.float32), y


# ---------------------------------------------------------------- the scaler
def test_loss_scaler_backs_off_and_grows_as_specified() -> None:
    s = LossScaler(init_scale=1024.0, growth_factor=2.0, backoff_factor=0.5, growth_interval=3)
    s.update(found_inf=True)
    assert (s.scale, s.skipped, s.good_steps) == (512.0, 1, 0)
    for _ in range(2):
        s.update(found_inf=False)
    assert s.scale == 512.0  # 2 clean steps < interval 3
    s.update(found_inf=False)
    assert (s.scale, s.good_steps) == (1024.0, 0)
    s.update(found_inf=False)
    s.update(found_inf=True)  # an overflow resets the clean-step count
    s.update(found_inf=False)
    s.update(found_inf=False)
    assert s.scale == 512.0
    state = s.get_state()
    t = LossScaler()
    t.set_state(state)
    assert t.get_state() == state


def test_loss_scaler_is_bounded() -> None:
    s = LossScaler(init_scale=2.0**23, growth_interval=1)
    for _ in range(5):
        s.update(False)
    assert s.scale == 2.0**24  # beyond float16's range a larger scale can only overflow
    for _ in range(100):
        s.update(True)
    assert s.scale == 2.0**-24
    with pytest.raises(ValueError):
        LossScaler(backoff_factor=1.5)


# ------------------------------------------------------------- resolution
def test_precision_validation() -> None:
    be = get_backend("cpu")
    assert not get_precision(None, "float32", be).mixed
    assert get_precision("float32", "float32", be).compute_dtype == "float32"
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        get_precision("fp8", "float32", be)
    with pytest.raises(ValueError, match="float32 master"):
        mlpx.MLP([3, 2], dtype="float64", precision="fp16")
    with pytest.warns(RuntimeWarning, match="CPUs have no TF32"):
        p = get_precision("tf32", "float32", be)
    assert p.tf32 and not p.mixed
    with pytest.warns(RuntimeWarning, match="slower than float32"):
        p = get_precision("fp16", "float32", be)
    assert p.mixed and p.scaler is not None and p.compute_dtype == "float16"


def test_precision_errors_where_the_dtype_does_not_exist(monkeypatch) -> None:
    with pytest.raises(TypeError, match="no float16"):
        mlpx.MLP([3, 2], backend="array_api_strict", precision="fp16")
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)
    with pytest.raises(TypeError, match="pip install ml_dtypes"):
        mlpx.MLP([3, 2], precision="bf16")


def test_fp16_refuses_inputs_beyond_its_range() -> None:
    m = _model("fp16", sizes=(3, 2))
    X = np.array([[1.0, 2.0, 7e4]])
    for call in (lambda: m.predict(X), lambda: m.fit(X, [0]), lambda: m.loss_and_grads(X, [1])):
        with pytest.raises(ValueError, match="beyond float16's largest"):
            call()
    m.predict(X / 10)  # in range: fine
    _model("bf16" if _has("ml_dtypes") else "tf32", sizes=(3, 2)).predict(X)  # bfloat16 holds 7e4


def _has(mod: str) -> bool:
    try:
        __import__(mod)
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------- kernels
@pytest.mark.parametrize("kind", ["generic", "numpy"])
def test_scale_cast_forms_the_product_in_float32(kind) -> None:
    # 2**-20 is below float16's smallest subnormal (2**-24) once multiplied by 2**-10:
    # unscaling in float16 would give 0; in float32 it must not.
    src = np.array([2.0**-10, 3.0, -5.5, 60000.0], dtype=np.float16)
    fn = scale_cast.resolve(() if kind == "generic" else ("numpy",))
    out = fn(np, src, 2.0**-20, np.empty(4, np.float32))  # the result is returned (and in out on NumPy)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, src.astype(np.float64) * 2.0**-20)
    with np.errstate(over="ignore"):
        down = fn(np, np.array([1.0, 70000.0, -1e-9, 0.5], np.float32), 1.0, np.empty(4, np.float16))
    assert down.dtype == np.float16
    assert down[0] == 1 and np.isinf(down[1]) and down[3] == 0.5  # overflow shows as inf


def test_all_finite() -> None:
    assert bool(all_finite.resolve(())(np, np.ones(5, np.float32)))
    for bad in (np.inf, -np.inf, np.nan):
        a = np.ones(5, np.float32)
        a[3] = bad
        assert not bool(all_finite.resolve(())(np, a))


# -------------------------------------------------------------- gradients
@pytest.mark.parametrize("mode", ["fp16", "bf16"])
def test_mixed_gradients_match_float64_within_the_format_precision(mode) -> None:
    _needs(mode)
    X, y = _blobs(64)
    ref = mlpx.MLP([12, 24, 16, 4], seed=0, dtype="float64")
    m = _model(mode)
    m.set_flat_params(ref.get_flat_params())
    loss64, g64 = ref.loss_and_grads(X.astype(np.float64), y, l2=1e-3)
    loss, g = m.loss_and_grads(X, y, l2=1e-3)
    eps = 2.0**-11 if mode == "fp16" else 2.0**-8  # unit roundoff of the format
    assert abs(loss - loss64) < 30 * eps * abs(loss64)
    for k in g64:
        assert g[k].dtype == np.float32  # master gradients, whatever computes
        err = np.abs(g[k] - g64[k]).max() / np.abs(g64[k]).max()
        assert err < 40 * eps, (k, err)
    # and the tolerance is not loose enough to hide a float32-quality result: float32 is closer
    g32 = _model(None)
    g32.set_flat_params(ref.get_flat_params())
    _, gg = g32.loss_and_grads(X, y, l2=1e-3)
    assert max(np.abs(gg[k] - g64[k]).max() for k in g64) < max(np.abs(g[k] - g64[k]).max() for k in g64)


def test_loss_scaling_keeps_tiny_gradients_that_float16_would_flush() -> None:
    """Residuals of ~1e-4 over 16384 rows give output deltas of ~6e-9, below float16's
    smallest subnormal (6e-8): unscaled they flush to zero, scaled by 2**16 they survive."""
    X, _ = _blobs(16384)
    ref = mlpx.MLP([12, 8, 1], output="identity", seed=1, dtype="float64")
    W = ref.get_weights()
    W[2], W[3] = W[2] * 1e-4, W[3] * 1e-4  # output layer: predictions ~1e-4, targets 0
    ref.set_weights(W)
    y = np.zeros(len(X))
    _, g64 = ref.loss_and_grads(X.astype(np.float64), y)
    errs = {}
    for scale in (1.0, 2.0**16):
        m = _model("fp16", sizes=(12, 8, 1), seed=1, output="identity")
        m.set_weights(W)
        m.precision_.scaler.scale = scale
        _, g = m.loss_and_grads(X, y)
        errs[scale] = np.abs(g["1.W"] - g64["1.W"]).max() / np.abs(g64["1.W"]).max()
    assert errs[1.0] > 0.3, errs  # unscaled: the output layer's gradient is mostly lost
    assert errs[2.0**16] < 0.01, errs


def test_loss_and_grads_backs_the_scale_off_until_gradients_fit_float16() -> None:
    X, y = _blobs(4096)
    ref = mlpx.MLP([12, 24, 16, 4], seed=0, dtype="float64")
    m = _model("fp16")
    m.set_flat_params(ref.get_flat_params())
    m.precision_.scaler.scale = 2.0**24  # certain to overflow at first
    _, g = m.loss_and_grads(X, y)
    _, g64 = ref.loss_and_grads(X.astype(np.float64), y)
    assert m.precision_.scaler.scale < 2.0**24
    for k in g64:
        assert np.isfinite(g[k]).all()
        assert np.abs(g[k] - g64[k]).max() < 0.05 * np.abs(g64[k]).max(), k


def test_an_overflowing_fp16_step_is_skipped_and_the_scale_lowered() -> None:
    X, y = _blobs(64)
    m = _model("fp16")
    scaler = m.precision_.scaler
    scaler.scale = 2.0**24  # dZ·S overflows float16 (max 65504) for |dZ| > 0.004
    before = m.get_flat_params()
    opt = mlpx.Adam(lr=0.01)
    m.fit(X, y, epochs=1, batch_size=64, optimizer=opt)
    assert scaler.skipped == 1 and scaler.scale == 2.0**23
    assert opt.t == 0  # the optimizer never ran: no moment was polluted by inf
    np.testing.assert_array_equal(m.get_flat_params(), before)
    m.fit(X, y, epochs=40, batch_size=64, optimizer=opt)
    assert np.isfinite(m.get_flat_params()).all()
    assert opt.t + scaler.skipped == 41  # every step either applied or skipped
    assert scaler.scale < 2.0**23 and opt.t > 20


# --------------------------------------------------------------- training
def _digits():
    datasets = pytest.importorskip("sklearn.datasets")
    X, y = datasets.load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y))
    return X[order[:1400]], y[order[:1400]], X[order[1400:]], y[order[1400:]]


@pytest.mark.parametrize("mode", ["tf32", "fp16", "bf16"])
def test_each_mode_reaches_float32_accuracy_on_digits(mode) -> None:
    _needs(mode)
    X, y, Xt, yt = _digits()
    acc = {}
    for p in (None, mode):
        m = _model(p, sizes=(64, 128, 64, 10))
        m.fit(X, y, epochs=15, batch_size=64, optimizer=mlpx.Adam(lr=2e-3))
        acc[p] = float(np.mean(m.predict(Xt) == yt))
        assert m.params.dtype == np.float32
    assert acc[None] > 0.95
    assert abs(acc[mode] - acc[None]) <= 0.015, acc  # 6 of 397 test digits


@pytest.mark.parametrize("mode", ["fp16", "bf16"])
def test_each_mode_matches_float32_on_the_synthetic_workload(mode) -> None:
    """The benchmark's synthetic 784-input data, shrunk to run on NumPy's slow halves."""
    _needs(mode)
    from benchmarks.data import synthetic

    X, y, Xt, yt = synthetic(784, 10, 3000, 1000, seed=0)
    acc = {}
    for p in (None, mode):
        m = _model(p, sizes=(784, 64, 10))
        m.fit(X, y, epochs=4, batch_size=256, optimizer=mlpx.Adam(lr=1e-3))
        acc[p] = float(np.mean(m.predict(Xt) == yt))
    assert acc[None] > 0.5
    assert abs(acc[mode] - acc[None]) <= 0.02, acc


@pytest.mark.parametrize("mode", ["tf32", "fp16", "bf16"])
def test_precision_survives_save_load_pickle_and_to(tmp_path, mode) -> None:
    _needs(mode)
    m = _model(mode)
    X, _ = _blobs(16)
    path = tmp_path / "m.npz"
    m.save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        copies = [mlpx.load(path), pickle.loads(pickle.dumps(m)), m.to("cpu")]
    for c in copies:
        assert c.precision_.name == mode
        np.testing.assert_array_equal(c.predict_proba(X), m.predict_proba(X))


def test_predict_in_mixed_precision_is_close_to_float64() -> None:
    X, _ = _blobs(100)
    ref = mlpx.MLP([12, 24, 16, 4], seed=3, dtype="float64")
    m = _model("fp16", seed=3)
    P = m.predict_proba(X)
    assert P.dtype == np.float32
    np.testing.assert_allclose(P, ref.predict_proba(X.astype(np.float64)), atol=5e-3)


# -------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["tf32", "fp16", "bf16"])
def test_gpu_mixed_gradients_match_float64(mode) -> None:
    if mode == "bf16":
        pytest.importorskip("ml_dtypes")
    X, y = _blobs(256)
    ref = mlpx.MLP([12, 64, 32, 4], seed=0, dtype="float64")
    m = mlpx.MLP([12, 64, 32, 4], seed=0, backend="gpu", precision=mode)
    m.set_flat_params(ref.get_flat_params())
    _, g64 = ref.loss_and_grads(X.astype(np.float64), y)
    _, g = m.loss_and_grads(X, y)
    eps = {"tf32": 2.0**-11, "fp16": 2.0**-11, "bf16": 2.0**-8}[mode]
    for k in g64:
        err = np.abs(g[k] - g64[k]).max() / np.abs(g64[k]).max()
        assert err < 40 * eps, (k, err)


@pytest.mark.gpu
def test_gpu_tf32_context_changes_products_and_restores_the_mode() -> None:
    cupy = pytest.importorskip("cupy")
    from cupy import _core

    be = get_backend("gpu")
    if be.compute_capability < 80:  # an int; CuPy's own attribute is a string such as "90"
        pytest.skip("TF32 needs compute capability >= 8.0")
    rng = np.random.default_rng(0)
    A = rng.standard_normal((512, 512)).astype(np.float32)
    B = rng.standard_normal((512, 512)).astype(np.float32)
    exact = A.astype(np.float64) @ B
    before = _core.get_compute_type(np.float32)
    with be.tf32_matmul():
        tf = cupy.asnumpy(be.gemm(cupy.asarray(A), cupy.asarray(B)))
    assert _core.get_compute_type(np.float32) == before
    fp = cupy.asnumpy(be.gemm(cupy.asarray(A), cupy.asarray(B)))
    err_tf, err_fp = np.abs(tf - exact).max(), np.abs(fp - exact).max()
    assert err_tf > 10 * err_fp  # inputs rounded to a 10-bit mantissa: visibly coarser
    assert err_tf < 2.0**-10 * np.abs(A).max() * np.abs(B).max() * 512


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["tf32", "fp16", "bf16"])
def test_gpu_modes_reach_float32_accuracy_on_digits(mode) -> None:
    if mode == "bf16":
        pytest.importorskip("ml_dtypes")
    X, y, Xt, yt = _digits()
    acc = {}
    for p in (None, mode):
        m = mlpx.MLP([64, 128, 64, 10], seed=0, backend="gpu", precision=p)
        m.fit(X, y, epochs=15, batch_size=64, optimizer=mlpx.Adam(lr=2e-3))
        acc[p] = float(np.mean(m.predict(Xt) == yt))
    assert abs(acc[mode] - acc[None]) <= 0.015, acc


@pytest.mark.gpu
def test_gpu_fp16_overflow_skip() -> None:
    X, y = _blobs(64)
    m = mlpx.MLP([12, 24, 16, 4], seed=0, backend="gpu", precision="fp16")
    m.precision_.scaler.scale = 2.0**24
    before = m.get_flat_params()
    opt = mlpx.Adam(lr=0.01)
    m.fit(X, y, epochs=1, batch_size=64, optimizer=opt)
    assert m.precision_.scaler.skipped == 1 and opt.t == 0
    np.testing.assert_array_equal(m.get_flat_params(), before)


def test_tf32_and_bf16_need_an_ampere_gpu() -> None:
    """Checked on a stand-in GPU backend: the rule is about the device, not CuPy."""
    from mlpx.backends import NumpyBackend

    class OldGPU(NumpyBackend):
        is_gpu = True
        compute_capability = 75

    for mode in ("tf32", "bf16"):
        if mode == "bf16":
            _needs(mode)
        with pytest.raises(ValueError, match="compute capability >= 8.0.*has 7.5"):
            get_precision(mode, "float32", OldGPU())
    assert get_precision("fp16", "float32", OldGPU()).compute_dtype == "float16"


def test_fp16_checkpoint_resumes_with_the_scale_reached(tmp_path) -> None:
    """A resumed fp16 run continues exactly: weights, Adam state and the loss scale."""
    from mlpx.saving import ModelCheckpoint, load_checkpoint

    X, y = _blobs(128)
    kw = dict(batch_size=32, shuffle=False)
    straight = _model("fp16")
    straight.precision_.scaler.scale = 2.0**24  # overflows: the first steps back it off
    straight.fit(X, y, epochs=3, optimizer=mlpx.Adam(lr=1e-2), **kw)
    first = _model("fp16")
    first.precision_.scaler.scale = 2.0**24
    first.fit(X, y, epochs=2, optimizer=mlpx.Adam(lr=1e-2), callbacks=[ModelCheckpoint(tmp_path / "ck.npz")], **kw)
    assert first.precision_.scaler.skipped > 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        resumed = mlpx.load(tmp_path / "ck.npz")
    opt = load_checkpoint(tmp_path / "ck.npz", resumed)
    assert resumed.precision_.scaler.get_state() == first.precision_.scaler.get_state()
    resumed.fit(X, y, epochs=1, optimizer=opt, **kw)
    np.testing.assert_array_equal(resumed.get_flat_params(), straight.get_flat_params())
    assert resumed.precision_.scaler.get_state() == straight.precision_.scaler.get_state()
