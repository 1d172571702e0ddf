"""A stack's per-member arguments to ``fit``, checked (:meth:`mlpx.stacked.Stack.fit`).

Each setting takes one value for all members or a sequence of exactly K; the
optimizer is a name, K single-network optimizers or an optimizer of K members;
each member has its own rows, sample weights and callbacks.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import numpy as np

from mlpx.callbacks import Callback, check_callbacks
from mlpx.data import to_host
from mlpx.optimizers import OPTIMIZERS, Optimizer
from mlpx.validation import check_int, check_real

__all__ = [
    "member_callback_lists", "member_optimizer", "member_vector", "rows_per_member", "shuffler", "weights_per_member",
]


def member_vector(name: str, value: Any, K: int, low: float | None = None, integer: bool = False) -> list[Any]:
    """A per-member setting: one value for all, or a sequence of exactly K."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or np.ndim(value) == 0:
        values = [value] * K
    else:
        values = list(np.asarray(value).tolist()) if isinstance(value, np.ndarray) else list(value)
        if len(values) != K:
            raise ValueError(f"{name} has {len(values)} values for a stack of {K} members")
    if integer:
        return [check_int(f"{name}[{k}]", v, low=1) for k, v in enumerate(values)]
    return [check_real(f"{name}[{k}]", v, low) for k, v in enumerate(values)]


def shuffler(rng: np.random.Generator, n: int) -> Callable[[], np.ndarray]:
    """A member's order for the next epoch: a permutation of its ``n`` rows drawn by ``rng``."""
    return lambda: rng.permutation(n)


def member_optimizer(spec: Any, K: int, **settings: Any) -> Optimizer:
    """The stack's optimizer: a name with per-member settings, K single-network
    optimizers (stacked), or an optimizer of K members."""
    given = {k: v for k, v in settings.items() if v is not None and not (k == "nesterov" and v is False)}
    if isinstance(spec, Optimizer):
        if given:
            raise ValueError(f"settings {sorted(given)} were given with an optimizer instance {spec!r}; "
                             f"set them on the instance instead")
        opt = spec
    elif not isinstance(spec, str):
        opts = list(spec)
        if len(opts) != K:
            raise ValueError(f"{len(opts)} optimizers for a stack of {K} members")
        opt = Optimizer.stack(opts)
    else:
        name = spec.lower()
        if name not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {spec!r}; valid: {', '.join(OPTIMIZERS)}")
        kind = OPTIMIZERS[name]
        unused = sorted(set(given) - {"lr", "schedule", *kind._checks})
        if unused:
            raise ValueError(f"{unused} do not apply to {name!r}")
        for key, value in given.items():
            n = len(value) if isinstance(value, (list, tuple, np.ndarray)) else None
            if n is not None and n != K:
                raise ValueError(f"{key} has {n} values for a stack of {K} members")
        opt = kind(**given)
    if opt.n_members not in (None, K):
        raise ValueError(f"the optimizer has {opt.n_members} members, the stack {K}")
    return opt


def rows_per_member(rows: Any, K: int, n: int) -> list[np.ndarray]:
    if rows is None:
        return [np.arange(n)] * K
    if isinstance(rows, np.ndarray) and rows.ndim == 1:
        raise ValueError("rows must be a sequence of K index arrays, one per member")
    rows = list(rows)
    if len(rows) != K:
        raise ValueError(f"rows has {len(rows)} index arrays for a stack of {K} members")
    out = []
    for k, r in enumerate(rows):
        r = np.asarray(r)
        if r.dtype == bool:
            if r.shape != (n,):
                raise ValueError(f"rows[{k}] as a mask must have shape ({n},), got {r.shape}")
            r = np.flatnonzero(r)
        if r.ndim != 1 or r.dtype.kind not in "iu" or r.size == 0:
            raise ValueError(f"rows[{k}] must be a non-empty 1-D array of row indices (or a boolean mask)")
        if r.min() < 0 or r.max() >= n:
            raise ValueError(f"rows[{k}] has indices outside 0..{n - 1}")
        out.append(r.astype(np.int64))
    return out


def weights_per_member(w: Any, K: int, n: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(per-member weights (K, n) or None, shared weights (n,) or None), checked."""
    if w is None:
        return None, None
    a = np.asarray(to_host(w), dtype=np.float64)
    if a.shape not in ((n,), (K, n)):
        raise ValueError(f"sample_weight must have shape ({n},) or ({K}, {n}), got {a.shape}")
    if not np.isfinite(a).all() or (a < 0).any():
        raise ValueError("sample_weight must be finite and non-negative")
    if a.ndim == 1:
        if a.sum() <= 0:
            raise ValueError("sample_weight sums to zero: nothing to train on")
        return None, a
    bad = np.flatnonzero(a.sum(axis=1) <= 0)
    if bad.size:
        raise ValueError(f"the sample weights of members {bad.tolist()} sum to zero: nothing to train on")
    return a, None


def member_callback_lists(spec: Any, K: int) -> list[list[Callback]]:
    if spec is None:
        return [[] for _ in range(K)]
    spec = list(spec)
    if spec and all(isinstance(c, Callback) for c in spec):
        return [[copy.deepcopy(c) for c in spec] for _ in range(K)]
    if len(spec) != K:
        raise ValueError(f"member_callbacks has {len(spec)} lists for a stack of {K} members")
    return [check_callbacks(c) for c in spec]
