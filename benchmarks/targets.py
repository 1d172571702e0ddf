"""The targets a run measured against, each met or not met.

The issues set bounds on measured ratios: issue 5 on training time ratios (per
workload, ``train`` section), issue 14 on the stacked grid search (``search``
section, CPU) and on a stack's GPU step time against K. :func:`targets` collects
every one a results document carries, and :func:`summary_lines` writes them for the
command's summary, ending with the line that says how many were not met (the
command's exit status does not: an unmet target is a measurement, not a failure
of the run).
"""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = ["Target", "summary_lines", "targets"]


class Target(NamedTuple):
    """One bound on one measured value (time ratios: lower is better).

    Attributes
    ----------
    what : str
        The section and the measured quantity, e.g. ``"train mlp512: mlpx-cpu / torch-cpu"``.
    measured, bound : float
        The value and the largest value that meets the target.
    met : bool
    """

    what: str
    measured: float
    bound: float
    met: bool


def targets(doc: dict[str, Any]) -> list[Target]:
    """Every target in a results document, in section order.

    Parameters
    ----------
    doc : dict
        A results document (:mod:`benchmarks.schema`).

    Returns
    -------
    list of Target
    """
    secs = doc.get("sections", {})
    out: list[Target] = []
    train = secs.get("train", {})
    if train.get("status") == "ok":
        for wl in train.get("workloads", []):
            for q in wl.get("ratios", []):
                if "target" in q:
                    out.append(Target(f"train {wl['name']}: {q['numerator']} / {q['denominator']}",
                                      q["ratio"], q["target"], bool(q["met"])))
    search = secs.get("search") or {}
    if search.get("status") == "ok":
        grid = search.get("grid", {})
        if grid.get("status") == "ok":
            for q in grid.get("ratios", []):
                out.append(Target(f"search grid: {q['numerator']} / {q['denominator']}", q["ratio"], q["target"],
                                  bool(q["met"])))
        for dev, part in search.get("members", {}).get("parts", {}).items():
            t = part.get("target") if part.get("status") == "ok" else None
            if t:
                out.append(Target(f"search members {dev}: worst stack step / one member's, K <= {t['up_to_members']}",
                                  t["ratio"], t["bound"], bool(t["met"])))
    return out


def summary_lines(doc: dict[str, Any]) -> list[str]:
    """The summary's target block: one line per target with "met" / "not met", then the count.

    The last line is ``"all N targets met"``, ``"K of N targets not met"`` or
    ``"no targets measured in this run"``.
    """
    ts = targets(doc)
    if not ts:
        return ["no targets measured in this run"]
    lines = ["targets" + ("" if doc.get("mode") == "full" else
                          " (stated for --full sizes; this mode measures smaller ones)") + ":"]
    for t in ts:
        lines.append(f"  {'met' if t.met else 'not met':7s}  {t.what} = {t.measured:.3f} (target <= {t.bound})")
    missed = sum(not t.met for t in ts)
    lines.append(f"all {len(ts)} targets met" if not missed else f"{missed} of {len(ts)} targets not met")
    return lines
