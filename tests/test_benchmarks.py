"""The benchmark suite's quick path at tiny sizes: schema, numbers, skips, checks, --compare.

One tiny run (``python -m benchmarks --tiny``, in process) is shared by the tests,
with what it printed; nothing here asserts on a timing, only on the structure and on
correctness.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import re
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

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
    logs = _logs_of(out)
    logs.mkdir()
    stdout, stderr = io.StringIO(), io.StringIO()  # not terminals: the progress steps come as plain lines
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        rc = main(["--tiny", "--out", str(out)])
    (logs / "stdout.txt").write_text(stdout.getvalue())
    (logs / "stderr.txt").write_text(stderr.getvalue())
    doc = json.loads((out / "results-tiny.json").read_text())
    return rc, out, doc


def _logs_of(out: Path) -> Path:
    return out.with_name(out.name + "-logs")


@pytest.fixture(scope="module")
def tiny_logs(tiny_run):
    """What the tiny run printed: (stdout lines, stderr lines)."""
    logs = _logs_of(tiny_run[1])
    return (logs / "stdout.txt").read_text().splitlines(), (logs / "stderr.txt").read_text().splitlines()


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
    allowed_zero = {"max_rel_error", "layer", "load_avg_start", "load_avg_end", "accuracy", "accuracy_runs",
                    "accuracy_float32", "max_abs_score_difference"}

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
        if key in ("accuracy_delta_pp", "accuracy_delta_range_pp"):
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
        # the precision rows are there, skipped for the same reason as the float32 GPU row
        for p in ("tf32", "bf16", "fp16"):
            r = by[f"mlpx-gpu-{p}"]
            assert r == {"name": f"mlpx-gpu-{p}", "device": "gpu", "status": "skipped", "reason": "no CUDA device",
                         "precision": p}
        assert by["mlpx-gpu"]["precision"] == "float32" and by["mlpx-cpu"]["precision"] == "float32"
        assert "precision" not in by["sklearn-f64"]
        modes = {m["precision"]: m for m in wl["precision_modes"]}
        assert set(modes) == {"tf32", "bf16", "fp16"}
        for p, m in modes.items():
            assert m == {"precision": p, "name": f"mlpx-gpu-{p}", "reference": "mlpx-gpu", "status": "skipped",
                         "reason": "no CUDA device"}
        assert not any(q["numerator"].startswith("mlpx-gpu") for q in wl["ratios"])
    report = (out / "report-tiny.md").read_text()
    assert "skipped: no CUDA device" in report
    assert "#### digits: GPU precision modes" in report and "#### mlp512: GPU precision modes" in report
    assert "*mlpx-gpu-tf32, mlpx-gpu-bf16, mlpx-gpu-fp16: skipped: no CUDA device*" in report


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


# ---------------------------------------------------------------------------
# GPU precision modes: rows, keyword, ratios and accuracy differences, schema, report.
def test_precision_rows_in_every_workload():
    from benchmarks import make_config
    from benchmarks.train import IMPLEMENTATIONS, MlpxImpl

    for mode in ("tiny", "quick", "full"):
        cfg = make_config(mode)
        for wl in cfg.workloads:
            impls = IMPLEMENTATIONS(wl, cfg)
            names = [i.name for i in impls]
            assert {"mlpx-gpu", "mlpx-gpu-tf32", "mlpx-gpu-bf16", "mlpx-gpu-fp16", "torch-cuda"} <= set(names)
            by = {i.name: i for i in impls}
            assert by["mlpx-gpu"].precision == "float32"
            assert [(by[f"mlpx-gpu-{p}"].device, by[f"mlpx-gpu-{p}"].precision) for p in ("tf32", "bf16", "fp16")] \
                == [("gpu", "tf32"), ("gpu", "bf16"), ("gpu", "fp16")]
    assert "mlpx-gpu-bf16" not in [i.name for i in IMPLEMENTATIONS(cfg.workloads[0], make_config(
        "tiny", train_gpu_precisions=("tf32",)))]
    with pytest.raises(ValueError):
        make_config("tiny", train_gpu_precisions=("fp8",))
    with pytest.raises(ValueError):
        MlpxImpl("cpu", precision="bf16")  # the modes are GPU-only


def _gpu_ctx():
    from benchmarks import make_config
    from benchmarks.context import Context, Progress

    return Context(cfg=make_config("tiny"), gpu_reason=None, progress=Progress(0, enabled=False))


def test_precision_rows_skip_gpus_without_their_tensor_cores(monkeypatch):
    import benchmarks.train as T

    monkeypatch.setattr(T, "_compute_capability", lambda: 75)  # a Turing GPU: fp16 tensor cores only
    ctx = _gpu_ctx()
    reasons = {p: T.MlpxImpl("gpu", precision=p).unavailable(ctx) for p in ("tf32", "bf16", "fp16")}
    assert reasons["fp16"] is None
    assert reasons["tf32"] == "tf32 needs tensor cores of compute capability >= 8.0; this GPU has 7.5"
    assert reasons["bf16"].startswith("bf16 needs tensor cores")
    assert T.MlpxImpl("gpu").unavailable(ctx) is None
    monkeypatch.setattr(T, "_compute_capability", lambda: 90)
    assert all(T.MlpxImpl("gpu", precision=p).unavailable(ctx) is None for p in ("tf32", "bf16", "fp16"))
    monkeypatch.setattr(T, "_compute_capability", lambda: None)  # unknown: the run decides
    assert T.MlpxImpl("gpu", precision="bf16").unavailable(ctx) is None


class _RecordingMLP:
    """Stands in for mlpx.MLP: records its keywords, predicts class 0, may flip the compute type."""

    calls: list = []
    on_fit = None

    def __init__(self, sizes, **kw):
        type(self).calls.append(kw)
        self.backend = type("B", (), {"synchronize": lambda self: None})()

    def fit(self, X, y, **kw):
        if type(self).on_fit:
            type(self).on_fit()

    def predict(self, X):
        return np.zeros(len(X), dtype=np.int64)


def test_mlpx_impl_passes_the_precision_keyword(monkeypatch):
    import mlpx
    from benchmarks.config import Workload
    from benchmarks.train import MlpxImpl

    monkeypatch.setattr(mlpx, "MLP", _RecordingMLP)
    _RecordingMLP.calls = []
    wl = Workload("t", (4, 3, 2), 2, "synthetic", 4, 4, 1, 1)
    data = (np.zeros((4, 4), np.float32), np.zeros(4, np.int64), np.zeros((4, 4), np.float32),
            np.array([0, 0, 1, 1]))
    for impl in (MlpxImpl("cpu"), MlpxImpl("gpu"), MlpxImpl("gpu", precision="tf32"), MlpxImpl("gpu", precision="fp16")):
        dt, acc = impl.run(data, wl, 1, seed=3)
        assert acc == 0.5 and dt >= 0
    common = {"activation": "relu", "output": "softmax", "dtype": "float32", "seed": 3}
    assert _RecordingMLP.calls == [
        {**common, "backend": "cpu"},
        {**common, "backend": "gpu"},  # float32: the engine default, keyword left out
        {**common, "backend": "gpu", "precision": "tf32"},
        {**common, "backend": "gpu", "precision": "fp16"},
    ]


def test_mlpx_impl_rejects_a_mode_that_leaks_tf32(monkeypatch):
    """CuPy's compute type is process-wide: a leak would turn later float32 rows into TF32."""
    import sys
    import types

    import mlpx
    from benchmarks.config import Workload
    from benchmarks.train import MlpxImpl

    state = {"float32": 1}
    core = types.ModuleType("cupy._core")
    core.get_compute_type = lambda dt: state["float32"]
    core.set_compute_type = lambda dt, ct: state.__setitem__("float32", ct)
    cp = types.ModuleType("cupy")
    cp._core = core
    monkeypatch.setitem(sys.modules, "cupy", cp)
    monkeypatch.setitem(sys.modules, "cupy._core", core)
    monkeypatch.setattr(mlpx, "MLP", _RecordingMLP)
    monkeypatch.setattr(_RecordingMLP, "on_fit", staticmethod(lambda: state.__setitem__("float32", 7)))
    wl = Workload("t", (4, 3, 2), 2, "synthetic", 4, 4, 1, 1)
    data = (np.zeros((4, 4), np.float32), np.zeros(4, np.int64), np.zeros((4, 4), np.float32), np.zeros(4, np.int64))
    with pytest.raises(RuntimeError, match="compute type"):
        MlpxImpl("gpu", precision="tf32").run(data, wl, 1, seed=0)
    assert state["float32"] == 1  # restored
    monkeypatch.setattr(_RecordingMLP, "on_fit", None)
    assert MlpxImpl("gpu", precision="tf32").run(data, wl, 1, seed=0)[1] == 1.0


def _hand_results():
    """Three rounds of made-up timings and accuracies, and what they must give (by hand).

    tf32 / float32 per round: 0.05/0.10 = 0.5, 0.04/0.12 = 1/3, 0.055/0.11 = 0.5 -> median 0.5,
    range [1/3, 0.5], speed-up 2. tf32 / torch-cuda: 0.05/0.08 = 0.625, 0.04/0.08 = 0.5,
    0.055/0.10 = 0.55 -> median 0.55. Accuracy: median 0.92 vs 0.91 -> +1 pp; per round
    0.89-0.90, 0.92-0.92, 0.93-0.91 -> -1, 0, +2 pp. bf16 / float32: 0.15/0.10, 0.12/0.12,
    0.132/0.11 = 1.5, 1.0, 1.2 -> median 1.2 (slower), speed-up 1/1.2; accuracy 0.90 -> -1 pp.
    """
    times = {
        "mlpx-gpu": [0.10, 0.12, 0.11],
        "mlpx-gpu-tf32": [0.05, 0.04, 0.055],
        "mlpx-gpu-bf16": [0.15, 0.12, 0.132],
        "torch-cuda": [0.08, 0.08, 0.10],
    }
    accs = {
        "mlpx-gpu": [0.90, 0.92, 0.91],
        "mlpx-gpu-tf32": [0.89, 0.92, 0.93],
        "mlpx-gpu-bf16": [0.90, 0.90, 0.89],
        "torch-cuda": [0.80, 0.80, 0.80],
    }
    med_t = {"mlpx-gpu": 0.11, "mlpx-gpu-tf32": 0.05, "mlpx-gpu-bf16": 0.132, "torch-cuda": 0.08}
    med_a = {"mlpx-gpu": 0.91, "mlpx-gpu-tf32": 0.92, "mlpx-gpu-bf16": 0.90, "torch-cuda": 0.80}
    results = {}
    for name in times:
        results[name] = {"name": name, "device": "gpu", "status": "ok", "reason": None,
                         "s_per_epoch": med_t[name], "accuracy": med_a[name], "accuracy_runs": accs[name]}
        if name.startswith("mlpx"):
            results[name]["precision"] = name.rsplit("-", 1)[1] if name != "mlpx-gpu" else "float32"
    results["mlpx-gpu-fp16"] = {"name": "mlpx-gpu-fp16", "device": "gpu", "status": "error",
                                "reason": "RuntimeError: boom", "precision": "fp16"}
    return results, times


def test_precision_modes_ratios_and_accuracy_differences():
    from benchmarks.config import Workload
    from benchmarks.train import _ratios, precision_modes

    results, times = _hand_results()
    modes = {m["precision"]: m for m in precision_modes(results, times)}
    assert list(modes) == ["tf32", "bf16", "fp16"]
    tf = modes["tf32"]
    assert tf["status"] == "ok" and tf["reason"] is None and tf["reference"] == "mlpx-gpu"
    assert tf["s_per_epoch"] == 0.05
    assert tf["ratio_to_float32"] == pytest.approx(0.5)
    assert tf["round_range"] == pytest.approx([1 / 3, 0.5])
    assert tf["speedup_vs_float32"] == pytest.approx(2.0)
    assert tf["faster_than_float32"] is True
    assert tf["ratio_to_torch_cuda"] == pytest.approx(0.55)
    assert tf["torch_round_range"] == pytest.approx([0.5, 0.625])
    assert (tf["accuracy"], tf["accuracy_float32"]) == (0.92, 0.91)
    assert tf["accuracy_delta_pp"] == pytest.approx(1.0)
    assert tf["accuracy_delta_range_pp"] == pytest.approx([-1.0, 2.0])
    bf = modes["bf16"]
    assert bf["ratio_to_float32"] == pytest.approx(1.2)
    assert bf["speedup_vs_float32"] == pytest.approx(1 / 1.2)
    assert bf["faster_than_float32"] is False
    assert bf["accuracy_delta_pp"] == pytest.approx(-1.0)
    assert bf["accuracy_delta_range_pp"] == pytest.approx([-2.0, 0.0])
    assert modes["fp16"] == {"precision": "fp16", "name": "mlpx-gpu-fp16", "reference": "mlpx-gpu",
                             "status": "error", "reason": "RuntimeError: boom"}
    # the same pairs in the workload's ratio list, with the mlp512 targets (<= 1.0)
    wl = Workload("mlp512", (784, 512, 512, 10), 256, "synthetic", 10, 10, 1, 3)
    q = {(r["numerator"], r["denominator"]): r for r in _ratios(wl, results, times, refs={})}
    assert q[("mlpx-gpu-tf32", "mlpx-gpu")]["ratio"] == pytest.approx(0.5)
    assert q[("mlpx-gpu-tf32", "mlpx-gpu")]["met"] is True and q[("mlpx-gpu-tf32", "mlpx-gpu")]["target"] == 1.0
    assert q[("mlpx-gpu-bf16", "mlpx-gpu")]["met"] is False
    assert q[("mlpx-gpu-tf32", "torch-cuda")]["ratio"] == pytest.approx(0.55)
    assert q[("mlpx-gpu-tf32", "torch-cuda")]["accuracy_delta_pp"] == pytest.approx(12.0)
    assert "target" not in q[("mlpx-gpu-tf32", "torch-cuda")]
    assert not any(a == "mlpx-gpu-fp16" for a, _ in q)
    # no float32 reference: the comparison is skipped, and says why
    results["mlpx-gpu"].update(status="error", reason="RuntimeError: out of memory")
    for m in precision_modes(results, times)[:2]:
        assert m["status"] == "skipped"
        assert m["reason"] == "no float32 reference (mlpx-gpu error: RuntimeError: out of memory)"
        assert "ratio_to_float32" not in m


def _with_hand_modes(doc):
    """``doc`` with its first workload's precision rows and modes replaced by _hand_results'."""
    from benchmarks.train import precision_modes

    doc = copy.deepcopy(doc)
    wl = doc["sections"]["train"]["workloads"][0]
    results, times = _hand_results()
    stats = {"median": 0.1, "min": 0.1, "max": 0.1, "q1": 0.1, "q3": 0.1, "repeats": 3, "number": 1}
    by = {r["name"]: r for r in wl["implementations"]}
    for name, rec in results.items():
        if rec["status"] == "ok":
            rec.update(key=f"train/{wl['name']}/{name}", time_s=stats, samples_per_s=1.0, dtype="float32",
                       threads=None)
        by[name] = rec
    wl["implementations"] = list(by.values())
    wl["precision_modes"] = precision_modes(results, times)
    return doc


def test_schema_accepts_precision_modes_and_checks_them(tiny_run):
    _, _, doc = tiny_run
    good = _with_hand_modes(doc)
    assert validate(good) == []

    def broken(change):
        bad = copy.deepcopy(good)
        change(bad["sections"]["train"]["workloads"][0])
        return validate(bad)

    def mode(wl, p):
        return next(m for m in wl["precision_modes"] if m["precision"] == p)

    assert any("not 1 / ratio_to_float32" in e for e in broken(lambda wl: mode(wl, "tf32").update(
        speedup_vs_float32=1.5)))
    assert any("accuracy_delta_pp" in e for e in broken(lambda wl: mode(wl, "tf32").update(accuracy_delta_pp=3.0)))
    assert any("faster_than_float32" in e for e in broken(lambda wl: mode(wl, "bf16").update(
        faster_than_float32=True)))
    assert any("without a reason" in e for e in broken(lambda wl: mode(wl, "fp16").update(reason=None)))
    assert any("missing" in e for e in broken(lambda wl: mode(wl, "tf32").pop("accuracy_float32")))
    assert any("not in" in e for e in broken(lambda wl: mode(wl, "tf32").update(precision="fp8")))
    assert any("precision_modes must be a list" in e for e in broken(lambda wl: wl.pop("precision_modes")))
    assert any("accuracy outside" in e for e in broken(lambda wl: mode(wl, "tf32").update(accuracy_float32=91.0)))
    assert any("unknown precision" in e for e in broken(lambda wl: wl["implementations"][0].update(precision="x")))
    # the per-round accuracy range may be negative (like accuracy_delta_pp)
    assert mode(good["sections"]["train"]["workloads"][0], "bf16")["accuracy_delta_range_pp"][0] < 0
    # a 1.0 document (no precision fields) still validates; an unknown version does not
    old = copy.deepcopy(doc)
    old["schema_version"] = "1.0"
    for wl in old["sections"]["train"]["workloads"]:
        del wl["precision_modes"]
    assert validate(old) == []
    old["schema_version"] = "0.9"
    assert any("schema_version" in e for e in validate(old))
    assert SCHEMA_VERSION == "1.4"


def test_report_shows_precision_modes(tiny_run):
    from benchmarks.report import markdown

    _, _, doc = tiny_run
    text = markdown(_with_hand_modes(doc), {}, None)
    name = doc["sections"]["train"]["workloads"][0]["name"]
    section = text.split(f"#### {name}: GPU precision modes")[1].split("###")[0]
    rows = {line.split(" | ")[0].strip("| "): line for line in section.splitlines() if line.startswith("| ")}
    # speed-up 2.00 (rounds: 1 / 0.5 = 2.00 to 1 / (1/3) = 3.00), 0.55 to torch, accuracy +1.00 [-1, +2]
    assert rows["tf32"] == ("| tf32 | mlpx-gpu-tf32 | 50 ms | **2.00×** (faster) | 2.00–3.00× | 0.55 | "
                            "92.00 % (91.00 %) | +1.00 [-1.00, +2.00] |")
    assert "**0.83×** (not faster)" in rows["bf16"] and "-1.00 [-2.00, +0.00]" in rows["bf16"]
    assert "error: RuntimeError: boom" in rows["fp16"]
    summary = text.split("## GEMM")[0]
    assert f"| {name} | tf32 | 2.00× | +1.00 |" in summary
    # a 1.0 results file (no precision_modes) still renders, without the table
    old = copy.deepcopy(doc)
    for wl in old["sections"]["train"]["workloads"]:
        del wl["precision_modes"]
    assert "GPU precision modes" not in markdown(old, {}, None)


@pytest.mark.gpu
def test_precision_modes_train_on_the_gpu():
    """The precision rows on a real GPU: they run, their accuracy tracks float32 run by run.

    Same seed per round, so each mode and float32 start from the same weights and see the
    same batches: their test accuracies must agree within a few points (a broken loss
    scaler or a wrong cast shows up as a large gap). Nothing is asserted about speed.
    """
    import cupy
    from cupy import _core

    from benchmarks import make_config, run_suite
    from benchmarks.config import Workload
    from benchmarks.train import _MIN_CC, _compute_capability

    wl = Workload("mlp512", (784, 512, 512, 10), 256, "synthetic", 4096, 1000, 2, 2)  # 32 Adam steps per run
    cfg = make_config("tiny", sections=("train",), devices=("gpu",), workloads=(wl,))
    compute_before = _core.get_compute_type(cupy.float32)
    doc = run_suite(cfg, progress=False, write=False)
    assert _core.get_compute_type(cupy.float32) == compute_before  # no mode left TF32 switched on
    assert validate(doc) == []
    w = doc["sections"]["train"]["workloads"][0]
    pool = w["memory"]["gpu"]
    params_mib = sum(a * b + b for a, b in zip(wl.sizes[:-1], wl.sizes[1:])) * 4 / 2**20
    # params, grads, Adam's two moments and its scratch at least; far below a GiB here
    assert pool["status"] == "ok" and 5 * params_mib <= pool["pool_peak_mib"] < 1024, pool
    by = {r["name"]: r for r in w["implementations"]}
    f32 = by["mlpx-gpu"]
    assert f32["status"] == "ok", f32.get("reason")
    assert f32["accuracy"] > 0.5  # the reference itself learned something
    modes = {m["precision"]: m for m in w["precision_modes"]}
    cc = _compute_capability()
    for p in ("tf32", "bf16", "fp16"):
        m, r = modes[p], by[f"mlpx-gpu-{p}"]
        if cc is not None and cc < _MIN_CC[p]:
            assert m["status"] == "skipped" and "compute capability" in m["reason"]
            continue
        assert r["status"] == "ok" and m["status"] == "ok", (r.get("reason"), m.get("reason"))
        delta = 100.0 * (r["accuracy"] - f32["accuracy"])
        per_round = [100.0 * (a - b) for a, b in zip(r["accuracy_runs"], f32["accuracy_runs"])]
        assert m["accuracy_delta_pp"] == pytest.approx(delta)
        assert m["accuracy_delta_range_pp"] == pytest.approx([min(per_round), max(per_round)])
        assert abs(delta) <= 3.0 and max(abs(d) for d in per_round) <= 5.0, (p, per_round)
        assert m["speedup_vs_float32"] * m["ratio_to_float32"] == pytest.approx(1.0)
        lo, hi = m["round_range"]
        assert lo <= m["ratio_to_float32"] <= hi
        assert ("ratio_to_torch_cuda" in m) == (by["torch-cuda"]["status"] == "ok")
        assert any(q["numerator"] == f"mlpx-gpu-{p}" and q["denominator"] == "mlpx-gpu" for q in w["ratios"])


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
    assert set(res["geomean"]) == {"gemm", "train", "scaling", "search", "streaming"}
    assert main(["--compare", str(out / "results-tiny.json"), str(b)]) == 0
    text = capsys.readouterr().out
    assert "| 2.000 |" in text and "Geometric mean" in text
    assert "2.000" in compare_files(out / "results-tiny.json", b)


def test_streaming_section_measures_each_format_and_cleans_up(tiny_run):
    from pathlib import Path

    _, out, doc = tiny_run
    s = doc["sections"]["streaming"]
    assert s["status"] == "ok", s.get("reason")
    assert [r["format"] for r in s["records"]] == ["zarr", "memmap"]
    for r in s["records"]:
        assert r["status"] == "ok", r.get("reason")
        assert r["peak_anon_bytes"] >= r["baseline_anon_bytes"] > 0 and r["ratio_to_memory"] > 0
        assert [t["met"] for t in r["targets"]] == [t["value"] <= t["bound"] for t in r["targets"]]
        assert not any(t["stated_for_this_size"] for t in r["targets"])  # tiny is not the 4 GiB of the targets
    assert not Path(s["scratch_dir"]).exists()  # the data was deleted
    assert "## Streaming: training from data on disk" in (out / "report-tiny.md").read_text()
    bad = copy.deepcopy(doc)
    bad["sections"]["streaming"]["records"][0]["targets"][1]["met"] = not s["records"][0]["targets"][1]["met"]
    assert any("met disagrees" in e for e in validate(bad))


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
    cp.__version__ = "14.2.0"  # a supported CuPy (the backend refuses < 14)
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


def test_gpu_code_paths_on_a_numpy_stand_in(monkeypatch, capsys):
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
    doc = run_suite(cfg, progress=True, write=False)
    steps = [m.groups() for m in map(_STEP.match, capsys.readouterr().err.splitlines()) if m]
    # with a GPU the counter still counts every step: GPU GEMMs, the crossover, the transfers
    assert [int(n) for n, *_ in steps] == list(range(1, int(steps[0][1]) + 1))
    assert {s for _, _, s, _ in steps} == {"gemm", "transfer"} and any("crossover" in d for *_, d in steps)
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


def test_kernel_variants_table(capsys):
    """``python -m benchmarks.kernels`` times every case and prints one row per kernel."""
    pytest.importorskip("numba")
    from benchmarks.kernels import cases, main

    main(["--rounds", "1", "--reps", "2"])
    rows = [l for l in capsys.readouterr().out.splitlines() if l.startswith("| ") and "µs" in l]
    assert len(rows) == len(cases(np.random.default_rng(0)))
    for row in rows:
        numpy_us = float(row.split("|")[2].split()[0])
        assert numpy_us > 0


def test_arrayapi_table_and_profile(capsys):
    """``python -m benchmarks.arrayapi`` prints one row per backend and, with --profile,
    the own time grouped by where the code lives and the costliest functions."""
    from benchmarks.arrayapi import main

    assert main(["--epochs", "1", "--rounds", "1", "--only", "numpy,array-api-strict",
                 "--profile", "array-api-strict", "--top", "5"]) == 0
    out = capsys.readouterr().out
    rows = [l for l in out.splitlines() if l.startswith(("| numpy (", "| array-api-strict ("))]
    assert len(rows) == 2
    ratio = float(rows[1].split("|")[4])
    assert ratio > 0 and rows[0].split("|")[4].strip() == "1.0"
    assert "| own time in |" in out and "| mlpx |" in out and "array_api_strict" in out
    assert len([l for l in out.splitlines() if l.startswith("| `")]) == 5


def test_plain_torch_step_computes_what_mlpx_computes_on_torch():
    """The yardstick row of benchmarks.arrayapi: the same step written in PyTorch reaches
    the weights mlpx reaches on backend="array-api:torch", so the time difference
    between the two is mlpx's own."""
    pytest.importorskip("torch", reason="torch is not installed (pip install \"mlpx[test]\")")
    from benchmarks.arrayapi import BACKENDS, _data, _fit, _model, torch_floor_fit

    seconds, flat = torch_floor_fit(1)
    X, y, _, _ = _data()
    model = _model(BACKENDS["torch"], "float32")
    _fit(model, X, y, 1)
    assert seconds > 0
    np.testing.assert_allclose(flat, model.get_flat_params(), rtol=0, atol=1e-6)


def test_cpu_blas_providers_compared_on_the_step_products(tiny_run):
    """gemm.blas: every installed provider, checked before timing, the fastest named right."""
    from mlpx.backends import blas

    _, out, doc = tiny_run
    b = doc["sections"]["gemm"]["blas"]
    assert b["status"] == "ok"
    installed = blas.available_providers()
    assert [p["name"] for p in b["providers"]] == installed and installed[0] == "numpy"
    assert set(b["not_installed"]) == set(blas.BLAS_PROVIDERS) - set(installed)
    nets = doc["config"]["gemm_step_networks"]
    got = {(r["network"], r["provider"]) for r in b["records"] if r["status"] == "ok"}
    assert got == {(n, p) for n in nets for p in installed}
    for net in nets:
        recs = [r for r in b["records"] if r["network"] == net]
        numpy_t = next(r for r in recs if r["provider"] == "numpy")["time_s"]["median"]
        for r in recs:
            assert r["max_rel_error"] < 1e-5  # float32 step products against the float64 reference
            assert r["ratio_to_numpy"] == pytest.approx(r["time_s"]["median"] / numpy_t, rel=2e-3)  # JSON rounds
        assert b["fastest"][net] == min(recs, key=lambda r: r["time_s"]["median"])["provider"]
    report = (out / "report-tiny.md").read_text()
    assert "### CPU BLAS providers" in report and f"{nets[0]} → {b['fastest'][nets[0]]}" in report
    # the validator checks the comparison
    bad = copy.deepcopy(doc)
    recs = bad["sections"]["gemm"]["blas"]["records"]
    slowest = max((r for r in recs if r["network"] == nets[0]), key=lambda r: r["time_s"]["median"])
    bad["sections"]["gemm"]["blas"]["fastest"][nets[0]] = slowest["provider"]
    if len(installed) > 1:
        assert any("is not the fastest measured" in p for p in validate(bad))
    del bad["sections"]["gemm"]["blas"]
    assert any("gemm.blas needs a status" in p for p in validate(bad))
    bad["schema_version"] = "1.1"  # older files have no comparison and stay valid
    assert not any("blas" in p for p in validate(bad))


def test_the_suite_process_never_loads_another_blas():
    """The providers are compared in a child: the suite's own process keeps NumPy's BLAS only.

    (With oneMKL's OpenMP runtime loaded, the later train rows measured differently.)
    """
    from mlpx.backends import blas

    if blas.installed_providers() == ["numpy"]:
        pytest.skip("no other CPU BLAS installed (pip install mkl blis)")
    code = textwrap.dedent("""
        import sys
        from benchmarks import make_config, run_suite
        doc = run_suite(make_config("tiny", sections=("gemm",), gemm_step_networks=("digits",)),
                        progress=False, make_plots=False, write=False)
        b = doc["sections"]["gemm"]["blas"]
        assert b["status"] == "ok", b
        assert len(b["providers"]) > 1, b["providers"]
        maps = open("/proc/self/maps").read()
        assert "libmkl_rt" not in maps and "blis" not in sys.modules, "a provider was loaded in the suite"
        print("isolated")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and "isolated" in out.stdout, out.stderr[-2000:]


def test_installed_providers_agree_with_loading():
    from mlpx.backends import blas

    assert blas.installed_providers() == blas.available_providers()


# ------------------------------------------------------- progress, summary, run folder
_STEP = re.compile(r"^\[(\d+)/(\d+)\] (\w+): (.+?)  \(at \d+ s\)$")
_BEAT = re.compile(r"^\[(\d+)/(\d+)\] (\w+): (.+): still running \(\d+ s\)$")


def test_progress_counts_every_step_with_its_section_and_label(tiny_run, tiny_logs):
    from benchmarks.schema import SECTIONS

    _, err = tiny_logs
    steps = [m.groups() for m in map(_STEP.match, err) if m]
    assert steps, err[:20]
    totals = {int(t) for _, t, _, _ in steps}
    assert len(totals) == 1  # announced once, never changed
    # every step announced once, in order, and the count reached exactly the total
    assert [int(n) for n, _, _, _ in steps] == list(range(1, totals.pop() + 1))
    assert {s for _, _, s, _ in steps} <= set(SECTIONS) and all(d.strip() for _, _, _, d in steps)
    # the sections' steps come in section order, each section's in one block
    order = [s for _, _, s, _ in steps]
    assert order == sorted(order, key=SECTIONS.index)
    others = [ln for ln in err if ln.startswith("[") and not (_STEP.match(ln) or _BEAT.match(ln))]
    assert not others, others


def test_summary_says_met_or_not_met_beside_each_target_and_counts_them(tiny_run, tiny_logs):
    from benchmarks.targets import targets

    rc, out, doc = tiny_run
    lines, _ = tiny_logs
    assert lines[0] == f"mlpx benchmarks (tiny): writing to {out}"  # the folder first ...
    assert f"results in {out}" in lines  # ... and at the end
    want = targets(doc)
    assert want  # the tiny run has train and search targets
    rows = [ln for ln in lines if re.match(r"^  (met|not met) +\w", ln)]
    assert len(rows) == len(want)
    for row, t in zip(rows, want):
        assert row.split()[0:2 if not t.met else 1] == (["not", "met"] if not t.met else ["met"])
        assert t.what in row and f"(target <= {t.bound})" in row
    missed = sum(not t.met for t in want)
    assert lines[-1] == (f"all {len(want)} targets met" if not missed else f"{missed} of {len(want)} targets not met")
    assert rc == 0  # an unmet target is reported by the last line, not the exit status
    assert f"Targets: {lines[-1]}." in (out / "report-tiny.md").read_text()


def test_targets_read_from_a_document():
    from benchmarks.targets import summary_lines, targets

    doc = {"mode": "full", "sections": {
        "train": {"status": "ok", "workloads": [{"name": "mlp512", "ratios": [
            {"numerator": "a", "denominator": "b", "ratio": 0.5, "target": 0.9, "met": True},
            {"numerator": "a", "denominator": "c", "ratio": 1.2}]}]},
        "search": {"status": "ok", "grid": {"status": "ok", "ratios": [
            {"numerator": "s", "denominator": "n", "ratio": 0.25, "target": 0.2, "met": False}]},
            "members": {"parts": {"gpu": {"status": "ok", "target": {"ratio": 1.5, "bound": 2.0, "met": True,
                                                                      "up_to_members": 64}}}}}}}
    assert [(t.measured, t.bound, t.met) for t in targets(doc)] == [(0.5, 0.9, True), (0.25, 0.2, False),
                                                                    (1.5, 2.0, True)]
    lines = summary_lines(doc)
    assert lines[0] == "targets:" and lines[-1] == "1 of 3 targets not met"
    assert lines[2].startswith("  not met  search grid: s / n = 0.250")
    assert summary_lines({"mode": "quick", "sections": {}}) == ["no targets measured in this run"]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_heartbeat_in_a_log_and_spinner_on_a_terminal():
    from benchmarks.progress import SPINNER, Progress

    log = io.StringIO()
    p = Progress(2, stream=log, heartbeat_s=0.05)
    p.section = "search"
    p.step("grid sklearn-n_jobs2 (round 1)")
    time.sleep(0.6)  # a long, silent step
    p.step("members cpu: one Sequential")
    p.close()
    lines = log.getvalue().splitlines()
    assert _STEP.match(lines[0]).groups()[:3] == ("1", "2", "search")
    beats = [ln for ln in lines if _BEAT.match(ln)]
    assert len(beats) >= 3 and all("grid sklearn-n_jobs2 (round 1): still running" in b for b in beats)
    assert _STEP.match(lines[-1]).groups()[0] == "2" and "\r" not in log.getvalue()
    assert not any(t.name == "benchmarks-progress" for t in threading.enumerate())  # stopped by close
    with pytest.raises(ValueError):
        Progress(1, stream=log).step("")
    pytest.importorskip("tqdm")
    term = _Terminal()
    p = Progress(1, stream=term, spin_s=0.02)
    p.step("a long step")
    time.sleep(0.3)
    p.close()
    frames = set(re.findall(r"([|/\-\\]) \d+ s", term.getvalue()))
    assert len(frames) >= 2 and frames <= set(SPINNER)  # the spinner turned while the step ran


def test_settle_advances_the_count_past_steps_that_did_not_run():
    from benchmarks.progress import Progress

    p = Progress(5, enabled=False)
    p.step("one")
    p.settle(4)
    p.settle(2)  # never backwards
    assert p.n == 4
    p.close()


def test_new_run_folders_are_fresh_and_ignored_by_git(tmp_path):
    import datetime as dt

    from benchmarks.run_folder import RUNS_ROOT, new_run_folder

    now = dt.datetime(2026, 1, 7, 14, 15, 2)
    a, b = new_run_folder("quick", tmp_path, now), new_run_folder("quick", tmp_path, now)
    assert a.name == "20260107-141502-quick" and b.name == "20260107-141502-quick-2"
    assert a.is_dir() and not any(a.iterdir())
    root = Path(__file__).resolve().parents[1]
    if shutil.which("git") and (root / ".git").exists():
        probe = RUNS_ROOT / "x" / "results.json"
        res = subprocess.run(["git", "-C", str(root), "check-ignore", "-q", str(probe)])
        assert res.returncode == 0  # benchmarks/runs/ is outside version control


def test_update_reference_conflicts_with_out(tmp_path):
    from benchmarks import make_config, run_suite

    with pytest.raises(SystemExit):
        main(["--tiny", "--update-reference", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        main(["--gpu-check", "--update-reference"])
    with pytest.raises(ValueError):
        run_suite(make_config("tiny", sections=()), out_dir=tmp_path, update_reference=True, progress=False)


def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


@pytest.mark.slow
def test_a_run_in_a_fresh_clone_leaves_its_git_status_clean(tmp_path):
    """``python -m benchmarks`` (tiny) in a fresh clone of the committed code changes no tracked file.

    The clone holds the committed state (HEAD), not uncommitted edits of this checkout.
    """
    root = Path(__file__).resolve().parents[1]
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("needs git and a git checkout")
    clone = tmp_path / "clone"
    head = _git("rev-parse", "HEAD", cwd=root).strip()
    _git("clone", "-q", "--no-hardlinks", str(root), str(clone), cwd=tmp_path)
    if _git("rev-parse", "HEAD", cwd=clone).strip() != head:  # a detached HEAD in the source
        _git("fetch", "-q", str(root), head, cwd=clone)
        _git("checkout", "-q", "--detach", "FETCH_HEAD", cwd=clone)
    env = {**__import__("os").environ, "MPLBACKEND": "Agg", "PYTHONPATH": str(clone)}
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--tiny"], cwd=clone, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    run = Path(lines[0].split("writing to ", 1)[1])
    assert run.parent == clone / "benchmarks" / "runs" and (run / "results-tiny.json").is_file()
    assert f"results in {run}" in lines and re.match(r"^(all \d+ targets met|\d+ of \d+ targets not met)$", lines[-1])
    assert _git("status", "--porcelain", cwd=clone) == ""
    # --update-reference is the one way to change the committed results
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--tiny", "--only", "transfer", "--no-plots",
                           "--update-reference"], cwd=clone, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    changed = [ln[3:] for ln in _git("status", "--porcelain", "--untracked-files=all", cwd=clone).splitlines()]
    assert changed and all(re.fullmatch(r"benchmarks/results/[a-z0-9-]+/(results|report)-tiny\.(json|md)", c)
                           for c in changed), changed
