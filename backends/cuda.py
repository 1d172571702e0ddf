"""Lazily built CUDA kernels for the CuPy backend, and the registry of all of them.

Kernel variants registered under the ``"cupy"`` kind are written as
:func:`lazy_elementwise` objects: the CUDA source lives beside the generic
definition it must match, and :class:`cupy.ElementwiseKernel` is only built (and
compiled by NVRTC) on the first call on a GPU. Importing mlpx never imports CuPy.

Every kernel declared this way joins a registry (:func:`registered_kernels`), so the
test suite can generate each one's source exactly as CuPy would and compile it with
NVRTC for every dtype and architecture, on a machine without a GPU
(:mod:`mlpx.backends.cuda_compile`).

Why hand-written elementwise kernels rather than chains of CuPy ufuncs: a chain of n
ufuncs is n launches and n round trips through GPU memory; on the small matrices of
an MLP step the launches, not the arithmetic, are the cost. One kernel per fused
operation (bias + activation, activation backward, optimizer update) makes it one.

Half precision: CuPy's ``float16`` and ``bfloat16`` are C++ classes whose arithmetic
returns ``float`` in places, so an expression that mixes ``T`` and a product of
``T`` (``c ? x : x * a``) is ambiguous, and ``T += float`` may not exist. Kernels
that accumulate, or compute anything that can overflow 65504, do their arithmetic in
:data:`ACCUMULATOR_PREAMBLE`'s ``mlpx_acc<T>::type`` (float, or double for double)
and cast to ``T`` once, at the store.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

__all__ = [
    "ACCUMULATOR_PREAMBLE",
    "FLOAT_DTYPES",
    "lazy_elementwise",
    "registered_kernels",
]

#: The floating dtypes a ``T`` kernel is compiled for (offline) and may be called with.
FLOAT_DTYPES = ("float32", "float64", "float16", "bfloat16")

#: ``mlpx_acc<T>::type``: the type to compute in for ``T`` (float for float16,
#: bfloat16 and float32; double for double). Put it in a kernel's preamble.
ACCUMULATOR_PREAMBLE = """
template <typename T> struct mlpx_acc { typedef float type; };
template <> struct mlpx_acc<double> { typedef double type; };
"""

# (ndim, C-contiguous) of one array argument as CuPy sees it at launch.
ArrayLayout = tuple[int, bool]

_REGISTRY: dict[str, "lazy_elementwise"] = {}


class lazy_elementwise:  # noqa: N801 - reads as a function at the call sites
    """An ``ElementwiseKernel`` compiled on first use, and registered for offline checks.

    Parameters
    ----------
    in_params, out_params, operation, name : str
        As for :class:`cupy.ElementwiseKernel`. Use type placeholder ``T`` for
        the floating dtype so one definition serves every dtype of
        :data:`FLOAT_DTYPES`.
    preamble : str, optional
        Device functions used by ``operation``.
    scalars : iterable of str, optional
        Input parameters the engine passes as Python scalars (learning rates, flags);
        every other parameter is an array.
    layouts : sequence of mapping, optional
        How the engine calls the kernel, one mapping per distinct call: parameter
        name -> ``(ndim, c_contiguous)`` as CuPy sees the array at launch. Arrays
        not named are elementwise operands of one shape, which CuPy collapses to
        1-D contiguous (``(1, True)``); ``raw`` arrays keep their shape and must be
        named. Default: one call with every array elementwise.
    dtypes : iterable of str, optional
        The dtypes ``T`` may take (default :data:`FLOAT_DTYPES`).
    register : bool
        Join the registry (default True); False for throw-away probes.

    Raises
    ------
    ValueError
        A name already registered with a different definition, a scalar or layout
        naming no parameter, or a ``raw`` array without a layout.
    """

    def __init__(
        self,
        in_params: str,
        out_params: str,
        operation: str,
        name: str,
        preamble: str = "",
        *,
        scalars: Iterable[str] = (),
        layouts: Iterable[Mapping[str, ArrayLayout]] | None = None,
        dtypes: Iterable[str] = FLOAT_DTYPES,
        register: bool = True,
    ) -> None:
        self.args = (in_params, out_params, operation, name)
        self.name = name
        self.preamble = preamble
        self.scalars = tuple(scalars)
        self.layouts = tuple(dict(m) for m in layouts) if layouts is not None else ({},)
        self.dtypes = tuple(dtypes)
        self._kernel: Any = None
        self._check_declaration()
        if register:
            old = _REGISTRY.get(name)
            if old is not None and old.definition != self.definition:
                raise ValueError(f"CUDA kernel name {name!r} is already registered with another definition")
            _REGISTRY.setdefault(name, self)

    @property
    def definition(self) -> tuple[str, ...]:
        """Everything that determines the generated source (registry identity)."""
        return (*self.args, self.preamble, repr(self.scalars), repr(self.layouts), repr(self.dtypes))

    def params(self) -> list[tuple[str, str, bool, bool]]:
        """``(name, type, raw, is_input)`` of every parameter, inputs first."""
        out = []
        for is_input, text in ((True, self.args[0]), (False, self.args[1])):
            for item in filter(None, (p.strip() for p in text.split(","))):
                words = item.split()
                out.append((words[-1], words[-2], "raw" in words[:-2], is_input))
        return out

    def _check_declaration(self) -> None:
        params = {p[0]: p for p in self.params()}
        unknown = [s for s in self.scalars if s not in params or not params[s][3]]
        for layout in self.layouts:
            unknown += [a for a in layout if a not in params or a in self.scalars]
        if unknown:
            raise ValueError(f"kernel {self.name!r}: {sorted(set(unknown))} name no array parameter of it")
        for layout in self.layouts:
            missing = [n for n, (_, _, raw, _) in params.items() if raw and n not in layout]
            if missing:
                raise ValueError(f"kernel {self.name!r}: raw array(s) {missing} need a layout (ndim, c_contiguous)")
        bad = [d for d in self.dtypes if d not in FLOAT_DTYPES]
        if bad:
            raise ValueError(f"kernel {self.name!r}: dtypes {bad} are not among {FLOAT_DTYPES}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._kernel is None:
            import cupy

            in_params, out_params, operation, name = self.args
            self._kernel = cupy.ElementwiseKernel(
                in_params, out_params, operation, name, preamble=self.preamble
            )
        return self._kernel(*args, **kwargs)

    def __repr__(self) -> str:
        return f"lazy_elementwise({self.name!r})"


def registered_kernels() -> list[lazy_elementwise]:
    """Every registered kernel, by name.

    Kernels register when the module declaring them is imported; ``import mlpx``
    imports all of the engine's (activations, layers, losses, optimizers).
    """
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]
