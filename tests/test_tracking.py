"""Batch hooks and the loggers, each read back through the real library.

References: the epoch loss the loop logs (a batch hook's losses must average to
it), TensorBoard's own ``EventAccumulator``, MLflow's own ``MlflowClient`` on a
file store, Python's ``csv`` module.
"""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

import mlpx
from mlpx.callbacks import BatchHooks
from mlpx.saving import ModelCheckpoint


def _data(n: int = 90, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    return X, (X[:, 0] > 0).astype(int) + (X[:, 1] > 0.3)


class Recorder(mlpx.Callback):
    """Every hook call, in order."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def on_train_begin(self, model, epochs):
        self.events.append(("train_begin", epochs))

    def on_batch_begin(self, model, step, logs):
        self.events.append(("begin", logs["epoch"], step, dict(logs)))

    def on_batch_end(self, model, step, logs):
        self.events.append(("end", logs["epoch"], step, dict(logs)))

    def on_epoch_end(self, model, epoch, logs):
        self.events.append(("epoch", epoch, dict(logs)))

    def on_train_end(self, model):
        self.events.append(("train_end",))


def _check_batches_against_epochs(events: list[tuple], epochs: int, steps: int, rows: int, sizes) -> None:
    """Hooks in order, one begin/end pair per step, and batch losses whose
    size-weighted mean is the epoch's logged loss."""
    assert events[0][0] == "train_begin" and events[-1] == ("train_end",)
    i = 1
    for e in range(epochs):
        batch_losses, hits = [], 0.0
        for j in range(steps):
            begin, end = events[i], events[i + 1]
            assert begin[:3] == ("begin", e, j) and end[:3] == ("end", e, j)
            assert begin[3]["size"] == end[3]["size"] == sizes[j]
            batch_losses.append(end[3]["loss"])
            hits += end[3]["accuracy"] * sizes[j]
            i += 2
        kind, epoch, logs = events[i]
        assert (kind, epoch) == ("epoch", e)
        np.testing.assert_allclose(np.dot(batch_losses, sizes) / rows, logs["loss"], rtol=1e-12)
        np.testing.assert_allclose(hits / rows, logs["accuracy"], rtol=1e-12)
        i += 1


def test_batch_hooks_fire_per_step_with_the_step_losses() -> None:
    X, y = _data()
    rec = Recorder()
    model = mlpx.MLP([4, 6, 3], seed=0, dtype="float64")
    model.fit(X, y, epochs=2, batch_size=32, callbacks=[rec], l2=0.01)
    _check_batches_against_epochs(rec.events, 2, 3, 90, [32, 32, 26])


def test_batch_hooks_on_a_stack_s_compiled_epoch(monkeypatch) -> None:
    """The compiled epoch path stays on (no train_step call) and delivers every step's hooks."""
    pytest.importorskip("numba")
    X, y = _data()
    template = mlpx.MLP([4, 6, 3], seed=0, dtype="float64")
    stack = mlpx.Stack(template, seeds=[0, 1])
    assert stack.compiled_step_reason == ""
    compiled = []
    original = type(stack).train_epoch

    def spy(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        compiled.append(out is not None)
        return out

    monkeypatch.setattr(type(stack), "train_epoch", spy)
    monkeypatch.setattr(type(stack), "train_step", lambda *a, **k: pytest.fail("stepped one by one"))
    rec = Recorder()
    stack.fit(X, y, epochs=2, batch_size=32, callbacks=[rec])
    assert compiled == [True, True]
    ends = [ev for ev in rec.events if ev[0] == "end"]
    assert len(ends) == 6 and all(np.shape(ev[3]["loss"]) == (2,) for ev in ends)
    for e in range(2):
        losses = np.array([ev[3]["loss"] for ev in ends if ev[1] == e])
        sizes = np.array([ev[3]["size"] for ev in ends if ev[1] == e])
        assert sizes.tolist() == [[32, 32], [32, 32], [26, 26]]
        logged = [ev[2]["loss"] for ev in rec.events if ev[0] == "epoch" and ev[1] == e][0]
        np.testing.assert_allclose((losses * sizes).sum(axis=0) / 90, logged, rtol=1e-12)
    # every hook of an epoch fires before that epoch's on_epoch_end
    kinds = [ev[0] for ev in rec.events]
    assert kinds == ["train_begin"] + (["begin", "end"] * 3 + ["epoch"]) * 2 + ["train_end"]


def test_unused_batch_hooks_cost_no_call(monkeypatch, tmp_path) -> None:
    """No callback overriding a batch hook (the built-in ones included): no per-step call."""
    monkeypatch.setattr(BatchHooks, "begin", lambda *a: pytest.fail("per-step call"))
    monkeypatch.setattr(BatchHooks, "end", lambda *a: pytest.fail("per-step call"))
    X, y = _data()
    quiet = [mlpx.EarlyStopping(monitor="loss"), mlpx.ProgressBar(0), mlpx.CSVLogger(tmp_path / "log.csv"),
             ModelCheckpoint(tmp_path / "ck-{epoch}.npz")]
    assert BatchHooks.of(quiet) is None
    mlpx.MLP([4, 6, 3], seed=0).fit(X, y, epochs=2, callbacks=quiet)


def test_a_batch_hook_can_stop_training_after_the_epoch() -> None:
    class StopAt(mlpx.Callback):
        def on_batch_end(self, model, step, logs):
            if step == 1:
                model.stop_training = True

    X, y = _data()
    history = mlpx.MLP([4, 6, 3], seed=0).fit(X, y, epochs=5, batch_size=32, callbacks=[StopAt()])
    assert history.epochs == 1


# ------------------------------------------------------------------ CSV
def test_csv_logger_writes_one_row_per_epoch_and_appends_on_resume(tmp_path) -> None:
    X, y = _data()
    Xv, yv = _data(30, seed=2)
    path = tmp_path / "logs" / "run.csv"
    model = mlpx.MLP([4, 6, 3], seed=0, dtype="float64")
    first = model.fit(X, y, epochs=2, validation_data=(Xv, yv),
                      callbacks=[mlpx.CSVLogger(path), ModelCheckpoint(tmp_path / "ck.npz")])
    resumed = mlpx.MLP([4, 6, 3], seed=5, dtype="float64")
    second = resumed.fit(X, y, epochs=4, validation_data=(Xv, yv), resume_from=tmp_path / "ck.npz",
                         callbacks=[mlpx.CSVLogger(path, append=True)])
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy"]
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]
    for key in ("loss", "val_loss", "accuracy"):
        assert [float(r[key]) for r in rows] == first.history[key] + second.history[key]  # repr: exact


def test_csv_logger_separator_and_stack_columns(tmp_path) -> None:
    X, y = _data()
    stack = mlpx.Stack(mlpx.MLP([4, 6, 3], seed=0), seeds=[0, 1])
    history = stack.fit(X, y, epochs=2, callbacks=[mlpx.CSVLogger(tmp_path / "s.csv", separator=";")])
    with open(tmp_path / "s.csv", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter=";"))
    assert list(rows[0]) == ["epoch", "loss[0]", "loss[1]", "accuracy[0]", "accuracy[1]"]
    assert float(rows[1]["loss[1]"]) == history.history["loss"][1][1]
    with pytest.raises(ValueError, match="one character"):
        mlpx.CSVLogger(tmp_path / "x.csv", separator=";;")


# ------------------------------------------------------------------ TensorBoard
def _events(log_dir) -> dict[str, list[tuple[int, float]]]:
    ea_module = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = ea_module.EventAccumulator(str(log_dir), size_guidance={ea_module.SCALARS: 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.mark.parametrize("backend", ["tensorboardX", "torch"])
def test_tensorboard_logger_event_file_reads_back(tmp_path, backend) -> None:
    pytest.importorskip("tensorboardX" if backend == "tensorboardX" else "torch.utils.tensorboard")
    X, y = _data()
    tb = mlpx.TensorBoardLogger(tmp_path / "tb", batch_every=2, backend=backend)
    rec = Recorder()
    model = mlpx.MLP([4, 6, 3], seed=0, dtype="float64")
    history = model.fit(X, y, epochs=3, batch_size=32, validation_split=0.2, callbacks=[tb, rec])
    scalars = _events(tmp_path / "tb")
    assert set(scalars) == {"loss", "accuracy", "val_loss", "val_accuracy", "batch_loss", "batch_accuracy"}
    for key in ("loss", "val_loss", "accuracy", "val_accuracy"):
        assert [s for s, _ in scalars[key]] == [0, 1, 2]
        np.testing.assert_allclose([v for _, v in scalars[key]], history.history[key], rtol=1e-6)  # float32 events
    batch = [ev[3]["loss"] for ev in rec.events if ev[0] == "end"]  # 3 steps x 3 epochs
    assert [s for s, _ in scalars["batch_loss"]] == [2, 4, 6, 8]
    np.testing.assert_allclose([v for _, v in scalars["batch_loss"]], batch[1::2], rtol=1e-6)


def test_tensorboard_logger_without_batches_adds_no_hook(tmp_path) -> None:
    pytest.importorskip("tensorboardX")
    tb = mlpx.TensorBoardLogger(tmp_path / "tb")
    assert BatchHooks.of([tb]) is None
    X, y = _data()
    stack = mlpx.Stack(mlpx.MLP([4, 6, 3], seed=0), seeds=[0, 1, 2])
    history = stack.fit(X, y, epochs=2, callbacks=[tb])
    scalars = _events(tmp_path / "tb")
    assert set(scalars) == {f"{k}/{m}" for k in ("loss", "accuracy") for m in range(3)}
    np.testing.assert_allclose([v for _, v in scalars["loss/2"]], [h[2] for h in history.history["loss"]],
                               rtol=1e-6)


def test_a_missing_library_names_the_extra(monkeypatch) -> None:
    import builtins

    real = builtins.__import__

    def no_tracking(name, *args, **kwargs):
        if name.split(".")[0] in ("tensorboardX", "torch", "mlflow"):
            raise ImportError(f"No module named {name!r}")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tracking)
    import importlib

    monkeypatch.setattr(importlib, "import_module", lambda name, *a: no_tracking(name))
    with pytest.raises(ImportError, match=r'pip install "mlpx\[tensorboard\]"'):
        mlpx.TensorBoardLogger("/tmp/never")
    with pytest.raises(ImportError, match=r'pip install "mlpx\[mlflow\]"'):
        mlpx.MLflowLogger()


# ------------------------------------------------------------------ MLflow
@pytest.fixture
def file_store(tmp_path, monkeypatch) -> str:
    pytest.importorskip("mlflow")
    # MLflow 3.x keeps the file store behind an opt-in; it is the serverless store a test can query.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return (tmp_path / "mlruns").as_uri()


def test_mlflow_logger_run_can_be_queried(file_store) -> None:
    from mlflow.tracking import MlflowClient

    X, y = _data()
    Xv, yv = _data(30, seed=2)
    ml = mlpx.MLflowLogger(tracking_uri=file_store, experiment="tests", run_name="mlp",
                           params={"note": "first"}, batch_every=3)
    model = mlpx.MLP([4, 6, 3], seed=0, dtype="float64")
    history = model.fit(X, y, epochs=3, batch_size=32, optimizer=mlpx.SGD(lr=0.05), validation_data=(Xv, yv),
                        callbacks=[ml])
    client = MlflowClient(tracking_uri=file_store)
    run = client.get_run(ml.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "mlp"
    assert client.get_experiment(run.info.experiment_id).name == "tests"
    params = run.data.params
    assert params["note"] == "first" and params["optimizer"] == "SGD" and params["optimizer.lr"] == "0.05"
    assert params["n_params"] == str(model.n_params) and params["dtype"] == "float64"
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        got = sorted((m.step, m.value) for m in client.get_metric_history(ml.run_id, key))
        assert got == list(enumerate(history.history[key]))  # float64 values, exact
    assert [m.step for m in client.get_metric_history(ml.run_id, "batch_loss")] == [3, 6, 9]


def test_mlflow_logger_continues_a_run_after_a_resume(file_store, tmp_path) -> None:
    from mlflow.tracking import MlflowClient

    X, y = _data()
    first = mlpx.MLflowLogger(tracking_uri=file_store)
    mlpx.MLP([4, 6, 3], seed=0).fit(X, y, epochs=2, callbacks=[first, ModelCheckpoint(tmp_path / "ck")])
    again = mlpx.MLflowLogger(tracking_uri=file_store, run_id=first.run_id)
    mlpx.MLP([4, 6, 3], seed=0).fit(X, y, epochs=5, resume_from=tmp_path / "ck", callbacks=[again])
    history = MlflowClient(tracking_uri=file_store).get_metric_history(first.run_id, "loss")
    assert sorted(m.step for m in history) == [0, 1, 2, 3, 4]
    assert all(math.isfinite(m.value) for m in history)
