"""Helpers of the tests that edit JSON records of model files (not a test module)."""

from __future__ import annotations

import copy
from typing import Any, Iterator

#: ``set_path(record, path, DELETE)`` deletes the key instead of setting it.
DELETE = object()


def set_path(record: Any, path: tuple, value: Any) -> Any:
    """A deep copy of ``record`` with the item at ``path`` (keys and indices) set to ``value``."""
    out = copy.deepcopy(record)
    target = out
    for key in path[:-1]:
        target = target[key]
    if value is DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return out


def paths(obj: Any, prefix: tuple = ()) -> Iterator[tuple]:
    """Every path into a JSON value (``()`` for the value itself), depth first."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from paths(v, prefix + (i,))
