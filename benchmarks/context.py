"""Run-wide state shared by the sections: config, devices, progress, peaks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from benchmarks.config import Config
from benchmarks.progress import Progress

__all__ = ["Context", "Progress", "skipped"]

NO_CUDA = "no CUDA device"


def skipped(reason: str) -> dict[str, Any]:
    """A part of a section that did not run, with the reason (recorded in the JSON)."""
    return {"status": "skipped", "reason": reason, "records": []}


@dataclass
class Context:
    """What every section receives.

    Attributes
    ----------
    cfg : Config
    gpu_reason : str or None
        Why the GPU is not used (None when it is): "no CUDA device" or "--backend cpu".
    progress : Progress
    peaks : dict
        Best measured GEMM rate (FLOP/s) per ``(device, dtype, threads)``, filled by
        the gemm section and read by train and scaling for the GEMM-bound floor.
    """

    cfg: Config
    gpu_reason: str | None
    progress: Progress
    peaks: dict[tuple[str, str, int | None], float] = field(default_factory=dict)

    @property
    def use_cpu(self) -> bool:
        return "cpu" in self.cfg.devices

    @property
    def use_gpu(self) -> bool:
        return self.gpu_reason is None

    @property
    def gpu(self) -> Any:
        from mlpx.backends import get_backend

        return get_backend("gpu")

    @property
    def cpu(self) -> Any:
        from mlpx.backends import get_backend

        return get_backend("cpu")
