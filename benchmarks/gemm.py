"""GEMM through ``backend.gemm``: BLAS on the CPU, cuBLAS on the GPU.

Measures square products and the exact products an MLP training step issues, per
dtype (GPU: float64, float32, TF32, float16, bfloat16), with 1 and N BLAS threads
on the CPU where the product is small. Every product is checked once against a
float64 reference before it is timed: a sample of 16 rows x 64 columns of the
result is recomputed on the host with elementwise products and sums (no BLAS), and
the error, relative to ``|op(A)| |op(B)|``, must stay under a bound derived from the
dtype's rounding unit (see :func:`tolerance`).

On the CPU, ``blas`` compares the installed BLAS providers of the CPU backend
(:mod:`mlpx.backends.blas`: NumPy's BLAS, and oneMKL and BLIS when installed) on the
products of one training step of each network at its training batch size, in
float32, each provider's products checked against the float64 reference first. The
providers run in interleaved rounds (A B C A B C ...), and each one's time is the
median over the rounds; the report names the fastest per network. That comparison
lives in :mod:`benchmarks.blas` and runs in a child process (see there why).

The step shapes of a layer ``(n_in -> n_out)`` at batch ``B`` are those of
:class:`mlpx.layers.Dense`: forward ``Z = X W`` (B x n_in times n_in x n_out),
backward ``dW = Xᵀ dZ`` (``trans_a``) and ``dX = dZ Wᵀ`` (``trans_b``; not issued
for the first layer, whose input gradient nobody needs).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import numpy as np

from benchmarks.config import WORKLOADS
from benchmarks.context import Context, skipped
from benchmarks.timing import blas_threads, time_call, time_cuda

__all__ = [
    "StepGemms",
    "gemm_section",
    "step_shapes",
    "tolerance",
    "verify_product",
]

# Rounding units (input rounding, accumulation, output rounding) per benchmark dtype.
_UNITS = {
    "float64": (0.0, 2.0**-53, 2.0**-53),
    "float32": (0.0, 2.0**-24, 2.0**-24),
    "tf32": (2.0**-11, 2.0**-24, 2.0**-24),  # inputs rounded to a 10-bit mantissa
    "float16": (0.0, 2.0**-24, 2.0**-11),  # cuBLAS accumulates half in float32
    "bfloat16": (0.0, 2.0**-24, 2.0**-8),
}


def tolerance(dtype: str, k: int) -> float:
    """Bound on ``max |C - R| / max |op(A)||op(B)|`` for a correct product.

    ``4 (2 u_in + sqrt(k) u_acc + u_out)``: input rounding of both factors, the
    statistical summation error over ``k`` terms, and the output rounding, with a
    safety factor of 4. A wrong product (a transposed operand, garbage) is off by
    order 1.
    """
    u_in, u_acc, u_out = _UNITS[dtype]
    return 4.0 * (2.0 * u_in + math.sqrt(k) * u_acc + u_out)


def step_shapes(sizes: tuple[int, ...], batch: int) -> list[dict[str, Any]]:
    """The GEMMs of one forward+backward step of an MLP, in the order the engine runs them.

    Returns
    -------
    list of dict with keys op ("forward", "dW", "dX"), layer, m, n, k, trans_a, trans_b
        ``op(A)`` is m x k and ``op(B)`` is k x n.
    """
    layers = list(zip(sizes[:-1], sizes[1:]))
    out = []
    for i, (n_in, n_out) in enumerate(layers):
        out.append(dict(op="forward", layer=i, m=batch, n=n_out, k=n_in, trans_a=False, trans_b=False))
    for i in range(len(layers) - 1, -1, -1):
        n_in, n_out = layers[i]
        out.append(dict(op="dW", layer=i, m=n_in, n=n_out, k=batch, trans_a=True, trans_b=False))
        if i > 0:
            out.append(dict(op="dX", layer=i, m=batch, n=n_in, k=n_out, trans_a=False, trans_b=True))
    return out


# ----------------------------------------------------------------- operands
def _storage_dtype(dtype: str) -> Any:
    if dtype == "tf32":
        return np.float32
    if dtype == "bfloat16":
        import ml_dtypes  # CuPy's bfloat16 is ml_dtypes' (CuPy >= 14)

        return ml_dtypes.bfloat16
    return np.dtype(dtype)


def _compute_mode(be: Any, dtype: str) -> contextlib.AbstractContextManager[Any]:
    """TF32 tensor-core math for float32 products inside the block (GPU "tf32" rows only)."""
    if dtype != "tf32" or not be.is_gpu:
        return contextlib.nullcontext()
    return be.tf32_matmul()


class _Operands:
    """``A``, ``B`` and ``out`` for one product on one backend, random normal values."""

    def __init__(self, be: Any, shape: dict[str, Any], dtype: str, seed: int = 0) -> None:
        m, n, k = shape["m"], shape["n"], shape["k"]
        self.ta, self.tb = shape["trans_a"], shape["trans_b"]
        a_shape = (k, m) if self.ta else (m, k)
        b_shape = (n, k) if self.tb else (k, n)
        store = _storage_dtype(dtype)
        self.be = be
        if be.is_gpu:
            xp = be.xp
            with be.device:
                rs = xp.random.RandomState(seed)
                self.a = rs.standard_normal(a_shape, dtype=np.float32).astype(store)
                self.b = rs.standard_normal(b_shape, dtype=np.float32).astype(store)
                self.out = xp.empty((m, n), dtype=store)
        else:
            rng = np.random.default_rng(seed)
            self.a = rng.standard_normal(a_shape, dtype=np.float32).astype(store)
            self.b = rng.standard_normal(b_shape, dtype=np.float32).astype(store)
            self.out = np.empty((m, n), dtype=store)

    def __call__(self) -> Any:
        return self.be.gemm(self.a, self.b, trans_a=self.ta, trans_b=self.tb, out=self.out)


def verify_product(
    a: np.ndarray, b: np.ndarray, c: np.ndarray, trans_a: bool, trans_b: bool, rows: np.ndarray, cols: np.ndarray
) -> float:
    """Relative error of ``c[rows][:, cols]`` against a float64 reference (no BLAS).

    Parameters
    ----------
    a : ndarray, (m, k), or (k, m) if ``trans_a``
    b : ndarray, (k, n), or (n, k) if ``trans_b``
    c : ndarray, (len(rows), len(cols))
        The sampled block of the product under test.
    rows, cols : int arrays
        Which rows of ``op(a)`` and columns of ``op(b)`` were sampled.

    Returns
    -------
    float
        ``max |c - r| / max(|op(a)| |op(b)|)`` over the block.
    """
    A = (a[:, rows].T if trans_a else a[rows]).astype(np.float64)  # (r, k)
    B = (b[cols].T if trans_b else b[:, cols]).astype(np.float64)  # (k, c)
    c = np.asarray(c, dtype=np.float64)
    err = 0.0
    scale = 0.0
    for i in range(A.shape[0]):
        prod = A[i][:, None] * B  # (k, c): elementwise, then pairwise summation
        err = max(err, float(np.max(np.abs(prod.sum(axis=0) - c[i]))))
        scale = max(scale, float(np.max(np.abs(prod).sum(axis=0))))
    return err / scale if scale > 0 else err


def _check(ops: _Operands, dtype: str, seed: int = 1) -> dict[str, Any]:
    """Run the product once and compare a sampled block with the float64 reference."""
    be = ops.be
    C = ops()
    be.synchronize()
    m, n = C.shape
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(m, size=min(m, 16), replace=False))
    cols = np.sort(rng.choice(n, size=min(n, 64), replace=False))
    if be.is_gpu:
        xp = be.xp
        ri, ci = xp.asarray(rows), xp.asarray(cols)
        a = xp.asnumpy(ops.a[:, ri] if ops.ta else ops.a[ri])
        b = xp.asnumpy(ops.b[ci] if ops.tb else ops.b[:, ci])
        block = xp.asnumpy(C[ri][:, ci])
        sub_rows, sub_cols = np.arange(len(rows)), np.arange(len(cols))
    else:
        a, b, block = ops.a, ops.b, C[np.ix_(rows, cols)]
        sub_rows, sub_cols = rows, cols
    k = ops.a.shape[0] if ops.ta else ops.a.shape[1]
    err = verify_product(a, b, block, ops.ta, ops.tb, sub_rows, sub_cols)
    tol = tolerance(dtype, k)
    return {"max_rel_error": err, "tolerance": tol, "ok": bool(np.isfinite(err) and err <= tol)}


def measure(
    ctx: Context, device: str, shape: dict[str, Any], dtype: str, threads: int | None
) -> dict[str, Any]:
    """Verify once, then time one product. Returns the record's measured fields."""
    cfg = ctx.cfg
    be = ctx.gpu if device == "gpu" else ctx.cpu
    flops = 2.0 * shape["m"] * shape["n"] * shape["k"]
    try:
        with be.activated(), _compute_mode(be, dtype), blas_threads(threads):
            ops = _Operands(be, shape, dtype)
            check = _check(ops, dtype)
            if not check["ok"]:
                return {"status": "failed", "reason": "result differs from the float64 reference", "verify": check}
            if be.is_gpu:
                t = time_cuda(ops, repeats=cfg.repeats, min_time=cfg.min_time, warmup=cfg.warmup)
            else:
                t = time_call(ops, repeats=cfg.repeats, min_time=cfg.min_time, warmup=cfg.warmup)
            del ops
    except (ImportError, TypeError, NotImplementedError, ValueError) as exc:
        # e.g. bfloat16 without ml_dtypes / an older CuPy: say so, keep going
        return {"status": "skipped", "reason": f"{dtype} unsupported here: {type(exc).__name__}: {exc}"[:200]}
    return {"status": "ok", "verify": check, "time_s": t, "gflops": flops / t["median"] / 1e9}


# ----------------------------------------------------- a whole step's GEMMs
class StepGemms:
    """All GEMMs of one training step with preallocated operands: "the GEMMs alone".

    Parameters
    ----------
    be : Backend
    sizes : tuple of int
        Layer widths.
    batch : int
    dtype : str
        "float32" or "float64" (the training dtypes).

    Attributes
    ----------
    flops : float
        ``sum 2mnk`` over the step's products.
    """

    def __init__(self, be: Any, sizes: tuple[int, ...], batch: int, dtype: str = "float32") -> None:
        self.be = be
        self.shapes = step_shapes(sizes, batch)
        with be.activated():
            self.ops = [_Operands(be, s, dtype, seed=i) for i, s in enumerate(self.shapes)]
            # Every timed product is checked once against the float64 reference first.
            checks = [_check(op, dtype) for op in self.ops]
        bad = [(s, c) for s, c in zip(self.shapes, checks) if not c["ok"]]
        if bad:
            raise RuntimeError(f"GEMM differs from the float64 reference: {bad[0]}")
        self.max_rel_error = max(c["max_rel_error"] for c in checks)
        self.flops = float(sum(2.0 * s["m"] * s["n"] * s["k"] for s in self.shapes))

    def __call__(self) -> None:
        for op in self.ops:
            op()

    def time(self, ctx: Context, threads: int | None, min_time: float | None = None) -> dict[str, float]:
        """Per-step seconds of the GEMMs alone (device-timed on the GPU)."""
        cfg = ctx.cfg
        mt = cfg.min_time if min_time is None else min_time
        with self.be.activated(), blas_threads(threads):
            if self.be.is_gpu:
                return time_cuda(self, repeats=cfg.repeats, min_time=mt, warmup=cfg.warmup)
            return time_call(self, repeats=cfg.repeats, min_time=mt, warmup=cfg.warmup)


# ------------------------------------------------------------------ section
def _cpu_threads(cfg: Any, flops: float) -> list[int]:
    ts = [cfg.threads]
    if cfg.threads > 1 and flops <= cfg.one_thread_max_flops:
        ts.insert(0, 1)
    return ts


def _jobs(ctx: Context) -> list[tuple[str, dict[str, Any]]]:
    """(device, record skeleton) for every product to measure, in run order."""
    cfg = ctx.cfg
    jobs: list[tuple[str, dict[str, Any]]] = []
    devices = [d for d in ("cpu", "gpu") if (d == "cpu" and ctx.use_cpu) or (d == "gpu" and ctx.use_gpu)]
    for device in devices:
        sizes = cfg.gemm_cpu_sizes if device == "cpu" else cfg.gemm_gpu_sizes
        dtypes = cfg.gemm_cpu_dtypes if device == "cpu" else cfg.gemm_gpu_dtypes
        step_dtypes = cfg.gemm_step_cpu_dtypes if device == "cpu" else cfg.gemm_step_gpu_dtypes
        for n in sizes:
            shape = dict(op="square", layer=None, m=n, n=n, k=n, trans_a=False, trans_b=False)
            for dtype in dtypes:
                for t in _cpu_threads(cfg, 2.0 * n**3) if device == "cpu" else [None]:
                    jobs.append((device, dict(kind="square", network=None, batch=None, dtype=dtype, threads=t, **shape)))
        for net in cfg.gemm_step_networks:
            sizes_, batch, _ = WORKLOADS[net]
            for shape in step_shapes(sizes_, batch):
                flops = 2.0 * shape["m"] * shape["n"] * shape["k"]
                for dtype in step_dtypes:
                    for t in _cpu_threads(cfg, flops) if device == "cpu" else [None]:
                        jobs.append((device, dict(kind="step", network=net, batch=batch, dtype=dtype, threads=t, **shape)))
    return jobs


def _key(device: str, r: dict[str, Any]) -> str:
    shape = f"{r['m']}x{r['n']}x{r['k']}"
    t = "" if r["threads"] is None else f"/t{r['threads']}"
    if r["kind"] == "square":
        return f"gemm/{device}/square/{r['dtype']}{t}/{shape}"
    return f"gemm/{device}/step/{r['network']}/b{r['batch']}/{r['op']}{r['layer']}/{r['dtype']}{t}/{shape}"


def count(ctx: Context) -> int:
    n = len(_jobs(ctx))
    if ctx.use_cpu and ctx.use_gpu:
        n += 2 * len(ctx.cfg.crossover_batches)
    if ctx.use_cpu:
        n += 1  # the CPU BLAS providers, one child process
    return n


def gemm_section(ctx: Context) -> dict[str, Any]:
    """Run the GEMM section; fills ``ctx.peaks``.

    Returns
    -------
    dict
        ``{"status", "parts": {"cpu": part, "gpu": part}, "crossover": {...}}`` where a
        part is ``{"status", "reason", "records": [...]}``.
    """
    parts: dict[str, Any] = {
        "cpu": {"status": "ok", "reason": None, "records": []} if ctx.use_cpu else skipped("--backend gpu"),
        "gpu": {"status": "ok", "reason": None, "records": []} if ctx.use_gpu else skipped(ctx.gpu_reason or ""),
    }
    if not ctx.use_gpu:
        ctx.progress.note(f"gemm gpu: skipped: {ctx.gpu_reason}")
    for device, rec in _jobs(ctx):
        t = "" if rec["threads"] is None else f" {rec['threads']}t"
        label = rec["network"] + " " + rec["op"] if rec["kind"] == "step" else "square"
        ctx.progress.step(f"{device} {rec['dtype']}{t} {label} {rec['m']}x{rec['n']}x{rec['k']}")
        shape = {k: rec[k] for k in ("m", "n", "k", "trans_a", "trans_b")}
        res = measure(ctx, device, shape, rec["dtype"], rec["threads"])
        rec = {"key": _key(device, rec), "device": device, **rec, "flops": 2.0 * rec["m"] * rec["n"] * rec["k"], **res}
        if res["status"] == "failed":
            ctx.progress.note(f"GEMM CHECK FAILED: {rec['key']}: {res['verify']}")
        parts[device]["records"].append(rec)
    # Fraction of the best rate measured on the device for that dtype (any shape, threads).
    for device, part in parts.items():
        if part["status"] != "ok":
            continue
        best: dict[str, float] = {}
        for r in part["records"]:
            if r["status"] == "ok":
                best[r["dtype"]] = max(best.get(r["dtype"], 0.0), r["gflops"])
                pk = (device, r["dtype"], r["threads"])
                ctx.peaks[pk] = max(ctx.peaks.get(pk, 0.0), r["gflops"] * 1e9)
        for r in part["records"]:
            if r["status"] == "ok":
                r["fraction_of_peak"] = r["gflops"] / best[r["dtype"]]
        part["peak_gflops"] = best
    failed = [r["key"] for p in parts.values() for r in p["records"] if r["status"] == "failed"]
    return {
        "status": "failed" if failed else "ok",
        "failed_checks": failed,
        "parts": parts,
        "crossover": _crossover(ctx),
        "blas": _blas(ctx),
    }


def _blas(ctx: Context) -> dict[str, Any]:
    from benchmarks.blas import blas_section  # it imports StepGemms from here

    return blas_section(ctx)


def _crossover(ctx: Context) -> dict[str, Any]:
    """Smallest batch at which the GPU's step GEMMs beat the CPU's (data resident on each)."""
    cfg = ctx.cfg
    if not ctx.use_gpu:
        return {"status": "skipped", "reason": ctx.gpu_reason, "records": []}
    if not ctx.use_cpu:
        return {"status": "skipped", "reason": "--backend gpu", "records": []}
    sizes, _, _ = WORKLOADS[cfg.crossover_network]
    records = []
    for batch in cfg.crossover_batches:
        times = {}
        for device in ("cpu", "gpu"):
            ctx.progress.step(f"GPU/CPU crossover: {device} step products at batch {batch}")
            be = ctx.gpu if device == "gpu" else ctx.cpu
            sg = StepGemms(be, sizes, batch)
            times[device] = sg.time(ctx, cfg.threads if device == "cpu" else None)
            flops = sg.flops
            del sg
        records.append({
            "key": f"gemm/crossover/{cfg.crossover_network}/b{batch}",
            "batch": batch,
            "flops": flops,
            "cpu_time_s": times["cpu"],
            "gpu_time_s": times["gpu"],
            "gpu_speedup": times["cpu"]["median"] / times["gpu"]["median"],
        })
    wins = [r["batch"] for r in records if r["gpu_speedup"] > 1.0]
    return {
        "status": "ok",
        "network": cfg.crossover_network,
        "dtype": "float32",
        "crossover_batch": min(wins) if wins else None,
        "records": records,
    }

