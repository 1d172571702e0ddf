"""Progress of a benchmark run: numbered, labelled steps, and a sign of life while one runs.

Each step is one measurement (or one stage) announced before it runs, labelled
with its section: ``[3/128] train: digits warm-up mlpx-cpu``. The sections count
their steps up front (each section's ``count``), so the total is the number of
steps the run announces.

- On a terminal, with tqdm installed: a tqdm bar whose postfix is a spinner and
  the running step's seconds, redrawn every ``spin_s`` while the step runs.
- Otherwise (a log file, CI, or no tqdm): one plain line per step, and a plain
  ``still running`` line every ``heartbeat_s`` seconds for a step that takes
  longer, so a log shows the run is alive and stays free of carriage returns.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, TextIO

__all__ = ["Progress", "SPINNER"]

SPINNER = "|/-\\"


class Progress:
    """Numbered, labelled steps on ``stream`` (stderr), with a heartbeat thread.

    Parameters
    ----------
    total : int
        Steps the run will announce (sum of the sections' counts).
    enabled : bool
        False counts the steps silently (tests, ``--quiet``).
    stream : text stream, optional
        Where to write (default ``sys.stderr`` at construction). A terminal gets
        the tqdm bar when tqdm is installed; anything else gets plain lines.
    heartbeat_s : float
        Plain output: seconds between ``still running`` lines of a long step.
    spin_s : float
        Bar output: seconds between spinner frames.

    Attributes
    ----------
    n : int
        Steps announced so far.
    section : str
        The section whose steps are being announced (prefixes each label).
    """

    def __init__(self, total: int, enabled: bool = True, *, stream: TextIO | None = None,
                 heartbeat_s: float = 15.0, spin_s: float = 0.25) -> None:
        if heartbeat_s <= 0 or spin_s <= 0:
            raise ValueError("heartbeat_s and spin_s must be > 0 seconds")
        self.total, self.n, self.enabled, self.section = total, 0, enabled, ""
        self.stream = stream if stream is not None else sys.stderr
        self._label = ""
        self._t0 = time.perf_counter()
        self._t_step = self._t_line = self._t0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._bar: Any = None
        self._thread: threading.Thread | None = None
        self._heartbeat_s = heartbeat_s
        if not enabled:
            return
        if _isatty(self.stream):  # a log file gets plain lines, not carriage returns
            try:
                from tqdm import tqdm

                self._bar = tqdm(total=total, unit="step", dynamic_ncols=True, file=self.stream, leave=True)
            except ImportError:
                self._bar = None
        self._thread = threading.Thread(target=self._beat, args=(spin_s if self._bar is not None else
                                                                 min(heartbeat_s, 1.0),),
                                        name="benchmarks-progress", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- steps
    def step(self, desc: str) -> None:
        """Announce the step about to run: the counter advances and shows its label.

        Parameters
        ----------
        desc : str
            What runs now (non-empty), e.g. ``"digits mlpx-cpu run 1/3"``.

        Raises
        ------
        ValueError
            For an empty label.
        """
        if not desc.strip():
            raise ValueError("a progress step needs a label")
        with self._lock:
            self.n += 1
            self._label = f"{self.section}: {desc}" if self.section else desc
            self._t_step = self._t_line = time.perf_counter()
            if not self.enabled:
                return
            if self._bar is not None:
                self._bar.set_description_str(self._label[:70], refresh=False)
                self._bar.set_postfix_str("", refresh=False)
                self._bar.update(1)
            else:
                self._write(f"[{self.n}/{self.total}] {self._label}  (at {self._t_step - self._t0:.0f} s)")

    def settle(self, n: int) -> None:
        """Advance the counter to ``n`` without labels: the steps of a section that stopped early."""
        with self._lock:
            if n <= self.n:
                return
            skipped, self.n = n - self.n, n
            if self.enabled and self._bar is not None:
                self._bar.update(skipped)

    def note(self, text: str) -> None:
        """A line that stays visible (a skipped section, a failed check)."""
        with self._lock:
            if not self.enabled:
                return
            if self._bar is not None:
                self._bar.write(text, file=self.stream)
            else:
                self._write(text)

    def close(self) -> None:
        """Stop the heartbeat and close the bar (idempotent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._lock:
            if self._bar is not None:
                self._bar.close()
                self._bar = None

    # ------------------------------------------------------------ heartbeat
    def _beat(self, interval: float) -> None:
        frame = 0
        while not self._stop.wait(interval):
            with self._lock:
                if self.n == 0:
                    continue
                now = time.perf_counter()
                running = now - self._t_step
                if self._bar is not None:
                    frame += 1
                    self._bar.set_postfix_str(f"{SPINNER[frame % len(SPINNER)]} {running:.0f} s", refresh=True)
                elif now - self._t_line >= self._heartbeat_s:
                    self._write(f"[{self.n}/{self.total}] {self._label}: still running ({running:.0f} s)")
                    self._t_line = now

    def _write(self, line: str) -> None:
        print(line, file=self.stream, flush=True)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
