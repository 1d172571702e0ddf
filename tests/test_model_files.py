"""Reading model files that were crafted, damaged or written by something else.

Every defect is a ``ModelFileError`` (a ValueError) that says what is wrong; a file
that does load gives exactly the model it describes (no silent cast, truncation or
default). A file's layers are checked against its stored parameter count before
anything is allocated.
"""

from __future__ import annotations

import copy
import io
import json
import tracemalloc
import warnings
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

import mlpx
from _records import DELETE, paths, set_path
from mlpx import ModelFileError
from mlpx.saving import save_checkpoint
from mlpx.saving import MAX_PARAMS, check_architecture, read_model_file

FUZZ_EXAMPLES = 300


def _saved(model: mlpx.Sequential) -> tuple[dict, np.ndarray]:
    record = {"format": "mlpx", "version": 1, **model.get_config()}
    return json.loads(json.dumps(record)), model.get_flat_params()


def _write(path, record, params, raw_config: object = None, **extra) -> None:
    config = raw_config if raw_config is not None else np.array(json.dumps(record))
    np.savez(path, config=config, params=params, **extra)


def _models() -> list[mlpx.Sequential]:
    return [
        mlpx.MLP([3, 5, 2], activation="tanh", output="softmax", seed=1),
        mlpx.MLP([2, 4, 4, 1], output="identity", dtype="float64", seed=None, dropout=0.25),
        mlpx.Sequential([mlpx.Dense(3, 4, activation="gelu"), mlpx.Dropout(0.5, seed=9),
                         mlpx.Dense(4, 2), mlpx.Sigmoid()], seed=4),
    ]


BASE = [_saved(m) for m in _models()]


def _expected_layers(record: dict) -> tuple[list[dict], str]:
    """The layers and output a record describes, split as Sequential splits them."""
    layers = copy.deepcopy(record["layers"])
    last = layers[-1]
    if last["type"] == "ActivationLayer":
        return layers[:-1], last["activation"]
    if last["type"] == "Dense":
        output, last["activation"] = last["activation"], "identity"
        return layers, output
    return layers, "identity"


def assert_is_the_file(model: mlpx.Sequential, record: dict, params: np.ndarray) -> None:
    """The loaded model is exactly what the file describes."""
    assert model.dtype == record["dtype"] and model.seed == record["seed"]
    assert model.precision_.name == (record.get("precision") or record["dtype"])
    layers, output = _expected_layers(record)
    assert [l.get_config() for l in model.layers] == layers and model.output.name == output
    flat = model.get_flat_params()
    assert flat.dtype == params.dtype and np.array_equal(flat, params)


def _load(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # precision modes on the CPU warn
        return mlpx.load(path)


def _load_or_refuse(path):
    """Load, or return the ModelFileError; any other exception fails the test."""
    try:
        model = _load(path)
    except ModelFileError as exc:
        assert str(exc), "an empty message says nothing"
        event("refused")
        return exc
    event("loaded")
    return model


# ------------------------------------------------------------------ cases
def test_model_file_error_is_a_documented_value_error() -> None:
    assert issubclass(ModelFileError, ValueError) and mlpx.ModelFileError is ModelFileError
    assert "ModelFileError" in mlpx.__all__


def test_the_reader_knows_every_layer_type_and_its_fields() -> None:
    """A new layer type (or field) must be taught to the file checks too."""
    from mlpx.layers import LAYERS
    from mlpx.saving import _LAYER_KEYS

    examples = {"Dense": mlpx.Dense(2, 3), "ActivationLayer": mlpx.ReLU(), "Dropout": mlpx.Dropout(0.1)}
    assert set(_LAYER_KEYS) == set(LAYERS) == set(examples)
    for kind, layer in examples.items():
        assert set(layer.get_config()) == _LAYER_KEYS[kind]


def _good(tmp_path):
    record, params = BASE[0]
    return record, params, tmp_path / "m.npz"



RECORD_CASES = [
    # (path into the record, new value, fragment of the message)
    (("format",), "keras", "not an mlpx model file"),
    (("format",), DELETE, "not an mlpx model file"),
    (("version",), 2, "newer mlpx"),
    (("version",), 0, "version"),
    (("version",), "1", "version"),
    (("version",), True, "version"),
    (("version",), DELETE, "version"),
    (("layers",), DELETE, "lacks"),
    (("dtype",), DELETE, "lacks"),
    (("seed",), DELETE, "lacks"),
    (("extra",), 1, "unknown keys"),
    (("dtype",), 32, "dtype"),
    (("dtype",), None, "dtype"),
    (("dtype",), ["float32"], "dtype"),
    (("dtype",), "float16", "dtype"),
    (("dtype",), "int32", "dtype"),
    (("dtype",), "f4", "dtype"),
    (("seed",), -1, "seed"),
    (("seed",), 1.5, "seed"),
    (("seed",), "1", "seed"),
    (("precision",), "fp8", "precision"),
    (("precision",), 16, "precision"),
    (("layers",), [], "layers"),
    (("layers",), {}, "layers"),
    (("layers",), "Dense", "layers"),
    (("layers", 0), "Dense", "layer 0"),
    (("layers", 0), None, "layer 0"),
    (("layers", 0, "type"), "Conv2D", "unknown type"),
    (("layers", 0, "type"), DELETE, "unknown type"),
    (("layers", 0, "type"), ["Dense"], "unknown type"),
    (("layers", 0, "n_in"), DELETE, "exactly the fields"),
    (("layers", 0, "bias"), True, "exactly the fields"),
    (("layers", 0, "n_in"), "3", "n_in"),
    (("layers", 0, "n_in"), 3.0, "n_in"),
    (("layers", 0, "n_in"), 3.5, "n_in"),
    (("layers", 0, "n_in"), True, "n_in"),
    (("layers", 0, "n_in"), None, "n_in"),
    (("layers", 0, "n_in"), -3, "n_in"),
    (("layers", 0, "n_in"), 0, "n_in"),
    (("layers", 0, "n_in"), 10**30, "n_in"),
    (("layers", 0, "n_out"), 6, "expects 6 inputs|expects 5 inputs"),
    (("layers", 0, "activation"), "swish", "unknown activation"),
    (("layers", 0, "activation"), "TANH", "unknown activation"),
    (("layers", 0, "activation"), 1, "unknown activation"),
    (("layers", 0, "init"), "zeros", "init"),
    (("layers", 0, "init"), None, "init"),
]


@pytest.mark.parametrize("where, value, match", RECORD_CASES, ids=[f"{c[0]}={c[1]!r}" for c in RECORD_CASES])
def test_bad_records_are_refused(tmp_path, where, value, match) -> None:
    record, params, path = _good(tmp_path)
    _write(path, set_path(record, where, value), params)
    with pytest.raises(ModelFileError, match=match):
        _load(path)


@pytest.mark.parametrize(
    "layer, match",
    [
        ({"type": "Dropout", "p": 1.0, "seed": None}, "p must be"),
        ({"type": "Dropout", "p": -0.1, "seed": None}, "p must be"),
        ({"type": "Dropout", "p": "0.5", "seed": None}, "p must be"),
        ({"type": "Dropout", "p": True, "seed": None}, "p must be"),
        ({"type": "Dropout", "p": 0.5, "seed": -2}, "seed"),
        ({"type": "Dropout", "p": 0.5, "seed": 2.5}, "seed"),
        ({"type": "Dropout", "p": 0.5}, "exactly the fields"),
        ({"type": "ActivationLayer", "activation": "nope"}, "unknown activation"),
        ({"type": "ActivationLayer", "activation": "relu", "alpha": 0.1}, "exactly the fields"),
    ],
)
def test_bad_inserted_layers_are_refused(tmp_path, layer, match) -> None:
    record, params, path = _good(tmp_path)
    record = copy.deepcopy(record)
    record["layers"].insert(1, layer)
    _write(path, record, params)
    with pytest.raises(ModelFileError, match=match):
        _load(path)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p: p.astype(np.complex128), "float32 array"),
        (lambda p: p.astype(np.float64), "float32 array"),
        (lambda p: p.astype(np.float16), "float32 array"),
        (lambda p: p.astype(np.int32), "float32 array"),
        (lambda p: p.astype(bool), "float32 array"),
        (lambda p: p.astype(object), "objects"),
        (lambda p: p[:-1], "shape"),
        (lambda p: np.concatenate([p, p[:1]]), "shape"),
        (lambda p: p.reshape(1, -1), "shape"),
        (lambda p: np.float32(1.0), "shape"),
        (lambda p: np.where(np.arange(p.size) == 3, np.nan, p).astype(np.float32), "NaN or infinity"),
        (lambda p: np.where(np.arange(p.size) == 0, -np.inf, p).astype(np.float32), "NaN or infinity"),
    ],
)
def test_bad_parameter_arrays_are_refused(tmp_path, make, match) -> None:
    record, params, path = _good(tmp_path)
    _write(path, record, make(params))
    with pytest.raises(ModelFileError, match=match):
        _load(path)


def test_big_endian_parameters_load_exactly(tmp_path) -> None:
    record, params, path = _good(tmp_path)
    _write(path, record, params.astype(">f4"))
    assert_is_the_file(_load(path), record, params)


def test_a_compressed_file_loads(tmp_path) -> None:
    record, params, path = _good(tmp_path)
    np.savez_compressed(path, config=np.array(json.dumps(record)), params=params)
    assert_is_the_file(_load(path), record, params)


@pytest.mark.parametrize(
    "config, match",
    [
        (np.array("{not json"), "not valid JSON"),
        (np.array(""), "not valid JSON"),
        (np.array("[" * 100_000 + "]" * 100_000), "not valid JSON"),  # deep nesting
        (np.array('{"format": "mlpx", "version": NaN}'), "not JSON"),
        (np.array('{"format": "mlpx", "format": "mlpx"}'), "repeats a key"),
        (np.array("[1, 2]"), "must be a JSON object"),
        (np.array('"mlpx"'), "must be a JSON object"),
        (np.array("null"), "must be a JSON object"),
        (np.array(3.0), "JSON text"),
        (np.array([json.dumps({"format": "mlpx"})]), "JSON text"),
        (np.array(b'{"format": "mlpx"}'), "JSON text"),
        (np.array([{"format": "mlpx"}], dtype=object), "objects"),
    ],
)
def test_bad_configs_are_refused(tmp_path, config, match) -> None:
    _, params, path = _good(tmp_path)
    _write(path, None, params, raw_config=config)
    with pytest.raises(ModelFileError, match=match):
        _load(path)


def test_files_that_are_not_model_archives(tmp_path) -> None:
    record, params, path = _good(tmp_path)
    cases = {
        "empty.npz": b"",
        "text.npz": b"hello, I am not a model\n" * 10,
        "pickle.npz": b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ModelFileError, match="not a readable mlpx model file"):
            _load(tmp_path / name)
    np.save(tmp_path / "params.npy", params)
    with pytest.raises(ModelFileError, match=r"\.npy file"):
        _load(tmp_path / "params.npy")
    np.savez(tmp_path / "only_params.npz", params=params)
    with pytest.raises(ModelFileError, match="no 'config' entry"):
        _load(tmp_path / "only_params.npz")
    _write(tmp_path / "extra.npz", record, params, notes=np.arange(3))
    with pytest.raises(ModelFileError, match="unexpected entry 'notes.npy'"):
        _load(tmp_path / "extra.npz")
    with zipfile.ZipFile(tmp_path / "dup.npz", "w") as zf:
        buf = io.BytesIO()
        np.save(buf, np.array(json.dumps(record)))
        zf.writestr("config.npy", buf.getvalue())
        buf = io.BytesIO()
        np.save(buf, params)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # zipfile warns about the duplicate
            zf.writestr("params.npy", buf.getvalue())
            zf.writestr("params.npy", buf.getvalue())
    with pytest.raises(ModelFileError, match="appears twice"):
        _load(tmp_path / "dup.npz")
    with pytest.raises(FileNotFoundError):
        _load(tmp_path / "missing.npz")


def test_every_truncation_is_refused(tmp_path) -> None:
    record, params, path = _good(tmp_path)
    _write(path, record, params)
    data = path.read_bytes()
    cut = tmp_path / "cut.npz"
    for n in range(0, len(data) - 1, 7):
        cut.write_bytes(data[:n])
        with pytest.raises(ModelFileError):
            _load(cut)


def _crafted_file(path, width: int, claimed: int | None = None) -> None:
    """A small file describing a (width x width) network, with a params header that
    claims ``claimed`` values (default: the true count) but holds 16 bytes."""
    n = width * width + width + width * 2 + 2
    record = {"format": "mlpx", "version": 1, "dtype": "float32", "seed": 0, "layers": [
        {"type": "Dense", "n_in": width, "n_out": width, "activation": "relu", "init": "glorot"},
        {"type": "Dense", "n_in": width, "n_out": 2, "activation": "softmax", "init": "glorot"},
    ]}
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": "<f4", "fortran_order": False, "shape": (claimed or n,)}
    )
    with zipfile.ZipFile(path, "w") as zf:
        cfg = io.BytesIO()
        np.save(cfg, np.array(json.dumps(record)))
        zf.writestr("config.npy", cfg.getvalue())
        zf.writestr("params.npy", buf.getvalue() + b"\x00" * 16)


@pytest.mark.parametrize("width, claimed", [(10_000, None), (30_000, None), (40_000, None), (10_000, 7)])
def test_a_small_crafted_file_allocates_nothing_big(tmp_path, width, claimed) -> None:
    """1.5 KB describing 100M-1.6G parameters: refused before any allocation."""
    path = tmp_path / "crafted.npz"
    _crafted_file(path, width, claimed)
    assert path.stat().st_size < 2048
    tracemalloc.start()
    try:
        with pytest.raises(ModelFileError, match="cap|not hold|shape"):
            _load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"load allocated {peak} bytes for a {path.stat().st_size}-byte file"


def test_the_cap_is_checked_from_the_record_and_can_be_raised(tmp_path) -> None:
    record, params, path = _good(tmp_path)
    _write(path, record, params)
    n = check_architecture(record)
    assert n == params.size == 3 * 5 + 5 + 5 * 2 + 2
    with pytest.raises(ModelFileError, match="cap"):
        mlpx.load(path, max_params=n - 1)
    assert_is_the_file(mlpx.load(path, max_params=n), record, params)
    assert MAX_PARAMS >= 10**9


def test_checkpoints_are_read_with_the_same_checks(tmp_path) -> None:
    model = mlpx.MLP([3, 4, 2], seed=0)
    model.fit(np.ones((4, 3)), [0, 1, 1, 0], epochs=1, optimizer="adam")
    path = tmp_path / "ck.npz"
    save_checkpoint(path, model, model.optimizer_)
    record, arrays = read_model_file(path)
    assert set(arrays) == {"params", "opt_m", "opt_v"} and record["train_state"]["optimizer"]["optimizer"] == "Adam"
    assert_is_the_file(mlpx.load(path), {k: v for k, v in record.items() if k != "train_state"},
                       arrays["params"])
    with np.load(path) as f:
        entries = {k: f[k] for k in f.files}
    bad_state = [
        ({"epochs_done": -1}, "epochs_done"),
        ({"optimizer": {"optimizer": "Adam", "config": {"lr": -1}, "t": 1, "lr": 0.1}}, "optimizer settings"),
        ({"optimizer": {"optimizer": "LBFGS", "config": {}, "t": 1, "lr": 0.1}}, "optimizer record"),
        ({"loss_scaler": {"scale": 0, "good_steps": 0, "skipped": 0}}, "loss_scaler"),
        ("resume", "train_state"),
    ]
    for state, match in bad_state:
        rec = copy.deepcopy(record)
        rec["train_state"] = state if isinstance(state, str) else {**rec["train_state"], **state}
        np.savez(path, **{**entries, "config": np.array(json.dumps(rec))})
        with pytest.raises(ModelFileError, match=match):
            read_model_file(path)
    for key, value in (("opt_m", entries["opt_m"][:-1]), ("opt_v", entries["opt_v"].astype(np.float64)),
                       ("opt_m", np.full_like(entries["opt_m"], np.inf))):
        np.savez(path, **{**entries, key: value})
        with pytest.raises(ModelFileError, match=key):
            read_model_file(path)


# ------------------------------------------------------------------ fuzzing
_json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**20), 10**20), st.integers(-3, 70),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8),
    st.sampled_from(["Dense", "Dropout", "ActivationLayer", "relu", "softmax", "identity", "tanh",
                     "float32", "float64", "glorot", "he", "mlpx", "fp16", "bf16", "tf32"]),
)
_json = st.recursive(_json_leaf, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                     max_leaves=6)


_PLAUSIBLE = {
    "activation": st.sampled_from(sorted(mlpx.ACTIVATIONS) + ["Relu", "sigmoid"]),
    "init": st.sampled_from(["glorot", "he", "lecun"]),
    "seed": st.one_of(st.none(), st.integers(-2, 2**40)),
    "p": st.one_of(st.floats(-0.5, 1.5), st.integers(0, 1)),
    "dtype": st.sampled_from(["float32", "float64", "float16"]),
    "precision": st.sampled_from([None, "float32", "float64", "tf32", "bf16", "fp16", "fp8"]),
    "n_in": st.integers(0, 6),
    "n_out": st.integers(0, 6),
    "type": st.sampled_from(["Dense", "Dropout", "ActivationLayer", "dense"]),
    "version": st.integers(0, 2),
}




@st.composite
def _record_mutations(draw):
    k = draw(st.integers(0, len(BASE) - 1))
    record, params = BASE[k]
    record = copy.deepcopy(record)
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from([p for p in paths(record) if p]))
        action = draw(st.sampled_from(["replace", "delete", "add", "tweak", "plausible", "plausible"]))
        parent = record
        for key in where[:-1]:
            parent = parent[key]
        if action == "plausible" and where[-1] in _PLAUSIBLE:
            # a value of the right kind: many of these files are valid, and must load exactly
            parent[where[-1]] = draw(_PLAUSIBLE[where[-1]])
        elif action == "delete":
            del parent[where[-1]]
        elif action == "add" and isinstance(parent, dict):
            key = draw(st.one_of(st.text(max_size=6), st.sampled_from(sorted(_PLAUSIBLE))))
            parent[key] = draw(_PLAUSIBLE.get(key, _json) if draw(st.booleans()) else _json)
        elif action == "tweak" and isinstance(parent[where[-1]], int) and not isinstance(parent[where[-1]], bool):
            parent[where[-1]] += draw(st.sampled_from([-1, 1, 2, -10, 10**6]))
        else:
            parent[where[-1]] = draw(_json)
    return record, params


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=_record_mutations())
def test_fuzzed_records_load_exactly_or_raise_model_file_error(tmp_path, case) -> None:
    record, params = case
    path = tmp_path / "fuzz.npz"
    _write(path, record, params)
    got = _load_or_refuse(path)
    if not isinstance(got, ModelFileError):
        assert_is_the_file(got, record, params)


_dtypes = st.sampled_from(["<f4", ">f4", "<f8", "<f2", "<i4", "<i8", "<u1", "|b1", "<c8", "<c16"])


@st.composite
def _array_mutations(draw):
    k = draw(st.integers(0, len(BASE) - 1))
    record, params = BASE[k]
    dtype = np.dtype(params.dtype if draw(st.booleans()) else draw(_dtypes))
    n = params.size + draw(st.sampled_from([0, 0, 0, -1, 1, -params.size, 7]))
    values = np.resize(params, max(n, 0)).astype(np.float64)
    if draw(st.booleans()) and values.size:
        i = draw(st.integers(0, values.size - 1))
        values[i] = draw(st.sampled_from([np.nan, np.inf, -np.inf, 1e39, -1e300, 0.0, 5e-324]))
    with np.errstate(all="ignore"):
        array = values.astype(dtype)
    if draw(st.booleans()):
        array = array.reshape(draw(st.sampled_from([(-1,), (1, -1), (-1, 1)]))) if array.size else array
    return record, array


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=_array_mutations())
def test_fuzzed_parameter_arrays_load_exactly_or_raise_model_file_error(tmp_path, case) -> None:
    record, array = case
    path = tmp_path / "fuzz.npz"
    _write(path, record, array)
    got = _load_or_refuse(path)
    if not isinstance(got, ModelFileError):
        expected = np.dtype(record["dtype"])
        assert array.dtype.newbyteorder("=") == expected.newbyteorder("=")
        assert_is_the_file(got, record, array.astype(expected))


@st.composite
def _byte_mutations(draw):
    k = draw(st.integers(0, len(BASE) - 1))
    ops = draw(st.lists(st.tuples(st.sampled_from(["flip", "set", "cut", "insert"]), st.floats(0, 1),
                                  st.integers(0, 255)), min_size=1, max_size=3))
    return k, ops


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=_byte_mutations())
def test_fuzzed_bytes_load_exactly_or_raise_model_file_error(tmp_path, case) -> None:
    k, ops = case
    record, params = BASE[k]
    path = tmp_path / "fuzz.npz"
    _write(path, record, params)
    data = bytearray(path.read_bytes())
    for op, where, byte in ops:
        i = min(int(where * len(data)), max(len(data) - 1, 0))
        if op == "flip" and data:
            data[i] ^= 1 << (byte % 8)
        elif op == "set" and data:
            data[i] = byte
        elif op == "cut":
            del data[i:]
        else:
            data[i:i] = bytes([byte])
    assume(bytes(data) != path.read_bytes())
    path.write_bytes(bytes(data))
    got = _load_or_refuse(path)
    if not isinstance(got, ModelFileError):  # the change hit bytes that carry no data
        assert_is_the_file(got, record, params)
