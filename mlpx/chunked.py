"""Sliceable arrays read in chunks: zarr, HDF5 (h5py), Dask, and NumPy memory maps.

A data set that does not fit in memory is read one *window* of rows at a time, by
a background thread (:mod:`mlpx.prefetch`) that reads the next window while the
steps of the current one compute. A window is made of *blocks*: runs of rows that
begin and end on the storage's chunk boundaries (zarr's and HDF5's chunks, Dask's
blocks; 1 MiB of rows for arrays without chunks), so every read is a read of whole
chunks and no chunk is read twice in an epoch.

The documented shuffle, :class:`BlockShuffle`, orders an epoch in two stages:

1. the blocks are permuted (uniformly at random);
2. consecutive blocks of that order are grouped into windows of at least
   ``window`` rows, and the rows within each window are permuted (uniformly).

Minibatches are then cut from that order, as from any permutation. Rows of
different blocks mix when their blocks land in the same window; a window holding
the whole data set (``window >= n``) gives an exact uniform shuffle, in memory.
Memory is bounded by the windows in flight (the current one, the next, and the one
being read): about ``3 × window × row bytes``.

:class:`ArrayFeed` implements this for one rank's rows (with ``comm=``, the blocks
are split between the ranks and each rank reads only its own). It hands out rows
through :meth:`ArrayFeed.open`: ``reader.fill(a, b, X, Y, w)`` writes positions
``a:b`` of the epoch into host buffers, converting dtypes and encoding targets, which
:mod:`mlpx.streams` turns into device minibatches.
"""

from __future__ import annotations

import queue
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, cast, overload

import numpy as np

from mlpx.data import batch_denominator, to_host
from mlpx.prefetch import Prefetcher
from mlpx.validation import check_dtype_range, check_int

__all__ = ["ArrayFeed", "BlockShuffle", "block_bounds", "block_permutation", "is_lazy_array"]

#: Rows of a window when :class:`BlockShuffle` leaves it to the data: this many bytes of X.
WINDOW_BYTES = 32 * 2**20
#: Rows of a block for arrays without chunks (NumPy arrays, memory maps): this many bytes.
BLOCK_BYTES = 2**20
#: Windows read ahead of the one being consumed.
PREFETCH_WINDOWS = 1

_LAZY_MODULES = ("zarr", "h5py", "dask")


def is_lazy_array(x: Any) -> bool:
    """A zarr array, an ``h5py.Dataset`` or a Dask array: read in chunks, never whole."""
    return type(x).__module__.split(".")[0] in _LAZY_MODULES and hasattr(x, "shape") and hasattr(x, "__getitem__")


def _is_dask(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "dask"


# ------------------------------------------------------------------ shuffle
@dataclass(frozen=True)
class BlockShuffle:
    """The shuffle of data read in chunks: permuted blocks, rows shuffled within windows.

    Pass it as ``fit(..., shuffle=BlockShuffle(...))``; ``shuffle=True`` means
    ``BlockShuffle()`` for zarr, HDF5 and Dask arrays (and the exact shuffle, as
    always, for NumPy arrays, memory maps included). Each epoch:

    1. the chunk-aligned blocks of rows are permuted uniformly at random;
    2. consecutive blocks of that order are grouped into windows of at least
       ``window`` rows, and the rows of each window are permuted uniformly.

    Parameters
    ----------
    window : int or "auto", default "auto"
        Rows per window (raised to the batch size if smaller). "auto": 32 MiB of X.
        A window of at least the number of rows is one window holding everything:
        an exact uniform shuffle, for data that fits in memory. Memory in use is
        about three windows.
    block_rows : int, optional
        Rows per block, rounded up to whole chunks of the storage. Default: one
        chunk (zarr, HDF5), one Dask block, or 1 MiB of rows for arrays without
        chunks. Smaller blocks mix better; larger ones read faster.

    Raises
    ------
    InvalidParameterError
        A window or block size that is not a positive integer.

    Examples
    --------
    >>> import numpy as np, mlpx
    >>> X = np.lib.format.open_memmap("/tmp/X.npy", mode="w+", dtype="float32", shape=(1000, 8))
    >>> X[:] = np.random.default_rng(0).normal(size=(1000, 8))
    >>> y = np.arange(1000) % 3
    >>> model = mlpx.MLP([8, 16, 3], seed=0)
    >>> h = model.fit(X, y, epochs=2, batch_size=50, shuffle=mlpx.BlockShuffle(window=200, block_rows=20))
    >>> h.epochs
    2
    """

    window: int | str = "auto"
    block_rows: int | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.window, str) and self.window == "auto"):
            object.__setattr__(self, "window", check_int("BlockShuffle window", self.window, low=1))
        if self.block_rows is not None:
            object.__setattr__(self, "block_rows", check_int("BlockShuffle block_rows", self.block_rows, low=1))


class _Window(NamedTuple):
    """Positions ``p0:p1`` of an epoch: its blocks (in buffer order) and, shuffled,
    the buffer row of each position (None: the rows in buffer order)."""

    p0: int
    p1: int
    blocks: np.ndarray
    local: np.ndarray | None


def _group(sizes: np.ndarray, order: np.ndarray, window: int) -> list[np.ndarray]:
    """Consecutive blocks of ``order`` in groups of at least ``window`` rows (the last may be smaller)."""
    groups, start, rows = [], 0, 0
    for i, b in enumerate(order):
        rows += int(sizes[b])
        if rows >= window:
            groups.append(order[start: i + 1])
            start, rows = i + 1, 0
    if start < len(order):
        groups.append(order[start:])
    return groups


def _rows_of(offsets: np.ndarray, sizes: np.ndarray, blocks: np.ndarray) -> np.ndarray:
    """Row numbers of ``blocks`` laid end to end (vectorised ``concat(arange(o, o + s))``)."""
    s = sizes[blocks]
    total = int(s.sum())
    shift = offsets[blocks] - (np.cumsum(s) - s)
    return np.repeat(shift, s) + np.arange(total)


@overload
def block_permutation(sizes: Any, window: int, rng: np.random.Generator) -> tuple[np.ndarray, list[_Window]]: ...


@overload
def block_permutation(sizes: Any, window: int, rng: None) -> tuple[None, list[_Window]]: ...


def block_permutation(sizes: Any, window: int, rng: np.random.Generator | None
                      ) -> tuple[np.ndarray | None, list[_Window]]:
    """One epoch's order of :class:`BlockShuffle`, and how to read it window by window.

    Parameters
    ----------
    sizes : array of int, shape (n_blocks,)
        Rows of each block; block ``i`` holds rows ``offsets[i]:offsets[i] + sizes[i]``
        with ``offsets`` the running sum.
    window : int
        Rows per window (at least).
    rng : numpy.random.Generator or None
        None: the blocks and rows in order (no shuffle), windows still grouped.

    Returns
    -------
    perm : ndarray of int64, shape (n,), or None without ``rng``
        The epoch's order of the rows.
    windows : list
        The windows in order, each with its positions, blocks and the buffer row of
        every position.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    offsets = np.cumsum(sizes) - sizes
    order = np.arange(sizes.size) if rng is None else rng.permutation(sizes.size)
    windows, parts, p = [], [], 0
    for blocks in _group(sizes, order, max(1, int(window))):
        rows = int(sizes[blocks].sum())
        local = None if rng is None else rng.permutation(rows)
        windows.append(_Window(p, p + rows, blocks, local))
        if rng is not None:
            parts.append(_rows_of(offsets, sizes, blocks)[local])
        p += rows
    perm = None if rng is None else (np.concatenate(parts) if parts else np.zeros(0, np.int64))
    return perm, windows


# ------------------------------------------------------------------- blocks
def _row_bytes(X: Any) -> int:
    itemsize: int = np.dtype(X.dtype).itemsize  # typed: np.dtype of an Any is Any to the type checker
    return max(1, int(np.prod(X.shape[1:], dtype=np.int64)) * itemsize)


def block_bounds(X: Any, block_rows: int | None = None) -> np.ndarray:
    """Block boundaries of ``X``'s rows, on its chunk boundaries.

    Parameters
    ----------
    X : array, shape (n, ...)
        zarr (``chunks``), h5py (``chunks``, None for contiguous storage), Dask
        (``chunks``, possibly irregular) or anything else sliceable.
    block_rows : int, optional
        Rows per block, rounded up to whole chunks (Dask: consecutive blocks joined
        until they hold that many). Default: one chunk, or 1 MiB of rows.

    Returns
    -------
    ndarray of int64, shape (n_blocks + 1,)
        ``0 = b[0] < b[1] < ... < b[-1] = n``.
    """
    n = int(X.shape[0])
    chunks: Any = getattr(X, "chunks", None)  # the library's own: Dask's tuple of tuples, or None
    if _is_dask(X):
        edges = np.concatenate([[0], np.cumsum(chunks[0])]).astype(np.int64)
        if block_rows is None:
            return edges
        keep, last = [0], 0
        for e in edges[1:]:
            if e - last >= block_rows or e == n:
                keep.append(int(e))
                last = int(e)
        return np.asarray(keep, dtype=np.int64)
    step = int(chunks[0]) if chunks else max(1, BLOCK_BYTES // _row_bytes(X))
    if block_rows is not None:
        step = int(block_rows) if not chunks else step * -(-int(block_rows) // step)
    return np.append(np.arange(0, n, step, dtype=np.int64), np.int64(n)) if n else np.zeros(1, np.int64)


def _read(sources: list[Any], starts: np.ndarray, stops: np.ndarray, outs: list[np.ndarray]) -> None:
    """Rows ``starts[i]:stops[i]`` of every source, laid end to end into its ``out``."""
    lazy = [(k, int(s), int(e), off) for k, src in enumerate(sources) if _is_dask(src)
            for s, e, off in zip(starts, stops, np.cumsum(stops - starts) - (stops - starts))]
    if lazy:
        from dask.base import compute

        # dask's compute carries no annotations.
        got = compute(*[sources[k][s:e] for k, s, e, _ in lazy])  # type: ignore[no-untyped-call]
        for (k, s, e, off), part in zip(lazy, got):
            outs[k][off: off + e - s] = part
    for k, src in enumerate(sources):
        if _is_dask(src):
            continue
        off = 0
        for s, e in zip(starts.tolist(), stops.tolist()):
            _read_slice(src, s, e, outs[k][off: off + e - s])
            off += e - s


def _read_slice(src: Any, s: int, e: int, out: np.ndarray) -> None:
    """``out[...] = src[s:e]``, into ``out`` directly where the library can."""
    mod = type(src).__module__.split(".")[0]
    if mod == "h5py" and out.dtype == src.dtype and out.flags.c_contiguous:
        src.read_direct(out, np.s_[s:e])
        return
    if mod == "zarr" and out.dtype == src.dtype and out.flags.c_contiguous:
        try:
            from zarr.core.buffer import default_buffer_prototype  # zarr 3: out= takes its buffer type
        except ImportError:  # zarr 2 writes into a NumPy array
            src.get_basic_selection(slice(s, e), out=out)
            return
        src.get_basic_selection(slice(s, e), out=default_buffer_prototype().nd_buffer.from_numpy_array(out))
        return
    out[...] = src[s:e]


def _runs(starts: np.ndarray, stops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Blocks that follow each other in the source merged into one read."""
    if starts.size <= 1:
        return starts, stops
    cut = np.flatnonzero(starts[1:] != stops[:-1]) + 1
    return starts[np.r_[0, cut]], stops[np.r_[cut - 1, starts.size - 1]]


# --------------------------------------------------------------------- feed
class _Buffers(NamedTuple):
    """One window's buffers: X in its stored dtype, y as stored (None without targets)."""

    X: np.ndarray
    y: np.ndarray | None


class _Loaded(NamedTuple):
    """A window read: its rows of X and y (views of ``buf``)."""

    window: _Window
    X: np.ndarray
    y: np.ndarray | None
    buf: _Buffers


class ArrayFeed:
    """One rank's rows of a sliceable array, read window by window in the background.

    Parameters
    ----------
    X : array, shape (N, f)
        zarr, h5py, Dask, ``np.memmap`` or any array with ``shape``, ``dtype`` and
        row slicing. Numeric (bool, integer or real floating).
    y : array, shape (N,) or (N, k), or None
        Targets as stored (labels, values or rows), in memory or sliceable; read
        with X and encoded batch by batch by ``encode``. None for prediction.
    w : array_like, shape (N,), or None
        Sample weights: read whole (N floats), the denominators need them.
    batch_size : int
        Rows per minibatch (clipped to the rank's rows).
    dtype : str
        The dtype X is computed in: values beyond it are refused as they are read.
    encode : callable, optional
        ``encode(y_rows) -> ndarray (rows, k)``: the targets of a minibatch.
    shuffle : BlockShuffle, optional
        Block and window sizes (also used, unshuffled, to read in order).
    shard : (rank, size), optional
        Read only rank's share of the blocks (contiguous runs of blocks, the
        ranks' rows differing by at most a few blocks).
    name : str
        The argument's name in messages.

    Attributes
    ----------
    n, batch_size : int
        This rank's rows and the rows per minibatch.
    w_host : ndarray of float64, shape (n,), or None
    window_rows : int
    starts, sizes : ndarray of int64, shape (n_blocks,)
        Each block's first row in X and its rows (this rank's blocks).

    Raises
    ------
    ValueError, TypeError
        X not 2-D or not numeric, y or w of another length, bad weights.
    """

    def __init__(self, X: Any, y: Any = None, w: Any = None, *, batch_size: int, dtype: str,
                 encode: Callable[[np.ndarray], np.ndarray] | None = None, shuffle: BlockShuffle | None = None,
                 shard: tuple[int, int] | None = None, name: str = "X") -> None:
        shape = tuple(int(d) for d in X.shape)
        if len(shape) != 2:
            raise ValueError(f"{name} must be 2-D (n_samples, n_features), got shape {shape}")
        if np.dtype(X.dtype).kind not in "biuf":
            raise TypeError(f"{name} must be numeric, got dtype {X.dtype}")
        N = shape[0]
        if y is not None and not is_lazy_array(y) and not isinstance(y, np.ndarray):
            y = np.asarray(to_host(y.to_numpy() if hasattr(y, "to_numpy") else y))
        if y is not None and int(y.shape[0]) != N:
            raise ValueError(f"{name} and y have different lengths: {N} and {int(y.shape[0])}")
        shuffle = shuffle or BlockShuffle()
        bounds = block_bounds(X, shuffle.block_rows)
        rank, size = shard or (0, 1)
        cut = np.linspace(0, bounds.size - 1, size + 1).round().astype(np.int64)
        self.starts = bounds[cut[rank]: cut[rank + 1]]
        self.sizes = bounds[cut[rank] + 1: cut[rank + 1] + 1] - self.starts
        self.n = int(self.sizes.sum())
        self.X, self.y, self.dtype, self.name = X, y, dtype, name
        self.encode = encode
        self.batch_size = max(1, min(check_int("batch_size", batch_size, low=1), max(self.n, 1)))
        auto = max(1, WINDOW_BYTES // _row_bytes(X))
        self.window_rows = max(self.batch_size, auto if shuffle.window == "auto" else int(shuffle.window))
        self.w_host = None if w is None else self._weights(w, N)
        self._plan: tuple[Any, list[_Window]] = (None, [])
        self._pool: list[_Buffers] = []
        self._reading = False

    def _weights(self, w: Any, N: int) -> np.ndarray:
        w = np.asarray(to_host(w[:] if is_lazy_array(w) else w), dtype=np.float64)
        if w.shape != (N,):
            raise ValueError(f"sample_weight must have shape ({N},), got {w.shape}")
        if not (np.isfinite(w).all() and (w >= 0).all()):
            raise ValueError("sample_weight must be finite and non-negative")
        # Weights are cast to the parameters' dtype: float32 under half-precision compute.
        check_dtype_range(w, self.dtype if self.dtype in ("float32", "float64") else "float32", "sample_weight")
        return np.concatenate([w[s: s + z] for s, z in zip(self.starts, self.sizes)]) if self.n else w[:0]

    # ----------------------------------------------------------- sizes
    @property
    def n_batches(self) -> int:
        return -(-self.n // self.batch_size)

    def bounds(self) -> list[tuple[int, int]]:
        """``(a, b)`` of every minibatch of an epoch."""
        return [(a, min(a + self.batch_size, self.n)) for a in range(0, self.n, self.batch_size)]

    def step_rows(self, perm: Any) -> np.ndarray:
        """Rows of every minibatch, shape (n_batches,), float64."""
        return np.array([float(b - a) for a, b in self.bounds()])

    def denominators(self, perm: Any) -> np.ndarray:
        """Each minibatch's loss normaliser (rows, or Σ w of its rows), shape (n_batches,)."""
        return np.array([batch_denominator(self.w_host, perm, a, b) for a, b in self.bounds()])

    def order(self, rng: np.random.Generator) -> Callable[[], np.ndarray]:
        """The ``order`` of the training loop: a new :func:`block_permutation` per call."""

        def order() -> np.ndarray:
            perm, windows = block_permutation(self.sizes, self.window_rows, rng)
            self._plan = (perm, windows)
            return perm

        return order

    # ---------------------------------------------------------- reading
    def open(self, perm: Any) -> "_ArrayReader":
        """Start reading one epoch in the background (close the reader when done).

        Parameters
        ----------
        perm : ndarray or None
            The last order this feed gave (:meth:`order`), or None for the rows in order.

        Raises
        ------
        ValueError
            Another permutation: the feed reads only orders it planned.
        RuntimeError
            While another epoch of this feed is being read (they would share buffers).
        """
        if self._reading:
            raise RuntimeError("this feed is already being read; close that reader first")
        if perm is None:
            windows = block_permutation(self.sizes, self.window_rows, None)[1]
        elif perm is self._plan[0]:
            windows = self._plan[1]
        else:
            raise ValueError("a chunked source reads the orders of its own BlockShuffle (or None) only")
        return _ArrayReader(self, perm, windows)

    def buffers(self, rows: int) -> list[_Buffers]:
        """The window buffers (allocated once, and again only for larger windows): the
        windows read ahead, the one being read, and the (at most two) a minibatch spans."""
        if not self._pool or self._pool[0].X.shape[0] < rows:
            self._pool = []  # the old buffers go before the new ones are allocated
            y_shape = None if self.y is None else (rows,) + tuple(int(d) for d in self.y.shape[1:])
            self._pool = [_Buffers(np.empty((rows,) + tuple(self.X.shape[1:]), self.X.dtype),
                                   None if y_shape is None else np.empty(y_shape, self.y.dtype))
                          for _ in range(PREFETCH_WINDOWS + 3)]
        return self._pool

    def load(self, window: _Window, buf: _Buffers) -> _Loaded:
        """Read ``window``'s blocks into ``buf`` and check its rows."""
        rows = window.p1 - window.p0
        starts, stops = _runs(self.starts[window.blocks], self.starts[window.blocks] + self.sizes[window.blocks])
        X = buf.X[:rows]
        y = None if buf.y is None else buf.y[:rows]
        _read([self.X] + ([] if y is None else [self.y]), starts, stops, [X] + ([] if y is None else [y]))
        if X.dtype.kind == "f" and not np.isfinite(X).all():
            bad = int(np.flatnonzero(~np.isfinite(X).all(axis=1))[0])
            row = int(_rows_of(self.starts, self.sizes, window.blocks)[bad])
            raise ValueError(f"{self.name} contains NaN or infinity (row {row}); clean or impute it before training")
        check_dtype_range(X, self.dtype, self.name)
        return _Loaded(window, X, y, buf)


class _ArrayReader:
    """One epoch of an :class:`ArrayFeed`: windows read ahead, rows handed out in order."""

    def __init__(self, feed: ArrayFeed, perm: Any, windows: list[_Window]) -> None:
        self.feed, self.perm = feed, perm
        feed._reading = True
        rows = max((w.p1 - w.p0 for w in windows), default=1)
        self._free: queue.Queue[_Buffers] = queue.Queue()
        for buf in feed.buffers(rows):
            self._free.put(buf)
        self._held: deque[_Loaded] = deque()
        self._raw: dict[tuple[str, int, Any], np.ndarray] = {}

        def produce(p: Prefetcher) -> None:
            for window in windows:
                p.emit(feed.load(window, p.take(self._free)))

        self._reader = Prefetcher(produce, depth=PREFETCH_WINDOWS, name="mlpx-chunk-reader")

    def _cover(self, a: int, b: int) -> None:
        while self._held and self._held[0].window.p1 <= a:
            self._free.put(self._held.popleft().buf)
        while not self._held or self._held[-1].window.p1 < b:
            item = self._reader.get()
            if item is Prefetcher.END:
                raise RuntimeError(f"the reader ended before position {b}")
            self._held.append(item)

    def _take(self, src: np.ndarray, idx: Any, out: np.ndarray, tag: str) -> None:
        if isinstance(idx, slice):
            np.copyto(out, src[idx], casting="unsafe")
        elif src.dtype == out.dtype:
            np.take(src, idx, axis=0, out=out, mode="clip")  # local indices are in range by construction
        else:
            key = (tag, out.shape[0], src.dtype)
            raw = self._raw.get(key)
            if raw is None:
                raw = self._raw[key] = np.empty((out.shape[0],) + src.shape[1:], src.dtype)
            np.take(src, idx, axis=0, out=raw, mode="clip")
            np.copyto(out, raw, casting="unsafe")

    def rows(self, a: int, b: int, X_out: np.ndarray, y_out: np.ndarray | None = None) -> None:
        """Positions ``a:b`` of the epoch: X into ``X_out`` (converted), raw y into ``y_out``."""
        self._cover(a, b)
        for loaded in self._held:
            w = loaded.window
            lo, hi = max(a, w.p0), min(b, w.p1)
            if lo >= hi:
                continue
            idx = slice(lo - w.p0, hi - w.p0) if w.local is None else w.local[lo - w.p0: hi - w.p0]
            self._take(loaded.X, idx, X_out[lo - a: hi - a], "X")
            if y_out is not None:  # a feed with targets, whose windows hold them
                self._take(cast(np.ndarray, loaded.y), idx, y_out[lo - a: hi - a], "y")

    def fill(self, a: int, b: int, X_out: np.ndarray, Y_out: np.ndarray | None, w_out: np.ndarray | None) -> None:
        """Positions ``a:b`` as a minibatch: X converted, Y encoded, w (host buffers).

        Parameters
        ----------
        a, b : int
            Consecutive calls ask for consecutive ranges of the epoch.
        X_out : ndarray, shape (b - a, f)
        Y_out : ndarray, shape (b - a, k), or None
        w_out : ndarray, shape (b - a,), or None
        """
        feed = self.feed
        y_raw = None
        if Y_out is not None:
            key = ("y_raw", b - a, None)
            y_raw = self._raw.get(key)
            if y_raw is None:
                y_raw = self._raw[key] = np.empty((b - a,) + feed.y.shape[1:], feed.y.dtype)
        self.rows(a, b, X_out, y_raw)
        # Targets and weights are asked for only of a feed that has them (and encode).
        if Y_out is not None:
            encode = cast(Callable[[np.ndarray], np.ndarray], feed.encode)
            np.copyto(Y_out, encode(cast(np.ndarray, y_raw)), casting="unsafe")
        if w_out is not None:
            rows = slice(a, b) if self.perm is None else self.perm[a:b]
            np.copyto(w_out, cast(np.ndarray, feed.w_host)[rows], casting="unsafe")

    def close(self) -> None:
        self._reader.close()
        self._held.clear()
        self.feed._reading = False

