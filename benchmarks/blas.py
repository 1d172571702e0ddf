"""The CPU BLAS providers (``mlpx.backends.blas``) on the products of a training step.

For each network of the gemm section, at its training batch size, in float32: all
products of one step (:class:`benchmarks.gemm.StepGemms`, each product checked
against the float64 reference first) on every installed provider, the providers
interleaved round by round (A B C A B C ...) so drift hits them alike; a provider's
time is the median over the rounds.

It runs in a child process. Loading oneMKL brings Intel's OpenMP runtime into the
process, and with it loaded, mlpx's digits epoch measured slower although nothing
called MKL any more (two paired runs on the 2-core EPYC: 8.5 and 7.1 ms without it,
9.1 and 10.1 ms with it). So the suite's own process never loads a provider other
than NumPy's, and the train rows measure what a user of the default backend gets.

Standalone: ``python -m benchmarks.blas [--threads N]`` prints the comparison.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from types import SimpleNamespace
from typing import Any

from benchmarks.config import WORKLOADS
from benchmarks.context import Context

__all__ = ["blas_section", "compare_providers"]


def compare_providers(networks: list[str], threads: int, repeats: int, warmup: int, min_time: float) -> dict[str, Any]:
    """Time every installed provider on each network's step products, in this process.

    Returns
    -------
    dict
        The ``gemm.blas`` record of the results schema (1.2).
    """
    from benchmarks.gemm import StepGemms
    from benchmarks.timing import summarize
    from mlpx.backends import NumpyBackend, blas

    names = blas.available_providers()
    timing = SimpleNamespace(cfg=SimpleNamespace(repeats=repeats, warmup=warmup, min_time=min_time))
    records: list[dict[str, Any]] = []
    fastest: dict[str, str] = {}
    for net in networks:
        sizes, batch, _ = WORKLOADS[net]
        key = f"gemm/cpu/blas/{{}}/{net}/b{batch}/float32"
        steps = {}
        for name in names:
            try:
                steps[name] = StepGemms(NumpyBackend(blas=name), sizes, batch)
            except RuntimeError as exc:  # wrong products: reported, never timed
                records.append({"key": key.format(name), "provider": name, "network": net, "batch": batch,
                                "status": "failed", "reason": str(exc)[:300]})
        per: dict[str, list[float]] = {n: [] for n in steps}
        for _ in range(max(3, repeats // 2)):
            for name, sg in steps.items():
                per[name].append(sg.time(timing, threads)["median"])
        ok = []
        for name, sg in steps.items():
            t = summarize(per[name], number=1)  # one sample per round, itself a median
            ok.append({"key": key.format(name), "provider": name, "network": net, "batch": batch,
                       "dtype": "float32", "threads": threads, "status": "ok", "flops": sg.flops,
                       "max_rel_error": sg.max_rel_error, "time_s": t, "gflops": sg.flops / t["median"] / 1e9})
        base = next((r for r in ok if r["provider"] == "numpy"), None)
        for r in ok:
            if base is not None:
                r["ratio_to_numpy"] = r["time_s"]["median"] / base["time_s"]["median"]
        if ok:
            fastest[net] = min(ok, key=lambda r: r["time_s"]["median"])["provider"]
        records += ok
    return {
        "status": "ok",
        "providers": [{"name": n, "version": blas.provider_version(n)} for n in names],
        "not_installed": [n for n in blas.BLAS_PROVIDERS if n not in names],
        "threads": threads,
        "fastest": fastest,
        "records": records,
    }


def blas_section(ctx: Context) -> dict[str, Any]:
    """``gemm.blas``: :func:`compare_providers` in a child process (see the module docstring)."""
    from mlpx.backends import blas

    if not ctx.use_cpu:
        return {"status": "skipped", "reason": "--backend gpu", "providers": [], "records": []}
    cfg = ctx.cfg
    args = dict(networks=list(cfg.gemm_step_networks), threads=cfg.threads, repeats=cfg.repeats,
                warmup=cfg.warmup, min_time=cfg.min_time)
    ctx.progress.step(f"cpu BLAS providers {', '.join(blas.installed_providers())} on the step products of "
                      f"{', '.join(cfg.gemm_step_networks)} (child process)")
    code = "import json, sys; from benchmarks.blas import compare_providers; " \
           "print(json.dumps(compare_providers(**json.loads(sys.argv[1]))))"
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(args)], capture_output=True, text=True)
    if proc.returncode != 0:
        return {"status": "error", "reason": f"child process failed: {proc.stderr.strip()[-300:]}",
                "providers": [], "records": []}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    from benchmarks.config import cpu_cores

    ap = argparse.ArgumentParser(prog="python -m benchmarks.blas", description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=cpu_cores(), help="BLAS threads (default: usable cores)")
    ap.add_argument("--networks", default="digits,mlp512,wide2048", help="comma-separated workload networks")
    a = ap.parse_args(argv)
    res = compare_providers(a.networks.split(","), a.threads, repeats=5, warmup=2, min_time=0.1)
    for r in res["records"]:
        if r["status"] != "ok":
            print(f"{r['network']:9s} {r['provider']:6s} {r['status']}: {r['reason']}")
            continue
        print(f"{r['network']:9s} {r['provider']:6s} {1e3 * r['time_s']['median']:9.3f} ms/step "
              f"{r['gflops']:7.1f} GFLOP/s  x{r['ratio_to_numpy']:.2f} numpy")
    print("fastest:", ", ".join(f"{k} -> {v}" for k, v in res["fastest"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
