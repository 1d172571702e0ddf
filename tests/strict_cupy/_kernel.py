"""``cupy.ElementwiseKernel`` of the stand-in: the kernel's CUDA source, run for real.

CuPy turns ``in_params``, ``out_params``, ``operation`` and ``preamble`` into a CUDA
kernel: ``typedef``s for the type placeholders (from the argument dtypes), the
preamble, then a loop over the broadcast index space where each elementwise
parameter is a reference to its element (``const`` for inputs), each ``raw``
parameter the whole array, and scalars arrive cast to their parameter's type.

Here the same pieces become a C++ function, compiled with ``g++`` (cached on disk by
the hash of the source) and called through ``ctypes`` when the launch runs on its
stream. ``__device__`` and friends are defined away and the CUDA math functions are
those of ``<cmath>``. float16 and bfloat16 are classes shaped like CuPy's own
(``cupy/float16.cuh``, ``cupy/bfloat16.cuh``): 16-bit storage, an implicit
conversion to and from float, explicit ones from other types, arithmetic through
float with the result rounded when stored; float16 has compound assignment,
bfloat16 has not (as in CuPy, so ``bfloat16 += float`` fails to compile here too).
A kernel that does not compile raises :class:`CompileException`; nothing falls back
to a Python reimplementation.

Argument handling follows ``cupy/_core/_kernel.pyx`` (``ElementwiseKernel.__call__``):
the parameter syntax, type resolution and its ``TypeError`` messages, broadcasting of
the non-raw arrays, output allocation, ``size=``.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

from . import _cuda
from ._ndarray import _empty, _is_scalar, _unsupported, ndarray, touch
from ._strict import StrictObject

__all__ = ["CompileException", "ElementwiseKernel", "cache_dir"]


class CompileException(Exception):
    """``cupy.cuda.compiler.CompileException``: the kernel source did not compile."""


CompileException.__module__ = "cupy.cuda.compiler"

try:
    import ml_dtypes

    _BF16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover
    _BF16 = None

_CTYPES = {
    "float64": "double", "float32": "float", "float16": "float16", "bfloat16": "bfloat16",
    "int64": "long long", "int32": "int", "int16": "short", "int8": "signed char",
    "uint64": "unsigned long long", "uint32": "unsigned int", "uint16": "unsigned short",
    "uint8": "unsigned char", "bool": "bool",
}


def _ctype(dtype: np.dtype) -> str:
    try:
        return _CTYPES[dtype.name]
    except KeyError:
        raise TypeError(f"Unable to find C++ type for dtype {dtype}") from None


def cache_dir() -> Path:
    """Where compiled kernels are kept (``$MLPX_STRICT_CUPY_CACHE`` or ~/.cache/mlpx-strict-cupy)."""
    path = os.environ.get("MLPX_STRICT_CUPY_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "mlpx-strict-cupy")
    Path(path).mkdir(parents=True, exist_ok=True)
    return Path(path)


# --------------------------------------------------------------- parameters
class _Param:
    """One parameter, parsed as CuPy's ``ParameterInfo``."""

    def __init__(self, text: str, is_const: bool) -> None:
        s = text.split()
        if len(s) < 2:
            raise Exception(f"Syntax error: {text}")
        t, self.name = s[-2:]
        self.raw = False
        self.is_const = is_const
        self.dtype: np.dtype | None = None
        self.ctype: str | None = None
        if t == "CIndexer":
            pass
        elif len(t) == 1:
            self.ctype = t  # a type placeholder
        else:
            self.dtype = np.dtype(t)
            self.ctype = _ctype(self.dtype)
        for word in s[:-2]:
            if word == "raw":
                self.raw = True
            elif word == "_non_const":
                self.is_const = False
            else:
                raise Exception(f'Unknown keyword "{word}"')


def _params(text: str, is_const: bool) -> tuple[_Param, ...]:
    if not text.strip():
        return ()
    return tuple(_Param(p, is_const) for p in text.strip().split(","))


def _decide_types(in_params: tuple[_Param, ...], out_params: tuple[_Param, ...],
                  in_dtypes: tuple[Any, ...], out_dtypes: tuple[Any, ...]) -> tuple[Any, Any, dict[str, np.dtype]]:
    """CuPy's ``_decide_params_type_core``: placeholder -> dtype, with its errors."""
    types: dict[str, np.dtype] = {}
    for p, a in zip(out_params, out_dtypes):
        if p.dtype is not None:
            if np.dtype(a) != p.dtype:
                raise TypeError(f"Type is mismatched. {p.name} {a} {p.dtype}")
        elif p.ctype in types:
            if types[p.ctype] != np.dtype(a):
                raise TypeError(f"Type is mismatched. {p.name} {a} {types[p.ctype]} {p.ctype}")
        else:
            types[p.ctype] = np.dtype(a)
    for p, a in zip(in_params, in_dtypes):
        if a is None:
            continue
        if p.dtype is not None:
            if np.dtype(a) != p.dtype:
                raise TypeError(f"Type is mismatched. {p.name} {a} {p.dtype}")
        elif p.ctype in types:
            if types[p.ctype] != np.dtype(a):
                raise TypeError(f"Type is mismatched. {p.name} {a} {types[p.ctype]} {p.ctype}")
        else:
            types[p.ctype] = np.dtype(a)
    try:
        in_types = tuple(types[p.ctype] if p.dtype is None else p.dtype for p in in_params)
        out_types = tuple(types[p.ctype] if p.dtype is None else p.dtype for p in out_params)
    except KeyError as exc:  # a placeholder only scalars use: CuPy fails the same way
        raise KeyError(exc.args[0]) from None
    return in_types, out_types, types


# ------------------------------------------------------------------ C++ code
_PRELUDE = r"""
#include <cmath>
#include <cstdint>
#include <cstddef>
#include <cstring>
#include <limits>
#include <type_traits>
#include <algorithm>
using namespace std;
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __restrict__
#define CUDART_INF_F std::numeric_limits<float>::infinity()
#define CUDART_INF std::numeric_limits<double>::infinity()
#define CUDART_NAN_F std::numeric_limits<float>::quiet_NaN()
#define CUDART_NAN std::numeric_limits<double>::quiet_NaN()
#define CUDART_PI_F 3.141592654f
#define CUDART_PI 3.1415926535897931e+0

// CUDA's non-template min/max overloads (std's templates need equal argument types).
inline int max(int a, int b) { return a > b ? a : b; }
inline int min(int a, int b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline unsigned int max(unsigned int a, unsigned int b) { return a > b ? a : b; }
inline unsigned int min(unsigned int a, unsigned int b) { return a < b ? a : b; }
inline float max(float a, float b) { return fmaxf(a, b); }
inline float min(float a, float b) { return fminf(a, b); }
inline double max(double a, double b) { return fmax(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(float a, double b) { return fmax((double)a, b); }
inline double max(double a, float b) { return fmax(a, (double)b); }
inline double min(float a, double b) { return fmin((double)a, b); }
inline double min(double a, float b) { return fmin(a, (double)b); }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __fdividef(float a, float b) { return a / b; }

// IEEE binary16 and bfloat16 from and to float, rounding to nearest even.
static inline unsigned short sc_f32_to_f16(float f) {
    uint32_t x; memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u, mag = x & 0x7fffffffu;
    if (mag > 0x7f800000u) return (unsigned short)(sign | 0x7e00u);           // NaN
    if (mag >= 0x477ff000u) return (unsigned short)(sign | 0x7c00u);          // inf, or rounds to it
    if (mag < 0x38800000u) {                                                  // subnormal or zero
        if (mag < 0x33000000u) return (unsigned short)sign;
        uint32_t e = mag >> 23, m = (mag & 0x7fffffu) | 0x800000u, shift = 126 - e;
        uint32_t h = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (h & 1u))) ++h;
        return (unsigned short)(sign | h);
    }
    uint32_t h = ((mag - 0x38000000u) >> 13), rem = mag & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
    return (unsigned short)(sign | h);
}
static inline float sc_f16_to_f32(unsigned short h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu, x;
    if (e == 0) {
        if (m == 0) { x = sign; }
        else { float f = ldexpf((float)m, -24); memcpy(&x, &f, 4); x |= sign; }
    } else if (e == 31) { x = sign | 0x7f800000u | (m << 13); }
    else { x = sign | ((e + 112u) << 23) | (m << 13); }
    float f; memcpy(&f, &x, 4); return f;
}
static inline unsigned short sc_f32_to_bf16(float f) {
    uint32_t x; memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((x >> 16) | 0x40u);
    x += 0x7fffu + ((x >> 16) & 1u);
    return (unsigned short)(x >> 16);
}
static inline float sc_bf16_to_f32(unsigned short b) {
    uint32_t x = (uint32_t)b << 16; float f; memcpy(&f, &x, 4); return f;
}

class bfloat16;
class float16 {
    unsigned short bits_;
public:
    float16() {}
    float16(float v) : bits_(sc_f32_to_f16(v)) {}
    explicit float16(bool v) : bits_(sc_f32_to_f16(float(v))) {}
    explicit float16(double v) : bits_(sc_f32_to_f16(float(v))) {}
    explicit float16(int v) : bits_(sc_f32_to_f16(float(v))) {}
    explicit float16(unsigned int v) : bits_(sc_f32_to_f16(float(v))) {}
    explicit float16(long long v) : bits_(sc_f32_to_f16(float(v))) {}
    explicit float16(unsigned long long v) : bits_(sc_f32_to_f16(float(v))) {}
    template <typename U, typename = typename std::enable_if<std::is_same<U, bfloat16>::value>::type>
    explicit float16(U v) : bits_(sc_f32_to_f16(float(v))) {}
    operator float() const { return sc_f16_to_f32(bits_); }
    float16& operator=(const float16&) = default;
    template <typename U> float16& operator=(const U& rhs) { *this = static_cast<float16>(rhs); return *this; }
    template <typename U> float16& operator+=(const U& rhs) { *this = *this + rhs; return *this; }
    template <typename U> float16& operator-=(const U& rhs) { *this = *this - rhs; return *this; }
    template <typename U> float16& operator*=(const U& rhs) { *this = *this * rhs; return *this; }
    template <typename U> float16& operator/=(const U& rhs) { *this = *this / rhs; return *this; }
    unsigned short to_bits() const { return bits_; }
    int isnan() const { return (bits_ & 0x7c00u) == 0x7c00u && (bits_ & 0x03ffu) != 0; }
    int isinf() const { return (bits_ & 0x7fffu) == 0x7c00u; }
    int isfinite() const { return (bits_ & 0x7c00u) != 0x7c00u; }
    int iszero() const { return (bits_ & 0x7fffu) == 0; }
    int signbit() const { return (bits_ & 0x8000u) != 0; }
};
class bfloat16 {
    unsigned short bits_;
public:
    bfloat16() : bits_(0) {}
    bfloat16(float v) : bits_(sc_f32_to_bf16(v)) {}
    explicit bfloat16(bool v) : bits_(sc_f32_to_bf16(float(v))) {}
    explicit bfloat16(double v) : bits_(sc_f32_to_bf16(float(v))) {}
    explicit bfloat16(int v) : bits_(sc_f32_to_bf16(float(v))) {}
    explicit bfloat16(unsigned int v) : bits_(sc_f32_to_bf16(float(v))) {}
    explicit bfloat16(long long v) : bits_(sc_f32_to_bf16(float(v))) {}
    explicit bfloat16(unsigned long long v) : bits_(sc_f32_to_bf16(float(v))) {}
    explicit bfloat16(float16 v) : bits_(sc_f32_to_bf16(float(v))) {}
    operator float() const { return sc_bf16_to_f32(bits_); }
    bfloat16& operator=(const bfloat16&) = default;
    template <typename U> bfloat16& operator=(const U& rhs) { *this = static_cast<bfloat16>(rhs); return *this; }
    unsigned short to_bits() const { return bits_; }
    int isnan() const { return (bits_ & 0x7f80u) == 0x7f80u && (bits_ & 0x7fu) != 0; }
    int isinf() const { return (bits_ & 0x7fffu) == 0x7f80u; }
    int isfinite() const { return (bits_ & 0x7f80u) != 0x7f80u; }
    int iszero() const { return (bits_ & 0x7fffu) == 0; }
};
inline float16 min(float16 x, float16 y) { return float16(min(float(x), float(y))); }
inline float16 max(float16 x, float16 y) { return float16(max(float(x), float(y))); }
inline float16 fmin(float16 x, float16 y) { return float16(fminf(float(x), float(y))); }
inline float16 fmax(float16 x, float16 y) { return float16(fmaxf(float(x), float(y))); }
inline int isnan(float16 x) { return x.isnan(); }
inline int isinf(float16 x) { return x.isinf(); }
inline int isfinite(float16 x) { return x.isfinite(); }
inline bfloat16 min(bfloat16 x, bfloat16 y) { return bfloat16(min(float(x), float(y))); }
inline bfloat16 max(bfloat16 x, bfloat16 y) { return bfloat16(max(float(x), float(y))); }
inline bfloat16 fmin(bfloat16 x, bfloat16 y) { return bfloat16(fminf(float(x), float(y))); }
inline bfloat16 fmax(bfloat16 x, bfloat16 y) { return bfloat16(fmaxf(float(x), float(y))); }
inline int isnan(bfloat16 x) { return x.isnan(); }
inline int isinf(bfloat16 x) { return x.isinf(); }
inline int isfinite(bfloat16 x) { return x.isfinite(); }

// A raw parameter: the whole array, indexed by the element's row-major position.
template <typename U> struct sc_raw {
    U* p; ptrdiff_t n;
    U& operator[](ptrdiff_t k) const { return p[k]; }
    ptrdiff_t size() const { return n; }
};
struct sc_indexer { ptrdiff_t n; ptrdiff_t size() const { return n; } };
"""


def _source(name: str, params: tuple[_Param, ...], kinds: tuple[str, ...], types: dict[str, np.dtype],
            arg_ctypes: tuple[str, ...], operation: str, preamble: str, loop_prep: str, after_loop: str) -> str:
    """The C++ translation unit of one kernel instance.

    ``kinds[k]`` is "array" (elementwise), "raw" or "scalar" for parameter ``k``;
    ``arg_ctypes[k]`` its resolved C type.
    """
    typedefs = "".join(f"typedef {_ctype(dt)} {ph};\n" for ph, dt in sorted(types.items()))
    head, loop_refs = [], []
    n_arrays = 0
    for k, (p, kind, ct) in enumerate(zip(params, kinds, arg_ctypes)):
        const = "const " if p.is_const else ""
        if kind == "scalar":
            head.append(f"    {const}{ct} {p.name} = *(const {ct}*)sc_args[{k}];")
        elif kind == "raw":
            head.append(f"    {const}sc_raw<{const}{ct}> {p.name} = {{({const}{ct}*)sc_args[{k}], sc_sizes[{k}]}};")
        else:
            loop_refs.append(
                f"        {const}{ct} &{p.name} = *({const}{ct}*)((char*)sc_args[{k}] + sc_off[{n_arrays}]);"
            )
            n_arrays += 1
    body = "\n".join(loop_refs)
    return f"""{_PRELUDE}
{typedefs}
{preamble}
extern "C" void sc_{name}(ptrdiff_t sc_n, int sc_ndim, const ptrdiff_t* sc_shape, void* const* sc_args,
                         const ptrdiff_t* sc_strides, const ptrdiff_t* sc_sizes) {{
{chr(10).join(head)}
    sc_indexer _ind = {{sc_n}};
    (void)_ind;
    {loop_prep};
    for (ptrdiff_t i = 0; i < sc_n; ++i) {{
        ptrdiff_t sc_off[{max(n_arrays, 1)}] = {{0}};
        ptrdiff_t sc_rem = i;
        for (int d = sc_ndim - 1; d >= 0; --d) {{
            ptrdiff_t c = sc_rem % sc_shape[d];
            sc_rem /= sc_shape[d];
            for (int a = 0; a < {n_arrays}; ++a) sc_off[a] += c * sc_strides[a * sc_ndim + d];
        }}
{body}
        {operation};
    }}
    {after_loop};
}}
"""


_LOCK = threading.Lock()
_LOADED: dict[str, Any] = {}


def _compile(source: str, name: str) -> Any:
    """The C function of ``source`` (g++, cached in memory and on disk by source hash)."""
    key = hashlib.sha256(source.encode()).hexdigest()[:24]
    with _LOCK:
        fn = _LOADED.get(key)
        if fn is not None:
            return fn
        lib_path = cache_dir() / f"{name}-{key}.so"
        if not lib_path.exists():
            with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
                src = Path(tmp) / "kernel.cpp"
                src.write_text(source)
                out = Path(tmp) / "kernel.so"
                cmd = ["g++", "-std=c++17", "-O1", "-shared", "-fPIC", "-ffp-contract=off", "-w", "-o", str(out), str(src)]
                try:
                    proc = subprocess.run(cmd, capture_output=True, text=True)
                except FileNotFoundError:
                    raise RuntimeError(
                        "the strict CuPy stand-in runs ElementwiseKernels through g++, which is not "
                        "installed here (apt-get install g++)"
                    ) from None
                if proc.returncode != 0:
                    numbered = "\n".join(f"{i + 1:4d}  {line}" for i, line in enumerate(source.splitlines()))
                    raise CompileException(
                        f"strict CuPy stand-in: kernel {name!r} does not compile (its CUDA source, "
                        f"translated to C++ for g++):\n{proc.stderr}\n{numbered}"
                    )
                os.replace(out, lib_path)
        lib = ctypes.CDLL(str(lib_path))
        fn = getattr(lib, f"sc_{name}")
        fn.restype = None
        fn.argtypes = [ctypes.c_ssize_t, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                       ctypes.c_void_p]
        _LOADED[key] = fn
        return fn


_VALID_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ElementwiseKernel(StrictObject):
    """``cupy.ElementwiseKernel`` (see the module docstring)."""

    _cupy_name = "cupy.ElementwiseKernel"
    __slots__ = ("in_params", "out_params", "nin", "nout", "nargs", "params", "operation", "name",
                 "preamble", "no_return", "return_tuple", "kwargs", "reduce_dims", "__name__")

    def __init__(self, in_params: str, out_params: str, operation: str, name: str = "kernel",
                 reduce_dims: bool = True, preamble: str = "", no_return: bool = False,
                 return_tuple: bool = False, **kwargs: Any) -> None:
        if not _VALID_NAME.match(name):
            raise ValueError(f'Invalid kernel name: "{name}"')
        self.in_params = _params(in_params, True)
        self.out_params = _params(out_params, False)
        self.nin, self.nout = len(self.in_params), len(self.out_params)
        self.nargs = self.nin + self.nout
        self.params = self.in_params + self.out_params
        self.operation, self.name, self.preamble = operation, name, preamble
        self.no_return, self.return_tuple, self.kwargs = no_return, return_tuple, kwargs
        self.reduce_dims = reduce_dims
        self.__name__ = name
        if "i" in [p.name for p in self.params]:
            raise ValueError("Can not use 'i' as a parameter name")
        unknown = set(kwargs) - {"options", "loop_prep", "after_loop"}
        if unknown:
            raise TypeError(f"ElementwiseKernel got unexpected keyword arguments {sorted(unknown)}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        size = kwargs.pop("size", -1)
        stream = kwargs.pop("stream", None)
        block_size = kwargs.pop("block_size", 128)
        if kwargs:
            raise TypeError(f"Wrong arguments {kwargs}")
        if block_size <= 0:
            raise ValueError("block_size must be greater than zero")
        if len(args) not in (self.nin, self.nargs):
            raise TypeError(
                f"Wrong number of arguments for {self.name!r}. It must be either {self.nin} or "
                f"{self.nargs} (with outputs), but given {len(args)}."
            )
        for a in args:
            if isinstance(a, ndarray):
                _cuda.peer_check(a._mem.device_id)
            elif not _is_scalar(a):
                raise _unsupported(a)
        ins, outs = list(args[: self.nin]), list(args[self.nin:])
        nonraw = [a for a, p in zip(args, self.params) if isinstance(a, ndarray) and not p.raw]
        if size != -1:
            if nonraw:
                raise ValueError("Specified 'size' can be used only if all of the ndarray are 'raw'.")
            shape: tuple[int, ...] = (int(size),)
        else:
            if not nonraw:
                raise ValueError("Loop size is undecided.")
            shape = np.broadcast_shapes(*(a.shape for a in nonraw))
        in_dtypes = tuple(a.dtype if isinstance(a, ndarray) else None for a in ins)
        out_dtypes = tuple(a.dtype for a in outs)
        for a in outs:
            if not isinstance(a, ndarray):
                raise TypeError("Output arguments must be cupy.ndarray")
        in_types, out_types, types = _decide_types(self.in_params, self.out_params, in_dtypes, out_dtypes)
        if not outs:
            for p in self.out_params:
                if p.raw and size == -1:
                    raise ValueError("Output array size is Undecided")
            outs = [_empty(shape, t) for t in out_types]
        else:
            for p, a in zip(self.out_params, outs):
                if not p.raw and a.shape != shape:
                    raise ValueError("Out shape is mismatched")
        ret = None if self.no_return else (outs[0] if self.nout == 1 and not self.return_tuple else tuple(outs))
        if 0 in shape:
            return ret
        with np.errstate(all="ignore"):  # CuPy casts scalars to the parameter type as assignment does
            scalars = [np.array(a, dtype=t) if not isinstance(a, ndarray) else None for a, t in zip(ins, in_types)]
        all_args = ins + outs
        kinds = tuple("scalar" if not isinstance(a, ndarray) else ("raw" if p.raw else "array")
                      for a, p in zip(all_args, self.params))
        arg_ctypes = tuple(_ctype(t) for t in in_types + out_types)
        source = _source(self.name, self.params, kinds, types, arg_ctypes, self.operation, self.preamble,
                         self.kwargs.get("loop_prep", ""), self.kwargs.get("after_loop", ""))
        fn = _compile(source, self.name)  # compile errors surface at the launch, as with NVRTC
        launch = _Launch(fn, shape, all_args, kinds, scalars)
        q = _cuda.current_queue(stream)
        touch(all_args, q, q.enqueue(launch))
        return ret


class _Launch:
    """One queued kernel launch: pointers and strides are taken when it runs."""

    def __init__(self, fn: Any, shape: tuple[int, ...], args: list[Any], kinds: tuple[str, ...],
                 scalars: list[Any]) -> None:
        # device views only: the arrays themselves may be freed before the launch runs
        self.fn, self.shape, self.kinds, self.scalars = fn, shape, kinds, scalars
        self.args = [a._v if kind != "scalar" else None for a, kind in zip(args, kinds)]

    def __call__(self) -> None:
        shape = self.shape
        ndim = len(shape)
        n = int(np.prod(shape, dtype=np.int64))
        ptrs, strides, sizes, writeback, keep = [], [], [], [], []
        for k, (a, kind) in enumerate(zip(self.args, self.kinds)):
            if kind == "scalar":
                buf = self.scalars[k]
                keep.append(buf)
                ptrs.append(buf.ctypes.data)
                sizes.append(1)
            elif kind == "raw":
                v = a
                if not v.flags.c_contiguous:
                    tmp = np.ascontiguousarray(v)
                    writeback.append((v, tmp))
                    v = tmp
                keep.append(v)
                ptrs.append(v.ctypes.data)
                sizes.append(v.size)
            else:
                v = np.broadcast_to(a, shape) if a.shape != shape else a
                keep.append(v)
                ptrs.append(v.ctypes.data)
                strides.extend(v.strides)
                sizes.append(v.size)
        c_shape = (ctypes.c_ssize_t * max(ndim, 1))(*shape)
        c_ptrs = (ctypes.c_void_p * len(ptrs))(*ptrs)
        c_strides = (ctypes.c_ssize_t * max(len(strides), 1))(*strides)
        c_sizes = (ctypes.c_ssize_t * len(sizes))(*sizes)
        self.fn(n, ndim, ctypes.cast(c_shape, ctypes.c_void_p), ctypes.cast(c_ptrs, ctypes.c_void_p),
                ctypes.cast(c_strides, ctypes.c_void_p), ctypes.cast(c_sizes, ctypes.c_void_p))
        for dst, tmp in writeback:
            np.copyto(dst, tmp)
