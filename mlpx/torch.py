"""Convert networks to PyTorch (``torch.nn.Sequential``) and back.

:func:`to_torch` turns an mlpx :class:`~mlpx.model.Sequential`, an
``mlpx.MLPClassifier`` / ``mlpx.MLPRegressor`` (or scikit-learn's, which have the
same fitted attributes) into a ``torch.nn.Sequential`` that computes the same
function: ``Linear`` layers (``weight = Wᵀ``, since mlpx multiplies ``X W``) and
activation modules, ending with the output activation.

==================  ======================================
mlpx activation     module
==================  ======================================
identity            ``nn.Identity`` (output only; dropped between layers)
relu                ``nn.ReLU``
leaky_relu          ``nn.LeakyReLU(0.01)``
logistic            ``nn.Sigmoid``
tanh                ``nn.Tanh``
gelu                ``nn.GELU(approximate="tanh")`` (mlpx's GELU is the tanh form)
softmax             ``nn.Softmax(dim=1)``
exp                 :class:`Exp` (Poisson output; ``torch.nn`` has no such module)
Dropout(p)          ``nn.Dropout(p)``
==================  ======================================

Memory: by default the parameters are not copied. Each array is handed to
``torch.from_dlpack``, so a GPU model's tensors are its CuPy arrays on the same
CUDA device, and a CPU model's tensors share memory with its NumPy parameter
buffer (an estimator's with its ``coefs_``/``intercepts_`` arrays): an in-place
change on either side is seen by the other. Read-only NumPy arrays and arrays
DLPack cannot export (some Array API namespaces) are copied. ``copy=True`` always
copies; ``device=`` puts the module elsewhere (a copy when it is not the model's
device).

Later training: a Sequential trains its parameter buffer in place, so the module
follows every later ``fit`` (on the CPU and GPU backends). An mlpx estimator
writes the result of every later ``fit`` and ``partial_fit`` into the same
``coefs_``/``intercepts_`` arrays, so the module follows those too; a fit that
changes the layer sizes or dtype cannot, and warns that the module keeps the old
weights. scikit-learn's own estimators update ``coefs_`` in place in
``partial_fit`` and warm-started fits only: a fresh ``fit`` there gives new arrays
and the module keeps the old ones (convert again, or pass ``copy=True`` for a
snapshot that no fit changes).

:func:`layers_from_torch` reads such a module back into mlpx layers and weights
(``mlpx.Sequential.from_torch`` builds the model from them).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from mlpx.activations import LEAKY_SLOPE, get_activation
from mlpx.layers import ActivationLayer, Dense, Dropout, Layer

try:
    import torch
    from torch import nn
except ImportError as exc:  # pragma: no cover - exercised only without torch
    raise ImportError("mlpx.torch needs PyTorch: pip install torch") from exc

__all__ = ["Exp", "layers_from_torch", "to_torch"]


class Exp(nn.Module):
    """Apply ``exp(x)`` elementwise: mlpx's Poisson output activation as a module.

    Parameters
    ----------
    *args, **kwargs
        Passed to ``torch.nn.Module`` (none are needed).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply ``exp`` elementwise.

        Parameters
        ----------
        x : torch.Tensor
            Any shape.

        Returns
        -------
        torch.Tensor
            ``exp(x)``, the same shape.
        """
        return torch.exp(x)


def _activation_module(name: str) -> nn.Module:
    modules: dict[str, Callable[[], nn.Module]] = {
        "identity": nn.Identity,
        "relu": nn.ReLU,
        "leaky_relu": lambda: nn.LeakyReLU(LEAKY_SLOPE),
        "logistic": nn.Sigmoid,
        "tanh": nn.Tanh,
        "gelu": lambda: nn.GELU(approximate="tanh"),
        "softmax": lambda: nn.Softmax(dim=1),
        "exp": Exp,
    }
    return modules[get_activation(name).name]()


def _tensor(arr: Any, to_numpy: Any, device: Any, copy: bool) -> torch.Tensor:
    """A tensor over ``arr``: zero-copy through DLPack when it can, else a host copy.

    A read-only NumPy array is copied: DLPack would hand torch a writable view of it
    (of a read-only memory map, say), which a training step would write through.
    """
    try:
        if isinstance(arr, np.ndarray) and not arr.flags.writeable:
            raise BufferError("read-only array")
        t = torch.utils.dlpack.from_dlpack(arr)
    except (BufferError, TypeError, RuntimeError, AttributeError, ValueError):
        t = torch.from_numpy(np.array(to_numpy(arr), copy=True))
    if copy or (device is not None and t.device != torch.device(device)):
        t = t.to(device if device is not None else t.device, copy=True)
    return t


def _linear(W: torch.Tensor, b: torch.Tensor) -> nn.Linear:
    """``nn.Linear`` whose weight is ``Wᵀ`` (a view: no copy) and bias ``b``."""
    n_in, n_out = W.shape
    lin = nn.Linear(n_in, n_out, device="meta", dtype=W.dtype)  # no throwaway init
    lin.weight = nn.Parameter(W.T)
    lin.bias = nn.Parameter(b)
    return lin


def to_torch(obj: Any, *, device: Any = None, copy: bool = False) -> nn.Sequential:
    """A ``torch.nn.Sequential`` computing the same function as ``obj``.

    Parameters
    ----------
    obj : Sequential, MLPClassifier or MLPRegressor
        An mlpx model or fitted estimator (scikit-learn's fitted ``MLPClassifier`` /
        ``MLPRegressor`` too).
    device : torch.device or str, optional
        Where the module's parameters live. Default: where the model's arrays are
        (``cuda:N`` for a model on ``gpu:N``, else ``cpu``); estimators' ``coefs_``
        are host arrays.
    copy : bool, default False
        False: share memory with the model's parameter arrays where DLPack allows
        (see the module docstring). True: independent copies.

    Returns
    -------
    torch.nn.Sequential
        In eval mode, in the model's dtype (float32 or float64). Its input is
        ``(N, n_features)``. The **last module is always the output activation**
        (``nn.Softmax(dim=1)``, ``nn.Sigmoid``, ``nn.Identity`` or :class:`Exp`), so
        its output is ``predict_proba`` of a Sequential, ``(N, n_outputs)``; for a
        binary classifier estimator that is the positive class's probability
        ``(N, 1)``, i.e. ``predict_proba(X)[:, 1:]``, and for a regressor
        ``predict`` as ``(N, n_outputs)``.

    Raises
    ------
    TypeError
        ``obj`` is not a network this function knows.
    sklearn.exceptions.NotFittedError
        An estimator that is not fitted.
    """
    if hasattr(obj, "get_config") and hasattr(obj, "parameters") and hasattr(obj, "layers"):
        modules = _from_sequential(obj, device, copy)
    elif hasattr(obj, "get_params") and hasattr(obj, "hidden_layer_sizes"):
        if not hasattr(obj, "coefs_"):
            from sklearn.exceptions import NotFittedError

            raise NotFittedError(
                f"This {type(obj).__name__} instance is not fitted yet; call fit before to_torch."
            )
        modules = _from_estimator(obj, device, copy)
        share = getattr(obj, "_share_weights", None)
        if not copy and callable(share):
            share()  # an mlpx estimator warns when a later fit cannot keep sharing
    else:
        raise TypeError(
            f"cannot convert {type(obj).__name__!r} to PyTorch: expected an mlpx Sequential, "
            "or a fitted MLPClassifier / MLPRegressor (mlpx's or scikit-learn's)"
        )
    return nn.Sequential(*modules).eval()


def _from_sequential(model: Any, device: Any, copy: bool) -> list[nn.Module]:
    layers = model.get_config()["layers"]
    # Backend arrays in layer order [W0, b0, W1, b1, ...]: views of the flat buffer.
    arrays = iter(model.parameters().values())
    to_numpy = model.backend.to_numpy
    modules: list[nn.Module] = []
    for k, layer in enumerate(layers):
        kind, last = layer["type"], k == len(layers) - 1
        act = get_activation(layer.get("activation")).name
        if kind == "Dense":
            W = _tensor(next(arrays), to_numpy, device, copy)
            b = _tensor(next(arrays), to_numpy, device, copy)
            modules.append(_linear(W, b))
        elif kind == "Dropout":
            modules.append(nn.Dropout(layer["p"]))
        elif kind != "ActivationLayer":
            raise TypeError(f"cannot convert a layer of type {kind!r} to PyTorch")
        if kind != "Dropout" and (last or act != "identity"):
            modules.append(_activation_module(act))
    return modules


def _from_estimator(est: Any, device: Any, copy: bool) -> list[nn.Module]:
    def host(a: Any) -> np.ndarray:
        return np.asarray(a)

    coefs, intercepts = list(est.coefs_), list(est.intercepts_)
    modules: list[nn.Module] = []
    for i, (W, b) in enumerate(zip(coefs, intercepts)):
        modules.append(_linear(_tensor(W, host, device, copy), _tensor(b, host, device, copy)))
        act = est.activation if i < len(coefs) - 1 else est.out_activation_
        if i == len(coefs) - 1 or get_activation(act).name != "identity":
            modules.append(_activation_module(act))
    return modules


# ------------------------------------------------------------------ from torch
_MODULE_NAMES = "Linear, ReLU, LeakyReLU(0.01), Sigmoid, Tanh, GELU(approximate='tanh'), " \
    "Softmax(dim=1), mlpx.torch.Exp, Identity, Dropout and nested Sequential"


def _activation_name(m: nn.Module) -> str | None:
    """mlpx's name for an activation module; None if ``m`` is not one."""
    if isinstance(m, nn.ReLU):
        return "relu"
    if isinstance(m, nn.LeakyReLU):
        if m.negative_slope != LEAKY_SLOPE:
            raise ValueError(f"mlpx's leaky ReLU has slope {LEAKY_SLOPE}, this module {m.negative_slope}")
        return "leaky_relu"
    if isinstance(m, nn.Sigmoid):
        return "logistic"
    if isinstance(m, nn.Tanh):
        return "tanh"
    if isinstance(m, nn.GELU):
        if m.approximate != "tanh":
            raise ValueError(
                "mlpx's GELU is the tanh approximation; nn.GELU(approximate='none') (the erf "
                "form) differs from it by up to ~5e-4, so it is not converted"
            )
        return "gelu"
    if isinstance(m, nn.Softmax):
        if m.dim not in (1, -1):
            raise ValueError(f"only Softmax over the features (dim=1) converts, not dim={m.dim}")
        return "softmax"
    if isinstance(m, Exp):
        return "exp"
    return None


# The classes whose computation mlpx reproduces. A module is converted as the first of
# these it is an instance of, so it must compute exactly what that class computes.
_SUPPORTED = (nn.Sequential, nn.Linear, nn.Dropout, nn.Identity, nn.ReLU, nn.LeakyReLU, nn.Sigmoid,
              nn.Tanh, nn.GELU, nn.Softmax, Exp)
# What a subclass may not redefine: how a call reaches forward, and forward itself.
_CALL_PATH = ("forward", "__call__", "_call_impl", "__getattr__", "__getattribute__")


def _leaves(module: nn.Module, path: str = "") -> list[tuple[str, nn.Module]]:
    """``(path, module)`` of the modules a Sequential runs, in order, nested ones flattened;
    each checked to compute what its class does (:func:`_check_plain`)."""
    _check_plain(path, module)
    if isinstance(module, nn.Sequential):
        return [leaf for name, child in module.named_children()
                for leaf in _leaves(child, f"{path}.{name}" if path else name)]
    return [(path, module)]


def _where(path: str, m: nn.Module) -> str:
    return f"the module at {path!r} ({type(m).__name__})" if path else f"the root module ({type(m).__name__})"


def _check_plain(path: str, m: nn.Module) -> None:
    """Refuse a module whose output is not what its supported class computes: a subclass
    that redefines ``forward`` (or how a call reaches it), or one with forward hooks."""
    base = next((cls for cls in _SUPPORTED if isinstance(m, cls)), None)
    if base is None:
        return  # not a supported class: refused by name where it is read
    changed = [name for name in _CALL_PATH if getattr(type(m), name, None) is not getattr(base, name, None)]
    if changed:
        plain = "mlpx.torch.Exp" if base is Exp else f"nn.{base.__name__}"
        raise ValueError(
            f"cannot convert {_where(path, m)}: its class redefines {', '.join(changed)} of {plain}, "
            f"so it may not compute what {plain} computes, which is what mlpx would compute; "
            f"convert a module of the plain class"
        )
    hooks = [kind for kind, attr in (("forward hooks", "_forward_hooks"), ("forward pre-hooks", "_forward_pre_hooks"))
             if getattr(m, attr, None)]
    if hooks:
        raise ValueError(
            f"cannot convert {_where(path, m)}: it has {' and '.join(hooks)}, which may change "
            f"what it computes; remove them (handle.remove()) before converting"
        )


def _check_no_global_hooks() -> None:
    """Forward hooks registered for every module (``register_module_forward_hook``)."""
    from torch.nn.modules import module as torch_module

    found = [name for name in ("_global_forward_hooks", "_global_forward_pre_hooks")
             if getattr(torch_module, name, None)]
    if found:
        raise ValueError(
            "cannot convert: global forward hooks are registered for every module "
            "(torch.nn.modules.module.register_module_forward_hook / _pre_hook), which may change "
            "what the modules compute; remove them before converting"
        )


def layers_from_torch(module: nn.Module) -> tuple[list[Layer], list[np.ndarray], str]:
    """Read a ``torch.nn.Sequential`` of the modules :func:`to_torch` makes.

    Each activation that follows a ``Linear`` is fused into its
    :class:`~mlpx.layers.Dense` layer, as mlpx builds networks; other activations
    become :class:`~mlpx.layers.ActivationLayer`. A ``Linear`` without bias gets a
    zero bias.

    Parameters
    ----------
    module : torch.nn.Sequential
        ``Linear`` layers and the activations mlpx has.

    Returns
    -------
    layers : list of Layer
        The mlpx layers, ready for :class:`~mlpx.Sequential`.
    weights : list of ndarray
        Host copies ``[W0 (n_in, n_out), b0 (n_out,), W1, b1, ...]``, the order of
        :meth:`mlpx.Sequential.set_weights`.
    dtype : {"float32", "float64"}
        The parameters' dtype.

    Raises
    ------
    TypeError
        Not an ``nn.Sequential``, or parameters of mixed or non-float dtypes.
    ValueError
        A module mlpx has no equivalent of (the message lists the supported ones);
        a subclass of a supported module that redefines ``forward`` (or
        ``__call__``); a module with forward hooks or forward pre-hooks, or global
        forward hooks. Each message names the module by its path in the tree
        (``"3.1"``: child ``1`` of child ``3``), as ``named_modules`` does.
    """
    if not isinstance(module, nn.Sequential):
        raise TypeError(f"expected a torch.nn.Sequential, got {type(module).__name__}")
    _check_no_global_hooks()
    specs: list[dict[str, Any]] = []
    weights: list[np.ndarray] = []
    dtypes: set[torch.dtype] = set()
    for path, m in _leaves(module):
        if isinstance(m, nn.Linear):
            W = m.weight.detach().cpu().numpy().T.copy()
            b = (m.bias.detach().cpu().numpy().copy() if m.bias is not None
                 else np.zeros(m.out_features, dtype=W.dtype))
            dtypes.add(m.weight.dtype)
            specs.append({"type": "Dense", "n_in": m.in_features, "n_out": m.out_features,
                          "activation": "identity"})
            weights += [W, b]
        elif isinstance(m, nn.Dropout):
            specs.append({"type": "Dropout", "p": float(m.p)})
        elif isinstance(m, nn.Identity):
            continue
        else:
            name = _activation_name(m)
            if name is None:
                raise ValueError(f"cannot convert {_where(path, m)}, {m!r}, to mlpx; supported: {_MODULE_NAMES}")
            if specs and specs[-1]["type"] == "Dense" and specs[-1]["activation"] == "identity":
                specs[-1]["activation"] = name
            else:
                specs.append({"type": "ActivationLayer", "activation": name})
    if not weights:
        raise ValueError("the module has no Linear layer")
    if len(dtypes) != 1 or next(iter(dtypes)) not in (torch.float32, torch.float64):
        raise TypeError(f"Linear parameters must all be float32 or all float64, got {sorted(map(str, dtypes))}")
    layers: list[Layer] = []
    for s in specs:
        if s["type"] == "Dense":
            layers.append(Dense(s["n_in"], s["n_out"], activation=s["activation"]))
        elif s["type"] == "Dropout":
            layers.append(Dropout(s["p"]))
        else:
            layers.append(ActivationLayer(s["activation"]))
    return layers, weights, str(next(iter(dtypes))).removeprefix("torch.")
