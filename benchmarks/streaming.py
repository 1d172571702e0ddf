"""Training from data on disk: peak anonymous memory and epoch time against in memory.

For each format (zarr with its default codec and without compression, HDF5,
``np.memmap``) a float32 data set of
``cfg.streaming_rows`` rows × 784 features (a seeded 10-class mixture, written chunk
by chunk so the suite itself never holds it) is written under a temporary
directory, then one child process per format (``python -m benchmarks.streaming
--child ...``) trains 784-512-512-10 (batch 256, Adam, float32) on it:

1. one epoch from the store while a thread samples ``RssAnon`` of
   ``/proc/self/status`` every 2 ms: the peak, and the baseline after imports,
   model and a warm-up fit (what the data path adds is ``peak - baseline``);
2. ``cfg.streaming_rounds`` rounds of one epoch from the store (in round 0 the
   epoch of step 1) and one in-memory epoch over the store's first
   ``cfg.streaming_reference_rows`` rows (loaded into a NumPy array), back to back
   in alternating order, side by side in that process. The ratio is the store's
   seconds per row over the in-memory seconds per row, the median of the rounds'
   ratios. The store was just written, so it is in the page cache: the ratio is
   the data path's cost, not the disk's.

zarr and HDF5 use ``shuffle=True`` (:class:`mlpx.BlockShuffle` with its defaults:
chunk-aligned blocks, 32 MiB windows); the memory map keeps NumPy's exact shuffle.
The data is deleted after each format. Targets (issue 23, for the 4 GiB size of
``--full``): peak anonymous memory ≤ 0.5 GiB, epoch ≤ 1.15 × in memory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = ["count", "markdown", "streaming_section"]

FEATURES, CLASSES, BATCH = 784, 10, 256
SIZES = (FEATURES, 512, 512, CLASSES)
CHUNK_ROWS = 2048  # zarr and HDF5 chunks: 6.1 MiB of float32 rows
MEMORY_TARGET = 0.5 * 2**30
TIME_TARGET = 1.15
FULL_BYTES = 4 * 2**30  # the size, which the targets are stated for
_WRITE_ROWS = 16384


def count(ctx: Any) -> int:
    return 2 * len(ctx.cfg.streaming_formats) if ctx.use_cpu else 0


# ------------------------------------------------------------------- data
def _write(fmt: str, root: Path, n: int) -> Path:
    """The synthetic mixture in ``fmt`` under ``root``, chunk by chunk; labels in ``y.npy``."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((CLASSES, FEATURES), dtype=np.float32) * np.float32(6.0 / np.sqrt(2 * FEATURES))
    y = np.empty(n, dtype=np.int64)
    path = root / {"zarr": "X.zarr", "zarr-raw": "X.zarr", "hdf5": "X.h5", "memmap": "X.npy"}[fmt]
    if fmt.startswith("zarr"):
        import zarr

        raw = {"compressor": None} if fmt == "zarr-raw" else {}
        if raw and hasattr(zarr, "create_array"):  # zarr 3 names its codecs differently
            raw = {"compressors": None}
            store = zarr.create_array(store=str(path), shape=(n, FEATURES), dtype="float32",
                                      chunks=(CHUNK_ROWS, FEATURES), **raw)
        else:
            store = zarr.open_array(str(path), mode="w", shape=(n, FEATURES), dtype="float32",
                                    chunks=(CHUNK_ROWS, FEATURES), **raw)
    elif fmt == "hdf5":
        import h5py

        handle = h5py.File(path, "w")
        store = handle.create_dataset("X", shape=(n, FEATURES), dtype="float32", chunks=(CHUNK_ROWS, FEATURES))
    else:
        store = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, FEATURES))
    for a in range(0, n, _WRITE_ROWS):
        b = min(a + _WRITE_ROWS, n)
        y[a:b] = rng.integers(0, CLASSES, size=b - a)
        X = rng.standard_normal((b - a, FEATURES), dtype=np.float32)
        X += centres[y[a:b]]
        store[a:b] = X
    if fmt == "hdf5":
        handle.close()
    elif fmt == "memmap":
        store.flush()
        del store
    np.save(root / "y.npy", y)
    return path


def _open(fmt: str, path: Path) -> Any:
    if fmt.startswith("zarr"):
        import zarr

        return zarr.open_array(str(path), mode="r")
    if fmt == "hdf5":
        import h5py

        return h5py.File(path, "r")["X"]
    return np.load(path, mmap_mode="r")


def _describe(fmt: str) -> str:
    return {"zarr": f"zarr, chunks of {CHUNK_ROWS} rows, its default codec (zstd)",
            "zarr-raw": f"zarr, chunks of {CHUNK_ROWS} rows, no compression",
            "hdf5": f"HDF5 (h5py), chunks of {CHUNK_ROWS} rows, no compression",
            "memmap": "np.memmap (.npy), NumPy's exact shuffle"}[fmt]


# ------------------------------------------------------------------ child
def _anon_bytes() -> int:
    with open("/proc/self/status") as fh:
        return int(re.search(r"RssAnon:\s+(\d+)\s+kB", fh.read()).group(1)) * 1024


class _PeakAnon:
    """A thread sampling this process's anonymous resident memory every ``period`` seconds."""

    def __init__(self, period: float = 0.002) -> None:
        self.peak = _anon_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(period,), daemon=True)
        self._thread.start()

    def _run(self, period: float) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _anon_bytes())
            time.sleep(period)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _anon_bytes())
        return self.peak


def _child(args: dict[str, Any]) -> dict[str, Any]:
    from threadpoolctl import threadpool_limits

    import mlpx

    fmt, path = args["format"], Path(args["path"])
    X = _open(fmt, path)
    y = np.load(path.parent / "y.npy")
    n, m = int(X.shape[0]), int(args["reference_rows"])
    out: dict[str, Any] = {"rows": n, "reference_rows": m}
    with threadpool_limits(limits=args["threads"]):
        model = mlpx.MLP(list(SIZES), seed=0)
        model.fit(np.asarray(X[:BATCH * 4]), y[:BATCH * 4], epochs=1, batch_size=BATCH)  # workspaces, compiled loops
        fit = lambda data, labels: model.fit(data, labels, epochs=1, batch_size=BATCH, shuffle=True)  # noqa: E731
        base = _anon_bytes()
        sampler = _PeakAnon()
        c0, t0 = time.process_time(), time.perf_counter()
        fit(X, y)
        out["first_epoch_s"] = time.perf_counter() - t0
        first_cpu = time.process_time() - c0
        out["peak_anon_bytes"], out["baseline_anon_bytes"] = sampler.stop(), base
        X_mem, y_mem = np.ascontiguousarray(X[:m]), np.ascontiguousarray(y[:m])
        # Round r is a store epoch and an in-memory one, back to back, alternating which
        # goes first; the store epoch of round 0 is the one just sampled. CPU time (all
        # threads of the process) is recorded too: it is what the data path adds in
        # work, whatever else the machine runs.
        wall: dict[str, list[float]] = {"stream": [out["first_epoch_s"]], "memory": []}
        cpu: dict[str, list[float]] = {"stream": [first_cpu], "memory": []}
        for r in range(args["rounds"]):
            order = ("memory",) if r == 0 else (("memory", "stream") if r % 2 else ("stream", "memory"))
            for which in order:
                c0, t0 = time.process_time(), time.perf_counter()
                fit(*((X_mem, y_mem) if which == "memory" else (X, y)))
                wall[which].append(time.perf_counter() - t0)
                cpu[which].append(time.process_time() - c0)
        out["stream_s"], out["memory_s"] = wall["stream"], wall["memory"]
        out["stream_cpu_s"], out["memory_cpu_s"] = cpu["stream"], cpu["memory"]
        out["accuracy"] = float(model.evaluate(X_mem[: min(m, 20000)], y_mem[: min(m, 20000)])["accuracy"])
    return out


def _run_child(args: dict[str, Any], timeout: float) -> dict[str, Any]:
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    proc = subprocess.run([sys.executable, "-m", "benchmarks.streaming", "--child", json.dumps(args)],
                          capture_output=True, text=True, timeout=timeout, cwd=root, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({proc.returncode}): {proc.stderr[-1500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- section
def _stats(samples: list[float]) -> dict[str, float]:
    from benchmarks.timing import summarize

    return summarize(samples, 1)


def _record(fmt: str, got: dict[str, Any], full_size: bool) -> dict[str, Any]:
    n, m = got["rows"], got["reference_rows"]
    ratios = [(s / n) / (t / m) for s, t in zip(got["stream_s"], got["memory_s"])]
    ratio = statistics.median(ratios)
    cpu_ratio = statistics.median((s / n) / (t / m) for s, t in zip(got["stream_cpu_s"], got["memory_cpu_s"]))
    peak, base = got["peak_anon_bytes"], got["baseline_anon_bytes"]
    return {
        "key": f"streaming/{fmt}",
        "format": fmt,
        "storage": _describe(fmt),
        "status": "ok",
        "rows": n,
        "data_bytes": n * FEATURES * 4,
        "time_s": _stats(got["stream_s"]),
        "s_per_epoch": statistics.median(got["stream_s"]),
        "rows_per_s": n / statistics.median(got["stream_s"]),
        "first_epoch_s": got["first_epoch_s"],
        "memory_reference_rows": m,
        "memory_time_s": _stats(got["memory_s"]),
        "ratio_to_memory": ratio,
        "round_range": [min(ratios), max(ratios)],
        "cpu_ratio_to_memory": cpu_ratio,
        "peak_anon_bytes": peak,
        "baseline_anon_bytes": base,
        "added_anon_bytes": max(peak - base, 1),
        "accuracy": got["accuracy"],
        "targets": [
            {"what": "peak anonymous memory", "value": peak, "bound": MEMORY_TARGET, "met": peak <= MEMORY_TARGET,
             "stated_for_this_size": full_size},
            {"what": "epoch time / in memory", "value": ratio, "bound": TIME_TARGET, "met": ratio <= TIME_TARGET,
             "stated_for_this_size": full_size},
        ],
    }


def streaming_section(ctx: Any) -> dict[str, Any]:
    """Peak anonymous memory and epoch-time ratio of each format (see the module docstring).

    Returns
    -------
    dict
        ``{"status", "reason", "network", "batch", "rows", "data_bytes", "records"}``;
        each record has ``time_s`` (stats of seconds per epoch from the store),
        ``ratio_to_memory``, ``peak_anon_bytes`` and the ``targets`` with ``met``.
    """
    cfg = ctx.cfg
    if not ctx.use_cpu:
        return {"status": "skipped", "reason": "--backend gpu (the section measures CPU training)"}
    if not Path("/proc/self/status").exists():
        return {"status": "skipped", "reason": "needs Linux's /proc/self/status (RssAnon)"}
    needs = {"zarr": "zarr", "zarr-raw": "zarr", "hdf5": "h5py"}
    formats = [f for f in cfg.streaming_formats if f not in needs or _importable(needs[f])]
    n = int(cfg.streaming_rows)
    data_bytes = n * FEATURES * 4
    head = {"network": "-".join(map(str, SIZES)), "batch": BATCH, "dtype": "float32", "rows": n,
            "data_bytes": data_bytes, "chunk_rows": CHUNK_ROWS, "rounds": cfg.streaming_rounds,
            "reference_rows": min(n, cfg.streaming_reference_rows), "sample_period_s": 0.002,
            "full_size": data_bytes >= FULL_BYTES * 0.99}
    tmp = Path(tempfile.mkdtemp(prefix="mlpx-streaming-"))
    head["scratch_dir"] = str(tmp)  # deleted at the end
    free = shutil.disk_usage(tmp).free
    if free < 2 * data_bytes:
        shutil.rmtree(tmp, ignore_errors=True)
        return {"status": "skipped", "reason": f"{free / 2**30:.1f} GiB free under {tmp.parent}, "
                f"{2 * data_bytes / 2**30:.1f} GiB needed", **head}
    records: list[dict[str, Any]] = []
    try:
        for fmt in cfg.streaming_formats:
            if fmt not in formats:
                records.append({"key": f"streaming/{fmt}", "format": fmt, "status": "skipped",
                                "reason": f"{needs[fmt]} not installed: pip install \"mlpx[data]\""})
                continue
            ctx.progress.step(f"streaming {fmt}: writing {data_bytes / 2**20:.0f} MiB")
            root = tmp / fmt
            root.mkdir()
            path = _write(fmt, root, n)
            ctx.progress.step(f"streaming {fmt}: {2 * cfg.streaming_rounds} epochs in a child process")
            args = {"format": fmt, "path": str(path), "reference_rows": head["reference_rows"],
                    "rounds": cfg.streaming_rounds, "threads": cfg.threads}
            try:
                records.append(_record(fmt, _run_child(args, timeout=cfg.streaming_timeout_s), head["full_size"]))
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                records.append({"key": f"streaming/{fmt}", "format": fmt, "status": "error", "reason": str(exc)[:500]})
            finally:
                shutil.rmtree(root, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ok = [r for r in records if r["status"] == "ok"]
    return {"status": "ok" if ok else "error", "reason": None if ok else "no format was measured",
            **head, "records": records}


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


# ----------------------------------------------------------------- report
def markdown(s: dict[str, Any] | None, table: Callable[[list[str], list[list[Any]]], list[str]]) -> list[str]:
    """The section's part of ``report.md`` (``table`` renders a Markdown table: the report's)."""
    L = ["## Streaming: training from data on disk", ""]
    if not s:
        return L + ["*not measured (results file older than schema 1.4)*", ""]
    if s["status"] != "ok":
        return L + [f"*{s['status']}: {s.get('reason')}*", ""]
    size = f"{s['data_bytes'] / 2**30:.2f} GiB" if s["data_bytes"] >= 2**30 else f"{s['data_bytes'] / 2**20:.0f} MiB"
    L += [f"{s['network']} (batch {s['batch']}, Adam, float32) on {s['rows']:,} rows × 784 float32 ({size}), "
          f"one child process per format; in-memory reference: the first {s['reference_rows']:,} rows as a NumPy "
          f"array, {s['rounds']} interleaved round(s). Peak anonymous memory: `RssAnon` sampled every "
          f"{1e3 * s['sample_period_s']:.0f} ms during the first epoch. The time ratio is per row, median of "
          f"the rounds [range]; the CPU-time ratio (all threads of the process) is the work the data path adds, "
          f"whatever else the machine runs.", ""]
    rows = []
    for r in s["records"]:
        if r["status"] != "ok":
            rows.append([r["format"], f"*{r['status']}: {r.get('reason')}*", "", "", "", "", "", ""])
            continue
        mem, ratio = r["targets"]
        rows.append([r["format"], r["storage"], f"{r['s_per_epoch']:.3g} s",
                     f"{r['ratio_to_memory']:.3f} [{r['round_range'][0]:.3f}–{r['round_range'][1]:.3f}]",
                     "yes" if ratio["met"] else "**no**", f"{r['cpu_ratio_to_memory']:.3f}",
                     f"{r['peak_anon_bytes'] / 2**20:.0f} MiB "
                     f"(+{r['added_anon_bytes'] / 2**20:.0f})", "yes" if mem["met"] else "**no**"])
    L += table(["format", "storage", "epoch", "× in memory", "≤ 1.15", "CPU time × in memory",
                "peak anon (data path)", "≤ 0.5 GiB"], rows)
    if not s.get("full_size"):
        L += ["The targets are stated for the 4 GiB data set of `--full`; this mode's rows are smaller.", ""]
    return L



if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(_child(json.loads(sys.argv[2]))))
    else:
        raise SystemExit("usage: python -m benchmarks --only streaming (this module's --child runs one format)")
