"""A switch for bit-identical results across runs and machines: :func:`set_deterministic`.

What mlpx already pins, switch or not:

* every random draw (initial weights, minibatch order, dropout masks, the
  validation split) comes from seeded host generators (``seed=``), and
  checkpoints carry their states (:mod:`mlpx.generators`);
* the compiled CPU loops (numba) run serially, in a fixed order;
* a :class:`~mlpx.stacked.Stack` splits its members over threads, but each member
  is computed whole by one thread, so the thread schedule never changes a bit;
* the epoch loss is summed in step order.

What the switch pins besides:

* **BLAS threads (CPU).** OpenBLAS and MKL split a matrix product over their
  threads in a way that changes the order its terms are summed in: the same
  product on 1, 2 or 8 threads differs in the last bits (measured here: up to
  2e-4 on a 784x512 float32 product). mlpx runs small products on one thread
  anyway; large ones use BLAS's own thread count, which depends on the machine's
  cores, ``OMP_NUM_THREADS``/``OPENBLAS_NUM_THREADS`` and, with MKL, on its
  dynamic adjustment under load. The switch runs every product on one thread.
  Needs threadpoolctl (``pip install "mlpx[fast]"``).
* **cuBLAS workspaces (GPU).** It sets ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (unless
  already set), which NVIDIA documents as what makes cuBLAS results reproducible
  run to run when several streams are in use. cuBLAS reads it when CuPy creates a
  handle, so switch it on before the first GPU computation of the process.
  mlpx's own GPU kernels use no atomic additions, and CuPy's reductions sum in a
  fixed order, so nothing else needs pinning on the GPU.

What it cannot pin: results across different CPU models or BLAS libraries (each
picks kernels for its hardware; for MKL across CPU models set
``MKL_CBWR=COMPATIBLE`` before Python starts), across NumPy/BLAS versions, or
between the CPU and a GPU.

**Cost.** Large products lose BLAS's multithreading: on a machine with c idle
cores, training dominated by large products can run up to about c times slower;
small networks (every product below ``SMALL_GEMM_FLOPS``, 4 MFLOP) are not
affected, they already run on one thread. On a busy machine one thread can even
be faster: fitting 784-512-512-10 (float32, batches of 256, 8192 rows, 2 epochs)
on the 2-core development machine under a load average of 6 took 0.25x the time
with the switch on (median of 3 interleaved runs: 2.5 s against 10.0 s), because
OpenBLAS's second thread spun against the other processes.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

from mlpx.backends.numpy_backend import set_one_thread
from mlpx.validation import check_bool

__all__ = ["deterministic", "is_deterministic", "set_deterministic"]

_CUBLAS = "CUBLAS_WORKSPACE_CONFIG"
_state: dict[str, object] = {"on": False, "set_cublas": False}


def set_deterministic(enabled: bool = True) -> None:
    """Make training and prediction bit-identical across runs and machines (see the module).

    Process-wide: every model, fit and prediction after the call. ``False`` undoes
    what ``True`` did (the BLAS thread pinning, and the cuBLAS variable where this
    function set it).

    Parameters
    ----------
    enabled : bool, default True
        Turn determinism on, or undo it.

    Raises
    ------
    ImportError
        threadpoolctl is missing (``pip install "mlpx[fast]"``): without it the BLAS
        threads cannot be pinned, and a silent no-op would promise what it does not do.

    Examples
    --------
    >>> import mlpx
    >>> mlpx.set_deterministic(True)
    >>> mlpx.is_deterministic()
    True
    >>> mlpx.set_deterministic(False)
    """
    enabled = check_bool("enabled", enabled)
    if enabled:
        try:
            import threadpoolctl  # noqa: F401
        except ImportError:
            raise ImportError(
                'mlpx.set_deterministic needs threadpoolctl to pin the BLAS threads: pip install "mlpx[fast]"'
            ) from None
        if _CUBLAS not in os.environ:
            os.environ[_CUBLAS] = ":4096:8"
            _state["set_cublas"] = True
    elif _state["set_cublas"]:
        os.environ.pop(_CUBLAS, None)
        _state["set_cublas"] = False
    set_one_thread(enabled)
    _state["on"] = enabled


def is_deterministic() -> bool:
    """Whether :func:`set_deterministic` is on.

    Returns
    -------
    bool
        True between ``set_deterministic(True)`` and ``set_deterministic(False)``.
    """
    return bool(_state["on"])


@contextlib.contextmanager
def deterministic(enabled: bool = True) -> Iterator[None]:
    """:func:`set_deterministic` for a ``with`` block; the previous setting comes back after it.

    Parameters
    ----------
    enabled : bool, default True
        The setting inside the block.

    Yields
    ------
    None
        Control to the block, with the setting in force.

    Examples
    --------
    >>> import mlpx
    >>> with mlpx.deterministic():
    ...     mlpx.is_deterministic()
    True
    """
    previous = is_deterministic()
    set_deterministic(enabled)
    try:
        yield
    finally:
        set_deterministic(previous)
