"""Command line of ``python -m benchmarks`` (run from the repository root).

Examples
--------
::

    python -m benchmarks                       # quick mode: every section, small sizes
    python -m benchmarks --full                # the real sizes
    python -m benchmarks --only gemm --only train --backend cpu
    python -m benchmarks --only train,scaling --out /tmp/bench
    python -m benchmarks --update-reference    # rewrite benchmarks/results/<machine-tag>/ (committed)
    python -m benchmarks --compare old/results.json new/results.json
    python -m benchmarks --gpu-check           # first run on a GPU machine: GPU tests + GPU rows, <= 8 min

A run writes into a new folder under ``benchmarks/runs/`` (git-ignored; see
:mod:`benchmarks.run_folder`) and prints its path first and last. The summary
ends with one line on the targets: ``all N targets met``, ``K of N targets not
met`` or ``no targets measured in this run``. Exit status: 0 when the run
completed, unmet targets included (the last line says so: an unmet target is a
measurement, not a failure of the command); 1 when a GEMM failed its check
against the float64 reference or the results failed the schema.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from benchmarks.schema import SECTIONS
from benchmarks.targets import summary_lines

__all__ = ["main", "parser"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="mlpx benchmark suite: BLAS vs cuBLAS GEMM, host<->device transfer, training "
        "throughput against scikit-learn and PyTorch, scaling curves, stacked grid search. Writes report.md, "
        "results.json and PNG plots into a new folder under benchmarks/runs/ (git-ignored), and prints its path.",
        epilog="The summary's last line says how many targets were not met. Exit status: 0 when the run "
        "completed (unmet targets included), 1 when a GEMM check or the results schema failed.",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick",
                      help="small sizes, every section (the search grid at its real size), about 4.5 minutes on 2 cores "
                      "(default)")
    mode.add_argument("--full", dest="mode", action="store_const", const="full",
                      help="the real sizes (60,000 samples, GEMMs to 8192 on the GPU); tens of minutes on a small CPU")
    mode.add_argument("--tiny", dest="mode", action="store_const", const="tiny",
                      help="a smoke run at toy sizes (seconds; its numbers mean nothing): for tests")
    p.set_defaults(mode="quick")
    p.add_argument("--only", action="append", metavar="SECTION",
                   help=f"run only these sections ({'|'.join(SECTIONS)}); repeat or comma-separate")
    p.add_argument("--backend", choices=("cpu", "gpu", "all"), default="all",
                   help="devices to measure (default all: the GPU when one is present)")
    p.add_argument("--threads", type=int, default=None,
                   help="BLAS threads for the CPU runs (default: all usable cores)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--out", metavar="DIR", help="output directory (default: a new folder under benchmarks/runs/)")
    out.add_argument("--update-reference", action="store_true",
                     help="write into benchmarks/results/<machine-tag>/, the committed reference results of this "
                     "machine (files under version control change)")
    p.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"),
                   help="print the ratios B/A between two results files and exit")
    p.add_argument("--render", metavar="RESULTS.json",
                   help="rewrite the report and plots of an existing results file (no measuring) and exit")
    p.add_argument("--gpu-check", action="store_true",
                   help="the first command on a GPU machine: pytest -m gpu, then the GPU rows at reduced sizes, "
                   "in at most 8 minutes; writes benchmarks/results/<gpu-tag>/ (or --out); exit 1 if a GPU test "
                   "failed, 2 if a benchmark check failed, 3 if there is no usable GPU (see benchmarks/gpu_check.py)")
    p.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                   help="--gpu-check's total time (default 480)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _sections(only: list[str] | None, p: argparse.ArgumentParser) -> tuple[str, ...]:
    if not only:
        return SECTIONS
    names = [s.strip().lower() for item in only for s in item.split(",") if s.strip()]
    bad = [s for s in names if s not in SECTIONS]
    if bad:
        p.error(f"unknown section(s) {', '.join(bad)}; choose from {', '.join(SECTIONS)}")
    return tuple(s for s in SECTIONS if s in names)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (1 when a GEMM check or the schema failed)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    p = parser()
    args = p.parse_args(argv)
    if args.gpu_check:
        if args.only or args.compare or args.render or args.threads is not None or args.update_reference:
            p.error("--gpu-check takes only --out and --budget")
        from benchmarks.gpu_check import TOTAL_BUDGET_S, run_gpu_check

        budget = TOTAL_BUDGET_S if args.budget is None else args.budget
        if budget <= 0:
            p.error("--budget must be > 0 seconds")
        return run_gpu_check(out=args.out, budget_s=budget)
    if args.budget is not None:
        p.error("--budget applies to --gpu-check only")
    if args.render:
        import json

        from benchmarks.report import write_outputs

        path = Path(args.render)
        paths = write_outputs(json.loads(path.read_text()), path.parent, make_plots=not args.no_plots)
        print("\n".join(f"{k}: {v}" for k, v in paths.items()))
        return 0
    if args.compare:
        from benchmarks.compare import compare_files

        print(compare_files(*args.compare))
        return 0
    from benchmarks.config import make_config
    from benchmarks.runner import run_suite

    overrides: dict[str, Any] = {"sections": _sections(args.only, p)}
    overrides["devices"] = {"cpu": ("cpu",), "gpu": ("gpu",), "all": ("cpu", "gpu")}[args.backend]
    if args.threads is not None:
        if args.threads < 1:
            p.error("--threads must be >= 1")
        overrides["threads"] = args.threads
    cfg = make_config(args.mode, **overrides)
    os.environ.setdefault("MPLBACKEND", "Agg")
    doc = run_suite(cfg, out_dir=args.out, argv=argv, progress=not args.quiet, make_plots=not args.no_plots,
                    update_reference=args.update_reference, log=lambda line: print(line, flush=True))
    print(_summary(doc), flush=True)
    failed = doc.get("validation_errors") or doc["sections"].get("gemm", {}).get("status") == "failed"
    return 1 if failed else 0


def _summary(doc: dict[str, Any]) -> str:
    lines = [f"mlpx benchmarks ({doc['mode']}) finished in {doc['wall_s']:.0f} s"]
    for name, s in doc["sections"].items():
        lines.append(f"  {name:9s} {s['status']}" + (f": {s['reason']}" if s.get("reason") else ""))
        if name == "gemm" and s.get("parts"):
            for dev, part in s["parts"].items():
                if part["status"] != "ok":
                    lines.append(f"    {dev}: skipped: {part['reason']}")
                for dt, rate in part.get("peak_gflops", {}).items():
                    lines.append(f"    {dev} {dt}: best {rate:.1f} GFLOP/s")
        if name == "transfer" and s.get("status") == "skipped":
            pass
        if name == "train" and s.get("status") == "ok":
            for wl in s["workloads"]:
                parts = [f"{r['name']} {r['s_per_epoch']:.3g}s/ep {100 * r['accuracy']:.1f}%"
                         for r in wl.get("implementations", []) if "s_per_epoch" in r]
                lines.append(f"    {wl['name']}: " + "; ".join(parts))
                skipped = [f"{r['name']} ({r['reason']})" for r in wl.get("implementations", []) if r["status"] != "ok"]
                if skipped:
                    lines.append(f"      skipped: {', '.join(skipped)}")
        if name == "search" and s.get("status") == "ok":
            for r in s.get("grid", {}).get("records", []):
                if r.get("status") == "ok":
                    lines.append(f"    {r['name']}: {r['time_s']['median']:.3g} s")
    for e in doc.get("validation_errors", [])[:20]:
        lines.append(f"  SCHEMA: {e}")
    for k, v in doc.get("outputs", {}).items():
        lines.append(f"  {k}: {v}")
    if doc.get("outputs"):
        lines.append(f"results in {Path(doc['outputs']['json']).parent}")
    return "\n".join(lines + summary_lines(doc))
