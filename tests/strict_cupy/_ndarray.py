"""``cupy.ndarray`` and the array functions of the stand-in.

An array is a NumPy view (``_v``) into a device allocation (:class:`DeviceMemory`),
which only queued device work reads or writes. Every operation:

1. checks its arguments as CuPy does (host NumPy arrays are refused in computations,
   arrays must be on the current device);
2. computes the result's shape and dtype by running the NumPy function on
   zero-stride stand-ins of the inputs ("meta" arrays), which also raises NumPy's
   (hence, for these functions, CuPy's) shape and casting errors at the call;
3. allocates the result on the current device and queues the real NumPy call on
   the current stream (:mod:`._runtime` decides when it runs).

Views (slices, reshape, transpose) are computed at once: they read no data. Host
reads (``get``, ``float``, ``item``, ``repr``...) queue a copy and synchronise the
stream they run on, as CuPy does; results that depend on data (``nonzero``, boolean
masks) synchronise too.
"""

from __future__ import annotations

import functools
import operator
from typing import Any, Callable, Sequence

import numpy as np

from . import _cuda
from ._cuda import current_queue, peer_check
from ._runtime import DeviceMemory, machine
from ._strict import StrictMeta, class_names, strict_getattr

__all__ = ["ndarray", "ufunc", "FUNCTIONS", "UFUNCS"]

_PY_SCALARS = (bool, int, float, complex)


def _is_scalar(x: Any) -> bool:
    return type(x) in _PY_SCALARS or isinstance(x, np.generic)


def _unsupported(x: Any) -> TypeError:
    return TypeError(f"Unsupported type {type(x)}")


# ----------------------------------------------------------------- allocation
def _empty(shape: Any, dtype: Any, order: str = "C") -> "ndarray":
    """An uninitialised (poisoned) array on the current device."""
    dtype = np.dtype(dtype)
    shape = _shape_tuple(shape)
    m = machine()
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    mem = DeviceMemory(m, m.current_device, nbytes, arena=id(current_queue()))
    v = np.ndarray(shape, dtype=dtype, buffer=mem.buf, order=order)
    return ndarray._wrap(mem, v, None)


def _shape_tuple(shape: Any) -> tuple[int, ...]:
    if isinstance(shape, (int, np.integer)):
        return (int(shape),)
    shape = tuple(int(operator.index(s)) for s in shape)
    if any(s < 0 for s in shape):
        raise ValueError("Negative dimensions are not allowed")
    return shape


def _enqueue(fn: Callable[[], None], *touched: Any) -> None:
    """Queue ``fn`` on the current stream; ``touched``: the device arrays it uses."""
    def run() -> None:
        with np.errstate(all="ignore"):  # GPUs neither warn nor trap
            fn()

    q = current_queue()
    pos = q.enqueue(run)
    touch(touched, q, pos)


def touch(arrays: Any, q: Any, pos: int) -> None:
    """Note that work at ``pos`` of ``q`` uses ``arrays`` (for the pool's reuse rule)."""
    for a in arrays:
        if isinstance(a, ndarray):
            a._mem.touched(q, pos)


def _meta(a: "ndarray") -> np.ndarray:
    """A zero-stride, zero-valued host array of ``a``'s shape and dtype (reads nothing)."""
    base = np.zeros(1, dtype=a.dtype)
    return np.lib.stride_tricks.as_strided(base, shape=a.shape, strides=(0,) * a.ndim, writeable=False)


def _map(obj: Any, f: Callable[["ndarray"], Any]) -> Any:
    """``obj`` with every array (also inside lists and tuples) replaced by ``f(array)``."""
    if isinstance(obj, ndarray):
        return f(obj)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map(o, f) for o in obj)
    return obj


def _collect(obj: Any, acc: list["ndarray"]) -> list["ndarray"]:
    if isinstance(obj, ndarray):
        acc.append(obj)
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            _collect(o, acc)
    elif isinstance(obj, dict):
        for o in obj.values():
            _collect(o, acc)
    elif isinstance(obj, np.ndarray):
        raise _unsupported(obj)  # host data in a device computation
    return acc


def _results_like(meta_res: Any) -> Any:
    if isinstance(meta_res, tuple):
        return tuple(_results_like(r) for r in meta_res)
    r = np.asarray(meta_res)
    return _empty(r.shape, r.dtype)


def _store(dst: Any, src: Any) -> None:
    """Write result(s) ``src`` into the device view(s) ``dst``."""
    if isinstance(dst, tuple):
        for d, s in zip(dst, src):
            _store(d, s)
    else:
        np.copyto(dst, src, casting="unsafe")


def lazy(npfunc: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``npfunc(*args, **kwargs)`` as device work; see the module docstring.

    ``out=`` (a device array) is written in place and returned; otherwise the
    result(s) are new device arrays.
    """
    arrays = _collect((args, kwargs), [])
    for a in arrays:
        peer_check(a._mem.device_id)
    out = kwargs.get("out")
    if out is not None and not isinstance(out, ndarray):
        raise TypeError("Output arguments type must be cupy.ndarray")
    meta_kw = dict(kwargs)
    if out is not None:
        meta_kw["out"] = np.empty(out.shape, out.dtype)
    meta_args = _map(args, _meta)
    meta_kw = {k: (v if k == "out" else _map(v, _meta)) for k, v in meta_kw.items()}
    with np.errstate(all="ignore"):
        meta_res = npfunc(*meta_args, **meta_kw)
    results = out if out is not None else _results_like(meta_res)
    # Queued work holds views of device memory, never the arrays: freeing an array
    # while work on it is queued returns its block to the pool, as in CuPy.
    real_args = _map(args, _view_of)
    real_kw = {k: _map(v, _view_of) for k, v in kwargs.items()}
    res_views = None if out is not None else _map(results, _view_of)

    def run() -> None:
        r = npfunc(*real_args, **real_kw)
        if res_views is not None:
            _store(res_views, r)

    _enqueue(run, *arrays, *_collect(results, []))
    return results


def _view_of(a: "ndarray") -> np.ndarray:
    return a._v


def host_to_device(data: Any, dtype: Any = None, order: str = "K") -> "ndarray":
    """A device copy of host data, taken now (CuPy stages host data before the copy)."""
    host = np.array(data, dtype=dtype, order=order if order in ("C", "F") else "K", copy=True)
    if host.dtype == object:
        raise ValueError(f"Unsupported dtype {host.dtype}")
    dst = _empty(host.shape, host.dtype, "F" if (host.flags.f_contiguous and not host.flags.c_contiguous) else "C")
    dst_v = dst._v
    _enqueue(lambda: np.copyto(dst_v, host), dst)
    return dst


def synchronize_current() -> None:
    """Wait for the current stream (a result whose size depends on the data)."""
    machine().host_waits["data-dependent"] += 1
    current_queue().run_all()


# --------------------------------------------------------------------- flags
class Flags:
    """``ndarray.flags``: c_contiguous, f_contiguous, owndata."""

    def __init__(self, c: bool, f: bool, owndata: bool) -> None:
        self.c_contiguous, self.f_contiguous, self.owndata = c, f, owndata

    def __getitem__(self, name: str) -> bool:
        return {"C_CONTIGUOUS": self.c_contiguous, "F_CONTIGUOUS": self.f_contiguous,
                "OWNDATA": self.owndata}[name]

    def __repr__(self) -> str:
        return f"  C_CONTIGUOUS : {self.c_contiguous}\n  F_CONTIGUOUS : {self.f_contiguous}\n  OWNDATA : {self.owndata}"


# ------------------------------------------------------------------- indexing
def _is_basic(k: Any) -> bool:
    return (k is None or k is Ellipsis or isinstance(k, (slice, int, np.integer))) and not isinstance(k, bool)


def _key_tuple(key: Any) -> tuple[Any, ...]:
    """The index as a tuple; a list is one index array (CuPy deprecates other readings)."""
    return key if isinstance(key, tuple) else (key,)


def _fill_value(value: Any) -> Any:
    """CuPy's ``ndarray.fill`` argument: a scalar, or a 0-d host array (as its item)."""
    if isinstance(value, np.ndarray):
        if value.shape != ():
            raise ValueError("non-scalar numpy.ndarray cannot be used for fill")
        return value.item()
    if not _is_scalar(value):
        raise _unsupported(value)
    return value


def _device_index(k: Any) -> Any:
    """Lists and host arrays in an index become device arrays (CuPy copies them)."""
    if isinstance(k, list) or (isinstance(k, np.ndarray) and k.ndim > 0) or isinstance(k, bool):
        arr = np.array(k)
        if arr.size == 0:
            arr = arr.astype(np.int32)
        if arr.dtype.kind not in "iub":
            raise IndexError(
                f"arrays used as indices must be of integer or boolean type. (actual: {arr.dtype.type})"
            )
        return host_to_device(arr)
    if isinstance(k, ndarray) and k.dtype.kind not in "iub":
        raise IndexError(f"arrays used as indices must be of integer or boolean type. (actual: {k.dtype.type})")
    return k


def _axis_of_each(key: tuple[Any, ...], ndim: int) -> list[int | None]:
    """For each key entry, the array axis it indexes (None for newaxis / Ellipsis)."""
    n_used = sum(1 for k in key if k is not None and k is not Ellipsis)
    axes: list[int | None] = []
    ax = 0
    for k in key:
        if k is None:
            axes.append(None)
        elif k is Ellipsis:
            axes.append(None)
            ax += ndim - n_used
        else:
            axes.append(ax)
            ax += 1
    return axes


def _wrapped_key(key: tuple[Any, ...], shape: tuple[int, ...]) -> tuple[Any, ...]:
    """The key (index arrays as device views) with integer indices wrapped into range
    (CuPy wraps out-of-range indices instead of raising)."""
    axes = _axis_of_each(key, len(shape))
    out = []
    for k, ax in zip(key, axes):
        if isinstance(k, np.ndarray) and k.dtype.kind in "iu" and ax is not None and shape[ax] > 0:
            k = np.mod(k, shape[ax])
        out.append(k)
    return tuple(out)


# ------------------------------------------------------------------- ndarray
def _binop(name: str, x: Any, y: Any) -> Any:
    """CuPy's binary operator: another device array, else defer or go through NumPy's ufunc."""
    if isinstance(y, ndarray):
        return UFUNCS[name](x, y)
    try:
        y_ufunc = y.__array_ufunc__
    except AttributeError:
        if getattr(x, "__array_priority__", 0) < getattr(y, "__array_priority__", 0):
            return NotImplemented
    else:
        if y_ufunc is None:
            return NotImplemented
    return getattr(np, name)(x, y)  # NumPy hands it back through __array_ufunc__


def _rbinop(name: str, x: Any, y: Any) -> Any:
    return UFUNCS[name](y, x)


class ndarray(metaclass=StrictMeta):  # noqa: N801 - CuPy's name
    """``cupy.ndarray`` of the stand-in: not a NumPy array, no implicit host copies."""

    _cupy_name = "cupy.ndarray"
    __slots__ = ("_mem", "_v", "_base", "__weakref__")
    __array_priority__ = 100
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, shape: Any, dtype: Any = float, memptr: Any = None, strides: Any = None,
                 order: str = "C") -> None:
        dtype = np.dtype(dtype)
        shape = _shape_tuple(shape)
        if memptr is None:
            if strides is not None:
                raise ValueError("memptr is required if strides is given.")
            new = _empty(shape, dtype, order or "C")
            self._mem, self._v, self._base = new._mem, new._v, None
            return
        mem = memptr.mem
        self._mem = mem
        self._v = np.ndarray(shape, dtype=dtype, buffer=mem.buf, offset=memptr.ptr - mem.ptr,
                             strides=strides, order=order)
        self._base = None

    @classmethod
    def _wrap(cls, mem: DeviceMemory, v: np.ndarray, base: "ndarray | None") -> "ndarray":
        a = object.__new__(cls)
        a._mem, a._v, a._base = mem, v, base
        return a

    def _view(self, v: np.ndarray) -> "ndarray":
        return ndarray._wrap(self._mem, v, self._base if self._base is not None else self)

    def __getattr__(self, name: str) -> Any:
        return strict_getattr("cupy.ndarray", class_names("cupy.ndarray"), name, "'ndarray' object")

    # ---------------------------------------------------------- attributes
    @property
    def shape(self) -> tuple[int, ...]:
        return self._v.shape

    @shape.setter
    def shape(self, newshape: Any) -> None:
        v = self._v.view()
        v.shape = newshape  # raises as NumPy does when a copy would be needed
        self._v = v

    @property
    def dtype(self) -> np.dtype:
        return self._v.dtype

    @property
    def ndim(self) -> int:
        return self._v.ndim

    @property
    def size(self) -> int:
        return self._v.size

    @property
    def strides(self) -> tuple[int, ...]:
        return self._v.strides

    @property
    def itemsize(self) -> int:
        return self._v.itemsize

    @property
    def nbytes(self) -> int:
        return self._v.nbytes

    @property
    def base(self) -> "ndarray | None":
        return self._base

    @property
    def flags(self) -> Flags:
        return Flags(self._v.flags.c_contiguous, self._v.flags.f_contiguous, self._base is None)

    @property
    def T(self) -> "ndarray":  # noqa: N802
        return self if self.ndim < 2 else self._view(self._v.T)

    @property
    def mT(self) -> "ndarray":  # noqa: N802
        if self.ndim < 2:
            raise ValueError("matrix transpose with ndim < 2 is undefined")
        return self._view(np.swapaxes(self._v, -1, -2))

    @property
    def data(self) -> _cuda.MemoryPointer:
        return _cuda.MemoryPointer(self._mem, self._offset())

    def _offset(self) -> int:
        return self._v.__array_interface__["data"][0] - self._mem.buf.__array_interface__["data"][0]

    @property
    def device(self) -> _cuda.Device:
        return _cuda.Device(self._mem.device_id)

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        stream = _cuda.get_current_stream().ptr or _cuda._LEGACY_PTR
        return {
            "shape": self.shape,
            "typestr": self.dtype.str,
            "descr": self.dtype.descr,
            "stream": stream,
            "version": 3,
            "strides": None if self._v.flags.c_contiguous else self.strides,
            "data": (self.data.ptr if self.size else 0, False),
        }

    # ---------------------------------------------------- host conversion
    def __array__(self, dtype: Any = None, **kwargs: Any) -> np.ndarray:
        if kwargs:  # CuPy 14's (Cython) signature has no copy=; the same TypeError text
            raise TypeError(f"__array__() got an unexpected keyword argument '{next(iter(kwargs))}'")
        raise TypeError(
            "Implicit conversion to a NumPy array is not allowed. "
            "Please use `.get()` to construct a NumPy array explicitly."
        )

    def get(self, stream: Any = None, order: str = "C", out: np.ndarray | None = None,
            blocking: bool = True) -> np.ndarray:
        """Copy to the host on ``stream`` (the current one); wait for it when ``blocking``."""
        if stream is None:
            stream = _cuda.get_current_stream()
        if out is not None:
            if not isinstance(out, np.ndarray):
                raise TypeError("Only numpy.ndarray can be obtained fromcupy.ndarray")
            if self.dtype != out.dtype:
                raise TypeError(f"{out.dtype} array cannot be obtained from {self.dtype} array")
            if self.shape != out.shape:
                raise ValueError(f"Shape mismatch. Expected shape: {self.shape}, actual shape: {out.shape}")
            host = out
        else:
            if self.size == 0:
                return np.ndarray(self.shape, dtype=self.dtype)
            order = order.upper()
            if order == "A":
                order = "F" if self._v.flags.f_contiguous else "C"
            if order not in ("C", "F"):
                raise ValueError(f"unsupported order: {order}")
            host = np.empty(self.shape, dtype=self.dtype, order=order)
        src_v = self._v
        m = machine()
        prev = m.current_device
        m.current_device = self._mem.device_id
        try:
            q = stream._queue_now()
            touch([self], q, q.enqueue(lambda: np.copyto(host, src_v)))
            if blocking:
                m.host_waits["get"] += 1
                q.run_all()
        finally:
            m.current_device = prev
        return host

    def set(self, arr: np.ndarray, stream: Any = None) -> None:
        """Copy host ``arr`` in, on ``stream``: from page-locked memory the copy reads
        ``arr`` when it runs, from pageable memory when it is queued (CUDA's staging)."""
        if not isinstance(arr, np.ndarray):
            raise TypeError("Only numpy.ndarray can be set to cupy.ndarray")
        if self.dtype != arr.dtype:
            raise TypeError(f"{arr.dtype} array cannot be set to {self.dtype} array")
        if self.shape != arr.shape:
            raise ValueError(f"Shape mismatch. Old shape: {self.shape}, new shape: {arr.shape}")
        if self._v.flags.c_contiguous:
            arr = np.ascontiguousarray(arr)
        elif self._v.flags.f_contiguous:
            arr = np.asfortranarray(arr)
        else:
            raise RuntimeError("Cannot set to non-contiguous array")
        if stream is None:
            stream = _cuda.get_current_stream()
        m = machine()
        prev = m.current_device
        m.current_device = self._mem.device_id
        try:
            q = stream._queue_now()
            dst = self._v
            if m.is_pinned(arr):
                pos = q.enqueue(lambda: np.copyto(dst, arr))  # DMA reads the buffer when it runs
            else:
                m.host_waits["pageable upload"] += 1
                q.run_all()  # cudaMemcpyAsync from pageable memory syncs the stream first...
                staged = arr.copy()  # ...and stages the data before returning
                pos = q.enqueue(lambda: np.copyto(dst, staged))
            touch([self], q, pos)
        finally:
            m.current_device = prev

    def item(self) -> Any:
        if self.size != 1:
            raise ValueError("can only convert an array of size 1 to a Python scalar")
        return self.get().item()

    def tolist(self) -> Any:
        return self.get().tolist()

    def tobytes(self, order: str = "C") -> bytes:
        return self.get().tobytes(order)

    def __int__(self) -> int:
        return int(self.get())

    def __float__(self) -> float:
        return float(self.get())

    def __complex__(self) -> complex:
        return complex(self.get())

    def __bool__(self) -> bool:
        return bool(self.get())

    def __repr__(self) -> str:
        return repr(self.get())

    def __str__(self) -> str:
        return str(self.get())

    def __format__(self, spec: str) -> str:
        return format(self.get(), spec)

    def __reduce__(self) -> Any:
        return FUNCTIONS["array"], (self.get(),)

    def __copy__(self) -> "ndarray":
        return self.copy()

    def __deepcopy__(self, memo: Any) -> "ndarray":
        return self.copy()

    def __len__(self) -> int:
        if self.ndim == 0:
            raise TypeError("len() of unsized object")
        return self.shape[0]

    def __iter__(self) -> Any:
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(self.shape[0]))

    def __dlpack_device__(self) -> tuple[int, int]:
        return (2, self._mem.device_id)  # kDLCUDA

    def __dlpack__(self, *, stream: Any = None, max_version: Any = None, dl_device: Any = None,
                   copy: Any = None) -> Any:
        from ._dlpack import export

        return export(self, stream=stream, max_version=max_version, dl_device=dl_device, copy=copy)

    # ---------------------------------------------------------- NumPy interop
    def __array_ufunc__(self, uf: np.ufunc, method: str, *inputs: Any, **kwargs: Any) -> Any:
        inout = inputs
        if "out" in kwargs:
            out = kwargs["out"]
            if len(out) != 1:
                raise ValueError("The 'out' parameter must have exactly one array value")
            inout += out
            kwargs["out"] = out[0]
        if method not in ("__call__", "outer", "at", "reduce", "accumulate", "reduceat"):
            return NotImplemented
        name = uf.__name__
        func = UFUNCS.get(name)
        if func is None:
            return NotImplemented
        if method != "__call__":
            func = getattr(func, method)
        for x in inout:
            if not (isinstance(x, ndarray) or hasattr(x, "__cuda_array_interface__")
                    or type(x) in _SCALAR_TYPES or isinstance(x, np.ndarray)):
                return NotImplemented
        if name in ("greater", "greater_equal", "less", "less_equal", "equal", "not_equal"):
            inputs = tuple(x.item() if isinstance(x, np.ndarray) and x.ndim == 0 else x for x in inputs)
        return func(*inputs, **kwargs)

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        from ._modules import namespace

        try:
            module = functools.reduce(getattr, func.__module__.split(".")[1:], namespace("cupy"))
            cupy_func = getattr(module, func.__name__)
        except AttributeError:
            return NotImplemented
        if cupy_func is func:
            return NotImplemented
        for t in types:
            if not issubclass(t, (ndarray, np.ndarray)):
                return NotImplemented
        return cupy_func(*args, **kwargs)

    # ------------------------------------------------------------ indexing
    def __getitem__(self, key: Any) -> "ndarray":
        keys = _key_tuple(key)
        if all(_is_basic(k) for k in keys):
            if not any(k is Ellipsis for k in keys):
                keys = keys + (Ellipsis,)  # a 0-d view, never a NumPy scalar (which reads data)
            return self._view(self._v[keys])
        keys = tuple(_device_index(k) for k in keys)
        for k in keys:
            if isinstance(k, ndarray):
                peer_check(k._mem.device_id)
        peer_check(self._mem.device_id)
        if any(isinstance(k, ndarray) and k.dtype == np.bool_ for k in keys):
            return self._getitem_mask(keys)
        meta_key = tuple(np.zeros(k.shape, np.intp) if isinstance(k, ndarray) else k for k in keys)
        meta_res = _meta(self)[meta_key]
        res = _empty(meta_res.shape, meta_res.dtype)
        src_v, res_v, shape = self._v, res._v, self.shape
        key_v = tuple(k._v if isinstance(k, ndarray) else k for k in keys)

        def run() -> None:
            res_v[...] = src_v[_wrapped_key(key_v, shape)]

        _enqueue(run, res, self, *keys)
        return res

    def _getitem_mask(self, keys: tuple[Any, ...]) -> "ndarray":
        synchronize_current()  # the result's length depends on the mask: CuPy synchronises
        real = tuple(k._v if isinstance(k, ndarray) else k for k in keys)
        return host_to_device(self._v[real])

    def __setitem__(self, key: Any, value: Any) -> None:
        keys = _key_tuple(key)
        basic = all(_is_basic(k) for k in keys)
        if isinstance(value, ndarray):
            peer_check(value._mem.device_id)
        elif basic:
            # CuPy fills a basic selection with a non-CuPy value (ndarray.fill): a scalar,
            # or a 0-d host array; a host array with elements is refused.
            value = _fill_value(value)
        elif isinstance(value, (np.ndarray, list, tuple)):
            value = host_to_device(value)  # advanced indexing converts with cupy.array
        elif not _is_scalar(value):
            raise _unsupported(value)
        peer_check(self._mem.device_id)
        val_meta = _meta(value) if isinstance(value, ndarray) else value
        val = value._v if isinstance(value, ndarray) else value
        if basic:
            dst = self._v[keys + ((Ellipsis,) if not any(k is Ellipsis for k in keys) else ())]
            np.copyto(np.empty(dst.shape, dst.dtype), val_meta, casting="unsafe")  # shape errors now

            def run() -> None:
                np.copyto(dst, val, casting="unsafe")
        else:
            keys = tuple(_device_index(k) for k in keys)
            meta_key = tuple(np.zeros(k.shape, np.intp) if isinstance(k, ndarray) else k for k in keys)
            target = np.zeros(self.shape, self.dtype)
            target[meta_key] = val_meta
            dst_v, shape = self._v, self.shape
            key_v = tuple(k._v if isinstance(k, ndarray) else k for k in keys)

            def run() -> None:
                dst_v[_wrapped_key(key_v, shape)] = val

        _enqueue(run, self, value, *keys)

    # ------------------------------------------------------------ methods
    def copy(self, order: str = "C") -> "ndarray":
        peer_check(self._mem.device_id)
        res = _empty(self.shape, self.dtype, "F" if order == "F" else "C")
        res_v, src_v = res._v, self._v
        _enqueue(lambda: np.copyto(res_v, src_v), res, self)
        return res

    def astype(self, dtype: Any, order: str = "K", casting: Any = None, subok: Any = None,
               copy: bool = True) -> "ndarray":
        if casting is not None:
            raise TypeError("casting is not supported yet")
        if subok is not None:
            raise TypeError("subok is not supported yet")
        dtype = np.dtype(dtype)
        if dtype == self.dtype and not copy:
            return self
        peer_check(self._mem.device_id)
        res = _empty(self.shape, dtype, "F" if order == "F" else "C")
        res_v, src_v = res._v, self._v
        _enqueue(lambda: np.copyto(res_v, src_v, casting="unsafe"), res, self)
        return res

    def fill(self, value: Any) -> None:
        if isinstance(value, ndarray):
            self[...] = value
            return
        value = _fill_value(value)
        peer_check(self._mem.device_id)
        dst = self._v
        _enqueue(lambda: dst.fill(value), self)

    def view(self, dtype: Any = None) -> "ndarray":
        return self._view(self._v.view() if dtype is None else self._v.view(dtype))

    def reshape(self, *shape: Any, order: str = "C") -> "ndarray":
        if len(shape) == 1 and not isinstance(shape[0], (int, np.integer)):
            shape = tuple(shape[0])
        return FUNCTIONS["reshape"](self, shape, order=order)

    def ravel(self, order: str = "C") -> "ndarray":
        return FUNCTIONS["ravel"](self, order)

    def flatten(self, order: str = "C") -> "ndarray":
        return self.copy(order)._view_flat()

    def _view_flat(self) -> "ndarray":
        return self._view(self._v.reshape(-1))

    def transpose(self, *axes: Any) -> "ndarray":
        if len(axes) == 1 and (axes[0] is None or not isinstance(axes[0], (int, np.integer))):
            axes = axes[0]
        return self._view(self._v.transpose(axes) if axes else self._v.transpose())

    def swapaxes(self, axis1: int, axis2: int) -> "ndarray":
        return self._view(self._v.swapaxes(axis1, axis2))

    def squeeze(self, axis: Any = None) -> "ndarray":
        return self._view(self._v.squeeze(axis))

    def take(self, indices: Any, axis: Any = None, out: Any = None) -> "ndarray":
        return FUNCTIONS["take"](self, indices, axis=axis, out=out)

    def sum(self, axis: Any = None, dtype: Any = None, out: Any = None, keepdims: bool = False) -> "ndarray":
        return lazy(np.sum, self, axis=axis, dtype=dtype, out=out, keepdims=keepdims)

    def prod(self, axis: Any = None, dtype: Any = None, out: Any = None, keepdims: bool = False) -> "ndarray":
        return lazy(np.prod, self, axis=axis, dtype=dtype, out=out, keepdims=keepdims)

    def mean(self, axis: Any = None, dtype: Any = None, out: Any = None, keepdims: bool = False) -> "ndarray":
        return lazy(np.mean, self, axis=axis, dtype=dtype, out=out, keepdims=keepdims)

    def max(self, axis: Any = None, out: Any = None, keepdims: bool = False) -> "ndarray":
        return lazy(np.max, self, axis=axis, out=out, keepdims=keepdims)

    def min(self, axis: Any = None, out: Any = None, keepdims: bool = False) -> "ndarray":
        return lazy(np.min, self, axis=axis, out=out, keepdims=keepdims)

    def argmax(self, axis: Any = None, out: Any = None, dtype: Any = None, keepdims: bool = False) -> "ndarray":
        return FUNCTIONS["argmax"](self, axis=axis, out=out, dtype=dtype, keepdims=keepdims)

    def argmin(self, axis: Any = None, out: Any = None, dtype: Any = None, keepdims: bool = False) -> "ndarray":
        return FUNCTIONS["argmin"](self, axis=axis, out=out, dtype=dtype, keepdims=keepdims)

    def all(self, axis: Any = None, out: Any = None, keepdims: bool = False) -> "ndarray":
        return lazy(np.all, self, axis=axis, out=out, keepdims=keepdims)

    def any(self, axis: Any = None, out: Any = None, keepdims: bool = False) -> "ndarray":
        return lazy(np.any, self, axis=axis, out=out, keepdims=keepdims)

    def cumsum(self, axis: Any = None, dtype: Any = None, out: Any = None) -> "ndarray":
        return lazy(np.cumsum, self, axis=axis, dtype=dtype, out=out)

    def clip(self, min: Any = None, max: Any = None, out: Any = None) -> "ndarray":  # noqa: A002
        return lazy(np.clip, self, min, max, out=out)

    def dot(self, b: "ndarray", out: Any = None) -> "ndarray":
        return FUNCTIONS["dot"](self, b, out=out)

    def nonzero(self) -> tuple["ndarray", ...]:
        synchronize_current()
        return tuple(host_to_device(i) for i in self._v.nonzero())

    def conj(self) -> "ndarray":
        return UFUNCS["conjugate"](self)

    # ---------------------------------------------------------- operators
    def __neg__(self) -> "ndarray":
        return UFUNCS["negative"](self)

    def __pos__(self) -> "ndarray":
        return UFUNCS["positive"](self)

    def __abs__(self) -> "ndarray":
        return UFUNCS["absolute"](self)

    def __invert__(self) -> "ndarray":
        return UFUNCS["invert"](self)

    def __matmul__(self, other: Any) -> Any:
        if not isinstance(other, ndarray) and getattr(other, "__array_ufunc__", 0) is None:
            return NotImplemented
        return FUNCTIONS["matmul"](self, other)

    def __rmatmul__(self, other: Any) -> Any:
        return FUNCTIONS["matmul"](other, self)


def _make_binops() -> None:
    pairs = {
        "add": "add", "sub": "subtract", "mul": "multiply", "truediv": "true_divide",
        "floordiv": "floor_divide", "mod": "remainder", "pow": "power", "and": "bitwise_and",
        "or": "bitwise_or", "xor": "bitwise_xor", "lshift": "left_shift", "rshift": "right_shift",
    }
    for op, name in pairs.items():
        def f(self: Any, other: Any, _n: str = name) -> Any:
            return _binop(_n, self, other)

        def r(self: Any, other: Any, _n: str = name) -> Any:
            return _rbinop(_n, self, other)

        def i(self: Any, other: Any, _n: str = name) -> Any:
            return UFUNCS[_n](self, other, out=self)

        setattr(ndarray, f"__{op}__", f)
        setattr(ndarray, f"__r{op}__", r)
        setattr(ndarray, f"__i{op}__", i)
    for op, name in {"eq": "equal", "ne": "not_equal", "lt": "less", "le": "less_equal",
                     "gt": "greater", "ge": "greater_equal"}.items():
        def c(self: Any, other: Any, _n: str = name) -> Any:
            return _binop(_n, self, other)

        setattr(ndarray, f"__{op}__", c)


ndarray.__module__ = "cupy"


# --------------------------------------------------------------------- ufuncs
_SCALAR_TYPES = set(_PY_SCALARS) | {np.dtype(c).type for c in "?bhilqBHILQefdFD"}


class ufunc(metaclass=StrictMeta):  # noqa: N801 - CuPy's name
    """``cupy.ufunc``: NumPy's ufunc of the same name, run as device work."""

    _cupy_name = "cupy.ufunc"

    def __init__(self, np_ufunc: np.ufunc, name: str) -> None:
        self._np = np_ufunc
        self.name = self.__name__ = name
        self.nin, self.nout = np_ufunc.nin, np_ufunc.nout
        self.nargs = self.nin + self.nout

    def __getattr__(self, name: str) -> Any:
        return strict_getattr("cupy.ufunc", class_names("cupy.ufunc"), name, "'ufunc' object")

    def __repr__(self) -> str:
        return f"<ufunc '{self.name}'>"

    @property
    def types(self) -> list[str]:
        return list(self._np.types)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = kwargs.pop("out", None)
        dtype = kwargs.pop("dtype", None)
        casting = kwargs.pop("casting", "same_kind")
        if kwargs:
            raise TypeError(f"Wrong arguments {kwargs}")
        if not self.nin <= len(args) <= self.nargs:
            raise TypeError(
                f"Wrong number of arguments for {self.name!r}. It must be either {self.nin} or "
                f"{self.nargs} (with outputs), but given {len(args)}."
            )
        ins, outs = list(args[: self.nin]), list(args[self.nin:])
        if out is not None:
            if outs:
                raise ValueError("Cannot specify 'out' as both a positional and keyword argument")
            outs = list(out) if isinstance(out, tuple) else [out]
        for x in ins + outs:
            if isinstance(x, ndarray):
                peer_check(x._mem.device_id)
            elif x is None or _is_scalar(x):
                continue
            else:
                raise _unsupported(x)  # host arrays included: no implicit host-to-device copy
        meta_ins = [_meta(x) if isinstance(x, ndarray) else x for x in ins]
        meta_outs = tuple(np.empty(o.shape, o.dtype) if isinstance(o, ndarray) else None for o in outs)
        kw: dict[str, Any] = {"casting": casting}
        if dtype is not None:
            kw["dtype"] = np.dtype(dtype)
        with np.errstate(all="ignore"):
            meta_res = self._np(*meta_ins, out=meta_outs or None, **kw)
        meta_res = meta_res if isinstance(meta_res, tuple) else (meta_res,)
        results = [o if isinstance(o, ndarray) else _empty(np.shape(r), np.asarray(r).dtype)
                   for o, r in zip(list(outs) + [None] * (self.nout - len(outs)), meta_res)]
        npf = self._np
        real = [x._v if isinstance(x, ndarray) else x for x in ins]
        out_v = tuple(r._v for r in results)

        def run() -> None:
            npf(*real, out=out_v, **kw)

        _enqueue(run, *ins, *results)
        return results[0] if self.nout == 1 else tuple(results)


UFUNCS: dict[str, ufunc] = {}
FUNCTIONS: dict[str, Any] = {}


def _init_ufuncs(names: Sequence[str]) -> None:
    for name in names:
        npf = getattr(np, name, None)
        if isinstance(npf, np.ufunc):
            UFUNCS[name] = ufunc(npf, name)
    # CuPy's names for NumPy's aliases (abs -> absolute, ...): the same object in CuPy too
    for alias, target in (("abs", "absolute"), ("conj", "conjugate"), ("divide", "true_divide"),
                          ("mod", "remainder"), ("pow", "power"), ("bitwise_not", "invert")):
        if target in UFUNCS:
            UFUNCS.setdefault(alias, UFUNCS[target])
    # NumPy's ufunc objects report their canonical names; map those to CuPy's
    for uf in list(UFUNCS.values()):
        UFUNCS.setdefault(uf._np.__name__, uf)


_make_binops()
