"""Streamed input under ``comm=``, run as ``mpiexec -n K python tests/_mpi_streams_worker.py streams OUTDIR``.

Each rank trains from a store that every rank opens whole (a Dask array over a
reader that records the rows asked of it, and a zarr store) and from a stream of
its own batches, next to the in-memory fit of the rows it should read, and writes
what it saw to ``OUTDIR/streams.rank<r>.pkl`` for ``tests/test_streams_distributed.py``.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path
from typing import Any

import numpy as np

import _mpi_worker as W

CHUNK = 5  # rows per block of the stores: 10 blocks of the 50 rows


class Recorder:
    """A sliceable array that records the row ranges read from it."""

    def __init__(self, data: np.ndarray) -> None:
        self.data, self.shape, self.dtype, self.ndim = data, data.shape, data.dtype, data.ndim
        self.reads: list[tuple[int, int]] = []

    def __getitem__(self, key: Any) -> np.ndarray:
        rows = key[0] if isinstance(key, tuple) else key
        got = self.data[key]
        if isinstance(rows, slice) and got.shape[0]:
            start = rows.start or 0
            self.reads.append((start, start + got.shape[0]))
        return got


def block_rows(n: int, rank: int, size: int) -> np.ndarray:
    """The rows rank reads: its contiguous share of the CHUNK-row blocks."""
    bounds = np.append(np.arange(0, n, CHUNK), n)
    cut = np.linspace(0, bounds.size - 1, size + 1).round().astype(int)
    return np.arange(bounds[cut[rank]], bounds[cut[rank + 1]])


def run_streams(comm: Any, outdir: Path) -> dict[str, Any]:
    import dask.array as da
    import zarr

    import mlpx

    rank, size = comm.Get_rank(), comm.Get_size()
    X, y, w = W.make_data()
    Xv, yv, _ = W.make_data(n=30, seed=1)
    mine, mine_v = block_rows(len(X), rank, size), block_rows(len(Xv), rank, size)
    out: dict[str, Any] = {"rows": mine}

    def fit(data: Any, targets: Any, weights: Any, validation: Any, shuffle: Any = False) -> dict[str, Any]:
        model = W.make_model()
        hist = model.fit(data, targets, epochs=2, batch_size=W.BATCH, optimizer=W.make_optimizer("adam"),
                         shuffle=shuffle, sample_weight=weights, validation_data=validation, l2=W.L2, comm=comm)
        return {"weights": model.get_weights(), "history": hist.history}

    out["reference"] = fit(X[mine], y[mine], w[mine], (Xv[mine_v], yv[mine_v]))
    rec, rec_v = Recorder(X), Recorder(Xv)
    lazy = da.from_array(rec, chunks=(CHUNK, X.shape[1]), asarray=True)
    lazy_v = da.from_array(rec_v, chunks=(CHUNK, X.shape[1]), asarray=True)
    out["dask"] = fit(lazy, y, w, (lazy_v, yv))
    out["reads"], out["reads_val"] = rec.reads, rec_v.reads

    def batches():
        for a in range(0, len(mine), W.BATCH):
            rows = mine[a:a + W.BATCH]
            yield X[rows], y[rows], w[rows]

    out["generator"] = fit(batches, None, None, (Xv[mine_v], yv[mine_v]))
    path = outdir / "X.zarr"
    if rank == 0:
        z = zarr.open_array(str(path), mode="w", shape=X.shape, dtype=X.dtype, chunks=(CHUNK, X.shape[1]))
        z[...] = X
    comm.Barrier()
    out["zarr_block_shuffle"] = fit(zarr.open_array(str(path), mode="r"), y, w, None,
                                    shuffle=mlpx.BlockShuffle(window=10))
    return out


def main() -> None:
    from mpi4py import MPI

    scenario, outdir = sys.argv[1], Path(sys.argv[2])
    if scenario != "streams":
        raise SystemExit(f"unknown scenario {scenario!r}")
    comm = MPI.COMM_WORLD
    out = run_streams(comm, outdir)
    with open(outdir / f"streams.rank{comm.Get_rank()}.pkl", "wb") as fh:
        pickle.dump(out, fh)


if __name__ == "__main__":
    main()
