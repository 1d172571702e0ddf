"""
Data-parallel training with MPI
===============================

.. note::

   Needs MPI (``pip install -e ".[mpi]"``) and is started by an MPI launcher: this
   example is shown, not run, when the documentation is built.

Each rank trains on its own shard of the data. Install and launch (one machine or a
cluster; any MPI launcher works)::

    pip install "mlpx[mpi]"                       # mpi4py + the MPICH wheel
    mpirun -n 4 python examples/train_mpi.py --epochs 30
    mpirun -n 2 python examples/train_mpi.py --gpu --nccl   # one rank per GPU, NCCL all-reduce

Rank 0 broadcasts its initial weights, every step all-reduces the gradients, so
all ranks hold the same model; only rank 0 prints and writes the checkpoint.
Run the same command again and training resumes from the checkpoint. If any rank
fails, every rank stops with the error instead of hanging.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from mpi4py import MPI

import mlpx
from mlpx.distributed import abort_on_exception, local_gpu_backend, shard_indices
from mlpx.saving import ModelCheckpoint, load_checkpoint


def load_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits (scikit-learn) when available, else a synthetic 10-class problem; standardised."""
    try:
        from sklearn.datasets import load_digits

        X, y = load_digits(return_X_y=True)
    except ImportError:
        rng = np.random.default_rng(seed)
        centers = rng.normal(size=(10, 64)) * 3
        y = rng.integers(0, 10, size=1797)
        X = centers[y] + rng.normal(size=(len(y), 64))
    order = np.random.default_rng(seed).permutation(len(y))  # same on every rank
    X, y = X[order].astype(np.float64), y[order]
    X = (X - X.mean(0)) / (X.std(0) + 1e-8)
    n_test = len(y) // 5
    return X[n_test:], y[n_test:], X[:n_test], y[:n_test]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=30, help="total epochs (a resumed run does the rest)")
    p.add_argument("--batch-size", type=int, default=32, help="per rank; the effective batch is n_ranks times this")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--gpu", action="store_true", help="train on this rank's GPU (gpu:<local rank %% n_gpus>)")
    p.add_argument("--nccl", action="store_true", help="all-reduce with NCCL (needs --gpu, one rank per GPU)")
    p.add_argument("--checkpoint", default="mlpx_mpi_checkpoint.npz")
    args = p.parse_args()

    comm = MPI.COMM_WORLD
    abort_on_exception(comm)  # a crash outside fit (e.g. reading data) ends the whole job
    rank, size = comm.Get_rank(), comm.Get_size()

    # Every rank reads the (small) data set and keeps its shard; with real data,
    # read only your rows (e.g. file rank of size).
    X, y, X_test, y_test = load_data()
    idx = shard_indices(len(y), rank, size)
    X_val, y_val = X_test[shard_indices(len(y_test), rank, size)], y_test[shard_indices(len(y_test), rank, size)]

    backend = local_gpu_backend(comm) if args.gpu else "cpu"
    model = mlpx.MLP([64, 128, 64, 10], activation="relu", output="softmax", backend=backend, seed=0)
    optimizer: mlpx.Adam | None = mlpx.Adam(lr=args.lr)
    if os.path.exists(args.checkpoint):
        # Every rank calls it: rank 0 reads the file and broadcasts weights and optimizer state.
        optimizer = load_checkpoint(args.checkpoint, model, optimizer, comm=comm)
    remaining = args.epochs - model.epochs_done_
    if rank == 0:
        print(f"{size} ranks on {model.backend.name}; {len(y)} training rows, "
              f"{remaining} epochs to go (done: {model.epochs_done_})", flush=True)
    if remaining > 0:
        model.fit(
            X[idx], y[idx], epochs=remaining, batch_size=args.batch_size, optimizer=optimizer,
            validation_data=(X_val, y_val), comm="nccl" if args.nccl else comm,
            callbacks=[ModelCheckpoint(args.checkpoint), mlpx.EarlyStopping(patience=5)],
            verbose=1,
        )
    if rank == 0:
        result = model.evaluate(X_test, y_test)
        print(f"test loss {result['loss']:.4f}, test accuracy {result['accuracy']:.4f}", flush=True)


if __name__ == "__main__":
    main()
