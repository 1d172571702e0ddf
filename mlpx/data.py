"""Minibatch sources for the training loop: one interface, three ways to feed the device.

The loop asks a batch source for one epoch of minibatches at a time::

    source = make_batches(be, X, Y, w, batch_size, dtype)
    for Xb, Yb, wb, a, b in source.epoch(perm):   # perm: host permutation, or None
        ...                                       # Xb rows are perm[a:b] (a:b without perm)
    source.denominators(perm)                     # every minibatch's row count or Σ w

=====================  ===========================================================
:class:`ResidentBatches`  the training set is moved to the device once; every
                          minibatch is gathered there into a workspace reused across
                          steps (a gather from a device copy of the permutation)
:class:`SparseBatches`    CSR ``X`` kept sparse on the backend (scipy.sparse on the
                          host backends, cupyx on the GPU); each minibatch's rows are
                          sliced and densified on the device
:class:`StreamedBatches`  the training set stays in host memory; the host gathers each
                          minibatch into page-locked staging buffers and a second CUDA
                          stream uploads it while the GPU computes on the previous one
=====================  ===========================================================

:func:`make_batches` picks one: sparse for sparse ``X``; streamed when, on a GPU, the
training set would take more than half of the free device memory; else resident.

The streaming pipeline, for minibatch ``i`` in slot ``s = i % 2``::

    host:          gather i+1 -> staging[1-s]  | yield i | gather i+2 -> staging[s] | ...
    copy stream:   upload i+1 -> device[1-s] (after step i-1 released it) | upload i+2 ...
    compute:       ... step i-1 | step i on device[s] | step i+1 on device[1-s] | ...

so the host gather of batch i+1 overlaps the GPU's step i-1 and its upload overlaps
step i: the period of one step is about max(GPU step, host gather, upload), not the
sum. On the NumPy and Array API backends the same code runs with plain host buffers,
synchronous copies and no events, which is what lets the CPU tests check it.
"""

from __future__ import annotations

import logging
from typing import Any, Iterator, NamedTuple, cast

import numpy as np


__all__ = [
    "Batch",
    "ResidentBatches",
    "SparseBatches",
    "StreamedBatches",
    "batch_denominator",
    "check_batch_size",
    "densify",
    "dtype_name",
    "host_dtype",
    "is_device_array",
    "is_sparse",
    "make_batches",
    "numpy_dtype",
    "resident_nbytes",
    "should_stream",
    "sparse_to_backend",
    "take_host_rows",
    "to_host",
]

log = logging.getLogger("mlpx")

Array = Any


class Batch(NamedTuple):
    """One minibatch on the device.

    Attributes
    ----------
    X : array, shape (rows, f)
    Y : array, shape (rows, k)
    w : array, shape (rows,), or None
    a, b : int
        Its rows are ``perm[a:b]`` of the epoch's permutation (``a:b`` without one).
    """

    X: Array
    Y: Array
    w: Array | None
    a: int
    b: int


# ------------------------------------------------------- arrays of any kind
def is_sparse(X: Any) -> bool:
    """A SciPy / CuPy (or pydata) sparse matrix or array, detected without importing either."""
    mod = type(X).__module__
    return mod.startswith(("scipy.sparse", "cupyx.scipy.sparse", "sparse")) and hasattr(X, "nnz")


def is_device_array(x: Any) -> bool:
    """A CuPy array or cupyx sparse matrix (data the caller already put on a GPU)."""
    return type(x).__module__.split(".")[0] in ("cupy", "cupyx")


def to_host(x: Any) -> Any:
    """A device array's host (NumPy) copy, by an explicit transfer; anything else unchanged.

    CuPy arrays through ``get`` (CuPy refuses implicit conversion), other libraries'
    arrays (PyTorch, JAX, array-api-strict) through DLPack.
    """
    if is_device_array(x):
        return x.get()
    if not isinstance(x, (np.ndarray, np.generic)) and hasattr(x, "__dlpack__"):
        try:
            return np.from_dlpack(x)
        except (BufferError, RuntimeError, TypeError):  # e.g. a device DLPack cannot export to the host
            return np.asarray(x)
    return x


def take_host_rows(X: Any, idx: np.ndarray) -> Any:
    """Rows ``idx`` (host ints) of host dense/sparse data or of GPU data."""
    if is_device_array(X):
        import cupy

        return X[cupy.asarray(idx)]
    return X[idx]


# ---------------------------------------------------------------- checks
def dtype_name(dtype: Any) -> str:
    """"float32", "float64", "float16" or "bfloat16" for a name or any library's dtype."""
    if isinstance(dtype, str):
        name = dtype
    else:
        try:
            name = np.dtype(dtype).name  # NumPy, CuPy and ml_dtypes dtypes
        except TypeError:
            name = str(dtype).rsplit(".", 1)[-1]  # e.g. array_api_strict.float32
    if name not in ("float16", "bfloat16", "float32", "float64"):
        raise TypeError(f"unsupported dtype {dtype!r}: choose float32, float64, float16 or bfloat16")
    return name


def host_dtype(name: str) -> np.dtype:
    """The NumPy dtype the host gather converts into."""
    if name == "bfloat16":
        try:
            import ml_dtypes
        except ImportError:
            raise TypeError("dtype bfloat16 needs the ml_dtypes package: pip install ml_dtypes") from None
        bfloat16: np.dtype[Any] = np.dtype(ml_dtypes.bfloat16)
        return bfloat16
    return np.dtype(name)


def numpy_dtype(dtype: Any) -> np.dtype:
    """A NumPy dtype for any backend's dtype object (array-api-strict's print as 'float64')."""
    try:
        found: np.dtype = np.dtype(dtype)  # typed: np.dtype of an Any is Any to the type checker
    except TypeError:
        found = np.dtype(str(dtype).rsplit(".", 1)[-1])
    return found


def check_batch_size(batch_size: Any) -> int:
    """``batch_size`` as a positive int.

    Raises
    ------
    ValueError
        Anything else (a bool included).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


def _check_rows(X: Any, Y: Any, w: Any) -> int:
    """The number of samples; a clear error when X, Y and w disagree."""
    if len(X.shape) != 2:
        raise ValueError(f"X must be 2-D (n_samples, n_features), got shape {tuple(X.shape)}")
    if len(Y.shape) != 2:
        raise ValueError(f"Y must be 2-D (n_samples, n_outputs), got shape {tuple(Y.shape)}")
    n = int(X.shape[0])
    if int(Y.shape[0]) != n:
        raise ValueError(
            f"X and Y have different numbers of rows: X {tuple(X.shape)}, Y {tuple(Y.shape)}; "
            "every sample needs one target row"
        )
    if w is not None and tuple(w.shape) != (n,):
        raise ValueError(
            f"sample weights must have shape ({n},) to match X {tuple(X.shape)}, got {tuple(w.shape)}"
        )
    return n


def _check_perm(perm: Any, n: int) -> np.ndarray | None:
    """Validate the host permutation once per epoch (O(n), negligible beside the epoch).

    After this check the streamed gather can use ``np.take(mode="clip")``: with
    ``mode="raise"`` NumPy gathers into a temporary and copies it into ``out``.
    """
    if perm is None:
        return None
    checked: np.ndarray = np.asarray(perm)
    if checked.shape != (n,) or checked.dtype.kind not in "iu":
        raise ValueError(
            f"perm must be integer indices of shape ({n},), got {checked.dtype} of shape {checked.shape}"
        )
    if n and (checked.min() < 0 or checked.max() >= n):
        raise ValueError(f"perm has indices outside 0..{n - 1}")
    return checked


def batch_denominator(w: np.ndarray | None, perm: np.ndarray | None, a: int, b: int) -> float:
    """The loss normaliser of minibatch ``a:b``: its row count, or its weights' sum.

    Parameters
    ----------
    w : host array, shape (n,), or None
    perm : host permutation, shape (n,), or None (contiguous rows)
    """
    if w is None:
        return float(b - a)
    return float((w[a:b] if perm is None else w[perm[a:b]]).sum())


def _bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    return [(a, min(a + batch_size, n)) for a in range(0, n, batch_size)]


def _head(x: Array, rows: int) -> Array:
    """The first ``rows`` rows of a buffer (``, :`` keeps strict Array API slicing valid)."""
    return x[:rows, :] if len(x.shape) == 2 else x[:rows]


def _is_host(x: Any) -> bool:
    return isinstance(x, np.ndarray)


def resident_nbytes(X: Any, Y: Any, w: Any, dtype: str, target_dtype: str | None = None) -> int:
    """Bytes that X, Y and w take on the device in ``dtype`` (Y, w in ``target_dtype``).

    Parameters
    ----------
    X : array, shape (n, f)
    Y : array, shape (n, k)
    w : array, shape (n,), or None
    """
    x_size = host_dtype(dtype_name(dtype)).itemsize
    y_size = host_dtype(dtype_name(target_dtype or dtype)).itemsize
    n, f = (int(d) for d in X.shape)
    k = int(Y.shape[1])
    return n * (f * x_size + (k + (w is not None)) * y_size)


# ---------------------------------------------------------- resident data
class _Source:
    """What every batch source shares: sizes, and the denominators of an epoch."""

    n: int
    batch_size: int
    w_host: np.ndarray | None

    @property
    def n_batches(self) -> int:
        return -(-self.n // self.batch_size)

    def bounds(self) -> list[tuple[int, int]]:
        """``(a, b)`` of every minibatch of an epoch."""
        return _bounds(self.n, self.batch_size)

    def step_rows(self, perm: np.ndarray | None) -> np.ndarray:
        """Rows of every minibatch of an epoch (the same for every ``perm``).

        Returns
        -------
        ndarray, shape (n_batches,), float64
        """
        return np.array([float(b - a) for a, b in self.bounds()])

    def _on_device(self, be: Any, X: Any, Y: Any, w: Any, batch_size: int, dtype: str,
                   target_dtype: str | None) -> None:
        """Sizes and dtypes checked; Y and w moved to the device (X is the subclass's)."""
        self.n = _check_rows(X, Y, w)
        self.batch_size = max(1, min(check_batch_size(batch_size), self.n))
        self.be = be
        self.dtype = dtype_name(dtype)
        self.target_dtype = dtype_name(target_dtype or dtype)
        self.w_host = None if w is None else np.asarray(to_host(w), dtype=np.float64)
        self.Y = be.asarray(Y, dtype=self.target_dtype)
        self.w = None if w is None else be.asarray(w, dtype=self.target_dtype)
        self._ws: dict[tuple[str, int], Array] = {}

    def denominators(self, perm: np.ndarray | None) -> np.ndarray:
        """Each minibatch's loss normaliser: its row count, or its weights' sum (host).

        Returns
        -------
        ndarray, shape (n_batches,), float64
        """
        return np.array([batch_denominator(self.w_host, perm, a, b) for a, b in self.bounds()])


class ResidentBatches(_Source):
    """Minibatches cut on the device from a training set moved there once.

    Parameters
    ----------
    be : Backend
    X : array, shape (n, f)
        Host (NumPy) array, or already an array of ``be``.
    Y : array, shape (n, k)
    w : array, shape (n,), or None
    batch_size : int
        Clipped to n.
    dtype : str
        Device dtype of X ("float32", "float64", "float16" or "bfloat16" where the
        backend holds it).
    target_dtype : str, optional, keyword-only
        Device dtype of Y and w; defaults to ``dtype`` (mixed precision keeps targets
        and weights in the parameters' dtype while X is in the compute dtype).

    Attributes
    ----------
    n, batch_size, n_batches : int
    X, Y, w : device arrays (w None when no weights were given)
    w_host : host array of w, or None
    """

    def __init__(
        self, be: Any, X: Any, Y: Any, w: Any, batch_size: int, dtype: str, *, target_dtype: str | None = None
    ) -> None:
        self._on_device(be, X, Y, w, batch_size, dtype, target_dtype)
        # One transfer of the training set; minibatches are cut on the device.
        self.X = be.asarray(X, dtype=self.dtype)


    def _workspace(self, tag: str, rows: int, like: Array) -> Array:
        # One gather buffer per array and batch length (the full size and at most one
        # shorter last batch), allocated on first use and reused every step.
        key = (tag, rows)
        if key not in self._ws:
            self._ws[key] = self.be.empty((rows,) + tuple(like.shape[1:]), like.dtype)
        return self._ws[key]

    def epoch(self, perm: np.ndarray | None) -> Iterator[Batch]:
        """One pass over the data in minibatches.

        Parameters
        ----------
        perm : ndarray of int, shape (n,), or None
            Host permutation of ``range(n)``; ``None`` takes contiguous slices.

        Yields
        ------
        Batch
            ``X`` (rows, f), ``Y`` (rows, k), ``w`` (rows,) or None on the device, and
            the bounds ``a, b``.

        Notes
        -----
        With ``perm`` the arrays are workspaces overwritten by the next minibatch of
        the same length: use them within the loop body that receives them.
        """
        perm = _check_perm(perm, self.n)
        return self._batches(perm)

    def _batches(self, perm: np.ndarray | None) -> Iterator[Batch]:
        be, X, Y, w = self.be, self.X, self.Y, self.w
        idx = None if perm is None else be.asarray(perm)  # one transfer per epoch
        for a, b in self.bounds():
            if idx is None:
                yield Batch(X[a:b, :], Y[a:b, :], None if w is None else w[a:b], a, b)
                continue
            rows = b - a
            ib = idx[a:b]
            Xb = be.take_rows(X, ib, out=self._workspace("X", rows, X))
            Yb = be.take_rows(Y, ib, out=self._workspace("Y", rows, Y))
            wb = None if w is None else be.take_rows(w, ib, out=self._workspace("w", rows, w))
            yield Batch(Xb, Yb, wb, a, b)


# ------------------------------------------------------------ sparse data
class SparseBatches(_Source):
    """Minibatches from a CSR matrix kept sparse on the backend, densified per batch.

    Memory stays bounded by ``batch_size × n_features`` dense values, not by the
    data set. Same interface and parameters as :class:`ResidentBatches`; ``X`` is a
    scipy.sparse matrix (any format) or, on the GPU, a cupyx one.
    """

    def __init__(
        self, be: Any, X: Any, Y: Any, w: Any, batch_size: int, dtype: str, *, target_dtype: str | None = None
    ) -> None:
        self._on_device(be, X, Y, w, batch_size, dtype, target_dtype)
        self.X = sparse_to_backend(be, X, self.dtype)

    def epoch(self, perm: np.ndarray | None) -> Iterator[Batch]:
        """One pass over the data in minibatches; see :meth:`ResidentBatches.epoch`."""
        perm = _check_perm(perm, self.n)
        return self._batches(perm)

    def _batches(self, perm: np.ndarray | None) -> Iterator[Batch]:
        be = self.be
        idx: Any = None if perm is None else be.asarray(perm)
        for a, b in self.bounds():
            if perm is None:
                rows = self.X[a:b]
                yield Batch(densify(be, rows, self.dtype), self.Y[a:b, :],
                            None if self.w is None else self.w[a:b], a, b)
                continue
            # scipy.sparse takes rows by host indices, cupyx by device ones
            rows = self.X[idx[a:b]] if be.is_gpu else self.X[perm[a:b]]
            ib = idx[a:b]
            Yb = be.take_rows(self.Y, ib)
            wb = None if self.w is None else be.take_rows(self.w, ib)
            yield Batch(densify(be, rows, self.dtype), Yb, wb, a, b)


def sparse_to_backend(be: Any, X: Any, dtype: str) -> Any:
    """CSR on the backend: scipy.sparse on the host backends, cupyx on the GPU."""
    if be.is_gpu:
        import cupyx.scipy.sparse as csp
        import scipy.sparse as sp

        with be.activated():
            X = X if is_device_array(X) else csp.csr_matrix(sp.csr_matrix(X))
            return X.tocsr().astype(dtype)
    import scipy.sparse as sp

    return sp.csr_matrix(to_host(X)).astype(host_dtype(dtype_name(dtype)))


def densify(be: Any, Xs: Any, dtype: str) -> Array:
    """Dense device rows from a sparse block (the sparse path's per-batch cost)."""
    D = Xs.toarray()  # NumPy for scipy.sparse, CuPy for cupyx: already on the device
    return be.asarray(D, dtype=dtype)


# ---------------------------------------------------------- streamed data
class _Channel:
    """One array's path: host source -> 2 staging buffers -> 2 device buffers.

    ``src`` is the host array gathered from; None for a channel whose staging
    buffers are filled by a subclass of :class:`StreamedBatches` (then ``tail`` and
    ``src_dtype`` give the rows' shape and dtype).
    """

    def __init__(self, be: Any, src: np.ndarray | None, rows: int, name: str,
                 tail: tuple[int, ...] = (), src_dtype: Any = None) -> None:
        self.src = src
        shape = (rows,) + (tuple(src.shape[1:]) if src is not None else tuple(tail))
        host = host_dtype(name)
        try:
            self.device = [be.empty(shape, name) for _ in range(2)]
        except (TypeError, ValueError) as exc:  # e.g. CuPy < 14 has no bfloat16 arrays
            raise TypeError(f"backend {be.name!r} cannot hold {name} arrays: {exc}") from exc
        self.staging = [be.empty_pinned(shape, host) for _ in range(2)]
        # np.take's out= refuses widening casts (and buffers internally for the others),
        # so rows in another dtype are gathered into `raw` and converted in one copyto.
        src_dtype = src.dtype if src is not None else np.dtype(src_dtype or host)
        self.raw = None if src_dtype == host else np.empty(shape, src_dtype)

    def gather(self, slot: int, perm: np.ndarray | None, a: int, b: int) -> None:
        """Rows ``perm[a:b]`` (``a:b`` without perm) of the source into ``staging[slot]``."""
        out = self.staging[slot][: b - a]
        src = cast(np.ndarray, self.src)  # sources without one override StreamedBatches._gather
        if perm is None:
            np.copyto(out, src[a:b], casting="unsafe")  # the dtype conversion is intended
        elif self.raw is None:
            np.take(src, perm[a:b], axis=0, out=out, mode="clip")  # indices checked per epoch
        else:
            raw = self.raw[: b - a]
            np.take(src, perm[a:b], axis=0, out=raw, mode="clip")
            np.copyto(out, raw, casting="unsafe")


class StreamedBatches(_Source):
    """Minibatches gathered on the host and streamed to the device, double-buffered.

    Same interface as :class:`ResidentBatches`; the training set stays in host memory
    (a ``numpy.memmap`` works), and the device holds only two minibatches per array.

    Parameters
    ----------
    be : Backend
    X : host array, shape (n, f)
        Any NumPy dtype (e.g. uint8 images): rows convert to ``dtype`` as they are
        gathered. A device array is copied to the host once.
    Y : host array, shape (n, k)
    w : host array, shape (n,), or None
    batch_size : int
        Clipped to n.
    dtype : str
        Device dtype of X: "float32", "float64", "float16", "bfloat16".
    target_dtype : str, optional, keyword-only
        Device dtype of Y and w; defaults to ``dtype``.

    Notes
    -----
    Memory: per array two page-locked host buffers and two device buffers of
    ``batch_size`` rows. The yielded arrays are (views of) the device buffers and are
    overwritten two minibatches later: use them within the loop body that receives
    them, as the fit loop does. Only one epoch may run at a time.

    The order between host, copy stream and compute (current) stream rests on three
    rules, each an event (see :meth:`_stage` and :meth:`_batches`):

    1. A staging buffer is rewritten only after the upload that read it finished:
       the host waits (``synchronize_event``) on that upload's event. DMA reads
       page-locked memory while the host goes on, so without the wait the host would
       change rows that are still being copied.
    2. A device buffer is overwritten only after the compute stream finished using
       the minibatch it holds: the copy stream waits, on the device, for an event
       recorded on the compute stream when the generator is resumed after yielding
       that minibatch (by then the loop body has queued all its work on it).
    3. A minibatch is used only after its upload finished: the compute stream waits,
       on the device, for the event recorded on the copy stream after the upload.
    """

    def __init__(
        self, be: Any, X: Any, Y: Any, w: Any, batch_size: int, dtype: str, *, target_dtype: str | None = None
    ) -> None:
        self._check_mutable(be)
        X, Y = self._host(be, X), self._host(be, Y)
        w = None if w is None else self._host(be, w)
        self.n = _check_rows(X, Y, w)
        self.batch_size = max(1, min(check_batch_size(batch_size), self.n))
        self.w_host = None if w is None else np.asarray(w, dtype=np.float64)
        self._open(be, dtype, target_dtype, [X, Y] + ([] if w is None else [w]))

    def _open(self, be: Any, dtype: str, target_dtype: str | None, sources: list[Any]) -> None:
        """Buffers, streams and events for ``batch_size`` rows of X, Y (and w).

        ``sources`` are the host arrays gathered from, or ``(tail, dtype)`` pairs
        for a subclass that fills the staging buffers itself (by overriding
        :meth:`_gather`; :mod:`mlpx.streams` does).
        """
        self._check_mutable(be)
        self.be = be
        self.dtype = dtype_name(dtype)
        self.target_dtype = dtype_name(target_dtype or dtype)
        rows = self.batch_size
        names = [self.dtype] + [self.target_dtype] * (len(sources) - 1)
        self._channels = [
            _Channel(be, src, rows, name) if isinstance(src, np.ndarray)
            else _Channel(be, None, rows, name, tail=src[0], src_dtype=src[1])
            for src, name in zip(sources, names)
        ]
        self._has_w = len(sources) == 3
        self._copy_stream = be.copy_stream()
        # Per slot: the event after its last upload (rules 1 and 3) and the event after
        # the compute stream's last use of its device buffer (rule 2). They outlive an
        # epoch: the next epoch's first uploads must wait for the last steps. The
        # device buffers were allocated on the compute stream, whose pool may hand out
        # memory that work queued there still reads: the first upload into each slot
        # waits for the compute stream as it is now.
        self._uploaded: list[Any] = [None, None]
        self._released: list[Any] = [be.record_event(), be.record_event()]
        self._running = False

    @staticmethod
    def _check_mutable(be: Any) -> None:
        if not be.mutable:
            raise ValueError(
                f"streaming minibatches (stream_data=True) uploads into preallocated device "
                f"buffers, and backend {be.name!r} has immutable arrays; keep the training "
                f"set resident (stream_data=None or False)"
            )

    @staticmethod
    def _host(be: Any, x: Any) -> np.ndarray:
        return x if _is_host(x) else np.asarray(be.to_numpy(x))

    def epoch(self, perm: np.ndarray | None) -> Iterator[Batch]:
        """One pass over the data in minibatches; see :meth:`ResidentBatches.epoch`.

        Raises
        ------
        RuntimeError
            When iterated while another epoch of this object is still running (the
            two would share the buffers).
        """
        perm = _check_perm(perm, self.n)
        return self._batches(perm)

    def _gather(self, slot: int, perm: np.ndarray | None, a: int, b: int) -> None:
        for ch in self._channels:
            ch.gather(slot, perm, a, b)

    def _stage(self, slot: int, perm: np.ndarray | None, a: int, b: int) -> None:
        """Gather minibatch ``a:b`` into ``slot`` on the host and queue its upload."""
        be, rows = self.be, b - a
        # Rule 1: the previous upload from staging[slot] must have finished reading it.
        be.synchronize_event(self._uploaded[slot])
        self._gather(slot, perm, a, b)
        # Rule 2: the copy stream (not the host) waits until the compute stream is done
        # with the minibatch still in device[slot].
        be.wait_event(self._released[slot], stream=self._copy_stream)
        for ch in self._channels:
            if rows == self.batch_size:
                be.upload(ch.staging[slot], ch.device[slot], stream=self._copy_stream)
            else:
                src, dst = _head(ch.staging[slot], rows), _head(ch.device[slot], rows)
                be.upload(src, dst, stream=self._copy_stream)
        self._uploaded[slot] = be.record_event(self._copy_stream)

    def _batches(self, perm: np.ndarray | None) -> Iterator[Batch]:
        if self._running:
            raise RuntimeError(
                "another epoch of this StreamedBatches is still running; finish or close it first"
            )
        self._running = True
        be = self.be
        bounds = self.bounds()
        handed_out: int | None = None  # slot yielded whose release is not recorded yet
        try:
            if bounds:
                self._stage(0, perm, *bounds[0])
            for i, (a, b) in enumerate(bounds):
                slot = i % 2
                if i + 1 < len(bounds):
                    # Prefetch: batch i+1 goes into the other slot, which held batch i-1;
                    # its release was recorded when this generator was resumed for i.
                    self._stage(1 - slot, perm, *bounds[i + 1])
                # Rule 3: the compute stream waits (on the device) for batch i's upload.
                be.wait_event(self._uploaded[slot])
                rows = b - a
                bufs = [ch.device[slot] if rows == self.batch_size else _head(ch.device[slot], rows)
                        for ch in self._channels]
                handed_out = slot
                yield Batch(bufs[0], bufs[1], bufs[2] if self._has_w else None, a, b)
                # Resumed: the loop body has queued all its work on batch i. Recording
                # here, not later, lets the upload of batch i+2 into this slot overlap
                # step i+1; an event recorded after step i+1 would serialise them.
                self._released[slot] = be.record_event()
                handed_out = None
        finally:
            if handed_out is not None:  # left early (break, exception): release conservatively now
                self._released[handed_out] = be.record_event()
            # An upload queued but never consumed (the loop was left early) still reads
            # its staging buffer and writes its device buffer: let none outlive the epoch.
            for event in self._uploaded:
                be.synchronize_event(event)
            self._running = False


# ----------------------------------------------------------------- choice
def make_batches(
    be: Any,
    X: Any,
    Y: Any,
    w: Any,
    batch_size: int,
    dtype: str,
    stream: bool | None = None,
    *,
    target_dtype: str | None = None,
) -> ResidentBatches | SparseBatches | StreamedBatches:
    """The batch source for a training set: resident, sparse, or streamed from the host.

    Parameters
    ----------
    be : Backend
    X : array, shape (n, f)
    Y : array, shape (n, k)
    w : array, shape (n,), or None
    batch_size : int
    dtype : str
        Device dtype of X.
    stream : bool, optional
        ``None`` (automatic): stream only on a GPU backend, for host data, when X, Y
        and w would take more than half of the device's free memory (the rest is left
        to parameters, activations and the allocator). ``True`` forces streaming (on
        any backend: the CPU tests use it), ``False`` forces the resident path.
        Sparse ``X`` always takes :class:`SparseBatches`.
    target_dtype : str, optional, keyword-only
        Device dtype of Y and w; defaults to ``dtype``.
    """
    if is_sparse(X):
        if stream:
            raise ValueError("sparse X cannot be streamed; it stays sparse on the device instead")
        return SparseBatches(be, X, Y, w, batch_size, dtype, target_dtype=target_dtype)
    if stream is None:
        stream = should_stream(be, X, Y, w, dtype, target_dtype)
    cls = StreamedBatches if stream else ResidentBatches
    return cls(be, X, Y, w, batch_size, dtype, target_dtype=target_dtype)


def should_stream(be: Any, X: Any, Y: Any, w: Any, dtype: str, target_dtype: str | None) -> bool:
    """Whether ``make_batches(stream=None)`` streams: host data on a GPU that it would
    more than half fill."""
    if not be.is_gpu or not _is_host(X):
        return False  # host memory is the device, or X is already on the device
    free = be.device_free_bytes()
    if free is None:
        return False
    need = resident_nbytes(X, Y, w, dtype, target_dtype)
    if 2 * need <= free:
        return False
    log.info(
        "training set needs %.2f GiB on %s, %.2f GiB free: streaming minibatches from host memory",
        need / 2**30, be.name, free / 2**30,
    )
    return True
