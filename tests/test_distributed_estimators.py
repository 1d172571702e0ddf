"""MLPClassifier / MLPRegressor ``fit(..., comm=...)`` under a real MPI launcher.

One ``mpiexec -n 2`` and one ``mpiexec -n 3`` launch (each with a timeout, so a hang
fails instead of stalling CI) run every scenario of
``_mpi_worker.run_estimators``; each rank pickles its fitted attributes. The
references are single-process fits on the union of the shards: scikit-learn's own
``MLPClassifier`` / ``MLPRegressor`` (independent code), and mlpx's single-process
estimator, with ``batch_size = K * b`` (block shards, ``shuffle=False``), so step
``j`` of the K ranks together is batch ``j`` of the single process.
"""

from __future__ import annotations

import functools
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("sklearn")

import sklearn.neural_network._multilayer_perceptron as sk_mlp  # noqa: E402
from sklearn.neural_network import MLPClassifier as SkClassifier  # noqa: E402
from sklearn.neural_network import MLPRegressor as SkRegressor  # noqa: E402

import _mpi_worker as W  # noqa: E402
import mlpx.estimators  # noqa: E402
from mlpx import MLPClassifier, MLPRegressor  # noqa: E402
from mlpx.distributed import shard_indices  # noqa: E402

needs_mpi = pytest.mark.skipif(not (W.has_mpi4py() and W.find_mpiexec()), reason=W.SKIP_REASON)
pytestmark = [needs_mpi, pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")]

SIZES = [2, 3]
EST = {"clf": (MLPClassifier, SkClassifier), "reg": (MLPRegressor, SkRegressor)}
ATOL = 1e-10


def _launch(size: int, call: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """``mpiexec -n size python -c 'W.<call>'``, killed after ``timeout`` seconds."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env[var] = "1"  # the ranks already share the cores
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1", PRTE_MCA_rmaps_default_mapping_policy=":oversubscribe")
    tests = str(Path(__file__).resolve().parent)
    code = f"import sys; sys.path.insert(0, {tests!r}); import _mpi_worker as W; W.{call}"
    cmd = [W.find_mpiexec() or "mpiexec", "-n", str(size), sys.executable, "-c", code]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


@functools.lru_cache(maxsize=None)
def _results(size: int) -> tuple[dict[str, Any], ...]:
    outdir = Path(tempfile.mkdtemp(prefix=f"mlpx-est-mpi{size}-"))
    try:
        proc = _launch(size, f"run_estimators_main({str(outdir)!r})", timeout=150)
        if proc.returncode != 0:  # cached too: one failed launch, not one per test
            return ({"failed": f"mpiexec failed:\n{proc.stdout}\n{proc.stderr}"},)
        out = []
        for r in range(size):
            with open(outdir / f"estimators.rank{r}.pkl", "rb") as fh:
                out.append(pickle.load(fh))
        return tuple(out)
    finally:
        shutil.rmtree(outdir, ignore_errors=True)


def results(size: int, case: str) -> list[dict[str, Any]]:
    res = _results(size)
    assert "failed" not in res[0], res[0].get("failed")
    return [r[case] for r in res]


def params(fitted: Any) -> list[np.ndarray]:
    if isinstance(fitted, dict):
        return list(fitted["coefs_"]) + list(fitted["intercepts_"])
    return list(fitted.coefs_) + list(fitted.intercepts_)


def assert_identical_on_ranks(per_rank: list[dict[str, Any]]) -> None:
    """Every rank applied the same updates and took the same decisions."""
    for other in per_rank[1:]:
        for a, b in zip(params(per_rank[0]), params(other)):
            np.testing.assert_array_equal(a, b)
        assert other["n_iter_"] == per_rank[0]["n_iter_"]
        assert other.get("loss_curve_") == per_rank[0].get("loss_curve_")


def assert_matches(got: dict[str, Any], ref: Any, atol: float = ATOL, curve_rtol: float = 1e-10) -> None:
    for a, b in zip(params(got), params(ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=atol)
    assert got["n_iter_"] == ref.n_iter_
    if getattr(ref, "loss_curve_", None) is not None:
        np.testing.assert_allclose(got["loss_curve_"], ref.loss_curve_, rtol=curve_rtol)


def single_process(kind: str, which: int, X: np.ndarray, y: np.ndarray, w: np.ndarray | None,
                   **kw: Any) -> Any:
    """One process on the union: mlpx (which=0) or scikit-learn (which=1)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return EST[kind][which](random_state=0, **kw).fit(X, y, sample_weight=w)


# ------------------------------------------------------------------ exactness
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kind", ["clf", "reg"])
@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_k_ranks_batch_b_equal_one_process_batch_kb(size: int, kind: str, solver: str) -> None:
    # alpha and sample weights on; ranks other than 0 drew other initial weights.
    got = results(size, f"exact_{kind}_{solver}")
    assert_identical_on_ranks(got)
    X, y, w = W.est_data(kind)
    for which in (0, 1):
        ref = single_process(kind, which, X, y, w, batch_size=size * W.EST_BATCH, **W.est_kwargs(solver))
        assert_matches(got[0], ref)
    assert all(g["t_"] == W.N_ROWS * W.EST_EPOCHS for g in got)  # samples seen: global


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("rule", ["adaptive", "invscaling"])
def test_learning_rate_rules_read_global_numbers(size: int, rule: str) -> None:
    # adaptive: the rate is divided when the *global* loss stalls, on every rank at once;
    # invscaling: the rate follows the global count of samples seen.
    got = results(size, f"lr_{rule}")
    assert_identical_on_ranks(got)
    assert len({g["lr"] for g in got}) == 1
    X, y, w = W.est_data("clf")
    extra = {"tol": 0.5, "n_iter_no_change": 1, "max_iter": 6} if rule == "adaptive" else {"power_t": 0.3}
    kw = W.est_kwargs("sgd", learning_rate=rule, **extra)
    ours = single_process("clf", 0, X, y, w, batch_size=size * W.EST_BATCH, **kw)
    sk = single_process("clf", 1, X, y, w, batch_size=size * W.EST_BATCH, **kw)
    for ref in (ours, sk):
        assert_matches(got[0], ref)
    assert got[0]["lr"] == pytest.approx(sk._optimizer.learning_rate, rel=1e-12)
    if rule == "adaptive":
        assert got[0]["lr"] == pytest.approx(kw["learning_rate_init"] / 25)  # divided twice


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_uneven_shards_match_scikit_learn_step_by_step(size: int, solver: str) -> None:
    # Step j of the ranks together is the union of each rank's j-th batch of 5 rows
    # (smaller shards drop out): scikit-learn's partial_fit on exactly that union,
    # one step per call, keeps its optimizer state between calls.
    got = results(size, f"uneven_{solver}")
    assert_identical_on_ranks(got)
    X, y, w = W.est_data("clf")
    sizes = W.est_uneven_sizes(size)
    starts = np.cumsum([0] + sizes[:-1])
    b = W.EST_UNEVEN_BATCH
    n_steps = max(-(-s // b) for s in sizes)
    kw = W.est_kwargs(solver, max_iter=2)
    # batch_size="auto" is min(200, rows): every call is one step on its whole union batch.
    sk = SkClassifier(random_state=0, batch_size="auto", **{k: v for k, v in kw.items() if k != "max_iter"})
    curve = []
    for _epoch in range(kw["max_iter"]):
        total = 0.0
        for j in range(n_steps):
            rows = np.concatenate([np.arange(s + j * b, s + min((j + 1) * b, n))
                                   for s, n in zip(starts, sizes) if j * b < n])
            sk.partial_fit(X[rows], y[rows], sample_weight=w[rows], classes=np.arange(W.N_CLASSES))
            total += sk.loss_ * len(rows)
        curve.append(total / sum(sizes))
    for a, b_ in zip(params(got[0]), params(sk), strict=True):
        np.testing.assert_allclose(a, b_, rtol=0, atol=ATOL)
    np.testing.assert_allclose(got[0]["loss_curve_"], curve, rtol=1e-10)


@pytest.mark.parametrize("size", SIZES)
def test_shard_missing_a_class_builds_the_same_output_layer(size: int) -> None:
    got = results(size, "missing_class")
    assert_identical_on_ranks(got)
    for g in got:
        np.testing.assert_array_equal(g["classes_"], [0, 1, 2])
    X, y, w = W.est_missing_class(size)
    assert not np.isin(2, y[W.shard_rows(1, size)])  # the case really lacks a class
    for which in (0, 1):
        ref = single_process("clf", which, X, y, w, batch_size=size * W.EST_BATCH, **W.est_kwargs("adam"))
        assert_matches(got[0], ref)


@pytest.mark.parametrize("size", SIZES)
def test_rank_with_a_single_class_in_a_binary_problem(size: int) -> None:
    got = results(size, "binary_one_class")
    assert_identical_on_ranks(got)
    assert all(list(g["classes_"]) == [0, 1] for g in got)
    assert got[0]["coefs_"][-1].shape[1] == 1  # one logistic output, as the union needs
    X, _, _ = W.make_data()
    yb = (X[:, 0] > 0).astype(int)
    yb[W.shard_rows(size - 1, size)] = 0
    for which in (0, 1):
        ref = single_process("clf", which, X, yb, None, batch_size=size * W.EST_BATCH, **W.est_kwargs("sgd"))
        assert_matches(got[0], ref)


# ------------------------------------------------------------- early stopping
def _global_split(size: int, kind: str, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ranks' splits seen as one: training rows in the order the K ranks' batches
    of b interleave (so one process with batch K*b sees the same batches), and the
    union of their validation rows."""
    b = W.EST_BATCH
    trains, vals = [], []
    for r in range(size):
        shard = shard_indices(W.EST_ES_ROWS, r, size)
        tr, va = W.est_es_split(len(shard), y[shard], kind)
        trains.append(shard[tr])
        vals.append(shard[va])
    n_t = len(trains[0])
    assert all(len(t) == n_t for t in trains)  # equal shards: batches line up
    order = np.concatenate([t[j:j + b] for j in range(0, n_t, b) for t in trains])
    return order, np.concatenate(vals)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kind", ["clf", "reg"])
def test_early_stopping_agreed_and_equal_to_one_process(size: int, kind: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    got = results(size, f"early_{kind}")
    assert_identical_on_ranks(got)  # same n_iter_ everywhere: no rank stopped alone
    X, y, w = W.est_data(kind, n=W.EST_ES_ROWS, seed=3)
    order, val = _global_split(size, kind, y)

    def same_split(*arrays: Any, **_: Any) -> list[Any]:
        # The single process gets the ranks' global split (its own draw would differ).
        return [a[i] for a in arrays for i in (order, val)]

    monkeypatch.setattr(mlpx.estimators._base, "train_test_split", same_split)
    monkeypatch.setattr(sk_mlp, "train_test_split", same_split)
    kw = W.est_kwargs("sgd", max_iter=60, n_iter_no_change=2, tol=1e-3)
    for which in (0, 1):
        ref = single_process(kind, which, X, y, w, batch_size=size * W.EST_BATCH, early_stopping=True,
                             validation_fraction=W.EST_ES_FRACTION, **kw)
        assert ref.n_iter_ < kw["max_iter"]  # it did stop early
        assert_matches(got[0], ref)  # best weights restored, as in the single process
        np.testing.assert_allclose(got[0]["validation_scores_"], ref.validation_scores_, rtol=1e-10)
        assert got[0]["best_validation_score_"] == pytest.approx(ref.best_validation_score_, rel=1e-10)


# --------------------------------------------------------- partial_fit, L-BFGS
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kind", ["clf", "reg"])
def test_partial_fit_with_comm(size: int, kind: str) -> None:
    got = results(size, f"partial_{kind}")
    assert_identical_on_ranks(got)
    X, y, w = W.est_data(kind)
    for which in (0, 1):
        ref = EST[kind][which](random_state=0, batch_size=size * W.EST_BATCH, **W.est_kwargs("adam"))
        for _ in range(3):
            extra = {"classes": np.arange(W.N_CLASSES)} if kind == "clf" else {}
            ref.partial_fit(X, y, sample_weight=w, **extra)
        assert_matches(got[0], ref)
        assert got[0]["t_"] == ref.t_ == 3 * W.N_ROWS


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kind", ["clf", "reg"])
def test_lbfgs_with_comm_follows_one_process(size: int, kind: str) -> None:
    # Every SciPy evaluation sees the global loss and gradient; the summation order
    # differs from one process, so after 25 L-BFGS iterations the match is to ~1e-12.
    got = results(size, f"lbfgs_{kind}")
    assert_identical_on_ranks(got)
    X, y, w = W.est_data(kind)
    for which in (0, 1):
        ref = single_process(kind, which, X, y, w, **W.est_kwargs("lbfgs", max_iter=25))
        assert_matches(got[0], ref, atol=1e-8)
        assert got[0]["loss_"] == pytest.approx(ref.loss_, rel=1e-10)


# ------------------------------------------------------- output and failures
@pytest.mark.parametrize("size", SIZES)
def test_only_rank0_prints(size: int) -> None:
    out = results(size, "verbose")
    assert out[0].count("Iteration") == 2
    assert all(o == "" for o in out[1:])


@pytest.mark.parametrize("size", SIZES)
def test_bad_shard_on_one_rank_fails_every_rank(size: int) -> None:
    got = results(size, "fail_nan")
    assert got[-1]["type"] == "ValueError" and "NaN" in got[-1]["message"]
    for g in got[:-1]:
        assert g["type"] == "RankFailedError" and g["rank"] == size - 1 and "NaN" in g["message"]
    # A shard with other features would build another network: refused on every rank.
    for g in results(size, "fail_features"):
        assert g["type"] == "ValueError" and "same model" in g["message"] and "layers" in g["message"]


# ------------------------------------------------------------------ in-process
def test_comm_self_equals_plain_fit() -> None:
    pytest.importorskip("mpi4py")
    from mpi4py import MPI

    X, y, w = W.est_data("clf")
    kw = dict(batch_size=8, random_state=0, early_stopping=True, **W.est_kwargs("adam", max_iter=6))
    a = MLPClassifier(**kw).fit(X, y, sample_weight=w)
    b = MLPClassifier(**kw).fit(X, y, sample_weight=w, comm=MPI.COMM_SELF)
    for p, q in zip(params(a), params(b), strict=True):
        np.testing.assert_allclose(q, p, rtol=0, atol=1e-12)
    np.testing.assert_allclose(b.validation_scores_, a.validation_scores_, rtol=1e-12)
    assert b.n_iter_ == a.n_iter_


# ------------------------------------------------------------------------ GPU
def _gpu_results(size: int, use_nccl: bool, outdir: Path) -> list[dict[str, Any]]:
    proc = _launch(size, f"run_estimators_gpu_main({str(outdir)!r}, {use_nccl})", timeout=300)
    assert proc.returncode == 0, f"mpiexec failed:\n{proc.stdout}\n{proc.stderr}"
    out = []
    for r in range(size):
        with open(outdir / f"estimators_gpu.rank{r}.pkl", "rb") as fh:
            out.append(pickle.load(fh))
    for r in out:
        assert "error" not in r, r.get("error")
    return out


def _check_gpu_against_cpu(got: list[dict[str, Any]], size: int) -> None:
    X, y, w = W.est_data("clf")
    for solver in ("sgd", "adam"):
        assert_identical_on_ranks([g[solver] for g in got])
        ref = single_process("clf", 1, X, y, w, batch_size=size * W.EST_BATCH, **W.est_kwargs(solver))
        # GPU reductions sum in another order than BLAS on the CPU: float64 rounding only.
        assert_matches(got[0][solver], ref, atol=1e-9, curve_rtol=1e-9)


@pytest.mark.gpu
def test_gpu_two_ranks_share_one_gpu_over_mpi(tmp_path: Path) -> None:
    _check_gpu_against_cpu(_gpu_results(2, False, tmp_path), 2)


@pytest.mark.gpu
def test_gpu_nccl_one_rank_per_gpu(tmp_path: Path) -> None:
    import cupy

    size = min(2, int(cupy.cuda.runtime.getDeviceCount()))  # NCCL refuses two ranks on one GPU
    got = _gpu_results(size, True, tmp_path)
    _check_gpu_against_cpu(got, size)
    assert [g["sgd"]["backend"] for g in got] == [f"gpu:{k}" for k in range(size)]
