"""What each mode measures: sizes, repeats, workloads.

``quick`` (the default) covers every section at small sizes (the search grid at its
real size) in about 4.5 minutes on a 2-core CPU (measured: benchmarks/README.md); ``full`` uses the real sizes named in the issue; ``tiny`` is for the
tests (seconds). Everything a section needs to know about sizes lives here, so a
mode is one readable table.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from typing import Any

__all__ = ["Config", "Workload", "WORKLOADS", "GPU_PRECISIONS", "make_config", "cpu_cores"]

# The engine's reduced-precision training modes (``mlpx.MLP(..., precision=P)``), each
# benchmarked on the GPU beside the float32 "mlpx-gpu" row: TF32 tensor-core GEMMs,
# and bf16 / fp16 mixed precision (low-precision GEMMs, float32 master weights; fp16
# with dynamic loss scaling).
GPU_PRECISIONS = ("tf32", "bf16", "fp16")


def cpu_cores() -> int:
    """CPUs this process may run on (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Workload:
    """One training benchmark: a network, its data and how long to train.

    Attributes
    ----------
    name : str
        Short id used in keys and file names ("digits", "mlp512", "wide2048").
    sizes : tuple of int
        Layer widths ``(n_features, hidden..., n_classes)``.
    batch : int
    data : {"digits", "synthetic"}
        digits: scikit-learn's embedded 8x8 digits (no download); synthetic: a
        seeded 10-class Gaussian mixture in ``sizes[0]`` dimensions.
    n_train, n_test : int
        Samples (digits: at most the 1437/360 of its 80/20 split).
    epochs : int
        Epochs per timed run (every implementation trains a fresh model).
    repeats : int
        Timed runs per implementation, interleaved across implementations.
    """

    name: str
    sizes: tuple[int, ...]
    batch: int
    data: str
    n_train: int
    n_test: int
    epochs: int
    repeats: int

    @property
    def label(self) -> str:
        return "-".join(map(str, self.sizes)) + f" (batch {self.batch})"


# The three networks of the issue, at their real batch sizes; modes change the data
# size, epochs and repeats only (the GEMM shapes stay the real ones).
_NETS = {
    "digits": ((64, 128, 64, 32, 10), 64, "digits"),
    "mlp512": ((784, 512, 512, 10), 256, "synthetic"),
    "wide2048": ((784, 2048, 2048, 10), 1024, "synthetic"),
}


def _workloads(spec: dict[str, tuple[int, int, int, int]]) -> tuple[Workload, ...]:
    out = []
    for name, (n_train, n_test, epochs, repeats) in spec.items():
        sizes, batch, data = _NETS[name]
        out.append(Workload(name, sizes, batch, data, n_train, n_test, epochs, repeats))
    return tuple(out)


WORKLOADS = _NETS


@dataclass(frozen=True)
class Config:
    """All sizes of one run. Build with :func:`make_config`; override with ``replace``.

    Timing: each measurement runs ``warmup`` untimed calls, then ``repeats`` timed
    repeats of ``number`` calls each, ``number`` chosen so one repeat lasts at least
    ``min_time`` seconds; the median per-call time and its spread are reported.
    """

    mode: str
    sections: tuple[str, ...] = ("gemm", "transfer", "train", "scaling", "search", "streaming")
    devices: tuple[str, ...] = ("cpu", "gpu")
    threads: int = field(default_factory=cpu_cores)
    repeats: int = 5
    warmup: int = 2
    min_time: float = 0.02
    # --- gemm
    gemm_cpu_sizes: tuple[int, ...] = (128, 256, 512, 1024)
    gemm_gpu_sizes: tuple[int, ...] = (256, 1024, 4096, 8192)
    gemm_cpu_dtypes: tuple[str, ...] = ("float64", "float32")
    gemm_gpu_dtypes: tuple[str, ...] = ("float64", "float32", "tf32", "float16", "bfloat16")
    gemm_step_cpu_dtypes: tuple[str, ...] = ("float32",)
    gemm_step_gpu_dtypes: tuple[str, ...] = ("float32", "tf32", "bfloat16")
    gemm_step_networks: tuple[str, ...] = ("digits", "mlp512", "wide2048")
    # 1-thread runs are added for products of at most this many flops (2mnk): that
    # is where two BLAS threads on two cores can lose to one.
    one_thread_max_flops: float = 3.0e8
    crossover_network: str = "mlp512"
    crossover_batches: tuple[int, ...] = (16, 64, 256, 1024, 4096)
    # --- transfer (GPU only), MiB
    transfer_mib: tuple[int, ...] = (1, 16, 64)
    # --- train
    workloads: tuple[Workload, ...] = ()
    # precision modes added as "mlpx-gpu-<mode>" rows to every workload (subset of GPU_PRECISIONS)
    train_gpu_precisions: tuple[str, ...] = GPU_PRECISIONS
    # --- scaling: time per training step
    scaling_batches: tuple[int, ...] = (16, 64, 256, 1024)
    scaling_widths: tuple[int, ...] = (64, 256, 1024)
    scaling_width_batch: int = 256
    scaling_min_time: float = 0.1
    # --- search: issue 14's grid (digits, 3 alphas x 4 learning rates x 5 folds) ...
    search_grid: bool = True
    search_alphas: tuple[float, ...] = (1e-4, 1e-3, 1e-2)
    search_lrs: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2)
    search_folds: int = 5
    search_hidden: tuple[int, ...] = (100,)
    search_batch: int = 64
    search_max_iter: int = 50  # the real grid in quick mode too: its ratios are the issue's
    search_rounds: int = 1
    search_samples: int | None = None  # rows of digits (None: all 1797)
    # ... and the step time of a stack of K digits-size members against K
    search_members: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    search_member_rows: int = 1437
    search_member_epochs: int = 1
    search_memory_check: bool = True
    # --- streaming: training from zarr / HDF5 / memmap on disk (benchmarks/streaming.py)
    streaming_formats: tuple[str, ...] = ("zarr", "zarr-raw", "hdf5", "memmap")
    streaming_rows: int = 16384  # x 784 float32: 49 MiB; --full: 4 GiB
    streaming_reference_rows: int = 16384  # the in-memory peer's rows
    streaming_rounds: int = 2
    streaming_timeout_s: float = 300.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["workloads"] = [asdict(w) for w in self.workloads]
        return d


def make_config(mode: str = "quick", **overrides: Any) -> Config:
    """The configuration of a mode ("quick", "full" or "tiny"), with overrides.

    Parameters
    ----------
    mode : {"quick", "full", "tiny"}
    **overrides
        Any :class:`Config` field, e.g. ``sections=("gemm",)``.
    """
    if mode == "quick":
        cfg = Config(
            mode="quick",
            repeats=3,
            min_time=0.015,
            workloads=_workloads({
                # n_train, n_test, epochs, repeats
                "digits": (1437, 360, 5, 3),
                "mlp512": (2048, 2000, 1, 3),
                "wide2048": (2048, 2000, 1, 2),
            }),
        )
    elif mode == "full":
        cfg = Config(
            mode="full",
            repeats=7,
            warmup=3,
            min_time=0.1,
            gemm_cpu_sizes=(64, 128, 256, 512, 1024, 2048),
            gemm_gpu_sizes=(256, 512, 1024, 2048, 4096, 8192),
            gemm_step_cpu_dtypes=("float32", "float64"),
            gemm_step_gpu_dtypes=("float64", "float32", "tf32", "float16", "bfloat16"),
            one_thread_max_flops=2.2e9,
            crossover_batches=(8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192),
            transfer_mib=(1, 4, 16, 64, 256, 1024),
            workloads=_workloads({
                "digits": (1437, 360, 50, 5),
                "mlp512": (60000, 10000, 2, 3),
                "wide2048": (60000, 10000, 1, 3),
            }),
            scaling_batches=(8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096),
            scaling_widths=(32, 64, 128, 256, 512, 1024, 2048, 4096),
            scaling_min_time=0.5,
            search_rounds=2,
            search_member_epochs=2,
            streaming_rows=4 * 2**30 // (784 * 4),  # 4 GiB of float32 rows, the size
            streaming_reference_rows=2**18,
            streaming_rounds=1,
            streaming_timeout_s=3600.0,
        )
    elif mode == "tiny":
        cfg = Config(
            mode="tiny",
            repeats=3,
            warmup=1,
            min_time=0.002,
            gemm_cpu_sizes=(32, 64),
            gemm_gpu_sizes=(256, 512),
            gemm_gpu_dtypes=("float32", "tf32", "float16"),
            gemm_step_gpu_dtypes=("float32",),
            gemm_step_networks=("digits", "mlp512"),
            one_thread_max_flops=1.0e6,
            crossover_batches=(16, 256),
            transfer_mib=(1,),
            workloads=_workloads({
                "digits": (192, 120, 1, 2),
                "mlp512": (256, 200, 1, 2),
            }),
            scaling_batches=(16, 64),
            scaling_widths=(32, 64),
            scaling_width_batch=64,
            scaling_min_time=0.01,
            search_alphas=(1e-4, 1e-2),
            search_lrs=(1e-3,),
            search_folds=2,
            search_hidden=(16,),
            search_max_iter=2,
            search_samples=200,
            search_members=(1, 3),
            search_member_rows=192,
            search_memory_check=False,
            streaming_formats=("zarr", "memmap"),
            streaming_rows=2048,
            streaming_reference_rows=2048,
            streaming_rounds=1,
        )
    else:
        raise ValueError(f"unknown mode {mode!r}; use quick, full or tiny")
    cfg = replace(cfg, **overrides) if overrides else cfg
    bad = [p for p in cfg.train_gpu_precisions if p not in GPU_PRECISIONS]
    if bad:
        raise ValueError(f"unknown GPU precision(s) {bad}; choose from {GPU_PRECISIONS}")
    return cfg
