"""Run the selected sections and assemble the results document."""

from __future__ import annotations

import datetime as _dt
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from benchmarks import gemm, scaling, search, streaming, train, transfer
from benchmarks.config import Config
from benchmarks.context import NO_CUDA, Context, Progress
from benchmarks.machine import busy_probe, loadavg, machine_info, machine_tag
from benchmarks.report import write_outputs
from benchmarks.schema import SCHEMA_VERSION, SECTIONS, validate

__all__ = ["default_out_dir", "run_suite"]

# Section order matters: gemm measures the peak rates that train and scaling use.
_RUNNERS: dict[str, tuple[Callable[[Context], int], Callable[[Context], dict[str, Any]]]] = {
    "gemm": (gemm.count, gemm.gemm_section),
    "transfer": (transfer.count, transfer.transfer_section),
    "train": (train.count, train.train_section),
    "scaling": (scaling.count, scaling.scaling_section),
    "search": (search.count, search.search_section),
    "streaming": (streaming.count, streaming.streaming_section),
}


def default_out_dir(machine: dict[str, Any]) -> Path:
    """``benchmarks/results/<machine-tag>/`` next to this package."""
    return Path(__file__).resolve().parent / "results" / machine_tag(machine)


def _gpu_reason(cfg: Config) -> str | None:
    if "gpu" not in cfg.devices:
        return "--backend cpu"
    from mlpx.backends import cuda_available

    return None if cuda_available() else NO_CUDA


def run_suite(
    cfg: Config,
    out_dir: str | Path | None = None,
    argv: list[str] | None = None,
    progress: bool = True,
    make_plots: bool = True,
    write: bool = True,
) -> dict[str, Any]:
    """Run the suite and write its outputs.

    Parameters
    ----------
    cfg : Config
        From :func:`benchmarks.make_config`.
    out_dir : path, optional
        Defaults to :func:`default_out_dir`.
    argv : list of str, optional
        Recorded as the exact command.
    progress : bool
        Show the progress bar (stderr).
    make_plots, write : bool
        Draw the PNGs; write any file at all.

    Returns
    -------
    dict
        The results document (see :mod:`benchmarks.schema`), with ``"paths"`` of the
        written files added under ``doc["outputs"]`` when written.
    """
    t0 = time.perf_counter()
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    machine = machine_info(argv)
    probes = [{"when": "start", **busy_probe(cfg.threads)}]
    gpu_reason = _gpu_reason(cfg)
    ctx = Context(cfg=cfg, gpu_reason=gpu_reason, progress=Progress(0, enabled=False))
    total = sum(_RUNNERS[s][0](ctx) for s in SECTIONS if s in cfg.sections)
    ctx.progress = Progress(total, enabled=progress)
    sections: dict[str, Any] = {}
    try:
        for name in SECTIONS:
            if name not in cfg.sections:
                sections[name] = {"status": "skipped", "reason": "not selected (--only)"}
                continue
            t1 = time.perf_counter()
            try:
                sections[name] = _RUNNERS[name][1](ctx)
            except Exception as exc:  # one broken section must not lose the others
                tb = traceback.format_exc(limit=4)
                ctx.progress.note(f"section {name} failed: {exc}\n{tb}")
                sections[name] = {"status": "error", "reason": f"{type(exc).__name__}: {exc}"[:500]}
            sections[name]["wall_s"] = max(time.perf_counter() - t1, 1e-9)
            probes.append({"when": f"after {name}", **busy_probe(cfg.threads)})
    finally:
        ctx.progress.close()
    machine["load_avg_end"] = loadavg()
    machine["busy_probes"] = probes
    machine["busy"] = any(p["busy"] for p in probes)
    doc: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "suite": "mlpx-benchmarks",
        "mode": cfg.mode,
        "machine": machine,
        "config": cfg.to_dict(),
        "started_at": started,
        "wall_s": time.perf_counter() - t0,
        "gpu_status": {"used": gpu_reason is None, "reason": gpu_reason},
        "sections": sections,
    }
    problems = validate(doc)
    if problems:
        doc["validation_errors"] = problems
    if write:
        out = Path(out_dir) if out_dir is not None else default_out_dir(machine)
        paths = write_outputs(doc, out, make_plots=make_plots)
        doc["outputs"] = {k: str(v) for k, v in paths.items()}
    return doc
