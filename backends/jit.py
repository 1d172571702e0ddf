"""Lazily compiled CPU loops (numba), an optional accelerator for the NumPy backend.

NumPy runs every elementwise operation on one thread and makes one pass over memory
per ufunc; an Adam step over the flat parameter buffer is a dozen such passes. A
numba ``prange`` loop does the whole update in one pass on every core. numba is an
optional dependency (``pip install "mlpx[fast]"``): without it, or with the
environment variable ``MLPX_NUMBA=0``, the NumPy variants run instead.

Nothing here imports numba at ``import mlpx`` time: :func:`lazy_njit` compiles on the
first call (and caches the machine code on disk), so a process that never trains on
the CPU never pays for it.
"""

from __future__ import annotations

import os
import types
from typing import Any, Callable

__all__ = ["lazy_njit", "numba_enabled", "prange"]

prange = range  # rebound to numba.prange inside compiled loops

_ENABLED: bool | None = None


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


PARALLEL_MIN_SIZE = 1 << 15  # below this many elements, waking threads costs more than it saves


def lazy_njit(parallel: bool = True) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: compile ``fn`` with ``numba.njit`` on its first call.

    ``fastmath`` stays off so the loop performs the same IEEE operations, in the same
    order, as the NumPy definition it replaces (results agree to the last bit or two).

    Write the loop with ``prange`` (import it from this module): it is plain
    ``range`` for Python, and is rebound to ``numba.prange`` when compiling, so the
    module defining the loop never imports numba itself. With ``parallel=True`` a
    serial build is kept too and used when the first argument has fewer than
    :data:`PARALLEL_MIN_SIZE` elements (an MLP on small batches lives there).
    """

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        compiled: dict[bool, Any] = {}

        def build(par: bool) -> Any:
            import numba

            glb = {**fn.__globals__, "prange": numba.prange if par else range}
            src = types.FunctionType(fn.__code__, glb, fn.__name__, fn.__defaults__, fn.__closure__)
            # distinct names keep the parallel and serial builds apart in numba's disk cache
            src.__qualname__ = f"{fn.__qualname__}_{'parallel' if par else 'serial'}"
            return numba.njit(parallel=par, fastmath=False, cache=True)(src)

        def call(*args: Any) -> Any:
            par = parallel and args[0].size >= PARALLEL_MIN_SIZE
            f = compiled.get(par)
            if f is None:
                f = compiled[par] = build(par)
            return f(*args)

        call.__name__ = fn.__name__
        call.__doc__ = fn.__doc__
        call.py_func = fn  # type: ignore[attr-defined]
        return call

    return deco
