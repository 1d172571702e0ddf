"""Scenarios of data-parallel training, run under ``mpiexec -n K python tests/_mpi_worker.py``.

Each rank runs a scenario on its shard and writes what it saw to
``<outdir>/<scenario>.rank<r>.pkl``; ``tests/test_distributed.py`` compares those
files with single-process references. The data and model helpers at the top are
imported by the tests too, so both sides build the same problem.

Usage: python tests/_mpi_worker.py SCENARIO OUTDIR
"""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

N_ROWS = 50
N_FEATURES = 5
N_CLASSES = 3
BATCH = 4  # per rank
UNEVEN_BATCH = 5
L2 = 0.01
OPTIMIZERS = {"sgd": {"lr": 0.1, "momentum": 0.9}, "adam": {"lr": 0.01}}


def make_data(n: int = N_ROWS, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A small 3-class problem with positive, uneven sample weights."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, N_FEATURES))
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(int) + (X[:, 2] > 0.8).astype(int)
    w = rng.uniform(0.2, 3.0, size=n)
    return X, y, w


def make_model(seed: int = 0, backend: str = "cpu") -> Any:
    import mlpx

    return mlpx.MLP([N_FEATURES, 8, N_CLASSES], activation="tanh", output="softmax", dtype="float64",
                    seed=seed, backend=backend)


def uneven_sizes(size: int) -> list[int]:
    """Contiguous shard sizes for the uneven case: one big shard, a small one, an empty one."""
    return [23, 7] if size == 2 else [23, 7, 0]


def make_optimizer(name: str) -> Any:
    import mlpx

    return {"sgd": mlpx.SGD, "adam": mlpx.Adam}[name](**OPTIMIZERS[name])


# ---------------------------------------------------------------- launching
SKIP_REASON = 'needs mpi4py and an mpiexec launcher: pip install "mlpx[mpi]" (mpi4py + the mpich wheel)'


def has_mpi4py() -> bool:
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return False
    return True


def find_mpiexec() -> str | None:
    """The launcher next to this Python (where the mpich wheel puts it), else one on PATH."""
    sibling = Path(sys.executable).with_name("mpiexec")
    if sibling.exists():
        return str(sibling)
    return shutil.which("mpiexec") or shutil.which("mpirun")


def launch(size: int, scenario: str, outdir: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """``mpiexec -n size python _mpi_worker.py scenario outdir``, killed after ``timeout`` seconds."""
    env = dict(os.environ)
    # One thread per rank: the ranks already share the cores.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env[var] = "1"
    # Harmless for MPICH; lets Open MPI run as root and with more ranks than cores.
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1", PRTE_MCA_rmaps_default_mapping_policy=":oversubscribe")
    cmd = [find_mpiexec() or "mpiexec", "-n", str(size), sys.executable, str(Path(__file__).resolve()),
           scenario, str(outdir)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


# ---------------------------------------------------------------- scenarios
def run_batch(comm: Any, out: dict[str, Any]) -> None:
    """The exactness, uneven, early-stopping, checkpoint and set-up-failure checks."""
    import mlpx
    from mlpx.distributed import ModelCheckpoint, RankFailedError, load_checkpoint, shard_indices

    rank, size = comm.Get_rank(), comm.Get_size()
    X, y, w = make_data()

    # 1. Exactness: block shards + shuffle=False == one process with batch size*BATCH.
    idx = shard_indices(len(X), rank, size, block=BATCH)
    for opt in OPTIMIZERS:
        for case in ("plain", "l2_sw"):
            model = make_model(seed=0 if rank == 0 else 100 + rank)  # rank 0's weights must win
            kw = {"l2": L2, "sample_weight": w[idx]} if case == "l2_sw" else {}
            hist = model.fit(
                X[idx], y[idx], epochs=3, batch_size=BATCH, optimizer=make_optimizer(opt),
                shuffle=False, comm=comm, **kw,
            )
            out[f"exact_{opt}_{case}"] = {"weights": model.get_weights(), "history": hist.history}

    # Non-NumPy buffers (Array API strict): the all-reduce is staged through host memory,
    # as for GPU buffers without a CUDA-aware MPI.
    model = make_model(backend="array_api_strict")
    model.fit(X[idx], y[idx], epochs=2, batch_size=BATCH, optimizer=make_optimizer("adam"),
              shuffle=False, l2=L2, sample_weight=w[idx], comm=comm)
    out["exact_strict"] = {"weights": model.get_weights()}

    # 2. Uneven contiguous shards (one rank may hold no rows), L2 and sample weights.
    sizes = uneven_sizes(size)
    start = sum(sizes[:rank])
    sl = slice(start, start + sizes[rank])
    for opt in OPTIMIZERS:
        model = make_model()
        Xr = X[sl] if sizes[rank] else np.empty((0, N_FEATURES))
        hist = model.fit(
            Xr, y[sl], epochs=2, batch_size=UNEVEN_BATCH, optimizer=make_optimizer(opt),
            shuffle=False, l2=L2, sample_weight=w[sl], comm=comm,
        )
        out[f"uneven_{opt}"] = {"weights": model.get_weights(), "history": hist.history}

    # 3. Shuffled training: weights must stay bitwise identical on all ranks.
    model = make_model()
    model.fit(X[idx], y[idx], epochs=2, batch_size=BATCH, comm=comm, l2=L2)
    out["shuffled"] = {"weights": model.get_weights()}
    model = mlpx.MLP([N_FEATURES, 8, N_CLASSES], dropout=0.3, dtype="float64", seed=0)  # per-rank masks
    model.fit(X[idx], y[idx], epochs=2, batch_size=BATCH, comm=comm)
    out["dropout"] = {"weights": model.get_weights()}

    # 4. Early stopping on the global val_loss (validation shards), and a stop asked by one rank.
    Xv, yv, _ = make_data(n=30, seed=1)
    vidx = shard_indices(len(Xv), rank, size)
    model = make_model()
    es = mlpx.EarlyStopping(monitor="val_loss", patience=0, min_delta=0.02, restore_best_weights=True)
    hist = model.fit(
        X[idx], y[idx], epochs=40, batch_size=BATCH, optimizer=make_optimizer("sgd"),
        shuffle=False, validation_data=(Xv[vidx], yv[vidx]), callbacks=[es], comm=comm,
    )
    out["early"] = {"weights": model.get_weights(), "history": hist.history, "stopped": es.stopped_epoch}

    class StopOnOneRank(mlpx.Callback):
        def on_epoch_end(self, model: Any, epoch: int, logs: dict[str, float]) -> None:
            if rank == size - 1 and epoch == 1:
                model.stop_training = True

    model = make_model()
    hist = model.fit(X[idx], y[idx], epochs=6, batch_size=BATCH, comm=comm, callbacks=[StopOnOneRank()])
    out["one_rank_stop"] = {"epochs": hist.epochs}

    # 5. Checkpoint after 2 epochs (rank 0 writes), resume for 2 more == 4 straight epochs.
    ckpt = Path(sys.argv[2]) / "ckpt.npz"
    model = make_model()
    model.fit(X[idx], y[idx], epochs=4, batch_size=BATCH, optimizer="adam", shuffle=False, comm=comm)
    straight = model.get_weights()
    model = make_model()
    cb = ModelCheckpoint(ckpt)
    model.fit(X[idx], y[idx], epochs=2, batch_size=BATCH, optimizer="adam", shuffle=False, comm=comm, callbacks=[cb])
    comm.Barrier()
    resumed_model = make_model(seed=7)  # different start: everything must come from the file
    opt = load_checkpoint(ckpt, resumed_model, comm=comm)
    resumed_model.fit(X[idx], y[idx], epochs=2, batch_size=BATCH, optimizer=opt, shuffle=False, comm=comm)
    out["checkpoint"] = {
        "straight": straight, "resumed": resumed_model.get_weights(), "writes": cb.writes,
        "epochs_done": resumed_model.epochs_done_,
    }

    # 6. Divergence is detected on the global loss: every rank raises in the same epoch.
    t = X @ np.array([1.0, 2.0, 3.0, 0.0, 0.0]) * 100
    model = mlpx.MLP([N_FEATURES, 4, 1], output="identity", dtype="float64", seed=0)
    try:
        model.fit(X[idx], t[idx], epochs=20, batch_size=BATCH, optimizer=mlpx.SGD(lr=1.0), shuffle=False, comm=comm)
        out["diverged"] = {"epoch": None}
    except mlpx.TrainingDivergedError as exc:
        out["diverged"] = {"epoch": exc.epoch, "weights": model.get_weights()}

    # 7. A bad shard on the last rank: every rank raises instead of hanging.
    model = make_model()
    Xbad = X[idx][:, :4] if rank == size - 1 else X[idx]
    try:
        model.fit(Xbad, y[idx], epochs=1, comm=comm)
    except RankFailedError as exc:
        out["bad_shard"] = {"type": "RankFailedError", "rank": exc.rank, "message": str(exc)}
    except ValueError as exc:
        out["bad_shard"] = {"type": "ValueError", "message": str(exc)}


def run_fail_step(comm: Any) -> None:
    """Rank 1 raises in the 3rd step of the 2nd epoch; nothing catches it."""
    X, y, _ = make_data()
    model = make_model()
    calls = {"n": 0}
    original = model._forward_backward

    def failing(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if comm.Get_rank() == 1 and calls["n"] == 7 + 3:  # 7 steps per epoch with 25 rows
            raise ValueError("injected failure on rank 1")
        return original(*args, **kwargs)

    model._forward_backward = failing
    from mlpx.distributed import shard_indices

    idx = shard_indices(len(X), comm.Get_rank(), comm.Get_size())
    model.fit(X[idx], y[idx], epochs=5, batch_size=BATCH, comm=comm)


def run_crash_outside(comm: Any) -> None:
    """Rank 1 dies before ``fit`` while rank 0 waits in it: abort_on_exception ends the job."""
    from mlpx.distributed import abort_on_exception

    abort_on_exception(comm)
    X, y, _ = make_data()
    if comm.Get_rank() == 1:
        raise RuntimeError("rank 1 crashed while loading its shard")
    make_model().fit(X, y, epochs=5, comm=comm)


def run_gpu(comm: Any, outdir: Path, use_nccl: bool) -> None:
    """Block shards on the GPU (float64), MPI (staged through the host) or NCCL all-reduce."""
    from mlpx.distributed import local_gpu_backend, shard_indices

    rank, size = comm.Get_rank(), comm.Get_size()
    X, y, w = make_data()
    idx = shard_indices(len(X), rank, size, block=BATCH)
    out: dict[str, Any] = {}
    try:
        import mlpx

        backend = local_gpu_backend(comm) if use_nccl else "gpu"
        for opt in OPTIMIZERS:
            model = mlpx.MLP([N_FEATURES, 8, N_CLASSES], activation="tanh", output="softmax",
                             dtype="float64", seed=0, backend=backend)
            hist = model.fit(
                X[idx], y[idx], epochs=3, batch_size=BATCH, optimizer=make_optimizer(opt), shuffle=False,
                l2=L2, sample_weight=w[idx], comm="nccl" if use_nccl else comm,
            )
            out[opt] = {"weights": model.get_weights(), "history": hist.history, "backend": backend}
    except Exception as exc:  # reported to the test, which decides what is acceptable
        out["error"] = f"{type(exc).__name__}: {exc}"
    with open(outdir / f"gpu.rank{rank}.pkl", "wb") as fh:
        pickle.dump(out, fh)


def main() -> None:
    from mpi4py import MPI

    scenario, outdir = sys.argv[1], Path(sys.argv[2])
    comm = MPI.COMM_WORLD
    if scenario == "batch":
        out: dict[str, Any] = {}
        run_batch(comm, out)
        with open(outdir / f"batch.rank{comm.Get_rank()}.pkl", "wb") as fh:
            pickle.dump(out, fh)
    elif scenario == "fail_step":
        run_fail_step(comm)
    elif scenario in ("gpu_mpi", "gpu_nccl"):
        run_gpu(comm, outdir, use_nccl=scenario == "gpu_nccl")
    elif scenario == "crash_outside":
        run_crash_outside(comm)
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")


if __name__ == "__main__":
    main()
