"""Hyperparameter search in one pass: stacked fits against fits one by one.

Two parts.

``grid`` (CPU): issue 14's grid, side by side in one run. digits (all 1797 rows,
pixels in [0, 1], float64), ``hidden_layer_sizes=(100,)``, Adam, ``max_iter``,
``batch_size=64``, ``random_state=0``, ``alpha`` in 3 values × ``learning_rate_init``
in 4 values, 5-fold stratified CV (60 fits), ``refit=False``, searched by

- ``mlpx-stacked``: :class:`mlpx.model_selection.GridSearchCV` over
  ``mlpx.MLPClassifier`` (the 60 fits train as one stack);
- ``sklearn-n_jobs2``: scikit-learn's ``GridSearchCV(n_jobs=2)`` over its own
  ``MLPClassifier``;
- ``mlpx-one-by-one``: scikit-learn's ``GridSearchCV`` over ``mlpx.MLPClassifier``
  (one fit after another).

Rounds are interleaved (A B C A B C ...); times are wall seconds of one ``fit`` of
the search; ratios are medians of the per-round ratios, with issue 14's targets
(stacked ≤ 0.2 × scikit-learn's n_jobs=2 search, ≤ 0.3 × the one-by-one search).
The mean test scores of the three searches are compared (the stacked search's
equal scikit-learn's). The flop floor: the products every minibatch step of every
fit runs over ``max_iter`` epochs (forward, ``dW`` of each layer and ``dX`` of all
but the first), and with the first layer's ``dX`` too (3 products per layer: the
issue's ≈190 GFLOP), over the best float64 GEMM rate of the gemm section.

``members`` (CPU and GPU): the step time of a stack of K digits-size members
(64-128-64-32-10, batch 64, float32, each member its own shuffled rows) against K,
beside one plain ``Sequential``'s step; issue 14's GPU target is a stack's step at
most 2× one member's up to K = 64. And the memory a stack takes: per member
(parameters, gradients and Adam's moments, one minibatch's activations and
workspaces) and fixed (the data), computed, with the K where the device's memory
(the GPU's, or the host's RAM) would be full; on the CPU the computed bytes are
checked against tracemalloc's peak in one epoch.
"""

from __future__ import annotations

import statistics
import time
import tracemalloc
import warnings
from typing import Any

import numpy as np

from benchmarks.context import Context, skipped
from benchmarks.gemm import measure, step_shapes
from benchmarks.timing import blas_threads, summarize

__all__ = ["GRID_IMPLS", "TARGETS", "count", "flop_floor", "member_bytes", "search_section"]

GRID_IMPLS = ("mlpx-stacked", "sklearn-n_jobs2", "mlpx-one-by-one")
# Issue 14: stacked search time / other search time must be <= the bound.
TARGETS = [("mlpx-stacked", "sklearn-n_jobs2", 0.2), ("mlpx-stacked", "mlpx-one-by-one", 0.3)]
GPU_TARGET = 2.0  # stack step / one member's step, for K <= 64
MEMBER_NET = (64, 128, 64, 32, 10)
MEMBER_BATCH = 64


def count(ctx: Context) -> int:
    cfg = ctx.cfg
    n = 0
    if cfg.search_grid and ctx.use_cpu:
        n += 2 + len(GRID_IMPLS) * cfg.search_rounds  # data, warm-up, timed searches
    n += (int(ctx.use_cpu) + int(ctx.use_gpu)) * (1 + len(cfg.search_members))
    if ctx.use_cpu and cfg.search_memory_check:
        n += 1
    return n


def search_section(ctx: Context) -> dict[str, Any]:
    """The grid searches (CPU) and the member curve (CPU, GPU) with the memory model.

    Returns
    -------
    dict
        ``{"status", "reason", "grid": {...}, "members": {"parts": {"cpu", "gpu"}},
        "memory": {...}}`` (see :mod:`benchmarks.schema`).
    """
    cfg = ctx.cfg
    if not cfg.search_grid:
        grid = {"status": "skipped", "reason": "not part of this run (--gpu-check)", "records": []}
    elif not ctx.use_cpu:
        grid = {"status": "skipped", "reason": "--backend gpu", "records": []}
    else:
        grid = _grid(ctx)
    parts = {}
    for device in ("cpu", "gpu"):
        if device == "gpu" and not ctx.use_gpu:
            parts["gpu"] = skipped(ctx.gpu_reason or "")
            ctx.progress.note(f"search members gpu: skipped: {ctx.gpu_reason}")
            continue
        if device == "cpu" and not ctx.use_cpu:
            parts["cpu"] = skipped("--backend gpu")
            continue
        try:
            parts[device] = _members(ctx, device)
        except Exception as exc:  # a broken device must not lose the other's curve
            parts[device] = {"status": "error", "reason": f"{type(exc).__name__}: {exc}"[:300], "records": []}
    memory = _memory(ctx, parts)
    ok = grid.get("status") == "ok" or any(p["status"] == "ok" for p in parts.values())
    return {"status": "ok" if ok else "skipped", "reason": None if ok else "nothing ran",
            "grid": grid, "members": {"parts": parts}, "memory": memory}


# ====================================================================== grid
def _digits(n: int | None) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    if n is not None and n < X.shape[0]:
        idx = np.random.default_rng(0).permutation(X.shape[0])[:n]
        X, y = X[idx], y[idx]
    return X, y


def _searches(cfg: Any) -> dict[str, Any]:
    """The three searches of the grid, as zero-argument factories of unfitted searches."""
    import sklearn.model_selection as skms
    import sklearn.neural_network as sknn

    import mlpx
    from mlpx.model_selection import GridSearchCV

    grid = {"alpha": list(cfg.search_alphas), "learning_rate_init": list(cfg.search_lrs)}
    kw = dict(hidden_layer_sizes=tuple(cfg.search_hidden), solver="adam", max_iter=cfg.search_max_iter,
              batch_size=cfg.search_batch, random_state=0)
    return {
        "mlpx-stacked": lambda: GridSearchCV(mlpx.MLPClassifier(**kw), grid, cv=cfg.search_folds, refit=False),
        "sklearn-n_jobs2": lambda: skms.GridSearchCV(sknn.MLPClassifier(**kw), grid, cv=cfg.search_folds,
                                                     refit=False, n_jobs=2),
        "mlpx-one-by-one": lambda: skms.GridSearchCV(mlpx.MLPClassifier(**kw), grid, cv=cfg.search_folds,
                                                     refit=False),
    }


def flop_floor(sizes: tuple[int, ...], batch: int, n_train: list[int], epochs: int) -> dict[str, float]:
    """GEMM flops of a grid's minibatch steps over ``epochs`` epochs of every fit.

    Parameters
    ----------
    sizes : layer widths
    batch : int
    n_train : list of int
        Training rows of every fit (candidates × folds).

    Returns
    -------
    dict
        ``step_flops`` (the products a step runs: forward, dW of every layer, dX of
        all but the first) and ``three_per_layer_flops`` (also the first layer's
        dX: 3 products per layer), summed over every fit's steps.
    """
    run = 0.0
    three = 0.0
    for n in n_train:
        full, rem = divmod(n, batch)
        for rows, times in ((batch, full), (rem, 1 if rem else 0)):
            if not times:
                continue
            f = sum(2.0 * s["m"] * s["n"] * s["k"] for s in step_shapes(sizes, rows))
            run += times * epochs * f
            three += times * epochs * (f + 2.0 * rows * sizes[0] * sizes[1])
    return {"step_flops": run, "three_per_layer_flops": three}


def _grid(ctx: Context) -> dict[str, Any]:
    from sklearn.model_selection import StratifiedKFold

    cfg = ctx.cfg
    ctx.progress.step("grid data (digits)")
    X, y = _digits(cfg.search_samples)
    searches = _searches(cfg)
    n_train = [len(tr) for tr, _ in StratifiedKFold(cfg.search_folds).split(X, y)]
    n_train = n_train * (len(cfg.search_alphas) * len(cfg.search_lrs))
    sizes = (X.shape[1], *cfg.search_hidden, 10)
    times: dict[str, list[float]] = {k: [] for k in searches}
    scores: dict[str, np.ndarray] = {}
    stacked_all = True
    status: dict[str, str | None] = {k: None for k in searches}
    with warnings.catch_warnings(), blas_threads(None):
        warnings.simplefilter("ignore")  # ConvergenceWarning of every fit at max_iter
        # Untimed warm-up of each search on two rows of the grid for one epoch: numba's
        # loops load, joblib starts its workers (kept for the timed runs).
        small = X[: max(40, 4 * cfg.search_folds)], y[: max(40, 4 * cfg.search_folds)]
        ctx.progress.step(f"grid warm-up of {', '.join(searches)} (untimed)")
        for name, make in searches.items():
            try:
                make().set_params(estimator__max_iter=1, cv=2).fit(*small)
            except Exception:  # noqa: BLE001 - the timed run reports it
                pass
        for r in range(cfg.search_rounds):
            for name, make in searches.items():
                if status[name] is not None:
                    ctx.progress.step(f"grid {name} (round {r + 1}): not run, it failed")
                    continue
                ctx.progress.step(f"grid {name} (round {r + 1}, {len(n_train)} fits)")
                try:
                    search = make()
                    t0 = time.perf_counter()
                    search.fit(X, y)
                    times[name].append(time.perf_counter() - t0)
                except Exception as exc:  # keep the others
                    status[name] = f"{type(exc).__name__}: {exc}"[:300]
                    continue
                scores[name] = np.asarray(search.cv_results_["mean_test_score"], dtype=np.float64)
                if name == "mlpx-stacked":
                    stacked_all = bool(np.all(search.stacking_report()["stacked"]))
    n_fits = len(n_train)
    records = []
    for name in searches:
        if status[name] is not None or not times[name]:
            records.append({"key": f"search/grid/{name}", "name": name, "status": "error",
                            "reason": status[name] or "did not run"})
            continue
        records.append({"key": f"search/grid/{name}", "name": name, "status": "ok",
                        "time_s": summarize(times[name], 1), "s_per_fit": statistics.median(times[name]) / n_fits,
                        "best_mean_test_score": float(np.max(scores[name]))})
    ratios = []
    for a, b, bound in TARGETS:
        if times[a] and times[b]:
            per_round = [x / y for x, y in zip(times[a], times[b])]
            ratio = statistics.median(per_round)
            ratios.append({"numerator": a, "denominator": b, "ratio": ratio,
                           "round_range": [min(per_round), max(per_round)], "target": bound,
                           "met": bool(ratio <= bound)})
    floor = flop_floor(sizes, cfg.search_batch, n_train, cfg.search_max_iter)
    peak, source = _peak64(ctx)
    out: dict[str, Any] = {
        "status": "ok" if any(r["status"] == "ok" for r in records) else "error",
        "reason": None,
        "data": f"digits, {X.shape[0]} rows, float64",
        "sizes": list(sizes),
        "batch": cfg.search_batch,
        "max_iter": cfg.search_max_iter,
        "alphas": list(cfg.search_alphas),
        "learning_rates": list(cfg.search_lrs),
        "folds": cfg.search_folds,
        "n_fits": n_fits,
        "rounds": cfg.search_rounds,
        "records": records,
        "ratios": ratios,
        "stacked_all": stacked_all,
        "flop_floor": {
            "gflop": floor["step_flops"] / 1e9,
            "gflop_three_per_layer": floor["three_per_layer_flops"] / 1e9,
            "peak_gflops_float64": peak / 1e9,
            "peak_source": source,
            "floor_s": floor["step_flops"] / peak,
            "floor_s_three_per_layer": floor["three_per_layer_flops"] / peak,
        },
    }
    if "mlpx-stacked" in scores:
        out["score_differences"] = [
            {"against": k, "max_abs_score_difference": float(np.max(np.abs(scores["mlpx-stacked"] - v)))}
            for k, v in scores.items() if k != "mlpx-stacked"]
    if out["status"] != "ok":
        out["reason"] = "; ".join(r.get("reason", "") for r in records)
    return out


def _peak64(ctx: Context) -> tuple[float, str]:
    """Best float64 GEMM rate (FLOP/s) of the CPU at the run's threads."""
    threads = ctx.cfg.threads
    rate = ctx.peaks.get(("cpu", "float64", threads))
    if rate:
        return rate, "best float64 rate of the gemm section"
    n = 128 if ctx.cfg.mode == "tiny" else 1024
    res = measure(ctx, "cpu", dict(m=n, n=n, k=n, trans_a=False, trans_b=False), "float64", threads)
    if res["status"] != "ok":
        raise RuntimeError(f"could not measure the float64 GEMM rate: {res}")
    rate = res["gflops"] * 1e9
    ctx.peaks[("cpu", "float64", threads)] = rate
    return rate, f"float64 {n}^3 measured by the search section"


# =================================================================== members
def _member_data(n: int) -> tuple[np.ndarray, np.ndarray]:
    from benchmarks import data

    X, y, _, _ = data.digits(n, 1)
    return X, y


def _members(ctx: Context, device: str) -> dict[str, Any]:
    import mlpx

    cfg = ctx.cfg
    X, y = _member_data(cfg.search_member_rows)
    n = X.shape[0]
    steps = -(-n // MEMBER_BATCH)
    epochs = cfg.search_member_epochs
    backend = "gpu" if device == "gpu" else "cpu"
    threads = cfg.threads if device == "cpu" else None

    def single() -> float:
        model = mlpx.MLP(list(MEMBER_NET), backend=backend, dtype="float32", seed=0)
        model.fit(X, y, epochs=1, batch_size=MEMBER_BATCH)  # warm-up: workspaces, kernels
        samples = []
        for _ in range(cfg.repeats):
            t0 = time.perf_counter()
            model.fit(X, y, epochs=epochs, batch_size=MEMBER_BATCH)
            model.backend.synchronize()
            samples.append((time.perf_counter() - t0) / (epochs * steps))
        return summarize(samples, epochs * steps)

    def stacked(K: int) -> dict[str, float]:
        template = mlpx.MLP(list(MEMBER_NET), backend=backend, dtype="float32", seed=0)
        stack = mlpx.Stack(template, seeds=list(range(K)))
        stack.fit(X, y, epochs=1, batch_size=MEMBER_BATCH)
        samples = []
        for _ in range(cfg.repeats):
            t0 = time.perf_counter()
            stack.fit(X, y, epochs=epochs, batch_size=MEMBER_BATCH)
            stack.backend.synchronize()
            samples.append((time.perf_counter() - t0) / (epochs * steps))
        return summarize(samples, epochs * steps)

    with blas_threads(threads), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ctx.progress.step(f"members {device}: one Sequential")
        one = single()
        records = []
        for K in cfg.search_members:
            ctx.progress.step(f"members {device}: stack of {K}")
            t = stacked(K)
            records.append({
                "key": f"search/members/{device}/{K}", "status": "ok", "device": device, "members": K,
                "threads": threads, "time_s": t, "ratio_to_single": t["median"] / one["median"],
                "per_member_s": t["median"] / K, "speedup_vs_sequential_fits": K * one["median"] / t["median"],
            })
    part: dict[str, Any] = {"status": "ok", "reason": None, "network": list(MEMBER_NET), "batch": MEMBER_BATCH,
                            "dtype": "float32", "rows": n, "single": {"key": f"search/members/{device}/single",
                                                                      "time_s": one}, "records": records}
    if device == "gpu":
        within = [r for r in records if r["members"] <= 64]
        worst = max((r["ratio_to_single"] for r in within), default=None)
        if worst is not None:
            part["target"] = {"ratio": worst, "bound": GPU_TARGET, "met": bool(worst <= GPU_TARGET),
                              "up_to_members": max(r["members"] for r in within)}
    return part


# ==================================================================== memory
def member_bytes(sizes: tuple[int, ...], batch: int, itemsize: int, n_state: int = 2) -> int:
    """Bytes one member of a stack takes on its device during training.

    Parameters, gradients and ``n_state`` optimizer buffers (Adam: 2) of one flat
    row, the best-weights copy an early-stopping search keeps, its packed per-step
    scalars, and one minibatch's activations: the gathered X and Y rows, every
    Dense layer's output (and pre-activation copy), the backward's dX of each layer
    but the first, the output delta and the padding weights.
    """
    n_params = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    flat = (3 + n_state) * n_params
    acts = batch * (sizes[0] + 2 * sizes[-1] + 1)
    acts += batch * sum(2 * u for u in sizes[1:])
    acts += batch * sum(sizes[1:-1])
    return int(itemsize * (flat + acts + 16))


def _memory(ctx: Context, parts: dict[str, Any]) -> dict[str, Any]:
    """Memory per member (computed), where each device fills, and a CPU check."""
    per = member_bytes(MEMBER_NET, MEMBER_BATCH, 4)
    rows = ctx.cfg.search_member_rows
    fixed = rows * (MEMBER_NET[0] + MEMBER_NET[-1]) * 4
    out: dict[str, Any] = {"network": list(MEMBER_NET), "batch": MEMBER_BATCH, "dtype": "float32",
                           "bytes_per_member": per, "bytes_fixed": fixed, "devices": {}}
    grid_per = member_bytes((64, *ctx.cfg.search_hidden, 10), ctx.cfg.search_batch, 8)
    out["grid_bytes_per_member"] = grid_per
    host = _host_memory()
    if host:
        out["devices"]["cpu"] = {"capacity_bytes": host, "source": "MemTotal (/proc/meminfo)",
                                 "members_that_fit": int((0.9 * host - fixed) // per)}
    gpu = parts.get("gpu", {})
    cap = None
    if gpu.get("status") == "ok":
        try:
            free = ctx.gpu.device_free_bytes()
            cap, source = free, "free device memory when measured"
        except Exception:  # noqa: BLE001
            cap = None
    if cap is None:
        cap, source = int(139 * 2**30), "an H200's 139 GiB (computed, not measured here)"
    out["devices"]["gpu"] = {"capacity_bytes": cap, "source": source,
                             "members_that_fit": int((0.9 * cap - fixed) // per)}
    if ctx.use_cpu and ctx.cfg.search_memory_check:
        ctx.progress.step("memory: one epoch of stacks of 4 and 16 members under tracemalloc")
        out["measured_cpu"] = _traced(ctx)
    return out


def _host_memory() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _traced(ctx: Context) -> dict[str, Any]:
    """tracemalloc's peak during one epoch of stacks of two sizes: bytes per extra member."""
    import mlpx

    X, y = _member_data(ctx.cfg.search_member_rows)
    peaks = {}
    for K in (4, 16):
        template = mlpx.MLP(list(MEMBER_NET), dtype="float32", seed=0)
        stack = mlpx.Stack(template, seeds=list(range(K)), threads=1)
        stack.fit(X, y, epochs=1, batch_size=MEMBER_BATCH)
        tracemalloc.start()
        try:
            stack.fit(X, y, epochs=1, batch_size=MEMBER_BATCH)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        peaks[K] = peak + stack.params.nbytes + stack.grads.nbytes  # buffers allocated before tracing
    slope = (peaks[16] - peaks[4]) / 12
    return {"peak_bytes": {str(k): v for k, v in peaks.items()}, "bytes_per_member": slope,
            "computed_over_measured": member_bytes(MEMBER_NET, MEMBER_BATCH, 4) / slope}
