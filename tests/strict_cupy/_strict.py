"""CuPy 14's API as data, and the rule that the stand-in offers nothing else.

``cupy14_api.json`` (written by ``make_api_list.py`` from the real CuPy 14.2) lists
every name of the modules and classes the stand-in models. A name the stand-in does
not define is looked up there: absent from CuPy 14 -> ``AttributeError`` (the
message CPython gives for a missing attribute); present but not implemented here ->
``NotImplementedError`` naming it, at the call (functions, methods, classes) or at
the access (everything else), so a gap is never silent.
"""

from __future__ import annotations

import functools
import json
import types
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = ["API", "StrictMeta", "StrictModule", "class_names", "not_implemented", "strict_getattr"]

API: dict[str, Any] = json.loads((Path(__file__).with_name("cupy14_api.json")).read_text())


def class_names(path: str) -> dict[str, str]:
    """name -> kind for the CuPy 14 class at ``path`` (e.g. ``"cupy.ndarray"``)."""
    return API["classes"][path]["names"]


def not_implemented(qualname: str) -> Callable[..., Any]:
    """A callable standing for a CuPy 14 function the stand-in does not implement."""

    def stub(*args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(
            f"{qualname} exists in CuPy 14 but the strict CuPy stand-in does not implement it"
        )

    stub.__name__ = qualname.rsplit(".", 1)[-1]
    stub.__qualname__ = qualname
    return stub


def strict_getattr(owner: str, allowed: dict[str, str], name: str, what: str) -> Any:
    """The outcome of reading a name the stand-in does not define on ``owner``.

    Parameters
    ----------
    owner : str
        Dotted CuPy name of the class or module, for messages.
    allowed : dict
        name -> kind in CuPy 14.
    what : str
        How CPython words the AttributeError's subject ("'ndarray' object", "module 'cupy'").
    """
    kind = allowed.get(name)
    if kind is None or name.startswith("__"):
        raise AttributeError(f"{what} has no attribute '{name}'")
    if kind in ("function", "method", "ufunc", "class"):
        return not_implemented(f"{owner}.{name}")
    raise NotImplementedError(
        f"{owner}.{name} exists in CuPy 14 but the strict CuPy stand-in does not implement it"
    )


class StrictMeta(type):
    """Metaclass of the stand-in's classes: class attributes obey the whitelist too.

    A class sets ``_cupy_name`` (its dotted CuPy name, a key of the API classes).
    """

    def __getattr__(cls, name: str) -> Any:
        path = cls.__dict__.get("_cupy_name") or getattr(cls, "_cupy_name", None)
        if name.startswith("_") or path is None:
            raise AttributeError(f"type object '{cls.__name__}' has no attribute '{name}'")
        return strict_getattr(path, class_names(path), name, f"type object '{cls.__name__}'")


class StrictObject(metaclass=StrictMeta):
    """Base of the stand-in's classes: instance attributes obey the whitelist."""

    _cupy_name: str = ""
    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        cls = type(self)
        return strict_getattr(cls._cupy_name, class_names(cls._cupy_name), name,
                              f"'{cls.__name__}' object")


class StrictModule(types.ModuleType):
    """A stand-in module: its own attributes, then CuPy 14's list (see the module docstring).

    Parameters
    ----------
    name : str
        The module's name (``"cupy.cuda"``); its API entry is ``API["modules"][key]``.
    attrs : dict
        What the stand-in implements. Every name must be in CuPy 14's list.
    key : str, optional
        The API entry, when it differs from ``name``.
    """

    def __init__(self, name: str, attrs: dict[str, Any], key: str | None = None) -> None:
        super().__init__(name)
        entry = API["modules"][key or name]
        extra = sorted(n for n in attrs if n not in entry["names"] and not n.startswith("__"))
        if extra:
            raise AssertionError(f"the stand-in defines names CuPy 14's {name} lacks: {extra}")
        self.__dict__["_sc_entry"] = entry
        for k, v in attrs.items():
            setattr(self, k, v)

    def __getattr__(self, name: str) -> Any:
        entry = self.__dict__["_sc_entry"]
        if name in entry["values"]:
            return entry["values"][name]
        if name in entry["numpy_same"]:
            return getattr(np, name)
        return strict_getattr(self.__name__, entry["names"], name, f"module '{self.__name__}'")

    def __dir__(self) -> list[str]:
        return sorted(set(self.__dict__["_sc_entry"]["names"]) | {"__name__", "__doc__"})


@functools.lru_cache(maxsize=None)
def public_names(path: str) -> frozenset[str]:
    """The non-underscore names of a CuPy 14 class."""
    return frozenset(n for n in class_names(path) if not n.startswith("_"))
