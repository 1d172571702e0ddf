"""pytest plugin: the whole session on the stand-in, so the ``gpu``-marked tests run on the CPU.

::

    PYTHONPATH=tests python -m pytest -p strict_cupy.session -m gpu \\
        --ignore tests/test_distributed_gpu.py tests/

The stand-in is installed when the plugin is imported, before ``tests/conftest.py``
decides whether CUDA is available, and removed when the session ends. Tests that
launch other processes (``mpiexec`` workers) do not see it; tests that need what
the stand-in does not model (``RawKernel``) fail with NotImplementedError naming it.
"""

from __future__ import annotations

from typing import Any

from strict_cupy import installed

_CONTEXT = installed()
STANDIN = _CONTEXT.__enter__()


def pytest_unconfigure(config: Any) -> None:
    _CONTEXT.__exit__(None, None, None)
