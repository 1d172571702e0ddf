"""Minibatch sources (mlpx.data): resident and streamed batches against NumPy.

Every batch is compared with an independent reference, ``X[perm[a:b]]`` computed by
NumPy fancy indexing and ``astype``. The streamed path's GPU synchronisation (events
between the host, the copy stream and the compute stream) is checked on the CPU with a
backend that logs those calls; the GPU tests at the end run it on CuPy for real.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from mlpx.backends import NumpyBackend, get_backend
from mlpx.data import ResidentBatches, StreamedBatches, make_batches, resident_nbytes

CLASSES = [pytest.param(ResidentBatches, id="resident"), pytest.param(StreamedBatches, id="streamed")]


def _data(n: int = 23, f: int = 4, k: int = 3, seed: int = 0, x_dtype: Any = np.float64):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, f)).astype(x_dtype)
    Y = rng.normal(size=(n, k))
    w = rng.uniform(0.5, 2.0, size=n)
    return X, Y, w


def _reference(X, Y, w, perm, batch_size, x_dtype, y_dtype=None):
    """The batches fit should see, by plain NumPy indexing (the independent oracle)."""
    y_dtype = y_dtype or x_dtype
    n = X.shape[0]
    order = np.arange(n) if perm is None else perm
    out = []
    for a in range(0, n, batch_size):
        idx = order[a : a + batch_size]
        wb = None if w is None else w[idx].astype(y_dtype)
        out.append((X[idx].astype(x_dtype), Y[idx].astype(y_dtype), wb, a, a + len(idx)))
    return out


def _collect(be, batches, perm):
    """Host copies of one epoch's batches (taken inside the loop body, as fit uses them)."""
    got = []
    for Xb, Yb, wb, a, b in batches.epoch(perm):
        got.append((be.to_numpy(Xb).copy(), be.to_numpy(Yb).copy(),
                    None if wb is None else be.to_numpy(wb).copy(), a, b))
    return got


def _assert_same(got, want) -> None:
    assert [(a, b) for *_, a, b in got] == [(a, b) for *_, a, b in want]
    for (Xg, Yg, wg, *_), (Xw, Yw, ww, *_) in zip(got, want):
        assert Xg.dtype == Xw.dtype and Yg.dtype == Yw.dtype
        # float32 views make bfloat16 comparable; equality is exact (same rounding)
        np.testing.assert_array_equal(Xg.astype(np.float32), Xw.astype(np.float32))
        np.testing.assert_array_equal(Yg.astype(np.float32), Yw.astype(np.float32))
        assert (wg is None) == (ww is None)
        if ww is not None:
            assert wg.dtype == ww.dtype
            np.testing.assert_array_equal(wg.astype(np.float32), ww.astype(np.float32))


def _bfloat16():
    ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 needs ml_dtypes")
    return np.dtype(ml_dtypes.bfloat16)


# ------------------------------------------------------------ batch contents
@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shuffle", [True, False], ids=["perm", "no-perm"])
@pytest.mark.parametrize("weighted", [True, False], ids=["w", "no-w"])
def test_batches_are_the_rows_of_perm(backend, cls, dtype: str, shuffle: bool, weighted: bool) -> None:
    """23 samples in batches of 5: four full batches and a last one of 3, in perm order."""
    X, Y, w = _data()
    w = w if weighted else None
    batches = cls(backend, X, Y, w, 5, dtype)
    for epoch in range(2):  # a second epoch reuses the buffers with another order
        perm = np.random.default_rng(epoch).permutation(23) if shuffle else None
        want = _reference(X, Y, w, perm, 5, np.dtype(dtype))
        assert [b - a for *_, a, b in want] == [5, 5, 5, 5, 3]
        _assert_same(_collect(backend, batches, perm), want)


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("low", ["float16", "bfloat16"])
def test_low_precision_conversion_in_the_gather(backend, cls, low: str) -> None:
    """X converts to float16/bfloat16 (from float64 and from uint8); Y, w to target_dtype."""
    if backend.name.startswith("array_api_strict"):
        pytest.skip("the Array API standard (array-api-strict) has no float16/bfloat16 arrays")
    np_low = _bfloat16() if low == "bfloat16" else np.dtype("float16")
    if backend.is_gpu:
        try:
            backend.empty((1,), low)
        except Exception as exc:  # CuPy < 14: no bfloat16
            pytest.skip(f"this CuPy has no {low} arrays ({exc})")
    X, Y, w = _data()
    perm = np.random.default_rng(3).permutation(23)
    X8 = np.random.default_rng(4).integers(0, 256, size=(23, 4)).astype(np.uint8)
    for Xsrc in (X, X8):
        batches = cls(backend, Xsrc, Y, w, 5, low, target_dtype="float32")
        want = _reference(Xsrc, Y, w, perm, 5, np_low, np.dtype("float32"))
        _assert_same(_collect(backend, batches, perm), want)


@pytest.mark.parametrize("cls", CLASSES)
def test_widening_and_integer_sources(cls) -> None:
    """float32 -> float64 (np.take's out= refuses this cast) and bool/int sources."""
    be = get_backend("cpu")
    rng = np.random.default_rng(5)
    perm = rng.permutation(17)
    sources = (
        rng.normal(size=(17, 3)).astype(np.float32),
        rng.integers(-9, 9, (17, 3)),
        rng.random((17, 3)) > 0.5,
    )
    for X in sources:
        Y = rng.normal(size=(17, 2)).astype(np.float32)
        batches = cls(be, X, Y, None, 4, "float64")
        _assert_same(_collect(be, batches, perm), _reference(X, Y, None, perm, 4, np.dtype("float64")))


@pytest.mark.parametrize("cls", CLASSES)
def test_batch_size_larger_than_n_gives_one_batch(cls) -> None:
    be = get_backend("cpu")
    X, Y, w = _data(n=7)
    batches = cls(be, X, Y, w, 100, "float64")
    assert batches.batch_size == 7 and batches.n_batches == 1
    perm = np.arange(7)[::-1].copy()
    _assert_same(_collect(be, batches, perm), _reference(X, Y, w, perm, 7, np.dtype("float64")))


def test_streamed_accepts_a_memmap(tmp_path) -> None:
    """Data larger than memory lives in a memmap; rows are read as they are gathered."""
    be = get_backend("cpu")
    X, Y, _ = _data(n=40)
    mm = np.lib.format.open_memmap(tmp_path / "X.npy", mode="w+", dtype=np.float64, shape=X.shape)
    mm[:] = X
    perm = np.random.default_rng(1).permutation(40)
    got = _collect(be, StreamedBatches(be, mm, Y, None, 16, "float32"), perm)
    _assert_same(got, _reference(X, Y, None, perm, 16, np.dtype("float32")))


# ------------------------------------------------------------ buffer reuse
class CountingBackend(NumpyBackend):
    """NumPy backend that counts buffer allocations."""

    def __init__(self) -> None:
        super().__init__()
        self.allocs = {"empty": 0, "empty_pinned": 0}

    def empty(self, shape: Any, dtype: Any = "float32") -> Any:
        self.allocs["empty"] += 1
        return super().empty(shape, dtype)

    def empty_pinned(self, shape: Any, dtype: Any) -> np.ndarray:
        self.allocs["empty_pinned"] += 1
        return super().empty_pinned(shape, dtype)


def _owner(a: np.ndarray) -> np.ndarray:
    return a if a.base is None else a.base


def test_streamed_buffers_are_allocated_once_and_alternate() -> None:
    be = CountingBackend()
    X, Y, w = _data()
    batches = StreamedBatches(be, X, Y, w, 5, "float32")
    # two staging and two device buffers for each of X, Y, w
    assert be.allocs == {"empty": 6, "empty_pinned": 6}
    owners: list[int] = []
    for epoch in range(3):
        perm = np.random.default_rng(epoch).permutation(23)
        for i, (Xb, Yb, wb, a, b) in enumerate(batches.epoch(perm)):
            owners.append(id(_owner(Xb)))
            assert id(_owner(Xb)) != id(_owner(Yb)) != id(_owner(wb))
            if i:  # consecutive batches are in different buffers (double buffering)
                assert owners[-1] != owners[-2]
    assert len(set(owners)) == 2
    assert be.allocs == {"empty": 6, "empty_pinned": 6}, "epochs must not allocate"


def test_resident_workspaces_are_reused_across_epochs() -> None:
    be = CountingBackend()
    X, Y, w = _data()
    batches = ResidentBatches(be, X, Y, w, 5, "float32")
    seen: dict[int, set[int]] = {}
    for epoch in range(3):
        for Xb, Yb, wb, a, b in batches.epoch(np.random.default_rng(epoch).permutation(23)):
            seen.setdefault(b - a, set()).add(id(Xb))
    # one X workspace per batch length (5 and 3), and 3 arrays x 2 lengths allocated in all
    assert {k: len(v) for k, v in seen.items()} == {5: 1, 3: 1}
    assert be.allocs["empty"] == 6


# ---------------------------------------------- GPU ordering rules, on the CPU
class RecordingBackend(CountingBackend):
    """NumPy backend whose stream hooks log what a GPU backend would be asked to do.

    Streams are names ("copy", "compute"), events unique tokens; copies still happen
    (synchronously) so the data can be checked as well.
    """

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[Any, ...]] = []
        self._events = 0

    def copy_stream(self) -> Any:
        return "copy"

    def record_event(self, stream: Any = None) -> Any:
        self._events += 1
        event = ("event", self._events, stream or "compute")
        self.log.append(("record", event))
        return event

    def wait_event(self, event: Any, stream: Any = None) -> None:
        if event is not None:
            self.log.append(("wait", stream or "compute", event))

    def synchronize_event(self, event: Any) -> None:
        if event is not None:
            self.log.append(("sync", event))

    def upload(self, src: np.ndarray, out: Any, stream: Any = None) -> Any:
        self.log.append(("upload", stream, id(_owner(src)), id(_owner(out))))
        return super().upload(src, out)


def _logged_run(be: RecordingBackend, batches: StreamedBatches, perm, stop_after: int | None = None):
    """Run one epoch, logging its start, each gather and each use of a batch by the loop body."""
    gather = batches._gather

    def logged_gather(slot: int, p: Any, a: int, b: int) -> None:
        be.log.append(("gather", a))
        gather(slot, p, a, b)

    batches._gather = logged_gather  # type: ignore[method-assign]
    be.log.append(("epoch",))
    got = []
    try:
        for i, (Xb, Yb, wb, a, b) in enumerate(batches.epoch(perm)):
            be.log.append(("consume", a))
            got.append((Xb.copy(), Yb.copy(), None if wb is None else wb.copy(), a, b))
            if stop_after is not None and i + 1 == stop_after:
                break
    finally:
        batches._gather = gather  # type: ignore[method-assign]
    return got


def _check_rules(log: list[tuple[Any, ...]]) -> None:
    """The three reuse rules of StreamedBatches, checked on the logged call sequence.

    A batch is (epoch, a); its uploads and its copy-stream event are the ones that
    follow its gather. Buffers are identified by their memory, not by slot numbers.
    """
    index = {e[1]: i for i, e in enumerate(log) if e[0] == "record"}
    epoch, gathers, consumed = -1, [], {}
    for i, e in enumerate(log):
        if e[0] == "epoch":
            epoch += 1
        elif e[0] == "gather":
            gathers.append(((epoch, e[1]), i))
        elif e[0] == "consume":
            consumed[(epoch, e[1])] = i
    batches = []
    for g, (key, start) in enumerate(gathers):
        end = gathers[g + 1][1] if g + 1 < len(gathers) else len(log)
        ups = [(i, log[i]) for i in range(start, end) if log[i][0] == "upload"]
        recs = [(i, log[i][1]) for i in range(start, end) if log[i][0] == "record" and log[i][1][2] == "copy"]
        assert ups and all(e[1] == "copy" for _, e in ups), "uploads go on the copy stream"
        assert len(recs) == 1 and recs[0][0] > ups[-1][0], "one event after the batch's uploads"
        batches.append({
            "key": key, "gather": start, "first_up": ups[0][0], "up_event": recs[0][1],
            "staging": {e[2] for _, e in ups}, "device": {e[3] for _, e in ups},
            "consume": consumed.get(key),
        })
    assert set(consumed) <= {b["key"] for b in batches}, "a batch was used without being gathered"
    for g, b in enumerate(batches):
        # Rule 3: the compute stream waits for this batch's upload before it is used.
        if b["consume"] is not None:
            assert any(log[i] == ("wait", "compute", b["up_event"])
                       for i in range(index[b["up_event"]], b["consume"])), f"batch {b['key']}: rule 3"
        # Double buffering: the next batch of the epoch is gathered (and its upload
        # queued) before this one is used, into other buffers.
        nxt = batches[g + 1] if g + 1 < len(batches) else None
        if nxt is not None and nxt["key"][0] == b["key"][0] and b["consume"] is not None:
            assert nxt["gather"] < b["consume"], f"batch {nxt['key']} is not prefetched"
            assert not (nxt["device"] & b["device"]) and not (nxt["staging"] & b["staging"])
        used = [h for h in batches[:g] if h["device"] & b["device"] and h["consume"] is not None]
        if used:
            # Rule 2: before overwriting the device buffer, the copy stream waits for an
            # event recorded on the compute stream after the last batch there was used.
            p = used[-1]
            assert any(
                log[i][0] == "wait" and log[i][1] == "copy" and log[i][2][2] == "compute"
                and index[log[i][2]] > p["consume"]
                for i in range(p["consume"], b["first_up"])
            ), f"batch {b['key']}: rule 2"
        staged = [h for h in batches[:g] if h["staging"] & b["staging"]]
        if staged:
            # Rule 1: the host waits for the previous upload from the staging buffer
            # before gathering into it again.
            p = staged[-1]
            synced = ("sync", p["up_event"]) in log[index[p["up_event"]] : b["gather"]]
            assert synced, f"batch {b['key']}: rule 1"


@pytest.mark.parametrize("n", [23, 25, 5, 3])  # odd and even batch counts, one batch, one partial
def test_stream_event_order_follows_the_reuse_rules(n: int) -> None:
    be = RecordingBackend()
    X, Y, w = _data(n=n)
    batches = StreamedBatches(be, X, Y, w, 5, "float32")
    for epoch in range(3):
        perm = np.random.default_rng(epoch).permutation(n)
        got = _logged_run(be, batches, perm)
        _assert_same(got, _reference(X, Y, w, perm, 5, np.dtype("float32")))
    _check_rules(be.log)


def test_the_rule_checker_catches_a_missing_wait() -> None:
    """The checker is not vacuous: drop any rule's wait and it fails."""
    be = RecordingBackend()
    X, Y, w = _data()
    batches = StreamedBatches(be, X, Y, w, 5, "float32")
    _logged_run(be, batches, np.random.default_rng(0).permutation(23))
    broken = [e for e in be.log if not (e[0] == "wait" and e[1] == "copy")]
    with pytest.raises(AssertionError, match="rule 2"):
        _check_rules(broken)
    broken = [e for e in be.log if e[0] != "sync"]
    with pytest.raises(AssertionError, match="rule 1"):
        _check_rules(broken)
    broken = [e for e in be.log if not (e[0] == "wait" and e[1] == "compute")]
    with pytest.raises(AssertionError, match="rule 3"):
        _check_rules(broken)


def test_leaving_an_epoch_early_finishes_pending_uploads() -> None:
    be = RecordingBackend()
    X, Y, w = _data()
    batches = StreamedBatches(be, X, Y, w, 5, "float32")
    perm = np.random.default_rng(0).permutation(23)
    got = _logged_run(be, batches, perm, stop_after=2)
    assert len(got) == 2
    last_consume = max(i for i, e in enumerate(be.log) if e[0] == "consume")
    tail = be.log[last_consume:]
    # the batch left in use is released, and the prefetched upload is waited for
    assert any(e[0] == "record" and e[1][2] == "compute" for e in tail)
    copy_events = [e[1] for e in be.log if e[0] == "record" and e[1][2] == "copy"]
    assert ("sync", copy_events[-1]) in tail
    # the next epoch runs normally, with every rule across the early exit
    perm2 = np.random.default_rng(1).permutation(23)
    got2 = _logged_run(be, batches, perm2)
    _assert_same(got2, _reference(X, Y, w, perm2, 5, np.dtype("float32")))
    _check_rules(be.log)


def test_two_epochs_at_once_is_an_error() -> None:
    be = get_backend("cpu")
    X, Y, w = _data()
    batches = StreamedBatches(be, X, Y, w, 5, "float32")
    first = batches.epoch(None)
    next(first)
    with pytest.raises(RuntimeError, match="still running"):
        next(batches.epoch(None))
    first.close()
    assert len(list(batches.epoch(None))) == 5  # closed: the object is free again


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize("cls", [ResidentBatches, StreamedBatches, make_batches])
def test_mismatched_rows_are_a_clear_error(cls) -> None:
    be = get_backend("cpu")
    X, Y, w = _data()
    with pytest.raises(ValueError, match=r"different numbers of rows: X \(23, 4\), Y \(22, 3\)"):
        cls(be, X, Y[:22], w, 5, "float32")
    with pytest.raises(ValueError, match=r"sample weights must have shape \(23,\)"):
        cls(be, X, Y, w[:20], 5, "float32")
    with pytest.raises(ValueError, match="X must be 2-D"):
        cls(be, X[:, 0], Y, w, 5, "float32")


@pytest.mark.parametrize("cls", CLASSES)
def test_bad_arguments(cls) -> None:
    be = get_backend("cpu")
    X, Y, w = _data()
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="batch_size"):
            cls(be, X, Y, w, bad, "float32")
    with pytest.raises(TypeError, match="unsupported dtype"):
        cls(be, X, Y, w, 5, "int32")
    batches = cls(be, X, Y, w, 5, "float32")
    for perm in (np.arange(22), np.arange(23.0), np.arange(1, 24)):
        with pytest.raises(ValueError, match="perm"):
            batches.epoch(perm)


# --------------------------------------------------------- automatic choice
class FakeGpu(NumpyBackend):
    """A "GPU" backend with a chosen amount of free device memory (host arrays inside)."""

    is_gpu = True

    def __init__(self, free: int | None) -> None:
        super().__init__()
        self.free = free

    def device_free_bytes(self) -> int | None:
        return self.free


def test_resident_nbytes_by_hand() -> None:
    X, Y, w = np.zeros((10, 3)), np.zeros((10, 2)), np.zeros(10)
    assert resident_nbytes(X, Y, w, "float32") == 10 * (3 + 2 + 1) * 4
    assert resident_nbytes(X, Y, None, "float64") == 10 * (3 + 2) * 8
    assert resident_nbytes(X, Y, w, "float16", target_dtype="float32") == 10 * (3 * 2 + 3 * 4)


def test_make_batches_streams_above_half_the_free_memory() -> None:
    X, Y, w = _data(n=10, f=3, k=2)
    need = 10 * 6 * 4  # float32 bytes of X, Y and w: 240
    assert isinstance(make_batches(FakeGpu(2 * need), X, Y, w, 4, "float32"), ResidentBatches)
    assert isinstance(make_batches(FakeGpu(2 * need - 1), X, Y, w, 4, "float32"), StreamedBatches)
    # without weights 200 bytes are needed: 399 free is too little, 400 enough
    assert isinstance(make_batches(FakeGpu(399), X, Y, None, 4, "float32"), StreamedBatches)
    assert isinstance(make_batches(FakeGpu(400), X, Y, None, 4, "float32"), ResidentBatches)
    # float64 doubles the need
    assert isinstance(make_batches(FakeGpu(2 * need), X, Y, w, 4, "float64"), StreamedBatches)
    # a backend that cannot tell its free memory keeps the data resident
    assert isinstance(make_batches(FakeGpu(None), X, Y, w, 4, "float32"), ResidentBatches)


def test_make_batches_forced_and_host_backends() -> None:
    X, Y, w = _data()
    cpu = get_backend("cpu")
    assert isinstance(make_batches(cpu, X, Y, w, 4, "float32"), ResidentBatches)  # never automatic on a CPU
    assert isinstance(make_batches(cpu, X, Y, w, 4, "float32", stream=True), StreamedBatches)
    assert isinstance(make_batches(FakeGpu(1), X, Y, w, 4, "float32", stream=False), ResidentBatches)
    assert isinstance(make_batches(FakeGpu(10**12), X, Y, w, 4, "float32", stream=True), StreamedBatches)
    forced = make_batches(cpu, X, Y, w, 4, "float64", stream=True, target_dtype="float32")
    perm = np.random.default_rng(0).permutation(23)
    want = _reference(X, Y, w, perm, 4, np.dtype("float64"), np.dtype("float32"))
    _assert_same(_collect(cpu, forced, perm), want)


# --------------------------------------------------------------------- GPU
@pytest.fixture
def gpu():
    return get_backend("gpu")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("weighted", [True, False], ids=["w", "no-w"])
def test_gpu_streamed_equals_resident(gpu, dtype: str, weighted: bool) -> None:
    X, Y, w = _data(n=1003, f=37, k=5)
    w = w if weighted else None
    resident = ResidentBatches(gpu, X, Y, w, 64, dtype, target_dtype="float32")
    streamed = StreamedBatches(gpu, X, Y, w, 64, dtype, target_dtype="float32")
    with gpu.activated():
        perms = (np.random.default_rng(0).permutation(1003), None, np.random.default_rng(1).permutation(1003))
        for perm in perms:
            want = _reference(X, Y, w, perm, 64, np.dtype(dtype), np.dtype("float32"))
            r = _collect(gpu, resident, perm)
            s = _collect(gpu, streamed, perm)
            _assert_same(r, want)
            _assert_same(s, want)


_SPIN = r"""
extern "C" __global__ void spin(long long cycles) {
    long long start = clock64();
    while (clock64() - start < cycles) { }
}
"""


@pytest.mark.gpu
@pytest.mark.parametrize("cls", CLASSES)
def test_gpu_training_sized_loop_sees_exactly_the_data(gpu, cls) -> None:
    """Hundreds of batches over 3 epochs, each consumer delayed on the compute stream.

    Every batch is used only after a spin kernel (~0.3 ms), then copied into a result
    array on the device. If an upload overwrote a buffer still in use (rule 2) or the
    compute stream read one before its upload finished (rule 3), the results would
    hold rows of other batches; they must equal X[perm], Y[perm], w[perm] exactly.
    """
    import cupy

    spin = cupy.RawKernel(_SPIN, "spin")
    n, f, k, bs = 50_000, 96, 10, 256
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, f)).astype(np.float32)
    Y = rng.normal(size=(n, k)).astype(np.float32)
    w = rng.uniform(size=n).astype(np.float32)
    batches = cls(gpu, X, Y, w, bs, "float32")
    with gpu.activated():
        RX, RY = cupy.empty((n, f), np.float32), cupy.empty((n, k), np.float32)
        Rw = cupy.empty(n, np.float32)
        W = cupy.asarray(rng.normal(size=(f, 512)).astype(np.float32))
        checks = cupy.empty(batches.n_batches, np.float32)
        for epoch in range(3):
            perm = rng.permutation(n)
            for i, (Xb, Yb, wb, a, b) in enumerate(batches.epoch(perm)):
                spin((1,), (1,), (np.int64(500_000),))
                checks[i] = cupy.tanh(Xb @ W).sum()  # a real consumer too
                RX[a:b] = Xb
                RY[a:b] = Yb
                Rw[a:b] = wb
            gpu.synchronize()
            np.testing.assert_array_equal(cupy.asnumpy(RX), X[perm])
            np.testing.assert_array_equal(cupy.asnumpy(RY), Y[perm])
            np.testing.assert_array_equal(cupy.asnumpy(Rw), w[perm])
            assert np.isfinite(cupy.asnumpy(checks)).all()


@pytest.mark.gpu
def test_gpu_stream_hooks(gpu) -> None:
    import cupy

    stage = gpu.empty_pinned((128, 16), np.float32)
    attrs = cupy.cuda.runtime.pointerGetAttributes(stage.ctypes.data)
    assert attrs.type == getattr(cupy.cuda.runtime, "memoryTypeHost", 1), "staging must be page-locked"
    with gpu.activated():
        stream = gpu.copy_stream()
        assert stream.ptr not in (0, cupy.cuda.get_current_stream().ptr)
        stage[:] = np.arange(128 * 16, dtype=np.float32).reshape(128, 16)
        out = gpu.empty((128, 16), "float32")
        gpu.upload(stage, out, stream=stream)
        done = gpu.record_event(stream)
        gpu.wait_event(done)
        gpu.synchronize_event(done)
        np.testing.assert_array_equal(cupy.asnumpy(out), stage)
        free = gpu.device_free_bytes()
        total = cupy.cuda.runtime.memGetInfo()[1]
        assert 0 < free <= total + cupy.get_default_memory_pool().total_bytes()


@pytest.mark.gpu
def test_gpu_make_batches_automatic(gpu, monkeypatch) -> None:
    import cupy

    X, Y, w = _data(n=100, f=8, k=2)
    need = resident_nbytes(X, Y, w, "float32")
    assert isinstance(make_batches(gpu, X, Y, w, 16, "float32"), ResidentBatches)  # 100 rows fit
    monkeypatch.setattr(type(gpu), "device_free_bytes", lambda self: 2 * need - 1)
    assert isinstance(make_batches(gpu, X, Y, w, 16, "float32"), StreamedBatches)
    with gpu.activated():
        Xd = cupy.asarray(X)
    assert isinstance(make_batches(gpu, Xd, Y, w, 16, "float32"), ResidentBatches)  # already on the device


# ------------------------------------------------------------ fit integration
@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("weighted", [False, True])
def test_fit_with_streamed_data_follows_the_resident_path(shuffle, weighted) -> None:
    """Same seed, same batches in the same order: the weights after fit agree exactly."""
    import mlpx

    rng = np.random.default_rng(0)
    X = rng.normal(size=(203, 7)).astype(np.float32)
    y = rng.integers(0, 3, 203)
    w = rng.uniform(0.5, 2.0, 203) if weighted else None
    out = []
    for stream in (False, True):
        m = mlpx.MLP([7, 16, 3], seed=0)
        h = m.fit(X, y, epochs=3, batch_size=32, shuffle=shuffle, sample_weight=w, stream_data=stream)
        out.append((m.get_flat_params(), h.history["loss"]))
    np.testing.assert_array_equal(out[0][0], out[1][0])
    np.testing.assert_array_equal(out[0][1], out[1][1])


def test_streamed_fit_on_one_mpi_rank_equals_plain_streamed_fit() -> None:
    """Streaming is a batch source like any other: it runs under comm= too."""
    import mlpx

    MPI = pytest.importorskip("mpi4py.MPI", reason='needs mpi4py: pip install "mlpx[mpi]"')
    rng = np.random.default_rng(3)
    X, y = rng.normal(size=(41, 5)), rng.integers(0, 3, 41)
    out = []
    for comm in (None, MPI.COMM_SELF):
        m = mlpx.MLP([5, 6, 3], dtype="float64", seed=0)
        m.fit(X, y, epochs=2, batch_size=8, stream_data=True, comm=comm)
        out.append(m.get_flat_params())
    np.testing.assert_array_equal(out[0], out[1])
    with pytest.raises(TypeError, match="comm must be"):
        mlpx.MLP([2, 2], seed=0).fit(np.zeros((4, 2)), [0, 1, 0, 1], comm=object(), stream_data=True)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", [None, "fp16"])
def test_gpu_fit_streamed_matches_resident(precision) -> None:
    """On CuPy the streamed path (pinned buffers, copy stream, events) feeds fit the same
    batches as the resident one: the trained weights agree to float32 rounding."""
    import mlpx

    rng = np.random.default_rng(1)
    X = rng.normal(size=(5003, 20)).astype(np.float32)
    y = rng.integers(0, 4, 5003)
    out = []
    for stream in (False, True):
        m = mlpx.MLP([20, 64, 4], seed=0, backend="gpu", precision=precision)
        m.fit(X, y, epochs=3, batch_size=128, stream_data=stream)
        out.append(m.get_flat_params())
    np.testing.assert_allclose(out[0], out[1], rtol=1e-5, atol=1e-6)
