"""CPU matrix-product providers: NumPy's BLAS, and optional alternatives from PyPI.

The CPU backend's ``gemm`` calls one provider for every product of a process:

========  =====================================================  ==================
name      what runs the product                                  install
========  =====================================================  ==================
numpy     ``numpy.matmul`` on the BLAS NumPy was built with       always present
          (OpenBLAS in the PyPI wheels)
mkl       Intel oneMKL's ``cblas_?gemm`` through ctypes           ``pip install mkl``
blis      the BLIS library of the ``blis`` package (thinc's),     ``pip install blis``
          float32 only (float64 goes to NumPy)
========  =====================================================  ==================

Pick one with ``get_backend("cpu:mkl")``, ``NumpyBackend(blas="mkl")`` or the
environment variable ``MLPX_CPU_BLAS=mkl`` (read when the default CPU backend is
first built). NumPy is the default: it was the fastest on the machine the project is
benchmarked on (``python -m benchmarks --only gemm`` measures every installed provider
on the products of an MLP step, so run it to decide on yours).

One provider per process, never one per shape: each library keeps its own pool of
worker threads that spin for a while after a product, and alternating libraries
makes the two pools fight over the cores (benchmarks/README.md has the measurement).

Every provider computes ``op(A) @ op(B)`` into a preallocated ``out``; a product a
provider cannot take as it is (a dtype other than float32/float64, strided rows,
operands overlapping ``out``) goes to ``numpy.matmul``, so a provider never changes
what is computed, only how fast.
"""

from __future__ import annotations

import ctypes
import glob
import os
import sys
from typing import Any, Callable, NamedTuple

import numpy as np

from .base import BackendUnavailableError

__all__ = ["BLAS_PROVIDERS", "NumpyCblas", "available_providers", "installed_providers", "load_provider",
           "numpy_cblas", "numpy_gemm", "provider_version"]

#: The libraries the CPU backend can compute its products with (``backend="cpu:<name>"``).
BLAS_PROVIDERS = ("numpy", "mkl", "blis")

#: gemm(a, b, trans_a, trans_b, out) -> out, with out preallocated (m, n).
GemmFn = Callable[[np.ndarray, np.ndarray, bool, bool, np.ndarray | None], np.ndarray]


def numpy_gemm(a: np.ndarray, b: np.ndarray, trans_a: bool, trans_b: bool, out: np.ndarray | None) -> np.ndarray:
    """Compute ``op(a) @ op(b)`` by ``numpy.matmul``: transposed views reach BLAS as flags, not copies.

    Parameters
    ----------
    a : ndarray, shape (m, k), or (k, m) if ``trans_a``
        The left operand.
    b : ndarray, shape (k, n), or (n, k) if ``trans_b``
        The right operand.
    trans_a, trans_b : bool
        Whether to transpose ``a`` or ``b``.
    out : ndarray, shape (m, n), or None
        Where to write the product.

    Returns
    -------
    ndarray, shape (m, n)
        ``out`` when given, else a new array.
    """
    return np.matmul(a.T if trans_a else a, b.T if trans_b else b, out=out)


def _blas_ready(a: np.ndarray, b: np.ndarray, out: np.ndarray | None) -> bool:
    """True when a row-major BLAS call can take the operands as they are.

    Needs one float dtype (float32 or float64) throughout, unit stride along rows
    (the row stride becomes the leading dimension), a C-contiguous ``out`` and no
    overlap between ``out`` and the inputs (BLAS, unlike ``numpy.matmul``, does not
    guard against it).
    """
    if out is None or a.dtype not in (np.float32, np.float64):
        return False
    if b.dtype != a.dtype or out.dtype != a.dtype or not out.flags.c_contiguous:
        return False
    for x in (a, b):
        if x.ndim != 2 or x.strides[1] != x.itemsize or x.strides[0] < x.shape[1] * x.itemsize:
            return False
    return not (np.may_share_memory(out, a) or np.may_share_memory(out, b))


def _dims(a: np.ndarray, b: np.ndarray, trans_a: bool, trans_b: bool, out: np.ndarray) -> tuple[int, int, int] | None:
    """(m, n, k) of ``op(a) @ op(b)``, or None when the shapes disagree with each other or ``out``."""
    m, k = (a.shape[1], a.shape[0]) if trans_a else a.shape
    kb, n = (b.shape[1], b.shape[0]) if trans_b else b.shape
    return (m, n, k) if kb == k and out.shape == (m, n) else None


def _mkl_files() -> list[str]:
    """libmkl_rt files where the ``mkl`` wheel (or conda) installs them: ``<prefix>/lib``."""
    names: list[str] = []
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix, os.environ.get("CONDA_PREFIX") or sys.prefix)):
        names += sorted(glob.glob(os.path.join(prefix, "lib", "libmkl_rt.so*")), reverse=True)
    return names


def _mkl_library() -> ctypes.CDLL:
    """oneMKL's single dynamic library."""
    names = _mkl_files() + ["libmkl_rt.so.2", "libmkl_rt.so"]  # or on the loader's path (a system install)
    for name in names:
        try:
            # RTLD_GLOBAL: libmkl_rt loads its threading and core libraries itself and
            # they look its symbols up globally.
            return ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
        except OSError:
            continue
    raise BackendUnavailableError(
        "the 'mkl' CPU BLAS needs Intel oneMKL's libmkl_rt: pip install mkl"
    )


def _mkl_gemm() -> GemmFn:
    lib = _mkl_library()
    i, vp = ctypes.c_int, ctypes.c_void_p
    sgemm, dgemm = lib.cblas_sgemm, lib.cblas_dgemm
    sgemm.argtypes = [i] * 6 + [ctypes.c_float, vp, i, vp, i, ctypes.c_float, vp, i]
    dgemm.argtypes = [i] * 6 + [ctypes.c_double, vp, i, vp, i, ctypes.c_double, vp, i]
    sgemm.restype = dgemm.restype = None
    row_major, no_trans, trans = 101, 111, 112  # CBLAS enum values

    def gemm(a: np.ndarray, b: np.ndarray, trans_a: bool, trans_b: bool, out: np.ndarray | None) -> np.ndarray:
        dims = _dims(a, b, trans_a, trans_b, out) if out is not None and _blas_ready(a, b, out) else None
        if dims is None or out is None:  # includes bad shapes: NumPy raises its usual error
            return numpy_gemm(a, b, trans_a, trans_b, out)
        m, n, k = dims
        fn = sgemm if a.dtype == np.float32 else dgemm
        fn(row_major, trans if trans_a else no_trans, trans if trans_b else no_trans, m, n, k, 1.0,
           a.ctypes.data, a.strides[0] // a.itemsize, b.ctypes.data, b.strides[0] // b.itemsize,
           0.0, out.ctypes.data, n)
        return out

    return gemm


def _blis_gemm() -> GemmFn:
    try:
        import blis.py as blis_py
    except ImportError:
        raise BackendUnavailableError("the 'blis' CPU BLAS needs the blis package: pip install blis") from None

    def gemm(a: np.ndarray, b: np.ndarray, trans_a: bool, trans_b: bool, out: np.ndarray | None) -> np.ndarray:
        # blis.py.gemm takes C-contiguous operands and transpose flags. Only float32:
        # its float64 branch (blis 1.3) sizes the product from the untransposed shapes,
        # and neither branch checks ``out``'s shape, so both are checked here.
        if not (out is not None and _blas_ready(a, b, out) and a.dtype == np.float32 and a.flags.c_contiguous
                and b.flags.c_contiguous and _dims(a, b, trans_a, trans_b, out) is not None):
            return numpy_gemm(a, b, trans_a, trans_b, out)
        product: np.ndarray = blis_py.gemm(a, b, out=out, trans1=trans_a, trans2=trans_b, alpha=1.0, beta=0.0)
        return product

    return gemm


_LOADERS: dict[str, Callable[[], GemmFn]] = {
    "numpy": lambda: numpy_gemm,
    "mkl": _mkl_gemm,
    "blis": _blis_gemm,
}
_LOADED: dict[str, GemmFn] = {}


def load_provider(name: str) -> GemmFn:
    """The gemm function of provider ``name`` (loaded once per process).

    Parameters
    ----------
    name : str
        One of :data:`BLAS_PROVIDERS`.

    Returns
    -------
    callable
        ``gemm(a, b, trans_a, trans_b, out) -> out``, as :func:`numpy_gemm`.

    Raises
    ------
    ValueError
        An unknown name.
    BackendUnavailableError
        The provider's library is not installed (the message says what to install).
    """
    key = str(name).strip().lower()
    if key not in _LOADERS:
        raise ValueError(f"unknown CPU BLAS {name!r}; choose one of {', '.join(BLAS_PROVIDERS)}")
    if key not in _LOADED:
        _LOADED[key] = _LOADERS[key]()
    return _LOADED[key]


def available_providers() -> list[str]:
    """The providers that load on this machine, ``"numpy"`` first.

    Returns
    -------
    list of str
        Names from :data:`BLAS_PROVIDERS`.
    """
    names = []
    for name in BLAS_PROVIDERS:
        try:
            load_provider(name)
        except BackendUnavailableError:
            continue
        names.append(name)
    return names


def installed_providers() -> list[str]:
    """The providers that look installed, found without loading any library.

    For callers that must not load a BLAS into their process (the benchmark suite);
    :func:`available_providers` is the authoritative answer.

    Returns
    -------
    list of str
        Names from :data:`BLAS_PROVIDERS`, ``"numpy"`` first.
    """
    import importlib.util

    names = ["numpy"]
    if _mkl_files():
        names.append("mkl")
    if importlib.util.find_spec("blis") is not None:
        names.append("blis")
    return names


class NumpyCblas(NamedTuple):
    """The ctypes functions of the CBLAS that ``numpy.matmul`` itself calls.

    For compiled loops (numba) that multiply matrices in the middle of a loop and
    must give ``numpy.matmul``'s bits: the same library, called as NumPy calls it
    (row-major, transposes as flags). Pointers are passed as integers (``size_t``,
    which every 64-bit ABI passes as it passes a pointer); ``ilp64`` tells whether
    the integer arguments are 64-bit.

    Parameters
    ----------
    gemm : dict
        ``{"float32": cblas_sgemm, "float64": cblas_dgemm}``:
        ``(order, trans_a, trans_b, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc)``.
    dot : dict
        ``{"float32": cblas_sdot, "float64": cblas_ddot}``: ``(n, x, incx, y, incy)``.
    ilp64 : bool
        Whether the integer arguments are 64-bit.
    path : str
        The library file.
    """

    gemm: dict[str, Any]
    dot: dict[str, Any]
    ilp64: bool
    path: str


_CBLAS: list[NumpyCblas | None] = []

# CBLAS enum values (CBLAS_ORDER, CBLAS_TRANSPOSE).
CBLAS_ROW_MAJOR, CBLAS_NO_TRANS, CBLAS_TRANS = 101, 111, 112


def _numpy_blas_files() -> list[str]:
    """The BLAS libraries bundled with NumPy's wheels (Linux, Windows: numpy.libs; macOS: .dylibs)."""
    here = os.path.dirname(np.__file__)
    found: list[str] = []
    for folder in (here + ".libs", os.path.join(here, ".dylibs")):
        for pattern in ("libscipy_openblas*", "libopenblas*"):
            found += sorted(glob.glob(os.path.join(folder, pattern)))
    return found


def _address(fn: Any) -> int:
    # A symbol the library exports has a non-null address.
    address = ctypes.cast(fn, ctypes.c_void_p).value
    if not address:
        raise OSError("null CBLAS symbol")
    return address


def _cblas_from(path: str) -> NumpyCblas | None:
    try:
        lib = ctypes.CDLL(path)  # already loaded by NumPy: the same handle
    except OSError:
        return None
    for prefix, suffix, ilp64 in (("scipy_", "64_", True), ("scipy_", "", False), ("", "64_", True), ("", "", False)):
        names = {t: f"{prefix}cblas_{t}{suffix}" for t in ("sgemm", "dgemm", "sdot", "ddot")}
        if not all(hasattr(lib, n) for n in names.values()):
            continue
        i = ctypes.c_int64 if ilp64 else ctypes.c_int
        e, p = ctypes.c_int, ctypes.c_size_t
        fns: dict[str, Any] = {}
        for t, real in (("s", ctypes.c_float), ("d", ctypes.c_double)):
            gemm = ctypes.CFUNCTYPE(None, e, e, e, i, i, i, real, p, i, p, i, real, p, i)
            dot = ctypes.CFUNCTYPE(real, i, p, i, p, i)
            fns[t + "gemm"] = gemm(_address(getattr(lib, names[t + "gemm"])))
            fns[t + "dot"] = dot(_address(getattr(lib, names[t + "dot"])))
        found = NumpyCblas({"float32": fns["sgemm"], "float64": fns["dgemm"]},
                           {"float32": fns["sdot"], "float64": fns["ddot"]}, ilp64, path)
        return found if _same_as_numpy(found) else None
    return None


def _same_as_numpy(cblas: NumpyCblas) -> bool:
    """Whether the functions give numpy.matmul's and numpy.vecdot's bits (else they are not its BLAS)."""
    rng = np.random.default_rng(0)
    for dtype in ("float32", "float64"):
        a = rng.standard_normal((37, 29)).astype(dtype)
        b = rng.standard_normal((29, 41)).astype(dtype)
        out = np.empty((37, 41), dtype=dtype)
        cblas.gemm[dtype](CBLAS_ROW_MAJOR, CBLAS_NO_TRANS, CBLAS_NO_TRANS, 37, 41, 29, 1.0, a.ctypes.data, 29,
                          b.ctypes.data, 41, 0.0, out.ctypes.data, 41)
        if not np.array_equal(out, np.matmul(a, b)):
            return False
        x = rng.standard_normal(1001).astype(dtype)
        if cblas.dot[dtype](1001, x.ctypes.data, 1, x.ctypes.data, 1) != np.vecdot(x, x):
            return False
    return True


def numpy_cblas() -> NumpyCblas | None:
    """The CBLAS NumPy's wheel bundles (found once per process), or None.

    None where NumPy links another BLAS (a conda or system build) or the library
    does not give ``numpy.matmul``'s results; callers then use ``numpy.matmul``.

    Returns
    -------
    NumpyCblas or None
        The library's functions, or None where they cannot be used.
    """
    if not _CBLAS:
        found = None
        for path in _numpy_blas_files():
            found = _cblas_from(path)
            if found is not None:
                break
        _CBLAS.append(found)
    return _CBLAS[0]


def provider_version(name: str) -> str:
    """The installed version of a provider's package ("" when unknown).

    Parameters
    ----------
    name : str
        One of :data:`BLAS_PROVIDERS`.

    Returns
    -------
    str
        The version of the package that ships the library.
    """
    if name == "numpy":
        try:  # the BLAS NumPy was built with, e.g. "numpy 2.4.6 (scipy-openblas 0.3.31.188.0)"
            dep = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
            return f"{np.__version__} ({dep['name']} {dep['version']})"
        except Exception:  # noqa: BLE001 - older NumPy: no dict mode
            return str(np.__version__)
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # noqa: BLE001 - a version is for reports only
        return ""
