"""Write ``cupy14_api.json``: the names CuPy 14 offers, which the stand-in may offer.

Run once against the real package (no GPU needed: CuPy imports without one)::

    pip install --target /tmp/cupy14 "cupy-cuda12x==14.2.*" "nvidia-nccl-cu12>=2.18.1,<3"
    rm -rf /tmp/cupy14/numpy*          # keep the environment's NumPy
    LD_LIBRARY_PATH=/tmp/cupy14/nvidia/nccl/lib PYTHONPATH=/tmp/cupy14 \
        python tests/strict_cupy/make_api_list.py > tests/strict_cupy/cupy14_api.json

``libnccl`` is put on the library path so that ``cupy.cuda.nccl`` shows its full API;
without it CuPy's module holds only ``available = False`` (recorded separately, from
a child process that hides the library).

For every module and class below the file lists each name with its kind ("module",
"class", "ufunc", "function", "method", "attribute", "value"), the value of plain
constants (NCCL datatypes, cuBLAS compute types, ...), and which module attributes
are the very NumPy object of the same name (dtypes, ``newaxis``, ``pi``...), which
the stand-in then takes from NumPy.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import re
import subprocess
import sys
import types
from typing import Any

MODULES = [
    "cupy",
    "cupy.cuda",
    "cupy.cuda.runtime",
    "cupy.cuda.memory",
    "cupy.cuda.stream",
    "cupy.cuda.device",
    "cupy.cuda.pinned_memory",
    "cupy.cuda.compiler",
    "cupy.cuda.nccl",
    "cupy._core",
    "cupy._core._routines_linalg",
    "cupy.linalg",
    "cupyx",
    "cupyx.scipy",
    "cupyx.scipy.sparse",
]
CLASSES = [
    "cupy.ndarray",
    "cupy.ufunc",
    "cupy.ElementwiseKernel",
    "cupy.cuda.Device",
    "cupy.cuda.Stream",
    "cupy.cuda.Event",
    "cupy.cuda.MemoryPointer",
    "cupy.cuda.Memory",
    "cupy.cuda.MemoryPool",
    "cupy.cuda.PinnedMemory",
    "cupy.cuda.PinnedMemoryPointer",
    "cupy.cuda.PinnedMemoryPool",
    "cupy.cuda.nccl.NcclCommunicator",
    "cupyx.scipy.sparse.csr_matrix",
]
_PLAIN = (bool, int, float, str)


def _resolve(path: str) -> Any:
    parts = path.split(".")
    obj = importlib.import_module(parts[0])
    for i, part in enumerate(parts[1:], 1):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            obj = importlib.import_module(".".join(parts[: i + 1]))
    return obj


def _module_entry(mod: types.ModuleType) -> dict[str, Any]:
    import numpy as np

    names: dict[str, str] = {}
    values: dict[str, Any] = {}
    numpy_same: list[str] = []
    for name in sorted(dir(mod)):
        if name.startswith("__") and name != "__version__":
            continue
        obj = getattr(mod, name)
        if isinstance(obj, types.ModuleType):
            kind = "module"
        elif isinstance(obj, type):
            kind = "class"
        elif type(obj).__name__ == "ufunc":  # cupy.ufunc: elementwise, NumPy's semantics
            kind = "ufunc"
        elif callable(obj):
            kind = "function"
        else:
            kind = "value"
        names[name] = kind
        if kind == "value" and isinstance(obj, _PLAIN):
            values[name] = obj
        if getattr(np, name, object()) is obj:
            numpy_same.append(name)
    return {"names": names, "values": values, "numpy_same": numpy_same}


# Instances that exist without a GPU: their instance attributes (set in __init__, so
# absent from the class) count too.
SAMPLES = {"cupy.cuda.Stream": "cupy.cuda.Stream.null"}
# Instance attributes that only __init__ sets and no docstring lists: scanned from the
# class's source (``self.<name> = ...`` in the module that defines its __init__).
SOURCE_SCANNED = ("cupyx.scipy.sparse.csr_matrix",)


def _class_entry(cls: type, path: str) -> dict[str, Any]:
    names: dict[str, str] = {}
    sample = SAMPLES.get(path)
    if sample is not None:
        for name in vars(_resolve(sample)):
            if not name.startswith("_"):
                names[name] = "attribute"
    # Attributes a class documents as "~Class.name" (CuPy's docstrings list the
    # instance attributes of Event, Stream, ... that way).
    for name in re.findall(r"~%s\.(\w+)" % cls.__name__, cls.__doc__ or ""):
        if not hasattr(cls, name):
            names[name] = "attribute"
    if path in SOURCE_SCANNED:
        for klass in cls.__mro__:
            try:
                src = inspect.getsource(klass)
            except (OSError, TypeError):
                continue
            for name in re.findall(r"self\.([A-Za-z]\w*) = ", src):
                if not hasattr(cls, name):
                    names[name] = "attribute"
    for name in sorted(dir(cls)):
        if name.startswith("_") and not (name.startswith("__") and name.endswith("__")):
            continue  # private: the stand-in's own business
        raw = inspect.getattr_static(cls, name, None)
        if isinstance(raw, (property, types.GetSetDescriptorType, types.MemberDescriptorType)):
            kind = "attribute"
        elif callable(raw) or isinstance(raw, (classmethod, staticmethod)):
            kind = "method"
        else:
            kind = "attribute"
        names[name] = kind
    return {"names": names}


def main() -> None:
    if os.environ.get("_MAKE_API_NO_NCCL"):
        sys.modules["cupy_backends.cuda.libs.nccl"] = None  # as if libnccl failed to load
        mod = importlib.import_module("cupy.cuda.nccl")
        print(json.dumps(_module_entry(mod)))
        return
    import cupy
    import numpy

    out: dict[str, Any] = {
        "generated_by": (
            "LD_LIBRARY_PATH=/tmp/cupy14/nvidia/nccl/lib PYTHONPATH=/tmp/cupy14 python "
            "tests/strict_cupy/make_api_list.py > tests/strict_cupy/cupy14_api.json, after pip install "
            "--target /tmp/cupy14 'cupy-cuda12x==14.2.*' 'nvidia-nccl-cu12>=2.18.1,<3' (see make_api_list.py)"
        ),
        "cupy_version": cupy.__version__,
        "numpy_version": numpy.__version__,
        "modules": {},
        "classes": {},
    }
    for path in MODULES:
        out["modules"][path] = _module_entry(_resolve(path))
    if not out["modules"]["cupy.cuda.nccl"]["values"].get("available"):
        raise SystemExit("libnccl was not found: put nvidia-nccl-cu12's lib folder on LD_LIBRARY_PATH")
    env = dict(os.environ, _MAKE_API_NO_NCCL="1")
    child = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, check=True)
    out["modules"]["cupy.cuda.nccl (library missing)"] = json.loads(child.stdout.strip().splitlines()[-1])
    for path in CLASSES:
        out["classes"][path] = _class_entry(_resolve(path), path)
    json.dump(out, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
