"""Data-parallel scaling: training throughput on 1..K ranks and the all-reduce's share.

Run under an MPI launcher from the repository root::

    mpiexec -n 2 python -m benchmarks.distributed              # measures 1 and 2 ranks
    mpiexec -n 4 python -m benchmarks.distributed --out my.json  # 1, 2 and 4 ranks

One launch measures every rank count k in 1, 2, 4, ..., K (and K): the first k ranks
train on a sub-communicator while the others wait without spinning. The global data
set and the *global* batch are fixed (strong scaling: each of k ranks gets B/k rows
per step), so samples/s is comparable across k and the trained model is the same.

Reported per (model, k): samples/s, the speed-up over one rank, the step time, the
share of step time spent inside the gradient all-reduce (a blocking call, so it
includes waiting for the slowest rank), and the bare all-reduce time of the same
buffer measured alone. Rank threads: one BLAS/numba thread per rank, and for k = 1 a
second row with one rank using every core (the fair single-process baseline).

Writes a JSON document (``--out``, default ``benchmarks/results/distributed_scaling.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

MODELS = {
    # name: (layer sizes, global batch)
    "mlp-64-256-256-10": ([64, 256, 256, 10], 256),
    "mlp-64-32-10": ([64, 32, 10], 64),
}


def _set_threads(n: int) -> None:
    os.environ["MLPX_BLAS_THREADS"] = str(n)  # read by the CPU backend at every fit
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)
    except ImportError:
        pass
    try:
        import numba

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    except ImportError:
        pass


def _wait_quietly(comm: Any) -> None:
    """Barrier without busy polling, so idle ranks leave the cores to the measured ones."""
    req = comm.Ibarrier()
    while not req.Test():
        time.sleep(0.002)


def _bare_allreduce(comm: Any, n: int, dtype: str, repeats: int = 200) -> float:
    """Seconds per in-place all-reduce of n floats (after a barrier, no compute around it)."""
    from mpi4py import MPI

    buf = np.ones(n, dtype=dtype)
    for _ in range(10):
        comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
    comm.Barrier()
    t0 = time.perf_counter()
    for _ in range(repeats):
        comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
    return (time.perf_counter() - t0) / repeats


def measure(
    comm: Any, sizes: list[int], global_batch: int, n_rows: int, epochs: int, threads: int, repeats: int = 3
) -> dict[str, Any]:
    """Train on ``comm`` (all its ranks): the best of ``repeats`` fits; all-reduce share averaged over ranks."""
    from mpi4py import MPI

    import mlpx
    from mlpx.distributed import make_reducer, shard_indices

    k, rank = comm.Get_size(), comm.Get_rank()
    _set_threads(threads)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n_rows, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], size=n_rows)
    idx = shard_indices(n_rows, rank, k)
    batch = max(1, global_batch // k)
    model = mlpx.MLP(sizes, activation="relu", output="softmax", dtype="float32", seed=0)
    reducer = make_reducer(comm, model.backend)
    kw = dict(batch_size=batch, optimizer="adam", shuffle=True, comm=reducer)
    model.fit(X[idx], y[idx], epochs=1, **kw)  # warm-up: compiles, allocates workspaces
    best = None
    for _ in range(repeats):  # best of a few: the machine may be shared
        reducer.allreduce_seconds, reducer.allreduce_calls = 0.0, 0
        comm.Barrier()
        t0 = time.perf_counter()
        model.fit(X[idx], y[idx], epochs=epochs, **kw)
        elapsed = comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)
        share = comm.allreduce(reducer.allreduce_seconds / elapsed) / k
        if best is None or elapsed < best[0]:
            best = (elapsed, share, reducer.allreduce_calls)
    elapsed, share, steps = best
    bare = _bare_allreduce(comm, model.n_params + 2, "float32") if k > 1 else 0.0
    return {
        "ranks": k, "threads_per_rank": threads, "per_rank_batch": batch, "global_batch": batch * k,
        "n_params": model.n_params, "steps": steps, "seconds": elapsed,
        "samples_per_s": n_rows * epochs / elapsed, "step_ms": 1e3 * elapsed / steps,
        "allreduce_share": share, "bare_allreduce_us": 1e6 * bare,
    }


def main() -> None:
    from mpi4py import MPI

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=16384, help="global training rows")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="timed fits per point; the fastest counts")
    p.add_argument("--out", default="benchmarks/results/distributed_scaling.json")
    args = p.parse_args()

    world = MPI.COMM_WORLD
    rank, K = world.Get_rank(), world.Get_size()
    cores = os.cpu_count() or 1
    load_before = os.getloadavg()[0]
    counts = sorted({k for k in (1, 2, 4, 8, 16, 32, 64) if k <= K} | {K})
    rows = []
    for name, (sizes, global_batch) in MODELS.items():
        plans = [(1, cores)] + [(k, 1) for k in counts]  # (ranks, threads per rank)
        for k, threads in plans:
            sub = world.Split(0 if rank < k else MPI.UNDEFINED, rank)
            if sub != MPI.COMM_NULL:
                row = measure(sub, sizes, global_batch, args.rows, args.epochs, threads, args.repeats)
                sub.Free()
            else:
                row = None
            _wait_quietly(world)
            if rank == 0:
                rows.append({"model": name, **row})
    if rank != 0:
        return
    for row in rows:
        base = next(r for r in rows if r["model"] == row["model"] and r["ranks"] == 1 and r["threads_per_rank"] == 1)
        row["speedup_vs_1rank_1thread"] = row["samples_per_s"] / base["samples_per_s"]
    doc = {
        "benchmark": "distributed", "launched_ranks": K, "cores": cores, "rows": args.rows,
        "epochs": args.epochs, "machine": platform.platform(), "processor": platform.processor(),
        "mpi": " ".join(MPI.Get_library_version().splitlines()[0].split()),
        # Other work on the machine skews every number: the 1-minute load, before and after.
        "loadavg_before": load_before, "loadavg_after": os.getloadavg()[0], "results": rows,
    }
    print(f"data-parallel scaling: {args.rows} rows, {args.epochs} epochs, {cores} cores, {doc['mpi']}, "
          f"load average {doc['loadavg_before']:.1f} -> {doc['loadavg_after']:.1f}")
    header = f"{'model':<20} {'ranks':>5} {'thr/rank':>8} {'batch/rank':>10} {'samples/s':>10} {'speed-up':>8} {'step ms':>8} {'in all-reduce':>13} {'bare AR us':>10}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['model']:<20} {r['ranks']:>5} {r['threads_per_rank']:>8} {r['per_rank_batch']:>10} "
              f"{r['samples_per_s']:>10.0f} {r['speedup_vs_1rank_1thread']:>8.2f} {r['step_ms']:>8.3f} "
              f"{100 * r['allreduce_share']:>12.1f}% {r['bare_allreduce_us']:>10.1f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
