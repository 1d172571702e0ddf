"""CPU kernel variants side by side: NumPy ufuncs against the compiled numba loops.

``python -m benchmarks.kernels`` times every host variant of the hot elementwise
kernels (the optimizers, bias + activation, activation backward + bias gradient,
the loss) on the shapes of one 784-512-512-10 training step at batch 256 (float32),
interleaved (numpy, numba, numpy, ...) so drift hits both alike, and prints the
best time of each and their ratio. This is the measurement behind the choice of
which kernels get a numba variant (see ``mlpx/backends/jit.py``); kernels that lost
to NumPy have none and are listed with their NumPy time only.
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable

import numpy as np

from mlpx.activations import get_activation
from mlpx.layers import bias_activation, dense_backward
from mlpx.losses import cross_entropy
from mlpx.updates import adam_update, rmsprop_update, sgd_update

__all__ = ["cases", "main"]

N_PARAMS = 784 * 512 + 512 * 512 + 512 * 10 + 512 + 512 + 10  # 669,706
BATCH, WIDTH, CLASSES = 256, 512, 10


def cases(rng: np.random.Generator) -> dict[str, tuple[Any, Callable[[], tuple[Any, ...]]]]:
    """name -> (kernel, fresh-arguments factory); float32, one step's shapes."""
    f32 = np.float32

    def flat(k: int) -> list[np.ndarray]:
        return [rng.standard_normal(N_PARAMS).astype(f32) for _ in range(k)]

    def opt_args(n_state: int, rows: list[float]) -> Callable[[], tuple[Any, ...]]:
        # One network: a (1, n_params) buffer; the step's rows end with "active".
        p, g = (a[None, :] for a in flat(2))
        state = [np.zeros((1, N_PARAMS), f32) for _ in range(n_state)]
        vec = np.array(rows + [1.0], dtype=f32)[:, None]
        return lambda: (p, g, *state, vec, None, N_PARAMS - 1034)

    # One network (K = 1) in the member form the kernels take.
    Z = rng.standard_normal((1, BATCH, WIDTH)).astype(f32)
    b = rng.standard_normal((1, WIDTH)).astype(f32)
    dH = rng.standard_normal((BATCH, WIDTH)).astype(f32)
    H = np.maximum(dH, 0)
    dH3, db = dH[None], np.empty((1, WIDTH), f32)

    def with_act(name: str) -> Callable[..., Any]:
        act = get_activation(name)
        if act.from_output:  # in place: the output overwrites Z + b
            return lambda: (Z, b, act, Z)
        out = np.empty_like(Z)
        return lambda: (Z, b, act, out)

    def backward(name: str) -> Callable[..., Any]:
        act = get_activation(name)
        Hn = act.forward_kernel.generic(np, dH, None)[None].astype(f32)
        return lambda: (dH3, Z, Hn, act, db)

    logits = rng.standard_normal((1, BATCH, CLASSES)).astype(f32)
    Y = np.eye(CLASSES, dtype=f32)[rng.integers(0, CLASSES, (1, BATCH))]
    dZ = np.empty_like(logits)
    inv_d = np.array([1.0 / BATCH], dtype=f32)
    relu = get_activation("relu")
    return {
        f"adam_update ({N_PARAMS:,} params)": (adam_update, opt_args(2, [-1e-3, 0.9, 0.1, 0.999, 1e-3, 1e-8, 1.0])),
        f"sgd_update, Nesterov ({N_PARAMS:,})": (sgd_update, opt_args(1, [0.01, 0.9, 1.0])),
        f"rmsprop_update ({N_PARAMS:,})": (rmsprop_update, opt_args(1, [1e-3, 0.9, 0.1, 1e-8])),
        **{f"bias + {name} ({BATCH}x{WIDTH}{', in place' if name != 'gelu' else ''})": (bias_activation, with_act(name))
           for name in ("relu", "tanh", "logistic", "gelu", "softmax")},
        f"ReLU backward ({BATCH}x{WIDTH})": (relu.backward_kernel, lambda: (dH, None, H, dH)),
        **{f"{name} backward + bias gradient ({BATCH}x{WIDTH})": (dense_backward, backward(name))
           for name in ("relu", "tanh", "gelu")},
        f"softmax cross-entropy + delta ({BATCH}x{CLASSES})": (
            cross_entropy, lambda: (logits, Y, None, inv_d, dZ)
        ),
    }


def _best(fn: Callable[[], Any], reps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.kernels", description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds (best is kept)")
    ap.add_argument("--reps", type=int, default=200, help="calls per timed block")
    args = ap.parse_args(argv)
    try:
        import numba  # noqa: F401
    except ImportError:
        raise SystemExit('numba is not installed: pip install "mlpx[fast]"') from None
    rng = np.random.default_rng(0)
    print("| kernel | numpy | numba | numba / numpy |\n|---|---|---|---|")
    for name, (k, make) in cases(rng).items():
        fns = {kind: k.variants[kind] for kind in ("numpy", "numba") if kind in k.variants}
        a = make()
        for fn in fns.values():
            for _ in range(5):  # warm-up; the numba variant compiles on its first call
                fn(np, *a)
        best = {kind: float("inf") for kind in fns}
        for _ in range(args.rounds):
            for kind, fn in fns.items():
                best[kind] = min(best[kind], _best(lambda: fn(np, *a), args.reps))
        if "numba" not in best:  # measured slower and removed: NumPy only
            print(f"| {name} | {best['numpy'] * 1e6:.0f} µs | (no variant) | — |")
            continue
        print(f"| {name} | {best['numpy'] * 1e6:.0f} µs | {best['numba'] * 1e6:.0f} µs | "
              f"{best['numba'] / best['numpy']:.2f} |")


if __name__ == "__main__":
    main()
