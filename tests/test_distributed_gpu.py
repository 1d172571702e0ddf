"""Data-parallel training on GPUs: MPI with device buffers, and NCCL (marked ``gpu``).

Two ranks sharing one GPU exercise the MPI path (device buffers staged through the
host). NCCL refuses two ranks on one device ("Duplicate GPU detected"), so the NCCL
check uses one rank per GPU: one rank on a one-GPU machine (the communicator, the
stream-ordered all-reduce and the update path all run), two where there are two.
The reference is a single-process float64 fit on the CPU with the combined batch.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import _mpi_worker as W

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not (W.has_mpi4py() and W.find_mpiexec()), reason=W.SKIP_REASON),
]


def _n_gpus() -> int:
    import cupy

    return int(cupy.cuda.runtime.getDeviceCount())


def _results(size: int, scenario: str, outdir: Path) -> list[dict[str, Any]]:
    proc = W.launch(size, scenario, outdir, timeout=300)
    assert proc.returncode == 0, f"mpiexec failed:\n{proc.stdout}\n{proc.stderr}"
    out = []
    for r in range(size):
        with open(outdir / f"gpu.rank{r}.pkl", "rb") as fh:
            out.append(pickle.load(fh))
    return out


def _check_against_cpu(results: list[dict[str, Any]], size: int) -> None:
    X, y, w = W.make_data()
    for r in results:
        assert "error" not in r, r.get("error")
    for opt in W.OPTIMIZERS:
        ref = W.make_model()  # CPU, float64
        ref.fit(X, y, epochs=3, batch_size=size * W.BATCH, optimizer=W.make_optimizer(opt), shuffle=False,
                l2=W.L2, sample_weight=w)
        for r in results:
            for got, want in zip(r[opt]["weights"], ref.get_weights()):
                # GPU reductions sum in another order than BLAS on the CPU: float64 rounding only.
                np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
        for other in results[1:]:
            for a, b in zip(results[0][opt]["weights"], other[opt]["weights"]):
                np.testing.assert_array_equal(a, b)


def test_mpi_two_ranks_share_one_gpu(tmp_path: Path) -> None:
    _check_against_cpu(_results(2, "gpu_mpi", tmp_path), 2)


def test_nccl_one_rank_per_gpu(tmp_path: Path) -> None:
    size = min(2, _n_gpus())
    results = _results(size, "gpu_nccl", tmp_path)
    _check_against_cpu(results, size)
    assert [r["sgd"]["backend"] for r in results] == [f"gpu:{k}" for k in range(size)]


def test_nccl_two_ranks_on_one_gpu_do_not_hang(tmp_path: Path) -> None:
    # NCCL (2.x) rejects two ranks on one device. Whatever it does, the job must end
    # (the set-up failure is agreed across ranks) and, if it fails, say why.
    if _n_gpus() != 1:
        pytest.skip("only meaningful with exactly one GPU")
    proc = W.launch(2, "gpu_nccl", tmp_path, timeout=300)
    assert proc.returncode == 0
    results = [pickle.load(open(tmp_path / f"gpu.rank{r}.pkl", "rb")) for r in range(2)]
    errors = [r.get("error") for r in results]
    if any(errors):
        assert all(errors), errors  # no rank went on alone
        assert any("NCCL" in e or "nccl" in e.lower() for e in errors), errors
    else:
        _check_against_cpu(results, 2)
