"""Files made to exhaust memory or hang the reader: refused at once, or loaded within a bound.

The bound (issue: "no load of any file of <= 1 MB allocates more than 64 MB beyond
its declared parameters"): a load's peak traced allocation stays within twice the
parameter bytes its record declares (the network's parameters and gradients) plus
a constant. NumPy reports its allocations to ``tracemalloc``, so the peak counts
every array. The hand-made cases use a tighter constant (8 MiB) so that one extra
copy of the parameters would show.
"""

from __future__ import annotations

import io
import json
import os
import struct
import threading
import tracemalloc
import warnings
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import mlpx
from mlpx import ModelFileError
from mlpx.saving import load_checkpoint, read_model_file, save_checkpoint

MiB = 1 << 20
BOUND = 64 * MiB  # the constant, for files up to 1 MB


def _record(widths: list[int], dtype: str = "float32", **extra) -> dict:
    layers = [{"type": "Dense", "n_in": a, "n_out": b, "activation": "relu", "init": "glorot"}
              for a, b in zip(widths[:-1], widths[1:])]
    return {"format": "mlpx", "version": 1, "dtype": dtype, "seed": 0, "layers": layers, **extra}


def _n_params(widths: list[int]) -> int:
    return sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _zip(path, entries: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> None:
    with zipfile.ZipFile(path, "w", compression=compression, compresslevel=9 if compression else None) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)


def _peak(fn) -> tuple[object, int]:
    """``fn()``'s result (or its ModelFileError) and the peak traced allocation."""
    tracemalloc.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            try:
                out = fn()
            except ModelFileError as exc:
                out = exc
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# ------------------------------------------------------------------ special files
def _special_files(tmp_path) -> list[str]:
    paths = [str(tmp_path)]  # a directory
    for dev in ("/dev/zero", "/dev/urandom", "/dev/null"):
        if os.path.exists(dev):
            paths.append(dev)
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "fifo")  # no writer: a blocking open would wait forever
        paths.append(str(tmp_path / "fifo"))
    return paths


@pytest.mark.timeout(30)
def test_endless_and_special_files_are_refused_at_once(tmp_path) -> None:
    model = mlpx.MLP([3, 4, 2], seed=0)
    for path in _special_files(tmp_path):
        for read in (mlpx.load, lambda p: load_checkpoint(p, model), read_model_file,
                     lambda p: model.fit(np.ones((4, 3)), [0, 1, 0, 1], resume_from=p)):
            result: list = []
            worker = threading.Thread(target=lambda: result.append(_peak(lambda: read(path))), daemon=True)
            worker.start()
            worker.join(10)
            assert not worker.is_alive(), f"reading {path} did not return"
            out, peak = result[0]
            assert isinstance(out, ModelFileError), (path, out)
            assert "not an mlpx model file" in str(out) or "not a readable" in str(out)
            assert peak < MiB, (path, peak)


# ------------------------------------------------------------------ the files
def test_a_deflate_bomb_costs_the_network_and_nothing_more(tmp_path) -> None:
    """~32 KB deflated, declaring 8M float32 parameters (32 MiB): the issue's 195 KB case, smaller."""
    widths = [2828, 2828]
    n = _n_params(widths)
    path = tmp_path / "bomb.npz"
    _zip(path, {"config.npy": _npy(np.array(json.dumps(_record(widths)))),
                "params.npy": _npy(np.zeros(n, np.float32))})
    size = path.stat().st_size
    assert size < 64 * 1024
    model, peak = _peak(lambda: mlpx.load(path))
    assert isinstance(model, mlpx.Sequential) and model.n_params == n
    assert peak <= 2 * 4 * n + 8 * MiB, f"{peak / MiB:.0f} MiB for {4 * n / MiB:.0f} MiB of parameters"
    # The arrays alone (no network) cost the arrays alone.
    _, peak = _peak(lambda: read_model_file(path))
    assert peak <= 4 * n + 8 * MiB


def test_unused_optimizer_entries_are_refused_without_decompressing(tmp_path) -> None:
    widths = [1000, 1000]
    n = _n_params(widths)
    zeros = _npy(np.zeros(n, np.float32))
    entries = {"config.npy": _npy(np.array(json.dumps(_record(widths)))), "params.npy": zeros}
    entries.update({f"opt_x{i}.npy": zeros for i in range(10)})
    path = tmp_path / "junk.npz"
    _zip(path, entries)
    target = mlpx.Sequential([mlpx.Dense(1000, 1000)])
    for read in (mlpx.load, read_model_file, lambda p: load_checkpoint(p, target)):
        out, peak = _peak(lambda: read(path))
        assert isinstance(out, ModelFileError) and "unexpected entry 'opt_x" in str(out)
        assert peak < 2 * MiB
    entries.update({f"opt_y{i}.npy": zeros for i in range(20)})  # too many entries: refused by count
    _zip(path, entries)
    out, peak = _peak(lambda: mlpx.load(path))
    assert isinstance(out, ModelFileError) and peak < 2 * MiB


def test_a_checkpoint_of_bombs_costs_its_declared_arrays(tmp_path) -> None:
    model = mlpx.Sequential([mlpx.Dense(1500, 1500)], seed=0)
    model.fit(np.zeros((2, 1500), np.float32), np.zeros((2, 1500), np.float32), epochs=1, loss="mse")
    save_checkpoint(tmp_path / "real.npz", model)  # a true record; its arrays become deflated zeros
    record, arrays = read_model_file(tmp_path / "real.npz")
    n = model.n_params
    _zip(tmp_path / "ck.npz", {"config.npy": _npy(np.array(json.dumps(record))),
                              **{f"{k}.npy": _npy(np.zeros(n, np.float32)) for k in arrays}})
    assert (tmp_path / "ck.npz").stat().st_size < 64 * 1024
    declared = 4 * n * len(arrays)  # params, m, v
    target = mlpx.Sequential([mlpx.Dense(1500, 1500)], seed=1)
    opt, peak = _peak(lambda: load_checkpoint(tmp_path / "ck.npz", target))
    assert isinstance(opt, mlpx.Adam)
    assert peak <= 2 * declared + 8 * MiB, f"{peak / MiB:.0f} MiB for {declared / MiB:.0f} MiB declared"


def test_a_config_bomb_is_refused_or_bounded(tmp_path) -> None:
    params = _npy(np.zeros(_n_params([2, 2]), np.float32))
    # 8 MiB of UCS-4 text: above the record's cap, refused from its header.
    huge = np.array(" " * (2 * MiB))
    _zip(tmp_path / "a.npz", {"config.npy": _npy(huge), "params.npy": params})
    out, peak = _peak(lambda: mlpx.load(tmp_path / "a.npz"))
    assert isinstance(out, ModelFileError) and "implausibly large" in str(out) and peak < MiB
    # Just below the cap, JSON that parses into as many objects as it can.
    text = "[" + ",".join(["{}"] * ((1 << 20) // 3 - 1)) + "]"
    _zip(tmp_path / "b.npz", {"config.npy": _npy(np.array(text)), "params.npy": params})
    out, peak = _peak(lambda: mlpx.load(tmp_path / "b.npz"))
    assert isinstance(out, ModelFileError) and peak < BOUND


def _eocd(data: bytes) -> int:
    return data.rindex(b"PK\x05\x06")


@pytest.mark.parametrize("field, value, match", [
    (12, 0x7FFFFFFF, "directory"),            # central directory size
    (16, 0x7FFFFFF0, "outside the file"),     # central directory offset
    (12, 0xFFFFFFFF, "ZIP64"),                # sizes handed to a ZIP64 record that is not there
    (10, 0xFFFF, "ZIP64"),
])
def test_a_lying_zip_directory_is_refused_before_zipfile_reads_it(tmp_path, field, value, match) -> None:
    model = mlpx.MLP([3, 4, 2], seed=0)
    model.save(tmp_path / "m.npz")
    data = bytearray((tmp_path / "m.npz").read_bytes())
    at = _eocd(data)
    fmt = "<H" if field in (8, 10) else "<L"
    struct.pack_into(fmt, data, at + field, value)
    (tmp_path / "bad.npz").write_bytes(bytes(data))
    out, peak = _peak(lambda: mlpx.load(tmp_path / "bad.npz"))
    assert isinstance(out, ModelFileError) and match in str(out), out
    assert peak < MiB


# ------------------------------------------------------------------ property tests
BASE_WIDTHS = [[3, 5, 2], [4, 3]]


def _valid_file(widths: list[int], compression: int) -> tuple[bytes, np.ndarray, dict]:
    record = _record(widths)
    params = np.random.default_rng(0).normal(size=_n_params(widths)).astype(np.float32)
    buf = io.BytesIO()
    _zip(buf, {"config.npy": _npy(np.array(json.dumps(record))), "params.npy": _npy(params)}, compression)
    return buf.getvalue(), params, record


def _declared_bytes(data: bytes) -> int:
    """Parameter bytes the file's record declares (0 if it has no readable record)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf, zf.open("config.npy") as fp:
            text = np.lib.format.read_array(fp, allow_pickle=False).item()
        record = json.loads(text)
        widths = [record["layers"][0]["n_in"]] + [l["n_out"] for l in record["layers"] if l["type"] == "Dense"]
        return _n_params(widths) * np.dtype(record["dtype"]).itemsize
    except Exception:
        return 0


@st.composite
def _hostile(draw):
    widths = draw(st.sampled_from(BASE_WIDTHS))
    compression = draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))
    data, params, record = _valid_file(widths, compression)
    kind = draw(st.sampled_from(["bytes", "bytes", "huge", "huge-mismatch", "entries", "header"]))
    if kind == "huge":
        # a true record of a big network whose params entry is a deflate bomb of that size
        big = [draw(st.integers(1, 1500)), draw(st.integers(1, 1500))]
        fill = draw(st.sampled_from([0.0, 1.0]))
        buf = io.BytesIO()
        _zip(buf, {"config.npy": _npy(np.array(json.dumps(_record(big)))),
                   "params.npy": _npy(np.full(_n_params(big), fill, np.float32))})
        data = buf.getvalue()
    elif kind == "huge-mismatch":
        # the record claims a big network; the entry holds another shape or lies about its size
        big = [draw(st.integers(1000, 20000)), draw(st.integers(1000, 20000))]
        claimed = draw(st.sampled_from([_n_params(big), _n_params(big) + 1, 10**9]))
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (claimed,)})
        body = header.getvalue() + bytes(draw(st.integers(0, 4096)))
        buf = io.BytesIO()
        _zip(buf, {"config.npy": _npy(np.array(json.dumps(_record(big)))), "params.npy": body})
        data = buf.getvalue()
    elif kind == "entries":
        extra = draw(st.lists(st.sampled_from(["opt_m.npy", "params.npy", "x.npy", "config.npy", "opt_velocity.npy",
                                               "dir/", "params"]), min_size=1, max_size=4))
        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # duplicate names
            with zipfile.ZipFile(buf, "w", compression=compression) as zf:
                zf.writestr("config.npy", _npy(np.array(json.dumps(record))))
                zf.writestr("params.npy", _npy(params))
                for name in extra:
                    zf.writestr(name, _npy(np.zeros(draw(st.sampled_from([params.size, 50_000])), np.float32)))
        data = buf.getvalue()
    elif kind == "header":
        # rewrite the params entry's .npy header: another dtype, shape, order, version
        descr = draw(st.sampled_from(["<f4", ">f4", "<f8", "|O", "<i4", "<U3"]))
        shape = draw(st.sampled_from([(params.size,), (params.size, 1), (), (10**9,)]))
        fortran = draw(st.booleans())
        header = io.BytesIO()
        writer = draw(st.sampled_from([np.lib.format.write_array_header_1_0, np.lib.format.write_array_header_2_0]))
        writer(header, {"descr": descr, "fortran_order": fortran, "shape": shape})
        buf = io.BytesIO()
        _zip(buf, {"config.npy": _npy(np.array(json.dumps(record))),
                   "params.npy": header.getvalue() + params.tobytes()}, compression)
        data = buf.getvalue()
        if descr == ">f4":  # the same bytes read as big-endian: other values, and what the file says
            params = np.frombuffer(params.tobytes(), ">f4").astype(np.float32)
    out = bytearray(data)
    for _ in range(draw(st.integers(0 if kind != "bytes" else 1, 3))):
        op = draw(st.sampled_from(["flip", "set", "cut", "insert", "dup"]))
        i = draw(st.integers(0, max(len(out) - 1, 0)))
        if op == "flip" and out:
            out[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and out:
            out[i] = draw(st.sampled_from([0, 0xFF, 0x7F]))
        elif op == "cut":
            del out[i:]
        elif op == "insert":
            out[i:i] = bytes(draw(st.integers(1, 8)))
        else:
            out[i:i] = out[i:i + draw(st.integers(1, 64))]
    return bytes(out), params, record, kind


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=_hostile())
def test_any_file_loads_as_written_or_is_refused_within_the_memory_bound(tmp_path, case) -> None:
    data, params, record, kind = case
    assert len(data) <= 1 << 20
    path = tmp_path / "f.npz"
    path.write_bytes(data)
    event(kind)
    model, peak = _peak(lambda: mlpx.load(path))
    declared = _declared_bytes(data)
    assert peak <= 2 * declared + BOUND, f"{peak / MiB:.1f} MiB for {declared / MiB:.1f} MiB declared ({kind})"
    if isinstance(model, ModelFileError):
        assert str(model)
        event("refused")
        return
    event("loaded")
    assert isinstance(model, mlpx.Sequential)
    if kind not in ("huge",):
        # a file that loads holds exactly what was written
        assert np.array_equal(model.get_flat_params(), params)
        assert model.get_config()["layers"] == record["layers"]


@pytest.mark.parametrize("body", [b"{" + b"'" * 116, b"{'descr': '<f4', }}" + b" " * 98, b"\xff" * 117])
def test_a_npy_header_numpy_cannot_parse_is_a_model_file_error(tmp_path, body) -> None:
    """NumPy's header parser raises a tokenizer error (not a ValueError) on some headers."""
    header = b"\x93NUMPY\x01\x00" + (len(body) + 1).to_bytes(2, "little") + body + b"\n"
    _zip(tmp_path / "h.npz", {"config.npy": _npy(np.array(json.dumps(_record([2, 2])))),
                             "params.npy": header + bytes(24)})
    with pytest.raises(ModelFileError, match="not a readable mlpx model file"):
        mlpx.load(tmp_path / "h.npz")
