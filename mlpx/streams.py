"""Training input beyond in-memory arrays: on-disk arrays and streams of batches.

:meth:`~mlpx.Sequential.fit`, :meth:`~mlpx.Sequential.evaluate`,
:meth:`~mlpx.Sequential.predict` and :meth:`~mlpx.Stack.fit` take, besides NumPy
arrays:

* **sliceable arrays read in chunks**: a zarr array, an ``h5py.Dataset``, a Dask
  array (and a NumPy array or ``np.memmap`` with ``shuffle=BlockShuffle(...)``), with
  ``y`` (and ``sample_weight``) in memory or in the same kind of store. They are read
  window by window (:mod:`mlpx.chunked`) and shuffled by :class:`BlockShuffle`.
* **re-iterables of batches**: anything that gives a fresh iterator of ``(X, y)`` or
  ``(X, y, w)`` batches each time it is iterated, ``y=None`` in the call: a
  generator factory (a function returning a new generator), a
  ``torch.utils.data.DataLoader``, a ``tf.data``-like dataset. Batches come in the
  stream's own order and sizes (``batch_size`` and ``shuffle`` of ``fit`` do not
  apply; shuffle at the source, e.g. ``DataLoader(shuffle=True)``).

A background thread (:mod:`mlpx.prefetch`) reads ahead while the current step
computes. On a GPU the rows go through the pinned, double-buffered upload of
:class:`mlpx.data.StreamedBatches`; elsewhere they are handed to the step directly.

The training loop needs every step's rows and loss normaliser before an epoch
starts (with ``comm=`` the ranks agree on them in one all-reduce). A sliceable
array knows them. A stream of batches does not, so ``fit`` makes **a first pass
that counts** each batch's rows and weight sum (and checks every batch: width,
NaN, labels), then trains; each epoch checks that the stream gives the same batch
sizes again. This keeps the one training loop of mlpx unchanged on every path
(one process or many, one network or a stack) at the cost of one extra read of
the stream per ``fit``. A weighted stream whose batches' weight sums change between
epochs (a shuffling loader) trains on each batch's weighted mean as the in-memory
fit does (its weights are rescaled to the counted sum); the epoch's logged loss
then weighs the batches by the counted sums.

See the data guide (``docs/guide/data.rst``) for sharding under ``comm=``, the GPU
path, validation data and the estimators (whose route for streams is ``partial_fit``).

Examples
--------
>>> import numpy as np, torch, mlpx
>>> rng = np.random.default_rng(0)
>>> X, y = rng.normal(size=(600, 8)), rng.integers(0, 3, 600)
>>> def batches():                       # a generator factory: a new pass per call
...     for a in range(0, 600, 100):
...         yield X[a:a + 100], y[a:a + 100]
>>> model = mlpx.MLP([8, 16, 3], dtype="float64", seed=0)
>>> history = model.fit(batches, epochs=2)
>>> loader = torch.utils.data.DataLoader(
...     torch.utils.data.TensorDataset(torch.from_numpy(X), torch.from_numpy(y)), batch_size=100)
>>> sorted(model.evaluate(loader))
['accuracy', 'loss']
>>> model.predict(loader).shape
(600,)
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, NamedTuple, cast

import numpy as np

from mlpx.chunked import ArrayFeed, BlockShuffle, is_lazy_array
from mlpx.data import Batch, StreamedBatches, host_dtype, to_host
from mlpx.distributed import LocalReducer
from mlpx.metrics import PREDICT_CHUNK, holdout_scores, iter_chunks
from mlpx.prefetch import Prefetcher
from mlpx.validation import check_dtype_range, check_X, encode_targets

__all__ = [
    "BatchFeed",
    "BlockShuffle",
    "FeedBatches",
    "MemberFeedBatches",
    "StreamHoldout",
    "UploadedBatches",
    "evaluate",
    "holdout",
    "is_batch_stream",
    "is_stream",
    "member_outputs",
    "stack_source",
    "training_source",
]

#: Batches a stream's reader thread may be ahead of the step.
PREFETCH_BATCHES = 4


def is_batch_stream(x: Any) -> bool:
    """A re-iterable of batches (or a one-shot iterator, refused later with the fix).

    Arrays (anything with a ``shape``: NumPy, torch, DataFrames), lists, tuples,
    dicts and strings are data, not streams.
    """
    if isinstance(x, (str, bytes, list, tuple, dict, np.ndarray)) or hasattr(x, "shape"):
        return False
    return callable(x) or hasattr(x, "__iter__")


def is_stream(x: Any) -> bool:
    """Input that :mod:`mlpx.streams` reads: a zarr/HDF5/Dask array or a stream of batches."""
    return is_lazy_array(x) or is_batch_stream(x)


# ------------------------------------------------------------ stream batches
def _fresh(stream: Any, once: bool = False) -> Iterator[Any]:
    """A new iterator over ``stream``; a one-shot iterator only where one pass is all (``once``)."""
    if hasattr(stream, "__next__"):
        if once:
            return cast(Iterator[Any], stream)  # it has __next__
        raise TypeError(
            f"a {type(stream).__name__} can be read once only, and training reads its data once per "
            f"epoch (and once to count): pass a function that returns a new one, e.g. "
            f"fit(lambda: batches(...), None) instead of fit(batches(...), None)"
        )
    if callable(stream):
        made = stream()
        if not hasattr(made, "__iter__"):
            raise TypeError(f"the batch factory returned a {type(made).__name__}, not an iterable of batches")
        return iter(made)
    return iter(stream)


class _Check:
    """Turns one batch of a stream into host arrays the model takes, checking it."""

    def __init__(self, model: Any, loss: str | None, targets: bool) -> None:
        self.model, self.loss, self.targets = model, loss, targets

    def __call__(self, item: Any, j: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        m = self.model
        if self.targets:
            if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
                raise TypeError(f"batch {j} of the stream is a {type(item).__name__}; each batch must be "
                                f"(X, y) or (X, y, sample_weight)")
        elif isinstance(item, (tuple, list)):
            item = item[:1]
        else:
            item = (item,)
        where = f"X of batch {j}"
        X = check_X(to_host(item[0]), None, m.n_features_in_, name=where, dtype=m.compute_dtype)
        X = np.asarray(X)
        Y = w = None
        if self.targets:
            Y = encode_targets(to_host(item[1]), m.output.name, m.n_outputs_, X.shape[0], dtype=m.dtype,
                               loss=self.loss)
            if len(item) == 3 and item[2] is not None:
                w = np.asarray(to_host(item[2]), dtype=np.float64)
                if w.shape != (X.shape[0],):
                    raise ValueError(f"the weights of batch {j} must have shape ({X.shape[0]},), got {w.shape}")
                if not (np.isfinite(w).all() and (w >= 0).all()):
                    raise ValueError(f"the weights of batch {j} must be finite and non-negative")
                check_dtype_range(w, m.dtype, f"sample_weight of batch {j}")
        return X, Y, w


class BatchFeed:
    """A re-iterable of batches, read by a background thread, sized by a first pass.

    Parameters
    ----------
    stream : re-iterable or callable
        A generator factory (each call returns a new iterator), or an object whose
        ``iter()`` gives a fresh iterator each time (a ``DataLoader``, a
        ``tf.data.Dataset``). Batches are ``(X, y)`` or ``(X, y, w)`` with X of
        shape (rows, f), y as ``fit`` takes it, w of shape (rows,); for
        prediction a batch may be X alone.
    check : callable
        ``check(item, j) -> (X, Y, w)`` host arrays (:class:`_Check`).
    count : bool
        Make the counting pass now (training); without it only :meth:`items` works.
    once : bool
        Accept a one-shot iterator (a generator object): for a single pass.

    Attributes
    ----------
    n, batch_size : int
        Rows per epoch and of the largest batch (after counting).
    rows, sums : ndarray, shape (n_batches,)
        Each batch's rows and weight sum in the counting pass.
    weighted : bool
        Whether the batches carry weights.
    w_host : None
        (Per-row weights are not kept; the counted sums are the denominators.)

    Raises
    ------
    TypeError
        A one-shot iterator (the message shows the factory to pass instead), or
        batches of the wrong form.
    ValueError
        A bad batch (wrong width, NaN, labels out of range), found by the first pass.
    """

    w_host = None

    def __init__(self, stream: Any, check: Callable[[Any, int], tuple[Any, Any, Any]], count: bool,
                 once: bool = False) -> None:
        self.stream, self.check, self.once = stream, check, once
        self.weighted = False
        self.rows = np.zeros(0, dtype=np.int64)
        self.sums = np.zeros(0)
        if count:
            rows, sums, arity = [], [], set()
            for X, Y, w in self.items():
                rows.append(X.shape[0])
                sums.append(float(X.shape[0]) if w is None else float(w.sum()))
                arity.add(w is not None)
            if len(arity) > 1:
                raise ValueError("some batches of the stream have weights and others not")
            self.weighted = arity == {True}
            self.rows, self.sums = np.asarray(rows, dtype=np.int64), np.asarray(sums)
        self.n = int(self.rows.sum())
        self.batch_size = int(self.rows.max()) if self.rows.size else 1
        self._starts = np.cumsum(self.rows) - self.rows

    def _reader(self) -> Prefetcher:
        it = _fresh(self.stream, self.once)

        def produce(p: Prefetcher) -> None:
            for j, item in enumerate(it):
                p.emit(self.check(item, j))

        return Prefetcher(produce, depth=PREFETCH_BATCHES, name="mlpx-batch-reader")

    def items(self) -> Iterator[tuple[np.ndarray, np.ndarray | None, np.ndarray | None]]:
        """One pass: every batch as checked host arrays ``(X, Y, w)``, read ahead."""
        reader = self._reader()
        try:
            while (item := reader.get()) is not Prefetcher.END:
                yield item
        finally:
            reader.close()

    @property
    def n_batches(self) -> int:
        return int(self.rows.size)

    def bounds(self) -> list[tuple[int, int]]:
        """``(a, b)`` of every batch in the epoch's rows."""
        return [(int(a), int(a + r)) for a, r in zip(self._starts, self.rows)]

    def step_rows(self, perm: Any) -> np.ndarray:
        """Rows of every batch (counted), shape (n_batches,), float64."""
        return self.rows.astype(np.float64)

    def denominators(self, perm: Any) -> np.ndarray:
        """Each batch's loss normaliser (its rows, or its weight sum, counted)."""
        sums: np.ndarray = self.sums.copy()  # typed: NumPy's stubs give Any here
        return sums

    def open(self, perm: Any) -> "_StreamReader":
        """Read one epoch (``perm`` must be None: a stream has its own order)."""
        if perm is not None:
            raise ValueError("a stream of batches comes in its own order; shuffle it at its source")
        return _StreamReader(self)


class _StreamReader:
    """One epoch of a :class:`BatchFeed`: each batch checked against the count."""

    def __init__(self, feed: BatchFeed) -> None:
        self.feed, self.j = feed, 0
        self._reader = feed._reader()

    def fill(self, a: int, b: int, X_out: np.ndarray, Y_out: np.ndarray, w_out: np.ndarray | None) -> None:
        """The next batch (rows ``a:b`` of the epoch) into host buffers."""
        feed, j = self.feed, self.j
        item = self._reader.get()
        if item is Prefetcher.END:
            raise ValueError(f"the stream ended after {j} batches, where the first pass counted {feed.n_batches}; "
                             f"a stream must give the same batches every epoch (a generator is used up by one "
                             f"pass: pass a function that returns a new one)")
        X, Y, w = item
        if X.shape[0] != b - a:
            raise ValueError(f"batch {j} of the stream has {X.shape[0]} rows in this epoch, where the first pass "
                             f"counted {b - a}; a stream must give batches of the same sizes every epoch")
        if (w is not None) != feed.weighted:
            raise ValueError(f"batch {j} of the stream {'has' if w is not None else 'lacks'} weights, unlike the "
                             f"first pass")
        np.copyto(X_out, X, casting="unsafe")
        np.copyto(Y_out, Y, casting="unsafe")
        if w_out is not None:
            total, counted = float(w.sum()), float(feed.sums[j])
            if total != counted and counted > 0:
                if total <= 0:
                    raise ValueError(f"the weights of batch {j} sum to 0 in this epoch, but to {counted:g} in "
                                     f"the first pass")
                w = w * (counted / total)  # the batch's weighted mean, over the counted sum
            np.copyto(w_out, w, casting="unsafe")
        self.j += 1
        # The loop asks for exactly the counted steps: the stream must end there too.
        if self.j == feed.n_batches and self._reader.get() is not Prefetcher.END:
            raise ValueError(f"the stream gave more than the {feed.n_batches} batches of the first pass; "
                             f"a stream must give the same batches every epoch")

    def close(self) -> None:
        self._reader.close()


# ------------------------------------------------------- onto the backend
class _Sizes:
    """A device source's sizes, from its feed."""

    feed: ArrayFeed | BatchFeed

    @property
    def n_batches(self) -> int:
        return len(self.feed.bounds())

    def bounds(self) -> list[tuple[int, int]]:
        return self.feed.bounds()

    def step_rows(self, perm: Any) -> np.ndarray:
        """Rows of every minibatch of an epoch, shape (n_batches,)."""
        return self.feed.step_rows(perm)

    def denominators(self, perm: Any) -> np.ndarray:
        """Each minibatch's loss normaliser (rows or Σ w), shape (n_batches,)."""
        return self.feed.denominators(perm)


class FeedBatches(_Sizes):
    """Minibatches of a feed handed to a host backend (NumPy, Array API namespaces).

    Same interface as :class:`mlpx.data.ResidentBatches`: each minibatch is written
    into host buffers of ``batch_size`` rows, reused every step (on the NumPy
    backend the step reads them in place), so use them within the loop body.

    Parameters
    ----------
    be : Backend
    feed : ArrayFeed or BatchFeed
    dtype, target_dtype : str
        The dtypes of X and of Y and w on the backend.
    n_features, n_outputs : int
    weighted : bool
        Whether minibatches carry weights.
    """

    def __init__(self, be: Any, feed: ArrayFeed | BatchFeed, dtype: str, target_dtype: str, n_features: int,
                 n_outputs: int, weighted: bool) -> None:
        self.be, self.feed = be, feed
        self.n, self.batch_size, self.w_host = feed.n, feed.batch_size, feed.w_host
        self.dtype, self.target_dtype, self.weighted = dtype, target_dtype, weighted
        rows = self.batch_size
        self._X = np.empty((rows, n_features), host_dtype(dtype))
        self._Y = np.empty((rows, n_outputs), host_dtype(target_dtype))
        self._w = np.empty(rows, host_dtype(target_dtype)) if weighted else None

    def epoch(self, perm: Any) -> Iterator[Batch]:
        """One pass in minibatches (``perm``: the feed's order, or None)."""
        return self._batches(perm)

    def _batches(self, perm: Any) -> Iterator[Batch]:
        be = self.be
        reader = self.feed.open(perm)
        try:
            for a, b in self.feed.bounds():
                X, Y = self._X[: b - a], self._Y[: b - a]
                w = None if self._w is None else self._w[: b - a]
                reader.fill(a, b, X, Y, w)
                yield Batch(be.asarray(X, dtype=self.dtype), be.asarray(Y, dtype=self.target_dtype),
                            None if w is None else be.asarray(w, dtype=self.target_dtype), a, b)
        finally:
            reader.close()


class UploadedBatches(_Sizes, StreamedBatches):
    """Minibatches of a feed streamed to a device through pinned, double-buffered copies.

    :class:`mlpx.data.StreamedBatches` with its host gather replaced by the feed:
    the rows of minibatch ``i + 1`` are written into a page-locked staging buffer
    while the device computes step ``i``, and uploaded on a copy stream (see the
    ordering rules there). Parameters as :class:`FeedBatches`.
    """

    def __init__(self, be: Any, feed: ArrayFeed | BatchFeed, dtype: str, target_dtype: str, n_features: int,
                 n_outputs: int, weighted: bool) -> None:
        self.feed, self.weighted = feed, weighted
        self.n, self.batch_size, self.w_host = feed.n, feed.batch_size, feed.w_host
        sources: list[Any] = [((n_features,), host_dtype(dtype)), ((n_outputs,), host_dtype(target_dtype))]
        if weighted:
            sources.append(((), host_dtype(target_dtype)))
        self._open(be, dtype, target_dtype, sources)
        self._reader: Any = None

    def epoch(self, perm: Any) -> Iterator[Batch]:
        """One pass in minibatches (``perm``: the feed's order, or None)."""
        return self._fed(perm)

    def _fed(self, perm: Any) -> Iterator[Batch]:
        self._reader = self.feed.open(perm)
        try:
            yield from self._batches(perm)
        finally:
            self._reader.close()
            self._reader = None

    def _gather(self, slot: int, perm: Any, a: int, b: int) -> None:
        outs = [ch.staging[slot][: b - a] for ch in self._channels]
        self._reader.fill(a, b, outs[0], outs[1], outs[2] if self._has_w else None)


def _on_backend(model: Any, feed: ArrayFeed | BatchFeed, stream_data: bool | None,
                weighted: bool) -> FeedBatches | UploadedBatches:
    """The device source of a training feed: uploaded on a GPU (or when asked), else handed over."""
    cls = UploadedBatches if model.backend.is_gpu or stream_data else FeedBatches
    return cls(model.backend, feed, model.compute_dtype, model.dtype, model.n_features_in_, model.n_outputs_,
               weighted)


# ------------------------------------------------------------------ feeds
def _encoder(model: Any, loss: str | None) -> Callable[[np.ndarray], np.ndarray]:
    def encode(y: np.ndarray) -> np.ndarray:
        return encode_targets(y, model.output.name, model.n_outputs_, y.shape[0], dtype=model.dtype, loss=loss)

    return encode


def _array_feed(model: Any, X: Any, y: Any, w: Any, *, loss: str | None, batch_size: int,
                shuffle: BlockShuffle | None, shard: tuple[int, int] | None, name: str = "X") -> ArrayFeed:
    width = int(X.shape[1]) if len(X.shape) == 2 else None
    if width is not None and width != model.n_features_in_:
        raise ValueError(f"{name} has {width} features, but the model expects {model.n_features_in_}")
    encode = None if y is None else _encoder(model, loss)
    feed = ArrayFeed(X, y, w, batch_size=batch_size, dtype=model.compute_dtype, encode=encode, shuffle=shuffle,
                     shard=shard, name=name)
    if isinstance(feed.y, np.ndarray):  # targets in memory: checked whole now, not batch by batch later
        check = cast(Callable[[np.ndarray], np.ndarray], encode)  # feed.y is y, so not None
        for a, b in iter_chunks(feed.y.shape[0], 1 << 16):
            check(feed.y[a:b])
    return feed


def _stream_feed(model: Any, stream: Any, y: Any, w: Any, *, loss: str | None, count: bool,
                 targets: bool = True) -> BatchFeed:
    if y is not None or w is not None:
        raise TypeError("a stream of batches carries its own targets (and weights): pass y=None and no "
                        "sample_weight, and give each batch as (X, y) or (X, y, w)")
    # Prediction reads the stream once; training and scoring may read it again.
    return BatchFeed(stream, _Check(model, loss, targets), count=count, once=not targets)


def _feed(model: Any, X: Any, y: Any, w: Any, *, loss: str | None, batch_size: int, count: bool,
          shuffle: BlockShuffle | None = None, shard: tuple[int, int] | None = None, name: str = "X") -> Any:
    if is_batch_stream(X):
        return _stream_feed(model, X, y, w, loss=loss, count=count)
    if y is None:
        raise TypeError(f"y is required with an array {name} (only a stream of (X, y) batches carries its targets)")
    return _array_feed(model, X, y, w, loss=loss, batch_size=batch_size, shuffle=shuffle, shard=shard, name=name)


def _shard(reducer: Any, X: Any) -> tuple[int, int] | None:
    """A zarr/HDF5/Dask array is the whole data set on every rank: each reads its blocks."""
    return (reducer.rank, reducer.size) if reducer.size > 1 and is_lazy_array(X) else None


def training_source(model: Any, reducer: Any, X: Any, y: Any, sample_weight: Any, batch_size: int, shuffle: Any,
                    validation_split: float, stream_data: bool | None, rng: np.random.Generator,
                    loss: str | None) -> tuple[Any, Callable[[], Any] | None] | None:
    """``fit``'s minibatch source and order for streamed input; None for in-memory arrays.

    Parameters
    ----------
    model : Sequential
    reducer : Reducer
        With several ranks a zarr/HDF5/Dask ``X`` is the whole data set and this
        rank reads only its share of the blocks; a stream of batches is this rank's.
    X, y, sample_weight
        As ``fit`` takes them.
    batch_size : int
        Rows per minibatch of an array (a stream's batches come as they are).
    shuffle : bool or BlockShuffle
    validation_split : float
        Refused (> 0) for streamed input.
    stream_data : bool or None
        True streams through the pinned upload on any mutable backend; False is
        refused (the data cannot be made resident here).
    rng : numpy.random.Generator
        The model's shuffle generator.
    loss : str
        The loss the targets are encoded for.

    Returns
    -------
    (source, order) or None
        ``source`` None for a rank without rows; ``order`` None without shuffling.

    Raises
    ------
    TypeError, ValueError
        A missing ``y`` for arrays, a ``y`` with a stream, a bad batch or array.
    """
    block = isinstance(shuffle, BlockShuffle)
    if not is_stream(X) and not block:
        if y is None:
            raise TypeError("y is required with array X (only a stream of (X, y) batches carries its targets)")
        return None
    if validation_split:
        raise ValueError("validation_split needs the data in memory; pass validation_data (arrays, a store or "
                         "a stream) instead")
    if stream_data is False:
        raise ValueError("stream_data=False keeps the data resident on the device, which streamed input is not; "
                         "load it first (e.g. numpy.asarray(X)) to train from memory")
    feed = _feed(model, X, y, sample_weight, loss=loss, batch_size=batch_size, count=True,
                 shuffle=shuffle if block else None, shard=_shard(reducer, X))
    if isinstance(feed, BatchFeed) and block:
        raise ValueError("BlockShuffle reorders the rows of an array; a stream of batches comes in its own "
                         "order (shuffle it at its source, e.g. DataLoader(shuffle=True))")
    if feed.n == 0:
        if reducer.size > 1:
            return None, None
        raise ValueError("the training data has no rows")
    if reducer.size == 1 and feed.w_host is not None and feed.w_host.sum() <= 0:
        raise ValueError("sample_weight sums to zero: nothing to train on")
    weighted = feed.weighted if isinstance(feed, BatchFeed) else feed.w_host is not None
    order = feed.order(rng) if shuffle and isinstance(feed, ArrayFeed) else None
    return _on_backend(model, feed, stream_data, weighted), order


# ----------------------------------------------------------------- scoring
class _HostChunk(NamedTuple):
    X: np.ndarray
    Y: np.ndarray | None
    w: np.ndarray | None


def _chunks(model: Any, feed: Any, targets: bool) -> Iterator[_HostChunk]:
    """A feed's rows in order, as host chunks of at most PREDICT_CHUNK rows."""
    if isinstance(feed, BatchFeed):
        for X, Y, w in feed.items():
            for a, b in iter_chunks(X.shape[0], PREDICT_CHUNK):
                yield _HostChunk(X[a:b], None if Y is None else Y[a:b], None if w is None else w[a:b])
        return
    rows = feed.batch_size
    X = np.empty((rows, model.n_features_in_), host_dtype(model.compute_dtype))
    Y = np.empty((rows, model.n_outputs_)) if targets else None
    w = np.empty(rows) if targets and feed.w_host is not None else None
    reader = feed.open(None)
    try:
        for a, b in feed.bounds():
            m = b - a
            part = _HostChunk(X[:m], None if Y is None else Y[:m], None if w is None else w[:m])
            if targets:
                reader.fill(a, b, *part)
            else:
                reader.rows(a, b, part.X)
            yield part
    finally:
        reader.close()


class StreamHoldout:
    """A held-out set read in chunks each time it is scored (the ``holdout`` of the loop).

    Parameters
    ----------
    model : Sequential
    feed : ArrayFeed or BatchFeed
        With targets; read in order.
    """

    def __init__(self, model: Any, feed: Any) -> None:
        self.model, self.feed = model, feed

    def chunks(self) -> Iterator[tuple[Any, Any, Any, None]]:
        """``(X, Y, w, None)`` device chunks of the set, in order (every member sees every row)."""
        m = self.model
        be = m.backend
        for c in _chunks(m, self.feed, targets=True):
            yield (be.asarray(c.X, dtype=m.compute_dtype), be.asarray(c.Y, dtype=m.dtype),
                   None if c.w is None else be.asarray(c.w, dtype=m.dtype), None)

    def scores(self, model: Any, reducer: Any, loss: Any) -> dict[str, Any]:
        """:func:`~mlpx.metrics.holdout_scores` of ``model`` on this set (collective)."""
        return holdout_scores(model, self.chunks, reducer, loss)


def holdout(model: Any, reducer: Any, validation_data: Any, loss: str | None) -> StreamHoldout | None:
    """``fit``'s held-out set for streamed ``validation_data``; None for arrays (or none).

    ``validation_data`` is a stream of ``(X, y[, w])`` batches, or a tuple whose X is
    a zarr/HDF5/Dask array (read in chunks; with several ranks each reads its share).
    """
    if validation_data is None:
        return None
    if is_batch_stream(validation_data):
        return StreamHoldout(model, _stream_feed(model, validation_data, None, None, loss=loss, count=False))
    if isinstance(validation_data, (tuple, list)) and len(validation_data) in (2, 3) and is_lazy_array(
            validation_data[0]):
        Xv, yv = validation_data[0], validation_data[1]
        wv = validation_data[2] if len(validation_data) == 3 else None
        feed = _array_feed(model, Xv, yv, wv, loss=loss, batch_size=PREDICT_CHUNK, shuffle=None,
                           shard=_shard(reducer, Xv), name="X_val")
        return StreamHoldout(model, feed)
    return None


def evaluate(model: Any, X: Any, y: Any, sample_weight: Any, loss: Any) -> dict[str, np.ndarray]:
    """Every member's mean loss and metric on streamed input, shape (K,) each
    (:meth:`~mlpx.network.Network.evaluate_members`)."""
    lossfn = model.resolve_loss(loss if loss is not None else model.loss_)
    feed = _feed(model, X, y, sample_weight, loss=lossfn.name, batch_size=PREDICT_CHUNK, count=False)
    with model.compute_context(PREDICT_CHUNK), model.parameter_lock.read():
        scores = StreamHoldout(model, feed).scores(model, LocalReducer(model.backend), lossfn)
    del scores["weight"]
    return scores


def member_outputs(model: Any, X: Any, raw: bool, argmax: bool) -> np.ndarray:
    """Every member's outputs (K, n, n_outputs), or class indices (K, n), of streamed
    input, on the host (:meth:`~mlpx.network.Network.member_outputs`).

    ``X`` is a zarr/HDF5/Dask array or a stream of batches (each X, or a tuple whose
    first item is X; read once, so a generator object works too).
    """
    if is_batch_stream(X):
        feed: Any = _stream_feed(model, X, None, None, loss=None, count=False, targets=False)
    else:
        feed = _array_feed(model, X, None, None, loss=None, batch_size=PREDICT_CHUNK, shuffle=None, shard=None)
    be = model.backend
    K = model.n_members
    parts = []
    with model.compute_context(PREDICT_CHUNK), model.parameter_lock.read(), \
            np.errstate(over="ignore", invalid="ignore"):
        for c in _chunks(model, feed, targets=False):
            Z, P = model.infer_members(be.asarray(c.X, dtype=model.compute_dtype))
            out = be.xp.argmax(Z, axis=-1) if argmax else (Z if raw else P)
            parts.append(np.array(be.to_numpy(out), copy=True))
    if not parts:
        return np.zeros((K, 0) if argmax else (K, 0, model.n_outputs_), dtype=np.int64 if argmax else model.dtype)
    out = np.concatenate(parts, axis=1)
    return out.astype(np.int64) if argmax else out.astype(model.dtype, copy=False)


# ------------------------------------------------------------------ stacks
class MemberFeedBatches:
    """A streamed source for a :class:`~mlpx.stacked.Stack`: every member, the same rows.

    Each minibatch of ``base`` becomes the stack's form of a step: rows that every
    member gathers (``rows_type``, :class:`~mlpx.member_batches.MemberRows`, all members in
    one group so the rows are gathered once), weights of shape (K, rows), and
    per-member rows and denominators of shape (n_steps, K), zero for members the
    stack has frozen (``active``).

    Parameters
    ----------
    base : FeedBatches or UploadedBatches
    active : ndarray of bool, shape (K,)
        The stack's live mask, read at the start of every epoch.
    rows_type : type
        ``rows_type(data, index, groups)``.
    """

    def __init__(self, base: Any, active: np.ndarray, rows_type: Callable[..., Any]) -> None:
        self.base, self.active, self.rows_type = base, active, rows_type
        self.n, self.batch_size, self.w_host = base.n, base.batch_size, base.w_host
        self._index: dict[int, Any] = {}
        self._ones: dict[int, Any] = {}

    @property
    def n_batches(self) -> int:
        n: int = self.base.n_batches
        return n

    def _members(self, per_step: np.ndarray) -> np.ndarray:
        return per_step[:, None] * self.active[None, :].astype(np.float64)

    def step_rows(self, perm: Any) -> np.ndarray:
        """Rows of every step per member, shape (n_batches, K)."""
        return self._members(self.base.step_rows(perm))

    def denominators(self, perm: Any) -> np.ndarray:
        """Each member's loss normaliser per step, shape (n_batches, K)."""
        return self._members(self.base.denominators(perm))

    def epoch(self, perm: Any) -> Iterator[Batch]:
        """One pass: ``Batch(rows of X, rows of Y, w (K, rows), a, b)`` per step."""
        return self._batches(perm)

    def _batches(self, perm: Any) -> Iterator[Batch]:
        be = self.base.be
        xp = be.xp
        K = self.active.size
        groups = np.zeros(K, dtype=np.int64)
        for batch in self.base.epoch(perm):
            m = batch.b - batch.a
            if m not in self._index:
                self._index[m] = be.asarray(np.tile(np.arange(m, dtype=np.int64), (K, 1)))
                self._ones[m] = be.asarray(np.ones((K, m)), dtype=self.base.target_dtype)
            w = self._ones[m] if batch.w is None else xp.reshape(batch.w, (1, m)) * self._ones[m]
            index = self._index[m]
            yield Batch(self.rows_type(batch.X, index, groups), self.rows_type(batch.Y, index), w, batch.a, batch.b)


def stack_source(stack: Any, reducer: Any, X: Any, y: Any, sample_weight: Any, rows: Any, batch_size: int,
                 shuffle: Any, validation_data: Any, validation_split: float, stream_data: bool | None,
                 rng: np.random.Generator, rows_type: Callable[..., Any], loss: str | None
                 ) -> tuple[Any, Callable[[], Any] | None, bool] | None:
    """A :class:`~mlpx.stacked.Stack`'s source for streamed input; None for arrays.

    All members train on the same minibatches in the same order: the stream's, or
    one :class:`BlockShuffle` order per epoch drawn by ``rng`` (the first member's
    shuffle generator).

    Returns
    -------
    (source, order, weighted) or None

    Raises
    ------
    ValueError
        ``rows`` or per-member weights (a ``(K, n)`` ``sample_weight``), which need
        the data in memory; streamed ``validation_data`` (a stack scores held-out
        arrays only).
    """
    if is_batch_stream(validation_data) or (
            isinstance(validation_data, (tuple, list)) and validation_data and is_lazy_array(validation_data[0])):
        raise ValueError("a Stack scores validation_data held in memory: pass arrays (e.g. numpy.asarray of "
                         "the store) or score the members afterwards with stack.member(k).evaluate(...)")
    if y is None and not is_batch_stream(X):
        raise TypeError("y is required with array X (only a stream of (X, y) batches carries its targets)")
    if not is_stream(X) and not isinstance(shuffle, BlockShuffle):
        return None
    if rows is not None or (sample_weight is not None and np.ndim(sample_weight) == 2):
        raise ValueError("per-member rows and weights need the data in memory; a streamed data set trains every "
                         "member on every row")
    # Streamed input (an array X returned above): training_source gives a source and an order.
    base, order = cast("tuple[Any, Callable[[], Any] | None]", training_source(
        stack, reducer, X, y, sample_weight, batch_size, shuffle, validation_split, stream_data, rng, loss))
    if base is None:  # a rank without rows
        return None, None, False
    return MemberFeedBatches(base, stack.active, rows_type), order, base.weighted

