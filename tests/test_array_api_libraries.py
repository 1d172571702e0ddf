"""JAX and PyTorch through the generic Array API path, against the NumPy backend.

JAX arrays are immutable: ``backend="array-api:jax.numpy"`` runs the functional generic
kernels, and the model re-derives its layers' arrays after each write of the flat
parameters (see :mod:`mlpx.backends.kernel`). PyTorch (CPU) is a mutable namespace
reached through array-api-compat. The reference for both is the NumPy backend, which
runs the fast variants: in float64 the two must agree to 1e-10 after several epochs.

Each library's tests skip, with the reason, when it is not installed. JAX computes in
float64 only with its 64-bit mode on; the ``x64`` fixture switches it on for a test and
restores it afterwards.
"""

from __future__ import annotations

import pickle
import warnings
import zlib

import numpy as np
import pytest

import mlpx
from mlpx.backends import ArrayAPIBackend, BackendError, get_backend
from mlpx.optimizers import Optimizer

ConvergenceWarning = pytest.importorskip("sklearn.exceptions").ConvergenceWarning

JAX = "array-api:jax.numpy"
TORCH = "array-api:torch"
TOL = 1e-10  # float64 agreement with NumPy, weights and outputs


def _need(backend: str) -> None:
    module = {JAX: "jax", TORCH: "torch"}[backend]
    pytest.importorskip(module, reason=f"{module} is not installed (pip install \"mlpx[test]\")")


@pytest.fixture
def x64():
    """JAX's 64-bit mode for one test (mlpx never switches it on itself); nothing
    without JAX (its tests skip on their own)."""
    try:
        import jax
    except ImportError:
        yield None
        return
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield jax
    jax.config.update("jax_enable_x64", before)


def _digits(n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return X[:n] / 16.0, y[:n]


def _fit_both(backend: str, build, fit) -> tuple[mlpx.Sequential, mlpx.Sequential]:
    """The same model built and trained on NumPy and on ``backend``."""
    models = []
    for be in ("cpu", backend):
        model = build(be)
        fit(model)
        models.append(model)
    return models[0], models[1]


def _assert_same(ref: mlpx.Sequential, other: mlpx.Sequential, X: np.ndarray, tol: float = TOL) -> None:
    np.testing.assert_allclose(other.get_flat_params(), ref.get_flat_params(), rtol=0, atol=tol)
    np.testing.assert_allclose(other.predict_proba(X), ref.predict_proba(X), rtol=0, atol=tol)
    if ref.output.name in ("softmax", "logistic"):  # labels: equal
        np.testing.assert_array_equal(other.predict(X), ref.predict(X))


# ----------------------------------------------------------------- the backend
def test_jax_backend_is_immutable_and_its_name_resolves_back() -> None:
    _need(JAX)
    be = get_backend(JAX)
    assert isinstance(be, ArrayAPIBackend) and not be.mutable and be.name == JAX
    again = get_backend(be.name)
    assert again.name == be.name and again.xp is be.xp
    assert get_backend("array_api_strict").mutable and get_backend("cpu").mutable


def test_torch_backend_is_mutable_and_its_name_resolves_back() -> None:
    _need(TORCH)
    be = get_backend(TORCH)
    assert be.mutable and be.name == TORCH and get_backend(be.name).name == TORCH


def test_assign_writes_into_mutable_buffers_and_returns_values_on_jax() -> None:
    _need(JAX)
    strict, jx = get_backend("array_api_strict"), get_backend(JAX)
    buf = strict.zeros(3, "float32")
    view = buf[1:]
    assert strict.assign(view, strict.asarray(np.ones(2), "float32")) is view
    np.testing.assert_array_equal(strict.to_numpy(buf), [0.0, 1.0, 1.0])
    out, value = jx.zeros(2, "float32"), jx.asarray(np.ones(2), "float32")
    assert jx.assign(out, value) is value
    np.testing.assert_array_equal(jx.to_numpy(out), [0.0, 0.0])  # left as it was
    got = jx.gemm(jx.asarray(np.eye(2), "float32"), value[:, None], out=jx.zeros((2, 1), "float32"))
    np.testing.assert_array_equal(jx.to_numpy(got), [[1.0], [1.0]])


def test_generic_kernels_run_on_jax_arrays(x64) -> None:
    """Every kernel of the variant table, generic definition on JAX arrays (which cannot
    be written) against the same definition on NumPy."""
    import importlib.util
    from pathlib import Path

    _need(JAX)
    import jax.numpy as jnp

    spec = importlib.util.spec_from_file_location("_mlpx_kernel_cases", Path(__file__).with_name("test_kernels.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    kernels = mod.all_kernels()
    for name, build in sorted(mod.CASES.items()):
        rng = np.random.default_rng(zlib.crc32(name.encode()))
        for label, args, kwargs in build(rng, "float64"):
            ref = mod._as_tuple(kernels[name].generic(np, *mod._copy_preserving_aliases(args, np.copy), **kwargs))
            got = mod._as_tuple(kernels[name].generic(jnp, *mod._copy_preserving_aliases(args, jnp.asarray), **kwargs))
            for i, (r, g) in enumerate(zip(ref, got)):
                if r is None:
                    assert g is None
                    continue
                np.testing.assert_allclose(np.asarray(g), r, rtol=1e-12, atol=1e-12, err_msg=f"{name} [{label}] {i}")


# --------------------------------------------------------- training parity
@pytest.mark.parametrize("backend", [JAX, TORCH])
def test_digits_network_float64_matches_numpy(backend: str, x64) -> None:
    """The digits network (64-128-64-32-10), 4 epochs of Adam with shuffling: weights,
    probabilities and labels as on NumPy, to 1e-10."""
    _need(backend)
    X, y = _digits()

    def build(be):
        return mlpx.MLP([64, 128, 64, 32, 10], activation="relu", output="softmax", backend=be,
                        dtype="float64", seed=0)

    ref, other = _fit_both(backend, build, lambda m: m.fit(X, y, epochs=4, batch_size=64, optimizer="adam",
                                                           lr=1e-3, shuffle=True))
    _assert_same(ref, other, X)
    np.testing.assert_allclose(other.history.history["loss"], ref.history.history["loss"], rtol=1e-12)
    assert ref.evaluate(X, y)["accuracy"] > 0.9


CONFIGS = {
    "gelu, softmax, AdamW, l2, weights": dict(activation="gelu", output="softmax", opt=lambda: mlpx.AdamW(lr=3e-3),
                                              l2=1e-3, weighted=True),
    "tanh, logistic, SGD Nesterov": dict(activation="tanh", output="logistic",
                                         opt=lambda: mlpx.SGD(lr=0.05, momentum=0.9, nesterov=True)),
    "leaky_relu, identity, RMSprop, dropout": dict(activation="leaky_relu", output="identity",
                                                   opt=lambda: mlpx.RMSprop(lr=1e-3), dropout=0.2),
    "logistic, exp (Poisson), Adam": dict(activation="logistic", output="exp", opt=lambda: mlpx.Adam(lr=1e-3)),
    "relu, logistic, squared error (chain rule)": dict(activation="relu", output="logistic",
                                                       opt=lambda: mlpx.Adam(lr=1e-3), loss="mse"),
}


def _targets(output: str, y: np.ndarray) -> np.ndarray:
    if output == "softmax":
        return y
    if output == "logistic":
        return np.stack([y % 2, (y > 4).astype(int), (y == 3).astype(int)], axis=1)
    if output == "exp":
        return np.stack([y, y % 3], axis=1).astype(float)
    return np.stack([y / 9.0, np.sin(y)], axis=1)


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_every_activation_output_and_optimizer_float64_matches_numpy(config: str, x64) -> None:
    _need(JAX)
    c = CONFIGS[config]
    X, y = _digits(400)
    Y = _targets(c["output"], y)
    k = 10 if c["output"] == "softmax" else Y.shape[1]
    w = np.linspace(0.5, 2.0, len(X)) if c.get("weighted") else None

    def build(be):
        return mlpx.MLP([64, 24, 16, k], activation=c["activation"], output=c["output"], backend=be,
                        dtype="float64", seed=3, dropout=c.get("dropout", 0.0))

    def fit(model):
        model.fit(X, Y, epochs=3, batch_size=50, optimizer=c["opt"](), sample_weight=w, l2=c.get("l2", 0.0),
                  loss=c.get("loss"))

    ref, other = _fit_both(JAX, build, fit)
    _assert_same(ref, other, X)


def test_float32_without_x64_matches_numpy_to_float32_rounding() -> None:
    _need(JAX)
    import jax

    if jax.config.jax_enable_x64:
        pytest.skip("JAX's 64-bit mode is on in this process")
    X, y = _digits(600)

    def build(be):
        return mlpx.MLP([64, 32, 10], backend=be, seed=1)

    ref, other = _fit_both(JAX, build, lambda m: m.fit(X, y, epochs=3, batch_size=32))
    assert other.get_flat_params().dtype == np.float32
    np.testing.assert_allclose(other.get_flat_params(), ref.get_flat_params(), rtol=0, atol=1e-4)
    np.testing.assert_allclose(other.predict_proba(X), ref.predict_proba(X), rtol=0, atol=1e-4)
    # evaluate on a backend without float64: the scores are summed in float32
    np.testing.assert_allclose(other.evaluate(X, y)["loss"], ref.evaluate(X, y)["loss"], rtol=1e-4)


# -------------------------------------------- everything around the training
def test_evaluate_loss_and_grads_and_gradient_check_on_jax(x64) -> None:
    _need(JAX)
    from mlpx.gradcheck import check_gradients

    X, y = _digits(120)
    models = [mlpx.MLP([64, 12, 10], activation="tanh", backend=be, dtype="float64", seed=0) for be in ("cpu", JAX)]
    for m in models:
        m.fit(X, y, epochs=1, batch_size=40)
    ref, other = models
    for key, value in ref.evaluate(X, y).items():
        assert other.evaluate(X, y)[key] == pytest.approx(value, rel=1e-12, abs=1e-12)
    reg = [mlpx.MLP([64, 5, 2], output="identity", backend=be, dtype="float64", seed=0) for be in ("cpu", JAX)]
    Yr = _targets("identity", y)
    assert reg[1].evaluate(X, Yr)["r2"] == pytest.approx(reg[0].evaluate(X, Yr)["r2"], rel=1e-12)
    loss_ref, grads_ref = ref.loss_and_grads(X, y, l2=0.1)
    loss_got, grads_got = other.loss_and_grads(X, y, l2=0.1)
    assert loss_got == pytest.approx(loss_ref, rel=1e-12)
    for name, g in grads_ref.items():
        np.testing.assert_allclose(grads_got[name], g, rtol=1e-10, atol=1e-12, err_msg=name)
    # finite differences on a JAX model itself (small: two loss evaluations per parameter)
    small = mlpx.MLP([5, 4, 3], activation="gelu", backend=JAX, dtype="float64", seed=0, dropout=0.2)
    rng = np.random.default_rng(4)
    r = check_gradients(small, rng.normal(size=(8, 5)), rng.integers(0, 3, 8), sample_weight=np.linspace(0.5, 2.0, 8),
                        l2=0.2, inputs=True)
    assert r["max_rel_error"] < 1e-6, r["errors"]


def test_save_load_pickle_and_moves_between_backends(tmp_path, x64) -> None:
    _need(JAX)
    X, y = _digits(300)
    model = mlpx.MLP([64, 16, 10], backend=JAX, dtype="float64", seed=0)
    model.fit(X, y, epochs=2, batch_size=32)
    expected = model.predict_proba(X)
    path = model.save(tmp_path / "jax.npz")
    for be in (JAX, "cpu"):
        loaded = mlpx.load(path, backend=be)
        np.testing.assert_array_equal(loaded.get_flat_params(), model.get_flat_params())
        np.testing.assert_allclose(loaded.predict_proba(X), expected, rtol=0, atol=TOL)
    clone = pickle.loads(pickle.dumps(model))
    assert clone.backend.name == JAX and not clone.backend.mutable
    np.testing.assert_array_equal(clone.get_flat_params(), model.get_flat_params())
    # on NumPy and back, with the optimizer's state: training continues identically
    on_cpu = model.to("cpu")
    back = on_cpu.to(JAX)
    for m in (on_cpu, back):
        m.fit(X, y, epochs=1, batch_size=32, optimizer=m.optimizer_)
    assert back.optimizer_.t == on_cpu.optimizer_.t == 3 * 10
    np.testing.assert_allclose(back.get_flat_params(), on_cpu.get_flat_params(), rtol=0, atol=TOL)
    # set_weights / set_flat_params rebind the layers: predictions follow at once
    weights = [w * 0.5 for w in model.get_weights()]
    model.set_weights(weights)
    on_cpu.set_weights(weights)
    np.testing.assert_allclose(model.predict_proba(X), on_cpu.predict_proba(X), rtol=0, atol=TOL)


def test_checkpoint_resumes_exactly_on_jax(tmp_path, x64) -> None:
    _need(JAX)
    X, y = _digits(300)
    straight = mlpx.MLP([64, 16, 10], backend=JAX, dtype="float64", seed=0)
    straight.fit(X, y, epochs=2, batch_size=32, shuffle=False)
    first = mlpx.MLP([64, 16, 10], backend=JAX, dtype="float64", seed=0)
    first.fit(X, y, epochs=1, batch_size=32, shuffle=False, callbacks=[mlpx.ModelCheckpoint(tmp_path / "ck.npz")])
    resumed = mlpx.MLP([64, 16, 10], backend=JAX, dtype="float64", seed=5)
    opt = mlpx.load_checkpoint(tmp_path / "ck.npz", resumed)
    assert resumed.epochs_done_ == 1 and opt.t == 10
    resumed.fit(X, y, epochs=1, batch_size=32, shuffle=False, optimizer=opt)
    np.testing.assert_allclose(resumed.get_flat_params(), straight.get_flat_params(), rtol=0, atol=TOL)


def test_optimizer_state_carries_over_between_fits_and_through_state_dict(x64) -> None:
    """The same optimizer passed to a second fit keeps its moments (it is bound to the
    model, not to a parameter array, which an immutable backend replaces every step)."""
    _need(JAX)
    X, y = _digits(300)
    runs = {}
    for be in ("cpu", JAX):
        model = mlpx.MLP([64, 16, 10], backend=be, dtype="float64", seed=0)
        opt = mlpx.Adam(lr=1e-2)
        model.fit(X, y, epochs=1, batch_size=32, optimizer=opt)
        state = opt.state_dict()
        model.fit(X, y, epochs=1, batch_size=32, optimizer=opt)
        runs[be] = (model.get_flat_params(), state, opt.state_dict())
        assert opt.t == 2 * 10
    (p_ref, s1_ref, s2_ref), (p_got, s1_got, s2_got) = runs["cpu"], runs[JAX]
    np.testing.assert_allclose(p_got, p_ref, rtol=0, atol=TOL)
    for name in ("m", "v"):
        np.testing.assert_allclose(s1_got["state"][name], s1_ref["state"][name], rtol=0, atol=TOL)
        np.testing.assert_allclose(s2_got["state"][name], s2_ref["state"][name], rtol=0, atol=TOL)
    # a fresh optimizer from the saved state continues as the original did
    model = mlpx.MLP([64, 16, 10], backend=JAX, dtype="float64", seed=0)
    model.fit(X, y, epochs=1, batch_size=32, optimizer=mlpx.Adam(lr=1e-2))
    model.fit(X, y, epochs=1, batch_size=32, optimizer=Optimizer.from_state_dict(s1_got))
    np.testing.assert_allclose(model.get_flat_params(), p_ref, rtol=0, atol=TOL)


def test_optimizer_step_returns_the_new_parameters_on_jax(x64) -> None:
    """``step(params, grads)`` on immutable arrays, against the SGD formula."""
    _need(JAX)
    be = get_backend(JAX)
    p0, g = np.linspace(-1.0, 1.0, 6), np.arange(6.0)
    opt = mlpx.SGD(lr=0.1, momentum=0.9)
    params, grads = be.asarray(p0, "float64"), be.asarray(g, "float64")
    opt.bind(be, params, grads, 4)
    p, v = p0.copy(), np.zeros(6)
    for _ in range(3):
        new = opt.step(params, grads)
        assert new is not params
        np.testing.assert_array_equal(be.to_numpy(params), p)  # the old array is unchanged
        v = 0.9 * v - 0.1 * g
        p = p + v
        params = new
        np.testing.assert_allclose(be.to_numpy(params), p, rtol=1e-15)
    np.testing.assert_allclose(be.to_numpy(opt.state["velocity"]), v, rtol=1e-15)


def test_divergence_rolls_back_weights_and_state_on_jax(x64) -> None:
    _need(JAX)
    rng = np.random.default_rng(0)
    X = rng.normal(scale=100.0, size=(64, 4))
    y = X @ np.array([3.0, -2.0, 1.0, 5.0]) * 100
    results = []
    for be in ("cpu", JAX):
        model = mlpx.MLP([4, 16, 1], output="identity", backend=be, dtype="float64", seed=0)
        opt = mlpx.SGD(lr=1e-9, momentum=0.9)
        model.fit(X, y, epochs=1, batch_size=8, optimizer=opt)
        start, velocity = model.get_flat_params(), opt.state_dict()["state"]["velocity"]
        opt.lr = 10.0
        with pytest.raises(mlpx.TrainingDivergedError):
            model.fit(X, y, epochs=5, batch_size=8, optimizer=opt)
        np.testing.assert_array_equal(model.get_flat_params(), start)
        np.testing.assert_array_equal(opt.state_dict()["state"]["velocity"], velocity)
        opt.lr = 1e-9  # the clean retry the error message promises
        model.fit(X, y, epochs=1, batch_size=8, optimizer=opt)
        results.append(model.get_flat_params())
    np.testing.assert_allclose(results[1], results[0], rtol=0, atol=TOL)


def test_early_stopping_restores_the_best_weights_on_jax(x64) -> None:
    _need(JAX)
    X, y = _digits(400)
    out = []
    for be in ("cpu", JAX):
        model = mlpx.MLP([64, 16, 10], backend=be, dtype="float64", seed=0)
        stop = mlpx.EarlyStopping(monitor="val_loss", patience=1, restore_best_weights=True)
        model.fit(X, y, epochs=30, batch_size=16, lr=0.05, validation_split=0.2, callbacks=[stop])
        out.append((model.get_flat_params(), stop.best_epoch, len(model.history.history["loss"])))
    np.testing.assert_allclose(out[1][0], out[0][0], rtol=0, atol=TOL)
    assert out[1][1:] == out[0][1:]


@pytest.mark.parametrize("solver", ["adam", "sgd", "lbfgs"])
def test_estimators_on_jax_match_numpy(solver: str, x64) -> None:
    """The scikit-learn estimators run on the same engine: same fit in float64 (early
    stopping's best weights and validation scores included for adam and sgd)."""
    _need(JAX)
    X, y = _digits(300)
    fitted = []
    for be in ("cpu", JAX):
        kw = {} if solver == "lbfgs" else {"early_stopping": True, "n_iter_no_change": 3}
        est = mlpx.MLPClassifier(hidden_layer_sizes=(16,), solver=solver, max_iter=12, random_state=0,
                                 backend=be, dtype="float64", **kw)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # 12 iterations: on purpose
            est.fit(X, y)
        fitted.append(est)
    ref, got = fitted
    for a, b in zip(got.coefs_ + got.intercepts_, ref.coefs_ + ref.intercepts_):
        np.testing.assert_allclose(a, b, rtol=0, atol=TOL)
    np.testing.assert_allclose(got.predict_proba(X), ref.predict_proba(X), rtol=0, atol=TOL)
    assert got.n_iter_ == ref.n_iter_ and got.score(X, y) == ref.score(X, y)


# --------------------------------------------------- what an immutable backend refuses
def test_float64_without_x64_is_refused_naming_the_switch() -> None:
    _need(JAX)
    import jax

    if jax.config.jax_enable_x64:
        pytest.skip("JAX's 64-bit mode is on in this process")
    with pytest.raises(TypeError, match="array-api:jax.numpy.*float64.*jax_enable_x64"):
        mlpx.MLP([4, 3], backend=JAX, dtype="float64")


class _Comm:
    """Enough of an mpi4py communicator to be accepted as one."""

    def Allreduce(self, *args):  # pragma: no cover - never reached
        raise AssertionError

    def Get_rank(self) -> int:  # pragma: no cover - never reached
        return 0


def test_what_needs_writable_buffers_is_refused_naming_the_backend() -> None:
    _need(JAX)
    X, y = _digits(64)
    model = mlpx.MLP([64, 8, 10], backend=JAX, seed=0)
    with pytest.raises(BackendError, match=r"comm=.*'array-api:jax.numpy'.*immutable"):
        model.fit(X, y, epochs=1, comm=_Comm())
    with pytest.raises(ValueError, match=r"stream_data=True.*'array-api:jax.numpy'.*immutable"):
        model.fit(X, y, epochs=1, stream_data=True)
    for mode in ("bf16", "fp16"):
        with pytest.raises(BackendError, match=rf"precision='{mode}'.*'array-api:jax.numpy'.*immutable"):
            mlpx.MLP([64, 8, 10], backend=JAX, precision=mode)
    # the model is untouched by the refusals and still trains
    before = model.get_flat_params()
    model.fit(X, y, epochs=1)
    assert not np.array_equal(model.get_flat_params(), before)


def test_a_loss_cannot_write_its_delta_on_jax_but_returns_it() -> None:
    _need(JAX)
    from mlpx.losses import LOSSES

    be = get_backend(JAX)
    Z = be.asarray(np.array([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]), "float32")
    Y = be.asarray(np.eye(3)[[1, 2]], "float32")
    loss = LOSSES["cross_entropy"]
    with pytest.raises(BackendError, match="immutable.*value_and_delta"):
        loss(be, Z, Y, be.empty((2, 3), "float32"))
    value, delta = loss.value_and_delta(be, Z, Y, be.empty((2, 3), "float32"))
    z = np.array([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(be.to_numpy(delta), (p - np.eye(3)[[1, 2]]) / 2, rtol=1e-5, atol=1e-7)
    assert be.to_float(value) == pytest.approx(-np.log(p[[0, 1], [1, 2]]).mean(), rel=1e-5)
