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


def launch(size: int, scenario: str, outdir: Path, timeout: float,
           script: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``mpiexec -n size python _mpi_worker.py scenario outdir`` (or another ``script``), killed
    after ``timeout`` seconds."""
    env = dict(os.environ)
    # One thread per rank: the ranks already share the cores.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env[var] = "1"
    # Harmless for MPICH; lets Open MPI run as root and with more ranks than cores.
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1", PRTE_MCA_rmaps_default_mapping_policy=":oversubscribe")
    cmd = [find_mpiexec() or "mpiexec", "-n", str(size), sys.executable, str(Path(script or __file__).resolve()),
           scenario, str(outdir)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def collect(size: int, scenario: str, timeout: float, script: Path | None = None) -> list[Any] | str:
    """Launch ``scenario`` on ``size`` ranks and load each rank's ``<scenario>.rank<r>.pkl``;
    the launcher's output when it failed."""
    import tempfile

    outdir = Path(tempfile.mkdtemp(prefix=f"mlpx-{scenario}{size}-"))
    try:
        proc = launch(size, scenario, outdir, timeout=timeout, script=script)
        if proc.returncode != 0:
            return f"mpiexec failed:\n{proc.stdout}\n{proc.stderr}"
        results = []
        for r in range(size):
            with open(outdir / f"{scenario}.rank{r}.pkl", "rb") as fh:
                results.append(pickle.load(fh))
        return results
    finally:
        shutil.rmtree(outdir, ignore_errors=True)


# ---------------------------------------------------------------- scenarios
def run_batch(comm: Any, out: dict[str, Any]) -> None:
    """The exactness, uneven, early-stopping, checkpoint and set-up-failure checks."""
    import mlpx
    from mlpx.distributed import RankFailedError, shard_indices
    from mlpx.saving import ModelCheckpoint, load_checkpoint

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

    # 7. A data-parallel stack: block shards + shuffle=False == one process, every member
    # at once (its gradients all-reduced once per step for all members).
    stack = mlpx.Stack(make_model(), seeds=[0, 1, 2])
    hist = stack.fit(X[idx], y[idx], epochs=3, batch_size=BATCH, lr=[0.01, 0.02, 0.05], l2=[0.0, L2, L2],
                     shuffle=False, comm=comm)
    out["stack"] = {"params": stack.get_params_host(), "loss": np.asarray(hist["loss"]),
                    "samples": stack.samples_seen_.copy()}

    # 8. A bad shard on the last rank: every rank raises instead of hanging.
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
    original = model._phases  # the step's forward and backward

    def failing(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if comm.Get_rank() == 1 and calls["n"] == 7 + 3:  # 7 steps per epoch with 25 rows
            raise ValueError("injected failure on rank 1")
        return original(*args, **kwargs)

    model._phases = failing
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


def _outcome(fn: Any) -> dict[str, Any]:
    """What ``fn()`` did on this rank: returned, or raised (type, message, rank)."""
    from mlpx.distributed import RankFailedError

    try:
        fn()
    except RankFailedError as exc:
        return {"type": "RankFailedError", "rank": exc.rank, "message": str(exc)}
    except Exception as exc:
        return {"type": type(exc).__name__, "message": str(exc)}
    return {"type": None}


def run_agreement(comm: Any, out: dict[str, Any]) -> None:
    """Ranks that disagree on a setting: every rank raises, naming the field."""
    import mlpx

    rank = comm.Get_rank()
    X, y, w = make_data()
    idx = shard_indices_for(rank, comm.Get_size())
    last = rank == comm.Get_size() - 1

    def engine(sizes=(N_FEATURES, 8, N_CLASSES), activation="tanh", dtype="float64", **fit: Any) -> Any:
        def go() -> None:
            model = mlpx.MLP(list(sizes), activation=activation, dtype=dtype, seed=0)
            kw = {"epochs": 2, "batch_size": BATCH, "optimizer": "adam", "comm": comm, **fit}
            model.fit(X[idx], y[idx], **kw)
        return go

    out["widths"] = _outcome(engine(sizes=(N_FEATURES, 9 if last else 8, N_CLASSES)))
    out["dtype"] = _outcome(engine(dtype="float32" if last else "float64"))
    out["activation"] = _outcome(engine(activation="relu" if last else "tanh"))
    out["epochs"] = _outcome(engine(epochs=3 if last else 2))
    out["lr"] = _outcome(engine(optimizer=mlpx.Adam(lr=0.02 if last else 0.01)))
    out["l2"] = _outcome(engine(l2=0.5 if last else 0.0))
    out["loss"] = _outcome(engine(loss="squared_error" if last else None))
    out["same"] = _outcome(engine())

    def estimator(**params: Any) -> Any:
        def go() -> None:
            kw = {"hidden_layer_sizes": (7,), "max_iter": 2, "batch_size": 4, "random_state": rank, **params}
            mlpx.MLPClassifier(**kw).fit(X[idx], y[idx], comm=comm)
        return go

    out["est_max_iter"] = _outcome(estimator(max_iter=3 if last else 2))
    out["est_solver"] = _outcome(estimator(solver="sgd" if last else "adam"))
    out["est_alpha"] = _outcome(estimator(alpha=0.5 if last else 1e-4))
    out["est_same"] = _outcome(estimator())  # random_state differs per rank: allowed

    # load_checkpoint: rank 0's file, read into another architecture on the last rank.
    ckpt = Path(sys.argv[2]) / "agree_ckpt.npz"
    model = mlpx.MLP([N_FEATURES, 8, N_CLASSES], activation="tanh", dtype="float64", seed=0)
    model.fit(X[idx], y[idx], epochs=1, batch_size=BATCH, comm=comm,
              callbacks=[mlpx.ModelCheckpoint(ckpt)])
    comm.Barrier()
    other = mlpx.MLP([N_FEATURES, 9 if last else 8, N_CLASSES], activation="tanh", dtype="float64", seed=0)
    out["checkpoint"] = _outcome(lambda: mlpx.load_checkpoint(ckpt, other, comm=comm))


def shard_indices_for(rank: int, size: int) -> np.ndarray:
    from mlpx.distributed import shard_indices

    return shard_indices(N_ROWS, rank, size, block=BATCH)


def run_base_exception(comm: Any, outdir: Path, how: str) -> None:
    """The last rank stops with SystemExit / KeyboardInterrupt inside fit; rank 0 records
    what it raised, and the job must end (the test times out otherwise)."""
    import signal

    import mlpx

    rank, size = comm.Get_rank(), comm.Get_size()
    X, y, _ = make_data()
    model = make_model()
    last = rank == size - 1
    calls = {"n": 0}
    original = model._phases  # the step's forward and backward

    def step(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if last and calls["n"] == 5:
            if how == "exit_step":
                sys.exit(3)
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, delivered to this rank only
        return original(*args, **kwargs)

    class ExitInCallback(mlpx.Callback):
        def on_epoch_end(self, model: Any, epoch: int, logs: dict[str, float]) -> None:
            if last and epoch == 1:
                sys.exit(4)

    if how in ("exit_step", "interrupt_step"):
        model._phases = step
    callbacks = [ExitInCallback()] if how == "exit_callback" else []
    result = _outcome(lambda: model.fit(X[shard_indices_for(rank, size)], y[shard_indices_for(rank, size)],
                                        epochs=4, batch_size=BATCH, comm=comm, callbacks=callbacks))
    with open(outdir / f"{how}.rank{rank}.pkl", "wb") as fh:
        pickle.dump(result, fh)


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
    elif scenario == "agreement":
        out = {}
        run_agreement(comm, out)
        with open(outdir / f"agreement.rank{comm.Get_rank()}.pkl", "wb") as fh:
            pickle.dump(out, fh)
    elif scenario in ("exit_step", "interrupt_step", "exit_callback"):
        run_base_exception(comm, outdir, scenario)
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")


if __name__ == "__main__":
    main()


# ------------------------------------------------ scikit-learn estimators with comm
# Run by tests/test_distributed_estimators.py as
#   mpiexec -n K python -c "import _mpi_worker as W; W.run_estimators_main(OUTDIR)"
EST_BATCH = 4  # per-rank batch of the exactness cases
EST_UNEVEN_BATCH = 5
EST_EPOCHS = 4
EST_ALPHA = 0.01
EST_HIDDEN = (7,)
EST_ES_ROWS = 60  # early stopping: equal shards of 60 / K rows
EST_ES_FRACTION = 0.2


def est_kwargs(solver: str, **over: Any) -> dict[str, Any]:
    """Constructor arguments shared by the ranks and the single-process references."""
    lr = {"sgd": 0.1, "adam": 0.02, "lbfgs": 0.001}[solver]
    kw = dict(hidden_layer_sizes=EST_HIDDEN, activation="tanh", solver=solver, alpha=EST_ALPHA,
              learning_rate_init=lr, max_iter=EST_EPOCHS, shuffle=False, tol=0.0,
              n_iter_no_change=1000, momentum=0.9)
    kw.update(over)
    return kw


def est_data(kind: str, n: int = N_ROWS, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(X, y, w)``: 3-class labels ("clf") or two regression targets ("reg")."""
    X, y, w = make_data(n, seed)
    if kind == "reg":
        y = np.c_[X[:, 0] - 2 * X[:, 1], np.tanh(X[:, 2]) + 0.3 * X[:, 3]]
    return X, y, w


def est_missing_class(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """3-class data whose class 2 lives only in rank 0's block shard."""
    X, y, w = make_data()
    owner = np.zeros(len(y), dtype=int)
    for r in range(size):
        owner[shard_rows(r, size)] = r
    y = np.where((owner > 0) & (y == 2), 1, y)
    return X, y, w


def shard_rows(rank: int, size: int) -> np.ndarray:
    from mlpx.distributed import shard_indices

    return shard_indices(N_ROWS, rank, size, block=EST_BATCH)


def est_uneven_sizes(size: int) -> list[int]:
    return [23, 7] if size == 2 else [23, 7, 12]


def est_es_split(n_rows: int, y_rank: np.ndarray | None, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """The split one rank makes with early stopping, drawn by hand (random_state=0).

    The estimator first draws the initial weights (per layer: W then b, uniform)
    from its RandomState, then calls ``train_test_split`` on the row indices with
    the same generator (stratified only for single-output classifiers: not here,
    3 classes give 3 outputs).
    """
    from sklearn.model_selection import train_test_split

    rs = np.random.RandomState(0)
    n_out = N_CLASSES if kind == "clf" else 2
    units = [N_FEATURES, *EST_HIDDEN, n_out]
    for fan_in, fan_out in zip(units[:-1], units[1:]):
        rs.uniform(-1, 1, (fan_in, fan_out))
        rs.uniform(-1, 1, fan_out)
    tr, va = train_test_split(np.arange(n_rows), random_state=rs, test_size=EST_ES_FRACTION)
    return tr, va


def _fitted(est: Any) -> dict[str, Any]:
    keys = ("coefs_", "intercepts_", "loss_curve_", "n_iter_", "t_", "loss_", "classes_",
            "validation_scores_", "best_validation_score_", "best_loss_")
    return {k: getattr(est, k) for k in keys if hasattr(est, k)}


def run_estimators(comm: Any, out: dict[str, Any]) -> None:
    """Every estimator scenario on this rank's shard; results keyed by case."""
    import contextlib
    import io
    import warnings

    from mlpx import MLPClassifier, MLPRegressor
    from mlpx.distributed import RankFailedError, shard_indices

    warnings.simplefilter("ignore")  # ConvergenceWarning: the cases stop at max_iter on purpose
    rank, size = comm.Get_rank(), comm.Get_size()
    Est = {"clf": MLPClassifier, "reg": MLPRegressor}
    idx = shard_rows(rank, size)

    # 1. Block shards, shuffle=False: K ranks with batch b == one process with batch K*b.
    #    Ranks other than 0 start from other weights: rank 0's broadcast must win.
    for kind in ("clf", "reg"):
        X, y, w = est_data(kind)
        for solver in ("sgd", "adam"):
            est = Est[kind](batch_size=EST_BATCH, random_state=0 if rank == 0 else 10 + rank,
                            **est_kwargs(solver))
            est.fit(X[idx], y[idx], sample_weight=w[idx], comm=comm)
            out[f"exact_{kind}_{solver}"] = _fitted(est)

    #    The learning-rate rules that read agreed numbers: adaptive (divided by 5 when the
    #    global loss stalls; tol=0.5 makes it stall) and invscaling (global samples seen).
    X, y, w = est_data("clf")
    for rule, extra in (("adaptive", {"tol": 0.5, "n_iter_no_change": 1, "max_iter": 6}),
                        ("invscaling", {"power_t": 0.3})):
        est = MLPClassifier(batch_size=EST_BATCH, random_state=0,
                            **est_kwargs("sgd", learning_rate=rule, **extra))
        est.fit(X[idx], y[idx], sample_weight=w[idx], comm=comm)
        out[f"lr_{rule}"] = {**_fitted(est), "lr": est._rt.optimizer.lr}

    # 2. Uneven contiguous shards (23, 7[, 12] rows, batch 5): small shards run out first.
    sizes = est_uneven_sizes(size)
    start = sum(sizes[:rank])
    sl = slice(start, start + sizes[rank])
    X, y, w = est_data("clf")
    for solver in ("sgd", "adam"):
        est = MLPClassifier(batch_size=EST_UNEVEN_BATCH, random_state=0, **est_kwargs(solver, max_iter=2))
        est.fit(X[sl], y[sl], sample_weight=w[sl], comm=comm)
        out[f"uneven_{solver}"] = _fitted(est)

    # 3. A shard missing a class; a binary problem where one rank sees a single class.
    X, y, w = est_missing_class(size)
    est = MLPClassifier(batch_size=EST_BATCH, random_state=0, **est_kwargs("adam"))
    est.fit(X[idx], y[idx], sample_weight=w[idx], comm=comm)
    out["missing_class"] = _fitted(est)
    yb = (X[:, 0] > 0).astype(int)
    if rank == size - 1:
        yb_r = np.zeros(len(idx), dtype=int)
    else:
        yb_r = yb[idx]
    est = MLPClassifier(batch_size=EST_BATCH, random_state=0, **est_kwargs("sgd"))
    est.fit(X[idx], yb_r, comm=comm)
    out["binary_one_class"] = _fitted(est)

    # 4. Early stopping: equal contiguous shards, each rank splits its own.
    for kind in ("clf", "reg"):
        X, y, w = est_data(kind, n=EST_ES_ROWS, seed=3)
        es_idx = shard_indices(EST_ES_ROWS, rank, size)
        est = Est[kind](batch_size=EST_BATCH, random_state=0, early_stopping=True,
                        validation_fraction=EST_ES_FRACTION,
                        **est_kwargs("sgd", max_iter=60, n_iter_no_change=2, tol=1e-3))
        est.fit(X[es_idx], y[es_idx], sample_weight=w[es_idx], comm=comm)
        out[f"early_{kind}"] = _fitted(est)

    # 5. partial_fit: three one-epoch calls.
    for kind in ("clf", "reg"):
        X, y, w = est_data(kind)
        est = Est[kind](batch_size=EST_BATCH, random_state=0, **est_kwargs("adam"))
        for _ in range(3):
            extra = {"classes": np.arange(N_CLASSES)} if kind == "clf" else {}
            est.partial_fit(X[idx], y[idx], sample_weight=w[idx], comm=comm, **extra)
        out[f"partial_{kind}"] = _fitted(est)

    # 6. L-BFGS: global loss and gradient in every SciPy evaluation.
    for kind in ("clf", "reg"):
        X, y, w = est_data(kind)
        est = Est[kind](random_state=0, **est_kwargs("lbfgs", max_iter=25))
        est.fit(X[idx], y[idx], sample_weight=w[idx], comm=comm)
        out[f"lbfgs_{kind}"] = _fitted(est)

    # 7. verbose: only rank 0 prints.
    X, y, w = est_data("clf")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        MLPClassifier(batch_size=EST_BATCH, random_state=0, verbose=True,
                      **est_kwargs("sgd", max_iter=2)).fit(X[idx], y[idx], comm=comm)
    out["verbose"] = buf.getvalue()

    # 8. Failures are agreed: NaN in the last rank's shard; a shard with other features.
    for case in ("nan", "features"):
        Xbad = X[idx].copy()
        if rank == size - 1:
            if case == "nan":
                Xbad[0, 0] = np.nan
            else:
                Xbad = Xbad[:, :4]
        try:
            MLPClassifier(random_state=0, **est_kwargs("adam")).fit(Xbad, y[idx], comm=comm)
            out[f"fail_{case}"] = {"type": None}
        except RankFailedError as exc:
            out[f"fail_{case}"] = {"type": "RankFailedError", "rank": exc.rank, "message": str(exc)}
        except ValueError as exc:
            out[f"fail_{case}"] = {"type": "ValueError", "message": str(exc)}


def run_estimators_main(outdir: str) -> None:
    """Entry point for the estimator scenarios (one pickle per rank)."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    out: dict[str, Any] = {}
    run_estimators(comm, out)
    with open(Path(outdir) / f"estimators.rank{comm.Get_rank()}.pkl", "wb") as fh:
        pickle.dump(out, fh)


def run_estimators_gpu_main(outdir: str, use_nccl: bool) -> None:
    """Block shards on the GPU (float64): MPI staged through the host, or NCCL."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    out: dict[str, Any] = {}
    try:
        import warnings

        from mlpx import MLPClassifier
        from mlpx.distributed import local_gpu_backend

        warnings.simplefilter("ignore")
        backend = local_gpu_backend(comm) if use_nccl else "gpu"
        idx = shard_rows(rank, size)
        X, y, w = est_data("clf")
        for solver in ("sgd", "adam"):
            est = MLPClassifier(batch_size=EST_BATCH, random_state=0, backend=backend, dtype="float64",
                                **est_kwargs(solver))
            est.fit(X[idx], y[idx], sample_weight=w[idx], comm="nccl" if use_nccl else comm)
            out[solver] = {**_fitted(est), "backend": backend}
    except Exception as exc:  # reported to the test
        out["error"] = f"{type(exc).__name__}: {exc}"
    with open(Path(outdir) / f"estimators_gpu.rank{rank}.pkl", "wb") as fh:
        pickle.dump(out, fh)
