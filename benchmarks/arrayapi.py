"""The generic Array API path side by side: NumPy, array-api-strict, PyTorch and JAX.

``python -m benchmarks.arrayapi`` trains the digits network (64-128-64-32-10, batch 64,
Adam at 1e-3, 1437 samples) with ``mlpx.MLP(..., backend=B)`` for each backend ``B`` in
one process, interleaved round by round (fresh model per run, same seed, same
shuffles), and prints the median time per epoch and per step, the ratio to the NumPy
backend and the test accuracy. NumPy runs its fast kernels (``backend="cpu"``); the
others run the generic kernels through :class:`mlpx.backends.ArrayAPIBackend`:
``array_api_strict``, ``array-api:torch`` (CPU torch) and ``array-api:jax.numpy``
(CPU JAX). A backend whose package is missing is listed as skipped.

With PyTorch in the list, a last row times the same step written directly in PyTorch
(no mlpx, no array-api-compat, same operations, weights and shuffles): the difference to
the ``torch`` row is what mlpx adds.

``--profile B`` also runs one fit of backend ``B`` under cProfile and prints where the
time went: the functions with the most own time, and own time grouped by where the code
lives (mlpx and its backends, array-api-compat, the array library, Python). Array
arithmetic written with operators (``a * b``) counts as the own time of the function
that contains it.

The measurements of the README's "JAX and PyTorch through the Array API" paragraph and
of benchmarks/README.md come from this script.
"""

from __future__ import annotations

import argparse
import cProfile
import math
import pstats
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["BACKENDS", "main", "measure", "profile_fit", "torch_floor"]

#: label -> backend name
BACKENDS = {
    "numpy": "cpu",
    "array-api-strict": "array_api_strict",
    "torch": "array-api:torch",
    "jax": "array-api:jax.numpy",
}
SIZES = (64, 128, 64, 32, 10)
BATCH = 64


def _data(n_train: int | None = None) -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.2, stratify=y, random_state=0)
    return Xtr[:n_train], ytr[:n_train], Xte, yte


def _model(backend: str, dtype: str) -> Any:
    import mlpx

    return mlpx.MLP(list(SIZES), activation="relu", output="softmax", backend=backend, dtype=dtype, seed=0)


def _fit(model: Any, X: np.ndarray, y: np.ndarray, epochs: int) -> float:
    t0 = time.perf_counter()
    model.fit(X, y, epochs=epochs, batch_size=BATCH, optimizer="adam", lr=1e-3)
    model.backend.synchronize()
    return time.perf_counter() - t0


def _usable(backends: dict[str, str], dtype: str) -> tuple[dict[str, str], dict[str, str]]:
    ok, skipped = {}, {}
    for label, name in backends.items():
        try:
            _model(name, dtype)
        except Exception as exc:  # a missing package, or float64 JAX without x64
            skipped[label] = f"{type(exc).__name__}: {exc}".splitlines()[0][:160]
        else:
            ok[label] = name
    return ok, skipped


def measure(backends: dict[str, str], *, epochs: int = 2, rounds: int = 3, dtype: str = "float32",
            n_train: int | None = None) -> dict[str, Any]:
    """Time ``fit`` of every backend, interleaved; return rows per backend label.

    Returns
    -------
    dict
        ``{"rows": {label: {"backend", "s_per_epoch", "us_per_step", "ratio_to_numpy",
        "accuracy", "times"}}, "skipped": {label: reason}, "steps_per_epoch": int}``
    """
    Xtr, ytr, Xte, yte = _data(n_train)
    steps = math.ceil(len(Xtr) / BATCH)
    ok, skipped = _usable(backends, dtype)
    for name in ok.values():  # warm-up: imports, first-call compilation (JAX), BLAS threads
        _fit(_model(name, dtype), Xtr, ytr, 1)
    times: dict[str, list[float]] = {label: [] for label in ok}
    last: dict[str, Any] = {}
    for _ in range(rounds):
        for label, name in ok.items():
            model = last[label] = _model(name, dtype)
            times[label].append(_fit(model, Xtr, ytr, epochs) / epochs)
    # Scored after the timing: a prediction's large products wake every BLAS thread,
    # which then spin for a while and would slow the next fit measured.
    acc = {label: float(np.mean(model.predict(Xte) == yte)) for label, model in last.items()}
    rows: dict[str, dict[str, Any]] = {}
    ref = statistics.median(times["numpy"]) if "numpy" in times else None
    for label, ts in times.items():
        med = statistics.median(ts)
        rows[label] = {
            "backend": ok[label],
            "s_per_epoch": med,
            "us_per_step": 1e6 * med / steps,
            "ratio_to_numpy": None if ref is None else med / ref,
            "accuracy": acc[label],
            "times": ts,
        }
    return {"rows": rows, "skipped": skipped, "steps_per_epoch": steps}


def torch_floor(*, epochs: int = 2, rounds: int = 3) -> float | None:
    """Seconds per epoch of the same step written directly in PyTorch: no mlpx, no
    array-api-compat; None without torch.

    The operations of the generic path (gather the minibatch, four products with bias
    and ReLU, softmax cross-entropy and its delta, the training-accuracy count, the
    backward products and sums, one flat gradient, Adam over the flat buffer, the
    layers' arrays cut from it again), from the same initial weights and shuffles, with
    torch's threads limited as mlpx limits them (:func:`torch_floor_fit`). What mlpx
    adds is the difference. Median of ``rounds`` after one warm-up round.
    """
    try:
        import torch  # noqa: F401
    except ImportError:
        return None
    times = [torch_floor_fit(epochs)[0] for _ in range(rounds + 1)]
    return statistics.median(times[1:])


def torch_floor_fit(epochs: int) -> tuple[float, np.ndarray]:
    """One fit of the plain-PyTorch step (see :func:`torch_floor`).

    Returns
    -------
    seconds per epoch : float
    params : ndarray, shape (n_params,)
        The final flat parameters, in mlpx's layout (what mlpx on ``array-api:torch``
        reaches from the same start, to float32 rounding).
    """
    import torch
    from threadpoolctl import threadpool_limits

    Xtr, ytr, _, _ = _data()
    ref = _model("cpu", "float32")
    slots = sorted(((a, b, shape, name) for name, (a, b, shape) in ref.layout().items()), key=lambda s: s[0])
    stops = [b for _a, b, _s, _n in slots[:-1]]
    n_layers = len(SIZES) - 1
    X = torch.from_numpy(Xtr.astype(np.float32))
    Y = torch.from_numpy(np.eye(SIZES[-1], dtype=np.float32)[ytr])
    n = X.shape[0]
    flat = torch.from_numpy(ref.get_flat_params().copy())
    m, v = torch.zeros_like(flat), torch.zeros_like(flat)
    rng = np.random.default_rng([0, 1])  # Sequential.shuffle_generator's seed for seed=0
    step = 0
    with threadpool_limits(1):
        t0 = time.perf_counter()
        for _e in range(epochs):
            perm = torch.from_numpy(rng.permutation(n))
            total = hits = 0.0
            for a in range(0, n, BATCH):
                idx = perm[a:a + BATCH]
                Xb, Yb = torch.index_select(X, 0, idx), torch.index_select(Y, 0, idx)
                pieces = [p if len(s[2]) == 1 else torch.reshape(p, s[2]) for p, s in
                          zip(torch.tensor_split(flat, stops), slots)]
                named = {s[3]: p for p, s in zip(pieces, slots)}
                W = [named[f"{k}.W"] for k in range(n_layers)]
                b = [named[f"{k}.b"] for k in range(n_layers)]
                H = [Xb]
                for k in range(n_layers):
                    Z = torch.matmul(H[-1], W[k]) + b[k]
                    H.append(torch.maximum(Z, torch.zeros(())) if k < n_layers - 1 else Z)
                Z, nb = H.pop(), Xb.shape[0]
                mx = torch.amax(Z, 1, keepdim=True)
                E = torch.exp(Z - mx)
                s = torch.sum(E, 1, keepdim=True)
                total = total + torch.sum(Yb * (torch.log(s) + mx - Z)) / nb
                hits = hits + torch.sum(torch.argmax(Z, 1) == torch.argmax(Yb, 1))
                dZ = (E / s - Yb) * (1.0 / nb)
                grads = {}
                for k in reversed(range(n_layers)):
                    grads[f"{k}.W"] = torch.reshape(torch.matmul(H[k].mT, dZ), (-1,))
                    grads[f"{k}.b"] = torch.sum(dZ, 0)
                    if k:
                        dZ = torch.where(H[k] > 0, torch.matmul(dZ, W[k].mT), 0.0)
                g = torch.cat([grads[s[3]] for s in slots])
                step += 1
                lr_t = 1e-3 * math.sqrt(1 - 0.999**step) / (1 - 0.9**step)
                m = 0.9 * m + (1 - 0.9) * g
                v = 0.999 * v + (1 - 0.999) * (g * g)
                flat = flat + (-lr_t * m / (torch.sqrt(v) + 1e-8))
            float(total), float(hits)  # the one read-back per epoch
        seconds = (time.perf_counter() - t0) / epochs
    return seconds, flat.numpy().copy()


_LIBRARIES = {"torch": "torch", "jax": "jax", "jaxlib": "jax", "array_api_strict": "array_api_strict",
              "numpy": "numpy", "array_api_compat": "array-api-compat"}


def _where(filename: str, name: str) -> str:
    """Who owns a profiled function: mlpx, array-api-compat, the array library, or Python."""
    import mlpx

    if "site-packages/" in filename:
        top = filename.rsplit("site-packages/", 1)[1].split("/")[0]
        return _LIBRARIES.get(top, "python")
    repo = str(Path(mlpx.__file__).resolve().parent.parent)
    if filename.startswith(repo):
        return "mlpx"
    if filename == "~":  # a builtin: "<built-in method torch.matmul>", "<method 'to' of 'torch._C...'>"
        for module, lib in _LIBRARIES.items():
            if f" {module}." in name or f"'{module}." in name:
                return lib
    return "python"


def profile_fit(backend: str, *, epochs: int = 2, dtype: str = "float32", top: int = 25) -> str:
    """One profiled ``fit`` (after a warm-up fit); a text report of where the time went."""
    Xtr, ytr, _, _ = _data()
    steps = math.ceil(len(Xtr) / BATCH) * epochs
    _fit(_model(backend, dtype), Xtr, ytr, 1)
    model = _model(backend, dtype)
    prof = cProfile.Profile()
    prof.enable()
    wall = _fit(model, Xtr, ytr, epochs)
    prof.disable()
    stats = pstats.Stats(prof)
    groups: dict[str, float] = {}
    rows = []
    for (filename, line, name), (_cc, calls, tottime, cumtime, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        where = _where(filename, name)
        groups[where] = groups.get(where, 0.0) + tottime
        short = filename.rsplit("site-packages/", 1)[-1].replace("/work/", "")
        rows.append((tottime, calls, cumtime, f"{short}:{line}({name})", where))
    total = sum(groups.values())
    out = [f"profile of {epochs} epoch(s) on {backend} ({dtype}): {wall:.3f} s wall, {steps} steps, "
           f"{1e6 * wall / steps:.0f} µs per step (under the profiler)", "",
           "| own time in | s | share | µs per step |", "|---|---|---|---|"]
    for where, t in sorted(groups.items(), key=lambda kv: -kv[1]):
        out.append(f"| {where} | {t:.3f} | {100 * t / total:.0f} % | {1e6 * t / steps:.0f} |")
    out += ["", f"| function (top {top} by own time) | calls per step | own µs per step | cumulative µs per step | in |",
            "|---|---|---|---|---|"]
    for tottime, calls, cumtime, where_fn, where in sorted(rows, reverse=True)[:top]:
        out.append(f"| `{where_fn}` | {calls / steps:.1f} | {1e6 * tottime / steps:.1f} | "
                   f"{1e6 * cumtime / steps:.1f} | {where} |")
    return "\n".join(out)


def _table(result: dict[str, Any]) -> str:
    lines = ["| backend | s/epoch | µs/step | × NumPy | test accuracy |", "|---|---|---|---|---|"]
    ref = result["rows"].get("numpy", {}).get("s_per_epoch")
    for label, r in result["rows"].items():
        ratio = "—" if r["ratio_to_numpy"] is None else f"{r['ratio_to_numpy']:.1f}"
        lines.append(f"| {label} (`{r['backend']}`) | {r['s_per_epoch']:.4f} | {r['us_per_step']:.0f} | "
                     f"{ratio} | {100 * r['accuracy']:.1f} % |")
    floor = result.get("torch_floor")
    if floor is not None:
        ratio = "—" if ref is None else f"{floor / ref:.1f}"
        lines.append(f"| the same step in plain PyTorch (no mlpx) | {floor:.4f} | "
                     f"{1e6 * floor / result['steps_per_epoch']:.0f} | {ratio} | |")
    for label, reason in result["skipped"].items():
        lines.append(f"| {label} (`{BACKENDS.get(label, label)}`) | skipped: {reason} | | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.arrayapi", description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=2, help="epochs per timed fit (default 2)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported (default 3)")
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    ap.add_argument("--only", help=f"comma-separated labels among {', '.join(BACKENDS)} (default all)")
    ap.add_argument("--profile", metavar="LABEL", help="also profile one fit of this backend label")
    ap.add_argument("--top", type=int, default=25, help="functions listed by --profile (default 25)")
    args = ap.parse_args(argv)
    labels = list(BACKENDS) if not args.only else [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in labels + ([args.profile] if args.profile else []) if s not in BACKENDS]
    if bad:
        ap.error(f"unknown backend label(s) {bad}; choose from {', '.join(BACKENDS)}")
    import threadpoolctl

    blas = ", ".join(f"{p['internal_api']} {p['num_threads']} threads" for p in threadpoolctl.threadpool_info())
    result = measure({k: BACKENDS[k] for k in labels}, epochs=args.epochs, rounds=args.rounds, dtype=args.dtype)
    if "torch" in result["rows"] and args.dtype == "float32":
        result["torch_floor"] = torch_floor(epochs=args.epochs, rounds=args.rounds)
    print(f"digits {'-'.join(map(str, SIZES))}, batch {BATCH}, Adam, {args.dtype}, "
          f"{result['steps_per_epoch']} steps per epoch, median of {args.rounds} interleaved rounds "
          f"of {args.epochs} epoch(s); thread pools: {blas}\n")
    print(_table(result))
    if args.profile:
        if args.profile in result["skipped"]:
            print(f"\n{args.profile}: cannot profile, {result['skipped'][args.profile]}")
            return 1
        print()
        print(profile_fit(BACKENDS[args.profile], epochs=args.epochs, dtype=args.dtype, top=args.top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
