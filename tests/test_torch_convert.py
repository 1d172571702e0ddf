"""PyTorch conversion (mlpx.torch): the ``torch.nn.Sequential`` computes what mlpx's
predict_proba computes (float32: 1e-6 relative and absolute, float64: 1e-12; for
the exp output, its logarithm, the logits), holds the same weights,
and shares memory with the model unless asked to copy; ``Sequential.from_torch``
reads such modules back.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch", reason="needs PyTorch: pip install torch==2.13.0")
from torch import nn  # noqa: E402

import mlpx  # noqa: E402
from mlpx.backends import cuda_available  # noqa: E402
from mlpx.torch import Exp, layers_from_torch, to_torch  # noqa: E402

ACTIVATIONS = ["identity", "relu", "leaky_relu", "logistic", "tanh", "gelu"]
OUTPUTS = ["softmax", "logistic", "identity", "exp"]
TOL = {"float32": {"rtol": 1e-6, "atol": 1e-6}, "float64": {"rtol": 1e-12, "atol": 1e-14}}
OUTPUT_MODULE = {"softmax": nn.Softmax, "logistic": nn.Sigmoid, "identity": nn.Identity, "exp": Exp}
HIDDEN_MODULE = {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "logistic": nn.Sigmoid, "tanh": nn.Tanh,
                 "gelu": nn.GELU}


def data(n: int, d: int, dtype: str, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)).astype(dtype)


def forward(module: nn.Module, X: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(X)).numpy()


def address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_outputs_and_structure(activation: str, output: str, dtype: str) -> None:
    model = mlpx.MLP([6, 9, 7, 3], activation=activation, output=output, dtype=dtype, seed=4)
    module = model.to_torch()
    X = data(200, 6, dtype)
    got, expected = forward(module, X), model.predict_proba(X)
    assert got.dtype == np.dtype(dtype)
    if output == "exp":
        # exp turns the logits' rounding (a few ulp of |z| ~ 5: ~1e-6) into a relative
        # error of the same size; compare the logits.
        got, expected = np.log(got), np.log(expected)
    np.testing.assert_allclose(got, expected, **TOL[dtype])

    assert not module.training
    linears = [m for m in module if isinstance(m, nn.Linear)]
    weights = model.get_weights()
    for lin, W, b in zip(linears, weights[::2], weights[1::2]):
        assert lin.weight.dtype == getattr(torch, dtype)
        np.testing.assert_array_equal(lin.weight.detach().numpy(), W.T)
        np.testing.assert_array_equal(lin.bias.detach().numpy(), b)
    hidden = [m for m in module[:-1] if not isinstance(m, nn.Linear)]
    if activation == "identity":
        assert hidden == []
    else:
        assert [type(m) for m in hidden] == [HIDDEN_MODULE[activation]] * 2
    assert type(module[-1]) is OUTPUT_MODULE[output]
    if activation == "gelu":
        assert hidden[0].approximate == "tanh"
    if activation == "leaky_relu":
        assert hidden[0].negative_slope == 0.01
    if output == "softmax":
        assert module[-1].dim == 1


def test_layers_dropout_and_standalone_activations() -> None:
    layers = [mlpx.Dense(5, 8), mlpx.Tanh(), mlpx.Dropout(0.25), mlpx.Dense(8, 6, activation="gelu"),
              mlpx.LeakyReLU(), mlpx.Dense(6, 2), mlpx.Sigmoid()]
    model = mlpx.Sequential(layers, seed=0)
    module = to_torch(model)
    assert [type(m) for m in module] == [nn.Linear, nn.Tanh, nn.Dropout, nn.Linear, nn.GELU,
                                         nn.LeakyReLU, nn.Linear, nn.Sigmoid]
    assert module[2].p == 0.25
    X = data(100, 5, "float32")
    np.testing.assert_allclose(forward(module, X), model.predict_proba(X), **TOL["float32"])
    module.train()  # dropout now draws masks: the outputs change
    assert not np.allclose(forward(module, X), model.predict_proba(X))


def test_cpu_model_shares_memory_both_ways() -> None:
    model = mlpx.MLP([4, 5, 3], output="softmax", seed=0)
    module = model.to_torch()
    W0 = model.parameters()["0.W"]
    assert module[0].weight.data_ptr() == address(W0)  # weight is W0ᵀ, a view
    assert module[0].bias.data_ptr() == address(model.parameters()["0.b"])
    X = data(30, 4, "float32")
    # mlpx writes, torch sees.
    model.set_weights([w * 0.5 for w in model.get_weights()])
    np.testing.assert_allclose(forward(module, X), model.predict_proba(X), **TOL["float32"])
    # torch trains a step, mlpx predicts with the new weights.
    opt = torch.optim.SGD(module.parameters(), lr=0.5)
    loss = nn.functional.nll_loss(torch.log(module(torch.from_numpy(X))), torch.zeros(30, dtype=torch.long))
    loss.backward()
    before = model.get_flat_params()
    opt.step()
    assert not np.array_equal(model.get_flat_params(), before)
    np.testing.assert_allclose(forward(module, X), model.predict_proba(X), **TOL["float32"])


def test_copy_true_is_independent() -> None:
    model = mlpx.MLP([4, 5, 3], seed=0, dtype="float64")
    module = model.to_torch(copy=True)
    assert module[0].weight.data_ptr() != address(model.parameters()["0.W"])
    X = data(30, 4, "float64")
    expected = model.predict_proba(X)
    model.set_weights([w * 0.0 for w in model.get_weights()])
    np.testing.assert_allclose(forward(module, X), expected, **TOL["float64"])


def test_array_api_strict_model() -> None:
    model = mlpx.MLP([4, 6, 2], activation="gelu", output="logistic", backend="array_api_strict",
                     dtype="float64", seed=1)
    module = model.to_torch()
    X = data(40, 4, "float64")
    np.testing.assert_allclose(forward(module, X), model.predict_proba(X), **TOL["float64"])


@pytest.mark.parametrize("kind", ["binary", "multiclass", "multilabel", "regressor", "poisson"])
@pytest.mark.parametrize("library", ["mlpx", "sklearn"])
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_estimators(kind: str, library: str) -> None:
    import sklearn.neural_network as sk

    lib = mlpx if library == "mlpx" else sk
    rng = np.random.default_rng(5)
    X = data(120, 4, "float64")
    if kind in ("regressor", "poisson"):
        loss = "poisson" if kind == "poisson" else "squared_error"
        y = rng.poisson(2.0, 120).astype(float) if kind == "poisson" else rng.normal(size=120)
        est = lib.MLPRegressor(loss=loss, hidden_layer_sizes=(6, 5), max_iter=20, random_state=0).fit(X, y)
        expected = est.predict(X)[:, None]
    else:
        y = {"binary": rng.integers(0, 2, 120), "multiclass": rng.integers(0, 3, 120),
             "multilabel": rng.integers(0, 2, (120, 3))}[kind]
        est = lib.MLPClassifier(hidden_layer_sizes=(6, 5), activation="logistic", max_iter=20,
                                random_state=0).fit(X, y)
        expected = est.predict_proba(X)[:, 1:] if kind == "binary" else est.predict_proba(X)
    module = to_torch(est) if library == "sklearn" else est.to_torch()
    np.testing.assert_allclose(forward(module, X), expected, **TOL["float64"])
    # Zero-copy on the host coefs_ arrays unless copy=True.
    assert module[0].weight.data_ptr() == address(est.coefs_[0])
    assert to_torch(est, copy=True)[0].weight.data_ptr() != address(est.coefs_[0])


@pytest.mark.parametrize("kind", ["classifier", "regressor"])
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_an_estimators_module_follows_its_later_fits(kind: str) -> None:
    """The module shares coefs_/intercepts_; every later partial_fit, warm-started fit
    and fresh fit writes into those arrays, so the module computes what the estimator
    predicts now (it used to keep the first fit's weights without a word)."""
    rng = np.random.default_rng(1)
    X = data(90, 4, "float64")
    if kind == "classifier":
        est = mlpx.MLPClassifier(hidden_layer_sizes=(5,), max_iter=5, random_state=0)
        y = rng.integers(0, 3, 90)
        expected = est.predict_proba
    else:
        est = mlpx.MLPRegressor(hidden_layer_sizes=(5,), max_iter=5, random_state=0)
        y = rng.normal(size=90)
        expected = lambda Z: est.predict(Z)[:, None]  # noqa: E731
    est.fit(X, y)
    module = est.to_torch()
    snapshot = est.to_torch(copy=True)
    first = forward(snapshot, X)
    steps = [
        lambda: est.partial_fit(X, y),
        lambda: est.set_params(warm_start=True).fit(X, y),
        lambda: est.set_params(warm_start=False, random_state=3).fit(X, y),
        lambda: est.set_params(alpha=0.1).fit(X[:40], y[:40]),
    ]
    previous = first
    for step in steps:
        step()
        now = forward(module, X)
        np.testing.assert_allclose(now, expected(X), **TOL["float64"])
        assert not np.allclose(now, previous)  # the step did change the function
        previous = now
    np.testing.assert_array_equal(forward(snapshot, X), first)  # copy=True: a snapshot
    # a change on the torch side reaches the estimator's predictions
    with torch.no_grad():
        module[0].bias.zero_()
    np.testing.assert_array_equal(est.intercepts_[0], 0.0)
    np.testing.assert_allclose(forward(module, X), expected(X), **TOL["float64"])


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_a_fit_that_cannot_write_into_a_shared_module_warns() -> None:
    """New layer sizes (or dtype) need new arrays: the module keeps the old weights, and
    the fit says so rather than leave it stale in silence."""
    X = data(60, 4, "float64")
    y = np.arange(60) % 2
    est = mlpx.MLPClassifier(hidden_layer_sizes=(5,), max_iter=3, random_state=0).fit(X, y)

    def run(module: nn.Module) -> np.ndarray:
        return forward(module, X.astype(str(module[0].weight.dtype).removeprefix("torch.")))

    module = est.to_torch()
    old = run(module)
    for change in ({"hidden_layer_sizes": (6,)}, {"dtype": "float32"}):
        with pytest.warns(UserWarning, match="module keeps the previous weights"):
            est.set_params(**change).fit(X, y)
        np.testing.assert_array_equal(run(module), old)
        module = est.to_torch()
        old = run(module)
    with pytest.warns(UserWarning, match="module keeps the previous weights"):
        est.set_params(hidden_layer_sizes=(7,)).fit(X, y)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*module keeps the previous weights")
        est.to_torch(copy=True)
        est.set_params(hidden_layer_sizes=(8,)).fit(X, y)  # only a copy was made since: no warning


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_read_only_arrays_are_copied() -> None:
    X = data(50, 3, "float64")
    est = mlpx.MLPRegressor(hidden_layer_sizes=(4,), max_iter=5, random_state=0).fit(X, X[:, 0])
    for a in est.coefs_ + est.intercepts_:
        a.setflags(write=False)
    module = est.to_torch()
    assert module[0].weight.data_ptr() != address(est.coefs_[0])
    np.testing.assert_allclose(forward(module, X)[:, 0], est.predict(X), **TOL["float64"])


def test_errors() -> None:
    from sklearn.exceptions import NotFittedError

    with pytest.raises(TypeError, match="cannot convert 'list' to PyTorch"):
        to_torch([1, 2])
    with pytest.raises(NotFittedError):
        mlpx.MLPClassifier().to_torch()


# ------------------------------------------------------------- from torch
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_round_trip(activation: str, output: str, dtype: str) -> None:
    model = mlpx.MLP([5, 7, 3], activation=activation, output=output, dtype=dtype, seed=6)
    back = mlpx.Sequential.from_torch(model.to_torch())
    assert back.get_config()["layers"] == model.get_config()["layers"]
    for a, b in zip(back.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    X = data(50, 5, dtype)
    np.testing.assert_array_equal(back.predict_proba(X), model.predict_proba(X))


def test_from_hand_built_torch_module() -> None:
    torch.manual_seed(0)
    module = nn.Sequential(
        nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.1),
        nn.Sequential(nn.Linear(8, 8, bias=False), nn.Tanh(), nn.Identity()),
        nn.LeakyReLU(0.01), nn.Linear(8, 3), nn.Softmax(dim=-1),
    ).double().eval()
    model = mlpx.Sequential.from_torch(module, seed=0)
    assert model.dtype == "float64" and model.output.name == "softmax"
    kinds = [c["type"] + ":" + c.get("activation", "") for c in model.get_config()["layers"]]
    assert kinds == ["Dense:relu", "Dropout:", "Dense:tanh", "ActivationLayer:leaky_relu", "Dense:softmax"]
    X = data(60, 4, "float64")
    np.testing.assert_allclose(model.predict_proba(X), forward(module, X), **TOL["float64"])
    layers, weights, dtype = layers_from_torch(module)
    np.testing.assert_array_equal(weights[3], np.zeros(8))  # bias=False: a zero bias


@pytest.mark.parametrize("module,error,match", [
    (lambda: nn.Sequential(nn.Linear(3, 2), nn.GELU()), ValueError, "tanh approximation"),
    (lambda: nn.Sequential(nn.Linear(3, 2), nn.LeakyReLU(0.2)), ValueError, "slope 0.01"),
    (lambda: nn.Sequential(nn.Linear(3, 2), nn.Softmax(dim=0)), ValueError, "dim=1"),
    (lambda: nn.Sequential(nn.Linear(3, 2), nn.ELU()), ValueError, "supported: Linear"),
    (lambda: nn.Sequential(nn.ReLU()), ValueError, "no Linear layer"),
    (lambda: nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2).double()), TypeError, "must all be float32 or all float64"),
    (lambda: nn.Sequential(nn.Linear(3, 2).half()), TypeError, "must all be float32 or all float64"),
    (lambda: nn.Linear(3, 2), TypeError, "expected a torch.nn.Sequential"),
])
def test_from_torch_refuses_what_mlpx_cannot_compute(module: Any, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        mlpx.Sequential.from_torch(module())


# ------------------------------------- modules that do not compute what their class does
class TripledLinear(nn.Linear):
    def forward(self, x):
        return 3 * super().forward(x)


class NamedLinear(nn.Linear):
    """A subclass that adds a method but computes what nn.Linear computes."""

    def describe(self) -> str:
        return f"{self.in_features}->{self.out_features}"


class LoudSequential(nn.Sequential):
    def forward(self, x):
        return super().forward(x) + 1


class CalledReLU(nn.ReLU):
    def __call__(self, *args, **kwargs):
        return super().__call__(*args, **kwargs) * 2


def _with_forward_hook(m: nn.Module) -> nn.Module:
    m.register_forward_hook(lambda mod, args, out: out * 2)
    return m


def _with_pre_hook(m: nn.Module) -> nn.Module:
    m.register_forward_pre_hook(lambda mod, args: (args[0] + 1,))
    return m


@pytest.mark.parametrize("build, path, match", [
    (lambda: nn.Sequential(TripledLinear(4, 3), nn.Softmax(dim=1)), "'0' (TripledLinear)", "redefines forward of nn.Linear"),
    (lambda: nn.Sequential(nn.Linear(4, 5), nn.Sequential(nn.ReLU(), TripledLinear(5, 3))),
     "'1.1' (TripledLinear)", "redefines forward"),
    (lambda: nn.Sequential(nn.Linear(4, 3), CalledReLU()), "'1' (CalledReLU)", "redefines __call__ of nn.ReLU"),
    (lambda: nn.Sequential(nn.Linear(4, 3), LoudSequential(nn.Tanh())), "'1' (LoudSequential)", "redefines forward of nn.Sequential"),
    (lambda: LoudSequential(nn.Linear(4, 3)), "root module (LoudSequential)", "redefines forward"),
    (lambda: nn.Sequential(_with_forward_hook(nn.Linear(4, 3))), "'0' (Linear)", "forward hooks"),
    (lambda: nn.Sequential(nn.Linear(4, 3), _with_pre_hook(nn.Sigmoid())), "'1' (Sigmoid)", "forward pre-hooks"),
    (lambda: _with_forward_hook(nn.Sequential(nn.Linear(4, 3))), "root module (Sequential)", "forward hooks"),
    (lambda: nn.Sequential(nn.Linear(4, 3), nn.ELU()), "'1' (ELU)", "supported: Linear"),
])
def test_from_torch_refuses_modules_that_compute_something_else(build, path: str, match: str) -> None:
    """A Linear subclass that multiplies by 3 used to convert as a plain Linear."""
    with pytest.raises(ValueError, match=match) as err:
        mlpx.Sequential.from_torch(build())
    assert path in str(err.value)


def test_from_torch_refuses_global_forward_hooks() -> None:
    from torch.nn.modules.module import register_module_forward_hook

    handle = register_module_forward_hook(lambda mod, args, out: out)
    try:
        with pytest.raises(ValueError, match="global forward hooks"):
            mlpx.Sequential.from_torch(nn.Sequential(nn.Linear(2, 2)))
    finally:
        handle.remove()
    mlpx.Sequential.from_torch(nn.Sequential(nn.Linear(2, 2)))  # converts once it is gone


def test_from_torch_accepts_what_computes_as_its_class() -> None:
    """Subclasses that leave forward alone, a removed hook, and parametrized weights
    (torch.nn.utils.parametrize: the class changes, forward does not)."""
    from torch.nn.utils import parametrize

    class Doubled(nn.Module):
        def forward(self, W):
            return 2 * W

    torch.manual_seed(0)
    lin = nn.Linear(5, 3)
    parametrize.register_parametrization(lin, "weight", Doubled())
    hooked = nn.Tanh()
    hooked.register_forward_hook(lambda mod, args, out: out * 5).remove()
    module = nn.Sequential(NamedLinear(4, 5), hooked, nn.Sequential(lin, nn.Softmax(dim=1))).double().eval()
    model = mlpx.Sequential.from_torch(module)
    X = data(30, 4, "float64")
    np.testing.assert_allclose(model.predict_proba(X), forward(module, X), **TOL["float64"])


# Modules from_torch reads, built fresh each time (hidden activations; exp only at the end).
_ACTS = {
    "relu": nn.ReLU, "leaky_relu": lambda: nn.LeakyReLU(0.01), "sigmoid": nn.Sigmoid, "tanh": nn.Tanh,
    "gelu": lambda: nn.GELU(approximate="tanh"), "softmax": lambda: nn.Softmax(dim=1),
    "identity": nn.Identity, "dropout": lambda: nn.Dropout(0.25),
}
_OUTPUTS = {"softmax": lambda: nn.Softmax(dim=-1), "sigmoid": nn.Sigmoid, "exp": Exp, "none": None}
_TREES = st.recursive(
    st.sampled_from(["linear", "linear", "linear"] + list(_ACTS)),
    lambda children: st.lists(children, min_size=1, max_size=3),
    max_leaves=8,
)
_HOW = ["plain"] * 6 + ["subclass", "override", "hook", "prehook"]


def _variant(cls: type, how: str) -> type:
    if how == "subclass":
        return type(f"Plain{cls.__name__}", (cls,), {"note": "computes as its class"})
    if how == "override":
        return type(f"Scaled{cls.__name__}", (cls,), {"forward": lambda self, x: 1.5 * cls.forward(self, x)})
    return cls


def _build(tree: Any, draw: Any, width: list, refused: dict) -> nn.Module:
    """The tree as torch modules; records each module that does not compute as its class."""
    how = draw(st.sampled_from(_HOW))
    if isinstance(tree, list):
        children = [_build(t, draw, width, refused) for t in tree]
        m = _variant(nn.Sequential, how)(*children)
    elif tree == "linear":
        n_out = draw(st.integers(1, 5))
        m = _variant(nn.Linear, how)(width[0], n_out, bias=draw(st.booleans()))
        width[0] = n_out
    else:
        made = _ACTS[tree]()
        m = _variant(type(made), how)(**({"dim": 1} if tree == "softmax" else {}))
        if isinstance(made, (nn.LeakyReLU, nn.GELU, nn.Dropout)):
            m.__dict__.update({k: v for k, v in made.__dict__.items() if not k.startswith("_")})
    if how == "hook":
        _with_forward_hook(m)
    elif how == "prehook":
        _with_pre_hook(m)
    if how in ("override", "hook", "prehook"):
        refused[id(m)] = how
    return m


@settings(max_examples=150, deadline=None)
@given(tree=_TREES, output=st.sampled_from(list(_OUTPUTS)), n_in=st.integers(1, 4), seed=st.integers(0, 2**16),
       data_=st.data())
def test_from_torch_on_generated_module_trees(tree, output: str, n_in: int, seed: int, data_) -> None:
    """Any tree of supported modules, nested Sequentials, subclasses with and without their
    own forward and hooks: converted, it computes torch's own output (float64, to
    rounding); refused, the message names the first module (in torch's named_modules
    order) whose output is not its class's."""
    torch.manual_seed(seed)
    tree = tree if isinstance(tree, list) else [tree]
    refused: dict = {}
    width = [n_in]
    root = _build(tree, data_.draw, width, refused)
    if not isinstance(root, nn.Sequential):
        root = nn.Sequential(root)
    if _OUTPUTS[output] is not None:
        root.append(_OUTPUTS[output]())
    root = root.double().eval()
    first = next(((name, m) for name, m in root.named_modules() if id(m) in refused), None)
    event("refused" if first is not None else "converted")
    if first is not None:
        name, m = first
        where = f"module at {name!r} ({type(m).__name__})" if name else f"root module ({type(m).__name__})"
        with pytest.raises(ValueError, match=re.escape(where)):
            mlpx.Sequential.from_torch(root)
        return
    if not any(isinstance(m, nn.Linear) for m in root.modules()):
        with pytest.raises(ValueError, match="no Linear layer"):
            mlpx.Sequential.from_torch(root)
        return
    model = mlpx.Sequential.from_torch(root)
    X = np.random.default_rng(seed).normal(size=(16, n_in))
    np.testing.assert_allclose(model.predict_proba(X), forward(root, X), rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------- GPU
@pytest.mark.gpu
def test_gpu_model_is_zero_copy_through_dlpack() -> None:
    if not torch.cuda.is_available():
        pytest.skip("this PyTorch build has no CUDA")
    assert cuda_available()
    model = mlpx.MLP([8, 16, 4], activation="gelu", seed=0, backend="gpu")
    module = model.to_torch()
    W0 = model.parameters()["0.W"]
    assert module[0].weight.device == torch.device("cuda", W0.device.id)
    assert module[0].weight.data_ptr() == W0.data.ptr
    X = data(64, 8, "float32")
    with torch.no_grad():
        got = module(torch.from_numpy(X).cuda()).cpu().numpy()
    np.testing.assert_allclose(got, model.predict_proba(X), rtol=1e-5, atol=1e-6)
    on_cpu = model.to_torch(device="cpu")  # another device: a copy
    assert on_cpu[0].weight.device.type == "cpu"
    np.testing.assert_allclose(forward(on_cpu, X), model.predict_proba(X), rtol=1e-5, atol=1e-6)
