"""End-to-end training throughput: mlpx against scikit-learn and PyTorch.

Every implementation trains the same network (ReLU hidden layers, softmax output,
cross-entropy) on the same data, batch size, optimizer (Adam, lr 1e-3, betas 0.9 /
0.999, eps 1e-8, no L2 penalty) and number of epochs, from a fresh model each run.
A run is one ``fit`` call timed end to end (the data transfer to the device
included) and divided by its epochs. Implementations run interleaved (A B C A B C
...) after one untimed warm-up run each, so drift hits all of them alike; the
median over the repeats is reported, and ratios are the median of the per-round
ratios. The test accuracy of every run is recorded, so speed is never bought with
wrong answers.

Per workload the section also reports:

- the GEMM-bound floor: the epoch's matmul FLOPs over the best float32 GEMM rate
  measured on that device (the gemm section's, or measured here if it did not run);
- "GEMMs alone": the measured time of the step's exact products (with
  preallocated operands, through ``backend.gemm``) times the steps of an epoch;
- each implementation's ratio to both, and the ratios issue 5 sets targets for;
- the GPU precision modes (``mlpx.MLP(..., precision=P)``, P in tf32 / bf16 / fp16,
  rows "mlpx-gpu-<P>"): each one's time against the float32 "mlpx-gpu" row (the
  speed-up) and against "torch-cuda", and its test accuracy against the float32
  row's, run by run (every round trains all implementations from the same seed).
"""

from __future__ import annotations

import statistics
import time
import tracemalloc
import warnings
from typing import Any, Callable

import numpy as np

from benchmarks.config import GPU_PRECISIONS, Workload
from benchmarks.context import NO_CUDA, Context
from benchmarks.gemm import StepGemms, measure, step_shapes
from benchmarks.machine import torch_status
from benchmarks.timing import blas_threads, summarize

__all__ = ["IMPLEMENTATIONS", "TARGETS", "count", "precision_modes", "train_section"]

LR = 1e-3
# The float32 GPU row every precision mode is compared with.
FLOAT32_GPU = "mlpx-gpu"
# Tensor cores each mode needs (compute capability x 10): TF32 and bf16 arrived with
# Ampere (8.0), fp16 with Volta (7.0). On older GPUs the row would not time the mode
# (TF32 is plain float32 arithmetic there; bf16 / fp16 GEMMs run without tensor cores,
# if at all), so it is skipped with that reason.
_MIN_CC = {"tf32": 80, "bf16": 80, "fp16": 70}

# Issue 5's targets: time ratio numerator / denominator must be <= the bound.
# "gemms-<dev>" is the GEMMs-alone time, "floor-<dev>" the GEMM-bound floor.
# TF32 and bf16 must each be faster than float32 (bound 1.0; the report states the
# margin) on the workloads with GPU targets; digits' tiny products are launch-bound.
TARGETS: dict[str, list[tuple[str, str, float]]] = {
    "digits": [("mlpx-cpu", "sklearn-f64", 0.35), ("mlpx-cpu", "torch-cpu", 0.35)],
    "mlp512": [
        ("mlpx-est-cpu", "mlpx-cpu", 1.05),  # the estimators run the engine's own loop
        ("mlpx-cpu", "sklearn-f64", 0.3),
        ("mlpx-cpu", "torch-cpu", 0.9),
        ("mlpx-cpu", "gemms-cpu", 1.4),
        ("mlpx-gpu", "torch-cuda", 1.0),
        ("mlpx-gpu-tf32", FLOAT32_GPU, 1.0),
        ("mlpx-gpu-bf16", FLOAT32_GPU, 1.0),
    ],
    "wide2048": [
        ("mlpx-cpu", "torch-cpu", 1.0),
        ("mlpx-cpu", "gemms-cpu", 1.2),
        ("mlpx-gpu", "torch-cuda", 1.0),
        ("mlpx-gpu", "floor-gpu", 1.25),
        ("mlpx-gpu-tf32", FLOAT32_GPU, 1.0),
        ("mlpx-gpu-bf16", FLOAT32_GPU, 1.0),
    ],
}
# Ratios reported for every workload, with or without a target.
_ALWAYS = [
    ("mlpx-est-cpu", "mlpx-cpu"),
    ("mlpx-cpu", "sklearn-f64"),
    ("mlpx-cpu", "sklearn-f32"),
    ("mlpx-cpu", "torch-cpu"),
    ("mlpx-cpu", "gemms-cpu"),
    ("mlpx-cpu", "floor-cpu"),
    ("mlpx-gpu", "torch-cuda"),
    ("mlpx-gpu", "gemms-gpu"),
    ("mlpx-gpu", "floor-gpu"),
] + [(f"mlpx-gpu-{p}", ref) for p in GPU_PRECISIONS for ref in (FLOAT32_GPU, "torch-cuda")]


# ------------------------------------------------------------ implementations
class Impl:
    """One way to train: ``run`` returns (seconds for the fit call, test accuracy).

    Attributes
    ----------
    name : str
    device : {"cpu", "gpu"}
    threads : int or None
        BLAS threads it is pinned to (None: the run's thread count).
    """

    name = ""
    device = "cpu"
    threads: int | None = None
    dtype = "float32"
    precision: str | None = None  # mlpx's training precision mode; None for the peers

    def unavailable(self, ctx: Context) -> str | None:
        """Why it cannot run here, or None."""
        if self.device == "gpu" and not ctx.use_gpu:
            return ctx.gpu_reason
        if self.device == "cpu" and not ctx.use_cpu:
            return "--backend gpu"
        return None

    def run(self, data: tuple[np.ndarray, ...], wl: Workload, epochs: int, seed: int) -> tuple[float, float]:
        raise NotImplementedError


class MlpxImpl(Impl):
    """mlpx on one device; on the GPU optionally in a reduced-precision mode.

    Parameters
    ----------
    device : {"cpu", "gpu"}
    threads : int, optional
        Pin the CPU run to this many BLAS threads.
    precision : {"float32", "tf32", "bf16", "fp16"}
        ``mlpx.MLP``'s ``precision``; the modes other than float32 are GPU-only and
        named ``mlpx-gpu-<precision>`` (parameters stay float32: ``dtype`` is float32).
    """

    def __init__(self, device: str, threads: int | None = None, precision: str = "float32") -> None:
        if precision != "float32" and (device != "gpu" or precision not in GPU_PRECISIONS):
            raise ValueError(f"precision {precision!r} on {device!r}: modes {GPU_PRECISIONS} are GPU-only")
        self.device, self.threads, self.precision = device, threads, precision
        self.name = f"mlpx-{device}" + (f"-{threads}t" if threads else "") + (
            f"-{precision}" if precision != "float32" else "")
        self.last_model: Any = None

    def unavailable(self, ctx):
        reason = super().unavailable(ctx)
        if reason is None and self.precision in _MIN_CC:
            cc = _compute_capability()
            if cc is not None and cc < _MIN_CC[self.precision]:
                need = _MIN_CC[self.precision]
                reason = (f"{self.precision} needs tensor cores of compute capability >= {need // 10}.{need % 10}; "
                          f"this GPU has {cc // 10}.{cc % 10}")
        return reason

    def run(self, data, wl, epochs, seed):
        import mlpx

        X, y, Xt, yt = data
        be = "gpu" if self.device == "gpu" else "cpu"
        # float32 is the engine's default: the float32 rows omit the keyword, so they
        # time exactly what they timed before precision modes existed.
        kw = {} if self.precision == "float32" else {"precision": self.precision}
        before = _float32_compute_type() if self.device == "gpu" else None
        model = mlpx.MLP(list(wl.sizes), activation="relu", output="softmax", backend=be, dtype="float32", seed=seed,
                         **kw)
        t0 = time.perf_counter()
        model.fit(X, y, epochs=epochs, batch_size=wl.batch, optimizer="adam", lr=LR, shuffle=True)
        model.backend.synchronize()
        dt = time.perf_counter() - t0
        self.last_model = model
        acc = float(np.mean(model.predict(Xt) == yt))
        after = _float32_compute_type() if self.device == "gpu" else None
        if before != after:
            # CuPy's compute type is process-wide: a mode that leaves TF32 switched on
            # would silently turn every later float32 row into a TF32 row.
            _set_float32_compute_type(before)
            raise RuntimeError(f"precision={self.precision!r} left cuBLAS's float32 compute type changed "
                               f"({before} -> {after}); restored")
        return dt, acc


def _compute_capability() -> int | None:
    """Compute capability x 10 of the GPU the rows run on (86 for 8.6), None if unknown."""
    from mlpx.backends import get_backend

    try:
        return get_backend("gpu").compute_capability
    except Exception:  # unknown: let the run itself decide
        return None


def _float32_compute_type() -> int | None:
    """CuPy's cuBLAS compute type for float32 (process-wide), None if unknown."""
    try:
        from cupy import _core

        return int(_core.get_compute_type(np.float32))
    except Exception:  # not CuPy >= 13, or no CuPy: nothing to guard
        return None


def _set_float32_compute_type(value: int | None) -> None:
    if value is not None:
        from cupy import _core

        _core.set_compute_type(np.float32, value)


class MlpxEstimatorImpl(Impl):
    """``mlpx.MLPClassifier`` on the CPU in float32: the same network, data, batch,
    Adam and epochs as ``mlpx-cpu``, through the estimator (scikit-learn's policy on
    the engine's training loop)."""

    name = "mlpx-est-cpu"

    def unavailable(self, ctx):
        try:
            import sklearn  # noqa: F401
        except ImportError:
            return "scikit-learn not installed"
        return super().unavailable(ctx)

    def run(self, data, wl, epochs, seed):
        import mlpx
        from sklearn.exceptions import ConvergenceWarning

        X, y, Xt, yt = data
        clf = mlpx.MLPClassifier(
            hidden_layer_sizes=wl.sizes[1:-1], activation="relu", solver="adam", alpha=0.0,
            batch_size=wl.batch, learning_rate_init=LR, max_iter=epochs, shuffle=True,
            random_state=seed, tol=0.0, n_iter_no_change=epochs + 1, dtype="float32", backend="cpu",
        )
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(X, y)
        dt = time.perf_counter() - t0
        return dt, float(np.mean(clf.predict(Xt) == yt))


class SklearnImpl(Impl):
    def __init__(self, dtype: str) -> None:
        self.dtype = dtype
        self.name = "sklearn-f64" if dtype == "float64" else "sklearn-f32"

    def unavailable(self, ctx):
        try:
            import sklearn  # noqa: F401
        except ImportError:
            return "scikit-learn not installed"
        return super().unavailable(ctx)

    def run(self, data, wl, epochs, seed):
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPClassifier

        X, y, Xt, yt = data
        X = X.astype(self.dtype)  # float64: what a user passing NumPy's default gets
        clf = MLPClassifier(
            hidden_layer_sizes=wl.sizes[1:-1], activation="relu", solver="adam", alpha=0.0,
            batch_size=wl.batch, learning_rate_init=LR, max_iter=epochs, shuffle=True,
            random_state=seed, tol=0.0, n_iter_no_change=epochs + 1, early_stopping=False,
        )
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(X, y)
        dt = time.perf_counter() - t0
        return dt, float(np.mean(clf.predict(Xt.astype(self.dtype)) == yt))


class TorchImpl(Impl):
    def __init__(self, device: str) -> None:
        self.device = device
        self.name = "torch-cpu" if device == "cpu" else "torch-cuda"

    def unavailable(self, ctx):
        torch, reason = torch_status()
        if torch is None:
            return reason
        if self.device == "gpu" and ctx.use_gpu and not torch.cuda.is_available():
            return "torch has no CUDA support here"
        return super().unavailable(ctx)

    def run(self, data, wl, epochs, seed):
        import torch
        from torch import nn

        X, y, Xt, yt = data
        dev = torch.device("cuda" if self.device == "gpu" else "cpu")
        torch.manual_seed(seed)
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(wl.sizes[:-1], wl.sizes[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(wl.sizes) - 2:
                layers.append(nn.ReLU())
        model = nn.Sequential(*layers).to(dev)
        opt = torch.optim.Adam(model.parameters(), lr=LR, betas=(0.9, 0.999), eps=1e-8)
        lossf = nn.CrossEntropyLoss()
        gen = torch.Generator().manual_seed(seed)
        n, B = X.shape[0], wl.batch

        def sync() -> None:
            if dev.type == "cuda":
                torch.cuda.synchronize()

        sync()
        t0 = time.perf_counter()
        Xd = torch.from_numpy(X).to(dev)
        yd = torch.from_numpy(y).to(dev)
        for _ in range(epochs):
            perm = torch.randperm(n, generator=gen).to(dev)
            for a in range(0, n, B):
                idx = perm[a : a + B]
                opt.zero_grad(set_to_none=True)
                loss = lossf(model(Xd[idx]), yd[idx])
                loss.backward()
                opt.step()
        sync()
        dt = time.perf_counter() - t0
        with torch.no_grad():
            pred = model(torch.from_numpy(Xt).to(dev)).argmax(1).cpu().numpy()
        return dt, float(np.mean(pred == yt))


def IMPLEMENTATIONS(wl: Workload, cfg: Any) -> list[Impl]:
    """The implementations of a workload, in the interleaving order."""
    impls: list[Impl] = [MlpxImpl("cpu"), MlpxEstimatorImpl()]
    if wl.name == "digits" and cfg.threads > 1:
        impls.append(MlpxImpl("cpu", threads=1))  # small matrices: 1 thread may win
    impls.append(MlpxImpl("gpu"))  # float32: the reference of the precision modes
    impls += [MlpxImpl("gpu", precision=p) for p in cfg.train_gpu_precisions]
    impls += [SklearnImpl("float64"), SklearnImpl("float32"), TorchImpl("cpu"), TorchImpl("gpu")]
    return impls


# -------------------------------------------------------------------- data
def _load(wl: Workload) -> tuple[np.ndarray, ...]:
    from benchmarks import data

    if wl.data == "digits":
        return data.digits(wl.n_train, wl.n_test)
    return data.synthetic(wl.sizes[0], wl.sizes[-1], wl.n_train, wl.n_test, seed=0)


def _epoch_batches(n: int, batch: int) -> list[int]:
    full, rem = divmod(n, batch)
    return [batch] * full + ([rem] if rem else [])


def _epoch_flops(sizes: tuple[int, ...], n: int, batch: int) -> float:
    total = 0.0
    for rows in _epoch_batches(n, batch):
        total += sum(2.0 * s["m"] * s["n"] * s["k"] for s in step_shapes(sizes, rows))
    return total


# ------------------------------------------------------------------ section
def count(ctx: Context) -> int:
    devices = int(ctx.use_cpu) + int(ctx.use_gpu)
    n = 0
    for wl in ctx.cfg.workloads:
        active = [i for i in IMPLEMENTATIONS(wl, ctx.cfg) if i.unavailable(ctx) is None]
        n += 1 + len(active) * (1 + wl.repeats) + 2 * devices + 1  # data, warm-ups + runs, floors, memory
    return n


def train_section(ctx: Context) -> dict[str, Any]:
    """Run every workload; see the module docstring.

    Returns
    -------
    dict
        ``{"status", "workloads": [workload record, ...]}``.
    """
    if "digits" in [w.data for w in ctx.cfg.workloads]:
        try:
            import sklearn  # noqa: F401
        except ImportError:
            ctx.progress.note("train digits: skipped: scikit-learn not installed (it ships the digits data)")
    out = [_workload(ctx, wl) for wl in ctx.cfg.workloads]
    return {"status": "ok", "reason": None, "workloads": out}


def _workload(ctx: Context, wl: Workload) -> dict[str, Any]:
    cfg = ctx.cfg
    ctx.progress.step(f"{wl.name} data")
    try:
        data = _load(wl)
    except ImportError as exc:
        return {"name": wl.name, "status": "skipped", "reason": f"data unavailable: {exc}", "implementations": []}
    n = data[0].shape[0]
    impls = IMPLEMENTATIONS(wl, cfg)
    active = []
    results: dict[str, dict[str, Any]] = {}
    for impl in impls:
        reason = impl.unavailable(ctx)
        results[impl.name] = {"name": impl.name, "device": impl.device, "status": "ok" if reason is None else "skipped",
                              "reason": reason}
        if impl.precision is not None:
            results[impl.name]["precision"] = impl.precision
        if reason is None:
            active.append(impl)
        else:
            ctx.progress.note(f"train {wl.name} {impl.name}: skipped: {reason}")

    # Warm-up: one untimed short run each (imports, allocator, kernel compilation).
    n_warm = min(n, wl.batch)
    warm = (data[0][:n_warm], data[1][:n_warm], data[2][:64], data[3][:64])
    for impl in active:
        ctx.progress.step(f"{wl.name} warm-up {impl.name}")
        _guarded(ctx, results, impl, lambda impl=impl: _run(ctx, impl, warm, wl, 1, seed=0))

    times: dict[str, list[float]] = {i.name: [] for i in active}
    accs: dict[str, list[float]] = {i.name: [] for i in active}
    for r in range(wl.repeats):
        for impl in active:
            if results[impl.name]["status"] != "ok":
                ctx.progress.step(f"{wl.name} {impl.name} run {r + 1}/{wl.repeats}: not run, it failed")
                continue
            ctx.progress.step(f"{wl.name} {impl.name} run {r + 1}/{wl.repeats}")
            res = _guarded(ctx, results, impl, lambda impl=impl: _run(ctx, impl, data, wl, wl.epochs, seed=1 + r))
            if res is not None:
                times[impl.name].append(res[0] / wl.epochs)
                accs[impl.name].append(res[1])

    for impl in active:
        rec = results[impl.name]
        if rec["status"] != "ok" or not times[impl.name]:
            continue
        t = summarize(times[impl.name], wl.epochs)
        rec.update({
            "key": f"train/{wl.name}/{impl.name}",
            "threads": impl.threads or cfg.threads if impl.device == "cpu" else None,
            "dtype": impl.dtype,
            "time_s": t,  # seconds per epoch
            "s_per_epoch": t["median"],
            "samples_per_s": n / t["median"],
            "accuracy": statistics.median(accs[impl.name]),
            "accuracy_runs": accs[impl.name],
        })

    floors = {dev: _floor(ctx, wl, n, dev) for dev in ("cpu", "gpu")}
    memory = _memory(ctx, wl, data)
    refs = {f"{k}-{dev}": f for dev, fl in floors.items() if fl["status"] == "ok"
            for k, f in (("gemms", fl["gemms_alone_s_per_epoch"]), ("floor", fl["floor_s_per_epoch"]))}
    for rec in results.values():
        if rec["status"] == "ok" and "s_per_epoch" in rec:
            fl = floors[rec["device"]]
            if fl["status"] == "ok":
                rec["ratio_to_floor"] = rec["s_per_epoch"] / fl["floor_s_per_epoch"]
                rec["ratio_to_gemms_alone"] = rec["s_per_epoch"] / fl["gemms_alone_s_per_epoch"]
    return {
        "name": wl.name,
        "status": "ok",
        "reason": None,
        "label": wl.label,
        "sizes": list(wl.sizes),
        "batch": wl.batch,
        "data": wl.data,
        "n_train": n,
        "n_test": int(data[2].shape[0]),
        "epochs": wl.epochs,
        "repeats": wl.repeats,
        "steps_per_epoch": len(_epoch_batches(n, wl.batch)),
        "order": [i.name for i in impls],
        "implementations": list(results.values()),
        "floors": floors,
        "ratios": _ratios(wl, results, times, refs),
        "precision_modes": precision_modes(results, times),
        "memory": memory,
    }


def _run(ctx: Context, impl: Impl, data, wl, epochs, seed):
    with blas_threads(impl.threads or ctx.cfg.threads):
        return impl.run(data, wl, epochs, seed)


def _guarded(ctx: Context, results: dict, impl: Impl, fn: Callable[[], Any]) -> Any:
    """Run ``fn``; an exception marks the implementation failed instead of ending the suite."""
    try:
        return fn()
    except Exception as exc:  # a peer's failure is a result, not a crash
        results[impl.name].update(status="error", reason=f"{type(exc).__name__}: {exc}"[:300])
        ctx.progress.note(f"train {impl.name}: error: {exc}")
        return None


def _peak(ctx: Context, device: str) -> tuple[float, str]:
    """Best float32 GEMM rate (FLOP/s) on the device at the run's thread count."""
    threads = ctx.cfg.threads if device == "cpu" else None
    rate = ctx.peaks.get((device, "float32", threads))
    if rate:
        return rate, "best float32 rate of the gemm section"
    n = 1024 if device == "cpu" else 4096
    if ctx.cfg.mode == "tiny":
        n = 128 if device == "cpu" else 1024
    shape = dict(m=n, n=n, k=n, trans_a=False, trans_b=False)
    res = measure(ctx, device, shape, "float32", threads)
    if res["status"] != "ok":
        raise RuntimeError(f"could not measure the {device} GEMM rate: {res}")
    rate = res["gflops"] * 1e9
    ctx.peaks[(device, "float32", threads)] = rate
    return rate, f"float32 {n}^3 measured by the train section"


def _floor(ctx: Context, wl: Workload, n: int, device: str) -> dict[str, Any]:
    if device == "gpu" and not ctx.use_gpu:
        return {"status": "skipped", "reason": ctx.gpu_reason}
    if device == "cpu" and not ctx.use_cpu:
        return {"status": "skipped", "reason": "--backend gpu"}
    ctx.progress.step(f"{wl.name} GEMM floor {device}")
    rate, source = _peak(ctx, device)
    flops = _epoch_flops(wl.sizes, n, wl.batch)
    be = ctx.gpu if device == "gpu" else ctx.cpu
    threads = ctx.cfg.threads if device == "cpu" else None
    ctx.progress.step(f"{wl.name} GEMMs alone {device}")
    total = 0.0
    per_step = {}
    for rows in sorted(set(_epoch_batches(n, wl.batch)), reverse=True):
        sg = StepGemms(be, wl.sizes, rows)
        per_step[rows] = sg.time(ctx, threads)
        total += _epoch_batches(n, wl.batch).count(rows) * per_step[rows]["median"]
        del sg
    return {
        "status": "ok",
        "device": device,
        "threads": threads,
        "epoch_flops": flops,
        "peak_gflops": rate / 1e9,
        "peak_source": source,
        "floor_s_per_epoch": flops / rate,
        "gemms_alone_s_per_epoch": total,
        "gemms_alone_step_s": per_step[wl.batch] if wl.batch in per_step else per_step[max(per_step)],
        "gemms_alone_gflops": flops / total / 1e9,
    }


def _ratios(wl: Workload, results: dict, times: dict, refs: dict[str, float]) -> list[dict[str, Any]]:
    """Time ratios numerator/denominator (< 1: the numerator is faster), with targets."""
    targets = {(a, b): bound for a, b, bound in TARGETS.get(wl.name, [])}
    pairs = list(dict.fromkeys(_ALWAYS + list(targets)))
    out = []
    for a, b in pairs:
        ra, rb = results.get(a), results.get(b)
        if ra is None or ra.get("status") != "ok" or "s_per_epoch" not in ra:
            continue
        if b in refs:
            ratio = ra["s_per_epoch"] / refs[b]
            spread = None
        elif rb is not None and rb.get("status") == "ok" and "s_per_epoch" in rb:
            ratio, spread = _round_ratio(times[a], times[b])
        else:
            continue
        rec: dict[str, Any] = {"numerator": a, "denominator": b, "ratio": ratio, "round_range": spread}
        if rb is not None and "accuracy" in rb:
            rec["accuracy_delta_pp"] = 100.0 * (ra["accuracy"] - rb["accuracy"])
        if (a, b) in targets:
            rec["target"] = targets[(a, b)]
            rec["met"] = bool(ratio <= targets[(a, b)])
        out.append(rec)
    return out


def _round_ratio(ta: list[float], tb: list[float]) -> tuple[float, list[float]]:
    """Median and [min, max] of the per-round time ratios ta[r] / tb[r].

    Ratios are taken within a round (the two runs were neighbours in time), so drift
    between rounds cancels.
    """
    rounds = [x / y for x, y in zip(ta, tb)]
    return statistics.median(rounds), [min(rounds), max(rounds)]


def _measured(rec: dict[str, Any] | None) -> bool:
    return rec is not None and rec.get("status") == "ok" and "s_per_epoch" in rec


def precision_modes(results: dict[str, dict[str, Any]], times: dict[str, list[float]]) -> list[dict[str, Any]]:
    """Each GPU precision row compared with the float32 row and with torch-cuda.

    Parameters
    ----------
    results : dict
        Implementation records by name (``status``, ``reason``, ``s_per_epoch``,
        ``accuracy``, ``accuracy_runs`` once measured).
    times : dict
        Seconds per epoch of every round, by name; round r of every implementation
        trained from the same seed.

    Returns
    -------
    list of dict
        One per ``mlpx-gpu-<mode>`` row in ``results``: ``{precision, name,
        reference, status, reason}``, and when both rows were measured (status
        "ok"): ``s_per_epoch``, ``ratio_to_float32`` (median per-round time ratio
        mode / float32; < 1: the mode is faster), ``round_range``,
        ``speedup_vs_float32`` (1 / ratio_to_float32), ``faster_than_float32``,
        ``accuracy``, ``accuracy_float32``, ``accuracy_delta_pp`` (100 x the
        difference of the median test accuracies) and ``accuracy_delta_range_pp``
        (min and max over rounds of the same-seed differences), plus
        ``ratio_to_torch_cuda`` and ``torch_round_range`` when torch-cuda ran.
    """
    ref = results.get(FLOAT32_GPU)
    torch = results.get("torch-cuda")
    out = []
    for name, rec in results.items():
        p = rec.get("precision")
        if rec.get("device") != "gpu" or p not in GPU_PRECISIONS:
            continue
        row: dict[str, Any] = {"precision": p, "name": name, "reference": FLOAT32_GPU,
                               "status": rec["status"], "reason": rec.get("reason")}
        out.append(row)
        if rec["status"] != "ok":
            continue
        if not _measured(rec):
            row.update(status="error", reason="no completed timed run")
            continue
        if not _measured(ref):
            why = f"{ref['status']}: {ref.get('reason')}" if ref else "not run"
            row.update(status="skipped", reason=f"no float32 reference ({FLOAT32_GPU} {why})")
            continue
        ratio, spread = _round_ratio(times[name], times[FLOAT32_GPU])
        acc_rounds = [100.0 * (a - b) for a, b in zip(rec["accuracy_runs"], ref["accuracy_runs"])]
        row.update({
            "s_per_epoch": rec["s_per_epoch"],
            "ratio_to_float32": ratio,
            "round_range": spread,
            "speedup_vs_float32": 1.0 / ratio,
            "faster_than_float32": bool(ratio < 1.0),
            "accuracy": rec["accuracy"],
            "accuracy_float32": ref["accuracy"],
            "accuracy_delta_pp": 100.0 * (rec["accuracy"] - ref["accuracy"]),
            "accuracy_delta_range_pp": [min(acc_rounds), max(acc_rounds)],
        })
        if _measured(torch):
            row["ratio_to_torch_cuda"], row["torch_round_range"] = _round_ratio(times[name], times["torch-cuda"])
    return out


def _memory(ctx: Context, wl: Workload, data: tuple[np.ndarray, ...]) -> dict[str, Any]:
    """Peak host memory NumPy allocates during one mlpx CPU epoch (tracemalloc), untimed.

    Compared with the data, the parameters and one batch of activations, the sizes
    issue 5's memory target is stated in.
    """
    ctx.progress.step(f"{wl.name} memory (one epoch under tracemalloc)")
    n = min(data[0].shape[0], 2 * wl.batch)
    X, y = data[0][:n], data[1][:n]
    gpu = _gpu_pool_peak(wl, X, y) if ctx.use_gpu else {"status": "skipped", "reason": ctx.gpu_reason}
    if not ctx.use_cpu:
        return {"status": "skipped", "reason": "--backend gpu", "gpu": gpu}
    import mlpx

    model = mlpx.MLP(list(wl.sizes), activation="relu", output="softmax", backend="cpu", dtype="float32", seed=0)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        with blas_threads(ctx.cfg.threads):
            model.fit(X, y, epochs=1, batch_size=wl.batch, optimizer="adam", lr=LR)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    mib = 2.0**20
    return {
        "status": "ok",
        "n_samples": n,
        "peak_traced_mib": peak / mib,
        "data_mib": (X.nbytes + n * wl.sizes[-1] * 4) / mib,  # float32 X plus one-hot Y
        "params_mib": model.n_params * 4 / mib,
        "batch_activations_mib": wl.batch * sum(wl.sizes) * 4 / mib,
        "gpu": gpu,
    }


def _gpu_pool_peak(wl: Workload, X: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Bytes CuPy's memory pool holds after one mlpx GPU epoch, from an emptied pool.

    The pool keeps freed blocks for reuse, so what it holds after the epoch (the
    model still alive) is the epoch's high-water mark of device allocations.
    """
    import cupy

    import mlpx

    pool = cupy.get_default_memory_pool()
    pool.free_all_blocks()
    base = pool.total_bytes()
    model = mlpx.MLP(list(wl.sizes), activation="relu", output="softmax", backend="gpu", dtype="float32", seed=0)
    model.fit(X, y, epochs=1, batch_size=wl.batch, optimizer="adam", lr=LR)
    model.backend.synchronize()
    return {"status": "ok", "pool_peak_mib": (pool.total_bytes() - base) / 2.0**20}
