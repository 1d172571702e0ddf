"""Lazily compiled CPU loops (numba), an optional accelerator for the NumPy backend.

NumPy makes one pass over memory, and one Python-level call, per ufunc; a bias add
followed by a ReLU is two passes plus a boolean temporary in the backward pass, and a
softmax cross-entropy about ten calls. On the small matrices of an MLP step those
calls, not the arithmetic, are the cost; a compiled loop does each in one. Only
operations where the loop measured faster than NumPy get one (numba's own ``exp``
and ``tanh`` are scalar library calls that lose to NumPy's SIMD ones; loops use the
vectorisable ones of :mod:`mlpx.backends.jit_math`). numba is an
optional dependency (``pip install "mlpx[fast]"``): without it, or with the
environment variable ``MLPX_NUMBA=0``, the NumPy variants run instead.

Nothing here imports numba at ``import mlpx`` time: :func:`lazy_njit` compiles on the
first call (and caches the machine code on disk), so a process that never trains on
the CPU never pays for it.
"""

from __future__ import annotations

import os
from typing import Any, Callable, overload

__all__ = ["fetch_add", "lazy_njit", "numba_enabled"]

_ENABLED: bool | None = None
_FETCH_ADD: list[Any] = []


def numba_enabled() -> bool:
    """True when numba imports and ``MLPX_NUMBA`` is not ``0``."""
    global _ENABLED
    if _ENABLED is None:
        if os.environ.get("MLPX_NUMBA", "1") == "0":
            _ENABLED = False
        else:
            try:
                import numba  # noqa: F401
            except ImportError:
                _ENABLED = False
            else:
                _ENABLED = True
    return _ENABLED


# The compiled function is Any to the type checker: numba types its arguments when it
# compiles, and a loop's scalars are NumPy scalars of its arrays' dtype.
@overload
def lazy_njit(fn: None = None, *, inline: bool = False) -> Callable[[Callable[..., Any]], Any]: ...


@overload
def lazy_njit(fn: Callable[..., Any], *, inline: bool = False) -> Any: ...


def lazy_njit(fn: Callable[..., Any] | None = None, *, inline: bool = False) -> Any:
    """Decorator: compile ``fn`` with ``numba.njit`` on its first call.

    ``fastmath`` stays off so the loop performs the same IEEE operations, in the same
    order, as the NumPy definition it replaces; scalars should arrive in the arrays'
    dtype (``x.dtype.type(value)``), or the loop computes in float64. Loops are serial: on a 2-core machine
    numba's parallel loops lost to NumPy whenever OpenBLAS's threads (which spin for a
    while after each product) or another process held a core, by up to 10x.

    A loop may call other ``lazy_njit`` functions of its module: they are compiled
    with it (one definition of an update serves several loops). With
    ``@lazy_njit(inline=True)`` a small function is inlined into its callers before
    LLVM sees them, so that a loop calling it can be vectorised.
    """
    if fn is None:
        return lambda f: lazy_njit(f, inline=inline)
    compiled: list[Any] = []

    def dispatcher() -> Any:
        if not compiled:
            import types

            import numba

            # Globals the loop names that are lazy loops themselves become their
            # compiled dispatchers, which numba can call (and inline).
            names = set(fn.__code__.co_names)
            scope = {k: (v.dispatcher() if k in names and hasattr(v, "dispatcher") else v)
                     for k, v in fn.__globals__.items()}
            body = types.FunctionType(fn.__code__, scope, fn.__name__, fn.__defaults__, fn.__closure__)
            body.__qualname__, body.__module__ = fn.__qualname__, fn.__module__
            # error_model="numpy": x/0 gives inf/nan as in NumPy instead of a Python
            # exception, whose check in every iteration keeps LLVM from vectorising
            # the loop. nogil: the loops touch no Python object, so a stack of networks
            # can run its members' chunks in threads (mlpx.stacked) while one loop runs.
            compiled.append(numba.njit(fastmath=False, error_model="numpy", cache=True, nogil=True,
                                       inline="always" if inline else "never")(body))
        return compiled[0]

    def call(*args: Any) -> Any:
        return (compiled[0] if compiled else dispatcher())(*args)

    call.__name__ = fn.__name__
    call.__doc__ = fn.__doc__
    call.py_func = fn  # type: ignore[attr-defined]
    # inspect.signature (and so the API reference) shows fn's parameters, not *args.
    call.__wrapped__ = fn  # type: ignore[attr-defined]
    call.dispatcher = dispatcher  # type: ignore[attr-defined]
    return call


def fetch_add() -> Any:
    """A numba intrinsic ``fetch_add(counter, value) -> int64``: atomically add ``value``
    to ``counter[0]`` (a 1-D int64 array) and return what it held before.

    For threads that share a queue of work items inside compiled loops (each takes
    the next index until the queue runs out). Built on first use; needs numba.
    """
    if not _FETCH_ADD:
        from numba import types
        from numba.extending import intrinsic

        @intrinsic
        def _fetch_add(typingctx: Any, counter: Any, value: Any) -> Any:
            if not (isinstance(counter, types.Array) and counter.dtype == types.int64 and counter.ndim == 1
                    and isinstance(value, types.Integer)):
                return None

            def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
                array, amount = args
                data = context.make_array(signature.args[0])(context, builder, array).data
                amount = context.cast(builder, amount, signature.args[1], types.int64)
                return builder.atomic_rmw("add", data, amount, "seq_cst")

            return types.int64(counter, value), codegen

        _FETCH_ADD.append(_fetch_add)
    return _FETCH_ADD[0]
