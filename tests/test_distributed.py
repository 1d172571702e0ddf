"""Data-parallel training (mlpx.distributed) under a real MPI launcher.

The multi-rank checks launch ``mpiexec -n 2`` / ``-n 3`` on ``tests/_mpi_worker.py``
(one launch runs many scenarios, each rank pickles what it saw) and compare with
independent references: a single-process fit with the combined batch size, and a
NumPy-only MLP written out below for uneven shards. Every launch has a timeout, so
a hang fails the test instead of stalling CI.
"""

from __future__ import annotations

import functools
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import _mpi_worker as W
import mlpx
from mlpx.distributed import shard_indices

MPIEXEC = W.find_mpiexec()
HAS_MPI4PY = W.has_mpi4py()
needs_mpi = pytest.mark.skipif(not (HAS_MPI4PY and MPIEXEC), reason=W.SKIP_REASON)
needs_mpi4py = pytest.mark.skipif(not HAS_MPI4PY, reason='needs mpi4py: pip install "mlpx[mpi]"')
_launch = W.launch


def batch_results(size: int) -> list[dict[str, Any]]:
    results = _batch_results(size)
    assert "failed" not in results[0], results[0].get("failed")
    return results


@functools.lru_cache(maxsize=None)
def _batch_results(size: int) -> list[dict[str, Any]]:
    """Run the worker's scenario batch once per rank count; per-rank result dicts."""
    results = W.collect(size, "batch", timeout=180)
    if isinstance(results, str):  # cached too: one failed launch, not one per test
        return [{"failed": results}]
    return results


def assert_same_on_all_ranks(per_rank: list[list[np.ndarray]]) -> None:
    for other in per_rank[1:]:
        for a, b in zip(per_rank[0], other):
            np.testing.assert_array_equal(a, b)  # bitwise: every rank applied the same update


def assert_weights_close(got: list[np.ndarray], want: list[np.ndarray], atol: float = 1e-10) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=0, atol=atol)


# ------------------------------------------------- NumPy-only reference MLP
def _reference_grads(params: list[np.ndarray], X: np.ndarray, y: np.ndarray, w: np.ndarray, l2: float):
    """Loss and gradients of tanh-hidden, softmax-output MLP, weighted mean over rows, written out by hand."""
    W0, b0, W1, b1 = params
    D = w.sum()
    H = np.tanh(X @ W0 + b0)
    Z = H @ W1 + b1
    Z = Z - Z.max(1, keepdims=True)
    P = np.exp(Z) / np.exp(Z).sum(1, keepdims=True)
    Y = np.eye(W1.shape[1])[y]
    loss = -(w * np.log(P[np.arange(len(y)), y])).sum() / D + 0.5 * l2 * ((W0**2).sum() + (W1**2).sum()) / D
    dZ = w[:, None] * (P - Y) / D
    dW1 = H.T @ dZ + l2 * W1 / D
    db1 = dZ.sum(0)
    dA = (dZ @ W1.T) * (1 - H**2)
    dW0 = X.T @ dA + l2 * W0 / D
    db0 = dA.sum(0)
    return loss, [dW0, db0, dW1, db1]


def _reference_uneven(size: int, opt: str, epochs: int = 2) -> list[np.ndarray]:
    """What the ranks should compute: step j uses the union of every rank's j-th batch."""
    X, y, w = W.make_data()
    sizes = W.uneven_sizes(size)
    starts = np.cumsum([0] + sizes[:-1])
    b = W.UNEVEN_BATCH
    params = W.make_model().get_weights()
    state = [[np.zeros_like(p) for p in params] for _ in range(2)]
    cfg = W.OPTIMIZERS[opt]
    t = 0
    n_steps = max(-(-s // b) for s in sizes)
    for _epoch in range(epochs):
        for j in range(n_steps):
            rows = np.concatenate(
                [np.arange(s + j * b, s + min((j + 1) * b, n)) for s, n in zip(starts, sizes) if j * b < n]
            )
            _, grads = _reference_grads(params, X[rows], y[rows], w[rows], W.L2)
            t += 1
            for k, (p, g) in enumerate(zip(params, grads)):
                if opt == "sgd":  # scikit-learn's momentum rule
                    v = state[0][k]
                    v[...] = cfg["momentum"] * v - cfg["lr"] * g
                    p += v
                else:  # scikit-learn's Adam, bias correction folded into the rate
                    m, v = state[0][k], state[1][k]
                    m[...] = 0.9 * m + 0.1 * g
                    v[...] = 0.999 * v + 0.001 * g * g
                    lr_t = cfg["lr"] * np.sqrt(1 - 0.999**t) / (1 - 0.9**t)
                    p -= lr_t * m / (np.sqrt(v) + 1e-8)
    return params


# -------------------------------------------------------------- multi-rank
@needs_mpi
@pytest.mark.parametrize("size", [2, 3])
@pytest.mark.parametrize("case", ["plain", "l2_sw"])
@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_k_ranks_batch_b_equal_one_process_batch_kb(size: int, opt: str, case: str) -> None:
    results = batch_results(size)
    key = f"exact_{opt}_{case}"
    X, y, w = W.make_data()
    ref = W.make_model()
    kw = {"l2": W.L2, "sample_weight": w} if case == "l2_sw" else {}
    hist = ref.fit(X, y, epochs=3, batch_size=size * W.BATCH, optimizer=W.make_optimizer(opt), shuffle=False, **kw)
    assert_same_on_all_ranks([r[key]["weights"] for r in results])
    assert_weights_close(results[0][key]["weights"], ref.get_weights())
    for r in results:
        np.testing.assert_allclose(r[key]["history"]["loss"], hist.history["loss"], rtol=1e-12)
        np.testing.assert_allclose(r[key]["history"]["accuracy"], hist.history["accuracy"])


@needs_mpi
@pytest.mark.parametrize("size", [2, 3])
def test_host_staged_allreduce_on_array_api_strict(size: int) -> None:
    # The path GPU buffers take without a CUDA-aware MPI: copy out, all-reduce, copy back.
    results = batch_results(size)
    X, y, w = W.make_data()
    ref = W.make_model()
    ref.fit(X, y, epochs=2, batch_size=size * W.BATCH, optimizer=W.make_optimizer("adam"), shuffle=False,
            l2=W.L2, sample_weight=w)
    assert_same_on_all_ranks([r["exact_strict"]["weights"] for r in results])
    assert_weights_close(results[0]["exact_strict"]["weights"], ref.get_weights())


@needs_mpi
@pytest.mark.parametrize("size", [2, 3])
@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_uneven_shards_match_numpy_reference(size: int, opt: str) -> None:
    # Shards of 23, 7 (and 0) rows: the small ranks contribute nothing once their rows run out.
    results = batch_results(size)
    assert_same_on_all_ranks([r[f"uneven_{opt}"]["weights"] for r in results])
    assert_weights_close(results[0][f"uneven_{opt}"]["weights"], _reference_uneven(size, opt))


@needs_mpi
@pytest.mark.parametrize("size", [2, 3])
def test_shuffled_training_keeps_ranks_identical(size: int) -> None:
    results = batch_results(size)
    assert_same_on_all_ranks([r["shuffled"]["weights"] for r in results])
    assert_same_on_all_ranks([r["dropout"]["weights"] for r in results])


@needs_mpi
@pytest.mark.parametrize("size", [2, 3])
def test_early_stopping_agreed_and_equal_to_one_process(size: int) -> None:
    results = batch_results(size)
    X, y, _ = W.make_data()
    Xv, yv, _ = W.make_data(n=30, seed=1)
    ref = W.make_model()
    es = mlpx.EarlyStopping(monitor="val_loss", patience=0, min_delta=0.02, restore_best_weights=True)
    hist = ref.fit(X, y, epochs=40, batch_size=size * W.BATCH, optimizer=W.make_optimizer("sgd"),
                   shuffle=False, validation_data=(Xv, yv), callbacks=[es])
    assert es.stopped_epoch is not None and es.stopped_epoch < 39  # it did stop early
    for r in results:
        got = r["early"]
        assert got["stopped"] == es.stopped_epoch
        assert set(got["history"]) == set(hist.history)
        for k, v in hist.history.items():
            np.testing.assert_allclose(got["history"][k], v, rtol=1e-10, atol=1e-12)
    assert_same_on_all_ranks([r["early"]["weights"] for r in results])
    assert_weights_close(results[0]["early"]["weights"], ref.get_weights())


@needs_mpi
@pytest.mark.parametrize("size", [2, 3])
def test_stop_requested_by_one_rank_stops_every_rank(size: int) -> None:
    assert [r["one_rank_stop"]["epochs"] for r in batch_results(size)] == [2] * size


@needs_mpi
@pytest.mark.parametrize("size", [2, 3])
def test_checkpoint_written_by_rank0_and_resume_is_exact(size: int) -> None:
    results = batch_results(size)
    assert [r["checkpoint"]["writes"] for r in results] == [2] + [0] * (size - 1)
    for r in results:
        assert r["checkpoint"]["epochs_done"] == 4
        assert_weights_close(r["checkpoint"]["resumed"], r["checkpoint"]["straight"], atol=1e-12)


@needs_mpi
@pytest.mark.parametrize("size", [2, 3])
def test_divergence_detected_on_every_rank_in_the_same_epoch(size: int) -> None:
    results = batch_results(size)
    X, _, _ = W.make_data()
    t = X @ np.array([1.0, 2.0, 3.0, 0.0, 0.0]) * 100
    ref = mlpx.MLP([W.N_FEATURES, 4, 1], output="identity", dtype="float64", seed=0)
    with pytest.raises(mlpx.TrainingDivergedError) as info:
        ref.fit(X, t, epochs=20, batch_size=size * W.BATCH, optimizer=mlpx.SGD(lr=1.0), shuffle=False)
    assert [r["diverged"]["epoch"] for r in results] == [info.value.epoch] * size
    assert_same_on_all_ranks([r["diverged"]["weights"] for r in results])
    assert all(np.isfinite(a).all() for a in results[0]["diverged"]["weights"])  # last finite weights kept


@needs_mpi
@pytest.mark.parametrize("size", [2, 3])
def test_data_parallel_stack_equals_one_process(size: int) -> None:
    """A stack under comm=: each rank holds every member and its own shard; the
    members end where one process with the combined batch ends them, on every rank."""
    results = batch_results(size)
    X, y, _ = W.make_data()
    ref = mlpx.Stack(W.make_model(), seeds=[0, 1, 2])
    hist = ref.fit(X, y, epochs=3, batch_size=size * W.BATCH, lr=[0.01, 0.02, 0.05], l2=[0.0, W.L2, W.L2],
                   shuffle=False)
    for r in results:
        np.testing.assert_allclose(r["stack"]["params"], ref.get_params_host(), rtol=0, atol=1e-10)
        np.testing.assert_allclose(r["stack"]["loss"], np.asarray(hist["loss"]), rtol=1e-10)
        np.testing.assert_array_equal(r["stack"]["samples"], ref.samples_seen_)
    for other in results[1:]:
        np.testing.assert_array_equal(other["stack"]["params"], results[0]["stack"]["params"])


@needs_mpi
@pytest.mark.parametrize("size", [2, 3])
def test_bad_shard_on_one_rank_fails_every_rank(size: int) -> None:
    results = batch_results(size)
    assert results[-1]["bad_shard"]["type"] == "ValueError"
    assert "features" in results[-1]["bad_shard"]["message"]
    for r in results[:-1]:
        assert r["bad_shard"]["type"] == "RankFailedError"
        assert r["bad_shard"]["rank"] == size - 1
        assert "features" in r["bad_shard"]["message"]


@needs_mpi
def test_injected_failure_ends_the_job_with_the_error(tmp_path: Path) -> None:
    # A hang would raise TimeoutExpired here; the job must end on its own.
    proc = _launch(2, "fail_step", tmp_path, timeout=60)
    assert proc.returncode != 0
    assert "ValueError: injected failure on rank 1" in proc.stderr
    assert "RankFailedError: rank 1 failed (epoch 2, step 3): ValueError: injected failure on rank 1" in proc.stderr


@needs_mpi
def test_crash_outside_fit_aborts_the_job(tmp_path: Path) -> None:
    # Rank 1 dies before fit while rank 0 waits inside it: abort_on_exception ends both.
    proc = _launch(2, "crash_outside", tmp_path, timeout=60)
    assert proc.returncode != 0
    assert "rank 1 crashed while loading its shard" in proc.stderr


# ------------------------------------------------ settings agreed on every rank
@functools.lru_cache(maxsize=None)
def _agreement(size: int) -> tuple[dict[str, Any], ...] | str:
    out = W.collect(size, "agreement", timeout=240)
    return out if isinstance(out, str) else tuple(out)


@needs_mpi
@pytest.mark.parametrize("size", [2, 3])
@pytest.mark.parametrize("case, field", [
    ("widths", "architecture"), ("dtype", "dtype"), ("activation", "architecture"),
    ("epochs", "epochs"), ("lr", "optimizer"), ("l2", "l2"), ("loss", "loss"),
    ("est_max_iter", "param max_iter"), ("est_solver", "param solver"), ("est_alpha", "param alpha"),
])
def test_ranks_that_disagree_all_raise_naming_the_field(size: int, case: str, field: str) -> None:
    """Different layer sizes, dtypes, activations, epochs, learning rates, L2, losses,
    or estimator settings on one rank: a ValueError on every rank, not a hang or drift."""
    results = _agreement(size)
    assert not isinstance(results, str), results
    for r in results:
        got = r[case]
        assert got["type"] == "ValueError", got
        assert f"'{field}'" in got["message"] and "rank 0:" in got["message"], got["message"]
        assert f"rank {size - 1}:" in got["message"]


@needs_mpi
@pytest.mark.parametrize("size", [2, 3])
def test_ranks_that_agree_train(size: int) -> None:
    results = _agreement(size)
    assert not isinstance(results, str), results
    assert all(r["same"]["type"] is None and r["est_same"]["type"] is None for r in results)


@needs_mpi
@pytest.mark.parametrize("size", [2, 3])
def test_checkpoint_of_another_model_fails_on_every_rank(size: int) -> None:
    results = _agreement(size)
    assert not isinstance(results, str), results
    last = results[-1]["checkpoint"]
    assert last["type"] == "ValueError" and "another model" in last["message"]
    for r in results[:-1]:
        assert r["checkpoint"]["type"] == "RankFailedError" and r["checkpoint"]["rank"] == size - 1


@needs_mpi
@pytest.mark.parametrize("how, what", [
    ("exit_step", "SystemExit"), ("interrupt_step", "KeyboardInterrupt"), ("exit_callback", "SystemExit"),
])
def test_a_base_exception_on_one_rank_ends_every_rank(tmp_path: Path, how: str, what: str) -> None:
    """sys.exit() or Ctrl-C inside a step or a callback of one rank: the job ends (a hang
    would raise TimeoutExpired), the other rank raises RankFailedError naming it."""
    proc = _launch(2, how, tmp_path, timeout=90)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    with open(tmp_path / f"{how}.rank0.pkl", "rb") as fh:
        got = pickle.load(fh)
    assert got["type"] == "RankFailedError" and got["rank"] == 1 and what in got["message"], got


# -------------------------------------------------------------- in-process
@pytest.mark.parametrize("size", [1, 2, 3, 4])
@pytest.mark.parametrize("block", [None, 1, 4, 7])
def test_shard_indices_partition_the_rows(size: int, block: int | None) -> None:
    n = 50
    shards = [shard_indices(n, r, size, block=block) for r in range(size)]
    np.testing.assert_array_equal(np.sort(np.concatenate(shards)), np.arange(n))
    if block is None:
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
    else:
        # Step j of all ranks together is batch j of one process with batch size*block.
        for j in range(-(-n // (size * block))):
            union = np.concatenate([s[j * block : (j + 1) * block] for s in shards])
            np.testing.assert_array_equal(union, np.arange(j * size * block, min((j + 1) * size * block, n)))


@needs_mpi4py
def test_reducer_contract_on_one_rank() -> None:
    from mpi4py import MPI

    from mlpx.distributed import LocalReducer, RankFailedError, make_reducer

    for red in (make_reducer(MPI.COMM_SELF, "cpu"), make_reducer(None, "cpu")):
        assert (red.rank, red.size, red.is_root) == (0, 1, True)
        g = np.array([1.0, -2.0, 4.0])
        assert float(red.allreduce_gradients(g, 0.5)) == 0.5  # a sum over one rank
        np.testing.assert_array_equal(g, [1.0, -2.0, 4.0])
        assert red.allreduce_sum([1.5, 2.0]) == [1.5, 2.0]
        assert red.agree_any(True) and not red.agree_any(False)
        assert red.allgather("x") == ["x"] and red.bcast(3) == 3 and red.allreduce_max(4) == 4
        with pytest.raises(KeyError, match="boom"):
            red.allreduce_gradients(np.zeros(3), 0.0, error=KeyError("boom"))
        with pytest.raises(KeyError, match="boom"):
            red.check_errors(KeyError("boom"))
        red.agree_settings({"lr": 0.1})  # one rank always agrees with itself
    assert isinstance(make_reducer(None, "cpu"), LocalReducer)
    assert issubclass(RankFailedError, RuntimeError)


@needs_mpi4py
def test_fit_on_one_rank_equals_plain_fit() -> None:
    from mpi4py import MPI

    X, y, w = W.make_data()
    a, b = W.make_model(), W.make_model()
    ha = a.fit(X, y, epochs=2, batch_size=8, optimizer=W.make_optimizer("adam"), shuffle=False,
               l2=W.L2, sample_weight=w, validation_data=(X[:10], y[:10]))
    hb = b.fit(X, y, epochs=2, batch_size=8, optimizer=W.make_optimizer("adam"), shuffle=False,
               l2=W.L2, sample_weight=w, validation_data=(X[:10], y[:10]), comm=MPI.COMM_SELF)
    assert_weights_close(b.get_weights(), a.get_weights(), atol=1e-12)
    for k, v in ha.history.items():
        np.testing.assert_allclose(hb.history[k], v, rtol=1e-12)


@needs_mpi4py
def test_regression_val_r2_matches_single_process() -> None:
    from mpi4py import MPI

    X, _, _ = W.make_data()
    t = np.c_[X[:, 0] - X[:, 1], X[:, 2] ** 2]
    kw = dict(epochs=2, batch_size=10, shuffle=False, validation_data=(X[:20], t[:20]))
    a = mlpx.MLP([5, 6, 2], output="identity", dtype="float64", seed=1)
    b = mlpx.MLP([5, 6, 2], output="identity", dtype="float64", seed=1)
    ha, hb = a.fit(X, t, **kw), b.fit(X, t, comm=MPI.COMM_SELF, **kw)
    np.testing.assert_allclose(hb.history["val_r2"], ha.history["val_r2"], rtol=1e-10)
    np.testing.assert_allclose(hb.history["val_loss"], ha.history["val_loss"], rtol=1e-10)


def test_checkpoint_round_trip_without_mpi(tmp_path: Path) -> None:
    from mlpx.saving import ModelCheckpoint, load_checkpoint

    X, y, _ = W.make_data()
    straight = W.make_model()
    straight.fit(X, y, epochs=3, batch_size=10, optimizer="adam", shuffle=False)
    first = W.make_model()
    cb = ModelCheckpoint(tmp_path / "ck.npz")
    first.fit(X, y, epochs=2, batch_size=10, optimizer="adam", shuffle=False, callbacks=[cb])
    assert cb.writes == 2
    # The checkpoint is an ordinary model file too.
    np.testing.assert_array_equal(mlpx.load(tmp_path / "ck.npz").get_flat_params(), first.get_flat_params())
    resumed = W.make_model(seed=5)
    opt = load_checkpoint(tmp_path / "ck.npz", resumed)
    assert isinstance(opt, mlpx.Adam) and opt.t == 2 * 5 and resumed.epochs_done_ == 2
    resumed.fit(X, y, epochs=1, batch_size=10, optimizer=opt, shuffle=False)
    assert_weights_close(resumed.get_weights(), straight.get_weights(), atol=1e-12)
