"""``ndarray.__dlpack__`` as CuPy 14 implements it.

Asked for its own device (the default), CuPy exports a DLPack tensor on the CUDA
device, which NumPy's ``from_dlpack`` then refuses with its own error: so here too a
real DLPack capsule with device type kDLCUDA is built (with ctypes), and NumPy
itself decides. Asked for the CPU (``dl_device=(1, 0)``), CuPy copies to the host.
"""

from __future__ import annotations

import collections
import ctypes
from typing import Any

import numpy as np

__all__ = ["export"]

_KDL_CPU, _KDL_CUDA = 1, 2
_DTYPE_CODES = {"i": 0, "u": 1, "f": 2, "c": 5, "b": 6}


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", _DLDevice),
        ("ndim", ctypes.c_int32),
        ("dtype", _DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


class _DLPackVersion(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32)]


class _DLManagedTensorVersioned(ctypes.Structure):
    pass


_DELETER_V = ctypes.CFUNCTYPE(None, ctypes.POINTER(_DLManagedTensorVersioned))
_DLManagedTensorVersioned._fields_ = [
    ("version", _DLPackVersion),
    ("manager_ctx", ctypes.c_void_p),
    ("deleter", _DELETER_V),
    ("flags", ctypes.c_uint64),
    ("dl_tensor", _DLTensor),
]


class _DLManagedTensor(ctypes.Structure):
    pass


_DELETER = ctypes.CFUNCTYPE(None, ctypes.POINTER(_DLManagedTensor))
_DLManagedTensor._fields_ = [
    ("dl_tensor", _DLTensor),
    ("manager_ctx", ctypes.c_void_p),
    ("deleter", _DELETER),
]

# The destructor gets the dying capsule as a raw pointer: turning it into a Python
# object (py_object) would revive it during its own deallocation.
_PyCapsule_New = ctypes.pythonapi.PyCapsule_New
_PyCapsule_New.restype = ctypes.py_object
_PyCapsule_New.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]

# What the capsules point to. No consumer in this process can use a CUDA tensor (NumPy
# refuses it, leaving the capsule unconsumed), so the most recent exports are kept and
# older ones dropped; a capsule destructor would run with NumPy's error pending.
_KEEP: collections.OrderedDict[int, Any] = collections.OrderedDict()
_KEEP_MAX = 256


def _drop(addr: int) -> None:
    _KEEP.pop(addr, None)


@_DELETER_V
def _deleter_v(ptr: Any) -> None:  # pragma: no cover - called by consumers
    _drop(ctypes.addressof(ptr.contents))


@_DELETER
def _deleter(ptr: Any) -> None:  # pragma: no cover - called by consumers
    _drop(ctypes.addressof(ptr.contents))


def _cuda_capsule(a: Any, versioned: bool) -> Any:
    dtype = a.dtype
    shape = (ctypes.c_int64 * max(a.ndim, 1))(*a.shape)
    strides = (ctypes.c_int64 * max(a.ndim, 1))(*(s // dtype.itemsize for s in a.strides))
    tensor = _DLTensor(
        data=a.data.ptr, device=_DLDevice(_KDL_CUDA, a._mem.device_id), ndim=a.ndim,
        dtype=_DLDataType(_DTYPE_CODES.get(dtype.kind, 0), dtype.itemsize * 8, 1),
        shape=shape, strides=strides, byte_offset=0,
    )
    if versioned:
        managed: Any = _DLManagedTensorVersioned(version=_DLPackVersion(1, 0), manager_ctx=None,
                                                 deleter=_deleter_v, flags=0, dl_tensor=tensor)
        name = b"dltensor_versioned"
    else:
        managed = _DLManagedTensor(dl_tensor=tensor, manager_ctx=None, deleter=_deleter)
        name = b"dltensor"
    addr = ctypes.addressof(managed)
    _KEEP[addr] = (managed, shape, strides, a)
    while len(_KEEP) > _KEEP_MAX:
        _KEEP.popitem(last=False)
    return _PyCapsule_New(addr, name, None)


def export(a: Any, *, stream: Any, max_version: Any, dl_device: Any, copy: Any) -> Any:
    """CuPy 14's ``__dlpack__`` decisions, then a capsule (see the module docstring)."""
    versioned = max_version is not None and max_version[0] >= 1
    if dl_device is None or tuple(dl_device) == a.__dlpack_device__():
        if copy is True:
            raise BufferError("copy=True only supported for copy to CPU.")
        return _cuda_capsule(a, versioned)
    if tuple(dl_device) == (_KDL_CPU, 0):
        if copy is False:
            raise ValueError("GPU memory cannot be exported to CPU without copy.")
        host = a.get()  # on the current stream, synchronised
        kw = {"max_version": max_version} if versioned else {}
        return np.ascontiguousarray(host).__dlpack__(**kw)
    raise BufferError("unsupported device requested.")
