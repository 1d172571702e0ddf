"""The strict CuPy stand-in itself (tests/strict_cupy): each behaviour against an
independent expectation.

* refusals and messages: CuPy 14.2's source text (``cupy/_core/core.pyx``,
  ``_kernel.pyx``, ``_scalar.pyx``), and the real CuPy when it is importable (its
  array methods that need no device are called on a zero-size array);
* the whitelist: the data file generated from CuPy 14.2;
* asynchrony, events, pinned memory: what CUDA's stream semantics allow, checked by
  the values a host read sees;
* kernels: NumPy computing the same formula, in float64 or in float16 step by step.
"""

from __future__ import annotations

import importlib
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from strict_cupy import _strict, installed
from strict_cupy.fixtures import strict_cupy  # noqa: F401 - the fixture

IMPLICIT = ("Implicit conversion to a NumPy array is not allowed. "
            "Please use `.get()` to construct a NumPy array explicitly.")  # cupy/_core/core.pyx, 14.2


def _poisoned(a) -> bool:
    """Whether the device memory behind ``a`` still holds the allocation poison (NaN)."""
    return bool(np.isnan(a._v).all())


# ------------------------------------------------------------------ refusals
def test_arrays_are_not_numpy_arrays_and_refuse_implicit_conversion(strict_cupy) -> None:
    cp = strict_cupy.cupy
    a = cp.asarray(np.arange(6.0).reshape(2, 3))
    assert not isinstance(a, np.ndarray)
    assert type(a).__module__ == "cupy" and type(a).__name__ == "ndarray"
    for convert in (np.asarray, np.array, lambda x: x.__array__(), lambda x: np.asarray(x, dtype=np.float32)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # NumPy 2 retries __array__ without copy=
            with pytest.raises(TypeError) as info:
                convert(a)
        assert str(info.value) == IMPLICIT
    # CuPy 14's __array__ takes no copy= (NumPy 2's keyword): the same TypeError as CuPy's
    with pytest.raises(TypeError, match="unexpected keyword argument 'copy'"):
        a.__array__(copy=True)
    assert not hasattr(a, "__array_namespace__")


def test_host_arrays_in_device_computations_are_refused_as_cupy_does(strict_cupy) -> None:
    cp = strict_cupy.cupy
    a = cp.ones(3)
    host = np.ones(3)
    unsupported = "Unsupported type <class 'numpy.ndarray'>"  # cupy/_core/_scalar.pyx CScalar
    for op in (lambda: a + host, lambda: host + a, lambda: np.add(host, a), lambda: cp.multiply(a, host),
               lambda: cp.ElementwiseKernel("T x, T y", "T z", "z = x + y", "k")(a, host)):
        with pytest.raises(TypeError, match="^" + unsupported.replace("(", r"\(").replace(")", r"\)") + "$"):
            op()
    # NumPy's ufuncs and functions on device arrays are CuPy's (a device result), not host code
    e = np.exp(a)
    assert isinstance(e, cp.ndarray)
    np.testing.assert_allclose(e.get(), np.exp(np.ones(3)))
    s = np.sum(cp.arange(5))
    assert isinstance(s, cp.ndarray) and s.get() == 10


def test_assigning_host_data_follows_cupy(strict_cupy) -> None:
    """A basic selection is filled (cupy/_core/core.pyx ndarray.fill): host arrays with
    elements are refused; advanced indexing converts its value with cupy.array."""
    cp = strict_cupy.cupy
    a = cp.zeros((2, 3))
    with pytest.raises(ValueError, match="^non-scalar numpy.ndarray cannot be used for fill$"):
        a[...] = np.ones((2, 3))
    with pytest.raises(ValueError, match="non-scalar numpy.ndarray cannot be used for fill"):
        a.fill(np.ones(3))
    with pytest.raises(TypeError, match="Unsupported type <class 'list'>"):
        a[0] = [1.0, 2.0, 3.0]
    a[...] = np.array(2.0)  # a 0-d host array is a scalar
    a[cp.asarray(np.array([1]))] = np.array([[5.0, 6.0, 7.0]])
    np.testing.assert_array_equal(a.get(), [[2.0, 2.0, 2.0], [5.0, 6.0, 7.0]])


def test_explicit_transfers_work_and_reduce_to_numpy_semantics(strict_cupy) -> None:
    cp = strict_cupy.cupy
    a = cp.asarray(np.array([[1.5, 2.0], [3.0, 4.0]]))
    np.testing.assert_array_equal(a.get(), [[1.5, 2.0], [3.0, 4.0]])
    np.testing.assert_array_equal(cp.asnumpy(a), a.get())
    assert float(a[0, 0]) == 1.5 and a[1, 1].item() == 4.0 and bool(a[0, 0]) is True
    assert int(cp.asarray(7)) == 7
    # The conversions CuPy hands to NumPy (float(self.get()) etc.) fail as NumPy's do.
    for convert in (float, int, bool):
        with pytest.raises(Exception) as ours:
            convert(a)
        with pytest.raises(Exception) as numpys:
            convert(np.ones((2, 2)))
        assert type(ours.value) is type(numpys.value) and str(ours.value) == str(numpys.value)
    with pytest.raises(ValueError, match="can only convert an array of size 1 to a Python scalar"):
        a.item()


@pytest.mark.parametrize("read, expected", [
    (lambda a: a.get(), np.array(7.0)), (lambda a: a.item(), 7.0), (float, 7.0), (bool, True), (int, 7),
    (lambda a: __import__("cupy").asnumpy(a), np.array(7.0)), (repr, repr(np.array(7.0))),
], ids=["get", "item", "float", "bool", "int", "asnumpy", "repr"])
def test_host_reads_wait_for_the_work_before_them(strict_cupy, read, expected) -> None:
    cp = strict_cupy.cupy
    a = cp.asarray(np.float64(2.0))
    b = (a * 3.0) + 1.0  # queued: the upload and two kernels
    assert strict_cupy.pending() == 3
    value = read(b)
    assert strict_cupy.pending() == 0
    assert type(value) is type(expected) and np.array_equal(value, expected)


def test_from_dlpack_is_refused_by_numpy_itself_and_cpu_export_copies(strict_cupy) -> None:
    cp = strict_cupy.cupy
    a = cp.arange(4.0)
    with pytest.raises(RuntimeError, match="Unsupported device in DLTensor"):
        np.from_dlpack(a)  # a CUDA DLPack tensor, which NumPy itself refuses (NumPy's message)
    assert a.__dlpack_device__() == (2, 0)
    host = np.from_dlpack(a, device="cpu")  # asks for dl_device=(kDLCPU, 0): CuPy 14 copies
    np.testing.assert_array_equal(host, np.arange(4.0))
    with pytest.raises(BufferError, match="copy=True only supported for copy to CPU."):
        a.__dlpack__(copy=True)


def test_messages_match_the_installed_cupy_where_no_device_is_needed() -> None:
    """With the real CuPy installed: the same exception, message and protocol methods."""
    real = pytest.importorskip("cupy")
    try:
        mem = real.cuda.UnownedMemory(0, 0, None, device_id=0)
        r = real.ndarray((0,), dtype=np.float32, memptr=real.cuda.MemoryPointer(mem, 0))
    except Exception as exc:  # pragma: no cover - depends on the installed CuPy
        pytest.skip(f"cannot make a device-free CuPy array: {exc}")
    with installed() as sc:
        s = sc.cupy.ndarray((0,), dtype=np.float32)
        for probe in (lambda x: x.__array__(), lambda x: x.__array__(copy=True), lambda x: len(x.reshape(())),
                      lambda x: x.foo):
            with pytest.raises(Exception) as ours:
                probe(s)
            with pytest.raises(Exception) as theirs:
                probe(r)
            assert type(ours.value).__name__ == type(theirs.value).__name__
            assert str(ours.value) == str(theirs.value)
        for name in ("__array_namespace__", "__array__", "__array_ufunc__", "__array_function__",
                     "__cuda_array_interface__", "__dlpack__", "__dlpack_device__"):
            assert hasattr(type(s), name) == hasattr(type(r), name), name


# ----------------------------------------------------------------- whitelist
def test_api_list_comes_from_cupy_14() -> None:
    data = json.loads((Path(_strict.__file__).with_name("cupy14_api.json")).read_text())
    assert data["cupy_version"].startswith("14.")
    assert "make_api_list.py" in data["generated_by"]
    ndarray_names = data["classes"]["cupy.ndarray"]["names"]
    assert "__array_namespace__" not in ndarray_names  # CuPy 14.2 has none
    assert "astype" in data["modules"]["cupy"]["names"]  # xp.astype: CuPy 14 has it (13 has not)
    assert data["modules"]["cupy.cuda.nccl (library missing)"]["values"] == {"available": False}


def test_the_stand_in_offers_only_names_cupy_14_has(strict_cupy) -> None:
    from strict_cupy import _cuda, _kernel, _nccl, _ndarray, _sparse

    classes = {
        "cupy.ndarray": _ndarray.ndarray, "cupy.ufunc": _ndarray.ufunc, "cupy.cuda.Device": _cuda.Device,
        "cupy.cuda.Stream": _cuda.Stream, "cupy.cuda.Event": _cuda.Event,
        "cupy.cuda.MemoryPointer": _cuda.MemoryPointer, "cupy.cuda.MemoryPool": _cuda.MemoryPool,
        "cupy.cuda.PinnedMemoryPointer": _cuda.PinnedMemoryPointer,
        "cupy.cuda.PinnedMemoryPool": _cuda.PinnedMemoryPool, "cupy.ElementwiseKernel": _kernel.ElementwiseKernel,
        "cupy.cuda.nccl.NcclCommunicator": _nccl.NcclCommunicator,
        "cupyx.scipy.sparse.csr_matrix": _sparse.csr_matrix,
    }
    for path, cls in classes.items():
        allowed = _strict.class_names(path)
        own = {n for c in cls.__mro__ if c.__module__.startswith(("cupy", "strict_cupy")) or c.__name__ in (
            "ndarray", "ufunc") for n in vars(c)}
        public = {n for n in own if not n.startswith("_")}
        assert public <= set(allowed), f"{path}: not in CuPy 14: {sorted(public - set(allowed))}"
        dunders = {n for n in own if n.startswith("__") and n.endswith("__")} - {
            "__module__", "__qualname__", "__doc__", "__slots__", "__dict__", "__weakref__", "__annotations__",
            "__getattr__", "__init__", "__firstlineno__", "__static_attributes__"}
        assert dunders <= set(allowed), f"{path}: protocols CuPy 14 lacks: {sorted(dunders - set(allowed))}"
    for name, mod in strict_cupy.modules.items():
        entry = mod.__dict__["_sc_entry"]
        own = {n for n in vars(mod) if not n.startswith("_") or n in entry["names"]}
        assert own <= set(entry["names"]) | {"_sc_entry"}, name


def test_missing_names_raise_attribute_error_and_gaps_are_loud(strict_cupy) -> None:
    cp = strict_cupy.cupy
    a = cp.zeros(3)
    with pytest.raises(AttributeError, match="module 'cupy' has no attribute 'no_such_function'"):
        cp.no_such_function
    with pytest.raises(AttributeError, match="'ndarray' object has no attribute 'no_such_method'"):
        a.no_such_method()
    with pytest.raises(AttributeError, match="'ndarray' object has no attribute 'to_device'"):
        a.to_device  # an Array API method CuPy 14 does not have
    assert callable(cp.astype)  # CuPy 14 has it
    with pytest.raises(NotImplementedError, match=r"cupy\.nanmedian exists in CuPy 14"):
        cp.nanmedian(a)
    with pytest.raises(NotImplementedError, match=r"cupy\.ndarray\.argsort exists in CuPy 14"):
        a.argsort()
    with pytest.raises(NotImplementedError, match=r"cupy\.fft exists in CuPy 14"):
        cp.fft
    with pytest.raises(NotImplementedError, match=r"cupy\.ufunc\.reduce exists in CuPy 14"):
        cp.add.reduce(a)
    assert cp.float32 is np.float32 and cp.newaxis is None and cp.pi == np.pi


def test_stand_in_wins_only_inside_the_fixture() -> None:
    import mlpx
    import mlpx.layers
    from mlpx.backends import _GPU_CACHE

    before = sys.modules.get("cupy")
    gpu_cache, bias_kernels = dict(_GPU_CACHE), dict(mlpx.layers._BIAS_ACT_CUDA)
    kernels = {id(k): k._kernel for k in (mlpx.updates._adam_cuda, mlpx.activations._gelu_backward_cuda)}
    with installed() as sc:
        import cupy
        import cupyx.scipy.sparse

        assert cupy is sc.cupy and cupyx.scipy.sparse is sc.modules["cupyx.scipy.sparse"]
        assert not _GPU_CACHE  # a GPU backend is built on the stand-in
        model = mlpx.MLP([3, 4, 2], activation="gelu", backend="gpu", seed=0)
        model.fit(np.ones((4, 3)), [0, 1, 0, 1], epochs=1)  # builds Adam's and GELU's kernels
        assert type(mlpx.updates._adam_cuda._kernel).__name__ == "ElementwiseKernel"
        assert model.backend is _GPU_CACHE[0]
    assert sys.modules.get("cupy") is before
    # mlpx's caches of CuPy objects are as they were: nothing built on the stand-in is left
    assert dict(_GPU_CACHE) == gpu_cache and dict(mlpx.layers._BIAS_ACT_CUDA) == bias_kernels
    for k in (mlpx.updates._adam_cuda, mlpx.activations._gelu_backward_cuda):
        assert k._kernel is kernels[id(k)]
    if before is None:
        with pytest.raises(ImportError):
            importlib.import_module("cupy")


# ------------------------------------------------------------ asynchrony
def test_work_runs_only_when_its_stream_is_synchronised(strict_cupy) -> None:
    cp = strict_cupy.cupy
    a = cp.asarray(np.arange(4.0))
    b = a * 2.0
    c = b + 1.0
    assert strict_cupy.pending() == 3  # the upload, two kernels: nothing ran
    assert _poisoned(b) and _poisoned(c)
    cp.cuda.get_current_stream().synchronize()
    assert strict_cupy.pending() == 0
    np.testing.assert_array_equal(c._v, [1.0, 3.0, 5.0, 7.0])


def test_host_reads_synchronise_their_own_stream_only(strict_cupy) -> None:
    cp = strict_cupy.cupy
    x = cp.asarray(np.ones(4))
    cp.cuda.Device().synchronize()
    side = cp.cuda.Stream(non_blocking=True)
    with side:
        y = x * 5.0  # queued on the side stream
    z = x + 1.0  # on the legacy stream
    np.testing.assert_array_equal(z.get(), 2.0)  # synchronises the legacy stream...
    assert _poisoned(y)  # ...not the side stream
    np.testing.assert_array_equal(y.get(stream=side), 5.0)


def test_events_order_streams_up_to_the_recorded_point(strict_cupy) -> None:
    cp = strict_cupy.cupy
    x = cp.asarray(np.zeros(3))
    cp.cuda.Device().synchronize()
    producer = cp.cuda.Stream(non_blocking=True)
    consumer = cp.cuda.Stream(non_blocking=True)
    with producer:
        x[...] = 1.0
        event = producer.record()
        x[...] = 2.0  # after the event: not covered by it
    with consumer:
        consumer.wait_event(event)
        y = x * 10.0
    # the consumer's work runs the producer up to the event first, not beyond
    consumer.synchronize()
    np.testing.assert_array_equal(y._v, 10.0)
    assert not producer.done
    event2 = cp.cuda.Event()
    event2.record(producer)
    event2.synchronize()
    assert producer.done
    np.testing.assert_array_equal(x._v, 2.0)


def test_without_an_event_a_stream_does_not_see_another_streams_work(strict_cupy) -> None:
    cp = strict_cupy.cupy
    x = cp.asarray(np.zeros(3))
    cp.cuda.Device().synchronize()
    producer = cp.cuda.Stream(non_blocking=True)
    consumer = cp.cuda.Stream(non_blocking=True)
    with producer:
        x[...] = 1.0
    with consumer:
        y = x * 10.0
    consumer.synchronize()
    np.testing.assert_array_equal(y._v, 0.0)  # the race a missing event leaves


def test_legacy_stream_is_ordered_with_blocking_streams_only(strict_cupy) -> None:
    cp = strict_cupy.cupy
    x = cp.asarray(np.zeros(2))
    cp.cuda.Device().synchronize()
    blocking = cp.cuda.Stream()  # CUDA's default flags: synchronises with the legacy stream
    non_blocking = cp.cuda.Stream(non_blocking=True)
    with blocking:
        x[0] = 1.0
    with non_blocking:
        x[1] = 1.0
    y = x * 3.0  # legacy stream: waits for the blocking stream's earlier work only
    np.testing.assert_array_equal(y.get(), [3.0, 0.0])


@pytest.mark.parametrize("strict_cupy", [{"null_schedule": "eager", "stream_schedule": "eager"}], indirect=True)
def test_eager_schedule_runs_work_when_queued(strict_cupy) -> None:
    cp = strict_cupy.cupy
    b = cp.asarray(np.arange(3.0)) + 1.0
    assert strict_cupy.pending() == 0
    np.testing.assert_array_equal(b._v, [1.0, 2.0, 3.0])


def test_never_recorded_event_is_complete(strict_cupy) -> None:
    e = strict_cupy.cupy.cuda.Event(disable_timing=True)
    assert e.done
    e.synchronize()


# ----------------------------------------------------------- pinned memory
def test_async_upload_from_pinned_memory_reads_the_host_buffer_when_it_runs(strict_cupy) -> None:
    cp, cpx = strict_cupy.cupy, strict_cupy.cupyx
    staging = cpx.empty_pinned((4,), dtype=np.float32)
    staging[...] = 1.0
    dev = cp.empty(4, np.float32)
    copy_stream = cp.cuda.Stream(non_blocking=True)
    dev.set(staging, stream=copy_stream)
    staging[...] = 2.0  # rewritten before the upload ran: DMA reads the new values
    copy_stream.synchronize()
    np.testing.assert_array_equal(dev._v, 2.0)


def test_async_upload_from_pageable_memory_reads_it_at_the_call(strict_cupy) -> None:
    cp = strict_cupy.cupy
    host = np.ones(4, np.float32)
    dev = cp.empty(4, np.float32)
    copy_stream = cp.cuda.Stream(non_blocking=True)
    dev.set(host, stream=copy_stream)
    host[...] = 2.0  # CUDA staged pageable data before returning
    copy_stream.synchronize()
    np.testing.assert_array_equal(dev._v, 1.0)
    assert not strict_cupy.machine.is_pinned(host)


def test_pinned_registry_follows_the_buffer_lifetime(strict_cupy) -> None:
    cpx = strict_cupy.cupyx
    buf = cpx.empty_pinned((8,), np.float64)
    assert strict_cupy.machine.is_pinned(buf) and strict_cupy.machine.is_pinned(buf[2:5])
    assert not strict_cupy.machine.is_pinned(buf.copy())


# ------------------------------------------------------------------ devices
def test_devices_current_device_and_placement(strict_cupy) -> None:
    cp = strict_cupy.cupy
    assert cp.cuda.runtime.getDeviceCount() == 2
    assert cp.cuda.Device().id == 0 and cp.cuda.Device(1).compute_capability == "90"
    with cp.cuda.Device(1):
        assert cp.cuda.runtime.getDevice() == 1
        a1 = cp.ones(3)
    assert a1.device.id == 1 and cp.cuda.Device().id == 0
    a0 = cp.ones(3)
    # CuPy's _check_peer_access message (cupy/_core/_kernel.pyx), peer access unavailable
    with pytest.raises(ValueError, match=r"The device where the array resides \(1\) is different from the "
                                         r"current device \(0\)\. Peer access is unavailable"):
        a0 + a1
    with cp.cuda.Device(1):
        np.testing.assert_array_equal((a1 * 2).get(), 2.0)
    cp.cuda.Device(1).use()
    assert cp.cuda.runtime.getDevice() == 1
    cp.cuda.Device(0).use()
    with pytest.raises(cp.cuda.runtime.CUDARuntimeError, match="cudaErrorInvalidDevice: invalid device ordinal"):
        with cp.cuda.Device(2):
            pass


@pytest.mark.parametrize("strict_cupy", [{"n_devices": 0}], indirect=True)
def test_no_device_raises_as_cuda_does(strict_cupy) -> None:
    with pytest.raises(strict_cupy.cupy.cuda.runtime.CUDARuntimeError, match="cudaErrorNoDevice"):
        strict_cupy.cupy.cuda.runtime.getDeviceCount()


@pytest.mark.parametrize("strict_cupy", [{"memory_bytes": 1 << 20}], indirect=True)
def test_memory_accounting_and_out_of_memory(strict_cupy) -> None:
    cp = strict_cupy.cupy
    free0, total = cp.cuda.runtime.memGetInfo()
    assert total == 1 << 20 and free0 == total
    pool = cp.get_default_memory_pool()
    a = cp.empty(1000, np.float64)  # 8000 bytes, rounded up to 512
    assert pool.used_bytes() == 8192
    assert cp.cuda.runtime.memGetInfo()[0] == total - 8192
    del a
    assert pool.used_bytes() == 0 and pool.free_bytes() == 8192  # cached by the pool
    with pytest.raises(cp.cuda.memory.OutOfMemoryError, match="Out of memory allocating"):
        cp.empty(1 << 20, np.float32)


# ------------------------------------------------------------------ kernels
def test_elementwise_kernel_broadcasts_and_casts_scalars(strict_cupy) -> None:
    cp = strict_cupy.cupy
    k = cp.ElementwiseKernel("T x, T b, T scale, int32 n", "T y", "y = (x + b) * scale + n;", "sc_affine")
    x = np.arange(12.0).reshape(3, 4)
    b = np.array([1.0, -1.0, 0.5, 2.0])
    y = k(cp.asarray(x), cp.asarray(b), 0.5, 3)
    np.testing.assert_allclose(y.get(), (x + b) * 0.5 + 3)
    # float32 in, so T is float and the scalar 0.1 is cast to float32 (not used as a double)
    x32 = np.linspace(-1, 1, 7, dtype=np.float32)
    y32 = cp.ElementwiseKernel("T x, T s", "T y", "y = x * s;", "sc_scale")(cp.asarray(x32), 0.1)
    assert y32.dtype == np.float32
    np.testing.assert_array_equal(y32.get(), x32 * np.float32(0.1))


def test_elementwise_kernel_raw_params_index_whole_arrays(strict_cupy) -> None:
    cp = strict_cupy.cupy
    k = cp.ElementwiseKernel(
        "raw T M, int32 k", "T rowsum",
        "T s = 0; for (int j = 0; j < k; ++j) s += M[(ptrdiff_t)i * k + j]; rowsum = s;", "sc_rowsum")
    M = np.arange(20.0).reshape(5, 4)
    out = cp.empty(5)
    k(cp.asarray(M), 4, out)
    np.testing.assert_allclose(out.get(), M.sum(1))
    # a transposed (non-contiguous) raw input is indexed in its logical row-major order
    out2 = cp.empty(4)
    k(cp.asarray(M).T, 5, out2)
    np.testing.assert_allclose(out2.get(), M.T.sum(1))


def test_elementwise_kernel_of_raw_arrays_runs_over_size_and_outputs_are_read_write(strict_cupy) -> None:
    """The engine's row kernels (softmax) pass every array raw and give ``size=``;
    its bias kernel that keeps Z + b reads an output element before writing it."""
    cp = strict_cupy.cupy
    rows = cp.ElementwiseKernel(
        "raw T M, int64 k", "raw T out",
        "for (ptrdiff_t j = 0; j < k; ++j) out[i * k + j] = M[i * k + j] * (T)(i + 1);", "sc_rows")
    M = np.arange(12.0).reshape(3, 4)
    out = cp.zeros((3, 4))
    rows(cp.asarray(M), 4, out, size=3)
    np.testing.assert_array_equal(out.get(), M * np.arange(1, 4)[:, None])
    keep = cp.ElementwiseKernel("T b", "T z, T y", "const T x = z + b; z = x; y = x * x;", "sc_keep")
    z, y = cp.asarray(M.copy()), cp.empty((3, 4))
    keep(cp.asarray(np.ones(4)), z, y)
    np.testing.assert_array_equal(z.get(), M + 1)
    np.testing.assert_array_equal(y.get(), (M + 1) ** 2)


def test_elementwise_kernel_type_errors_follow_cupy(strict_cupy) -> None:
    cp = strict_cupy.cupy
    k = cp.ElementwiseKernel("T x", "T y", "y = x;", "sc_copy")
    # outputs fix T first (cupy/_core/_kernel.pyx _decide_params_type_core)
    with pytest.raises(TypeError, match="Type is mismatched. x float64 float32 T"):
        k(cp.ones(2, np.float64), cp.ones(2, np.float32))
    with pytest.raises(TypeError, match="Wrong number of arguments for 'sc_copy'. It must be either 1 or 2 "
                                        r"\(with outputs\), but given 3\."):
        k(cp.ones(2), cp.ones(2), cp.ones(2))
    with pytest.raises(ValueError, match="Loop size is undecided."):
        cp.ElementwiseKernel("raw T x", "raw T y", "y[i] = x[i];", "sc_raw")(cp.ones(2), cp.ones(2))
    with pytest.raises(ValueError, match="Invalid kernel name"):
        cp.ElementwiseKernel("T x", "T y", "y = x;", "bad name")


def test_untranslatable_kernel_raises_compile_exception(strict_cupy) -> None:
    cp = strict_cupy.cupy
    k = cp.ElementwiseKernel("T x", "T y", "y = x + threadIdx.x;", "sc_thread")
    with pytest.raises(cp.cuda.compiler.CompileException, match="threadIdx"):
        k(cp.ones(2))


def test_float16_kernels_round_each_stored_value(strict_cupy) -> None:
    """T = float16: arithmetic through float, rounded to half where a T is stored (CuPy's
    float16 class), so z*z overflows to inf for |z| >= 256 as on the GPU."""
    cp = strict_cupy.cupy
    k = cp.ElementwiseKernel("T z", "T y", "T z2 = z * z; y = z2 * (T)0.5;", "sc_half_sq")
    z = np.array([0.1, 3.0, 255.0, 256.0, -300.0], dtype=np.float16)
    with np.errstate(over="ignore"):
        ref = (z * z).astype(np.float16) * np.float16(0.5)  # NumPy float16: rounds every result
    np.testing.assert_array_equal(k(cp.asarray(z)).get(), ref)
    assert np.isinf(k(cp.asarray(z)).get()[3:]).all()


def test_bfloat16_compound_assignment_does_not_compile_as_in_cupy(strict_cupy) -> None:
    """CuPy's bfloat16 class has no += (its float16 has): NVRTC rejects ``T s; s += float``."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    cp = strict_cupy.cupy
    k = cp.ElementwiseKernel("T x", "T y", "T s = 0; s += exp((float)x); y = s;", "sc_bf16_acc")
    np.testing.assert_allclose(k(cp.ones(3, np.float16)).get().astype(np.float32), np.e, rtol=1e-3)
    with pytest.raises(cp.cuda.compiler.CompileException, match=r"operator\+="):
        k(cp.ones(3, ml_dtypes.bfloat16))


def test_kernel_launch_is_queued_on_its_stream(strict_cupy) -> None:
    cp = strict_cupy.cupy
    k = cp.ElementwiseKernel("T x", "T y", "y = x + (T)1;", "sc_inc")
    x = cp.asarray(np.zeros(3))
    s = cp.cuda.Stream(non_blocking=True)
    cp.cuda.Device().synchronize()
    y = k(x, stream=s)
    assert _poisoned(y)
    s.synchronize()
    np.testing.assert_array_equal(y._v, 1.0)


def test_compiled_kernels_are_cached_on_disk(strict_cupy, tmp_path, monkeypatch) -> None:
    from strict_cupy import _kernel

    monkeypatch.setenv("MLPX_STRICT_CUPY_CACHE", str(tmp_path))
    monkeypatch.setattr(_kernel, "_LOADED", {})
    cp = strict_cupy.cupy
    k = cp.ElementwiseKernel("T x", "T y", "y = x * (T)3;", "sc_cached")
    np.testing.assert_array_equal(k(cp.ones(2)).get(), 3.0)
    files = sorted(p.name for p in tmp_path.glob("sc_cached-*.so"))
    assert len(files) == 1
    monkeypatch.setattr(_kernel, "_LOADED", {})
    monkeypatch.setattr(_kernel.subprocess, "run", lambda *a, **k: pytest.fail("recompiled"))
    np.testing.assert_array_equal(k(cp.ones(2)).get(), 3.0)


# ---------------------------------------------------------------- linalg
def test_tf32_compute_type_rounds_matmul_inputs(strict_cupy) -> None:
    cp = strict_cupy.cupy
    from cupy import _core
    from cupy._core import _routines_linalg as linalg

    a = np.float32(1 + 2**-12) * np.ones((1, 4), np.float32)  # below TF32's 10 mantissa bits
    b = np.ones((4, 1), np.float32)
    assert _core.get_compute_type(np.float32) == linalg.COMPUTE_TYPE_DEFAULT
    np.testing.assert_array_equal(cp.matmul(cp.asarray(a), cp.asarray(b)).get(), a @ b)
    _core.set_compute_type(np.float32, linalg.COMPUTE_TYPE_TF32)
    np.testing.assert_array_equal(cp.matmul(cp.asarray(a), cp.asarray(b)).get(), [[4.0]])
    assert cp.matmul(cp.ones((2, 2)), cp.ones((2, 2))).dtype == np.float64  # float64 unaffected


# ------------------------------------------------------------------ sparse
def test_csr_matrix_round_trip_rows_and_densify(strict_cupy) -> None:
    sp = pytest.importorskip("scipy.sparse")
    cp = strict_cupy.cupy
    from cupyx.scipy import sparse as csp

    host = sp.random(9, 6, density=0.4, format="csr", random_state=0)
    dev = csp.csr_matrix(host)
    assert type(dev).__module__.startswith("cupyx.scipy.sparse") and dev.shape == (9, 6)
    np.testing.assert_array_equal(dev.toarray().get(), host.toarray())
    rows = cp.asarray(np.array([4, 0, 8]))
    np.testing.assert_array_equal(dev[rows].toarray().get(), host[[4, 0, 8]].toarray())
    np.testing.assert_array_equal(dev[2:5].toarray().get(), host[2:5].toarray())
    assert dev.astype(np.float32).dtype == np.float32
    np.testing.assert_array_equal(dev.get().toarray(), host.toarray())
    assert not sp.issparse(dev) and csp.issparse(dev)


# -------------------------------------------------------------------- NCCL
def test_nccl_all_reduce_resolves_pointers_and_is_stream_ordered(strict_cupy) -> None:
    cp = strict_cupy.cupy
    from cupy.cuda import nccl

    assert nccl.available
    comm = nccl.NcclCommunicator(1, nccl.get_unique_id(), 0)
    buf = cp.asarray(np.arange(6, dtype=np.float32))
    out = cp.zeros(6, np.float32)
    stream = cp.cuda.get_current_stream()
    comm.allReduce(buf.data.ptr, out.data.ptr, 4, nccl.NCCL_FLOAT32, nccl.NCCL_SUM, stream.ptr)
    assert strict_cupy.pending() > 0
    np.testing.assert_array_equal(out.get(), [0, 1, 2, 3, 0, 0])  # one rank: the sum is the buffer
    with pytest.raises(nccl.NcclError, match="NCCL_ERROR_INVALID_ARGUMENT"):
        comm.allReduce(buf.data.ptr + (1 << 20), out.data.ptr, 4, nccl.NCCL_FLOAT32, nccl.NCCL_SUM, stream.ptr)


@pytest.mark.parametrize("strict_cupy", [{"nccl_available": False}], indirect=True)
def test_nccl_without_the_library_is_a_bare_module(strict_cupy) -> None:
    from cupy.cuda import nccl

    assert nccl.available is False
    with pytest.raises(AttributeError, match="has no attribute 'NcclCommunicator'"):
        nccl.NcclCommunicator


# ------------------------------------------------------------- memory pool
def test_freed_block_is_reused_in_stream_order(strict_cupy) -> None:
    cp = strict_cupy.cupy
    a = cp.asarray(np.ones(64))
    b = a * 2.0  # queued: reads a
    del a  # freed with work on it still queued, as CuPy allows on one stream
    c = cp.full(64, 7.0)  # the same block, written after b's kernel in stream order
    assert strict_cupy.pending() > 0
    np.testing.assert_array_equal(b.get(), 2.0)
    np.testing.assert_array_equal(c.get(), 7.0)


def test_block_reused_while_another_stream_still_reads_it_is_a_race(strict_cupy) -> None:
    """CuPy's pool does not know about other streams' work: the second stream reads the
    new owner's data (the hazard ``ndarray.data.mem`` users must avoid)."""
    cp = strict_cupy.cupy
    a = cp.asarray(np.ones(64))
    cp.cuda.Device().synchronize()
    side = cp.cuda.Stream(non_blocking=True)
    with side:
        b = a * 2.0  # queued on the side stream, not run
    del a
    c = cp.full(64, 7.0)  # reuses a's block on the legacy stream
    c.get()
    np.testing.assert_array_equal(b.get(stream=side), 14.0)


def test_pointer_attributes_tell_pinned_device_and_pageable_memory(strict_cupy) -> None:
    rt = strict_cupy.cupy.cuda.runtime
    pinned = strict_cupy.cupyx.empty_pinned((4,), np.float32)
    dev = strict_cupy.cupy.empty(4, np.float32)
    assert rt.pointerGetAttributes(pinned.ctypes.data).type == rt.memoryTypeHost == 1
    attrs = rt.pointerGetAttributes(dev.data.ptr)
    assert attrs.type == rt.memoryTypeDevice and attrs.device == 0
    assert rt.pointerGetAttributes(np.empty(4).ctypes.data).type == rt.memoryTypeUnregistered
