"""Run-wide state shared by the sections: config, devices, progress, peaks."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

from benchmarks.config import Config

__all__ = ["Context", "Progress", "skipped"]

NO_CUDA = "no CUDA device"


def skipped(reason: str) -> dict[str, Any]:
    """A part of a section that did not run, with the reason (recorded in the JSON)."""
    return {"status": "skipped", "reason": reason, "records": []}


class Progress:
    """A progress bar over the run's measurements: tqdm when installed, plain lines otherwise.

    Parameters
    ----------
    total : int
        Expected number of steps (sections announce theirs up front).
    enabled : bool
        False silences it (tests).
    """

    def __init__(self, total: int, enabled: bool = True) -> None:
        self.total, self.n, self.enabled = total, 0, enabled
        self._bar = None
        self._t0 = time.perf_counter()
        if enabled and sys.stderr.isatty():  # a log file gets plain lines, not carriage returns
            try:
                from tqdm import tqdm

                self._bar = tqdm(total=total, unit="step", dynamic_ncols=True, file=sys.stderr, leave=True)
            except ImportError:
                self._bar = None

    def step(self, desc: str) -> None:
        """Announce the measurement about to run (advances when the next one starts)."""
        self.n += 1
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.set_description_str(desc[:60], refresh=False)
            self._bar.update(1)
        else:
            t = time.perf_counter() - self._t0
            print(f"[{self.n:3d}/{self.total}] {t:6.1f}s  {desc}", file=sys.stderr, flush=True)

    def note(self, text: str) -> None:
        """A line that stays visible (a skipped section, a failed check)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


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
