"""Where a run writes: a fresh folder per run, or the committed reference results.

``python -m benchmarks`` writes each run into a new folder under ``benchmarks/runs/``
(``<UTC date>-<time>-<mode>``, e.g. ``benchmarks/runs/20260107-141502-quick``),
which ``.gitignore`` keeps out of version control: a run never changes a
committed file, next to the code it measured it is easy to find and to
``--compare`` with the reference, and it needs no dependency to locate (a user
cache folder would hide the results from the checkout they belong to). The
committed reference results of a machine, ``benchmarks/results/<machine-tag>/``,
change only with ``--update-reference``.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

__all__ = ["REFERENCE_ROOT", "RUNS_ROOT", "new_run_folder", "reference_folder"]

_HERE = Path(__file__).resolve().parent
RUNS_ROOT = _HERE / "runs"
REFERENCE_ROOT = _HERE / "results"


def new_run_folder(mode: str, root: Path | None = None, now: _dt.datetime | None = None) -> Path:
    """Create and return a new, empty folder for one run.

    Parameters
    ----------
    mode : str
        The run's mode ("quick", "full", "tiny"): the folder name's suffix.
    root : path, optional
        Parent folder (default :data:`RUNS_ROOT`, ``benchmarks/runs/``).
    now : datetime, optional
        The time in the name (default: now, UTC).

    Returns
    -------
    Path
        ``root/<YYYYmmdd-HHMMSS>-<mode>``, with ``-2``, ``-3``, ... appended when a
        run of the same second already has the name. Never an existing folder.
    """
    root = RUNS_ROOT if root is None else Path(root)
    stamp = (now or _dt.datetime.now(_dt.timezone.utc)).strftime("%Y%m%d-%H%M%S")
    root.mkdir(parents=True, exist_ok=True)
    for i in range(1, 1000):
        path = root / (f"{stamp}-{mode}" + (f"-{i}" if i > 1 else ""))
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"no free run folder name for {stamp}-{mode} under {root}")


def reference_folder(tag: str) -> Path:
    """``benchmarks/results/<tag>/``: the committed reference results of a machine."""
    return REFERENCE_ROOT / tag
