"""
Reading a benchmark report
==========================

``python -m benchmarks`` writes ``report.md`` (tables) and ``results.json`` (every
number, schema in ``benchmarks/schema.py``) into ``benchmarks/results/<machine>/``.
This page reads the committed full run of the 2-core AMD EPYC machine and shows
what to look at: the machine and its load first, then times per epoch *with* the
test accuracy beside them, then the ratios the project has targets for.
"""

import json
from pathlib import Path

import matplotlib.pyplot as plt

try:
    HERE = Path(__file__).resolve().parent
except NameError:  # run interactively
    HERE = Path.cwd()
RESULTS = HERE.parent / "benchmarks" / "results"
path = max(RESULTS.glob("*/results-full.json"), key=lambda p: p.stat().st_mtime)
doc = json.loads(path.read_text())
print(path.relative_to(HERE.parent), "schema", doc["schema_version"], "mode", doc["mode"])

# %%
# The machine. Timings are only comparable within one run: the ratios below
# are measured side by side, in interleaved rounds. A load average above the
# core count means other work competed for the cores.
machine = doc["machine"]
print(machine["cpu_model"], "-", machine["cpu_cores"], "cores")
print("load average at start / end:", machine.get("load_avg_start"), "/", machine.get("load_avg_end"))
print("GPU:", doc["gpu_status"])

# %%
# Seconds per epoch and test accuracy, per workload and implementation. Rows
# that could not run here (no CUDA device) carry their reason instead of a time.
train = doc["sections"]["train"]["workloads"]
fig, axes = plt.subplots(1, len(train), figsize=(4 * len(train), 3.6))
for ax, workload in zip(axes, train):
    rows = [i for i in workload["implementations"] if i["status"] == "ok"]
    skipped = [i["name"] for i in workload["implementations"] if i["status"] != "ok"]
    ax.barh([r["name"] for r in rows], [r["s_per_epoch"] for r in rows])
    for k, r in enumerate(rows):
        ax.text(r["s_per_epoch"], k, f" {100 * r['accuracy']:.1f} %", va="center", fontsize=8)
    ax.set_title(f"{workload['name']} {workload['label']}", fontsize=9)
    ax.set_xlabel("s / epoch")
    print(f"{workload['name']}: not run here: {', '.join(skipped)}")
fig.tight_layout()

# %%
# The ratios with targets, and whether they were met in this run.
for workload in train:
    for ratio in workload["ratios"]:
        if ratio.get("target") is not None:
            met = "met" if ratio["met"] else "NOT met"
            print(f"{workload['name']:9s} {ratio['numerator']} / {ratio['denominator']}: "
                  f"{ratio['ratio']:.2f} (target <= {ratio['target']}, {met})")
grid = doc["sections"]["search"]["grid"]
for ratio in grid["ratios"]:
    print(f"search    {ratio['numerator']} / {ratio['denominator']}: {ratio['ratio']:.3f} "
          f"(rounds {ratio['round_range'][0]:.3f}-{ratio['round_range'][1]:.3f}, target <= {ratio['target']})")
