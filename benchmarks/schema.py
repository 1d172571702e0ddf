"""The results file (``results.json``): its schema, version and validator.

Schema version 1.4 (1.0 plus, in 1.1, the GPU precision modes of the train section:
the ``precision`` of mlpx implementations and each workload's ``precision_modes``;
plus, in 1.2, ``gemm.blas``, the CPU BLAS providers compared on the step products;
plus, in 1.3, the ``search`` section; plus, in 1.4, the ``streaming`` section; older
documents, which lack them, still validate). Times are seconds, rates GFLOP/s (1e9 FLOP/s) or GB/s (1e9 B/s).
A *stats* object summarises repeated timings of one thing::

    {"median", "min", "max", "q1", "q3": per-call seconds, "repeats": int, "number": calls per repeat}

Top level::

    schema_version  "1.4" (written; "1.0" to "1.3" documents are read and validated too)
    suite           "mlpx-benchmarks"
    mode            "quick" | "full" | "tiny"
    machine         cpu_model, cpu_cores, thread_pools (threadpoolctl), numpy_blas, versions
                    {numpy, scipy, scikit-learn, torch, cupy, ...: str or null}, gpu (null or
                    {name, memory_gib, compute_capability, cuda_runtime, ...}), date, command, git,
                    load_avg_start / load_avg_end (1/5/15-minute load: other work skews timings),
                    busy_probes [{when ("start", "after <section>"), gemm256_1t_s, gemm256_<N>t_s,
                    busy}], busy (any probe saw the N-thread GEMM > 3x slower than 1 thread)
    config          the mode's sizes (benchmarks.config.Config as a dict)
    started_at      ISO date;  wall_s  seconds for the whole run
    gpu_status      {"used": bool, "reason": null or why not ("no CUDA device", "--backend cpu")}
    sections        {"gemm", "transfer", "train", "scaling", "search", "streaming"}: each has "status"
                    ("ok" | "skipped" | "failed" | "error") and, unless ok, a "reason".

Sections:

- ``gemm.parts.{cpu,gpu}`` = part ``{"status", "reason", "records", "peak_gflops": {dtype: GFLOP/s}}``;
  record: key, device, kind ("square" | "step"), network, batch, op ("square" | "forward" |
  "dW" | "dX"), layer, m, n, k, trans_a, trans_b, dtype ("float64" | "float32" | "tf32" |
  "float16" | "bfloat16"), threads (CPU BLAS threads; null on the GPU), flops (2mnk),
  status ("ok" | "failed" | "skipped"), verify {max_rel_error, tolerance, ok}, time_s
  (stats), gflops, fraction_of_peak (of the best rate for that dtype on that device).
  ``gemm.crossover``: {status, network, dtype, crossover_batch (null: GPU never faster),
  records [{key, batch, flops, cpu_time_s, gpu_time_s, gpu_speedup}]}; ``failed_checks``.
  ``gemm.blas`` (1.2, required when the CPU was measured): {status, providers [{name,
  version}], not_installed [names], threads, fastest {network: provider}, records
  [{key, provider, network, batch, dtype, threads, status ("ok" | "failed"), flops,
  max_rel_error (of the step's products against the float64 reference), time_s (stats
  over interleaved rounds of seconds per step), gflops, ratio_to_numpy | reason}]}.
- ``transfer.parts.gpu``: records {key, direction ("h2d" | "d2h"), memory ("pageable" |
  "pinned"), bytes, time_s, gb_per_s}.
- ``train.workloads``: [{name, status, label, sizes, batch, data, n_train, n_test, epochs,
  repeats, steps_per_epoch, order, implementations, floors, ratios, precision_modes,
  memory}];
  implementation: {name, device, status, reason, precision (mlpx rows only: "float32" |
  "tf32" | "bf16" | "fp16"; the parameters' dtype stays float32), key, threads, dtype,
  time_s (stats of seconds per epoch), s_per_epoch, samples_per_s, accuracy,
  accuracy_runs, ratio_to_floor, ratio_to_gemms_alone (both against the float32 floors,
  also for the precision rows)}; floors.{cpu,gpu}: {status, epoch_flops,
  peak_gflops, peak_source, floor_s_per_epoch, gemms_alone_s_per_epoch,
  gemms_alone_step_s (stats), gemms_alone_gflops}; ratios: [{numerator, denominator,
  ratio (time ratio: < 1 means the numerator is faster), round_range, accuracy_delta_pp,
  target, met}]; memory: {peak_traced_mib, data_mib, params_mib, batch_activations_mib,
  gpu: {status, pool_peak_mib (CuPy pool after one GPU epoch) | reason}};
  precision_modes (1.1, required when the workload ran): one per "mlpx-gpu-<precision>"
  row, {precision ("tf32" | "bf16" | "fp16"), name, reference ("mlpx-gpu", the float32
  row), status, reason} and, when status is "ok" (both rows measured): s_per_epoch,
  ratio_to_float32 (median per-round time ratio mode / float32), round_range,
  speedup_vs_float32 (= 1 / ratio_to_float32), faster_than_float32 (bool), accuracy,
  accuracy_float32, accuracy_delta_pp (100 x (accuracy - accuracy_float32)),
  accuracy_delta_range_pp ([min, max] of the same-seed per-round differences), and, when
  torch-cuda ran, ratio_to_torch_cuda and torch_round_range.
- ``scaling.parts.{cpu,gpu}``: records {key, device, curve ("batch" | "width"), x, sizes,
  batch, threads, time_s (stats, seconds per step), samples_per_s, step_flops, gflops,
  floor_s}.
- ``search`` (1.3): ``grid`` {status, reason, data, sizes, batch, max_iter, alphas,
  learning_rates, folds, n_fits, rounds, records [{key, name ("mlpx-stacked" |
  "sklearn-n_jobs2" | "mlpx-one-by-one"), status, time_s (stats of seconds per search),
  s_per_fit, best_mean_test_score}], ratios [{numerator, denominator, ratio, round_range,
  target, met}], stacked_all, flop_floor {gflop, gflop_three_per_layer,
  peak_gflops_float64, peak_source, floor_s, floor_s_three_per_layer},
  score_differences [{against, max_abs_score_difference}]}; ``members.parts.{cpu,gpu}``
  {status, reason, network, batch, dtype, rows, single {key, time_s}, records [{key,
  device, members, threads, time_s (stats of seconds per step), ratio_to_single,
  per_member_s, speedup_vs_sequential_fits}], target (GPU) {ratio, bound, met,
  up_to_members}}; ``memory`` {network, batch, dtype, bytes_per_member, bytes_fixed,
  grid_bytes_per_member, devices {cpu, gpu: {capacity_bytes, source,
  members_that_fit}}, measured_cpu {peak_bytes, bytes_per_member, computed_over_measured}}.

- ``streaming`` (1.4): {status, reason, network, batch, dtype, rows, data_bytes, chunk_rows,
  rounds, reference_rows, sample_period_s, full_size (the data is the 4 GiB the targets are
  stated for), scratch_dir (where the data was written, deleted afterwards), records [{key, format ("zarr" | "zarr-raw" | "hdf5" | "memmap"), storage, status, rows,
  data_bytes, time_s (stats of seconds per epoch from the store), s_per_epoch, rows_per_s,
  first_epoch_s, memory_reference_rows, memory_time_s (stats of in-memory epochs of the
  reference rows), ratio_to_memory (median per-round ratio of seconds per row), round_range,
  cpu_ratio_to_memory (the same with the process's CPU time, all threads),
  peak_anon_bytes, baseline_anon_bytes, added_anon_bytes, accuracy, targets [{what, value,
  bound, met, stated_for_this_size}]}]}.

Every record that was measured has a unique ``key`` (``python -m benchmarks --compare``
matches records of two files by it) and a ``time_s`` stats object. Every number in
the file is finite and positive, except ``max_rel_error``, ``layer`` and the load averages (>= 0), accuracies (in
[0, 1]) and ``accuracy_delta_pp`` / ``accuracy_delta_range_pp`` (any sign).
"""

from __future__ import annotations

import math
from typing import Any, Iterator

from benchmarks.config import GPU_PRECISIONS

__all__ = ["SCHEMA_VERSION", "READABLE_VERSIONS", "SECTIONS", "iter_records", "validate"]

SCHEMA_VERSION = "1.4"
# Versions validate() accepts: 1.1 and 1.2 only add fields, so older files (committed
# results) stay valid, and each version's requirements apply from that version on.
READABLE_VERSIONS = ("1.0", "1.1", "1.2", "1.3", "1.4")
SECTIONS = ("gemm", "transfer", "train", "scaling", "search", "streaming")
# The version each section first appeared in (older documents may lack it).
_SINCE = {"search": "1.3", "streaming": "1.4"}
STATUSES = ("ok", "skipped", "failed", "error")
_STATS = ("median", "min", "max", "q1", "q3", "repeats", "number")
_NONNEG = {"max_rel_error", "layer", "load_avg_start", "load_avg_end", "max_abs_score_difference"}  # can be 0
_UNIT = {"accuracy", "accuracy_runs", "accuracy_float32"}
_ANY_SIGN = {"accuracy_delta_pp", "accuracy_delta_range_pp"}
_PRECISION_OK = ("s_per_epoch", "ratio_to_float32", "round_range", "speedup_vs_float32", "faster_than_float32",
                 "accuracy", "accuracy_float32", "accuracy_delta_pp", "accuracy_delta_range_pp")


def iter_records(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(section, record) for every measured record that has a key."""
    secs = doc.get("sections", {})
    for name in ("gemm", "transfer", "scaling"):
        for part in secs.get(name, {}).get("parts", {}).values():
            for r in part.get("records", []):
                yield name, r
    for sub in ("crossover", "blas"):
        for r in secs.get("gemm", {}).get(sub, {}).get("records", []):
            yield "gemm", r
    for wl in secs.get("train", {}).get("workloads", []):
        for r in wl.get("implementations", []):
            yield "train", r
    search = secs.get("search", {})
    for r in search.get("grid", {}).get("records", []):
        yield "search", r
    for part in search.get("members", {}).get("parts", {}).values():
        if part.get("single"):
            yield "search", part["single"]
        for r in part.get("records", []):
            yield "search", r
    for r in secs.get("streaming", {}).get("records", []):
        yield "streaming", r


def _numbers(obj: Any, path: str, problems: list[str], key: str = "") -> None:
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            _numbers(v, f"{path}.{k}", problems, k)
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _numbers(v, f"{path}[{i}]", problems, key)
        return
    if not isinstance(obj, (int, float)):
        problems.append(f"{path}: not JSON data ({type(obj).__name__})")
        return
    if not math.isfinite(obj):
        problems.append(f"{path}: not finite ({obj})")
    elif key in _ANY_SIGN:
        pass
    elif key in _UNIT:
        if not 0.0 <= obj <= 1.0:
            problems.append(f"{path}: accuracy outside [0, 1] ({obj})")
    elif key in _NONNEG:
        if obj < 0:
            problems.append(f"{path}: negative ({obj})")
    elif obj <= 0:
        problems.append(f"{path}: not positive ({obj})")


def _stats(s: Any, path: str, problems: list[str]) -> None:
    if not isinstance(s, dict) or any(k not in s for k in _STATS):
        problems.append(f"{path}: stats object needs {_STATS}")
        return
    if not s["min"] <= s["median"] <= s["max"]:
        problems.append(f"{path}: min <= median <= max violated")


def _part(part: Any, path: str, problems: list[str]) -> None:
    if not isinstance(part, dict) or part.get("status") not in STATUSES:
        problems.append(f"{path}: part needs a status in {STATUSES}")
        return
    if part["status"] == "skipped" and not part.get("reason"):
        problems.append(f"{path}: skipped without a reason")
    if not isinstance(part.get("records"), list):
        problems.append(f"{path}: records must be a list")


def _precision_modes(wl: dict[str, Any], problems: list[str]) -> None:
    """The 1.1 ``precision_modes`` of one workload that ran: structure and arithmetic."""
    where = f"train {wl.get('name')}"
    modes = wl.get("precision_modes")
    if not isinstance(modes, list):
        problems.append(f"{where}: precision_modes must be a list")
        return
    impls = {r.get("name"): r for r in wl.get("implementations", [])}
    for m in modes:
        p = m.get("precision") if isinstance(m, dict) else None
        if p not in GPU_PRECISIONS:
            problems.append(f"{where}: precision mode {p!r} not in {GPU_PRECISIONS}")
            continue
        at = f"{where} precision {p}"
        if m.get("name") != f"mlpx-gpu-{p}" or m["name"] not in impls:
            problems.append(f"{at}: name must be mlpx-gpu-{p}, an implementation of the workload")
        if m.get("status") not in STATUSES:
            problems.append(f"{at}: needs a status in {STATUSES}")
            continue
        if m["status"] != "ok":
            if not m.get("reason"):
                problems.append(f"{at}: status {m['status']} without a reason")
            continue
        if impls.get(m.get("name"), {}).get("status") != "ok":
            problems.append(f"{at}: ok, but its implementation was not measured")
        missing = [k for k in _PRECISION_OK if k not in m]
        if missing:
            problems.append(f"{at}: missing {missing}")
            continue
        if not math.isclose(m["speedup_vs_float32"] * m["ratio_to_float32"], 1.0, rel_tol=1e-3):
            problems.append(f"{at}: speedup_vs_float32 is not 1 / ratio_to_float32")
        if m["faster_than_float32"] != (m["ratio_to_float32"] < 1.0):
            problems.append(f"{at}: faster_than_float32 disagrees with ratio_to_float32")
        if abs(m["accuracy_delta_pp"] - 100.0 * (m["accuracy"] - m["accuracy_float32"])) > 1e-2:
            problems.append(f"{at}: accuracy_delta_pp is not 100 x (accuracy - accuracy_float32)")


def _blas(b: Any, cpu_ran: bool, problems: list[str]) -> None:
    """The 1.2 ``gemm.blas`` comparison: present when the CPU ran, consistent when ok."""
    if not isinstance(b, dict) or b.get("status") not in STATUSES:
        problems.append("sections.gemm.blas needs a status")
        return
    if b["status"] != "ok":
        if cpu_ran or not b.get("reason"):
            problems.append(f"sections.gemm.blas: status {b['status']} without a reason, or the CPU ran")
        return
    names = [pr.get("name") for pr in b.get("providers", [])]
    if "numpy" not in names:
        problems.append("sections.gemm.blas: the numpy provider is always measured")
    ok = [r for r in b.get("records", []) if r.get("status") == "ok"]
    for r in b.get("records", []):
        if r.get("provider") not in names:
            problems.append(f"{r.get('key')}: provider {r.get('provider')!r} not listed")
        if r.get("status") == "failed" and not r.get("reason"):
            problems.append(f"{r.get('key')}: failed without a reason")
    for net, prov in (b.get("fastest") or {}).items():
        times = {r["provider"]: r["time_s"]["median"] for r in ok if r.get("network") == net and "time_s" in r}
        if not times or min(times, key=times.get) != prov:
            problems.append(f"sections.gemm.blas.fastest[{net}]: {prov!r} is not the fastest measured")


def _search(s: dict[str, Any], problems: list[str]) -> None:
    """The 1.3 search section: its parts, and the arithmetic of its ratios."""
    grid = s.get("grid")
    if not isinstance(grid, dict) or grid.get("status") not in STATUSES:
        problems.append("sections.search.grid needs a status")
    elif grid["status"] == "ok":
        times = {r["name"]: r["time_s"]["median"] for r in grid.get("records", []) if r.get("status") == "ok"}
        for q in grid.get("ratios", []):
            if not {q.get("numerator"), q.get("denominator")} <= set(times):
                problems.append(f"search ratio {q.get('numerator')}/{q.get('denominator')}: a search was not measured")
            elif q.get("met") != (q.get("ratio", math.inf) <= q.get("target", -math.inf)):
                problems.append(f"search ratio {q.get('numerator')}/{q.get('denominator')}: met disagrees with ratio")
    elif not grid.get("reason"):
        problems.append("sections.search.grid: not ok without a reason")
    members = s.get("members")
    if not isinstance(members, dict):
        problems.append("sections.search.members must be an object")
        return
    for dev, part in members.get("parts", {}).items():
        _part(part, f"sections.search.members.parts.{dev}", problems)
        if part.get("status") == "ok" and not part.get("single"):
            problems.append(f"sections.search.members.parts.{dev}: no single-model step time")


def _streaming(s: dict[str, Any], problems: list[str]) -> None:
    """The 1.4 streaming section: every measured format's targets agree with their numbers."""
    for r in s.get("records", []):
        if r.get("status") != "ok":
            if not r.get("reason"):
                problems.append(f"streaming {r.get('format')}: {r.get('status')} without a reason")
            continue
        for t in r.get("targets", []):
            if t.get("met") != (t.get("value", math.inf) <= t.get("bound", -math.inf)):
                problems.append(f"streaming {r['format']} {t.get('what')}: met disagrees with value and bound")


def validate(doc: Any) -> list[str]:
    """Problems found in a results document (an empty list: it is valid).

    Checks the structure above, that every measured record has a key and a stats
    ``time_s``, that keys are unique, that skipped parts say why, that every
    verified GEMM passed its check, and that every number is finite and positive
    (with the exceptions listed in the module docstring).
    """
    p: list[str] = []
    if not isinstance(doc, dict):
        return ["document is not an object"]
    version = doc.get("schema_version")
    if version not in READABLE_VERSIONS:
        p.append(f"schema_version must be one of {READABLE_VERSIONS}, got {version!r}")
    if doc.get("suite") != "mlpx-benchmarks":
        p.append("suite must be 'mlpx-benchmarks'")
    if doc.get("mode") not in ("quick", "full", "tiny"):
        p.append(f"mode must be quick, full or tiny, got {doc.get('mode')!r}")
    for k in ("machine", "config", "sections", "gpu_status"):
        if not isinstance(doc.get(k), dict):
            p.append(f"{k} must be an object")
    if p:
        return p
    for k in ("cpu_model", "cpu_cores", "thread_pools", "versions", "date", "command"):
        if k not in doc["machine"]:
            p.append(f"machine.{k} missing")
    secs = doc["sections"]
    for name in SECTIONS:
        s = secs.get(name)
        if s is None and name in _SINCE and version in READABLE_VERSIONS and version < _SINCE[name]:
            continue
        if not isinstance(s, dict) or s.get("status") not in STATUSES:
            p.append(f"sections.{name}: needs a status in {STATUSES}")
            continue
        if s["status"] != "ok" and not s.get("reason") and name != "gemm":
            p.append(f"sections.{name}: status {s['status']} without a reason")
        if s["status"] in ("skipped", "error"):
            continue
        if name in ("gemm", "transfer", "scaling"):
            for dev, part in s.get("parts", {}).items():
                _part(part, f"sections.{name}.parts.{dev}", p)
        if name == "search":
            _search(s, p)
        if name == "streaming":
            _streaming(s, p)
        if name == "gemm":
            for dev, part in s["parts"].items():
                for i, r in enumerate(part.get("records", [])):
                    v = r.get("verify")
                    if r.get("status") in ("ok", "failed") and not isinstance(v, dict):
                        p.append(f"gemm {dev} record {i}: no correctness check recorded")
                    if r.get("status") == "ok" and not (v or {}).get("ok"):
                        p.append(f"gemm {r.get('key')}: timed without passing its check")
            if not isinstance(s.get("crossover"), dict) or s["crossover"].get("status") not in STATUSES:
                p.append("sections.gemm.crossover needs a status")
            if version not in ("1.0", "1.1"):
                _blas(s.get("blas"), s["parts"].get("cpu", {}).get("status") == "ok", p)
        if name == "train":
            for wl in s.get("workloads", []):
                for r in wl.get("implementations", []):
                    if r.get("status") == "skipped" and not r.get("reason"):
                        p.append(f"train {wl.get('name')} {r.get('name')}: skipped without a reason")
                    if "precision" in r and r["precision"] not in ("float32",) + GPU_PRECISIONS:
                        p.append(f"train {wl.get('name')} {r.get('name')}: unknown precision {r['precision']!r}")
                if version != "1.0" and wl.get("status") == "ok":
                    _precision_modes(wl, p)
    seen: set[str] = set()
    for sec, r in iter_records(doc):
        if r.get("status", "ok") != "ok":
            continue
        key = r.get("key")
        if not isinstance(key, str):
            p.append(f"{sec}: a measured record has no key")
            continue
        if key in seen:
            p.append(f"duplicate key {key}")
        seen.add(key)
        for tk in ("time_s", "cpu_time_s", "gpu_time_s"):
            if tk in r:
                _stats(r[tk], key + "." + tk, p)
        if not any(tk in r for tk in ("time_s", "cpu_time_s")):
            p.append(f"{key}: no time_s")
    _numbers(doc, "$", p)
    return p
