"""The benchmark suite's quick path at tiny sizes: schema, numbers, skips, checks, --compare.

One tiny run (``python -m benchmarks --tiny``, in process) is shared by the tests;
nothing here asserts on a timing, only on the structure and on correctness.
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest

from benchmarks import SCHEMA_VERSION, validate
from benchmarks.cli import main
from benchmarks.compare import compare, compare_files
from benchmarks.gemm import step_shapes, tolerance, verify_product
from benchmarks.schema import iter_records
from mlpx.backends import cuda_available

HAS_CUDA = cuda_available()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("bench")
    rc = main(["--tiny", "--quiet", "--out", str(out)])
    doc = json.loads((out / "results-tiny.json").read_text())
    return rc, out, doc


def test_cli_writes_report_json_and_plots(tiny_run):
    rc, out, doc = tiny_run
    assert rc == 0
    assert (out / "report-tiny.md").read_text().startswith("# mlpx benchmarks (tiny)")
    pytest.importorskip("matplotlib")
    for name in ("gemm", "train", "scaling"):
        assert (out / f"{name}-tiny.png").stat().st_size > 1000


def test_schema_valid_and_every_section_ran(tiny_run):
    _, _, doc = tiny_run
    assert doc["schema_version"] == SCHEMA_VERSION
    assert validate(doc) == []
    assert "validation_errors" not in doc
    for name in ("gemm", "train", "scaling"):
        assert doc["sections"][name]["status"] == "ok", doc["sections"][name].get("reason")
    m = doc["machine"]
    assert m["cpu_cores"] >= 1 and m["thread_pools"] and m["command"].startswith("python -m benchmarks --tiny")
    assert m["versions"]["numpy"] == np.__version__


def test_every_number_finite_and_positive(tiny_run):
    _, _, doc = tiny_run
    allowed_zero = {"max_rel_error", "layer", "load_avg_start", "load_avg_end", "accuracy", "accuracy_runs"}

    def walk(obj, key=""):
        if isinstance(obj, dict):
            for k, v in obj.items():
                yield from walk(v, k)
        elif isinstance(obj, list):
            for v in obj:
                yield from walk(v, key)
        elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
            yield key, obj

    numbers = list(walk(doc))
    assert len(numbers) > 200
    for key, x in numbers:
        assert math.isfinite(x), key
        if key == "accuracy_delta_pp":
            continue
        assert x >= 0 if key in allowed_zero else x > 0, (key, x)
    # measured records all carry a key and a median time
    recs = [r for _, r in iter_records(doc) if r.get("status", "ok") == "ok"]
    assert len(recs) > 20
    assert len({r["key"] for r in recs}) == len(recs)


@pytest.mark.skipif(HAS_CUDA, reason="checks the no-GPU path")
def test_gpu_parts_marked_skipped_without_cuda(tiny_run):
    _, out, doc = tiny_run
    s = doc["sections"]
    assert doc["gpu_status"] == {"used": False, "reason": "no CUDA device"}
    assert s["gemm"]["parts"]["gpu"] == {"status": "skipped", "reason": "no CUDA device", "records": []}
    assert s["gemm"]["crossover"]["status"] == "skipped"
    assert s["transfer"]["status"] == "skipped" and s["transfer"]["reason"] == "no CUDA device"
    assert s["scaling"]["parts"]["gpu"]["status"] == "skipped"
    for wl in s["train"]["workloads"]:
        by = {r["name"]: r for r in wl["implementations"]}
        assert by["mlpx-gpu"]["status"] == "skipped" and by["mlpx-gpu"]["reason"] == "no CUDA device"
        assert by["torch-cuda"]["status"] == "skipped"
        assert wl["floors"]["gpu"]["status"] == "skipped"
    assert "skipped: no CUDA device" in (out / "report-tiny.md").read_text()


def test_train_section_reports_peers_and_ratios(tiny_run):
    _, _, doc = tiny_run
    wls = {w["name"]: w for w in doc["sections"]["train"]["workloads"]}
    assert set(wls) == {"digits", "mlp512"}
    for wl in wls.values():
        by = {r["name"]: r for r in wl["implementations"]}
        for name in ("mlpx-cpu", "sklearn-f64", "sklearn-f32"):
            r = by[name]
            assert r["status"] == "ok", r.get("reason")
            assert len(r["accuracy_runs"]) == wl["repeats"]
            assert r["ratio_to_floor"] > 0 and r["ratio_to_gemms_alone"] > 0
        try:
            import torch  # noqa: F401

            assert by["torch-cpu"]["status"] == "ok"
        except ImportError:
            assert by["torch-cpu"] == {**by["torch-cpu"], "status": "skipped", "reason": "torch not installed"}
        ratios = {(q["numerator"], q["denominator"]) for q in wl["ratios"]}
        assert {("mlpx-cpu", "sklearn-f64"), ("mlpx-cpu", "gemms-cpu"), ("mlpx-cpu", "floor-cpu")} <= ratios
        fl = wl["floors"]["cpu"]
        # the floor assumes the best rate, so it cannot exceed the measured GEMMs-alone time by much
        assert fl["floor_s_per_epoch"] <= 1.5 * fl["gemms_alone_s_per_epoch"]
    assert wls["digits"]["n_train"] == 192


def test_gemm_records_were_verified_before_timing(tiny_run):
    _, _, doc = tiny_run
    part = doc["sections"]["gemm"]["parts"]["cpu"]
    recs = part["records"]
    assert {r["kind"] for r in recs} == {"square", "step"}
    assert {r["dtype"] for r in recs} == {"float32", "float64"}
    for r in recs:
        assert r["status"] == "ok"
        assert r["verify"]["ok"] and r["verify"]["max_rel_error"] <= r["verify"]["tolerance"]
        assert r["gflops"] == pytest.approx(r["flops"] / r["time_s"]["median"] / 1e9, rel=1e-3)
        assert 0 < r["fraction_of_peak"] <= 1
    # the step products are exactly the engine's shapes at the workloads' batch sizes
    digits = [(r["op"], r["m"], r["n"], r["k"]) for r in recs if r["network"] == "digits" and r["dtype"] == "float32"
              and r["threads"] == doc["config"]["threads"]]
    expect = [(s["op"], s["m"], s["n"], s["k"]) for s in step_shapes((64, 128, 64, 32, 10), 64)]
    assert digits == expect


def test_step_shapes_match_dense_layers():
    shapes = step_shapes((784, 512, 10), 256)
    assert [(s["op"], s["layer"], s["m"], s["n"], s["k"]) for s in shapes] == [
        ("forward", 0, 256, 512, 784),
        ("forward", 1, 256, 10, 512),
        ("dW", 1, 512, 10, 256),
        ("dX", 1, 256, 512, 10),
        ("dW", 0, 784, 512, 256),  # no dX for the first layer
    ]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_verify_product_accepts_right_and_rejects_wrong_products(dtype):
    rng = np.random.default_rng(0)
    m, n, k = 40, 30, 200
    a = rng.standard_normal((k, m)).astype(dtype)  # used transposed
    b = rng.standard_normal((n, k)).astype(dtype)  # used transposed
    C = (a.T @ b.T).astype(dtype)
    rows, cols = np.arange(0, m, 3), np.arange(0, n, 2)
    # an independent float64 reference, written out as sums
    ref = np.array([[sum(float(a[p, i]) * float(b[j, p]) for p in range(k)) for j in cols] for i in rows])
    assert np.allclose(C[np.ix_(rows, cols)], ref, rtol=1e-4, atol=1e-3)
    err = verify_product(a, b, C[np.ix_(rows, cols)], True, True, rows, cols)
    assert err <= tolerance(dtype, k)
    wrong = (a.T @ b.T[::-1]).astype(dtype)  # rows of op(B) shuffled: a plausible bug
    assert verify_product(a, b, wrong[np.ix_(rows, cols)], True, True, rows, cols) > 100 * tolerance(dtype, k)


def test_validate_catches_bad_documents(tiny_run):
    _, _, doc = tiny_run
    bad = copy.deepcopy(doc)
    rec = bad["sections"]["gemm"]["parts"]["cpu"]["records"][0]
    rec["time_s"]["median"] = float("nan")
    rec["gflops"] = -1.0
    bad["sections"]["transfer"]["reason"] = None
    problems = validate(bad)
    assert any("not finite" in p for p in problems)
    assert any("not positive" in p for p in problems)
    assert any("transfer" in p for p in problems)
    bad2 = copy.deepcopy(doc)
    bad2["sections"]["gemm"]["parts"]["cpu"]["records"][0]["verify"]["ok"] = False
    assert any("without passing its check" in p for p in validate(bad2))
    assert validate({"schema_version": "0"})


def test_compare_reports_ratios(tiny_run, tmp_path, capsys):
    _, out, doc = tiny_run
    slower = copy.deepcopy(doc)
    for _, r in iter_records(slower):
        if "time_s" in r:
            for k in ("median", "min", "max", "q1", "q3"):
                r["time_s"][k] *= 2.0
    b = tmp_path / "b.json"
    b.write_text(json.dumps(slower))
    res = compare(doc, slower)
    assert res["rows"] and all(r["ratio"] == pytest.approx(2.0) for r in res["rows"])
    assert set(res["geomean"]) == {"gemm", "train", "scaling"}
    assert main(["--compare", str(out / "results-tiny.json"), str(b)]) == 0
    text = capsys.readouterr().out
    assert "| 2.000 |" in text and "Geometric mean" in text
    assert "2.000" in compare_files(out / "results-tiny.json", b)


def test_cli_rejects_unknown_section():
    with pytest.raises(SystemExit):
        main(["--only", "gemm,nope"])


def test_only_and_backend_select_sections(tmp_path):
    doc_path = tmp_path / "results-tiny.json"
    assert main(["--tiny", "--quiet", "--no-plots", "--only", "transfer", "--backend", "cpu", "--out", str(tmp_path)]) == 0
    doc = json.loads(doc_path.read_text())
    assert doc["sections"]["gemm"] == {"status": "skipped", "reason": "not selected (--only)"}
    assert doc["sections"]["transfer"]["status"] == "skipped"
    assert doc["gpu_status"]["reason"] == "--backend cpu"
    assert validate(doc) == []


# ---------------------------------------------------------------------------
# The GPU code paths, exercised on a NumPy stand-in for CuPy. This checks the
# suite's own GPU plumbing (operands, checks, CUDA-event timing, TF32 switch,
# transfers, crossover, skips for unsupported dtypes) on machines without a GPU;
# it says nothing about GPU speed, and the engine's CUDA kernels are not involved.
class _FakeArray(np.ndarray):
    def set(self, host):
        np.copyto(np.asarray(self).view(np.ndarray), host)

    def get(self, out=None):
        if out is None:
            return np.array(self).view(np.ndarray)
        np.copyto(out, self)
        return out


def _fake_cupy():
    import time
    import types

    def wrap(a):
        return np.asarray(a).view(_FakeArray)

    class Device:
        def __init__(self, i=0):
            self.id = i

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def synchronize(self):
            pass

    class Event:
        def record(self, stream=None):
            self.t = time.perf_counter()

        def synchronize(self):
            pass

    class RandomState:
        def __init__(self, seed):
            self.rng = np.random.default_rng(seed)

        def standard_normal(self, size, dtype=np.float64):
            return wrap(self.rng.standard_normal(size, dtype=dtype))

    compute = {"float32": 1}
    cp = types.ModuleType("cupy")
    cp.__version__ = "0.0-fake"
    cp.ndarray = _FakeArray
    cp.float32, cp.float64 = np.float32, np.float64
    cp.empty = lambda shape, dtype=np.float32: wrap(np.empty(shape, dtype))
    cp.zeros = lambda shape, dtype=np.float32: wrap(np.zeros(shape, dtype))
    cp.asarray = lambda x, dtype=None: wrap(np.asarray(x, dtype))
    cp.asnumpy = lambda x: np.array(x).view(np.ndarray)
    cp.matmul = lambda a, b, out=None: np.matmul(a, b, out=out)
    cp.random = types.SimpleNamespace(RandomState=RandomState)
    runtime = types.SimpleNamespace(
        getDeviceCount=lambda: 1,
        getDeviceProperties=lambda i: {"name": b"Fake GPU", "totalGlobalMem": 2**34, "major": 9, "minor": 0,
                                       "multiProcessorCount": 1},
        runtimeGetVersion=lambda: 12000,
        driverGetVersion=lambda: 12000,
    )
    stream = types.SimpleNamespace(synchronize=lambda: None)
    cp.cuda = types.SimpleNamespace(
        runtime=runtime, Device=Device, Event=Event, get_current_stream=lambda: stream,
        get_elapsed_time=lambda a, b: max((b.t - a.t) * 1e3, 1e-6),
        cublas=types.SimpleNamespace(), device=types.SimpleNamespace(),
    )
    core = types.ModuleType("cupy._core")
    core.get_compute_type = lambda dt: compute["float32"]
    core.set_compute_type = lambda dt, ct: compute.__setitem__("float32", ct)
    linalg = types.ModuleType("cupy._core._routines_linalg")
    linalg.COMPUTE_TYPE_TF32 = 7
    cp._core = core
    cupyx = types.ModuleType("cupyx")
    cupyx.empty_pinned = lambda shape, dtype=np.float32: np.empty(shape, dtype)
    return {"cupy": cp, "cupy._core": core, "cupy._core._routines_linalg": linalg, "cupyx": cupyx}, compute


def test_gpu_code_paths_on_a_numpy_stand_in(monkeypatch):
    import sys

    import mlpx.backends as B
    from benchmarks import make_config, run_suite
    from benchmarks.config import Workload
    from benchmarks.context import Context, Progress
    from benchmarks.train import _floor

    mods, compute = _fake_cupy()
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)  # bfloat16 unsupported here: must be skipped, not crash
    monkeypatch.setattr(B, "_GPU_CACHE", {})
    cfg = make_config("tiny", sections=("gemm", "transfer"), gemm_gpu_dtypes=("float32", "tf32", "float16", "bfloat16"))
    doc = run_suite(cfg, progress=False, write=False)
    assert doc["gpu_status"] == {"used": True, "reason": None}
    assert doc["machine"]["gpu"]["name"] == "Fake GPU"
    g = doc["sections"]["gemm"]
    assert g["status"] == "ok", g
    recs = g["parts"]["gpu"]["records"]
    by_dtype = {r["dtype"]: r for r in recs if r["kind"] == "square"}
    for dt in ("float32", "tf32", "float16"):
        assert by_dtype[dt]["status"] == "ok" and by_dtype[dt]["verify"]["ok"], by_dtype[dt]
        assert by_dtype[dt]["threads"] is None
    assert by_dtype["bfloat16"]["status"] == "skipped" and "bfloat16" in by_dtype["bfloat16"]["reason"]
    assert compute["float32"] == 1  # the TF32 compute type was restored after use
    assert g["crossover"]["status"] == "ok" and len(g["crossover"]["records"]) == len(cfg.crossover_batches)
    t = doc["sections"]["transfer"]
    assert t["status"] == "ok"
    kinds = {(r["direction"], r["memory"]) for r in t["parts"]["gpu"]["records"]}
    assert kinds == {("h2d", "pageable"), ("h2d", "pinned"), ("d2h", "pageable"), ("d2h", "pinned")}
    assert validate(doc) == []
    # the train section's GPU floor: peak from the gemm records, GEMMs alone timed on the device
    ctx = Context(cfg=cfg, gpu_reason=None, progress=Progress(0, enabled=False))
    wl = Workload("digits", (64, 128, 64, 32, 10), 64, "digits", 150, 10, 1, 1)
    fl = _floor(ctx, wl, 150, "gpu")
    assert fl["status"] == "ok" and fl["floor_s_per_epoch"] > 0 and fl["gemms_alone_s_per_epoch"] > 0
