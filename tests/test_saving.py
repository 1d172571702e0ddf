"""Save/load (portable .npz, atomic), pickle, and moving a model between backends."""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
import stat
import subprocess
import sys
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mlpx
from mlpx.activations import ACTIVATIONS
from mlpx.layers import ActivationLayer, Dense, Dropout


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


# ------------------------------------------------------- saves: temporaries
_TMP = re.compile(r"\.(?P<name>.+)\.mlpx-tmp-(?P<pid>\d+)-[0-9a-f]+")


def test_temporary_file_has_a_recognisable_name(tmp_path, monkeypatch) -> None:
    seen: list[list[str]] = []
    real = np.savez

    def spy(fh, **arrays):
        seen.append(os.listdir(tmp_path))
        real(fh, **arrays)

    monkeypatch.setattr(np, "savez", spy)
    mlpx.MLP([3, 2], seed=0).save(tmp_path / "model.npz")
    (name,) = seen[0]
    m = _TMP.fullmatch(name)
    assert m and m["name"] == "model.npz" and int(m["pid"]) == os.getpid()
    assert os.listdir(tmp_path) == ["model.npz"]


@pytest.mark.parametrize("where", ["savez", "fsync", "replace", "json"])
def test_an_exception_anywhere_in_a_save_leaves_no_temporary_file(tmp_path, monkeypatch, where) -> None:
    from mlpx.saving import write_model_file

    model = mlpx.MLP([3, 2], seed=0)
    path = tmp_path / "m.npz"
    model.save(path)
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError(f"{where} failed")

    config = model.get_config()
    if where == "json":
        config = {**config, "note": object()}  # not JSON: fails before any file exists
    else:
        target = {"savez": (np, "savez"), "fsync": (os, "fsync"), "replace": (os, "replace")}[where]
        monkeypatch.setattr(*target, boom)
    with pytest.raises((OSError, TypeError)):
        write_model_file(path, config, {"params": model.get_flat_params()})
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["m.npz"] and path.read_bytes() == before


_CHILD = """
import sys, time
import numpy as np
import mlpx

def stalled(fh, **arrays):          # the save is under way: part of the file is written
    fh.write(b"PK\\x03\\x04 partial")
    fh.flush()
    print("writing", flush=True)
    time.sleep(120)

np.savez = stalled
mlpx.MLP([4, 8, 3], seed=0).save(sys.argv[1])
"""


def test_a_save_removes_temporaries_of_killed_processes_only(tmp_path) -> None:
    """kill -9 in the middle of a save leaves a temporary file; the next save of the
    same path removes it, but not the temporary of a process that still runs."""
    path = tmp_path / "m.npz"
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(path)], stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline() == b"writing\n"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=30)
    left = [n for n in os.listdir(tmp_path) if _TMP.fullmatch(n)]
    assert len(left) == 1 and _TMP.fullmatch(left[0])["pid"] == str(child.pid)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        alive_tmp = tmp_path / f".m.npz.mlpx-tmp-{live.pid}-abcdef"
        alive_tmp.write_bytes(b"another process is writing this")
        other = tmp_path / f".other.npz.mlpx-tmp-{child.pid}-abcdef"  # another target's
        other.write_bytes(b"x")
        model = mlpx.MLP([4, 8, 3], seed=1)
        model.save(path)
        assert sorted(os.listdir(tmp_path)) == sorted(["m.npz", alive_tmp.name, other.name])
        np.testing.assert_array_equal(mlpx.load(path).get_flat_params(), model.get_flat_params())
    finally:
        live.kill()
        live.wait(timeout=30)


# --------------------------------------------------- saves: modes and links
def _save_with(kind: str, path) -> None:
    model = mlpx.MLP([3, 4, 2], seed=0)
    if kind == "model":
        model.save(path)
    else:
        from mlpx.saving import save_checkpoint

        model.fit(np.ones((4, 3)), [0, 1, 1, 0], epochs=1)
        save_checkpoint(path, model, model.optimizer_)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
@pytest.mark.parametrize("kind", ["model", "checkpoint"])
@pytest.mark.parametrize("mode", [0o640, 0o604, 0o600, 0o664])
def test_an_existing_file_keeps_its_permission_bits(tmp_path, kind, mode) -> None:
    path = tmp_path / "m.npz"
    _save_with(kind, path)
    os.chmod(path, mode)
    _save_with(kind, path)
    assert stat.S_IMODE(os.stat(path).st_mode) == mode


@pytest.mark.skipif(os.name != "posix", reason="POSIX umask")
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_a_new_file_gets_the_umask_permissions(tmp_path, umask) -> None:
    old = os.umask(umask)
    try:
        _save_with("model", tmp_path / "m.npz")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "m.npz").st_mode) == 0o666 & ~umask


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symbolic links")
@pytest.mark.parametrize("kind", ["model", "checkpoint"])
def test_saving_to_a_symlink_writes_its_target(tmp_path, kind) -> None:
    (tmp_path / "store").mkdir()
    target = tmp_path / "store" / "real.npz"
    _save_with(kind, target)
    os.chmod(target, 0o640)
    link = tmp_path / "latest.npz"
    link.symlink_to(os.path.relpath(target, tmp_path))
    chain = tmp_path / "chain.npz"  # a link to the link
    chain.symlink_to("latest.npz")
    model = mlpx.MLP([3, 4, 2], seed=7)
    model.save(chain)
    assert link.is_symlink() and chain.is_symlink() and os.readlink(link) == os.path.relpath(target, tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["chain.npz", "latest.npz", "store"]
    assert os.listdir(tmp_path / "store") == ["real.npz"]
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o640
    np.testing.assert_array_equal(mlpx.load(target).get_flat_params(), model.get_flat_params())


# -------------------------------------------- round trips (property-based)
ROUND_TRIP_EXAMPLES = 80
_HIDDEN = sorted(set(ACTIVATIONS) - {"softmax"})


@st.composite
def _networks(draw):
    """A random Sequential: depth, widths, activations (fused or as layers), dropout,
    output, dtype, backend, seed (sometimes a NumPy integer) and precision mode."""
    depth = draw(st.integers(1, 4))
    widths = draw(st.lists(st.integers(1, 9), min_size=depth + 1, max_size=depth + 1))
    output = draw(st.sampled_from(["softmax", "logistic", "identity", "exp"]))
    layers = []
    for k, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        init = draw(st.sampled_from(["glorot", "he"]))
        last = k == depth - 1
        act = output if last else draw(st.sampled_from(_HIDDEN))
        if draw(st.booleans()):
            layers.append(Dense(a, b, activation=act, init=init))
        else:
            layers.append(Dense(a, b, activation=draw(st.sampled_from(_HIDDEN)), init=init))
            layers.append(ActivationLayer(act))
        if not last and draw(st.booleans()):
            layers.append(Dropout(draw(st.floats(0.0, 0.9)), seed=draw(st.one_of(st.none(), st.integers(0, 99)))))
    dtype = draw(st.sampled_from(["float32", "float64"]))
    backend = draw(st.sampled_from(["cpu", "array_api_strict"]))
    precision = None
    if dtype == "float32":
        modes = [None, "tf32"] + (["bf16", "fp16"] if backend == "cpu" else [])
        precision = draw(st.sampled_from(modes))
    seed = draw(st.one_of(st.none(), st.integers(0, 2**32), st.integers(0, 99).map(np.int64)))
    return layers, dtype, backend, precision, seed, widths[0]


@settings(max_examples=ROUND_TRIP_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(net=_networks(), data_seed=st.integers(0, 2**16))
def test_save_load_round_trip_is_bit_identical(tmp_path, net, data_seed) -> None:
    layers, dtype, backend, precision, seed, n_in = net
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # precision modes on the CPU warn
        model = mlpx.Sequential(layers, backend=backend, dtype=dtype, seed=seed, precision=precision)
        rng = np.random.default_rng(data_seed)
        model.set_flat_params(rng.normal(size=model.n_params))
        X = rng.normal(size=(5, n_in))
        path = tmp_path / "m.npz"
        model.save(path)
        loaded = mlpx.load(path, backend=backend)
    assert loaded.backend.name == model.backend.name
    assert loaded.get_config() == model.get_config()
    assert loaded.output.name == model.output.name and loaded.precision_.name == model.precision_.name
    flat = loaded.get_flat_params()
    assert flat.dtype == model.get_flat_params().dtype
    np.testing.assert_array_equal(flat, model.get_flat_params())
    with np.errstate(all="ignore"):  # exp activations of random weights may overflow: alike
        np.testing.assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))
        np.testing.assert_array_equal(loaded.predict(X), model.predict(X))


def test_identity_output_after_an_activated_dense_round_trips(tmp_path) -> None:
    model = mlpx.Sequential([Dense(3, 4, activation="relu"), mlpx.Identity()], seed=0)
    model.save(tmp_path / "m.npz")
    loaded = mlpx.load(tmp_path / "m.npz")
    assert loaded.output.name == model.output.name == "identity"
