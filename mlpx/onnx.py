"""Export trained networks to ONNX, for serving with ONNX Runtime or any ONNX runtime.

:func:`to_onnx` takes an mlpx :class:`~mlpx.model.Sequential`, an
``mlpx.MLPClassifier`` / ``mlpx.MLPRegressor`` (or scikit-learn's own
``MLPClassifier`` / ``MLPRegressor``, which have the same fitted attributes) and
builds the graph with the ``onnx`` package's helpers (``onnx.helper``), at a
standard opset that ONNX Runtime runs. The graph is checked with
``onnx.checker.check_model(full_check=True)`` before it is returned.

Graph interface
---------------
Input ``X``: ``tensor(float)`` (float32 models) or ``tensor(double)`` (float64),
shape ``(N, n_features)``. Weights are stored in the model's dtype and every node
computes in it; ``dtype=`` exports in the other one (skl2onnx decides the same
thing from the input type it is given: a float64 estimator converted with a
float32 sample computes in float32).

Classifiers (``MLPClassifier``) have the outputs skl2onnx gives scikit-learn's
``MLPClassifier``, so serving code can switch between the two:

=================  ===========================================  =========================================
``zipmap=``        label output                                 probability output(s)
=================  ===========================================  =========================================
True (default)     ``output_label``: int64 or string ``(N,)``   ``output_probability``: a sequence of
                                                                maps ``{class: float}``, one per row
False              ``label``: int64 or string ``(N,)``          ``probabilities``: ``(N, n_classes)``
"columns"          ``output_label``                             one ``(N,)`` output per class, named
                                                                ``i<label>`` (integer labels) or
                                                                ``s<label>`` (strings)
=================  ===========================================  =========================================

Integer (and boolean, or integral float) class labels come out as int64, string
labels as strings; ``predict_proba``'s columns are ``classes_`` in order (two
columns for a binary classifier). Multilabel classifiers give an int64 ``(N,
n_labels)`` indicator matrix as the label. The ZipMap operator only takes
float32, so a float64 classifier's probabilities are rounded to float32 inside
the maps (skl2onnx emits a graph ONNX Runtime refuses in that case); with
``zipmap=False`` or ``"columns"`` they stay float64.

Regressors give ``variable``: ``(N, n_outputs)`` in the model dtype (skl2onnx
gives ``(N, 1)`` and, for several outputs, a wrongly reshaped ``(N·n_outputs,
1)``; it cannot convert the Poisson (``exp``) output at all).

A ``Sequential`` ending in softmax or logistic gives ``label`` (int64: the class
index ``(N,)``, or the 0/1 indicator ``(N, k)`` for a logistic output with k > 1
units, exactly :meth:`~mlpx.model.Sequential.predict`) and ``probabilities``
(``(N, n_outputs)``, exactly ``predict_proba``); any other output gives
``variable`` ``(N, n_outputs)``. Dropout layers are left out (inference is the
identity). GELU is written out as mlpx computes it, with the tanh approximation
``z/2 · (1 + tanh(√(2/π)(z + 0.044715 z³)))``, from primitive operators, so the
graph runs at every supported opset and matches mlpx to rounding.

Labels of a logistic output are exactly ``predict``'s, at the decision boundary
too. ``predict`` says 1 where the probability it computes exceeds 0.5; in float32
that happens from a logit of about 1.2e-7 on (below it the probability rounds to
0.5), not from 0. ONNX Runtime's ``Sigmoid`` and ``Exp`` round differently from
NumPy in the last bit (a third of the float32 logits near 0), so comparing its
probability with 0.5 would still disagree there. The graph instead compares the
logit with the smallest logit whose probability, as mlpx computes it on the CPU in
the graph's dtype, exceeds 0.5 (found when exporting; the probability is monotone
in the logit). The probabilities themselves are ONNX Runtime's, equal to
``predict_proba`` to rounding.

A :class:`~mlpx.stacked.Stack` is exported member by member (``member=k``: the
graph of ``stack.member(k)``) or as its averaged ensemble (``member=None``): every
live member's subgraph, their outputs averaged (``Sum``, then ``Div``), and the labels taken
from the average, exactly as :meth:`Stack.predict <mlpx.stacked.Stack.predict>`
(the arg-max of the mean probabilities; mean probability > 0.5 for a logistic
output) and :meth:`Stack.predict_proba <mlpx.stacked.Stack.predict_proba>`.
Members that diverged are left out, as ``predict`` leaves them out.

A model trained with ``precision="bf16"``/``"fp16"``/``"tf32"`` is exported with
its float32 master weights, computing in float32: its ONNX outputs are more
precise than its own ``predict``, not bit-identical to it.
"""

from __future__ import annotations

import functools
import numbers
import os
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from mlpx.activations import GELU_A, GELU_C, LEAKY_SLOPE, get_activation
from mlpx.atomic_write import write_atomically

try:
    import onnx
    from onnx import TensorProto, helper, numpy_helper
except ImportError as exc:  # pragma: no cover - exercised only without onnx
    raise ImportError(
        "mlpx.onnx needs the onnx package (and onnxruntime to run the result): "
        "pip install 'mlpx[onnx]'"
    ) from exc

__all__ = ["DEFAULT_OPSET", "MIN_OPSET", "logistic_threshold", "to_onnx"]

DEFAULT_OPSET = 21
"""Default ``ai.onnx`` opset: what current skl2onnx targets; ONNX Runtime ≥ 1.18 runs it."""
MIN_OPSET = 13
"""Oldest opset accepted (Softmax over one axis and the Gather/Reshape forms used here)."""
_ML_DOMAIN = "ai.onnx.ml"
_PROTO = {"float32": TensorProto.FLOAT, "float64": TensorProto.DOUBLE}
_CLASSIFIER_OUTPUTS = ("softmax", "logistic")


@dataclass
class _Net:
    """What the graph is built from: Dense and activation steps, in order.

    ``steps`` holds ``("dense", W (n_in, n_out), b (n_out,))`` and
    ``("act", name)``; the output activation is kept apart in ``output``.
    """

    dtype: str
    n_features: int
    steps: list[tuple[Any, ...]]
    output: str
    description: str
    classes: np.ndarray | None = None  # estimator classifiers only
    estimator: bool = False
    n_outputs: int = field(init=False)

    def __post_init__(self) -> None:
        dense = [s for s in self.steps if s[0] == "dense"]
        self.n_outputs = int(dense[-1][1].shape[1])


def to_onnx(
    obj: Any,
    path: str | os.PathLike[str] | None = None,
    *,
    zipmap: bool | str | None = None,
    dtype: str | None = None,
    target_opset: int = DEFAULT_OPSET,
    member: int | None = None,
) -> "onnx.ModelProto":
    """Export a trained network as an ONNX model.

    Parameters
    ----------
    obj : Sequential, Stack, MLPClassifier or MLPRegressor
        An mlpx model or fitted estimator; scikit-learn's fitted ``MLPClassifier``
        and ``MLPRegressor`` are accepted too.
    path : str or path-like, optional
        Also write the model there, as ``save`` writes model files
        (:func:`mlpx.atomic_write.write_atomically`): atomically, an existing file
        keeps its permission bits, a symbolic link keeps pointing at the file written.
    zipmap : {True, False, "columns"}, optional
        Classifier estimators only: how probabilities are returned (see the module
        docstring). Default True for classifier estimators, as skl2onnx. A
        ``Sequential`` always returns tensors: only None/False are accepted.
    dtype : {None, "float32", "float64"}
        Input and computation dtype of the graph; None: the model's own dtype.
        Weights are rounded to it.
    target_opset : int, default DEFAULT_OPSET
        The ``ai.onnx`` opset, from :data:`MIN_OPSET` to the installed onnx's latest.
    member : int, optional
        A :class:`~mlpx.stacked.Stack` only: export this member alone; None (the
        default) exports the averaged ensemble of the live members.

    Returns
    -------
    onnx.ModelProto
        Input ``X`` of shape (N, n_features) in the graph's dtype (``dtype``, by
        default the model's); outputs as in the module docstring.

    Raises
    ------
    TypeError
        ``obj`` is not a network this function knows.
    ValueError
        A bad option, class labels ONNX cannot hold (non-integral floats, mixed
        types) or a classifier with a single class.
    sklearn.exceptions.NotFittedError
        An estimator that is not fitted (a ValueError too).
        A stack's ensemble whose members all diverged is a ValueError too
        (:meth:`Stack.to_onnx <mlpx.stacked.Stack.to_onnx>` raises
        :class:`~mlpx.training.TrainingDivergedError`, as its ``predict`` does).
    """
    stack = hasattr(obj, "n_members") and hasattr(obj, "member")
    if member is not None and not stack:
        raise TypeError(f"member= selects a member of a Stack; {type(obj).__name__} has none")
    if stack and member is not None:
        obj = obj.member(member)
    nets = _members(obj) if stack and member is None else [_network(obj)]
    for net in nets:
        if dtype is not None and _float_dtype(dtype) != net.dtype:
            net.dtype = _float_dtype(dtype)
            net.description += f", exported in {net.dtype}"
    opset = _check_opset(target_opset)
    zipmap = _check_zipmap(zipmap, nets[0])
    model = _build(nets[0], zipmap, opset) if len(nets) == 1 and not stack else _build_ensemble(nets, opset)
    onnx.checker.check_model(model, full_check=True)
    if path is not None:
        data = model.SerializeToString()
        write_atomically(path, lambda fh: fh.write(data))
    return model


# ------------------------------------------------------------------ reading
def _network(obj: Any) -> _Net:
    if hasattr(obj, "get_config") and hasattr(obj, "get_weights") and hasattr(obj, "layers"):
        return _from_sequential(obj)
    if hasattr(obj, "get_params") and hasattr(obj, "hidden_layer_sizes"):
        if not hasattr(obj, "coefs_"):
            from sklearn.exceptions import NotFittedError

            raise NotFittedError(
                f"This {type(obj).__name__} instance is not fitted yet; call fit before to_onnx."
            )
        return _from_estimator(obj)
    raise TypeError(
        f"cannot export {type(obj).__name__!r} to ONNX: expected an mlpx Sequential, or a "
        "fitted MLPClassifier / MLPRegressor (mlpx's or scikit-learn's)"
    )


def _members(stack: Any) -> list[_Net]:
    """The live members of a stack (those that did not diverge), as networks."""
    live = [k for k in range(stack.n_members) if not stack.diverged_[k]]
    if not live:
        raise ValueError("every member of the stack diverged: there is no ensemble to export "
                         "(export a member with member=k)")
    nets = [_from_sequential(stack.member(k)) for k in live]
    nets[0].description = (f"mlpx Stack: mean of {len(live)} of {stack.n_members} members "
                           f"({nets[0].description.removeprefix('mlpx Sequential ')})")
    return nets


def _float_dtype(dtype: Any) -> str:
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = repr(dtype)
    if name not in _PROTO:
        raise ValueError(f"ONNX export computes in float32 or float64, not {name}")
    return str(name)


def _from_sequential(model: Any) -> _Net:
    config = model.get_config()
    dtype = _float_dtype(config["dtype"])
    weights = iter(model.get_weights())
    layers = config["layers"]
    steps: list[tuple[Any, ...]] = []
    for k, layer in enumerate(layers):
        kind, last = layer["type"], k == len(layers) - 1
        act = get_activation(layer.get("activation")).name
        if kind == "Dense":
            steps.append(("dense", next(weights), next(weights)))
            if not last and act != "identity":
                steps.append(("act", act))
        elif kind == "ActivationLayer":
            if not last and act != "identity":
                steps.append(("act", act))
        elif kind != "Dropout":  # dropout: the identity at inference
            raise TypeError(f"cannot export a layer of type {kind!r} to ONNX")
    # get_config always ends the stack with the output activation (fused or standalone).
    output = get_activation(layers[-1].get("activation")).name
    n_features = int(model.n_features_in_)
    sizes = [n_features] + [int(s[1].shape[1]) for s in steps if s[0] == "dense"]
    desc = f"mlpx Sequential {'-'.join(map(str, sizes))}, {output} output, {dtype}"
    return _Net(dtype, n_features, steps, output, desc)


def _from_estimator(est: Any) -> _Net:
    coefs, intercepts = list(est.coefs_), list(est.intercepts_)
    dtype = _float_dtype(np.asarray(coefs[0]).dtype)
    hidden = get_activation(est.activation).name
    steps: list[tuple[Any, ...]] = []
    for i, (W, b) in enumerate(zip(coefs, intercepts)):
        steps.append(("dense", np.asarray(W), np.asarray(b)))
        if i < len(coefs) - 1 and hidden != "identity":
            steps.append(("act", hidden))
    output = get_activation(est.out_activation_).name
    classes = None
    if hasattr(est, "classes_"):
        classes = np.asarray(est.classes_)
        if output not in _CLASSIFIER_OUTPUTS:
            raise ValueError(f"a classifier with a {output!r} output cannot be exported")
    sizes = [int(coefs[0].shape[0])] + [int(W.shape[1]) for W in coefs]
    desc = (f"{type(est).__name__} {'-'.join(map(str, sizes))}, {hidden} hidden, "
            f"{output} output, {dtype}")
    net = _Net(dtype, int(coefs[0].shape[0]), steps, output, desc, classes, estimator=True)
    if classes is not None:
        _check_classes(net)
    return net


def _check_classes(net: _Net) -> None:
    assert net.classes is not None  # called for classifiers only
    n_classes, k = len(net.classes), net.n_outputs
    if n_classes < 2:
        raise ValueError("a classifier fitted on a single class cannot be exported to ONNX")
    expected = 1 if (net.output == "logistic" and n_classes == 2 and k == 1) else n_classes
    if k != expected:
        raise ValueError(f"the network has {k} outputs but {n_classes} classes")


def _class_labels(classes: np.ndarray) -> tuple[np.ndarray | list[str], int]:
    """``classes_`` as an ONNX label tensor: (int64 values, INT64) or (strings, STRING).

    Follows skl2onnx: integers and booleans become int64, integral floats int64,
    strings stay strings. Anything else has no faithful ONNX label type.
    """
    c = np.asarray(classes).ravel()
    if c.dtype.kind in "iub":
        if c.dtype.kind == "u" and c.size and int(c.max()) > np.iinfo(np.int64).max:
            raise ValueError("class labels beyond the int64 range cannot be exported")
        return c.astype(np.int64), TensorProto.INT64
    if c.dtype.kind == "f":
        if not np.all(np.isfinite(c)) or not np.all(c == np.round(c)):
            raise ValueError(
                f"float class labels must be integral to become ONNX int64 labels, got {c!r}"
            )
        return c.astype(np.int64), TensorProto.INT64
    if c.dtype.kind in "US":
        return [str(s) for s in c], TensorProto.STRING
    if c.dtype.kind == "O":
        if all(isinstance(s, str) for s in c):
            return [str(s) for s in c], TensorProto.STRING
        if all(isinstance(s, numbers.Integral) for s in c):
            return np.array([int(s) for s in c], dtype=np.int64), TensorProto.INT64
    raise ValueError(
        f"class labels of type {c.dtype} (values {c[:5]!r}) cannot be ONNX labels; "
        "use integers or strings"
    )


def _check_opset(opset: Any) -> int:
    latest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) or not MIN_OPSET <= opset <= latest:
        raise ValueError(f"target_opset must be an integer from {MIN_OPSET} to {latest}, got {opset!r}")
    return int(opset)


def _check_zipmap(zipmap: Any, net: _Net) -> bool | str:
    valid = (True, False, "columns")
    if zipmap is not None and not any(zipmap is v or (isinstance(v, str) and zipmap == v) for v in valid):
        raise ValueError(f"zipmap must be True, False or 'columns', got {zipmap!r}")
    if net.classes is None:
        if zipmap not in (None, False):
            raise ValueError(
                "zipmap applies to classifier estimators only (they have class labels); a "
                "Sequential or a regressor returns tensors"
            )
        return False
    return True if zipmap is None else zipmap


# ------------------------------------------------------------------ building
class _Graph:
    """Nodes and initializers of one graph; internal names start with '/' so they
    cannot collide with the interface names (X, label, s<class>, ...)."""

    def __init__(self, dtype: str) -> None:
        self.dtype = dtype
        self.proto = _PROTO[dtype]
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._count = 0
        self.uses_ml = False

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"/{hint}_{self._count}"

    def const(self, hint: str, value: Any, dtype: Any = None) -> str:
        name = self.fresh(hint)
        arr = np.asarray(value, dtype=dtype or self.dtype)
        self.initializers.append(numpy_helper.from_array(arr, name))
        return name

    def strings(self, hint: str, values: list[str]) -> str:
        name = self.fresh(hint)
        self.initializers.append(
            helper.make_tensor(name, TensorProto.STRING, [len(values)], cast(Any, [v.encode("utf-8") for v in values]))
        )
        return name

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, out: str | None = None,
           domain: str = "", **attrs: Any) -> str:
        out = out or self.fresh(hint or op_type)
        if domain == _ML_DOMAIN:
            self.uses_ml = True
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=self.fresh(op_type),
                                           domain=domain or None, **attrs))
        return out


def _activation(g: _Graph, name: str, x: str, out: str | None = None) -> str:
    """``g(x)`` for an mlpx activation; shape (N, units) in and out."""
    if name == "identity":
        return g.op("Identity", [x], out=out) if out else x
    if name == "relu":
        return g.op("Relu", [x], out=out)
    if name == "leaky_relu":
        # max(z, a·z), as mlpx's CPU kernel: ONNX Runtime has no float64 LeakyRelu.
        return g.op("Max", [x, g.op("Mul", [x, g.const("slope", LEAKY_SLOPE)])], out=out)
    if name == "logistic":
        return g.op("Sigmoid", [x], out=out)
    if name == "tanh":
        return g.op("Tanh", [x], out=out)
    if name == "softmax":
        return g.op("Softmax", [x], out=out, axis=1)
    if name == "exp":
        return g.op("Exp", [x], out=out)
    if name == "gelu":
        # mlpx's tanh approximation, in its order of operations:
        # t = tanh(c (z + a z³)); g = (z/2)(1 + t).
        z3 = g.op("Mul", [g.op("Mul", [x, x]), x])
        inner = g.op("Add", [x, g.op("Mul", [g.const("gelu_a", GELU_A), z3])])
        t = g.op("Tanh", [g.op("Mul", [g.const("gelu_c", GELU_C), inner])])
        half_z = g.op("Mul", [g.const("half", 0.5), x])
        return g.op("Mul", [half_z, g.op("Add", [g.const("one", 1.0), t])], out=out)
    raise ValueError(f"activation {name!r} has no ONNX export")


def _logits(g: _Graph, net: _Net, x: str) -> str:
    h = x
    for step in net.steps:
        if step[0] == "dense":
            W = g.const("W", np.asarray(step[1], dtype=net.dtype))
            b = g.const("b", np.asarray(step[2], dtype=net.dtype))
            h = g.op("Gemm", [h, W, b], "dense")
        else:
            h = _activation(g, step[1], h)
    return h


def _tensor_info(name: str, elem: int, shape: list[Any]) -> Any:
    return helper.make_tensor_value_info(name, elem, shape)


def _build(net: _Net, zipmap: bool | str, opset: int) -> "onnx.ModelProto":
    g = _Graph(net.dtype)
    k = net.n_outputs
    inputs = [_tensor_info("X", g.proto, [None, net.n_features])]
    Z = _logits(g, net, "X")
    if net.output not in _CLASSIFIER_OUTPUTS:
        _activation(g, net.output, Z, out="variable")
        outputs = [_tensor_info("variable", g.proto, [None, k])]
    elif net.classes is None:
        outputs = _sequential_classifier(g, net, Z)
    else:
        outputs = _estimator_classifier(g, net, Z, zipmap)

    names = [o.name for o in outputs]
    if len(set(names)) != len(names):
        raise ValueError(f"class labels give clashing output names: {names}")
    graph = helper.make_graph(g.nodes, "mlpx", inputs, outputs, initializer=g.initializers,
                              doc_string=net.description)
    opsets = [helper.make_opsetid("", opset)]
    if g.uses_ml:
        opsets.append(helper.make_opsetid(_ML_DOMAIN, 1))
    model = helper.make_model(graph, opset_imports=opsets, producer_name="mlpx",
                              producer_version=_mlpx_version(), doc_string=net.description)
    # The oldest IR that holds these opsets, so older runtimes load the file too.
    model.ir_version = helper.find_min_ir_version_for(opsets)
    return model


def _build_ensemble(nets: list[_Net], opset: int) -> "onnx.ModelProto":
    """The mean of the members' outputs, and labels from the mean (Stack.predict)."""
    net = nets[0]
    g = _Graph(net.dtype)
    k = net.n_outputs
    inputs = [_tensor_info("X", g.proto, [None, net.n_features])]
    outs = [_activation(g, m.output, _logits(g, m, "X")) for m in nets]
    classifier = net.output in _CLASSIFIER_OUTPUTS
    # Sum, then divide (numpy.mean's order): ONNX Runtime has no float64 Mean.
    total = g.op("Sum", outs) if len(outs) > 1 else outs[0]
    mean = g.op("Div", [total, g.const("members", float(len(outs)))], out=None if classifier else "variable")
    if not classifier:
        outputs = [_tensor_info("variable", g.proto, [None, k])]
    else:
        g.op("Identity", [mean], out="probabilities")
        if net.output == "softmax":
            g.op("ArgMax", [mean], out="label", axis=1, keepdims=0)
            label_shape: list[Any] = [None]
        else:
            positive = g.op("Cast", [g.op("Greater", [mean, g.const("half", 0.5)])], to=TensorProto.INT64)
            if k == 1:
                g.op("Reshape", [positive, g.const("flat", [-1], np.int64)], out="label")
                label_shape = [None]
            else:
                g.op("Identity", [positive], out="label")
                label_shape = [None, k]
        outputs = [_tensor_info("label", TensorProto.INT64, label_shape),
                   _tensor_info("probabilities", g.proto, [None, k])]
    graph = helper.make_graph(g.nodes, "mlpx", inputs, outputs, initializer=g.initializers,
                              doc_string=net.description)
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="mlpx",
                              producer_version=_mlpx_version(), doc_string=net.description)
    model.ir_version = helper.find_min_ir_version_for(opsets)
    return model


@functools.lru_cache(maxsize=None)
def logistic_threshold(dtype: str) -> float:
    """The smallest logit of ``dtype`` that ``predict`` labels 1 (a logistic output, CPU).

    From there on the logistic, as mlpx computes it on the CPU, exceeds 0.5.

    Parameters
    ----------
    dtype : {"float32", "float64"}

    Returns
    -------
    float
        A value of ``dtype`` (1.23e-7 in float32 and 1.56e-16 in float64 with
        NumPy 2.4 on x86-64; the exact value depends on NumPy's ``exp``).
    """
    from mlpx.backends import get_backend

    be, act = get_backend("cpu"), get_activation("logistic")
    ints = np.int32 if dtype == "float32" else np.int64

    def above(bits: np.ndarray) -> np.ndarray:
        Z = bits.astype(ints).view(dtype).reshape(-1, 1)
        return np.asarray(act.forward(be, Z, np.empty_like(Z))[:, 0] > 0.5)

    # Non-negative floats are ordered as their bit patterns: search those, from
    # 0 (probability exactly 0.5) to 1 (clearly above), a grid of 4096 per round.
    lo, hi = int(np.array(0.0, dtype).view(ints)), int(np.array(1.0, dtype).view(ints))
    while hi - lo > 1:
        step = max(1, (hi - lo) // 4096)  # Python ints: bit patterns beyond 2**53 stay exact
        grid = np.array(list(range(lo, hi, step)) + [hi], dtype=np.int64)
        first = int(np.argmax(above(grid)))  # grid[-1] (= hi) is always above
        lo, hi = int(grid[first - 1]), int(grid[first])
    return float(np.array(hi, ints).view(dtype))


def _logistic_labels(g: _Graph, Z: str) -> str:
    """int64 0/1 of each logit: ``predict``'s probability > 0.5 (:func:`logistic_threshold`)."""
    at = g.const("threshold", logistic_threshold(g.dtype))
    return g.op("Cast", [g.op("GreaterOrEqual", [Z, at])], to=TensorProto.INT64)


def _sequential_classifier(g: _Graph, net: _Net, Z: str) -> list[Any]:
    """``label`` and ``probabilities`` exactly as Sequential.predict / predict_proba."""
    k = net.n_outputs
    _activation(g, net.output, Z, out="probabilities")
    if net.output == "softmax":
        g.op("ArgMax", [Z], out="label", axis=1, keepdims=0)  # of the logits, as predict
        label_shape: list[Any] = [None]
    else:
        positive = _logistic_labels(g, Z)
        if k == 1:
            g.op("Reshape", [positive, g.const("flat", [-1], np.int64)], out="label")
            label_shape = [None]
        else:
            g.op("Identity", [positive], out="label")
            label_shape = [None, k]
    return [_tensor_info("label", TensorProto.INT64, label_shape),
            _tensor_info("probabilities", g.proto, [None, k])]


def _estimator_classifier(g: _Graph, net: _Net, Z: str, zipmap: bool | str) -> list[Any]:
    """scikit-learn's predict / predict_proba with skl2onnx's output interface."""
    assert net.classes is not None  # estimator classifiers have classes
    labels, label_type = _class_labels(net.classes)
    n_classes = len(labels)
    multilabel = net.output == "logistic" and net.n_outputs > 1
    P = _activation(g, net.output, Z)
    if net.output == "logistic" and not multilabel:
        # Binary: predict_proba's two columns [1 - p, p].
        P = g.op("Concat", [g.op("Sub", [g.const("one", 1.0), P]), P], "proba", axis=1)
    label_name = "label" if zipmap is False else "output_label"
    if multilabel:
        # LabelBinarizer.inverse_transform: p > 0.5 per column.
        g.op("Identity", [_logistic_labels(g, Z)], out=label_name)
        label_shape: list[Any] = [None, n_classes]
    else:
        if net.output == "logistic":  # binary: the positive class where p > 0.5
            idx = g.op("Reshape", [_logistic_labels(g, Z), g.const("flat", [-1], np.int64)])
        else:
            idx = g.op("ArgMax", [P], axis=1, keepdims=0)
        table = g.strings("classes", cast("list[str]", labels)) if label_type == TensorProto.STRING else g.const(
            "classes", labels, np.int64)
        g.op("Gather", [table, idx], out=label_name, axis=0)
        label_shape = [None]
    outputs = [_tensor_info(label_name, label_type if not multilabel else TensorProto.INT64, label_shape)]

    if zipmap is False:
        g.op("Identity", [P], out="probabilities")
        outputs.append(_tensor_info("probabilities", g.proto, [None, n_classes]))
    elif zipmap == "columns":
        for j, lab in enumerate(labels):
            col = f"i{int(lab)}" if label_type == TensorProto.INT64 else f"s{lab}"
            g.op("Gather", [P, g.const("column", j, np.int64)], out=col, axis=1)
            outputs.append(_tensor_info(col, g.proto, [None]))
    else:
        # ZipMap takes float32 only: a float64 model's probabilities are rounded here.
        P32 = P if g.dtype == "float32" else g.op("Cast", [P], to=TensorProto.FLOAT)
        key = {"classlabels_strings": list(labels)} if label_type == TensorProto.STRING else {
            "classlabels_int64s": [int(v) for v in labels]}
        g.op("ZipMap", [P32], out="output_probability", domain=_ML_DOMAIN, **key)
        key_type = TensorProto.STRING if label_type == TensorProto.STRING else TensorProto.INT64
        seq = helper.make_sequence_type_proto(
            helper.make_map_type_proto(key_type, helper.make_tensor_type_proto(TensorProto.FLOAT, None))
        )
        outputs.append(helper.make_value_info("output_probability", seq))
    return outputs


# ------------------------------------------------------------------ helpers
def _mlpx_version() -> str:
    # Not ``mlpx.__version__``: importing the package from here would import mlpx.model.
    try:
        from importlib.metadata import version

        return version("mlpx")
    except Exception:  # pragma: no cover - uninstalled checkout
        return "unknown"
