"""Host <-> device transfer bandwidth, pageable and pinned host memory (GPU only).

It decides when the GPU pays off: mlpx moves the training set to the device once
per ``fit`` and reads the loss once per epoch, but ``predict`` on host data and any
per-batch streaming pay these rates. Each copy is timed on the host with the device
synchronised (a copy from pageable memory is staged by the driver and blocks
anyway), several repeats, median reported.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks.context import Context, skipped
from benchmarks.timing import time_call

__all__ = ["count", "transfer_section"]


def count(ctx: Context) -> int:
    return 4 * len(ctx.cfg.transfer_mib) if ctx.use_gpu else 0


def transfer_section(ctx: Context) -> dict[str, Any]:
    """H2D and D2H copies of ``cfg.transfer_mib`` MiB, from pageable and pinned host buffers.

    Returns
    -------
    dict
        ``{"status", "reason", "parts": {"gpu": part}}``; records carry ``bytes``,
        ``time_s`` and ``gb_per_s`` (1e9 bytes/s).
    """
    if not ctx.use_gpu:
        ctx.progress.note(f"transfer: skipped: {ctx.gpu_reason}")
        return {"status": "skipped", "reason": ctx.gpu_reason, "parts": {"gpu": skipped(ctx.gpu_reason or "")}}
    import cupy
    import cupyx

    cfg = ctx.cfg
    be = ctx.gpu
    records = []
    with be.activated():
        for mib in cfg.transfer_mib:
            n = mib * 2**20 // 4
            pageable = np.random.default_rng(0).standard_normal(n, dtype=np.float32)
            pinned = cupyx.empty_pinned((n,), dtype=np.float32)
            pinned[...] = pageable
            dev = cupy.empty((n,), dtype=np.float32)
            copies = {
                ("h2d", "pageable"): lambda: dev.set(pageable),
                ("h2d", "pinned"): lambda: dev.set(pinned),
                ("d2h", "pageable"): lambda: dev.get(out=pageable),
                ("d2h", "pinned"): lambda: dev.get(out=pinned),
            }
            for (direction, memory), fn in copies.items():
                ctx.progress.step(f"{direction} {memory} {mib} MiB")
                t = time_call(fn, repeats=cfg.repeats, min_time=cfg.min_time, warmup=cfg.warmup, sync=be.synchronize)
                nbytes = n * 4
                records.append({
                    "key": f"transfer/{direction}/{memory}/{mib}MiB",
                    "direction": direction,
                    "memory": memory,
                    "bytes": nbytes,
                    "time_s": t,
                    "gb_per_s": nbytes / t["median"] / 1e9,
                    "status": "ok",
                })
            del pinned, dev
    return {"status": "ok", "reason": None, "parts": {"gpu": {"status": "ok", "reason": None, "records": records}}}
