"""Timing done right: warm-up, calibrated repeats, median and spread, pinned threads.

Host code is timed with :func:`time.perf_counter` around ``number`` calls (the device
synchronised at the end of each repeat); GPU code with CUDA events recorded on the
current stream around the same calls, so host overhead that overlaps device work is
not counted twice. Each measurement reports per-call seconds as
``{"median", "min", "max", "q1", "q3", "repeats", "number"}``.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from typing import Any, Callable, Iterator

__all__ = ["blas_threads", "summarize", "time_call", "time_cuda"]


def summarize(samples: list[float], number: int) -> dict[str, float]:
    """Median, extremes and quartiles of per-call times (seconds).

    Parameters
    ----------
    samples : list of float, length repeats
        Per-call seconds of each repeat.
    number : int
        Calls per repeat.
    """
    s = sorted(samples)
    if len(s) >= 2:
        q1, _, q3 = statistics.quantiles(s, n=4, method="inclusive")
    else:
        q1 = q3 = s[0]
    return {
        "median": statistics.median(s),
        "min": s[0],
        "max": s[-1],
        "q1": q1,
        "q3": q3,
        "repeats": len(s),
        "number": number,
    }


def _calibrate(one_call_s: float, min_time: float, max_number: int) -> int:
    if one_call_s <= 0:
        return max_number
    return max(1, min(max_number, math.ceil(min_time / one_call_s)))


def time_call(
    fn: Callable[[], Any],
    *,
    repeats: int,
    min_time: float,
    warmup: int = 1,
    sync: Callable[[], None] | None = None,
    max_number: int = 10_000,
) -> dict[str, float]:
    """Per-call wall time of ``fn`` on the host.

    Parameters
    ----------
    fn : callable
        Called with no arguments.
    repeats : int
        Timed repeats; the median over them is the result.
    min_time : float
        Seconds one repeat should last at least (sets ``number``).
    warmup : int
        Untimed calls first (module loading, allocation, caches).
    sync : callable, optional
        Called after the last call of each repeat (a device synchronise).
    """
    sync = sync or (lambda: None)
    t0 = time.perf_counter()
    for _ in range(max(1, warmup)):
        fn()
    sync()
    per = (time.perf_counter() - t0) / max(1, warmup)
    number = _calibrate(per, min_time, max_number)
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        sync()
        samples.append((time.perf_counter() - t0) / number)
    return summarize(samples, number)


def time_cuda(
    fn: Callable[[], Any],
    *,
    repeats: int,
    min_time: float,
    warmup: int = 1,
    max_number: int = 10_000,
) -> dict[str, float]:
    """Per-call device time of ``fn`` between CUDA events on the current stream.

    Warm-up calls first (kernel compilation, cuBLAS handle and workspace, memory
    pool); then ``repeats`` repeats of ``number`` calls between a start and an end
    event, each repeat synchronised on its end event.
    """
    import cupy

    for _ in range(max(1, warmup)):
        fn()
    cupy.cuda.get_current_stream().synchronize()
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    start.record()
    fn()
    end.record()
    end.synchronize()
    per = cupy.cuda.get_elapsed_time(start, end) / 1e3
    number = _calibrate(per, min_time, max_number)
    samples = []
    for _ in range(repeats):
        start.record()
        for _ in range(number):
            fn()
        end.record()
        end.synchronize()
        samples.append(cupy.cuda.get_elapsed_time(start, end) / 1e3 / number)
    return summarize(samples, number)


@contextlib.contextmanager
def blas_threads(n: int | None) -> Iterator[None]:
    """Pin the BLAS (and OpenMP) thread pools to ``n`` threads inside the block.

    PyTorch's intra-op pool is pinned too when torch is already imported, so the
    peers run with the same thread count. ``None`` leaves everything as it is.
    """
    if n is None:
        yield
        return
    import sys

    from threadpoolctl import threadpool_limits

    torch = sys.modules.get("torch")
    old_torch = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(n)
    try:
        with threadpool_limits(limits=n):
            yield
    finally:
        if torch is not None and old_torch is not None:
            torch.set_num_threads(old_torch)
