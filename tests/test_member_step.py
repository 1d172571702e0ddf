"""The compiled member step (mlpx.member_step) gives the phase-by-phase step's bits.

A stack on the CPU runs each member's whole step as one compiled loop where it can
(:func:`mlpx.member_step.member_step_plan`), all of an epoch's steps of a member in
one go (``Stack.train_epoch``) or step by step. The reference is the same stack with
that loop switched off, which runs the kernels of :mod:`mlpx.stacked` phase by
phase (they in turn equal single ``Sequential`` fits: ``tests/test_stacked.py``).
Weights, gradients, optimizer state, losses and counts must agree bit for bit.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mlpx
import mlpx.backends.blas as blas
from mlpx.backends import get_backend
from mlpx.member_step import member_step_plan
import mlpx.network_step as network_step  # noqa: I001
from mlpx.optimizers import Optimizer
from mlpx.stacked import Stack

pytest.importorskip("numba")
pytestmark = pytest.mark.skipif(blas.numpy_cblas() is None, reason="NumPy links a BLAS other than its own OpenBLAS")


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return X[:240] / 16.0, y[:240]


def _pair(template: mlpx.Sequential, seeds: list[int], threads: int = 1) -> tuple[Stack, Stack]:
    compiled = Stack(template, seeds=seeds, threads=threads)
    phased = Stack(template, seeds=seeds, threads=threads)
    phased._step_plan = None  # the reference: the phase-by-phase kernels
    return compiled, phased


def _stepwise(stack: Stack) -> Stack:
    """The compiled loop called once per step (the training loop's step by step)."""
    stack.train_epoch = lambda *args, **kwargs: None
    return stack


def _assert_same(a: Stack, b: Stack, ha, hb) -> None:
    np.testing.assert_array_equal(a.get_params_host(), b.get_params_host())
    for name in b.optimizer_.state:
        np.testing.assert_array_equal(a.optimizer_.state[name], b.optimizer_.state[name])
    np.testing.assert_array_equal(a.optimizer_.t, b.optimizer_.t)
    assert ha.history.keys() == hb.history.keys()
    for key in hb.history:
        np.testing.assert_array_equal(np.asarray(ha[key]), np.asarray(hb[key]), err_msg=key)


ACTIVATIONS = sorted(mlpx.activations.ACTIVATIONS)  # every hidden activation, softmax too
#: The canonical pairs: output activation and its targets from the digits' labels.
TASKS = ["softmax", "logistic", "identity", "exp"]
OPTIMIZERS = ["adam", "adamw", "sgd", "nesterov", "mixed nesterov", "rmsprop"]


def _targets(task: str, y: np.ndarray) -> np.ndarray:
    if task == "softmax":
        return y
    if task == "logistic":  # two labels per row (multilabel)
        return np.stack([y % 2, (y % 3 == 0)], axis=1).astype(float)
    if task == "identity":
        return np.stack([y / 10.0, (y % 3) / 3.0], axis=1)
    return np.stack([y % 4, y // 4], axis=1).astype(float)  # Poisson counts


def _optimizer(kind: str, lr: float, k: int) -> Optimizer:
    """Member ``k``'s optimizer (a fresh instance per call)."""
    if kind in ("adam", "adamw"):
        return mlpx.optimizers.Adam(lr=lr) if kind == "adam" else mlpx.optimizers.AdamW(lr=lr, weight_decay=0.05)
    if kind == "rmsprop":
        return mlpx.optimizers.RMSprop(lr=lr)
    nesterov = kind == "nesterov" or (kind == "mixed nesterov" and k % 2 == 0)
    return mlpx.optimizers.SGD(lr=lr, momentum=0.9, nesterov=nesterov)


@given(
    hidden=st.lists(st.integers(2, 24), min_size=1, max_size=3),
    activation=st.sampled_from(ACTIVATIONS),
    task=st.sampled_from(TASKS),
    dtype=st.sampled_from(["float64", "float32"]),
    optimizer=st.sampled_from(OPTIMIZERS),
    K=st.integers(1, 5),
    batch=st.integers(2, 50),
    weighted=st.booleans(),
    data=st.data(),
)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_the_compiled_step_equals_the_phase_by_phase_step(hidden, activation, task, dtype, optimizer, K, batch,
                                                           weighted, data, digits, monkeypatch):
    """Every activation, canonical loss, optimizer and dtype; K = 1 includes a single
    network (a Sequential), which must equal the one-member stack bit for bit."""
    X, y = digits
    X = X.astype(dtype)
    t = _targets(task, y)
    n_out = 10 if task == "softmax" else 2
    template = mlpx.MLP([64, *hidden, n_out], activation=activation, output=task, dtype=dtype, seed=0)
    lrs = data.draw(st.lists(st.floats(1e-4, 5e-2), min_size=K, max_size=K))
    l2s = data.draw(st.lists(st.sampled_from([0.0, 1e-3, 0.5]), min_size=K, max_size=K))
    n_rows = data.draw(st.lists(st.integers(2, 240), min_size=K, max_size=K))
    # Unequal row counts pad short members with zero-weight rows; two members may
    # share their rows (one gather for both).
    rows = [np.arange(n) for n in n_rows]
    w = np.random.default_rng(K).uniform(0.0, 2.0, len(t)) if weighted else None
    kw: dict = dict(epochs=2, batch_size=batch, l2=l2s, rows=rows, sample_weight=w)

    def fit(stack: Stack):
        return stack.fit(X, t, optimizer=[_optimizer(optimizer, lr, k) for k, lr in enumerate(lrs)], **kw)

    # a: the compiled epoch; b (the reference): phase by phase, step by step; c: the
    # compiled step, step by step; d: phase by phase with the epoch's scalars at once.
    a, b = _pair(template, list(range(K)), threads=2)
    b = _stepwise(b)
    c = _stepwise(Stack(template, seeds=list(range(K)), threads=2))
    d = Stack(template, seeds=list(range(K)), threads=2)
    d._step_plan = None
    blocks = data.draw(st.sampled_from([None, 1, 3]))
    epochs = []
    whole = network_step.NetworkStep.train_epoch

    def spy(self, *args, **kwargs):
        epochs.append((self, whole(self, *args, **kwargs)))
        return epochs[-1][1]

    compiled_by = set()
    step = network_step.NetworkStep._compiled_step

    def spy_step(self, *args, **kwargs):
        compiled_by.add(self)
        return step(self, *args, **kwargs)

    singles = []
    with monkeypatch.context() as mp:
        mp.setattr(network_step.NetworkStep, "train_epoch", spy)
        mp.setattr(network_step.NetworkStep, "_compiled_step", spy_step)
        if blocks is not None:  # an epoch in blocks of about this many steps (a bounded time per call)
            mp.setattr(network_step, "_BLOCK_FLOPS", blocks * 3.0 * template.gemm_flops(batch) * K)
        # A member may diverge (SGD at a high rate): NumPy's products warn, the
        # compiled loop does not; all freeze the member with the same numbers.
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            ha, hb, hc, hd = fit(a), fit(b), fit(c), fit(d)
            if K == 1:  # the same network alone, compiled and phase by phase
                for compiled in (True, False):
                    single = mlpx.MLP([64, *hidden, n_out], activation=activation, output=task, dtype=dtype,
                                      seed=0)
                    if not compiled:
                        single._step_plan = None
                    try:
                        h = single.fit(X[rows[0]], t[rows[0]], epochs=2, batch_size=batch, l2=l2s[0],
                                       optimizer=_optimizer(optimizer, lrs[0], 0),
                                       sample_weight=None if w is None else w[rows[0]])
                    except mlpx.TrainingDivergedError:
                        h = None  # a single network raises where a stack freezes the member
                    singles.append((single, h))
    assert a.compiled_step_reason == ""
    assert {s for s, _ in epochs if isinstance(s, Stack)} == {a, d}  # b and c step one by one without asking
    assert all(r is not None for s, r in epochs if isinstance(s, Stack))
    _assert_same(a, b, ha, hb)
    _assert_same(c, b, hc, hb)
    _assert_same(d, b, hd, hb)
    assert a in compiled_by and c in compiled_by and b not in compiled_by and d not in compiled_by
    for (single, h), compiled in zip(singles, (True, False)):
        assert (single in compiled_by) == compiled
        if h is None:
            assert a.diverged_[0]
            continue
        np.testing.assert_array_equal(single.get_flat_params(), a.get_member_params(0))
        for name in single.optimizer_.state:
            np.testing.assert_array_equal(single.optimizer_.state[name], a.optimizer_.state[name][0])
        np.testing.assert_array_equal(np.asarray(h["loss"]), np.asarray(ha["loss"])[:, 0])


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("task, optimizer", [("softmax", "adam"), ("logistic", "rmsprop"), ("identity", "nesterov"),
                                             ("exp", "adamw")])
def test_a_single_network_trains_alike_with_and_without_numba(activation, task, optimizer, digits, monkeypatch):
    """A Sequential's compiled epoch (numba) against the same fit on NumPy's own
    kernels (``MLPX_NUMBA=0``): the same numbers up to rounding, in float64."""
    import mlpx.backends.jit as jit
    from mlpx.backends.numpy_backend import NumpyBackend

    X, y = digits
    t = _targets(task, y)
    n_out = 10 if task == "softmax" else 2
    fits = []
    for numba_on in (True, False):
        monkeypatch.setattr(jit, "_ENABLED", numba_on)
        model = mlpx.MLP([64, 16, 12, n_out], activation=activation, output=task, dtype="float64", seed=3,
                         backend=NumpyBackend())
        assert (model.compiled_step_reason == "") == numba_on
        h = model.fit(X, t, epochs=3, batch_size=20, l2=1e-3, optimizer=_optimizer(optimizer, 1e-3, 0))
        fits.append((model.get_flat_params(), np.asarray(h["loss"])))
    np.testing.assert_allclose(fits[0][0], fits[1][0], rtol=0, atol=1e-10)
    np.testing.assert_allclose(fits[0][1], fits[1][1], rtol=1e-10)


def test_a_step_without_weight_is_skipped_alike_on_every_path(digits):
    X, y = digits
    w = np.ones(len(y))
    w[32:64] = 0.0  # rows in order, batches of 32: every member's second step weighs nothing
    template = mlpx.MLP([64, 12, 10], dtype="float64", seed=0)
    runs = []
    for compiled in (True, False):
        for step_by_step in (True, False):
            stack = Stack(template, seeds=[0, 1, 2], threads=2)
            if not compiled:
                stack._step_plan = None
            if step_by_step:
                _stepwise(stack)
            hist = stack.fit(X, y, epochs=2, batch_size=32, lr=[1e-3, 3e-3, 1e-2], l2=1e-3, sample_weight=w,
                             shuffle=False)
            runs.append((stack.get_params_host(), stack.optimizer_.t, np.asarray(hist["loss"])))
    np.testing.assert_array_equal(runs[0][1], [14, 14, 14])  # 2 epochs of 8 steps, 1 of them empty
    for params, t, loss in runs[1:]:
        np.testing.assert_array_equal(params, runs[0][0])
        np.testing.assert_array_equal(t, runs[0][1])
        np.testing.assert_array_equal(loss, runs[0][2])


@pytest.mark.parametrize("kind", ["adam", "sgd"])
def test_the_scalars_of_steps_in_a_row_are_those_of_each_step(kind):
    def make() -> Optimizer:
        members = ([mlpx.optimizers.Adam(lr=1e-3 * (k + 1), beta_1=0.9 if k < 2 else 0.8) for k in range(4)]
                   if kind == "adam" else [mlpx.optimizers.SGD(lr=0.1, momentum=0.5 + 0.1 * k) for k in range(4)])
        members[3].t = 5  # a member that has taken steps already
        return Optimizer.stack(members)

    active = np.random.default_rng(1).random((6, 4)) < 0.7
    one, many = make(), make()
    expected = np.stack([one.vectors(a) for a in active])
    np.testing.assert_array_equal(many.vectors(active), expected)
    np.testing.assert_array_equal(many.t, one.t)
    np.testing.assert_array_equal(many.t, [0, 0, 0, 5] + active.sum(axis=0))


def test_frozen_members_and_accuracy_counts(digits):
    X, y = digits
    template = mlpx.MLP([64, 12, 10], dtype="float64", seed=0)
    a, b = _pair(template, [0, 1, 2, 3], threads=2)
    # Member 2 stops after one epoch: frozen for the rest (no rows, no update, no cost).
    kw = dict(epochs=3, batch_size=16, lr=[1e-3, 1e-2, 3e-2, 3e-3], l2=1e-3, max_epochs=[3, 3, 1, 3])
    ha, hb = a.fit(X, y, **kw), b.fit(X, y, **kw)
    np.testing.assert_array_equal(a.get_params_host(), b.get_params_host())
    assert not a.active[2] and a.optimizer_.t[2] < a.optimizer_.t[0]
    assert "accuracy" in hb.history
    for key in ("loss", "accuracy"):
        for e, (ea, eb) in enumerate(zip(ha[key], hb[key])):
            live = [0, 1, 3] if e else [0, 1, 2, 3]
            np.testing.assert_array_equal(np.asarray(ea)[live], np.asarray(eb)[live])


def test_a_member_that_diverges_mid_epoch_logs_a_count_as_accuracy_on_every_path(digits):
    """Member 1 (SGD at lr 0.0497, batch 2) overflows in its second epoch: its logits
    turn NaN within the epoch. Its epoch's accuracy is still a count of its 87 rows,
    the same on every path (NumPy's arg-max rule for NaN rows), where the compiled
    count used to start from ``Z[0, 0] · 0`` and log NaN."""
    X, y = digits
    net = dict(activation="identity", dtype="float64", seed=0)
    kw = dict(epochs=2, batch_size=2, lr=[0.03125, 0.04965487743685455], rows=[np.arange(2), np.arange(87)],
              optimizer="sgd", momentum=0.9)
    a, b = _pair(mlpx.MLP([64, 2, 2, 2, 10], **net), [0, 1], threads=2)
    b = _stepwise(b)
    strict = Stack(mlpx.MLP([64, 2, 2, 2, 10], backend="array-api:array_api_strict", **net), seeds=[0, 1])
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ha, hb, hs = a.fit(X, y, **kw), b.fit(X, y, **kw), strict.fit(X, y, **kw)
    assert a.diverged_.tolist() == [False, True] and np.isnan(hb["loss"][1][1])
    _assert_same(a, b, ha, hb)
    hits = hb["accuracy"][1][1] * 87
    assert hits == round(hits)
    np.testing.assert_array_equal(np.asarray(hs["accuracy"]), np.asarray(hb["accuracy"]))


def test_the_split_over_threads_changes_no_bit(digits):
    X, y = digits
    template = mlpx.MLP([64, 20, 10], dtype="float64", seed=0)
    results = []
    for threads in (1, 2, 3):
        s = Stack(template, seeds=list(range(7)), threads=threads)
        s.fit(X, y, epochs=3, batch_size=32, lr=[1e-3 * (k + 1) for k in range(7)], l2=1e-4)
        results.append(s.get_params_host())
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[0], results[2])


@pytest.mark.parametrize(
    "build, reason",
    [
        (lambda: mlpx.MLP([8, 1, 3], dtype="float64", seed=0), "width 1"),
        (lambda: mlpx.MLP([8, 6, 3], dtype="float64", seed=0, dropout=0.2), "dropout"),
        (lambda: mlpx.Sequential([mlpx.layers.Dense(8, 6), mlpx.layers.Tanh(), mlpx.layers.Dense(6, 3, "softmax")],
                                 dtype="float64", seed=0), "activation layer of its own"),
        (lambda: mlpx.MLP([8, 6, 3], dtype="float32", precision="bf16", seed=0), "mixed precision"),
        (lambda: mlpx.MLP([8, 6, 3], dtype="float64", seed=0, backend="array-api:array_api_strict"), "NumPy backend"),
    ],
)
@pytest.mark.filterwarnings("ignore:precision=:RuntimeWarning")
def test_what_the_compiled_step_does_not_cover_says_why(build, reason):
    pytest.importorskip("array_api_strict")
    stack = Stack(build(), seeds=[0, 1])
    assert reason in stack.compiled_step_reason


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_the_stacked_search_runs_the_compiled_step(digits, monkeypatch):
    X, y = digits
    seen = []
    init = Stack.__init__

    def spy(self, *args, **kwargs):
        init(self, *args, **kwargs)
        seen.append(self.compiled_step_reason)

    monkeypatch.setattr(Stack, "__init__", spy)
    from mlpx.model_selection import GridSearchCV

    GridSearchCV(mlpx.MLPClassifier(hidden_layer_sizes=(16,), max_iter=3, random_state=0),
                 {"alpha": [1e-4, 1e-2]}, cv=2).fit(X, y)
    assert seen and all(r == "" for r in seen)


def test_the_stacked_search_splits_its_members_over_the_stack_s_threads(digits, monkeypatch):
    # The estimators' stacked fits train inside the stack's training context: its
    # members are shared by the calling thread and the stack's other threads.
    import threading

    import mlpx.member_step
    import mlpx.network
    import mlpx.network_step

    X, y = digits
    names = set()
    run = mlpx.member_step.run_member_steps

    def spy(*args, **kwargs):
        names.add(threading.current_thread().name.split("_")[0])
        return run(*args, **kwargs)

    monkeypatch.setattr(mlpx.network, "_default_threads", lambda: 2)
    monkeypatch.setattr(mlpx.network_step, "run_member_steps", spy)
    from mlpx.model_selection import GridSearchCV

    GridSearchCV(mlpx.MLPClassifier(hidden_layer_sizes=(16,), max_iter=3, random_state=0),
                 {"alpha": [1e-4, 1e-3, 1e-2, 1e-1]}, cv=2).fit(X, y)
    assert names == {"MainThread", "mlpx-members"}, names


def test_an_estimator_s_single_network_runs_the_compiled_epoch(digits, monkeypatch):
    # MLPClassifier trains its one network on the network's own batch source, so
    # the compiled epoch serves it as it serves Sequential.fit and the stacks.
    import mlpx.network_step

    X, y = digits
    calls = []
    run = mlpx.network_step.run_member_steps

    def spy(*args, **kwargs):
        calls.append(args[1].size)  # the members in the queue
        return run(*args, **kwargs)

    monkeypatch.setattr(mlpx.network_step, "run_member_steps", spy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning at max_iter
        mlpx.MLPClassifier(hidden_layer_sizes=(16,), max_iter=3, random_state=0).fit(X, y)
    assert calls and set(calls) == {1}


def test_numpy_cblas_gives_numpy_matmul_bits():
    cb = blas.numpy_cblas()
    rng = np.random.default_rng(0)
    for dtype in ("float32", "float64"):
        A = rng.standard_normal((33, 17)).astype(dtype)
        B = rng.standard_normal((33, 9)).astype(dtype)
        out = np.empty((17, 9), dtype=dtype)
        cb.gemm[dtype](blas.CBLAS_ROW_MAJOR, blas.CBLAS_TRANS, blas.CBLAS_NO_TRANS, 17, 9, 33, 1.0,
                       A.ctypes.data, 17, B.ctypes.data, 9, 0.0, out.ctypes.data, 9)
        np.testing.assert_array_equal(out, np.matmul(A.T, B))
        C = B[::-1].copy()
        out2 = np.empty((33, 33), dtype=dtype)
        cb.gemm[dtype](blas.CBLAS_ROW_MAJOR, blas.CBLAS_NO_TRANS, blas.CBLAS_TRANS, 33, 33, 9, 1.0,
                       B.ctypes.data, 9, C.ctypes.data, 9, 0.0, out2.ctypes.data, 33)
        np.testing.assert_array_equal(out2, np.matmul(B, C.T))
        x = rng.standard_normal(517).astype(dtype)
        assert cb.dot[dtype](517, x.ctypes.data, 1, x.ctypes.data, 1) == np.vecdot(x, x)


def test_without_numpys_own_blas_the_phase_by_phase_step_runs(monkeypatch):
    monkeypatch.setattr(blas, "_CBLAS", [])
    monkeypatch.setattr(blas, "_numpy_blas_files", lambda: [])
    assert blas.numpy_cblas() is None
    plan, reason = member_step_plan(get_backend("cpu"), [((0, 12, (3, 4)), (12, 16, (4,)), "relu")], "float64",
                                    False)
    assert plan is None and "BLAS" in reason
    monkeypatch.setattr(blas, "_CBLAS", [])
