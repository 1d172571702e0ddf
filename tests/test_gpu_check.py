"""``python -m benchmarks --gpu-check`` without a GPU: its budgeting, paths, verdicts and files.

The GPU runs themselves need a device; everything around them (what runs when, with
how many seconds, what is written where, which exit status) is checked here with
injected runners and a fake clock.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks import gpu_check as G
from benchmarks import make_config, run_suite, validate
from benchmarks.config import WORKLOADS, Workload
from mlpx.backends import cuda_available
from mlpx.backends.cupy_backend import GpuStatus

ROOT = Path(__file__).resolve().parent.parent
H200 = GpuStatus(cupy_version="14.2.0", cupy_package="cupy-cuda12x", driver_version=13000, runtime_version=12090,
                 device_count=1, devices=[{"name": "NVIDIA H200", "compute_capability": "9.0", "memory_gib": 139.8}])


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


# ------------------------------------------------------------------ no GPU
@pytest.mark.skipif(cuda_available(), reason="this machine has a GPU")
def test_command_without_a_gpu_says_so_and_exits_3_at_once(tmp_path: Path) -> None:
    out = tmp_path / "results"
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--gpu-check", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == G.EXIT_NO_GPU == 3, proc.stderr
    assert "no usable GPU" in proc.stdout and "Nothing was run" in proc.stdout
    assert time.monotonic() - t0 < 60
    assert not out.exists()


def test_unusable_gpu_status_exits_3_without_running_anything(tmp_path: Path) -> None:
    ran = []
    for st in (GpuStatus(cupy_error="backend 'gpu' needs CuPy >= 14, but CuPy 13.6.0 is installed"),
               GpuStatus(cupy_version="14.2.0", device_error="cudaErrorNoDevice")):
        code = G.run_gpu_check(tmp_path / "out", status=st, tests_runner=lambda *a: ran.append(a),
                               part_runner=lambda *a: ran.append(a), log=lambda s: None)
        assert code == G.EXIT_NO_GPU
    assert ran == [] and not (tmp_path / "out").exists()


def test_cli_refuses_other_options_with_gpu_check() -> None:
    from benchmarks.cli import main

    with pytest.raises(SystemExit):
        main(["--gpu-check", "--only", "gemm"])
    with pytest.raises(SystemExit):
        main(["--budget", "100"])


# --------------------------------------------------------------- budgeting
def test_the_parts_fit_8_minutes_with_room_to_write() -> None:
    assert G.TOTAL_BUDGET_S == 480
    assert sum(j.min_s for j in G.JOBS) + G.FINAL_RESERVE_S < G.TOTAL_BUDGET_S
    assert G.JOBS[0].section is None  # the tests come first


def test_each_part_gets_its_cap_when_the_budget_allows() -> None:
    clock = FakeClock()
    b = G.Budget(10_000, clock)
    assert [b.allot(j, G.JOBS[i + 1:]) for i, j in enumerate(G.JOBS)] == [j.cap_s for j in G.JOBS]


def test_a_part_leaves_later_parts_their_minimums_but_comes_first() -> None:
    clock = FakeClock()
    b = G.Budget(480, clock)
    later_min = sum(j.min_s for j in G.JOBS[1:])
    assert b.allot(G.JOBS[0], G.JOBS[1:]) == 240  # 480 - 15 - 150 = 315 > cap
    clock.t += 350  # the tests overran their share: 130 s left
    share = b.allot(G.JOBS[1], G.JOBS[2:])
    assert share == 130 - G.FINAL_RESERVE_S - sum(j.min_s for j in G.JOBS[2:]) == 40  # < its cap of 90
    # A tight budget: the tests still get their minimum; the benchmarks are skipped instead.
    tight = G.Budget(90, FakeClock())
    assert tight.allot(G.JOBS[0], G.JOBS[1:]) == G.JOBS[0].min_s and later_min > 0
    tight.clock.t += 60
    assert tight.allot(G.JOBS[1], G.JOBS[2:]) is None  # 15 s left after the reserve < 20 s minimum


def test_run_follows_the_budget_and_skips_what_does_not_fit(tmp_path: Path) -> None:
    clock = FakeClock()
    shares: dict[str, float] = {}

    def tests_runner(out: Path, share: float) -> G.JobResult:
        shares["tests"] = share
        clock.t += 400  # the tests take 400 s
        return G.JobResult("pytest -m gpu", "ok", 400.0, share, tests=_counts(10, 0))

    def part_runner(job: G.Job, share: float, work: Path) -> G.JobResult:
        shares[job.name] = share
        clock.t += share
        return G.JobResult(job.name, "timeout", share, share, "stopped")

    code = G.run_gpu_check(tmp_path, status=H200, tests_runner=tests_runner, part_runner=part_runner,
                           clock=clock, log=lambda s: None)
    summary = json.loads((tmp_path / "gpu-check.json").read_text())
    status = {j["name"]: j["status"] for j in summary["jobs"]}
    assert shares["tests"] == 240 and status["pytest -m gpu"] == "ok"
    # 80 s left: each part gets its minimum in turn until the last one no longer fits
    assert [shares[n] for n in ("gemm", "transfer", "train mlp512")] == [20, 10, 20]
    wide = next(j for j in summary["jobs"] if j["name"] == "train wide2048")
    assert wide["status"] == "skipped" and "budget" in wide["reason"]
    # the stack part after it still fits its 15 s minimum (30 s left, 15 s reserved)
    assert shares["search members"] == 15 and summary["elapsed_s"] == 465
    assert code == G.EXIT_BENCH_FAILED  # a part that ran out of time did not finish


# ------------------------------------------------------------------- paths
@pytest.mark.parametrize(("name", "count", "tag"), [
    ("NVIDIA H200", 1, "nvidia-h200"),
    ("NVIDIA H100 80GB HBM3", 1, "nvidia-h100-80gb-hbm3"),
    ("NVIDIA A100-SXM4-40GB", 8, "nvidia-a100-sxm4-40gb-x8"),
    ("", 1, "unknown-gpu"),
])
def test_gpu_tag(name: str, count: int, tag: str) -> None:
    assert G.gpu_tag(name, count) == tag


def test_default_directory_is_benchmarks_results_gpu_tag(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(G, "ROOT", tmp_path)
    code = G.run_gpu_check(status=H200, tests_runner=_tests_ok, part_runner=_part_skipped, log=lambda s: None)
    out = tmp_path / "benchmarks" / "results" / "nvidia-h200"
    assert code == G.EXIT_OK and (out / "gpu-check.md").exists()


def test_pytest_command_selects_gpu_tests_with_a_per_test_timeout(tmp_path: Path) -> None:
    cmd = G.pytest_command(tmp_path / "j.xml", per_test_s=77)
    assert cmd[:3] == [sys.executable, "-m", "pytest"] and "-m" in cmd and cmd[cmd.index("-m", 3) + 1] == "gpu"
    assert f"--junitxml={tmp_path / 'j.xml'}" in cmd
    pytest.importorskip("pytest_timeout")
    assert "--timeout=77" in cmd


# ----------------------------------------------------------------- verdicts
def _counts(passed: int, failed: int, names: tuple[str, ...] = ()) -> dict:
    return {"tests": passed + failed, "passed": passed, "failures": failed, "errors": 0, "skipped": 0,
            "failed": list(names)}


def _tests_ok(out: Path, share: float) -> G.JobResult:
    return G.JobResult("pytest -m gpu", "ok", 1.0, share, tests=_counts(5, 0))


def _part_skipped(job: G.Job, share: float, work: Path) -> G.JobResult:
    return G.JobResult(job.name, "skipped", 0.0, None, "not measured in this test")


def test_parse_junit(tmp_path: Path) -> None:
    xml = tmp_path / "j.xml"
    xml.write_text(
        '<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="5" failures="1" errors="1" skipped="1">'
        '<testcase classname="tests.test_gpu" name="test_a"/>'
        '<testcase classname="tests.test_gpu" name="test_b"><failure message="x"/></testcase>'
        '<testcase classname="tests.test_gpu" name="test_c"><error message="y"/></testcase>'
        '<testcase classname="tests.test_gpu" name="test_d"><skipped message="z"/></testcase>'
        '<testcase classname="tests.test_gpu" name="test_e"/>'
        "</testsuite></testsuites>"
    )
    got = G.parse_junit(xml)
    assert got == {"tests": 5, "failures": 1, "errors": 1, "skipped": 1, "passed": 2,
                   "failed": ["tests.test_gpu::test_b", "tests.test_gpu::test_c"]}


def test_a_failed_gpu_test_gives_exit_1_and_is_named_in_the_summary(tmp_path: Path) -> None:
    def failing(out: Path, share: float) -> G.JobResult:
        return G.JobResult("pytest -m gpu", "failed", 3.0, share, "pytest exited 1",
                           tests=_counts(4, 1, ("tests.test_gpu::test_gpu_n_selection",)))

    code = G.run_gpu_check(tmp_path, status=H200, tests_runner=failing, part_runner=_part_skipped, log=lambda s: None)
    assert code == G.EXIT_TESTS_FAILED == 1
    md = (tmp_path / "gpu-check.md").read_text()
    assert "GPU TESTS FAILED (exit 1)" in md and "FAILED tests.test_gpu::test_gpu_n_selection" in md
    assert "4 passed, 1 failed" in md and "NVIDIA H200" in md and "mlpx doctor" in md


def test_exit_codes() -> None:
    ok, bad = G.JobResult("t", "ok"), G.JobResult("t", "failed")
    part_ok, part_err = G.JobResult("gemm", "ok"), G.JobResult("gemm", "error")
    assert G.exit_code(ok, [part_ok], None) == G.EXIT_OK
    assert G.exit_code(bad, [part_err], None) == G.EXIT_TESTS_FAILED
    assert G.exit_code(G.JobResult("t", "timeout"), [], None) == G.EXIT_TESTS_FAILED
    assert G.exit_code(ok, [part_err], None) == G.EXIT_BENCH_FAILED
    assert G.exit_code(ok, [G.JobResult("gemm", "timeout")], None) == G.EXIT_BENCH_FAILED
    gemm_failed = {"sections": {"gemm": {"status": "failed"}}}
    assert G.exit_code(ok, [part_ok], gemm_failed) == G.EXIT_BENCH_FAILED
    assert len({G.EXIT_OK, G.EXIT_TESTS_FAILED, G.EXIT_BENCH_FAILED, G.EXIT_NO_GPU}) == 4


# ------------------------------------------------------------------- files
@pytest.fixture(scope="module")
def suite_doc() -> dict:
    """A real results document (GPU rows skipped: no device here), as a part would return."""
    cfg = make_config("tiny", sections=("gemm", "transfer", "train"), devices=("gpu",), gemm_step_networks=("digits",),
                      workloads=(Workload("mlp512", *WORKLOADS["mlp512"], 64, 64, 1, 1),
                                 Workload("wide2048", *WORKLOADS["wide2048"], 64, 64, 1, 1)),
                      train_gpu_precisions=())
    return run_suite(cfg, progress=False, make_plots=False, write=False)


def _part_from(doc: dict, job: G.Job) -> G.JobResult:
    part = json.loads(json.dumps(doc))
    part["mode"] = "quick"  # as check_config's parts are (tiny sizes here, for speed)
    if job.workload:
        part["sections"]["train"]["workloads"] = [w for w in part["sections"]["train"]["workloads"]
                                                  if w["name"] == job.workload]
        part["config"]["workloads"] = [w for w in part["config"]["workloads"] if w["name"] == job.workload]
    return G.JobResult(job.name, "ok", 1.0, job.cap_s, doc=part, section=job.section)


def test_files_are_flat_few_and_the_merged_results_validate(tmp_path: Path, suite_doc: dict) -> None:
    def parts(job: G.Job, share: float, work: Path) -> G.JobResult:
        return _part_from(suite_doc, job)

    code = G.run_gpu_check(tmp_path, status=H200, tests_runner=_tests_ok, part_runner=parts, log=lambda s: None)
    assert code == G.EXIT_OK
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["gpu-check.json", "gpu-check.md", "report.md", "results.json"]  # the runner wrote no pytest files
    results = json.loads((tmp_path / "results.json").read_text())
    assert validate(results) == []
    assert [w["name"] for w in results["sections"]["train"]["workloads"]] == ["mlp512", "wide2048"]
    assert results["sections"]["scaling"] == {"status": "skipped", "reason": "not part of --gpu-check"}
    assert results["machine"]["command"] == "python -m benchmarks --gpu-check"
    summary = json.loads((tmp_path / "gpu-check.json").read_text())
    assert summary["verdict"] == "passed" and summary["gpu_tag"] == "nvidia-h200"
    assert [j["name"] for j in summary["jobs"]] == [j.name for j in G.JOBS]


def test_a_broken_train_part_keeps_the_other_workload(suite_doc: dict) -> None:
    jobs = {j.name: j for j in G.JOBS}
    results = [_part_from(suite_doc, jobs["gemm"]),
               G.JobResult("transfer", "timeout", 30.0, 30.0, "stopped", section="transfer"),
               _part_from(suite_doc, jobs["train mlp512"]),
               G.JobResult("train wide2048", "error", 2.0, 90.0, "exited 1: Traceback", section="train")]
    doc = G.merge_docs(results, wall_s=40.0)
    assert doc["sections"]["transfer"]["status"] == "error" and "timeout" in doc["sections"]["transfer"]["reason"]
    assert [w["name"] for w in doc["sections"]["train"]["workloads"]] == ["mlp512"]
    assert "train wide2048: error" in doc["sections"]["train"]["note"]
    assert G.merge_docs([G.JobResult("gemm", "timeout", section="gemm")], 1.0) is None


def test_a_part_runs_in_a_child_process_and_returns_its_document(tmp_path: Path) -> None:
    job = next(j for j in G.JOBS if j.section == "transfer")
    r = G.run_part(job, 120.0, tmp_path)
    assert r.status == "ok", r.reason
    assert r.doc["sections"]["transfer"]["status"] in ("ok", "skipped")
    assert r.doc["config"]["transfer_mib"] == [16, 256]  # the reduced configuration
    assert validate(r.doc) == []
