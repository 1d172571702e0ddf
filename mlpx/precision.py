"""Precision modes: which dtype the matrix products run in, and loss scaling.

A model always keeps its *master* parameters, gradients and optimizer state in its
``dtype`` (float32 for every mode below). The mode decides how a step computes:

=========  ==========  =====================================================
mode       computes    how
=========  ==========  =====================================================
float32    float32     plain float32 everywhere (the default)
tf32       float32     float32 arrays, but cuBLAS rounds the GEMM inputs to
                       TF32 (10-bit mantissa) on tensor cores (GPU only)
bf16       bfloat16    weights cast to bfloat16 once per step, activations
                       and GEMMs in bfloat16 (float32 accumulation), loss and
                       optimizer in float32; no loss scaling (bfloat16 has
                       float32's exponent range)
fp16       float16     as bf16 with float16, plus dynamic loss scaling: the
                       output delta is multiplied by ``S`` before the
                       backward pass and the gradients divided by ``S`` after
                       it; a step whose gradients overflow is skipped and
                       ``S`` halved, and ``S`` doubles after 2000 clean steps
=========  ==========  =====================================================

The low-precision modes are meant for GPUs (tensor cores). On the CPU, NumPy has no
fast half-precision matrix product, so ``bf16``/``fp16`` run (correctly, for checking
results) but slower than float32, and ``tf32`` computes plain float32 (CPUs have no
TF32); a warning says so. ``bf16`` needs ml_dtypes (CuPy >= 14 uses it as well).

Loss scaling reads one flag back from the device per step to decide whether the
step is applied, as ``torch.amp.GradScaler`` does; the other modes never synchronise
inside an epoch.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

from mlpx.backends import kernel

__all__ = ["PRECISIONS", "LossScaler", "Precision", "all_finite", "check_range", "get_precision", "scale_cast"]

Array = Any

#: mode -> (compute dtype, TF32 GEMMs)
PRECISIONS: dict[str, tuple[str, bool]] = {
    "float32": ("float32", False),
    "tf32": ("float32", True),
    "bf16": ("bfloat16", False),
    "fp16": ("float16", False),
}


# ------------------------------------------------------------------ kernels
@kernel
def scale_cast(xp: Any, src: Array, factor: float, out: Array) -> Array:
    """Compute ``src · factor`` in float32 and store it in ``out``'s dtype.

    Converts between the master (float32) and compute (float16 / bfloat16) buffers
    in one pass, applying or removing the loss scale on the way. The product is
    formed in float32 so that unscaling a half-precision gradient cannot underflow.

    Parameters
    ----------
    xp : namespace
        The backend's array namespace (passed by ``Backend.run``).
    src : array
        Any shape and floating dtype.
    factor : float
        The scale (1.0 for a plain conversion).
    out : array
        ``src``'s shape; its dtype is the result's.

    Returns
    -------
    array
        ``out`` on NumPy and CuPy, a new array elsewhere.
    """
    return xp.astype(xp.astype(src, xp.float32) * factor, out.dtype)


@scale_cast.register("numpy")
def _scale_cast_np(xp: Any, src: Array, factor: float, out: Array) -> Array:
    # dtype= picks the float32 loop (inputs converted up); unsafe allows the store
    # down into half precision. CuPy's ufuncs take the same arguments.
    xp.multiply(src, factor, out=out, dtype=xp.float32, casting="unsafe")
    return out


@kernel
def all_finite(xp: Any, a: Array) -> Array:
    """Whether ``a`` holds no NaN or infinity (the fp16 overflow check).

    Parameters
    ----------
    xp : namespace
        The backend's array namespace (passed by ``Backend.run``).
    a : array
        Any shape.

    Returns
    -------
    array
        A 0-d boolean on the device (read it back once, where needed).
    """
    return xp.all(xp.isfinite(a))


def check_range(X: Any, compute_dtype: str, name: str = "X") -> None:
    """Refuse host input that float16 cannot hold (it would silently become inf).

    Parameters
    ----------
    X : ndarray, shape (n, n_features), host, already checked finite
        The input.
    compute_dtype : str
        The dtype the model computes in; only ``"float16"`` limits the range here.
    name : str, default "X"
        The argument's name, for the message.

    Raises
    ------
    ValueError
        A value beyond float16's range (65504) for a float16 model.
    """
    if compute_dtype != "float16" or getattr(X, "size", 0) == 0:
        return
    peak = float(abs(X).max())
    if peak > 65504.0:
        raise ValueError(
            f"{name} holds values up to {peak:g}, beyond float16's largest (65504); "
            f"standardise the inputs, or use precision='bf16' or 'float32'"
        )


class LossScaler:
    """Dynamic loss scale for float16 training.

    Parameters
    ----------
    init_scale : float
        Starting scale ``S`` (a power of two, so scaling is exact).
    growth_factor, backoff_factor : float
        ``S`` is multiplied by ``growth_factor`` after ``growth_interval`` steps in a
        row with finite gradients, and by ``backoff_factor`` after a step whose
        gradients overflowed (that step is skipped).
    growth_interval : int
        Steps with finite gradients in a row before the scale grows.

    Attributes
    ----------
    scale : float
    skipped : int
        Steps skipped because of overflow, over the scaler's life.
    """

    def __init__(
        self,
        init_scale: float = 2.0**16,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
    ) -> None:
        if not (init_scale > 0 and growth_factor > 1 and 0 < backoff_factor < 1 and growth_interval >= 1):
            raise ValueError("LossScaler needs init_scale > 0, growth_factor > 1, 0 < backoff_factor < 1")
        self.scale = float(init_scale)
        self.growth_factor, self.backoff_factor = float(growth_factor), float(backoff_factor)
        self.growth_interval = int(growth_interval)
        self.good_steps = 0
        self.skipped = 0

    def update(self, found_inf: bool) -> None:
        """Adjust the scale after a step.

        Parameters
        ----------
        found_inf : bool
            Whether the step's gradients overflowed (the step was skipped).
        """
        if found_inf:
            self.scale = max(self.scale * self.backoff_factor, 2.0**-24)
            self.good_steps = 0
            self.skipped += 1
        else:
            self.good_steps += 1
            if self.good_steps >= self.growth_interval:
                # float16's largest value is 65504: a scale past 2**24 only overflows
                self.scale = min(self.scale * self.growth_factor, 2.0**24)
                self.good_steps = 0

    def get_state(self) -> dict[str, float]:
        """The scaler's state, for checkpoints.

        Returns
        -------
        dict
            ``"scale"``, ``"good_steps"`` and ``"skipped"``.
        """
        return {"scale": self.scale, "good_steps": self.good_steps, "skipped": self.skipped}

    def set_state(self, state: dict[str, float]) -> None:
        """Restore :meth:`get_state`.

        Parameters
        ----------
        state : dict
            From :meth:`get_state`.
        """
        self.scale = float(state["scale"])
        self.good_steps = int(state["good_steps"])
        self.skipped = int(state["skipped"])

    def __repr__(self) -> str:
        return f"LossScaler(scale={self.scale:g}, skipped={self.skipped})"


@dataclass
class Precision:
    """A resolved precision mode.

    Parameters
    ----------
    name : str
        ``"float32"``, ``"tf32"``, ``"bf16"``, ``"fp16"`` or ``"float64"``.
    compute_dtype : str
        Dtype of activations, workspaces and GEMM operands.
    master_dtype : str
        Dtype of parameters, gradients and optimizer state.
    tf32 : bool
        Whether float32 GEMMs use TF32 tensor cores.
    scaler : LossScaler or None
        Present for ``fp16`` only.
    """

    name: str
    compute_dtype: str
    master_dtype: str
    tf32: bool = False
    scaler: LossScaler | None = field(default=None, repr=False)

    @property
    def mixed(self) -> bool:
        """Whether the step computes in a dtype other than the master one."""
        return self.compute_dtype != self.master_dtype

    @property
    def loss_scale(self) -> float:
        """The factor on the output delta (fp16's current scale; 1 otherwise)."""
        return 1.0 if self.scaler is None else self.scaler.scale


def get_precision(spec: str | None, dtype: str, backend: Any) -> Precision:
    """Resolve ``precision=`` for a model of ``dtype`` on ``backend``.

    Parameters
    ----------
    spec : str or None
        A key of :data:`PRECISIONS`, or None for the model's dtype.
    dtype : {"float32", "float64"}
        The model's (master) dtype.
    backend : Backend
        The model's backend.

    Returns
    -------
    Precision
        The mode, with a fresh :class:`LossScaler` for ``"fp16"``.

    Raises
    ------
    ValueError
        Unknown mode, or a mode other than ``dtype`` itself for a float64 model.
    TypeError
        The backend's array library has no such dtype (float16 on array-api-strict,
        bfloat16 without ml_dtypes).
    """
    if spec is None or spec == dtype:
        return Precision(dtype, dtype, dtype)
    if not isinstance(spec, str) or spec not in PRECISIONS:
        raise ValueError(f"unknown precision {spec!r}; valid: {', '.join(PRECISIONS)} (or None)")
    if dtype != "float32":
        raise ValueError(
            f"precision={spec!r} needs float32 master weights; this model has dtype={dtype!r}"
        )
    compute, tf32 = PRECISIONS[spec]
    backend.dtype(compute)  # fails early, with the reason, where the dtype does not exist
    cc = getattr(backend, "compute_capability", None) if backend.is_gpu else None
    if cc is not None and spec in ("tf32", "bf16") and cc < 80:
        raise ValueError(
            f"precision={spec!r} needs tensor cores of compute capability >= 8.0 (Ampere or "
            f"newer); {backend.name} has {cc // 10}.{cc % 10}. Use 'fp16' or 'float32'"
        )
    if not backend.is_gpu and spec != "float32":
        what = (
            "CPUs have no TF32, so it computes in plain float32"
            if tf32
            else "NumPy has no fast half-precision matrix product, so it is slower than "
            "float32 (use it to check results; it pays off on a GPU)"
        )
        warnings.warn(f"precision={spec!r} on backend {backend.name!r}: {what}", RuntimeWarning, stacklevel=3)
    scaler = LossScaler() if spec == "fp16" else None
    return Precision(spec, compute, dtype, tf32=tf32, scaler=scaler)

