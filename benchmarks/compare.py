"""``python -m benchmarks --compare A.json B.json``: what changed between two runs.

Records are matched by their ``key``; for each pair the median times and the ratio
B/A are printed (< 1: B is faster), with the geometric mean per section, and the
test accuracy of training runs side by side.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from benchmarks.schema import iter_records

__all__ = ["compare", "compare_files"]


def _times(doc: dict[str, Any]) -> dict[str, tuple[str, float, float | None]]:
    out = {}
    for sec, r in iter_records(doc):
        if r.get("status", "ok") != "ok" or "key" not in r:
            continue
        t = r.get("time_s") or r.get("gpu_time_s")
        if t:
            out[r["key"]] = (sec, float(t["median"]), r.get("accuracy"))
    return out


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Ratios B/A of the median times of the records both documents have.

    Returns
    -------
    dict
        ``{"rows": [{key, section, a_s, b_s, ratio, a_accuracy, b_accuracy}], "geomean":
        {section: ratio}, "only_a": [...], "only_b": [...]}``
    """
    ta, tb = _times(a), _times(b)
    rows = []
    for key in ta:
        if key in tb:
            sec, x, acc_a = ta[key]
            _, y, acc_b = tb[key]
            rows.append({"key": key, "section": sec, "a_s": x, "b_s": y, "ratio": y / x,
                         "a_accuracy": acc_a, "b_accuracy": acc_b})
    geo: dict[str, float] = {}
    for sec in dict.fromkeys(r["section"] for r in rows):
        rs = [r["ratio"] for r in rows if r["section"] == sec]
        geo[sec] = math.exp(sum(math.log(x) for x in rs) / len(rs))
    return {
        "rows": rows,
        "geomean": geo,
        "only_a": sorted(set(ta) - set(tb)),
        "only_b": sorted(set(tb) - set(ta)),
    }


def _fmt(s: float) -> str:
    return f"{s * 1e3:.4g} ms" if s < 1 else f"{s:.4g} s"


def compare_files(path_a: str | Path, path_b: str | Path) -> str:
    """The comparison of two results files as a Markdown table (what the CLI prints)."""
    a = json.loads(Path(path_a).read_text())
    b = json.loads(Path(path_b).read_text())
    res = compare(a, b)
    ma, mb = a.get("machine", {}), b.get("machine", {})
    lines = [
        f"A: {path_a} ({a.get('mode')}, {ma.get('date')}, {ma.get('cpu_model')}, git {ma.get('git', {}).get('commit')})",
        f"B: {path_b} ({b.get('mode')}, {mb.get('date')}, {mb.get('cpu_model')}, git {mb.get('git', {}).get('commit')})",
    ]
    if ma.get("cpu_model") != mb.get("cpu_model") or (ma.get("gpu") or {}).get("name") != (mb.get("gpu") or {}).get("name"):
        lines.append("NOTE: different machines; ratios compare hardware as well as code.")
    lines += ["", "B/A is a time ratio: below 1 means B is faster.", "",
              "| key | A | B | B/A | accuracy A → B |", "|---|---|---|---|---|"]
    for r in res["rows"]:
        acc = ""
        if r["a_accuracy"] is not None and r["b_accuracy"] is not None:
            acc = f"{100 * r['a_accuracy']:.1f} → {100 * r['b_accuracy']:.1f} %"
        lines.append(f"| {r['key']} | {_fmt(r['a_s'])} | {_fmt(r['b_s'])} | {r['ratio']:.3f} | {acc} |")
    lines += ["", "Geometric mean of B/A per section: "
              + (", ".join(f"{k} {v:.3f}" for k, v in res["geomean"].items()) or "no common records")]
    if res["only_a"] or res["only_b"]:
        lines.append(f"Records only in A: {len(res['only_a'])}; only in B: {len(res['only_b'])}.")
    return "\n".join(lines)
