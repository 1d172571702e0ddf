"""Scaling curves: mlpx time per training step against batch size and against width.

One step is forward, backward and the Adam update, measured through ``fit`` (the
minibatch gather from the device-resident data included) as the time of a fit over
``steps`` batches divided by ``steps``; ``steps`` is chosen so a fit lasts about
``cfg.scaling_min_time``. Each point also carries its GEMM-bound floor (the step's
matmul FLOPs over the device's best float32 GEMM rate), so a reader sees where the
step is GEMM-bound and where overhead dominates, on each backend.

Curves: ``batch`` (784-512-512-10, batch sizes ``cfg.scaling_batches``) and ``width``
(784-w-w-10 at batch ``cfg.scaling_width_batch``, widths ``cfg.scaling_widths``).
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from benchmarks.context import Context, skipped
from benchmarks.gemm import step_shapes
from benchmarks.timing import blas_threads, summarize

__all__ = ["count", "points", "scaling_section"]


def points(cfg: Any) -> list[tuple[str, tuple[int, ...], int, int]]:
    """(curve, sizes, batch, x) for every point of both curves."""
    pts = [("batch", (784, 512, 512, 10), b, b) for b in cfg.scaling_batches]
    pts += [("width", (784, w, w, 10), cfg.scaling_width_batch, w) for w in cfg.scaling_widths]
    return pts


def count(ctx: Context) -> int:
    return len(points(ctx.cfg)) * (int(ctx.use_cpu) + int(ctx.use_gpu))


def _fit_time(model: Any, X: np.ndarray, y: np.ndarray, batch: int) -> float:
    t0 = time.perf_counter()
    model.fit(X, y, epochs=1, batch_size=batch, optimizer="adam", lr=1e-3, shuffle=True)
    model.backend.synchronize()
    return time.perf_counter() - t0


def _point(ctx: Context, device: str, sizes: tuple[int, ...], batch: int) -> dict[str, Any]:
    import mlpx

    cfg = ctx.cfg
    rng = np.random.default_rng(0)
    model = mlpx.MLP(list(sizes), backend="gpu" if device == "gpu" else "cpu", dtype="float32", seed=0)
    X = rng.standard_normal((2 * batch, sizes[0]), dtype=np.float32)
    y = rng.integers(0, sizes[-1], size=2 * batch)
    _fit_time(model, X, y, batch)  # warm-up: workspaces, kernels, pool
    est = _fit_time(model, X, y, batch) / 2
    steps = max(2, min(200, math.ceil(cfg.scaling_min_time / max(est, 1e-9))))
    X = rng.standard_normal((steps * batch, sizes[0]), dtype=np.float32)
    y = rng.integers(0, sizes[-1], size=steps * batch)
    samples = [_fit_time(model, X, y, batch) / steps for _ in range(min(cfg.repeats, 3))]
    return {"time_s": summarize(samples, steps)}


def scaling_section(ctx: Context) -> dict[str, Any]:
    """Both curves on every device in use.

    Returns
    -------
    dict
        ``{"status", "parts": {"cpu": part, "gpu": part}}``; each record has curve,
        x, sizes, batch, time_s (per step), samples_per_s, step_flops and, when a
        GEMM rate is known, floor_s.
    """
    parts: dict[str, Any] = {}
    for device in ("cpu", "gpu"):
        if device == "gpu" and not ctx.use_gpu:
            parts["gpu"] = skipped(ctx.gpu_reason or "")
            ctx.progress.note(f"scaling gpu: skipped: {ctx.gpu_reason}")
            continue
        if device == "cpu" and not ctx.use_cpu:
            parts["cpu"] = skipped("--backend gpu")
            continue
        threads = ctx.cfg.threads if device == "cpu" else None
        peak = ctx.peaks.get((device, "float32", threads))
        records = []
        for curve, sizes, batch, x in points(ctx.cfg):
            ctx.progress.step(f"{device} {'-'.join(map(str, sizes))} batch {batch}")
            try:
                with blas_threads(threads):
                    res = _point(ctx, device, sizes, batch)
            except Exception as exc:  # e.g. a GPU failure: keep the other device's curves
                records.append({"key": f"scaling/{device}/{curve}/{x}", "status": "error", "device": device,
                                "curve": curve, "x": x, "reason": f"{type(exc).__name__}: {exc}"[:300]})
                ctx.progress.note(f"scaling {device} {curve} {x}: error: {exc}")
                continue
            flops = float(sum(2.0 * s["m"] * s["n"] * s["k"] for s in step_shapes(sizes, batch)))
            rec = {
                "key": f"scaling/{device}/{curve}/{x}",
                "status": "ok",
                "device": device,
                "curve": curve,
                "x": x,
                "sizes": list(sizes),
                "batch": batch,
                "threads": threads,
                **res,
                "samples_per_s": batch / res["time_s"]["median"],
                "step_flops": flops,
                "gflops": flops / res["time_s"]["median"] / 1e9,
            }
            if peak:
                rec["floor_s"] = flops / peak
            records.append(rec)
        ok = [r for r in records if r["status"] == "ok"]
        bad = [r["reason"] for r in records if r["status"] != "ok"]
        parts[device] = {"status": "ok" if ok else "error", "reason": bad[0] if bad else None, "records": records}
    status = "ok" if any(p["status"] == "ok" for p in parts.values()) else "skipped"
    return {"status": status, "reason": None, "parts": parts}
