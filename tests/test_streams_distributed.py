"""Streamed input under ``comm=`` with a real ``mpiexec`` (tests/_mpi_streams_worker.py).

A zarr/HDF5/Dask array is the whole data set on every rank, and each rank reads
only its own chunk-aligned blocks: the rows it asked of the store are recorded and
compared with its share, and its fit equals the in-memory data-parallel fit in
which every rank passes exactly those rows. A stream of batches is the rank's own.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import _mpi_streams_worker as S
import _mpi_worker as W

pytest.importorskip("zarr", reason='needs zarr: pip install "mlpx[data]"')
pytest.importorskip("dask.array", reason='needs dask: pip install "mlpx[data]"')
needs_mpi = pytest.mark.skipif(not (W.has_mpi4py() and W.find_mpiexec()), reason=W.SKIP_REASON)


@functools.lru_cache(maxsize=None)
def _results(size: int) -> list[dict[str, Any]] | str:
    return W.collect(size, "streams", timeout=240, script=Path(S.__file__))


def results(size: int) -> list[dict[str, Any]]:
    got = _results(size)
    assert not isinstance(got, str), got
    return got


def _same(a: list[np.ndarray], b: list[np.ndarray], atol: float = 1e-12) -> None:
    for p, q in zip(a, b):
        np.testing.assert_allclose(p, q, rtol=0, atol=atol)


@needs_mpi
@pytest.mark.parametrize("size", [2, 3])
def test_each_rank_reads_only_its_blocks_of_a_shared_store(size: int) -> None:
    per_rank = results(size)
    n = W.N_ROWS
    shares = [S.block_rows(n, r, size) for r in range(size)]
    assert np.array_equal(np.concatenate(shares), np.arange(n))  # the shares partition the rows
    for r, res in enumerate(per_rank):
        read = np.unique(np.concatenate([np.arange(a, b) for a, b in res["reads"]]))
        np.testing.assert_array_equal(read, shares[r])  # all of its share, nothing else
        read_v = np.unique(np.concatenate([np.arange(a, b) for a, b in res["reads_val"]]))
        np.testing.assert_array_equal(read_v, S.block_rows(30, r, size))


@needs_mpi
@pytest.mark.parametrize("size", [2, 3])
@pytest.mark.parametrize("form", ["dask", "generator"])
def test_streamed_data_parallel_fit_equals_the_in_memory_one(size: int, form: str) -> None:
    for res in results(size):
        _same(res[form]["weights"], res["reference"]["weights"])
        for key, values in res["reference"]["history"].items():
            np.testing.assert_allclose(res[form]["history"][key], values, rtol=1e-12)
    _same(results(size)[0]["reference"]["weights"], results(size)[-1]["reference"]["weights"], atol=0)


@needs_mpi
@pytest.mark.parametrize("size", [2, 3])
def test_block_shuffled_ranks_stay_identical(size: int) -> None:
    per_rank = results(size)
    for res in per_rank[1:]:
        _same(res["zarr_block_shuffle"]["weights"], per_rank[0]["zarr_block_shuffle"]["weights"], atol=0)
    assert not np.allclose(per_rank[0]["zarr_block_shuffle"]["weights"][0], per_rank[0]["dask"]["weights"][0])
