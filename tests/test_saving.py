"""Save/load (portable .npz, atomic), pickle, and moving a model between backends."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest

import mlpx
from mlpx.layers import Dense, Dropout


@pytest.fixture
def trained():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 5)), rng.integers(0, 3, 40)
    layers = [Dense(5, 8, activation="gelu"), Dropout(0.2), Dense(8, 6, activation="tanh"),
              mlpx.LeakyReLU(), Dense(6, 3), mlpx.Softmax()]
    model = mlpx.Sequential(layers, dtype="float64", seed=3)
    model.fit(X, y, epochs=3, batch_size=8)
    return model, X, y


def test_round_trip_predicts_identically(trained, tmp_path) -> None:
    model, X, y = trained
    path = tmp_path / "model.npz"
    model.save(path)
    loaded = mlpx.load(path)
    assert loaded.dtype == "float64" and loaded.output.name == "softmax"
    np.testing.assert_array_equal(loaded.get_flat_params(), model.get_flat_params())
    np.testing.assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    assert [l.get_config() for l in loaded.layers] == [l.get_config() for l in model.layers]
    assert loaded.evaluate(X, y) == model.evaluate(X, y)


@pytest.mark.parametrize("output", ["softmax", "logistic", "identity", "exp"])
def test_round_trip_every_output(output: str, tmp_path) -> None:
    model = mlpx.MLP([4, 5, 2], activation="logistic", output=output, seed=1)
    X = np.random.default_rng(0).normal(size=(7, 4))
    model.save(tmp_path / "m")  # ".npz" is appended
    loaded = mlpx.load(tmp_path / "m.npz")
    assert loaded.output.name == output and loaded.dtype == "float32"
    np.testing.assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))


def test_file_has_no_pickles_and_a_json_record(trained, tmp_path) -> None:
    model, _, _ = trained
    path = tmp_path / "model.npz"
    model.save(path)
    with np.load(path, allow_pickle=False) as data:  # raises if any entry is pickled
        assert set(data.files) == {"config", "params"}
        record = json.loads(str(data["config"]))
        params = data["params"]
    assert record["format"] == "mlpx" and record["version"] >= 1 and record["dtype"] == "float64"
    assert params.dtype == np.float64 and params.shape == (model.n_params,)
    np.testing.assert_array_equal(params, model.get_flat_params())


def test_load_onto_array_api_strict(trained, tmp_path, strict_backend) -> None:
    model, X, _ = trained
    path = tmp_path / "model.npz"
    model.save(path)
    other = mlpx.load(path, backend=strict_backend)
    assert other.backend is strict_backend
    np.testing.assert_allclose(other.predict_proba(X), model.predict_proba(X), rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(other.predict(X), model.predict(X))


def test_model_to_another_backend(trained, strict_backend) -> None:
    model, X, _ = trained
    moved = model.to(strict_backend)
    assert moved.backend is strict_backend and moved is not model
    np.testing.assert_allclose(moved.predict_proba(X), model.predict_proba(X), rtol=1e-12, atol=1e-15)
    back = moved.to("cpu")
    np.testing.assert_array_equal(back.get_flat_params(), model.get_flat_params())
    # independent copies: training one leaves the other alone
    before = model.get_flat_params()
    back.fit(X, np.zeros(len(X), dtype=int), epochs=1)
    np.testing.assert_array_equal(model.get_flat_params(), before)


def test_pickle_round_trip(trained, strict_backend) -> None:
    model, X, _ = trained
    again = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(again.predict_proba(X), model.predict_proba(X))
    assert again.backend.name == "cpu"
    strict_model = model.to(strict_backend)
    again = pickle.loads(pickle.dumps(strict_model))
    assert again.backend.name == "array_api_strict"
    np.testing.assert_allclose(again.predict_proba(X), model.predict_proba(X), rtol=1e-12, atol=1e-15)


def test_pickle_keeps_an_array_api_device(trained) -> None:
    """A model on array-api-strict's second device unpickles onto that device."""
    xp = pytest.importorskip("array_api_strict")
    from mlpx.backends import ArrayAPIBackend, get_backend

    model, X, _ = trained
    dev = xp.__array_namespace_info__().devices()[1]
    on_dev = model.to(ArrayAPIBackend("array_api_strict", device=dev))
    again = pickle.loads(pickle.dumps(on_dev))
    assert again.backend.device == dev and again.params.device == dev
    np.testing.assert_allclose(again.predict_proba(X), model.predict_proba(X), rtol=1e-12, atol=1e-15)
    assert get_backend(on_dev.backend.name).device == dev  # its name is a valid spec
    with pytest.raises(Exception, match="not found"):
        get_backend("array_api_strict[no-such-device]")


def test_atomic_write_keeps_the_old_file_on_a_crash(trained, tmp_path, monkeypatch) -> None:
    model, X, _ = trained
    path = tmp_path / "model.npz"
    old = mlpx.MLP([5, 4, 3], seed=9, dtype="float64")
    old.save(path)
    old_bytes = path.read_bytes()

    def crash(*args, **kwargs):
        fh = args[0]
        fh.write(b"PK\x03\x04 half a zip")  # something partial reaches the temp file
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(OSError, match="disk full"):
        model.save(path)
    assert path.read_bytes() == old_bytes  # the old model is intact
    assert os.listdir(tmp_path) == ["model.npz"]  # and no temporary file is left behind
    monkeypatch.undo()
    np.testing.assert_array_equal(mlpx.load(path).predict_proba(X), old.predict_proba(X))


def test_interrupt_mid_write_leaves_no_temp_file(trained, tmp_path, monkeypatch) -> None:
    model, _, _ = trained

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", interrupted)
    with pytest.raises(KeyboardInterrupt):
        model.save(tmp_path / "new.npz")
    assert os.listdir(tmp_path) == []


def test_load_rejects_other_files(tmp_path) -> None:
    other = tmp_path / "other.npz"
    np.savez(other, weights=np.ones(3))
    with pytest.raises(ValueError, match="not an mlpx model"):
        mlpx.load(other)
    fake = tmp_path / "fake.npz"
    np.savez(fake, config=np.array(json.dumps({"format": "keras"})), params=np.ones(3))
    with pytest.raises(ValueError, match="not an mlpx model"):
        mlpx.load(fake)
    future = tmp_path / "future.npz"
    np.savez(future, config=np.array(json.dumps({"format": "mlpx", "version": 999})), params=np.ones(3))
    with pytest.raises(ValueError, match="newer mlpx"):
        mlpx.load(future)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, config=np.array([{"format": "mlpx"}], dtype=object), params=np.ones(3))
    with pytest.raises(ValueError):  # object arrays are refused, never unpickled
        mlpx.load(pickled)
