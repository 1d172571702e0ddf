"""Kernels: one generic definition of an array operation, plus optional fast variants.

A :class:`Kernel` is a plain Python function written against an array namespace
``xp`` with operators and Array API functions only. That generic definition runs on
every backend (NumPy, CuPy, any Array API namespace such as ``array-api-strict``)
and is the reference that the fast variants are tested against.

A backend may register faster variants of the same kernel under its *kind*:
``"numpy"`` variants use ufuncs with ``out=`` to avoid temporaries (and run
unchanged on CuPy, whose ufuncs accept ``out=`` too); ``"cupy"`` variants compile
the work into a single GPU launch. The backend picks the most specific variant it
has (:meth:`backends.base.Backend.run`), so model code never branches on device.

The convention that lets one definition serve mutable and immutable arrays (JAX):

* the generic definition is *functional*: it writes nothing and **returns** every
  result, new arrays; the buffers it is handed (``out``, ``dZ``, optimizer state)
  only say where a fast variant may put them;
* a fast variant may write into those buffers, and then returns those very objects
  in the same places, so that on NumPy or CuPy the returned array *is* the buffer;
* every caller uses the returned values (``p, m, v = be.run(adam_update, p, g, m,
  v, ...)``) and, where the identity of a buffer matters (views into the model's
  flat parameters), stores them with :meth:`backends.base.Backend.assign`.

So a buffer is never read for a result, only the return value is; and an input that
is not among a kernel's documented outputs (or its scratch) is never changed.

This module knows nothing of layers or models: kernels are array math.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

__all__ = ["Kernel", "kernel"]

#: A variant's function: registering it returns it unchanged, with its signature.
_Variant = TypeVar("_Variant", bound=Callable[..., Any])


class Kernel:
    """A named array operation with a generic definition and per-kind variants.

    Parameters
    ----------
    fn : callable
        ``fn(xp, *arrays, **scalars)``; the generic definition. It returns its
        results as new arrays and writes into nothing it was given (see the
        module docstring).
    name : str, optional
        Defaults to ``fn.__name__``.
    """

    def __init__(self, fn: Callable[..., Any], name: str | None = None) -> None:
        self.generic = fn
        self.name = name or fn.__name__
        self.variants: dict[str, Callable[..., Any]] = {}
        self.__doc__ = fn.__doc__

    def register(self, kind: str) -> Callable[[_Variant], _Variant]:
        """Decorator: register ``fn`` as the variant used by backends of ``kind``.

        A variant must take the same arguments as the generic definition and
        return the same results (the test suite checks each against it); it may
        write them into the buffers it was given, and then returns those buffers.

        Parameters
        ----------
        kind : str
            A backend kind (``"numpy"``; CuPy also takes the ``"numpy"`` variants).

        Returns
        -------
        callable
            The decorator; it returns the function it is given.
        """

        def deco(fn: _Variant) -> _Variant:
            self.variants[kind] = fn
            return fn

        return deco

    def resolve(self, kinds: tuple[str, ...]) -> Callable[..., Any]:
        """The first registered variant among ``kinds``, else the generic one.

        Parameters
        ----------
        kinds : tuple of str
            A backend's kinds, most specific first.

        Returns
        -------
        callable
            ``fn(xp, *args, **kwargs)``.
        """
        for kind in kinds:
            fn = self.variants.get(kind)
            if fn is not None:
                return fn
        return self.generic

    def __repr__(self) -> str:
        return f"Kernel({self.name!r}, variants={sorted(self.variants)})"


def kernel(fn: Callable[..., Any]) -> Kernel:
    """Decorator turning a generic function into a :class:`Kernel`."""
    return Kernel(fn)
