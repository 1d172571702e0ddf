"""Checkpoints resume exactly, refuse what is missing, and keep what is asked.

The reference for every resume is the same run without interruption: a resumed
run must end with the same bits (weights, optimizer state, counters), for either
way of resuming (``load_checkpoint`` + ``fit`` and ``fit(resume_from=...)``).
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mlpx
import mlpx.optimizers
from mlpx import ModelFileError
from mlpx.saving import ModelCheckpoint, load_checkpoint, read_model_file, save_checkpoint

EPOCHS = 5


def _data(n: int = 96, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5))
    return X, (X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5)


def _net(dtype: str, seed: int = 1, dropout: float = 0.2) -> mlpx.Sequential:
    return mlpx.MLP([5, 8, 3], seed=seed, dtype=dtype, dropout=dropout)


def _state(model: mlpx.Sequential, optimizer: mlpx.optimizers.Optimizer | None = None) -> dict:
    opt = (optimizer or model.optimizer_).state_dict()
    return {"params": model.get_flat_params(), "t": opt["t"], "lr": opt["lr"],
            **{k: v for k, v in opt["state"].items()},
            "epochs": model.epochs_done_, "samples": model.samples_seen_}


def _assert_same_bits(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], np.ndarray):
            assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("stop", [1, 2, 4])
def test_a_resumed_run_is_bit_identical(tmp_path, dtype, optimizer, shuffle, stop) -> None:
    """3 interruption points x shuffle on/off x SGD/Adam x float32/float64, both ways of resuming."""
    X, y = _data()
    kw = dict(batch_size=16, shuffle=shuffle, optimizer=optimizer)
    straight = _net(dtype)
    straight.fit(X, y, epochs=EPOCHS, **kw)

    first = _net(dtype)
    first.fit(X, y, epochs=stop, callbacks=[ModelCheckpoint(tmp_path / "ck.npz")], **kw)

    # 1. load_checkpoint into a fresh model (another seed: everything comes from the file)
    resumed = _net(dtype, seed=99)
    opt = load_checkpoint(tmp_path / "ck.npz", resumed)
    resumed.fit(X, y, epochs=EPOCHS - stop, **{**kw, "optimizer": opt})
    _assert_same_bits(_state(resumed), _state(straight))

    # 2. fit(resume_from=...): epochs is the run's total
    again = _net(dtype, seed=98)
    history = again.fit(X, y, epochs=EPOCHS, resume_from=tmp_path / "ck.npz", **kw)
    assert history.epochs == EPOCHS - stop
    _assert_same_bits(_state(again), _state(straight))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    stops=st.lists(st.integers(1, 5), min_size=1, max_size=3, unique=True).map(sorted),
    batch_size=st.sampled_from([7, 16, 96]),
    shuffle=st.booleans(),
    optimizer=st.sampled_from(["sgd", "adam", "rmsprop", "adamw"]),
    dropout=st.sampled_from([0.0, 0.3]),
    seed=st.one_of(st.none(), st.integers(0, 2**31)),
)
def test_resuming_at_any_epochs_is_bit_identical(tmp_path, stops, batch_size, shuffle, optimizer, dropout,
                                                 seed) -> None:
    """A run interrupted (and resumed from its checkpoint) any number of times ends as the straight run.

    With ``seed=None`` the generators start from fresh entropy: only the saved
    states can make the two runs agree, so both runs share one starting model.
    """
    X, y = _data(60, seed=3)
    total = 6
    kw = dict(batch_size=batch_size, shuffle=shuffle, optimizer=optimizer)
    start = mlpx.MLP([5, 8, 3], seed=seed, dropout=dropout, dtype="float64")
    start.shuffle_generator()  # drawn from entropy without a seed: saved, so both runs share it
    save_checkpoint(tmp_path / "start.npz", start)  # the straight run starts from the same state
    straight = mlpx.MLP([5, 8, 3], seed=seed, dropout=dropout, dtype="float64")
    load_checkpoint(tmp_path / "start.npz", straight)
    straight.fit(X, y, epochs=total, **kw)

    path = tmp_path / "ck.npz"
    model = mlpx.MLP([5, 8, 3], seed=seed, dropout=dropout, dtype="float64")
    load_checkpoint(tmp_path / "start.npz", model)
    done = 0
    for stop in stops + [total]:
        if stop == done:
            continue
        resume = {"resume_from": path} if done else {}
        model.fit(X, y, epochs=stop, callbacks=[ModelCheckpoint(path)], **kw, **resume)
        done = stop
        model = mlpx.MLP([5, 8, 3], seed=None, dropout=dropout, dtype="float64")  # a new process
        opt = load_checkpoint(path, model)
    _assert_same_bits(_state(model, opt), _state(straight))


def test_the_old_checkpoints_lost_the_shuffle(tmp_path) -> None:
    """The generator states are what makes a shuffled resume exact: without them it differs."""
    X, y = _data()
    straight = _net("float64")
    straight.fit(X, y, epochs=3, batch_size=16)
    first = _net("float64")
    first.fit(X, y, epochs=1, batch_size=16, callbacks=[ModelCheckpoint(tmp_path / "ck.npz")])
    record, arrays = read_model_file(tmp_path / "ck.npz")
    del record["train_state"]["generators"]
    entries = {k: v for k, v in arrays.items()}
    np.savez(tmp_path / "old.npz", config=np.array(json.dumps(record)), **entries)
    resumed = _net("float64")
    resumed.fit(X, y, epochs=3, batch_size=16, resume_from=tmp_path / "old.npz")
    assert not np.array_equal(resumed.get_flat_params(), straight.get_flat_params())


def _checkpoint(tmp_path, optimizer: str = "adam") -> tuple[dict, dict]:
    X, y = _data()
    model = _net("float32")
    model.fit(X, y, epochs=2, batch_size=16, optimizer=optimizer)
    save_checkpoint(tmp_path / "ck.npz", model)
    return read_model_file(tmp_path / "ck.npz")


def _rewrite(path, record, arrays) -> None:
    np.savez(path, config=np.array(json.dumps(record)), **arrays)


@pytest.mark.parametrize(
    "optimizer, drop", [("adam", "opt_m"), ("adam", "opt_v"), ("sgd", "opt_velocity"), ("rmsprop", "opt_s")]
)
def test_a_checkpoint_missing_an_optimizer_array_is_refused(tmp_path, optimizer, drop) -> None:
    """Never zero-filled: both the reader and a resume refuse it, and the model stays as it was."""
    record, arrays = _checkpoint(tmp_path, optimizer)
    assert drop in arrays
    del arrays[drop]
    bad = tmp_path / "bad.npz"
    _rewrite(bad, record, arrays)
    model = _net("float32", seed=5)
    before = model.get_flat_params()
    for attempt in (lambda: load_checkpoint(bad, model),
                    lambda: model.fit(*_data(), epochs=3, optimizer=optimizer, resume_from=bad),
                    lambda: read_model_file(bad), lambda: mlpx.load(bad)):
        with pytest.raises(ModelFileError, match=f"lacks \\['{drop}'\\]"):
            attempt()
    assert np.array_equal(model.get_flat_params(), before) and model.epochs_done_ == 0


@pytest.mark.parametrize("field", ["t", "lr", "config", "optimizer"])
def test_a_checkpoint_missing_an_optimizer_field_is_refused(tmp_path, field) -> None:
    record, arrays = _checkpoint(tmp_path)
    del record["train_state"]["optimizer"][field]
    _rewrite(tmp_path / "bad.npz", record, arrays)
    with pytest.raises(ModelFileError, match="optimizer"):
        load_checkpoint(tmp_path / "bad.npz", _net("float32"))


def test_unknown_or_extra_optimizer_arrays_are_refused_by_name(tmp_path) -> None:
    record, arrays = _checkpoint(tmp_path, "sgd")
    for extra in ("opt_m", "opt_x"):
        _rewrite(tmp_path / "bad.npz", record, {**arrays, extra: arrays["params"]})
        with pytest.raises(ModelFileError, match=f"unexpected entry '{extra}.npy'"):
            load_checkpoint(tmp_path / "bad.npz", _net("float32"))
    plain = copy.deepcopy(record)
    del plain["train_state"]["optimizer"]
    _rewrite(tmp_path / "bad.npz", plain, arrays)  # arrays of an optimizer the record does not name
    with pytest.raises(ModelFileError, match="unexpected entry 'opt_velocity.npy'"):
        mlpx.load(tmp_path / "bad.npz")


_PCG = {"bit_generator": "PCG64", "state": {"state": 1, "inc": 3}, "has_uint32": 0, "uinteger": 0}


@pytest.mark.parametrize(
    "generators, match",
    [
        ("rng", "generators"),
        ({"shuffle": None}, "generators"),
        ({"shuffle": None, "dropout": [], "extra": 1}, "generators"),
        ({"shuffle": {**_PCG, "bit_generator": "MT19937"}, "dropout": [_PCG]}, "PCG64"),
        ({"shuffle": {**_PCG, "state": {"state": -1, "inc": 3}}, "dropout": [_PCG]}, "PCG64"),
        ({"shuffle": {**_PCG, "state": {"state": 1 << 128, "inc": 3}}, "dropout": [_PCG]}, "PCG64"),
        ({"shuffle": {**_PCG, "has_uint32": True}, "dropout": [_PCG]}, "PCG64"),
        ({"shuffle": {**_PCG, "uinteger": 1 << 32}, "dropout": [_PCG]}, "PCG64"),
        ({"shuffle": {**_PCG, "state": {"state": 1}}, "dropout": [_PCG]}, "PCG64"),
        ({"shuffle": _PCG, "dropout": []}, "1 Dropout"),
        ({"shuffle": _PCG, "dropout": [_PCG, _PCG]}, "1 Dropout"),
        ({"shuffle": _PCG, "dropout": "x"}, "list"),
    ],
)
def test_bad_generator_states_are_refused_before_anything_changes(tmp_path, generators, match) -> None:
    record, arrays = _checkpoint(tmp_path)
    record["train_state"]["generators"] = generators
    _rewrite(tmp_path / "bad.npz", record, arrays)
    model = _net("float32", seed=5)
    before = model.get_flat_params()
    with pytest.raises(ModelFileError, match=match):
        load_checkpoint(tmp_path / "bad.npz", model)
    assert np.array_equal(model.get_flat_params(), before) and model.epochs_done_ == 0


def test_good_generator_states_are_restored(tmp_path) -> None:
    record, arrays = _checkpoint(tmp_path)
    record["train_state"]["generators"] = {"shuffle": _PCG, "dropout": [_PCG]}
    _rewrite(tmp_path / "ok.npz", record, arrays)
    model = _net("float32", seed=5)
    load_checkpoint(tmp_path / "ok.npz", model)
    expected = np.random.Generator(np.random.PCG64())
    expected.bit_generator.state = _PCG
    assert model.shuffle_rng_.permutation(50).tolist() == expected.permutation(50).tolist()


def test_resume_from_refuses_what_cannot_continue_the_run(tmp_path) -> None:
    X, y = _data()
    _checkpoint(tmp_path, "adam")
    ck = tmp_path / "ck.npz"
    cases = [
        (mlpx.MLP([5, 9, 3], seed=1, dropout=0.2), {}, "another model: its layers"),
        (_net("float64"), {}, "another model: its dtype"),
        (_net("float32"), {"optimizer": "sgd"}, "trained with Adam, not SGD.*optimizer='adam'"),
        (_net("float32"), {"optimizer": mlpx.SGD()}, "Adam state, which cannot be loaded into SGD"),
        (_net("float32"), {"lr": 0.1}, "lr= cannot be combined"),
        (_net("float32"), {"validation_split": 0.2}, "validation_split cannot be combined"),
    ]
    for model, kw, match in cases:
        before = model.get_flat_params()
        with pytest.raises(ValueError, match=match):
            model.fit(X, y, epochs=4, resume_from=ck, **kw)
        assert np.array_equal(model.get_flat_params(), before) and model.epochs_done_ == 0
    with pytest.raises(FileNotFoundError):
        _net("float32").fit(X, y, epochs=4, resume_from=tmp_path / "missing.npz")


def test_resume_from_a_finished_run_trains_nothing(tmp_path) -> None:
    X, y = _data()
    _checkpoint(tmp_path)  # 2 epochs done
    model = _net("float32", seed=3)
    history = model.fit(X, y, epochs=2, resume_from=tmp_path / "ck.npz")
    assert history.epochs == 0 and model.epochs_done_ == 2
    assert np.array_equal(model.get_flat_params(), read_model_file(tmp_path / "ck.npz")[1]["params"])


def test_an_optimizer_instance_receives_the_saved_state(tmp_path) -> None:
    X, y = _data()
    straight = _net("float32")
    straight.fit(X, y, epochs=4, batch_size=16, optimizer=mlpx.Adam(lr=0.01))
    first = _net("float32")
    first.fit(X, y, epochs=2, batch_size=16, optimizer=mlpx.Adam(lr=0.01), callbacks=[ModelCheckpoint(tmp_path / "c")])
    with pytest.raises(ValueError, match="settings.*'lr': 0.01.*'lr': 0.5.*optimizer='adam'"):
        _net("float32").fit(X, y, epochs=4, optimizer=mlpx.Adam(lr=0.5), resume_from=tmp_path / "c.npz")
    opt = mlpx.Adam(lr=0.01)
    resumed = _net("float32")
    resumed.fit(X, y, epochs=4, batch_size=16, optimizer=opt, resume_from=tmp_path / "c")  # finds c.npz
    assert resumed.optimizer_ is opt and opt.t == straight.optimizer_.t
    _assert_same_bits(_state(resumed), _state(straight))


# ------------------------------------------------------------------ ModelCheckpoint
def _val_run(tmp_path, epochs: int = 8, **kw) -> tuple[mlpx.Sequential, ModelCheckpoint, dict]:
    X, y = _data(120)
    Xv, yv = _data(40, seed=9)
    cb = ModelCheckpoint(**kw)
    model = _net("float64", dropout=0.0)
    history = model.fit(X, y, epochs=epochs, batch_size=8, optimizer=mlpx.SGD(lr=0.3),
                        validation_data=(Xv, yv), callbacks=[cb])
    return model, cb, history.history


def _best_epochs(values: list[float], sign: float) -> list[int]:
    best, out = None, []
    for i, v in enumerate(values):
        if best is None or sign * v < sign * best:
            best = v
            out.append(i)
    return out


@pytest.mark.parametrize("monitor, mode, sign", [("val_loss", "auto", 1.0), ("val_accuracy", "auto", -1.0),
                                                  ("loss", "max", -1.0), ("accuracy", "min", 1.0)])
def test_save_best_only_writes_exactly_the_improvements(tmp_path, monitor, mode, sign) -> None:
    model, cb, logs = _val_run(tmp_path, path=str(tmp_path / "best-{epoch:02d}.npz"), monitor=monitor,
                               mode=mode, save_best_only=True)
    expected = _best_epochs(logs[monitor], sign)
    assert sorted(p.name for p in tmp_path.glob("best-*.npz")) == [f"best-{e + 1:02d}.npz" for e in expected]
    assert cb.writes == len(expected) and cb.best_epoch == expected[-1] and cb.best == logs[monitor][expected[-1]]
    best = mlpx.load(cb.last_path)
    assert read_model_file(cb.last_path)[0]["train_state"]["epochs_done"] == expected[-1] + 1
    assert best.get_config() == model.get_config()


def test_keep_last_keeps_the_newest_files(tmp_path) -> None:
    _, cb, _ = _val_run(tmp_path, epochs=7, path=str(tmp_path / "ck-{epoch}.npz"), keep_last=3, every=2)
    assert sorted(p.name for p in tmp_path.glob("ck-*.npz")) == ["ck-2.npz", "ck-4.npz", "ck-6.npz"]
    _, cb, _ = _val_run(tmp_path, epochs=7, path=str(tmp_path / "ck-{epoch}.npz"), keep_last=2)
    assert sorted(p.name for p in tmp_path.glob("ck-*.npz")) == ["ck-6.npz", "ck-7.npz"]
    assert [p.name for p in cb.kept] == ["ck-6.npz", "ck-7.npz"] and cb.writes == 7


def test_a_template_can_use_the_logs(tmp_path) -> None:
    _, cb, logs = _val_run(tmp_path, epochs=2, path=str(tmp_path / "m-{epoch}-{val_loss:.6f}"))
    assert cb.last_path.name == f"m-2-{logs['val_loss'][-1]:.6f}.npz"
    with pytest.raises(ValueError, match="cannot be formatted.*nope"):
        _val_run(tmp_path, epochs=1, path=str(tmp_path / "m-{nope}"))


def test_a_monitor_that_never_appears_raises_naming_the_keys(tmp_path) -> None:
    X, y = _data()
    model = _net("float32")
    with pytest.raises(ValueError, match=r"monitors 'val_acc'.*\['accuracy', 'loss'\]"):
        model.fit(X, y, epochs=2, callbacks=[ModelCheckpoint(tmp_path / "c.npz", monitor="val_acc")])
    assert not (tmp_path / "c.npz").exists()


@pytest.mark.parametrize(
    "kw, error",
    [({"save_best_only": True}, ValueError), ({"mode": "best"}, ValueError), ({"keep_last": 0}, ValueError),
     ({"every": 0}, ValueError), ({"every": 1.5}, TypeError), ({"monitor": 3}, TypeError),
     ({"save_best_only": "yes"}, TypeError)],
)
def test_bad_settings_are_refused(tmp_path, kw, error) -> None:
    with pytest.raises(error):
        ModelCheckpoint(tmp_path / "c.npz", **kw)


def test_load_finds_the_file_save_wrote(tmp_path) -> None:
    model = _net("float32")
    model.save(tmp_path / "model")
    assert (tmp_path / "model.npz").exists() and not (tmp_path / "model").exists()
    assert np.array_equal(mlpx.load(tmp_path / "model").get_flat_params(), model.get_flat_params())
    X, y = _data()
    model.fit(X, y, epochs=1)
    save_checkpoint(tmp_path / "ck", model)
    other = _net("float32", seed=4)
    load_checkpoint(tmp_path / "ck", other)
    assert np.array_equal(other.get_flat_params(), model.get_flat_params())
    (tmp_path / "model").write_bytes(b"not this one")  # a path that exists is taken as given
    with pytest.raises(ModelFileError, match="too short|not a zip"):
        mlpx.load(tmp_path / "model")
