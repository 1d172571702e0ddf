"""``python -m benchmarks --gpu-check``: the first command to run on a machine with a GPU.

In at most 8 minutes (on an H100/H200 with a 16-core host) it

1. prints ``python -m mlpx.doctor``'s report into the summary;
2. runs the GPU tests, ``pytest -m gpu`` (each test limited by pytest-timeout when it
   is installed, the whole run by its share of the budget), with a JUnit file;
3. runs the GPU rows of the benchmark suite at reduced sizes, each part in its own
   child process with its share of the budget: BLAS vs cuBLAS GEMMs in float32,
   TF32, bfloat16 and float16 (square and MLP-step products, each checked against a
   float64 reference), host<->device transfers, mlpx training on the GPU (float32
   and the tf32/bf16/fp16 modes) against scikit-learn, PyTorch CPU and PyTorch CUDA
   where torch is installed, and the step time of a stack of K digits-size networks
   against K (1 to 64; issue 14: at most 2x one network's step) with its memory;
4. writes, ready to commit, into ``benchmarks/results/<gpu-tag>/`` (``--out DIR`` to
   change it): ``gpu-check.md`` and ``gpu-check.json`` (verdict, budget, test counts,
   failures, highlights, the doctor's report), ``pytest-gpu.xml`` and ``pytest-gpu.log``,
   and the suite's ``results.json`` and ``report.md``. Six flat files, no plots.

Exit status: 0 all passed; 1 a GPU test failed, errored, or the tests could not run
to the end; 2 a benchmark correctness check failed, or a benchmark part broke or did
not finish in its share; 3 no usable GPU on this machine (said at once, nothing run
or written).

Budget: every part has a cap and a minimum (:data:`JOBS`); a part gets its cap, cut
to leave the parts after it their minimums (and the time to write the files), but
earlier parts come first: a part is skipped, with the reason in the summary, only
when less than its minimum is left. A part that outruns its share is stopped with
its process group.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

__all__ = [
    "EXIT_BENCH_FAILED",
    "EXIT_NO_GPU",
    "EXIT_OK",
    "EXIT_TESTS_FAILED",
    "JOBS",
    "Budget",
    "Job",
    "JobResult",
    "check_config",
    "exit_code",
    "gpu_tag",
    "merge_docs",
    "parse_junit",
    "run_gpu_check",
    "write_summary",
]

EXIT_OK, EXIT_TESTS_FAILED, EXIT_BENCH_FAILED, EXIT_NO_GPU = 0, 1, 2, 3
TOTAL_BUDGET_S = 480.0  # 8 minutes, everything included
FINAL_RESERVE_S = 15.0  # merging and writing the files
PER_TEST_TIMEOUT_S = 120  # pytest-timeout, per GPU test (the MPI+NCCL tests start processes)
ROOT = Path(__file__).resolve().parent.parent
_LOG_TAIL = 400_000  # characters of pytest's output kept in pytest-gpu.log


@dataclass(frozen=True)
class Job:
    """One part of the check: the GPU tests, or one benchmark section (one workload of train).

    Attributes
    ----------
    name : str
    cap_s, min_s : float
        Most seconds it may take, and fewest worth starting it with.
    section, workload : str or None
        The benchmark section (None for the tests) and, for train, the workload.
    """

    name: str
    cap_s: float
    min_s: float
    section: str | None = None
    workload: str | None = None


JOBS: tuple[Job, ...] = (
    Job("pytest -m gpu", 240.0, 60.0),
    Job("gemm", 90.0, 20.0, "gemm"),
    Job("transfer", 30.0, 10.0, "transfer"),
    Job("train mlp512", 60.0, 20.0, "train", "mlp512"),
    Job("train wide2048", 90.0, 30.0, "train", "wide2048"),
    Job("search members", 60.0, 15.0, "search"),
)


@dataclass
class JobResult:
    """What one part did. ``status``: "ok", "failed", "timeout", "error" or "skipped"."""

    name: str
    status: str
    seconds: float = 0.0
    allotted_s: float | None = None
    reason: str | None = None
    doc: dict[str, Any] | None = None  # a benchmark part's results document
    tests: dict[str, Any] | None = None  # the test run's counts (parse_junit)
    section: str | None = None  # the benchmark section of a part (None for the tests)


class Budget:
    """Seconds left of the check's total, and each part's share of them.

    Parameters
    ----------
    total_s : float
    clock : callable, optional
        Monotonic seconds (injectable for tests).
    """

    def __init__(self, total_s: float = TOTAL_BUDGET_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.total_s, self.clock = float(total_s), clock
        self.t0 = clock()

    def elapsed(self) -> float:
        return self.clock() - self.t0

    def remaining(self) -> float:
        return self.total_s - self.elapsed()

    def allot(self, job: Job, later: Sequence[Job]) -> float | None:
        """Seconds for ``job``, or None to skip it.

        Its cap, cut to leave the ``later`` parts their minimums, but never below its
        own minimum while that much is left: earlier parts come first (the tests
        before any benchmark), and a part is skipped only when fewer than its
        minimum seconds remain.
        """
        left = self.remaining() - FINAL_RESERVE_S
        if left < job.min_s:
            return None
        return min(job.cap_s, left, max(job.min_s, left - sum(j.min_s for j in later)))


def gpu_tag(name: str, count: int = 1) -> str:
    """Directory name for a GPU: ``"NVIDIA H200"`` -> ``nvidia-h200`` (``-x2`` for two of them)."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40] or "unknown-gpu"
    return slug + (f"-x{count}" if count > 1 else "")


def check_config(section: str, workload: str | None = None) -> Any:
    """The reduced benchmark configuration of one part (CPU and GPU, no plots)."""
    from benchmarks.config import GPU_PRECISIONS, WORKLOADS, Workload, make_config

    sizes = {"mlp512": (16384, 2000, 1, 2), "wide2048": (16384, 2000, 1, 2)}  # n_train, n_test, epochs, repeats
    names = [workload] if workload else list(sizes)
    workloads = tuple(Workload(n, *WORKLOADS[n], *sizes[n]) for n in names)
    return make_config(
        "quick",
        sections=(section,),
        devices=("cpu", "gpu"),
        repeats=3,
        warmup=1,
        min_time=0.01,
        gemm_cpu_sizes=(256, 1024),
        gemm_cpu_dtypes=("float32",),
        gemm_gpu_sizes=(1024, 4096, 8192),
        gemm_gpu_dtypes=("float32", "tf32", "bfloat16", "float16"),
        gemm_step_cpu_dtypes=("float32",),
        gemm_step_gpu_dtypes=("float32", "tf32", "bfloat16", "float16"),
        gemm_step_networks=("mlp512", "wide2048"),
        crossover_batches=(64, 256, 1024),
        transfer_mib=(16, 256),
        workloads=workloads,
        train_gpu_precisions=GPU_PRECISIONS,
        search_grid=False,  # the grid compares CPU searches: not a GPU row
        search_members=(1, 2, 4, 8, 16, 32, 64),
        search_member_epochs=2,
        search_memory_check=False,
    )


# ------------------------------------------------------------------ tests
def _has_pytest_timeout() -> bool:
    import importlib.util

    return importlib.util.find_spec("pytest_timeout") is not None


def pytest_command(junit: Path, per_test_s: int = PER_TEST_TIMEOUT_S) -> list[str]:
    """``python -m pytest -m gpu`` with a JUnit file and, when pytest-timeout is installed, a per-test limit."""
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rfE", "-p", "no:cacheprovider",
           f"--junitxml={junit}", "-o", "junit_family=xunit2"]
    if _has_pytest_timeout():
        cmd += [f"--timeout={per_test_s}"]
    return cmd


def _run_bounded(cmd: list[str], timeout: float, log: Path | None = None) -> tuple[int | None, str, float]:
    """Run ``cmd`` in its own process group from the repository root; kill the group at ``timeout``.

    Returns (exit code or None on timeout, combined output, seconds).
    """
    t0 = time.monotonic()
    env = dict(os.environ, PYTHONUNBUFFERED="1", MPLBACKEND="Agg")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        rc: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        with contextlib.suppress(OSError):  # already gone
            os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        rc = None
    if log is not None:
        log.write_text(out[-_LOG_TAIL:])
    return rc, out, time.monotonic() - t0


def parse_junit(path: Path) -> dict[str, Any]:
    """Counts of a JUnit XML file: tests, passed, failures, errors, skipped, and the failed test ids."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failed = []
    for case in root.iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(f"{case.get('classname', '')}::{case.get('name', '')}")
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    counts["failed"] = failed
    return counts


def run_tests(out: Path, timeout: float) -> JobResult:
    """The GPU tests into ``out/pytest-gpu.xml`` and ``out/pytest-gpu.log``."""
    junit, log = out / "pytest-gpu.xml", out / "pytest-gpu.log"
    rc, text, secs = _run_bounded(pytest_command(junit), timeout, log)
    name = JOBS[0].name
    if rc is None:
        return JobResult(name, "timeout", secs, timeout, f"stopped after {timeout:.0f} s (its share of the budget)")
    if not junit.exists():
        return JobResult(name, "error", secs, timeout, f"pytest exited {rc} without a JUnit file: {text[-300:]}")
    tests = parse_junit(junit)
    if tests["failures"] or tests["errors"] or rc not in (0,):
        return JobResult(name, "failed", secs, timeout, f"pytest exited {rc}", tests=tests)
    if tests["passed"] == 0:
        return JobResult(name, "failed", secs, timeout, "no GPU test ran (all skipped?)", tests=tests)
    return JobResult(name, "ok", secs, timeout, tests=tests)


# ------------------------------------------------------------- benchmarks
def run_part(job: Job, timeout: float, workdir: Path) -> JobResult:
    """One benchmark part in a child process (``python -m benchmarks.gpu_check --part ...``)."""
    target = workdir / f"{job.section}-{job.workload or 'all'}.json"
    part = job.section + (f":{job.workload}" if job.workload else "")
    rc, text, secs = _run_bounded([sys.executable, "-m", "benchmarks.gpu_check", "--part", part, str(target)], timeout)
    if rc is None:
        return JobResult(job.name, "timeout", secs, timeout, f"stopped after {timeout:.0f} s (its share of the budget)")
    if rc != 0 or not target.exists():
        return JobResult(job.name, "error", secs, timeout, f"exited {rc}: {text.strip()[-400:]}")
    doc = json.loads(target.read_text())
    status = doc["sections"][job.section]["status"]
    return JobResult(job.name, "ok" if status in ("ok", "skipped") else "failed", secs, timeout,
                     doc["sections"][job.section].get("reason"), doc=doc)


def _part_main(part: str, target: str) -> int:
    """Child process: run one part and dump its results document as JSON."""
    from benchmarks.report import _jsonable
    from benchmarks.runner import run_suite

    section, _, workload = part.partition(":")
    cfg = check_config(section, workload or None)
    doc = run_suite(cfg, argv=["--gpu-check"], progress=True, make_plots=False, write=False)
    Path(target).write_text(json.dumps(doc, default=_jsonable))
    return 0


def merge_docs(results: Sequence[JobResult], wall_s: float) -> dict[str, Any] | None:
    """One suite document from the parts' documents; a section that did not run says why.

    The train parts (one per workload) are joined into one train section. Returns
    None when no part produced a document.
    """
    from benchmarks.schema import SECTIONS, validate

    docs = [r for r in results if r.doc is not None]
    if not docs:
        return None
    merged = json.loads(json.dumps(docs[0].doc))  # a deep copy of the first part's document
    merged["machine"]["command"] = "python -m benchmarks --gpu-check"
    merged["wall_s"] = wall_s
    sections: dict[str, Any] = {s: {"status": "skipped", "reason": "not part of --gpu-check"} for s in SECTIONS}
    workloads: list[dict[str, Any]] = []
    train_wall, train_problems = 0.0, []
    for r in results:
        sec = r.doc["sections"][r.section] if r.doc is not None else None
        if r.section == "train":
            if sec is not None and sec.get("status") == "ok":
                workloads += sec["workloads"]
                train_wall += sec.get("wall_s", 0.0)
            else:
                train_problems.append(f"{r.name}: {r.status}: {sec.get('reason') if sec else r.reason}")
        elif sec is not None:
            sections[r.section] = sec
        elif r.section in sections:
            sections[r.section] = {"status": "skipped" if r.status == "skipped" else "error",
                                   "reason": f"{r.name}: {r.status}: {r.reason}"}
    if workloads:
        sections["train"] = {"status": "ok", "reason": None, "workloads": workloads, "wall_s": train_wall}
        if train_problems:
            sections["train"]["note"] = "; ".join(train_problems)
    elif train_problems:
        sections["train"] = {"status": "error", "reason": "; ".join(train_problems)}
    merged["sections"] = sections
    merged["config"]["sections"] = [r.section for r in docs if r.section != "train"] + (["train"] if workloads else [])
    merged["config"]["workloads"] = [w for r in docs if r.section == "train" for w in r.doc["config"]["workloads"]]
    merged.pop("validation_errors", None)
    problems = validate(merged)
    if problems:
        merged["validation_errors"] = problems
    return merged


# ----------------------------------------------------------------- verdict
def exit_code(tests: JobResult, parts: Sequence[JobResult], doc: dict[str, Any] | None) -> int:
    """0, :data:`EXIT_TESTS_FAILED` or :data:`EXIT_BENCH_FAILED` (tests first: they decide)."""
    if tests.status != "ok":
        return EXIT_TESTS_FAILED
    gemm_failed = bool(doc and doc["sections"].get("gemm", {}).get("status") == "failed")
    # A part that timed out did not finish either: on a sound GPU every part fits its share.
    if gemm_failed or any(p.status in ("failed", "error", "timeout") for p in parts) or (doc or {}).get(
            "validation_errors"):
        return EXIT_BENCH_FAILED
    return EXIT_OK


_VERDICTS = {EXIT_OK: "passed", EXIT_TESTS_FAILED: "GPU TESTS FAILED", EXIT_BENCH_FAILED: "BENCHMARK CHECK FAILED"}


def _highlights(doc: dict[str, Any] | None) -> list[str]:
    if doc is None:
        return ["No benchmark part produced results."]
    L: list[str] = []
    gemm = doc["sections"].get("gemm", {})
    for dev, part in gemm.get("parts", {}).items():
        if part.get("peak_gflops"):
            rates = ", ".join(f"{dt} {r:,.0f}" for dt, r in part["peak_gflops"].items())
            L.append(f"- GEMM best GFLOP/s, {dev}: {rates}")
    transfer = doc["sections"].get("transfer", {}).get("parts", {}).get("gpu", {}).get("records", [])
    for r in transfer:
        L.append(f"- transfer {r['direction']} {r['memory']} {r['bytes'] / 2**20:.0f} MiB: {r['gb_per_s']:.1f} GB/s")
    for wl in doc["sections"].get("train", {}).get("workloads", []):
        rows = [f"{i['name']} {i['s_per_epoch']:.3g} s/epoch ({100 * i['accuracy']:.1f} %)"
                for i in wl.get("implementations", []) if "s_per_epoch" in i]
        skipped = [f"{i['name']} ({i['reason']})" for i in wl.get("implementations", []) if i.get("status") != "ok"]
        L.append(f"- train {wl['name']}: " + ("; ".join(rows) or "no row ran")
                 + (f"; skipped: {', '.join(skipped)}" if skipped else ""))
    for dev, part in doc["sections"].get("search", {}).get("members", {}).get("parts", {}).items():
        if part.get("status") == "ok":
            curve = ", ".join(f"K={r['members']} {r['ratio_to_single']:.2f}x" for r in part["records"])
            t = part.get("target")
            L.append(f"- stack step / one network's step, {dev}: {curve}"
                     + (f" (target <= {t['bound']}x: {'met' if t['met'] else 'NOT met'})" if t else ""))
    for e in doc.get("validation_errors", [])[:10]:
        L.append(f"- schema problem: {e}")
    return L or ["(no GPU rows)"]


def write_summary(out: Path, summary: dict[str, Any], doc: dict[str, Any] | None) -> dict[str, Path]:
    """``gpu-check.json`` and ``gpu-check.md`` (plus the suite's files when ``doc`` is given)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"summary_json": out / "gpu-check.json", "summary_md": out / "gpu-check.md"}
    if doc is not None:
        from benchmarks.report import write_outputs

        paths.update(write_outputs(doc, out, make_plots=False))
    paths["summary_json"].write_text(json.dumps(summary, indent=1, default=str) + "\n")
    t = summary.get("tests") or {}
    L = [f"# GPU check: {summary['verdict']} (exit {summary['exit_code']})", "",
         f"GPU: {summary['gpu']}. Date: {summary['date']}. Command: `python -m benchmarks --gpu-check`.", "",
         f"Budget {summary['budget_s']:.0f} s, used {summary['elapsed_s']:.0f} s.", "",
         "| part | status | seconds | share (s) | note |", "|---|---|---|---|---|"]
    for j in summary["jobs"]:
        share = "" if j["allotted_s"] is None else f"{j['allotted_s']:.0f}"
        L.append(f"| {j['name']} | {j['status']} | {j['seconds']:.1f} | {share} | {j['reason'] or ''} |")
    L += ["", "## GPU tests (`pytest -m gpu`)", ""]
    if t:
        L.append(f"{t['tests']} tests: {t['passed']} passed, {t['failures']} failed, {t['errors']} errors, "
                 f"{t['skipped']} skipped (pytest-gpu.xml, pytest-gpu.log).")
        L += [f"- FAILED {name}" for name in t["failed"][:50]]
    else:
        L.append("No JUnit counts (see the parts table).")
    L += ["", "## Benchmarks (reduced sizes; details in report.md and results.json)", ""] + _highlights(doc)
    L += ["", "## python -m mlpx.doctor", "", "```", summary["doctor"], "```", ""]
    paths["summary_md"].write_text("\n".join(L))
    return paths


# --------------------------------------------------------------------- run
def _doctor_text() -> str:
    try:
        from mlpx.doctor import render, run_checks

        return render(*run_checks())
    except Exception as exc:  # noqa: BLE001 - the summary must still be written
        return f"mlpx.doctor failed: {type(exc).__name__}: {exc}"


def run_gpu_check(
    out: str | Path | None = None,
    budget_s: float = TOTAL_BUDGET_S,
    *,
    status: Any = None,
    tests_runner: Callable[[Path, float], JobResult] = run_tests,
    part_runner: Callable[[Job, float, Path], JobResult] = run_part,
    clock: Callable[[], float] = time.monotonic,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
) -> int:
    """Run the check; returns the exit status (see the module docstring).

    Parameters
    ----------
    out : path, optional
        Where the files go (default ``benchmarks/results/<gpu-tag>/``).
    budget_s : float
        Total seconds.
    status, tests_runner, part_runner, clock, log
        Injectable for tests: a :class:`~mlpx.backends.cupy_backend.GpuStatus`, the
        runners of the tests and of a benchmark part, the clock, the progress output.
    """
    budget = Budget(budget_s, clock)
    if status is None:
        from mlpx.backends.cupy_backend import gpu_status

        status = gpu_status(details=True)
    if not status.usable:
        why = status.cupy_error or status.device_error or "no CUDA device visible"
        print(f"gpu-check: no usable GPU on this machine: {why}\n"
              "Nothing was run or written. Run it where `python -m mlpx.doctor` lists a GPU.")
        return EXIT_NO_GPU
    dev = status.devices[0] if status.devices else {"name": "unknown GPU"}
    tag = gpu_tag(str(dev.get("name")), status.device_count)
    out_dir = Path(out) if out is not None else ROOT / "benchmarks" / "results" / tag
    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / ".gpu-check-parts"
    work.mkdir(exist_ok=True)
    log(f"gpu-check: {dev.get('name')} -> {out_dir} (budget {budget_s:.0f} s)")
    doctor = _doctor_text()

    results: list[JobResult] = []
    for i, job in enumerate(JOBS):
        share = budget.allot(job, JOBS[i + 1:])
        if share is None:
            results.append(JobResult(job.name, "skipped", 0.0, None,
                                     f"budget: {budget.remaining():.0f} s left, needs {job.min_s:.0f} s",
                                     section=job.section))
            log(f"gpu-check: {job.name}: skipped (budget)")
            continue
        log(f"gpu-check: {job.name} (up to {share:.0f} s) ...")
        t0 = clock()
        try:
            r = tests_runner(out_dir, share) if job.section is None else part_runner(job, share, work)
        except Exception as exc:  # noqa: BLE001 - one broken part must not lose the others
            r = JobResult(job.name, "error", clock() - t0, share, f"{type(exc).__name__}: {exc}")
        r.section = job.section
        results.append(r)
        log(f"gpu-check: {job.name}: {r.status} in {r.seconds:.0f} s" + (f" ({r.reason})" if r.reason else ""))

    tests, parts = results[0], results[1:]
    doc = merge_docs(parts, wall_s=sum(p.seconds for p in parts))
    code = exit_code(tests, parts, doc)
    summary = {
        "verdict": _VERDICTS[code],
        "exit_code": code,
        "gpu": f"{dev.get('name')} x{status.device_count}, compute capability {dev.get('compute_capability')}, "
               f"{dev.get('memory_gib')} GiB, CuPy {status.cupy_version}, driver CUDA "
               f"{(status.driver_version or 0) // 1000}.{(status.driver_version or 0) % 1000 // 10}",
        "gpu_tag": tag,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "budget_s": budget_s,
        "elapsed_s": budget.elapsed(),
        "jobs": [{k: v for k, v in dataclasses.asdict(r).items() if k not in ("doc", "tests", "section")}
                 for r in results],
        "tests": tests.tests,
        "doctor": doctor,
    }
    paths = write_summary(out_dir, summary, doc)
    for f in work.glob("*.json"):
        f.unlink()
    with contextlib.suppress(OSError):
        work.rmdir()
    log(f"gpu-check: {summary['verdict']} (exit {code}); files: {', '.join(sorted(p.name for p in paths.values()))}")
    print((out_dir / "gpu-check.md").read_text())
    return code


def _main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "--part":
        return _part_main(argv[1], argv[2])
    print("usage: python -m benchmarks --gpu-check  (this module's own entry point runs one part)", file=sys.stderr)
    return 64


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
