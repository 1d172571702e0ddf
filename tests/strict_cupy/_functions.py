"""Module-level functions of the stand-in's ``cupy`` (what mlpx and its tests use).

Everything else CuPy 14 has is left to the whitelist (NotImplementedError naming it).
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from . import _cuda
from ._ndarray import FUNCTIONS, _empty, _enqueue, _is_scalar, _meta, _unsupported, host_to_device, lazy, ndarray
from ._cuda import get_compute_type, peer_check
from ._runtime import machine
from ._strict import API

_LINALG = API["modules"]["cupy._core._routines_linalg"]["values"]
_TF32 = _LINALG["COMPUTE_TYPE_TF32"]


def _register(fn: Any, name: str | None = None) -> Any:
    name = name or fn.__name__.lstrip("_")
    fn.__module__ = "cupy"
    fn.__qualname__ = fn.__name__ = name
    FUNCTIONS[name] = fn
    return fn


def _require_array(a: Any, what: str = "a") -> ndarray:
    if not isinstance(a, ndarray):
        raise TypeError(
            f"Argument '{what}' has incorrect type (expected cupy._core.core._ndarray_base, "
            f"got {type(a).__name__})"
        )
    return a


# ------------------------------------------------------------------ creation
def empty(shape: Any, dtype: Any = float, order: str = "C") -> ndarray:
    return _empty(shape, dtype, order)


def zeros(shape: Any, dtype: Any = float, order: str = "C") -> ndarray:
    res = _empty(shape, dtype, order)
    res.fill(0)
    return res


def ones(shape: Any, dtype: Any = float, order: str = "C") -> ndarray:
    res = _empty(shape, dtype, order)
    res.fill(1)
    return res


def full(shape: Any, fill_value: Any, dtype: Any = None, order: str = "C") -> ndarray:
    if dtype is None:
        dtype = fill_value.dtype if isinstance(fill_value, ndarray) else np.asarray(fill_value).dtype
    res = _empty(shape, dtype, order)
    res.fill(fill_value)
    return res


def _like(a: Any, dtype: Any, shape: Any) -> tuple[Any, Any]:
    _require_array(a)
    return (a.shape if shape is None else shape), (a.dtype if dtype is None else dtype)


def empty_like(a: Any, dtype: Any = None, order: str = "K", subok: Any = None, shape: Any = None) -> ndarray:
    shape, dtype = _like(a, dtype, shape)
    return _empty(shape, dtype)


def zeros_like(a: Any, dtype: Any = None, order: str = "K", subok: Any = None, shape: Any = None) -> ndarray:
    shape, dtype = _like(a, dtype, shape)
    return zeros(shape, dtype)


def ones_like(a: Any, dtype: Any = None, order: str = "K", subok: Any = None, shape: Any = None) -> ndarray:
    shape, dtype = _like(a, dtype, shape)
    return ones(shape, dtype)


def full_like(a: Any, fill_value: Any, dtype: Any = None, order: str = "K", subok: Any = None,
              shape: Any = None) -> ndarray:
    shape, dtype = _like(a, dtype, shape)
    return full(shape, fill_value, dtype)


def _from_host_values(values: np.ndarray) -> ndarray:
    return host_to_device(values)


def arange(start: Any, stop: Any = None, step: Any = 1, dtype: Any = None) -> ndarray:
    return _from_host_values(np.arange(start, stop, step, dtype=dtype) if stop is not None
                             else np.arange(start, dtype=dtype))


def linspace(start: Any, stop: Any, num: int = 50, endpoint: bool = True, retstep: bool = False,
             dtype: Any = None, axis: int = 0) -> Any:
    r = np.linspace(start, stop, num, endpoint=endpoint, retstep=retstep, dtype=dtype, axis=axis)
    return (_from_host_values(r[0]), r[1]) if retstep else _from_host_values(r)


def eye(N: int, M: Any = None, k: int = 0, dtype: Any = float, order: str = "C") -> ndarray:  # noqa: N803
    return _from_host_values(np.eye(N, M, k, dtype=dtype, order=order))


def identity(n: int, dtype: Any = float) -> ndarray:
    return _from_host_values(np.identity(n, dtype=dtype))


def array(obj: Any, dtype: Any = None, copy: bool = True, order: str = "K", subok: bool = False,
          ndmin: int = 0, *, blocking: bool = False) -> ndarray:
    if isinstance(obj, ndarray):
        if not copy and (dtype is None or np.dtype(dtype) == obj.dtype) and obj._mem.device_id == machine().current_device:
            res = obj
        else:
            # Across devices CuPy copies peer to peer on the current stream.
            res = _empty(obj.shape, obj.dtype if dtype is None else dtype, "F" if order == "F" else "C")
            res_v, src_v = res._v, obj._v
            _enqueue(lambda: np.copyto(res_v, src_v, casting="unsafe"), res, obj)
        while res.ndim < ndmin:
            res = res[None]
        return res
    if hasattr(obj, "__cuda_array_interface__"):
        return _from_cuda_array_interface(obj).astype(dtype or obj.__cuda_array_interface__["typestr"])
    return host_to_device(np.array(obj, dtype=dtype, ndmin=ndmin), order="C" if order in ("K", "A", None) else order)


def asarray(a: Any, dtype: Any = None, order: Any = None, *, blocking: bool = False) -> ndarray:
    if isinstance(a, ndarray):
        if dtype is None or np.dtype(dtype) == a.dtype:
            if order in (None, "K", "A") or (order == "C" and a.flags.c_contiguous) or (
                    order == "F" and a.flags.f_contiguous):
                return a
            return a.copy(order)
        return a.astype(dtype, order="K" if order is None else order)
    if hasattr(a, "__cuda_array_interface__"):
        res = _from_cuda_array_interface(a)
        return res if dtype is None else res.astype(dtype, copy=False)
    return host_to_device(np.asarray(a, dtype=dtype), order="C" if order in (None, "K", "A") else order)


def asanyarray(a: Any, dtype: Any = None, order: Any = None, *, blocking: bool = False) -> ndarray:
    return asarray(a, dtype, order, blocking=blocking)


def _from_cuda_array_interface(obj: Any) -> ndarray:
    """Zero-copy view of device memory described by ``__cuda_array_interface__``."""
    cai = obj.__cuda_array_interface__
    ptr = cai["data"][0]
    dtype = np.dtype(cai["typestr"])
    shape = tuple(cai["shape"])
    nbytes = int(np.prod(shape)) * dtype.itemsize
    found = machine().addresses.find(ptr, max(nbytes, 1))
    if found is None:
        raise ValueError(f"pointer 0x{ptr:x} is not device memory of the stand-in")
    mem, offset = found
    v = np.ndarray(shape, dtype=dtype, buffer=mem.buf, offset=offset, strides=cai.get("strides"))
    return ndarray._wrap(mem, v, None)


def ascontiguousarray(a: Any, dtype: Any = None) -> ndarray:
    _require_array(a)
    if a.flags.c_contiguous and (dtype is None or np.dtype(dtype) == a.dtype):
        return a
    return a.astype(a.dtype if dtype is None else dtype, order="C")


def copy(a: Any, order: str = "K") -> ndarray:
    return _require_array(a).copy("F" if order == "F" else "C")


def astype(x: Any, dtype: Any, /, *, copy: bool = True, device: Any = None) -> ndarray:  # noqa: A002
    _require_array(x, "x")
    if device is not None:
        raise NotImplementedError("cupy.astype(device=...) is not implemented by the stand-in")
    return x.astype(dtype, copy=copy)


def asnumpy(a: Any, stream: Any = None, order: str = "C", out: Any = None, *, blocking: bool = True) -> Any:
    if isinstance(a, ndarray):
        return a.get(stream=stream, order=order, out=out, blocking=blocking)
    if hasattr(a, "__cuda_array_interface__"):
        return array(a).get(stream=stream, order=order, out=out, blocking=blocking)
    temp = np.asarray(a, order=order)
    if out is not None:
        out[...] = temp
        return out
    return temp


def get_array_module(*args: Any) -> Any:
    from ._modules import namespace
    from ._sparse import spmatrix

    for a in args:
        if isinstance(a, (ndarray, spmatrix)):
            return namespace("cupy")
    return np


# ------------------------------------------------------------------ views
def _reshape_view(a: ndarray, newshape: Any, order: str) -> ndarray | None:
    try:
        v = np.reshape(a._v, newshape, order=order, copy=False)
    except ValueError:
        return None
    return a._view(v)


def reshape(a: Any, newshape: Any, order: str = "C") -> ndarray:
    _require_array(a)
    view = _reshape_view(a, newshape, order)
    if view is not None:
        return view
    shape = np.reshape(_meta(a), newshape, order=order).shape  # validates now
    res = _empty(shape, a.dtype)
    res_v, src_v = res._v, a._v
    _enqueue(lambda: np.copyto(res_v, np.reshape(src_v, shape, order=order)), res, a)
    return res


def ravel(a: Any, order: str = "C") -> ndarray:
    return reshape(a, (-1,), order)


def transpose(a: Any, axes: Any = None) -> ndarray:
    return _require_array(a)._view(np.transpose(a._v, axes))


def matrix_transpose(x: Any, /) -> ndarray:
    _require_array(x, "x")
    if x.ndim < 2:
        raise ValueError("x must be at least 2-dimensional for matrix_transpose")
    return x._view(np.swapaxes(x._v, -1, -2))


def swapaxes(a: Any, axis1: int, axis2: int) -> ndarray:
    return _require_array(a)._view(np.swapaxes(a._v, axis1, axis2))


def squeeze(a: Any, axis: Any = None) -> ndarray:
    return _require_array(a)._view(np.squeeze(a._v, axis))


def expand_dims(a: Any, axis: Any) -> ndarray:
    return _require_array(a)._view(np.expand_dims(a._v, axis))


def broadcast_to(array: Any, shape: Any) -> ndarray:
    return _require_array(array, "array")._view(np.broadcast_to(array._v, shape))


def shape(a: Any) -> tuple[int, ...]:
    return _require_array(a).shape


def ndim(a: Any) -> int:
    return _require_array(a).ndim


def size(a: Any, axis: Any = None) -> int:
    return _require_array(a).size if axis is None else a.shape[axis]


# ------------------------------------------------------------------ math
def _reduction(name: str, np_name: str | None = None) -> None:
    npf = getattr(np, np_name or name)

    def f(a: Any, axis: Any = None, dtype: Any = None, out: Any = None, keepdims: bool = False) -> ndarray:
        _require_array(a)
        kw: dict[str, Any] = {"axis": axis, "out": out, "keepdims": keepdims}
        if dtype is not None:
            kw["dtype"] = dtype
        return lazy(npf, a, **kw)

    f.__name__ = name
    _register(f, name)


for _n in ("sum", "prod", "mean", "nansum"):
    _reduction(_n)


def _reduction_nodtype(name: str, np_name: str | None = None) -> None:
    npf = getattr(np, np_name or name)

    def f(a: Any, axis: Any = None, out: Any = None, keepdims: bool = False) -> ndarray:
        _require_array(a)
        return lazy(npf, a, axis=axis, out=out, keepdims=keepdims)

    f.__name__ = name
    _register(f, name)


for _n, _np_n in (("max", "max"), ("amax", "max"), ("min", "min"), ("amin", "min"), ("all", "all"),
                  ("any", "any")):
    _reduction_nodtype(_n, _np_n)


def _argreduction(name: str) -> None:
    npf = getattr(np, name)

    def f(a: Any, axis: Any = None, dtype: Any = None, out: Any = None, keepdims: bool = False) -> ndarray:
        _require_array(a)
        if dtype is None:
            return lazy(npf, a, axis=axis, out=out, keepdims=keepdims)
        res = lazy(npf, a, axis=axis, keepdims=keepdims).astype(dtype, copy=False)
        if out is not None:
            out[...] = res
            return out
        return res

    _register(f, name)


_argreduction("argmax")
_argreduction("argmin")


def count_nonzero(a: Any, axis: Any = None) -> ndarray:
    return lazy(np.count_nonzero, _require_array(a), axis=axis)


def cumsum(a: Any, axis: Any = None, dtype: Any = None, out: Any = None) -> ndarray:
    return lazy(np.cumsum, _require_array(a), axis=axis, dtype=dtype, out=out)


def clip(a: Any, a_min: Any = None, a_max: Any = None, out: Any = None) -> ndarray:
    return lazy(np.clip, _require_array(a), a_min, a_max, out=out)


def around(a: Any, decimals: int = 0, out: Any = None) -> ndarray:
    return lazy(np.round, _require_array(a), decimals, out=out)


def where(condition: Any, x: Any = None, y: Any = None) -> Any:
    if x is None and y is None:
        return _require_array(condition, "condition").nonzero()
    if (x is None) != (y is None):
        raise ValueError("Must provide both 'x' and 'y' or neither.")
    return lazy(np.where, condition, x, y)


def nonzero(a: Any) -> tuple[ndarray, ...]:
    return _require_array(a).nonzero()


def take(a: Any, indices: Any, axis: Any = None, out: Any = None) -> ndarray:
    _require_array(a)
    if not isinstance(indices, ndarray):
        if isinstance(indices, (list, tuple, np.ndarray)):
            indices = host_to_device(np.asarray(indices))
        elif not _is_scalar(indices):
            raise _unsupported(indices)
    return lazy(np.take, a, indices, axis=axis, out=out, mode="wrap")  # CuPy wraps out-of-range indices


def concatenate(tup: Any, axis: Any = 0, out: Any = None, *, dtype: Any = None, casting: str = "same_kind") -> ndarray:
    return lazy(np.concatenate, tuple(tup), axis=axis, out=out, dtype=dtype, casting=casting)


def stack(tup: Any, axis: int = 0, out: Any = None, *, dtype: Any = None, casting: str = "same_kind") -> ndarray:
    return lazy(np.stack, tuple(tup), axis=axis, out=out, dtype=dtype, casting=casting)


def einsum(*operands: Any, **kwargs: Any) -> ndarray:
    kwargs.pop("optimize", None)
    return lazy(np.einsum, *operands, **kwargs)


def _tf32(x: np.ndarray) -> np.ndarray:
    """float32 values rounded to TF32 (10 explicit mantissa bits), as tensor cores read them."""
    bits = np.ascontiguousarray(x).view(np.uint32)
    rounded = (bits + np.uint32(0x0FFF) + ((bits >> np.uint32(13)) & np.uint32(1))) & np.uint32(0xFFFFE000)
    return rounded.view(np.float32).reshape(x.shape)


def _blas(npfunc: Any, a: Any, b: Any, out: Any, dtype: Any = None) -> ndarray:
    """A cuBLAS product: TF32 inputs when switched on for float32, float32 accumulation for
    half precision (cublasGemmEx's default), the result stored in the output dtype."""
    for x in (a, b):
        if not isinstance(x, ndarray):
            raise _unsupported(x) if isinstance(x, np.ndarray) else TypeError(
                f"Argument has incorrect type (expected cupy.ndarray, got {type(x).__name__})")
        peer_check(x._mem.device_id)
    if out is not None and not isinstance(out, ndarray):
        raise TypeError("Output arguments type must be cupy.ndarray")
    meta = npfunc(_meta(a), _meta(b))
    rdtype = np.dtype(dtype) if dtype is not None else np.asarray(meta).dtype
    if out is not None:
        peer_check(out._mem.device_id)
        if tuple(out.shape) != np.shape(meta):
            raise ValueError(f"Output array has wrong shape: {out.shape} (expected {np.shape(meta)})")
        res = out
    else:
        res = _empty(np.shape(meta), rdtype)
    tf32 = a.dtype == np.float32 and b.dtype == np.float32 and get_compute_type(np.float32) == _TF32
    a_v, b_v, res_v = a._v, b._v, res._v

    def run() -> None:
        x, y = a_v, b_v
        if tf32:
            x, y = _tf32(x), _tf32(y)
        if x.dtype.itemsize < 4 or y.dtype.itemsize < 4:
            x, y = x.astype(np.float32), y.astype(np.float32)
        np.copyto(res_v, npfunc(x, y), casting="unsafe")

    _enqueue(run, a, b, res)
    return res


def matmul(x1: Any, x2: Any, /, out: Any = None, casting: str = "same_kind", order: str = "K",
           dtype: Any = None, subok: bool = True, signature: Any = None, axes: Any = None,
           axis: Any = None) -> ndarray:
    return _blas(np.matmul, x1, x2, out, dtype)


def dot(a: Any, b: Any, out: Any = None) -> ndarray:
    return _blas(np.dot, a, b, out)


def copyto(dst: Any, src: Any, casting: str = "same_kind", where: Any = None) -> None:
    """CuPy's copyto: scalars, size-1 host arrays (as scalars) and device arrays."""
    _require_array(dst, "dst")
    if type(src) in (bool, int, float, complex):
        np.copyto(np.empty((), dtype=dst.dtype), src, casting=casting)
        src_dtype: Any = None
    elif isinstance(src, np.ndarray):
        if src.size != 1:
            raise ValueError("non-scalar numpy.ndarray cannot be used for copyto")
        if not np.can_cast(src, dst.dtype, casting):
            raise TypeError(f"Cannot cast {src.dtype} to {dst.dtype} in {casting} casting mode")
        src = src.squeeze()[()]
        src_dtype = None
    elif np.isscalar(src):
        if not np.can_cast(src, dst.dtype, casting):
            raise TypeError(f"Cannot cast {src} to {dst.dtype} in {casting} casting mode")
        src_dtype = None
    elif isinstance(src, ndarray):
        src_dtype = src.dtype
        if not np.can_cast(src_dtype, dst.dtype, casting):
            raise TypeError(f"Cannot cast {src_dtype} to {dst.dtype} in {casting} casting mode")
        if not all(s in (d, 1) for s, d in itertools.zip_longest(
                reversed(src.shape), reversed(dst.shape), fillvalue=1)):
            raise ValueError(f"could not broadcast input array from shape {src.shape} into shape {dst.shape}")
        peer_check(src._mem.device_id)
    else:
        raise _unsupported(src)
    peer_check(dst._mem.device_id)
    if where is not None:
        _require_array(where, "where")
        peer_check(where._mem.device_id)
    target = dst._v
    value = src._v if isinstance(src, ndarray) else src
    where_v = None if where is None else where._v

    def run() -> None:
        if where_v is None:
            np.copyto(target, value, casting="unsafe")
        else:
            np.copyto(target, value, casting="unsafe", where=where_v)

    _enqueue(run, dst, src, where)


def may_share_memory(a: Any, b: Any, max_work: Any = None) -> bool:
    return isinstance(a, ndarray) and isinstance(b, ndarray) and a._mem is b._mem and bool(
        np.may_share_memory(a._v, b._v))


def shares_memory(a: Any, b: Any, max_work: Any = None) -> bool:
    return may_share_memory(a, b)


def result_type(*arrays_and_dtypes: Any) -> np.dtype:
    return np.result_type(*(x.dtype if isinstance(x, ndarray) else x for x in arrays_and_dtypes))


def can_cast(from_: Any, to: Any, casting: str = "safe") -> bool:
    return bool(np.can_cast(from_.dtype if isinstance(from_, ndarray) else from_, to, casting))


def isscalar(element: Any) -> bool:
    return np.isscalar(element)


def unique(ar: Any, return_index: bool = False, return_inverse: bool = False, return_counts: bool = False,
           axis: Any = None, *, equal_nan: bool = True) -> Any:
    _require_array(ar, "ar")
    from ._ndarray import synchronize_current

    synchronize_current()  # the result's length depends on the data: CuPy synchronises
    r = np.unique(ar._v, return_index=return_index, return_inverse=return_inverse,
                  return_counts=return_counts, axis=axis)
    return tuple(host_to_device(x) for x in r) if isinstance(r, tuple) else host_to_device(r)


def get_default_memory_pool() -> _cuda.MemoryPool:
    return _cuda.get_default_memory_pool()


def get_default_pinned_memory_pool() -> _cuda.PinnedMemoryPool:
    return _cuda.get_default_pinned_memory_pool()


def is_available() -> bool:
    return machine().config.n_devices > 0


for _f in (empty, zeros, ones, full, empty_like, zeros_like, ones_like, full_like, arange, linspace, eye,
           identity, array, asarray, asanyarray, ascontiguousarray, copy, astype, asnumpy, get_array_module,
           reshape, ravel, transpose, matrix_transpose, swapaxes, squeeze, expand_dims, broadcast_to, shape,
           ndim, size, count_nonzero, cumsum, clip, around, where, nonzero, take, concatenate, stack, einsum,
           matmul, dot, copyto, may_share_memory, shares_memory, result_type, can_cast, isscalar, unique,
           get_default_memory_pool, get_default_pinned_memory_pool, is_available):
    _register(_f, _f.__name__)
FUNCTIONS["round"] = FUNCTIONS["around"]
