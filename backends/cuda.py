"""Lazily built CUDA kernels for the CuPy backend.

Kernel variants registered under the ``"cupy"`` kind are written as
:func:`lazy_elementwise` objects: the CUDA source lives beside the generic
definition it must match, and :class:`cupy.ElementwiseKernel` is only built (and
compiled by NVRTC) on the first call on a GPU. Importing mlpx never imports CuPy.

Why hand-written elementwise kernels rather than chains of CuPy ufuncs: a chain of n
ufuncs is n launches and n round trips through GPU memory; on the small matrices of
an MLP step the launches, not the arithmetic, are the cost. One kernel per fused
operation (bias + activation, activation backward, optimizer update) makes it one.
"""

from __future__ import annotations

from typing import Any

__all__ = ["lazy_elementwise"]


class lazy_elementwise:  # noqa: N801 - reads as a function at the call sites
    """An ``ElementwiseKernel`` compiled on first use.

    Parameters
    ----------
    in_params, out_params, operation, name : str
        As for :class:`cupy.ElementwiseKernel`. Use type placeholder ``T`` for
        the floating dtype so one definition serves float32 and float64.
    preamble : str, optional
        Device functions used by ``operation``.
    """

    def __init__(self, in_params: str, out_params: str, operation: str, name: str, preamble: str = "") -> None:
        self.args = (in_params, out_params, operation, name)
        self.preamble = preamble
        self._kernel: Any = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._kernel is None:
            import cupy

            in_params, out_params, operation, name = self.args
            self._kernel = cupy.ElementwiseKernel(
                in_params, out_params, operation, name, preamble=self.preamble
            )
        return self._kernel(*args, **kwargs)
