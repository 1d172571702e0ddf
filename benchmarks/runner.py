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
from benchmarks.run_folder import new_run_folder, reference_folder
from benchmarks.schema import SCHEMA_VERSION, SECTIONS, validate

__all__ = ["run_suite"]

# Section order matters: gemm measures the peak rates that train and scaling use.
_RUNNERS: dict[str, tuple[Callable[[Context], int], Callable[[Context], dict[str, Any]]]] = {
    "gemm": (gemm.count, gemm.gemm_section),
    "transfer": (transfer.count, transfer.transfer_section),
    "train": (train.count, train.train_section),
    "scaling": (scaling.count, scaling.scaling_section),
    "search": (search.count, search.search_section),
    "streaming": (streaming.count, streaming.streaming_section),
}


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
    update_reference: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the suite and write its outputs.

    Parameters
    ----------
    cfg : Config
        From :func:`benchmarks.make_config`.
    out_dir : path, optional
        Where to write. Default: a new folder under ``benchmarks/runs/``
        (:func:`benchmarks.run_folder.new_run_folder`), outside version control.
    argv : list of str, optional
        Recorded as the exact command.
    progress : bool
        Show the progress steps (stderr).
    make_plots, write : bool
        Draw the PNGs; write any file at all.
    update_reference : bool
        Write into the committed reference results of this machine,
        ``benchmarks/results/<machine-tag>/``, instead (with ``out_dir`` None).
    log : callable, optional
        Called with a line naming the output folder before the first measurement.

    Returns
    -------
    dict
        The results document (see :mod:`benchmarks.schema`), with ``"paths"`` of the
        written files added under ``doc["outputs"]`` when written.

    Raises
    ------
    ValueError
        For ``update_reference`` together with ``out_dir``.
    """
    if update_reference and out_dir is not None:
        raise ValueError("update_reference writes benchmarks/results/<machine-tag>/: pass no out_dir with it")
    t0 = time.perf_counter()
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    machine = machine_info(argv)
    out: Path | None = None
    if write:
        if out_dir is not None:
            out = Path(out_dir)
        elif update_reference:
            out = reference_folder(machine_tag(machine))
        else:
            out = new_run_folder(cfg.mode)
        out.mkdir(parents=True, exist_ok=True)
        if log is not None:
            log(f"mlpx benchmarks ({cfg.mode}): writing to {out}")
    probes = [{"when": "start", **busy_probe(cfg.threads)}]
    gpu_reason = _gpu_reason(cfg)
    ctx = Context(cfg=cfg, gpu_reason=gpu_reason, progress=Progress(0, enabled=False))
    counts = {s: _RUNNERS[s][0](ctx) for s in SECTIONS if s in cfg.sections}
    ctx.progress = Progress(sum(counts.values()), enabled=progress)
    sections: dict[str, Any] = {}
    try:
        for name in SECTIONS:
            if name not in cfg.sections:
                sections[name] = {"status": "skipped", "reason": "not selected (--only)"}
                continue
            t1 = time.perf_counter()
            ctx.progress.section = name
            end = ctx.progress.n + counts[name]
            try:
                sections[name] = _RUNNERS[name][1](ctx)
            except Exception as exc:  # one broken section must not lose the others
                tb = traceback.format_exc(limit=4)
                ctx.progress.note(f"section {name} failed: {exc}\n{tb}")
                sections[name] = {"status": "error", "reason": f"{type(exc).__name__}: {exc}"[:500]}
            ctx.progress.settle(end)  # the steps a failed or cut-short part did not reach
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
    if out is not None:
        paths = write_outputs(doc, out, make_plots=make_plots)
        doc["outputs"] = {k: str(v) for k, v in paths.items()}
    return doc
