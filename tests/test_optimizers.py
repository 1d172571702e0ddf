"""Optimizer steps against update formulas written out here (and scikit-learn's
optimizers), and learning-rate schedules against their formulas; on every backend."""

from __future__ import annotations

import math

import numpy as np
import pytest

import mlpx
from mlpx.optimizers import OPTIMIZERS, SGD, Adam, AdamW, RMSprop, get_optimizer
from mlpx.schedules import Constant, Cosine, InverseScaling, StepDecay, get_schedule

N, N_WEIGHTS, STEPS = 12, 8, 4  # a flat buffer of 8 "weights" then 4 "biases"


def _grads(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=N) for _ in range(STEPS)]


def _run(opt, be, dtype: str = "float64") -> list[np.ndarray]:
    """Bind ``opt`` to fresh flat buffers, take STEPS steps; params after each step."""
    p0 = np.linspace(-1.0, 1.0, N)
    params, grads = be.asarray(p0, dtype), be.zeros(N, dtype)
    opt.bind(be, params, grads, N_WEIGHTS)
    out = []
    for g in _grads():
        be.copy(be.asarray(g, dtype), grads)
        opt.step()
        out.append(np.array(be.to_numpy(params), dtype=np.float64))
    return out


def _check(got: list[np.ndarray], expected: list[np.ndarray], rtol: float = 1e-12) -> None:
    for t, (a, b) in enumerate(zip(got, expected), 1):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol, err_msg=f"after step {t}")


@pytest.mark.parametrize("momentum, nesterov", [(0.0, False), (0.9, False), (0.9, True), (0.5, True)])
def test_sgd_against_formula(backend, momentum: float, nesterov: bool) -> None:
    lr = 0.1
    p, v = np.linspace(-1.0, 1.0, N), np.zeros(N)
    expected = []
    for g in _grads():
        v = momentum * v - lr * g
        p = p + (momentum * v - lr * g if nesterov else v)
        expected.append(p.copy())
    opt = SGD(lr=lr, momentum=momentum, nesterov=nesterov)
    _check(_run(opt, backend), expected)
    assert opt.t == STEPS


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_against_sklearn(nesterov: bool) -> None:
    from sklearn.neural_network._stochastic_optimizers import SGDOptimizer

    p = [np.linspace(-1.0, 1.0, N)]
    sk = SGDOptimizer(p, learning_rate_init=0.1, momentum=0.9, nesterov=nesterov)
    expected = []
    for g in _grads():
        sk.update_params(p, [g])
        expected.append(p[0].copy())
    _check(_run(SGD(lr=0.1, momentum=0.9, nesterov=nesterov), mlpx.get_backend("cpu")), expected)


def test_adam_against_formula(backend) -> None:
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    p, m, v = np.linspace(-1.0, 1.0, N), np.zeros(N), np.zeros(N)
    expected = []
    for t, g in enumerate(_grads(), 1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        lr_t = lr * math.sqrt(1 - b2**t) / (1 - b1**t)  # bias correction folded into the rate
        p = p - lr_t * m / (np.sqrt(v) + eps)
        expected.append(p.copy())
    _check(_run(Adam(lr=lr, beta_1=b1, beta_2=b2, epsilon=eps), backend), expected)


def test_adam_bias_correction_first_step_is_lr_sign_g(backend) -> None:
    """With bias correction and tiny ε, Adam's first step is -lr·sign(g) (textbook form)."""
    opt = Adam(lr=0.05, epsilon=1e-12)
    got = _run(opt, backend)[0]
    np.testing.assert_allclose(got, np.linspace(-1.0, 1.0, N) - 0.05 * np.sign(_grads()[0]), rtol=1e-9)


def test_adam_against_sklearn() -> None:
    from sklearn.neural_network._stochastic_optimizers import AdamOptimizer

    p = [np.linspace(-1.0, 1.0, N)]
    sk = AdamOptimizer(p, learning_rate_init=0.01)
    expected = []
    for g in _grads():
        sk.update_params(p, [g])
        expected.append(p[0].copy())
    _check(_run(Adam(lr=0.01), mlpx.get_backend("cpu")), expected)


def test_adamw_decays_weights_only(backend) -> None:
    lr, wd, b1, b2, eps = 0.01, 0.1, 0.9, 0.999, 1e-8
    p, m, v = np.linspace(-1.0, 1.0, N), np.zeros(N), np.zeros(N)
    expected = []
    for t, g in enumerate(_grads(), 1):
        p[:N_WEIGHTS] *= 1 - lr * wd  # decoupled decay, weights only
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        p = p - lr * math.sqrt(1 - b2**t) / (1 - b1**t) * m / (np.sqrt(v) + eps)
        expected.append(p.copy())
    _check(_run(AdamW(lr=lr, weight_decay=wd), backend), expected)


def test_adamw_with_zero_gradient_only_shrinks_weights(backend) -> None:
    be = backend
    p0 = np.linspace(-1.0, 1.0, N)
    params, grads = be.asarray(p0.copy(), "float64"), be.zeros(N, "float64")
    opt = AdamW(lr=0.1, weight_decay=0.5)
    opt.bind(be, params, grads, N_WEIGHTS)
    opt.step()
    opt.step()
    got = be.to_numpy(params)
    np.testing.assert_allclose(got[:N_WEIGHTS], p0[:N_WEIGHTS] * 0.95**2, rtol=1e-14)
    np.testing.assert_array_equal(got[N_WEIGHTS:], p0[N_WEIGHTS:])


def test_rmsprop_against_formula(backend) -> None:
    lr, rho, eps = 0.01, 0.9, 1e-8
    p, s = np.linspace(-1.0, 1.0, N), np.zeros(N)
    expected = []
    for g in _grads():
        s = rho * s + (1 - rho) * g**2
        p = p - lr * g / (np.sqrt(s) + eps)
        expected.append(p.copy())
    _check(_run(RMSprop(lr=lr, rho=rho, epsilon=eps), backend), expected)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_state_shares_the_parameter_dtype(backend, name: str, dtype: str) -> None:
    opt = get_optimizer(name)
    got = _run(opt, backend, dtype)
    # Every per-parameter buffer on the device (the per-member scalars are host vectors).
    state = [a for a in opt.state.values() if hasattr(a, "shape") and hasattr(a, "dtype")]
    assert len(state) == len(opt.state_names) > 0, "optimizer keeps no state arrays?"
    for a in state:
        assert a.dtype == backend.dtype(dtype)
    assert np.isfinite(got[-1]).all()
    # float32 steps agree with the float64 ones to float32 precision
    ref = _run(get_optimizer(name), backend, "float64")
    np.testing.assert_allclose(got[-1], ref[-1], rtol=1e-5, atol=1e-6)


def test_bind_is_idempotent_and_state_carries_over(backend) -> None:
    """Binding again to the same buffers keeps the moments (fit called twice)."""
    be = backend
    params, grads = be.asarray(np.zeros(N), "float64"), be.asarray(np.ones(N), "float64")
    opt = Adam(lr=0.1)
    opt.bind(be, params, grads, N_WEIGHTS)
    opt.step()
    m = opt.state["m"]
    opt.bind(be, params, grads, N_WEIGHTS)
    assert opt.state["m"] is m and opt.t == 1


def test_optimizer_argument_errors() -> None:
    for bad in (0, -1.0, float("nan"), float("inf"), "0.1"):
        with pytest.raises(ValueError, match="learning rate"):
            SGD(lr=bad)
    with pytest.raises(ValueError, match="momentum"):
        SGD(momentum=1.5)  # 1.0 is allowed, as scikit-learn allows it
    with pytest.raises(ValueError, match="beta_1"):
        Adam(beta_1=1.0)
    with pytest.raises(ValueError, match="beta_2"):
        Adam(beta_2=-0.1)
    with pytest.raises(ValueError, match="rho"):
        RMSprop(rho=1.5)
    with pytest.raises(ValueError, match="weight_decay"):
        AdamW(weight_decay=-1)
    with pytest.raises(ValueError) as err:
        get_optimizer("lbfgs-ish")
    for name in ("sgd", "adam", "adamw", "rmsprop"):
        assert name in str(err.value)
    assert isinstance(get_optimizer("ADAM", lr=0.5), Adam) and get_optimizer("adam", lr=0.5).lr == 0.5


# ------------------------------------------------------------------ schedules
def test_schedules_against_formulas() -> None:
    lr0 = 0.2
    assert Constant()(lr0, 7, 1000) == lr0
    step = StepDecay(step_size=3, gamma=0.5)
    assert [step(lr0, e, 0) for e in range(7)] == [lr0 * 0.5 ** (e // 3) for e in range(7)]
    inv = InverseScaling(power_t=0.25)
    for seen in (0, 1, 99, 12345):
        assert inv(lr0, 5, seen) == pytest.approx(lr0 / (seen + 1) ** 0.25, rel=1e-15)
    cos = Cosine(T_max=10, eta_min=0.01)
    for e in range(15):
        ee = min(e, 10)
        assert cos(lr0, e, 0) == pytest.approx(0.01 + (lr0 - 0.01) * (1 + math.cos(math.pi * ee / 10)) / 2)
    assert cos(lr0, 0, 0) == pytest.approx(lr0) and cos(lr0, 10, 0) == pytest.approx(0.01)


def test_schedule_lookup_and_errors() -> None:
    assert isinstance(get_schedule(None), Constant)
    assert isinstance(get_schedule("cosine"), Cosine)
    with pytest.raises(ValueError, match="constant"):
        get_schedule("warmup")
    for bad in (lambda: StepDecay(step_size=0), lambda: StepDecay(gamma=0), lambda: Cosine(T_max=0)):
        with pytest.raises(ValueError):
            bad()


class _RecordLR(mlpx.Callback):
    def __init__(self, opt) -> None:
        self.opt, self.lrs = opt, []

    def on_epoch_end(self, model, epoch, logs) -> None:
        self.lrs.append(self.opt.lr)


@pytest.mark.parametrize(
    "schedule, formula",
    [
        (StepDecay(step_size=2, gamma=0.5), lambda lr0, e, seen: lr0 * 0.5 ** (e // 2)),
        (InverseScaling(0.5), lambda lr0, e, seen: lr0 / (seen + 1) ** 0.5),
        (Cosine(T_max=4), lambda lr0, e, seen: lr0 * (1 + math.cos(math.pi * min(e, 4) / 4)) / 2),
    ],
)
def test_fit_applies_the_schedule_each_epoch(schedule, formula) -> None:
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(20, 3)), rng.integers(0, 2, 20)
    opt = SGD(lr=0.1, momentum=0.0, schedule=schedule)
    rec = _RecordLR(opt)
    model = mlpx.MLP([3, 4, 2], seed=0)
    model.fit(X, y, epochs=6, batch_size=5, optimizer=opt, callbacks=[rec])
    assert rec.lrs == pytest.approx([formula(0.1, e, e * 20) for e in range(6)], rel=1e-14)
    # a second fit continues the schedule where the first stopped
    rec.lrs.clear()
    model.fit(X, y, epochs=2, batch_size=5, optimizer=opt, callbacks=[rec])
    assert rec.lrs == pytest.approx([formula(0.1, e, e * 20) for e in (6, 7)], rel=1e-14)


def test_one_fit_epoch_with_sgd_is_the_formula() -> None:
    """Full-batch SGD through fit: one step p ← p − lr · grad (grad from loss_and_grads)."""
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(16, 3)), rng.integers(0, 3, 16)
    model = mlpx.MLP([3, 5, 3], activation="tanh", dtype="float64", seed=0)
    before = model.get_weights()
    _, g = model.loss_and_grads(X, y)
    model.fit(X, y, epochs=1, batch_size=16, optimizer=SGD(lr=0.3, momentum=0.0), shuffle=False)
    names = ["0.W", "0.b", "1.W", "1.b"]
    for w0, w1, k in zip(before, model.get_weights(), names):
        np.testing.assert_allclose(w1, w0 - 0.3 * g[k], rtol=1e-12, atol=1e-15, err_msg=k)


def test_settings_with_an_optimizer_instance_are_rejected_not_dropped():
    import numpy as np

    import mlpx

    model = mlpx.MLP([3, 4, 2], seed=0)
    before = model.get_flat_params()
    X = np.zeros((4, 3))
    with pytest.raises(ValueError, match="optimizer instance"):
        model.fit(X, [0, 1, 0, 1], optimizer=mlpx.Adam(lr=0.1), lr=0.5)
    np.testing.assert_array_equal(model.get_flat_params(), before)


@pytest.mark.parametrize("name", ["lr0", "learning_rate", "momentun", "beta1"])
def test_assigning_a_setting_the_optimizer_does_not_have_raises(name):
    """A misspelt or removed setting (``lr0``, renamed ``lr``) is an error, never silently stored."""
    for opt in (SGD(lr=0.1), Adam(), AdamW(), RMSprop()):
        with pytest.raises(AttributeError, match=f"has no setting '{name}'"):
            setattr(opt, name, 0.5)
        assert name not in vars(opt)
    opt = Adam()
    opt.lr = 0.25  # the rate in force, and the settings, remain assignable
    opt.beta_1 = [0.8, 0.9]
    assert opt.lr == 0.25 and list(opt.beta_1) == [0.8, 0.9]
