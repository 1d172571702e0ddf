"""Write a run's results: ``results.json``, ``report.md`` and PNG plots.

Plots need matplotlib (the Agg backend, no display); without it the report says so
and the JSON and Markdown are written anyway.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from benchmarks.targets import summary_lines
from benchmarks import streaming

__all__ = ["markdown", "plots", "write_outputs"]


def _ms(s: float) -> str:
    if s >= 1.0:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    return f"{s * 1e6:.3g} µs"


def _spread(t: dict[str, float]) -> str:
    return f"{_ms(t['median'])} [{_ms(t['min'])}–{_ms(t['max'])}]"


def _table(head: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out + [""]


def _skip_line(what: str, part: dict[str, Any]) -> list[str]:
    return [f"*{what}: skipped: {part.get('reason')}*", ""]


# ------------------------------------------------------------------ markdown
def markdown(doc: dict[str, Any], plot_files: dict[str, str], plot_note: str | None) -> str:
    m = doc["machine"]
    L: list[str] = [f"# mlpx benchmarks ({doc['mode']})", ""]
    gpu = m.get("gpu")
    pools = "; ".join(
        f"{p.get('internal_api')} {p.get('version')} ({p.get('user_api')}, {p.get('num_threads')} threads"
        + (f", {p.get('architecture')}" if p.get("architecture") else "") + ")"
        for p in m.get("thread_pools", [])
    )
    v = m.get("versions", {})
    L += _table(["", ""], [
        ["command", f"`{m['command']}`"],
        ["date (UTC)", m["date"]],
        ["wall time", f"{doc['wall_s']:.0f} s"],
        ["load average (1/5/15 min)", f"start {m.get('load_avg_start')}, end {m.get('load_avg_end')} "
         f"(on {m['cpu_cores']} cores; above the core count, other work was competing)"],
        ["CPU", f"{m['cpu_model']}, {m['cpu_cores']} cores usable"],
        ["BLAS / thread pools", pools or "unknown"],
        ["BLAS threads used", str(doc["config"]["threads"])],
        ["GPU", f"{gpu['name']}, {gpu['memory_gib']} GiB, cc {gpu['compute_capability']}, CUDA runtime {gpu['cuda_runtime']}"
         if gpu else f"none ({doc['gpu_status']['reason']})"],
        ["versions", ", ".join(f"{k} {val}" for k, val in v.items() if val) + f"; Python {m['python']}"],
        ["not installed", ", ".join(k for k, val in v.items() if not val) or "—"],
        ["git", f"{m['git'].get('commit')}" + (" (engine modified)" if m["git"].get("engine_modified") else "")],
    ])
    busy = [p for p in m.get("busy_probes", []) if p.get("busy")]
    if busy:
        t = doc["config"]["threads"]
        probes = "; ".join(
            f"{p['when']}: {1e3 * p['gemm256_1t_s']:.2f} ms on 1 thread, {1e3 * p[f'gemm256_{t}t_s']:.2f} ms on {t}"
            for p in busy)
        L += [f"**Warning: the CPU was shared with other work during this run** (256³ GEMM probe, {probes}). "
              "Multi-threaded timings wait for scheduler time slices and are unreliable; re-run on a quiet machine.", ""]
    L += ["Times are medians over repeats, with [min–max]. Ratios are time ratios (< 1: the first is faster).", ""]
    secs = doc["sections"]
    L += _summary(secs, doc["mode"])
    L += [f"**Targets: {summary_lines(doc)[-1]}.**", ""]
    L += _gemm(secs["gemm"], plot_files)
    L += _transfer(secs["transfer"])
    L += _train(secs["train"], plot_files)
    L += _scaling(secs["scaling"], plot_files)
    L += _search(secs.get("search"), plot_files)
    L += streaming.markdown(secs.get("streaming"), _table)
    if plot_note:
        L += [f"*Plots: {plot_note}*", ""]
    if doc.get("validation_errors"):
        L += ["## Schema problems", ""] + [f"- {e}" for e in doc["validation_errors"]] + [""]
    return "\n".join(L)


def _summary(secs: dict[str, Any], mode: str) -> list[str]:
    L = ["## Summary", ""]
    L += _search_summary(secs.get("search"))
    g = secs["gemm"]
    if g["status"] not in ("skipped", "error"):
        rows = []
        for dev, part in g["parts"].items():
            for dt, rate in part.get("peak_gflops", {}).items():
                rows.append([dev, dt, f"{rate:.1f}"])
        if rows:
            L += ["Best GEMM rate measured (GFLOP/s):", ""] + _table(["device", "dtype", "GFLOP/s"], rows)
    t = secs["train"]
    if t["status"] == "ok":
        names: list[str] = []
        for wl in t["workloads"]:
            for r in wl.get("implementations", []):
                if r["name"] not in names:
                    names.append(r["name"])
        rows = []
        for wl in t["workloads"]:
            by = {r["name"]: r for r in wl.get("implementations", [])}
            row = [f"{wl['name']} ({wl.get('n_train')} samples)"]
            for n in names:
                r = by.get(n)
                row.append(f"{r['s_per_epoch']:.3g} s ({100 * r['accuracy']:.1f} %)" if r and "s_per_epoch" in r else "—")
            rows.append(row)
        L += ["Training, seconds per epoch (test accuracy):", ""] + _table(["workload"] + names, rows)
        rows = []
        for wl in t["workloads"]:
            for q in wl.get("ratios", []):
                if "target" in q:
                    rows.append([wl["name"], f"{q['numerator']} / {q['denominator']}", f"{q['ratio']:.2f}",
                                 f"≤ {q['target']}", "met" if q["met"] else "**not met**",
                                 f"{q['accuracy_delta_pp']:+.1f}" if "accuracy_delta_pp" in q else "—"])
        if rows:
            note = "" if mode == "full" else "; this mode trains on fewer samples than `--full`, which the targets are stated for"
            L += [f"Issue 5 targets (time ratios measured side by side in this run{note}):", ""]
            L += _table(["workload", "ratio", "measured", "target", "met", "Δ accuracy (pp)"], rows)
        rows = [[wl["name"], m["precision"], f"{m['speedup_vs_float32']:.2f}×", f"{m['accuracy_delta_pp']:+.2f}"]
                for wl in t["workloads"] for m in wl.get("precision_modes", []) if m["status"] == "ok"]
        if rows:
            L += ["GPU precision modes against float32 mlpx-gpu (speed-up > 1: faster; test accuracy difference):", ""]
            L += _table(["workload", "mode", "speed-up", "Δ accuracy (pp)"], rows)
    return L


def _gemm(s: dict[str, Any], plots: dict[str, str]) -> list[str]:
    L = ["## GEMM: backend.gemm (BLAS / cuBLAS)", ""]
    if s["status"] in ("skipped", "error"):
        return L + [f"*{s['status']}: {s.get('reason')}*", ""]
    L += ["Each product was checked once against a float64 reference (sampled 16×64 block, no BLAS) before timing; "
          "`err` is the max error relative to |A||B|. `% peak`: of the best rate for that dtype on that device.", ""]
    if "gemm" in plots:
        L += [f"![GEMM GFLOP/s]({plots['gemm']})", ""]
    for dev, part in s["parts"].items():
        if part["status"] != "ok":
            L += _skip_line(f"GEMM {dev}", part)
            continue
        sq = [r for r in part["records"] if r["kind"] == "square"]
        st = [r for r in part["records"] if r["kind"] == "step"]
        L += [f"### {dev}: square n×n×n", ""]
        L += _table(["n", "dtype", "threads", "time", "GFLOP/s", "% peak", "err"], [_gemm_row(r, [r["m"]]) for r in sq])
        L += [f"### {dev}: the products of an MLP step", ""]
        L += _table(["network", "batch", "op", "m×n×k", "dtype", "threads", "time", "GFLOP/s", "% peak", "err"],
                    [_gemm_row(r, [r["network"], r["batch"], f"{r['op']} L{r['layer']}", f"{r['m']}×{r['n']}×{r['k']}"]) for r in st])
    c = s.get("crossover", {})
    L += ["### GPU/CPU crossover", ""]
    if c.get("status") != "ok":
        L += [f"*skipped: {c.get('reason')}*", ""]
    else:
        L += [f"Step GEMMs of {c['network']} in float32, data resident on each device. GPU faster from batch "
              f"**{c['crossover_batch']}**." if c["crossover_batch"] else "The GPU was never faster.", ""]
        L += _table(["batch", "CPU step GEMMs", "GPU step GEMMs", "GPU speed-up"],
                    [[r["batch"], _ms(r["cpu_time_s"]["median"]), _ms(r["gpu_time_s"]["median"]), f"{r['gpu_speedup']:.1f}×"]
                     for r in c["records"]])
    L += _blas(s.get("blas"))
    return L


def _blas(b: dict[str, Any] | None) -> list[str]:
    """The CPU BLAS providers on each network's step products."""
    L = ['### CPU BLAS providers (`backend="cpu:<blas>"`)', ""]
    if not b:
        return L + ["*not measured (results file older than schema 1.2)*", ""]
    if b["status"] != "ok":
        return L + [f"*{b['status']}: {b.get('reason')}*", ""]
    provs = ", ".join(f"{p['name']} {p['version']}".strip() for p in b["providers"])
    L += [f"All products of one float32 training step at the network's batch size, {b['threads']} threads, "
          f"providers interleaved round by round; median over rounds [min–max]. Measured: {provs}."
          + (f" Not installed: {', '.join(b['not_installed'])}." if b.get("not_installed") else ""), ""]
    rows = []
    for r in b["records"]:
        if r["status"] != "ok":
            rows.append([r["network"], r["batch"], r["provider"], r["status"], r.get("reason", ""), "", ""])
            continue
        best = b["fastest"].get(r["network"]) == r["provider"]
        rows.append([r["network"], r["batch"], f"**{r['provider']}**" if best else r["provider"], _spread(r["time_s"]),
                     f"{r['gflops']:.1f}", f"{r.get('ratio_to_numpy', float('nan')):.2f}", f"{r['max_rel_error']:.1e}"])
    L += _table(["network", "batch", "provider", "step GEMMs", "GFLOP/s", "× numpy", "err"], rows)
    L += ["Fastest (bold) per network: " + ", ".join(f"{k} → {v}" for k, v in b["fastest"].items()) + ".", ""]
    return L


def _gemm_row(r: dict[str, Any], lead: list[Any]) -> list[Any]:
    t = "—" if r["threads"] is None else r["threads"]
    if r["status"] != "ok":
        return lead + [r["dtype"], t, r["status"], r.get("reason", ""), "", ""]
    return lead + [r["dtype"], t, _spread(r["time_s"]), f"{r['gflops']:.1f}", f"{100 * r['fraction_of_peak']:.0f}",
                   f"{r['verify']['max_rel_error']:.1e}"]


def _transfer(s: dict[str, Any]) -> list[str]:
    L = ["## Host↔device transfer", ""]
    part = s.get("parts", {}).get("gpu", {})
    if s["status"] != "ok" or part.get("status") != "ok":
        return L + [f"*skipped: {s.get('reason') or part.get('reason')}*", ""]
    L += _table(["direction", "host memory", "MiB", "time", "GB/s"],
                [[r["direction"], r["memory"], r["bytes"] // 2**20, _spread(r["time_s"]), f"{r['gb_per_s']:.1f}"]
                 for r in part["records"]])
    return L


def _train(s: dict[str, Any], plots: dict[str, str]) -> list[str]:
    L = ["## Training throughput", ""]
    if s["status"] != "ok":
        return L + [f"*{s['status']}: {s.get('reason')}*", ""]
    L += ["Same network, data, batch, Adam (lr 1e-3), epochs; fresh model per run; runs interleaved in the order "
          "listed; one `fit` call timed end to end. ×floor: over the GEMM-bound floor (epoch matmul FLOPs / best float32 "
          "GEMM rate of the device); ×GEMMs: over the measured time of the step's GEMMs alone.", ""]
    if "train" in plots:
        L += [f"![samples/s]({plots['train']})", ""]
    for wl in s["workloads"]:
        L += [f"### {wl['name']}: {wl.get('label', '')}", ""]
        if wl["status"] != "ok":
            L += [f"*skipped: {wl.get('reason')}*", ""]
            continue
        L += [f"{wl['data']} data, {wl['n_train']} training / {wl['n_test']} test samples, {wl['epochs']} epoch(s) "
              f"per run ({wl['steps_per_epoch']} steps each), {wl['repeats']} interleaved repeats.", ""]
        if wl["steps_per_epoch"] * wl["epochs"] < 30:
            L += [f"*Only {wl['steps_per_epoch'] * wl['epochs']} optimizer steps per run: accuracies still depend "
                  "on each library's own initialisation (PyTorch's differs from the Glorot scheme mlpx and "
                  "scikit-learn share); compare accuracy in a `--full` run.*", ""]
        rows = []
        for r in wl["implementations"]:
            if r["status"] != "ok" or "s_per_epoch" not in r:
                rows.append([r["name"], r["device"], "", f"{r['status']}: {r.get('reason')}", "", "", "", ""])
                continue
            rows.append([r["name"], r["device"], r["threads"] or "—", _spread(r["time_s"]), f"{r['samples_per_s']:,.0f}",
                         f"{r['ratio_to_floor']:.2f}" if "ratio_to_floor" in r else "—",
                         f"{r['ratio_to_gemms_alone']:.2f}" if "ratio_to_gemms_alone" in r else "—",
                         f"{100 * r['accuracy']:.2f} %"])
        L += _table(["implementation", "device", "threads", "s/epoch", "samples/s", "×floor", "×GEMMs", "accuracy"], rows)
        for dev, f in wl["floors"].items():
            if f["status"] == "ok":
                L += [f"- {dev} floor {_ms(f['floor_s_per_epoch'])}/epoch at {f['peak_gflops']:.1f} GFLOP/s "
                      f"({f['peak_source']}); GEMMs alone {_ms(f['gemms_alone_s_per_epoch'])}/epoch "
                      f"({f['gemms_alone_gflops']:.1f} GFLOP/s)."]
            else:
                L += [f"- {dev} floor: skipped: {f.get('reason')}"]
        mem = wl.get("memory", {})
        if mem.get("status") == "ok":
            L += [f"- mlpx cpu peak host memory allocated in one epoch on {mem['n_samples']} samples: "
                  f"{mem['peak_traced_mib']:.1f} MiB (data {mem['data_mib']:.1f}, parameters {mem['params_mib']:.2f}, "
                  f"one batch of activations {mem['batch_activations_mib']:.2f} MiB)."]
        if mem.get("gpu", {}).get("status") == "ok":
            L += [f"- mlpx gpu: CuPy memory pool peak in one epoch on {mem['n_samples']} samples: "
                  f"{mem['gpu']['pool_peak_mib']:.1f} MiB."]
        L += [""]
        rows = [[f"{q['numerator']} / {q['denominator']}", f"{q['ratio']:.2f}",
                 f"{q['round_range'][0]:.2f}–{q['round_range'][1]:.2f}" if q.get("round_range") else "—",
                 f"{q['accuracy_delta_pp']:+.1f}" if "accuracy_delta_pp" in q else "—",
                 f"≤ {q['target']} ({'met' if q['met'] else 'not met'})" if "target" in q else ""]
                for q in wl["ratios"]]
        if rows:
            L += _table(["time ratio", "median", "range over rounds", "Δ accuracy (pp)", "issue 5 target"], rows)
        L += _precision(wl)
    return L


def _precision(wl: dict[str, Any]) -> list[str]:
    """The workload's "GPU precision modes" table (nothing for a 1.0 results file)."""
    modes = wl.get("precision_modes")
    if not modes:
        return []
    L = [f"#### {wl['name']}: GPU precision modes", ""]
    if all(m["status"] != "ok" for m in modes) and len({(m["status"], m.get("reason")) for m in modes}) == 1:
        return L + [f"*{', '.join(m['name'] for m in modes)}: {modes[0]['status']}: {modes[0].get('reason')}*", ""]
    L += ["`mlpx.MLP(..., precision=P)` against the float32 row mlpx-gpu, both trained from the same seed in each "
          "round. Speed-up: float32 time / mode time, median of the rounds (> 1: the mode is faster). "
          "Δ accuracy: mode − float32 test accuracy in percentage points, medians and [per-round range].", ""]
    rows = []
    for m in modes:
        if m["status"] != "ok":
            rows.append([m["precision"], m["name"], f"{m['status']}: {m.get('reason')}", "", "", "", "", ""])
            continue
        lo, hi = m["round_range"]  # of the time ratio: the speed-up's range is its inverse
        a, b = m["accuracy_delta_range_pp"]
        rows.append([
            m["precision"], m["name"], _ms(m["s_per_epoch"]),
            f"**{m['speedup_vs_float32']:.2f}×** ({'faster' if m['faster_than_float32'] else 'not faster'})",
            f"{1 / hi:.2f}–{1 / lo:.2f}×",
            f"{m['ratio_to_torch_cuda']:.2f}" if "ratio_to_torch_cuda" in m else "—",
            f"{100 * m['accuracy']:.2f} % ({100 * m['accuracy_float32']:.2f} %)",
            f"{m['accuracy_delta_pp']:+.2f} [{a:+.2f}, {b:+.2f}]",
        ])
    return L + _table(["mode", "implementation", "s/epoch", "speed-up vs float32", "speed-up over rounds",
                       "time ratio to torch-cuda", "accuracy (float32)", "Δ accuracy (pp)"], rows)


def _search_summary(s: dict[str, Any] | None) -> list[str]:
    g = (s or {}).get("grid", {})
    if g.get("status") != "ok":
        return []
    rows = [[f"{q['numerator']} / {q['denominator']}", f"{q['ratio']:.2f}", f"≤ {q['target']}",
             "met" if q["met"] else "**not met**"] for q in g.get("ratios", [])]
    if not rows:
        return []
    return [f"Issue 14 targets (grid search of {g['n_fits']} fits, max_iter {g['max_iter']}, side by side):", ""] + \
        _table(["ratio", "measured", "target", "met"], rows)


def _search(s: dict[str, Any] | None, plots: dict[str, str]) -> list[str]:
    L = ["## Search: a grid of fits in one pass (stacks)", ""]
    if not s:
        return L + ["*not measured (results file older than schema 1.3)*", ""]
    if s["status"] != "ok":
        return L + [f"*{s['status']}: {s.get('reason')}*", ""]
    g = s.get("grid", {})
    if g.get("status") != "ok":
        L += [f"*grid: {g.get('status')}: {g.get('reason')}*", ""]
    else:
        L += [f"{g['data']}; hidden {g['sizes'][1:-1]}, Adam, max_iter {g['max_iter']}, batch {g['batch']}; alpha "
              f"{g['alphas']} × learning_rate_init {g['learning_rates']} × {g['folds']} folds = {g['n_fits']} fits, "
              f"refit=False; {g['rounds']} interleaved round(s), wall seconds of one search `fit`.", ""]
        ff = g["flop_floor"]
        rows = []
        for r in g["records"]:
            if r["status"] != "ok":
                rows.append([r["name"], f"{r['status']}: {r.get('reason')}", "", "", ""])
                continue
            rows.append([r["name"], _spread(r["time_s"]), f"{1e3 * r['s_per_fit']:.0f} ms",
                         f"{r['time_s']['median'] / ff['floor_s']:.1f}", f"{r['best_mean_test_score']:.4f}"])
        L += _table(["search", "time", "per fit", "× flop floor", "best mean test score"], rows)
        L += [f"- Flop floor: {ff['gflop']:.1f} GFLOP in the products the steps run ({ff['gflop_three_per_layer']:.1f} "
              f"GFLOP counting 3 products per layer, the first layer's dX included), {ff['floor_s']:.2f} s "
              f"({ff['floor_s_three_per_layer']:.2f} s) at {ff['peak_gflops_float64']:.1f} GFLOP/s float64 "
              f"({ff['peak_source']}).",
              f"- Every fit of the stacked search trained in a stack: {'yes' if g.get('stacked_all') else 'no'}."]
        for d in g.get("score_differences", []):
            L.append(f"- Largest difference of mean test scores, mlpx-stacked vs {d['against']}: "
                     f"{d['max_abs_score_difference']:.3g}.")
        L += [""]
        rows = [[f"{q['numerator']} / {q['denominator']}", f"{q['ratio']:.3f}",
                 f"{q['round_range'][0]:.3f}–{q['round_range'][1]:.3f}", f"≤ {q['target']} "
                 f"({'met' if q['met'] else 'not met'})"] for q in g.get("ratios", [])]
        if rows:
            L += _table(["time ratio", "median", "range over rounds", "issue 14 target"], rows)
    if "search" in plots:
        L += [f"![stack step time against members]({plots['search']})", ""]
    for dev, part in s.get("members", {}).get("parts", {}).items():
        if part["status"] != "ok":
            L += _skip_line(f"stack members {dev}", part)
            continue
        one = part["single"]["time_s"]["median"]
        L += [f"### {dev}: step time of a stack of K members ({'-'.join(map(str, part['network']))}, batch "
              f"{part['batch']}, {part['dtype']}); one Sequential: {_ms(one)} per step", ""]
        L += _table(["K", "step", "÷ one Sequential", "per member", "speed-up vs K fits"],
                    [[r["members"], _spread(r["time_s"]), f"{r['ratio_to_single']:.2f}", _ms(r["per_member_s"]),
                      f"{r['speedup_vs_sequential_fits']:.1f}×"] for r in part["records"]])
        t = part.get("target")
        if t:
            L += [f"Issue 14 (GPU): stack step ≤ {t['bound']}× one member's up to K = {t['up_to_members']}: worst "
                  f"{t['ratio']:.2f}× ({'met' if t['met'] else 'not met'}).", ""]
    m = s.get("memory")
    if m:
        L += ["### Memory of a stack", "",
              f"Computed per member ({'-'.join(map(str, m['network']))}, batch {m['batch']}, {m['dtype']}, Adam): "
              f"{m['bytes_per_member'] / 2**10:.1f} KiB (parameters, gradients, moments, best weights and one "
              f"minibatch's activations); fixed: {m['bytes_fixed'] / 2**20:.2f} MiB of data. The grid's members "
              f"(float64): {m['grid_bytes_per_member'] / 2**10:.1f} KiB each. Memory grows linearly in K:", ""]
        L += _table(["device", "memory", "members that fit (90 %)", "source"],
                    [[d, f"{v['capacity_bytes'] / 2**30:.1f} GiB", f"{v['members_that_fit']:,}", v["source"]]
                     for d, v in m.get("devices", {}).items()])
        mc = m.get("measured_cpu")
        if mc:
            L += [f"Measured on the CPU (tracemalloc peak of one epoch, K = 4 and 16): "
                  f"{mc['bytes_per_member'] / 2**10:.1f} KiB per added member; computed / measured = "
                  f"{mc['computed_over_measured']:.2f}.", ""]
    return L


def _scaling(s: dict[str, Any], plots: dict[str, str]) -> list[str]:
    L = ["## Scaling: mlpx time per training step", ""]
    if s["status"] != "ok":
        return L + [f"*{s['status']}: {s.get('reason')}*", ""]
    if "scaling" in plots:
        L += [f"![step time]({plots['scaling']})", ""]
    for dev, part in s["parts"].items():
        if part["status"] != "ok":
            L += _skip_line(f"scaling {dev}", part)
            continue
        for curve, head in (("batch", "batch (784-512-512-10)"), ("width", "width w (784-w-w-10)")):
            recs = [r for r in part["records"] if r["curve"] == curve and r["status"] == "ok"]
            if not recs:
                continue
            L += [f"### {dev}: step time against {head}", ""]
            L += _table(["batch" if curve == "batch" else "w (batch)", "step", "samples/s", "GFLOP/s", "GEMM floor"],
                        [[r["x"] if curve == "batch" else f"{r['x']} ({r['batch']})", _spread(r["time_s"]),
                          f"{r['samples_per_s']:,.0f}", f"{r['gflops']:.1f}",
                          _ms(r["floor_s"]) if "floor_s" in r else "—"] for r in recs])
    return L


# --------------------------------------------------------------------- plots
def plots(doc: dict[str, Any], out: Path, stem: str) -> tuple[dict[str, str], str | None]:
    """Draw the PNGs; returns ({name: file name}, a note when plots were skipped)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {}, "skipped: matplotlib not installed"
    files: dict[str, str] = {}
    secs = doc["sections"]
    for name, fn in (("gemm", _plot_gemm), ("train", _plot_train), ("scaling", _plot_scaling),
                     ("search", _plot_search)):
        fig = fn(plt, secs.get(name, {}))
        if fig is None:
            continue
        fname = f"{name}{stem}.png"
        fig.savefig(out / fname, dpi=80)
        plt.close(fig)
        files[name] = fname
    return files, None


def _plot_gemm(plt: Any, s: dict[str, Any]) -> Any:
    parts = [(d, p) for d, p in s.get("parts", {}).items() if p.get("status") == "ok"]
    if s.get("status") in (None, "skipped", "error") or not parts:
        return None
    fig, axes = plt.subplots(1, len(parts), figsize=(5.5 * len(parts), 4), squeeze=False)
    for ax, (dev, part) in zip(axes[0], parts):
        series: dict[str, list[tuple[int, float]]] = {}
        for r in part["records"]:
            if r["kind"] == "square" and r["status"] == "ok":
                lab = r["dtype"] + ("" if r["threads"] is None else f", {r['threads']} thr")
                series.setdefault(lab, []).append((r["m"], r["gflops"]))
        for lab, pts in series.items():
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=lab)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("n (n×n×n product)")
        ax.set_ylabel("GFLOP/s")
        ax.set_title(f"GEMM on {dev} ({'cuBLAS' if dev == 'gpu' else 'BLAS'})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _plot_train(plt: Any, s: dict[str, Any]) -> Any:
    wls = [w for w in s.get("workloads", []) if w.get("status") == "ok"]
    if s.get("status") != "ok" or not wls:
        return None
    fig, axes = plt.subplots(1, len(wls), figsize=(4.5 * len(wls), 4), squeeze=False)
    for ax, wl in zip(axes[0], wls):
        recs = [r for r in wl["implementations"] if "samples_per_s" in r]
        ax.barh([r["name"] for r in recs], [r["samples_per_s"] for r in recs],
                color=["C0" if r["name"].startswith("mlpx") else "C7" for r in recs])
        ax.invert_yaxis()
        ax.set_xlabel("samples/s (higher is better)")
        ax.xaxis.set_major_locator(plt.MaxNLocator(nbins=4))
        ax.set_title(f"{wl['name']} (batch {wl['batch']})", fontsize=10)
        ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def _plot_scaling(plt: Any, s: dict[str, Any]) -> Any:
    parts = [(d, p) for d, p in s.get("parts", {}).items() if p.get("status") == "ok"]
    if s.get("status") != "ok" or not parts:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, curve, xlabel in ((axes[0], "batch", "batch size (784-512-512-10)"), (axes[1], "width", "width w (784-w-w-10)")):
        for i, (dev, part) in enumerate(parts):
            recs = sorted((r for r in part["records"] if r["curve"] == curve and r["status"] == "ok"), key=lambda r: r["x"])
            if not recs:
                continue
            xs = [r["x"] for r in recs]
            ax.plot(xs, [r["time_s"]["median"] for r in recs], marker="o", color=f"C{i}", label=f"mlpx {dev}")
            if all("floor_s" in r for r in recs):
                ax.plot(xs, [r["floor_s"] for r in recs], ls="--", color=f"C{i}", label=f"{dev} GEMM floor")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("seconds per step")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _plot_search(plt: Any, s: dict[str, Any]) -> Any:
    parts = [(d, p) for d, p in (s or {}).get("members", {}).get("parts", {}).items() if p.get("status") == "ok"]
    if not parts:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (dev, part) in enumerate(parts):
        recs = sorted(part["records"], key=lambda r: r["members"])
        ks = [r["members"] for r in recs]
        ax.plot(ks, [r["time_s"]["median"] for r in recs], marker="o", color=f"C{i}", label=f"stack on {dev}")
        one = part["single"]["time_s"]["median"]
        ax.axhline(one, ls="--", color=f"C{i}", label=f"one Sequential on {dev}")
        if dev == "gpu":
            ax.axhline(2 * one, ls=":", color=f"C{i}", label="2× one member (GPU target)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("members K (64-128-64-32-10, batch 64)")
    ax.set_ylabel("seconds per step")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------- write
def write_outputs(doc: dict[str, Any], out: Path, make_plots: bool = True) -> dict[str, Path]:
    """Write ``results{stem}.json``, ``report{stem}.md`` and the plots into ``out``.

    ``stem`` is empty for quick mode (the README's command) and ``-full`` / ``-tiny``
    otherwise, so quick and full results of one machine live side by side.
    """
    out.mkdir(parents=True, exist_ok=True)
    stem = "" if doc["mode"] == "quick" else f"-{doc['mode']}"
    plot_files, note = plots(doc, out, stem) if make_plots else ({}, "not drawn (--no-plots)")
    paths = {"json": out / f"results{stem}.json", "markdown": out / f"report{stem}.md"}
    paths["json"].write_text(_dump(_rounded(doc)) + "\n")
    paths["markdown"].write_text(markdown(doc, plot_files, note) + "\n")
    for name, f in plot_files.items():
        paths[name] = out / f
    return paths


def _compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), default=_jsonable)


def _dump(obj: Any, ind: str = "") -> str:
    """JSON with one record per line: small, and a re-run's diff shows what changed."""
    flat = _compact(obj)
    if len(flat) <= 120 or not isinstance(obj, (dict, list)):
        return flat
    inner = ind + " "
    if isinstance(obj, dict):
        items = [f"{inner}{json.dumps(k)}:{_dump(v, inner)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + ind + "}"
    if all(isinstance(v, dict) for v in obj):  # a list of records: one per line
        return "[\n" + ",\n".join(inner + _compact(v) for v in obj) + "\n" + ind + "]"
    return "[\n" + ",\n".join(inner + _dump(v, inner) for v in obj) + "\n" + ind + "]"


def _rounded(obj: Any) -> Any:
    """Floats to 5 significant digits: timing noise is far larger, and the file stays small."""
    if isinstance(obj, float):
        return float(f"{obj:.5g}") if math.isfinite(obj) else obj
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_rounded(v) for v in obj]
    return obj


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
