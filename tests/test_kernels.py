"""Every kernel's host variants (``"numpy"``, and ``"numba"`` when numba is installed)
against its generic definition, under the returned-values convention of
:mod:`mlpx.backends.kernel`.

The fast variants are what runs on the CPU (the ``"numpy"`` ones also, unchanged, on
CuPy); the generic definitions are what runs on array-api-strict and JAX. thinc's
history shows how CPU and GPU paths drift apart silently when nobody compares them, so
each variant is run here on the same inputs as the generic definition, in float32 and
float64, for every argument combination and every documented aliasing (``out is Z``,
``out is dH``, ``dZ is Z``), and:

* the generic definition writes nothing (its inputs are read-only here) and returns
  every result;
* the variant returns the same values, and each result that has a buffer (``out``,
  ``dZ``, the optimizer's ``p`` and state) is that very buffer, so on NumPy the
  returned array *is* the buffer the model passed;
* the variant leaves every other input as it was (scratch buffers excepted).
"""

from __future__ import annotations

import itertools
import zlib
from typing import Any, Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mlpx.activations as activations
import mlpx.distributed as distributed
import mlpx.layers as layers
import mlpx.losses as losses
import mlpx.metrics as metrics
import mlpx.network_step as network_step
import mlpx.updates as updates
import mlpx.precision as precision
from mlpx.backends import Kernel

MODULES = (activations, losses, updates, layers, metrics, precision, network_step, distributed)


def all_kernels() -> dict[str, Kernel]:
    found: dict[str, Kernel] = {}
    for mod in MODULES:
        for obj in vars(mod).values():
            if isinstance(obj, Kernel) and obj.generic.__module__ == mod.__name__:  # defined there
                found[obj.name] = obj
    return found


HOST_KINDS = ("numpy", "numba")  # variants that run on NumPy arrays


def host_variants() -> list[tuple[str, str]]:
    return sorted((name, kind) for name, k in all_kernels().items() for kind in HOST_KINDS if kind in k.variants)


def numpy_variants() -> list[str]:
    return sorted({name for name, _ in host_variants()})


# --------------------------------------------------------------- case builders
# A case builder takes (rng, dtype) and returns a list of (label, args, kwargs):
# the arrays among ``args`` are the buffers a kernel may read and write. Aliasing is
# expressed by passing the *same* object twice; `_run` preserves that identity when
# it copies the inputs for the two runs.


def _act_forward(rng: np.random.Generator, dtype: str, scale: float = 3.0) -> list:
    Z = (rng.standard_normal((7, 5)) * scale).astype(dtype)
    Z[0, :3] = [0.0, -0.0, 1e-30]  # the kinks and signs
    out = np.empty_like(Z)
    return [("out", (Z, out), {}), ("in-place out is Z", (Z, Z), {})]


def _act_backward(forward: Kernel, needs_Z: bool = False) -> Callable[..., list]:
    def build(rng: np.random.Generator, dtype: str) -> list:
        Z = (rng.standard_normal((7, 5)) * 3).astype(dtype)
        H = forward.generic(np, Z, np.empty_like(Z))
        dH = rng.standard_normal(Z.shape).astype(dtype)
        out = np.empty_like(Z)
        return [
            ("out", (dH, Z, H, out), {}),
            ("in-place out is dH", (dH, Z, H, dH), {}),
            ("Z is None", (dH, None if not needs_Z else Z, H, out), {}),
        ]

    return build


def _scale_cast(rng: np.random.Generator, dtype: str) -> list:
    src = rng.standard_normal((6, 4)).astype(dtype)
    return [("out", (src, 0.125, np.empty_like(src)), {}), ("out is src", (src, 8.0, src), {})]


def _fill(rng: np.random.Generator, dtype: str) -> list:
    return [("fill", (rng.standard_normal(9).astype(dtype), 0.0), {})]


def _zero(rng: np.random.Generator, dtype: str) -> list:
    return [("zero", (rng.standard_normal(9).astype(dtype),), {})]


def _multiply(rng: np.random.Generator, dtype: str) -> list:
    a = rng.standard_normal((6, 4)).astype(dtype)
    b = rng.standard_normal((6, 4)).astype(dtype)
    return [("out", (a, b, np.empty_like(a)), {}), ("out is a", (a, b, a), {})]


def _large_rows(build: Callable[..., list], rows: int = 300, cols: int = 128) -> Callable[..., list]:
    """Also larger (rows, cols) matrices."""

    def wrapped(rng: np.random.Generator, dtype: str) -> list:
        cases = build(rng, dtype)
        big = []
        for label, args, kw in cases:
            memo: dict[int, Any] = {}
            new = []
            for a in args:
                if isinstance(a, np.ndarray) and id(a) not in memo:
                    shape = (rows, cols) if a.ndim == 2 else (rows,) if a.shape[0] != args[0].shape[-1] else (cols,)
                    memo[id(a)] = np.resize(a, shape)
                new.append(memo.get(id(a), a) if isinstance(a, np.ndarray) else a)
            big.append((label + " (large)", tuple(new), kw))
        return cases + big

    return wrapped


CASES: dict[str, Callable[..., list]] = {
    "relu_forward": _act_forward,
    "relu_backward": _large_rows(_act_backward(activations.relu_forward)),
    "leaky_relu_forward": _act_forward,
    "logistic_forward": lambda rng, dt: _act_forward(rng, dt, scale=40.0),  # exp(-z) overflow region
    "logistic_backward": _large_rows(_act_backward(activations.logistic_forward)),
    "tanh_forward": _act_forward,
    "tanh_backward": _large_rows(_act_backward(activations.tanh_forward)),
    "softmax_forward": lambda rng, dt: _act_forward(rng, dt, scale=200.0),
    "exp_forward": _act_forward,
    "multiply": _multiply,
    "scale_cast": _scale_cast,
    "_fill": _fill,
    "_zero": _zero,
}

# Where each result of a kernel lives when a fast variant writes it: the index of the
# argument that is its buffer, position by position in the returned tuple (None: a new
# value, e.g. a loss total). A result whose buffer argument is None (no ``dZ``) is None.
_ACT_FORWARD, _ACT_BACKWARD = (1,), (3,)
OUTPUTS: dict[str, tuple[int | None, ...]] = {
    "relu_forward": _ACT_FORWARD, "leaky_relu_forward": _ACT_FORWARD, "logistic_forward": _ACT_FORWARD,
    "tanh_forward": _ACT_FORWARD, "softmax_forward": _ACT_FORWARD, "exp_forward": _ACT_FORWARD,
    "relu_backward": _ACT_BACKWARD, "logistic_backward": _ACT_BACKWARD, "tanh_backward": _ACT_BACKWARD,
    "multiply": (2,), "scale_cast": (2,), "_fill": (0,), "_zero": (0,),
}
# Arguments a fast variant may overwrite with anything (scratch).
SCRATCH: dict[str, tuple[int, ...]] = {}
_OPTIMIZERS: tuple[str, ...] = ()


def test_every_numpy_variant_has_a_case() -> None:
    """A new fast variant without a comparison case here fails the suite."""
    missing = sorted(set(numpy_variants()) - set(CASES) - set(FUNCTIONAL))
    assert not missing, f"kernels with a host variant but no test case: {missing}"
    # and the tables name no kernel that has lost its variant
    assert set(CASES) | set(FUNCTIONAL) <= set(numpy_variants())
    assert set(OUTPUTS) == set(CASES), "every case needs the positions of its results' buffers"


def _as_tuple(ret: Any) -> tuple:
    return ret if isinstance(ret, tuple) else (ret,)


def _copy_preserving_aliases(args: tuple, convert: Callable[[np.ndarray], Any]) -> tuple:
    memo: dict[int, Any] = {}
    out = []
    for a in args:
        if isinstance(a, np.ndarray):
            if id(a) not in memo:
                memo[id(a)] = convert(a)
            out.append(memo[id(a)])
        else:
            out.append(a)
    return tuple(out)


def _read_only(a: np.ndarray) -> np.ndarray:
    c = a.copy()
    c.flags.writeable = False  # a generic definition that writes raises here
    return c


def _close(a: Any, b: Any, dtype: str, what: str, scale: float = 1.0, atol: float | None = None) -> None:
    rtol, default = (2e-6, 1e-6) if dtype == "float32" else (1e-12, 1e-12)
    atol = default if atol is None else atol
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    np.testing.assert_allclose(a, b, rtol=rtol * scale, atol=atol, err_msg=what)


def compare_variant(name: str, fast: Callable[..., Any], args: tuple, kwargs: dict, dtype: str, what: str,
                    xp: Any = np, to_device: Callable[[np.ndarray], Any] = np.copy,
                    to_host: Callable[[Any], np.ndarray] = np.asarray, reduction_rtol: float = 1.0) -> None:
    """One case: the generic definition (NumPy, read-only inputs) against ``fast`` run by
    ``xp`` on ``to_device`` copies of the inputs (CuPy for the GPU variants).

    ``reduction_rtol`` widens the tolerance of 0-d results (sums taken in another order)."""
    k = all_kernels()[name]
    gen_args = _copy_preserving_aliases(args, _read_only)
    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        ret_g = _as_tuple(k.generic(np, *gen_args, **kwargs))
    fast_args = _copy_preserving_aliases(args, to_device)
    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        ret_f = _as_tuple(fast(xp, *fast_args, **kwargs))
    positions = OUTPUTS[name]
    assert len(ret_g) == len(ret_f) == len(positions), f"{what}: {len(ret_f)} results, {len(ret_g)} generic"
    for i, (g, f, pos) in enumerate(zip(ret_g, ret_f, positions)):
        if pos is not None and args[pos] is None:
            assert g is None and f is None, f"{what}: result {i} without a buffer must be None"
            continue
        if pos is not None:
            assert f is fast_args[pos], f"{what}: result {i} is not the buffer argument {pos} it was written into"
            assert not any(g is a for a in gen_args), f"{what}: the generic definition returned an input as result {i}"
        _close(to_host(f), g, dtype, f"{what}: result {i}", reduction_rtol if np.ndim(g) == 0 else 1.0)
        if name not in _OPTIMIZERS:  # values must be finite even for the extreme inputs
            assert np.isfinite(np.asarray(to_host(f), dtype=np.float64)).all(), f"{what}: result {i} not finite"
    # The variant wrote only into its results' buffers and its scratch.
    written = {id(fast_args[p]) for p in positions if p is not None and fast_args[p] is not None}
    written |= {id(fast_args[p]) for p in SCRATCH.get(name, ())}
    for j, (orig, a) in enumerate(zip(args, fast_args)):
        if isinstance(orig, np.ndarray) and id(a) not in written:
            np.testing.assert_array_equal(to_host(a), orig, err_msg=f"{what}: input {j} was changed")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name, kind", [v for v in host_variants() if v[0] in CASES])
def test_host_variant_matches_generic(name: str, kind: str, dtype: str) -> None:
    if kind == "numba":
        pytest.importorskip("numba")
    fast = all_kernels()[name].variants[kind]
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    for label, args, kwargs in CASES[name](rng, dtype):
        compare_variant(name, fast, args, kwargs, dtype, f"{name}/{kind} [{label}] {dtype}")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", ["relu_forward", "tanh_forward", "logistic_forward", "softmax_forward", "exp_forward", "leaky_relu_forward"])
def test_forward_variant_returns_its_out_buffer(name: str, dtype: str) -> None:
    """On NumPy the returned array is the ``out`` the layer passed (its workspace); the
    generic definition returns a new array and leaves ``out`` alone."""
    k = all_kernels()[name]
    Z = np.linspace(-2, 2, 12, dtype=dtype).reshape(3, 4)
    out = np.full_like(Z, 7.0)
    assert k.variants["numpy"](np, Z, out) is out
    assert (out != 7.0).any()
    out = np.full_like(Z, 7.0)
    H = k.generic(np, Z.copy(), out)
    assert H is not out and (out == 7.0).all()
    np.testing.assert_allclose(H, k.variants["numpy"](np, Z, np.empty_like(Z)), rtol=1e-6)


def test_correct_count_generic_against_sklearn_accuracy() -> None:
    """correct_count's generic definition against an independent count."""
    from sklearn.metrics import accuracy_score

    rng = np.random.default_rng(3)
    Z = rng.standard_normal((50, 4))
    y = rng.integers(0, 4, 50)
    Y = np.eye(4)[y]
    got = float(metrics.correct_count.generic(np, Z[None], Y[None], None, "softmax")[0])
    assert got == accuracy_score(y, Z.argmax(1)) * 50
    Yml = (rng.random((50, 3)) > 0.5).astype(float)
    Zml = rng.standard_normal((50, 3))
    got = float(metrics.correct_count.generic(np, Zml[None], Yml[None], None, "logistic")[0])
    assert got == accuracy_score(Yml.astype(int), (Zml > 0).astype(int)) * 50


# ------------------------------------------------------- functional kernels
# The member-form kernels (layers, losses, optimizers, counts) follow the functional convention: the generic
# definition returns new arrays and leaves its inputs alone; the fast variants may
# write into the buffers they are given and return them. So the *returned* values
# are compared, and each variant must return the buffers it documents writing.
def _members(rng: np.random.Generator, dtype: str, K: int = 3, n: int = 5, u: int = 4) -> tuple:
    return (rng.standard_normal((K, n, u)) * 2).astype(dtype), rng.standard_normal((K, u)).astype(dtype)


def _f_bias_activation(rng: np.random.Generator, dtype: str) -> list:
    cases = []
    for act in sorted(activations.ACTIVATIONS.values(), key=lambda a: a.name):
        Z, b = _members(rng, dtype)
        cases.append((f"{act.name}: own out", (Z, b, act, np.empty_like(Z)), {}, None))
        if act.from_output:  # out is Z: Z + b is not kept, compare H only
            cases.append((f"{act.name}: out is Z", (Z, b, act, Z), {}, (1,)))
        # b as the network passes it: each member's row of the flat parameters (strided)
        flat = np.full((Z.shape[0], 11), np.nan, dtype)
        flat[:, 2:6] = b
        cases.append((f"{act.name}: b a view", (Z, flat[:, 2:6], act, Z if act.from_output else np.empty_like(Z)), {},
                      (1,) if act.from_output else None))
    return cases


def _f_loss(kind: str) -> Callable[..., list]:
    def build(rng: np.random.Generator, dtype: str) -> list:
        cases = []
        K, n, c = 3, 6, 4
        Z = (rng.standard_normal((K, n, c)) * 3).astype(dtype)
        if kind == "cross_entropy":
            Z[0, 0] = [700.0, -700.0, 0.0, 1.0]
            Y = np.eye(c, dtype=dtype)[rng.integers(0, c, (K, n))]
            Y[1, 1] = [0.25, 0.25, 0.5, 0.0]  # soft targets
        elif kind == "binary_cross_entropy":
            Y = (rng.random((K, n, c)) > 0.5).astype(dtype)
        else:
            Y = np.abs(rng.standard_normal((K, n, c))).astype(dtype)
        w = rng.uniform(0.2, 2.0, (K, n)).astype(dtype)
        w[1, 4:] = 0.0  # padding rows
        inv_d = np.array([1 / 6, 1 / 4, 0.0], dtype=dtype)  # member 2 sits the step out
        for ww, tag in ((w, "weighted"), (None, "unit weights")):
            cases.append((f"{tag}, dZ", (Z, Y, ww, inv_d, np.empty_like(Z)), {}, None))
            cases.append((f"{tag}, dZ is Z", (Z, Y, ww, inv_d, Z), {}, None))
            cases.append((f"{tag}, no dZ", (Z, Y, ww, inv_d, None), {}, None))
        return cases

    return build


def _f_correct_count(rng: np.random.Generator, dtype: str) -> list:
    K, n, c = 3, 8, 4
    Z = rng.standard_normal((K, n, c)).astype(dtype)
    Y = np.eye(c, dtype=dtype)[rng.integers(0, c, (K, n))]
    Yml = (rng.random((K, n, c)) > 0.5).astype(dtype)
    w = rng.uniform(0.0, 1.0, (K, n)).astype(dtype)
    w[0, :3] = 0.0  # padding rows are not counted
    return [("softmax", (Z, Y, w, "softmax"), {}, None), ("logistic", (Z, Yml, w, "logistic"), {}, None),
            ("softmax, every row", (Z, Y, None, "softmax"), {}, None)]


def _f_l2(rng: np.random.Generator, dtype: str) -> list:
    P = rng.standard_normal((3, 30)).astype(dtype)
    G = rng.standard_normal((3, 30)).astype(dtype)
    return [("prefix views", (P[:, :21], G[:, :21], np.array([0.1, 0.0, 2.0], dtype=dtype)), {}, None)]


#: Each rule's rows for three members (the last row, ``active``, is set per case).
_RULE_ROWS = {
    "sgd_update": [[0.05, 0.01, 0.3], [0.9, 0.0, 0.5], [0, 1, 1]],
    "adam_update": [[-0.01, -0.02, -0.3], [0.9, 0.8, 0.5], [0.1, 0.2, 0.5], [0.999, 0.99, 0.6],
                    [0.001, 0.01, 0.4], [1e-8, 1e-6, 1e-2], [1.0, 0.97, 1.0]],
    "rmsprop_update": [[0.01, 0.05, 0.3], [0.9, 0.5, 0.99], [0.1, 0.5, 0.01], [1e-8, 1e-6, 1e-2]],
}


def _f_optimizer(name: str) -> Any:
    n_state = 2 if name == "adam_update" else 1

    def build(rng: np.random.Generator, dtype: str) -> list:
        cases = []
        for active, penalised in itertools.product(([1, 1, 1], [1, 0, 1]), (True, False)):
            p = rng.standard_normal((3, 40)).astype(dtype)
            g = rng.standard_normal((3, 40)).astype(dtype)
            state = [rng.uniform(0.0, 1.0, (3, 40)).astype(dtype) for _ in range(n_state)]
            vec = np.array(_RULE_ROWS[name] + [active], dtype=dtype)
            coef = np.array([0.0, 0.3, 0.01], dtype=dtype) if penalised else None
            cases.append((f"active={active} penalised={penalised}", (p, g, *state, vec, coef, 29), {}, None))
        return cases

    return build


# The float32 GELU derivative ½(1 + t) + ½ z (1 − t²) c (1 + 3a z²), t = tanh(…): an
# ulp of t (6e-8) moves it by up to 14 ulps of t² · |½ z c (1 + 3a z²)| ≈ 2e-6 at |z| ≈ 6,
# in NumPy's float32 as in any other float32 implementation (both are ~1e-6 from the
# float64 value), so two of them agree to about twice that.
GELU_F32_ATOL = 4e-6


def _f_dense_backward(rng: np.random.Generator, dtype: str) -> list:
    cases = []
    for name, act in sorted(activations.ACTIVATIONS.items()):
        Z, _ = _members(rng, dtype, n=7, u=6)
        Z[0, 0, :3] = [0.0, -0.0, 40.0]  # kinks, and a saturated unit
        H = act.forward_kernel.generic(np, Z.reshape(-1, 6), np.empty((21, 6), dtype)).reshape(3, 7, 6)
        dH = rng.standard_normal((3, 7, 6)).astype(dtype)
        grads = np.full((3, 20), np.nan, dtype)
        atol = GELU_F32_ATOL if (name == "gelu" and dtype == "float32") else None
        cases.append((f"{name}, db view", (dH, Z, H, act, grads[:, 4:10]), {}, None, atol))
        cases.append((f"{name}, no db", (dH, Z, H, act, None), {}, None, atol))
        if act.from_output:  # Z is not needed
            cases.append((f"{name}, no Z", (dH, None, H, act, None), {}, None, atol))
    for name in ("relu", "gelu"):  # many rows: the GPU sums them apart (layers.FUSED_BIAS_GRADIENT_ROWS)
        act = activations.ACTIVATIONS[name]
        Z, _ = _members(rng, dtype, K=2, n=layers.FUSED_BIAS_GRADIENT_ROWS + 3, u=5)
        H = act.forward_kernel.generic(np, Z.reshape(-1, 5), np.empty((Z.size // 5, 5), dtype)).reshape(Z.shape)
        dH = rng.standard_normal(Z.shape).astype(dtype)
        grads = np.full((2, 12), np.nan, dtype)
        atol = GELU_F32_ATOL if (name == "gelu" and dtype == "float32") else None
        cases.append((f"{name}, {Z.shape[1]} rows, db view", (dH, Z, H, act, grads[:, 3:8]), {}, None, atol))
    return cases


FUNCTIONAL: dict[str, Callable[..., list]] = {
    "bias_activation": _f_bias_activation,
    "bias_activation_inference": _f_bias_activation,
    "cross_entropy": _f_loss("cross_entropy"),
    "binary_cross_entropy": _f_loss("binary_cross_entropy"),
    "squared_error": _f_loss("squared_error"),
    "poisson": _f_loss("poisson"),
    "correct_count": _f_correct_count,
    "l2_penalty": _f_l2,
    "sgd_update": _f_optimizer("sgd_update"),
    "adam_update": _f_optimizer("adam_update"),
    "rmsprop_update": _f_optimizer("rmsprop_update"),
    "dense_backward": _f_dense_backward,
}
# The buffer each variant returns at each position (an index into the arguments), or None.
_RETURNS_BUFFER = {
    "sgd_update": (0, 2, None),
    "adam_update": (0, 2, 3, None),
    "rmsprop_update": (0, 2, None),
    "l2_penalty": (1, None),
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name, kind", [v for v in host_variants() if v[0] in FUNCTIONAL])
def test_functional_variant_returns_what_the_generic_definition_returns(name: str, kind: str, dtype: str) -> None:
    if kind == "numba":
        pytest.importorskip("numba")
    k = all_kernels()[name]
    fast = k.variants[kind]
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    for label, args, kwargs, which, *atol in FUNCTIONAL[name](rng, dtype):
        with np.errstate(all="ignore"):  # read-only inputs: a generic definition that writes raises
            ret_g = k.generic(np, *_copy_preserving_aliases(args, _read_only), **kwargs)
        call_args = _copy_preserving_aliases(args, np.copy)
        with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
            ret_f = fast(np, *call_args, **kwargs)
        what = f"{name}/{kind} [{label}] {dtype}"
        ret_g = ret_g if isinstance(ret_g, tuple) else (ret_g,)
        ret_f = ret_f if isinstance(ret_f, tuple) else (ret_f,)
        assert len(ret_g) == len(ret_f), what
        for i, (g, f) in enumerate(zip(ret_g, ret_f)):
            if which is not None and i not in which:
                continue
            if g is None:
                assert f is None, f"{what}: returned value {i}"
                continue
            _close(f, g, dtype, f"{what}: returned value {i}", atol=atol[0] if atol else None)
            assert np.asarray(f).dtype == np.asarray(g).dtype, f"{what}: returned value {i} dtype"
        for i, pos in enumerate(_RETURNS_BUFFER.get(name, ())):
            if pos is not None:
                assert ret_f[i] is call_args[pos], f"{what}: returned value {i} is not the buffer it updates"


@pytest.mark.parametrize("kind", ["generic", "numpy", "numba"])
@pytest.mark.parametrize("loss", ["cross_entropy", "binary_cross_entropy", "squared_error", "poisson"])
def test_member_loss_is_zero_for_a_member_without_rows_whose_outputs_overflowed(kind: str, loss: str) -> None:
    """A member that sits a step out has only padding rows (weight 0); once its weights
    overflowed their loss is inf and 0 · inf is NaN, which the training loop's sum over
    steps would carry into the member's epoch loss. The compiled step skips the member;
    every variant must report 0 too, and the other members' losses unchanged."""
    if kind == "numba":
        pytest.importorskip("numba")
    k = all_kernels()[loss]
    fn = k.generic if kind == "generic" else k.variants.get(kind, k.generic)
    rng = np.random.default_rng(3)
    Z = rng.standard_normal((2, 4, 3))
    Y = np.eye(3)[rng.integers(0, 3, (2, 4))] if loss == "cross_entropy" else rng.standard_normal((2, 4, 3))
    Z[1] = [1e308, -1e308, 0.0]  # loss inf on every row (cross-entropy: lse − z = 2e308)
    Y[1] = [0.0, 1.0, 0.0]
    w = np.array([[1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    inv_d = np.array([1 / 3, 0.0])
    with np.errstate(all="ignore"):
        value, _ = fn(np, Z, Y, w, inv_d, np.empty_like(Z))
        whole = fn(np, Z[:1], Y[:1], w[:1], inv_d[:1], None)[0]
    assert value[1] == 0.0
    assert value[0] == whole[0] and np.isfinite(whole[0])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", ["sgd_update", "adam_update", "rmsprop_update"])
def test_numba_optimizer_updates_give_the_numpy_variants_bits(name: str, dtype: str) -> None:
    """The compiled loops repeat the NumPy variants' operations in order, with the
    scalars in the buffers' dtype: 30 steps later every member's parameters and state
    are bit for bit equal (so scikit-learn parity does not depend on numba), with
    members that sit steps out, an L2 term, and Nesterov and AdamW decay on some."""
    pytest.importorskip("numba")
    k = all_kernels()[name]
    rng = np.random.default_rng(5)
    p0 = rng.standard_normal((4, 257)).astype(dtype)
    n_state = 2 if name == "adam_update" else 1
    state = {kind: [p0.copy()] + [np.zeros_like(p0) for _ in range(n_state)] for kind in ("numpy", "numba")}
    rows = {"sgd_update": [[1e-3, 3e-3, 1e-2, 3e-2], [0.9, 0.0, 0.5, 0.9], [1, 0, 0, 1]],
            "adam_update": [[-1e-3, -3e-3, -1e-2, -3e-2], [0.9] * 4, [0.1] * 4, [0.999] * 4, [0.001] * 4,
                            [1e-8] * 4, [1.0, 0.999, 1.0, 0.99]],
            "rmsprop_update": [[1e-3, 3e-3, 1e-2, 3e-2], [0.9] * 4, [0.1] * 4, [1e-8] * 4]}[name]
    for step in range(30):
        g = (rng.standard_normal(p0.shape) * 10.0 ** rng.integers(-5, 3)).astype(dtype)
        vec = np.array(rows + [[1, 1, step % 2, 1]], dtype=dtype)
        coef = np.array([0.0, 1e-3, 1e-2, 1e-1], dtype=dtype) if step % 3 else None
        for kind, (p, *st_) in state.items():
            k.variants[kind](np, p, g.copy(), *st_, vec, coef, 200)
    for a, b in zip(state["numpy"], state["numba"]):
        np.testing.assert_array_equal(a, b)


# Logits of a diverged model: NaN and ±inf beside finite values, with ties.
_WILD = st.sampled_from([np.nan, np.inf, -np.inf, 0.0, 1.0, -1.0, 2.5])


@given(data=st.data(), dtype=st.sampled_from(["float32", "float64"]), n=st.integers(1, 12),
       c=st.integers(1, 6))
@settings(max_examples=200, deadline=None)
def test_every_hit_count_follows_numpys_arg_max_on_non_finite_logits(data, dtype, n, c) -> None:
    """A stack member that diverged mid-epoch still has its accuracy logged, from NaN or
    inf logits. The compiled counts (a single model's and a stack member's) must count
    such rows as ``numpy.argmax`` does on NumPy, CuPy and array-api-strict (the first
    NaN, else the first maximum) and be a number, not NaN."""
    pytest.importorskip("numba")

    Z = np.array(data.draw(st.lists(_WILD, min_size=n * c, max_size=n * c)), dtype=dtype).reshape(n, c)
    labels = np.array(data.draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)))
    Y = np.eye(c, dtype=dtype)[labels]
    Yml = np.array(data.draw(st.lists(st.booleans(), min_size=n * c, max_size=n * c)), dtype=dtype).reshape(n, c)
    w = np.array(data.draw(st.lists(st.sampled_from([0.0, 0.5, 1.0]), min_size=n, max_size=n)), dtype=dtype)
    expected_sm = np.argmax(Z, axis=1) == labels
    expected_ml = ((Z > 0) == (Yml > 0.5)).all(axis=1)
    numba_count = metrics.correct_count.variants["numba"]
    assert int(numba_count(np, Z[None], Y[None], None, "softmax")[0]) == expected_sm.sum()
    assert int(numba_count(np, Z[None], Yml[None], None, "logistic")[0]) == expected_ml.sum()
    generic = metrics.correct_count.generic
    for T, softmax, expected in ((Y, True, expected_sm), (Yml, False, expected_ml)):
        got = metrics.hit_rows(Z, T, w, softmax)
        assert got == (expected & (w > 0)).sum()
        assert got == generic(np, Z[None], T[None], w[None], "softmax" if softmax else "logistic")[0]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_member_l2_sums_an_overflowed_weight_to_inf_in_every_variant(dtype: str) -> None:
    """Σ W² of a member whose first weight overflowed is inf (as NumPy's dot gives it),
    not NaN: a loop that starts its sum from ``W[k, 0] · 0`` would make it NaN."""
    pytest.importorskip("numba")
    W = np.array([[np.inf, 1.0, 2.0], [-np.inf, 0.0, 3.0], [1.0, 2.0, 3.0]], dtype=dtype)
    coef = np.full(3, 0.1, dtype=dtype)
    expected = np.array([np.inf, np.inf, 14.0], dtype=dtype)
    k = all_kernels()["l2_penalty"]
    for variant in ("generic", "numpy"):
        fn = k.generic if variant == "generic" else k.variants[variant]
        with np.errstate(invalid="ignore"):
            _, sq = fn(np, W, np.zeros_like(W), coef)
        np.testing.assert_array_equal(sq, expected, err_msg=variant)
    # and the updates' Σ W² (the penalty with an optimizer), every variant
    vec = np.array([[0.1] * 3, [0.9] * 3, [0.0] * 3, [1.0] * 3], dtype=dtype)  # SGD rows
    for variant in ("numpy", "numba"):
        P = np.concatenate([W, np.ones((3, 2), dtype)], axis=1)
        with np.errstate(invalid="ignore", over="ignore"):
            _, _, sq = all_kernels()["sgd_update"].variants[variant](np, P, np.zeros_like(P), np.zeros_like(P),
                                                                        vec, coef, 3)
        np.testing.assert_array_equal(sq, expected, err_msg=variant)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", ["exp", "tanh", "logistic"])
def test_compiled_exp_and_tanh_are_within_two_ulps_of_the_float64_truth(name: str, dtype: str) -> None:
    """The compiled loops' exp and tanh (mlpx.backends.jit_math, vectorisable
    approximations of their own) against NumPy in float64, rounded to ``dtype``: at
    most 2 ulps apart (the logistic built on exp: 3) on 1.4 million points from 1e-8 to 1e3 in magnitude, the same
    values at the edges (overflow to inf, underflow to 0, saturation at ±1, ±0, NaN)."""
    pytest.importorskip("numba")
    code = activations.ACTIVATIONS[name].code
    rng = np.random.default_rng(7)
    x = np.concatenate([rng.standard_normal(200_000) * s for s in (1e-8, 1e-3, 0.3, 1.0, 3.0, 30.0, 300.0)])
    edges = [0.0, -0.0, 0.625, -0.625, 88.7, 88.8, 89.0, 709.7, 709.8, 710.0, -87.0, -103.0, -104.0, -708.0,
             -745.0, -746.0, 1e4, -1e4, np.inf, -np.inf, np.nan]
    x = np.concatenate([x, edges]).astype(dtype)
    got = np.empty_like(x)
    activations.activation_rows(code, x[None, :], got[None, :])
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        x64 = x.astype(np.float64)
        e = np.exp(-np.abs(x64))
        truth64 = {"exp": np.exp, "tanh": np.tanh,
                   "logistic": lambda v: np.where(v >= 0, 1.0, e) / (1.0 + e)}[name](x64)
        truth = truth64.astype(dtype)
    finite = np.isfinite(truth) & (np.abs(truth) >= np.finfo(dtype).tiny)
    ulps = np.abs(got[finite].astype(np.float64) - truth64[finite]) / np.spacing(np.abs(truth[finite]))
    limit = 3.0 if name == "logistic" else 2.0  # e / (1 + e): exp's error, then two roundings
    assert ulps.max() <= limit, f"{ulps.max()} ulps at x = {x[finite][ulps.argmax()]}"
    rest = ~finite
    np.testing.assert_array_equal(np.isnan(got[rest]), np.isnan(truth[rest]))
    np.testing.assert_allclose(got[rest & ~np.isnan(truth)], truth[rest & ~np.isnan(truth)], rtol=0,
                               atol=4 * np.finfo(dtype).smallest_subnormal)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_inference_gives_numpys_own_bits_for_every_activation(dtype: str) -> None:
    """Predictions keep NumPy's functions (scikit-learn's numbers from the same
    weights); training runs the compiled loops, whose exp and tanh are their own."""
    pytest.importorskip("numba")
    rng = np.random.default_rng(2)
    for act in activations.ACTIVATIONS.values():
        Z, b = _members(rng, dtype)
        out = Z.copy() if act.from_output else np.empty_like(Z)
        want = layers.bias_activation.variants["numpy"](np, Z.copy(), b, act, out.copy())[1]
        got = layers.bias_activation_inference.variants["numba"](np, Z.copy(), b, act, out.copy())[1]
        np.testing.assert_array_equal(got, want, err_msg=act.name)
