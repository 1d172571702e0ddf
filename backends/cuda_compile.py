"""Offline compilation of the registered CUDA kernels: CuPy's code generator and NVRTC, no GPU.

A :class:`~mlpx.backends.cuda.lazy_elementwise` kernel is compiled by CuPy on its
first call on a GPU. This module produces, on any machine with CuPy >= 14 and the
NVRTC and CUDA-header wheels (``pip install "mlpx[test]"`` on Linux), the very
program CuPy would hand to NVRTC for a given dtype, and compiles it to a cubin for
a named architecture (``sm_80``, ``sm_90``). No device, no driver.

How the source is made: only CuPy's own code is used, through the steps that
``ElementwiseKernel.__call__`` takes after it has inspected the arguments.

1. ``cupy.ElementwiseKernel(...)`` parses the parameters;
2. its ``_decide_params_type`` resolves ``T`` from the array dtypes;
3. one ``cupy._core._kernel._ArgInfo`` per argument describes what ``__call__``
   would see at launch (array: dtype, ndim, contiguity; scalar: its resolved type;
   the indexer), from the kernel's declared layouts;
4. ``cupy._core._kernel._get_elementwise_kernel_code`` writes the kernel;
5. CuPy's headers are prepended (``cupy._core.core._cupy_header_list``) and
   ``assemble_cupy_compiler_options`` plus ``-ftz=true`` give the options, as
   ``compile_with_cache`` does;
6. ``cupy.cuda.compiler._compile_using_nvrtc_no_warning`` compiles, with the one
   device query in it (the architecture of the current GPU) answered by the
   architecture asked for.

These are CuPy internals: they are checked against CuPy 14 (``_ArgInfo``'s kind
numbers come from ``cupy/_core/_kernel.pxd``), and :func:`codegen_unavailable`
says why when they are missing.
"""

from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass
from typing import Any, Iterator

from .cuda import lazy_elementwise

__all__ = [
    "ARCHS",
    "CompileResult",
    "KernelCompileError",
    "codegen_unavailable",
    "compile_kernel",
    "compile_matrix",
    "kernel_source",
    "nvrtc_version",
]

#: Architectures every kernel is compiled for: Ampere (A100) and Hopper (H100/H200).
ARCHS = ("80", "90")

# cupy/_core/_kernel.pxd: cdef enum _ArgKind (ARG_KIND_NDARRAY = 1, then in order).
_ARG_NDARRAY, _ARG_INDEXER, _ARG_SCALAR = 1, 2, 3
_MIN_CUPY = 14


class KernelCompileError(RuntimeError):
    """NVRTC refused a kernel's program; the message holds its log and the source."""

    def __init__(self, kernel: str, dtype: str, arch: str, log: str, source: str) -> None:
        super().__init__(f"{kernel} [{dtype}, sm_{arch}] does not compile:\n{log.strip()}")
        self.kernel, self.dtype, self.arch, self.log, self.source = kernel, dtype, arch, log, source


@dataclass(frozen=True)
class CompileResult:
    """One program of the compile matrix: a kernel for one dtype, layout and architecture."""

    kernel: str
    dtype: str
    arch: str
    layout: int
    ok: bool
    error: str | None = None


def _cupy() -> Any:
    import cupy

    return cupy


def codegen_unavailable() -> str | None:
    """Why kernels cannot be generated and compiled offline here, or None when they can."""
    try:
        cupy = _cupy()
    except Exception as exc:  # not installed, or its libraries fail to load
        return f"CuPy is not importable ({type(exc).__name__}: {exc})"
    major = _major(getattr(cupy, "__version__", "0"))
    if major < _MIN_CUPY:
        return f"CuPy {cupy.__version__} is installed; the offline code generator needs CuPy >= {_MIN_CUPY}"
    try:
        from cupy._core import _kernel, core
        from cupy.cuda import compiler

        for obj, attr in ((_kernel, "_ArgInfo"), (_kernel, "_get_elementwise_kernel_code"),
                          (core, "_cupy_header_list"), (core, "assemble_cupy_compiler_options"),
                          (compiler, "_compile_using_nvrtc_no_warning"),
                          (compiler, "_get_arch_for_options_for_nvrtc")):
            if not hasattr(obj, attr):
                return f"CuPy {cupy.__version__} lacks {obj.__name__}.{attr}, which the offline compiler uses"
        nvrtc_version()
    except Exception as exc:  # NVRTC library missing (no nvidia-cuda-nvrtc wheel, no toolkit)
        return f"NVRTC is not loadable ({type(exc).__name__}: {exc})"
    return None


def _major(version: str) -> int:
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else 0


def nvrtc_version() -> tuple[int, int]:
    """NVRTC's (major, minor), as loaded by CuPy."""
    nvrtc = importlib.import_module("cupy_backends.cuda.libs.nvrtc")
    major, minor = nvrtc.getVersion()
    return int(major), int(minor)


def _dtype_type(name: str) -> Any:
    import numpy as np

    if name == "bfloat16":
        import ml_dtypes  # CuPy's bfloat16 is ml_dtypes'

        return ml_dtypes.bfloat16
    return np.dtype(name).type


def kernel_source(k: lazy_elementwise, dtype: str, layout: int = 0) -> str:
    """The complete program CuPy would compile for ``k`` called with ``T = dtype``.

    Parameters
    ----------
    k : lazy_elementwise
    dtype : str
        One of ``k.dtypes``.
    layout : int
        Index into ``k.layouts`` (the engine's distinct calls of ``k``).

    Returns
    -------
    str
        CuPy's headers' ``#include`` lines followed by the generated kernel.
    """
    import numpy as np

    cupy = _cupy()
    from cupy._core import _kernel, core
    from cupy._core._carray import Indexer
    from cupy._core._scalar import CScalar

    if dtype not in k.dtypes:
        raise ValueError(f"{k.name} is not declared for {dtype}; it takes {k.dtypes}")
    in_params, out_params, operation, name = k.args
    ek = cupy.ElementwiseKernel(in_params, out_params, operation, name, preamble=k.preamble)
    t = _dtype_type(dtype)
    shapes = k.layouts[layout]
    params = k.params()

    def array_type(typ: str) -> Any:
        return t if len(typ) == 1 else np.dtype(typ).type

    in_arrays = tuple(None if p[0] in k.scalars else array_type(p[1]) for p in params if p[3])
    out_arrays = tuple(array_type(p[1]) for p in params if not p[3])
    in_types, out_types, type_map = ek._decide_params_type(in_arrays, out_arrays)
    resolved = list(in_types) + list(out_types)
    infos = []
    loop_ndims = set()
    for (pname, _typ, raw, _is_in), rtype in zip(params, resolved):
        if pname in k.scalars:
            infos.append(_kernel._ArgInfo(_ARG_SCALAR, CScalar, rtype, 0, True, True))
            continue
        ndim, contiguous = shapes.get(pname, (1, True))
        if not raw:
            loop_ndims.add(ndim)
        infos.append(_kernel._ArgInfo(_ARG_NDARRAY, cupy.ndarray, rtype, ndim, contiguous, True))
    if len(loop_ndims) != 1:
        raise ValueError(f"{k.name} layout {layout}: elementwise arrays of different ndim {sorted(loop_ndims)}")
    infos.append(_kernel._ArgInfo(_ARG_INDEXER, Indexer, None, loop_ndims.pop(), True, True))
    code = _kernel._get_elementwise_kernel_code(tuple(infos), type_map, ek.params, ek.operation, ek.name, ek.preamble)
    header = "".join(f"#include <{h}>\n" for h in core._cupy_header_list)
    return header + str(code)


@contextlib.contextmanager
def _arch_given(compiler: Any) -> Iterator[None]:
    # CuPy asks the current device for its architecture (memoised per device) even
    # when the caller names one; without a GPU that query fails. Answer it with the
    # architecture named, exactly as CuPy's own function decides the option.
    original = compiler._get_arch_for_options_for_nvrtc

    def for_named_arch(arch: Any = None) -> tuple[str, str]:
        if not getattr(compiler, "_use_ptx", False) and int(arch) <= int(compiler._get_max_compute_capability()):
            return f"-arch=sm_{arch}", "cubin"
        return f"-arch=compute_{arch}", "ptx"

    compiler._get_arch_for_options_for_nvrtc = for_named_arch
    try:
        yield
    finally:
        compiler._get_arch_for_options_for_nvrtc = original


def compile_kernel(k: lazy_elementwise, dtype: str, arch: str, layout: int = 0) -> bytes:
    """Compile ``k`` for ``T = dtype`` to a cubin for ``sm_<arch>`` with NVRTC, offline.

    Returns
    -------
    bytes
        The cubin (or PTX where NVRTC is older than the architecture).

    Raises
    ------
    KernelCompileError
        NVRTC rejected the program (the log and source are attached).
    """
    from cupy._core import core
    from cupy.cuda import compiler

    source = kernel_source(k, dtype, layout)
    options = core.assemble_cupy_compiler_options(()) + ("-ftz=true",)
    with _arch_given(compiler):
        try:
            binary, _ = compiler._compile_using_nvrtc_no_warning(
                source, options, str(arch), "", None, None, True, False, None
            )
        except compiler.CompileException as exc:
            raise KernelCompileError(k.name, dtype, str(arch), exc.get_message(), source) from None
    return bytes(binary)


def compile_matrix(
    kernels: list[lazy_elementwise], archs: tuple[str, ...] = ARCHS, dtypes: tuple[str, ...] | None = None
) -> list[CompileResult]:
    """Compile every kernel x dtype x layout x architecture; failures are recorded, not raised.

    Parameters
    ----------
    kernels : list of lazy_elementwise
    archs : tuple of str
    dtypes : tuple of str, optional
        Restrict to these (default: each kernel's declared dtypes).
    """
    out = []
    for k in kernels:
        for dtype in k.dtypes if dtypes is None else [d for d in dtypes if d in k.dtypes]:
            for layout in range(len(k.layouts)):
                for arch in archs:
                    try:
                        compile_kernel(k, dtype, arch, layout)
                        out.append(CompileResult(k.name, dtype, arch, layout, True))
                    except KernelCompileError as exc:
                        out.append(CompileResult(k.name, dtype, arch, layout, False, exc.log.strip()))
    return out
