"""Each member's own minibatches and held-out rows, gathered from one data set on the device.

A network's K members may train on different rows of one data set (the bootstrap
samples or folds of a :class:`~mlpx.stacked.Stack`; a single network is one member
whose rows are all of the data set). The data set goes to the device once;

* :class:`MemberBatches` lays out an epoch as one ``(S, K, b)`` array of row
  indices and weights (each member in its own order, padded with rows of weight 0),
  and hands the step :class:`MemberRows`: the indices, which the network's threads
  gather each for their own members as the step computes;
* :class:`MemberHoldout` scores every member on its own held-out rows.
"""

from __future__ import annotations

from typing import Any, Iterator, NamedTuple

import numpy as np

from mlpx.data import Batch, check_batch_size, dtype_name, numpy_dtype, to_host
from mlpx.metrics import holdout_scores

__all__ = ["MemberBatches", "MemberHoldout", "MemberRows", "SharedRows"]

Array = Any


class MemberBatches:
    """Each member's own minibatches, gathered from one data set on the device.

    The source of every resident training set: a single network is one member whose
    rows are all of the data set.

    Parameters
    ----------
    be : Backend
    X : array, shape (N, f)
        Host array (moved once) or an array of ``be``.
    Y : array, shape (N, c)
        Encoded targets.
    w : array, shape (N,), or None
        Sample weights of the rows (None: 1).
    rows : sequence of K integer arrays
        Member ``k`` trains on rows ``rows[k]`` of ``X`` (each non-empty).
    batch_size : int
        Rows per member and step; a member with fewer rows takes them all.
    dtype : str
        Device dtype of X.
    target_dtype : str, optional
        Device dtype of Y and w (default ``dtype``).

    Notes
    -----
    An epoch's order (the ``perm`` of :meth:`epoch`) is a list of K entries: a
    permutation of ``range(len(rows[k]))``, None for the rows in order, or an empty
    array for a member that sits the epoch out (frozen); a single array is the order
    of a single member. Step ``j`` of member ``k`` holds its rows ``j·b .. (j+1)·b`` of
    the order. A step is as wide as the member with the most rows left needs (the
    last step of a single network is its remainder); members with fewer rows fill
    their places with a row of weight 0.
    """

    def __init__(self, be: Any, X: Any, Y: Any, w: Any, rows: Any, batch_size: int, dtype: str,
                 *, target_dtype: str | None = None) -> None:
        self.be = be
        rows = [np.asarray(r) for r in rows]
        if not rows:
            raise ValueError("MemberBatches needs the rows of at least one member")
        N = int(X.shape[0])
        for k, r in enumerate(rows):
            if r.ndim != 1 or r.dtype.kind not in "iu" or r.size == 0:
                raise ValueError(f"rows[{k}] must be a non-empty 1-D integer array, got {r.dtype} of shape {r.shape}")
            if r.min() < 0 or r.max() >= N:
                raise ValueError(f"rows[{k}] has indices outside 0..{N - 1}")
        if int(Y.shape[0]) != N or (w is not None and tuple(np.shape(w)) != (N,)):
            raise ValueError(f"X, Y and w must have the same rows: {tuple(X.shape)}, {tuple(Y.shape)}, "
                             f"{None if w is None else tuple(np.shape(w))}")
        self.rows = rows
        self.n_members = len(rows)
        self.sizes = np.array([r.size for r in rows])
        self.batch_size = min(check_batch_size(batch_size), int(self.sizes.max()))
        self.n_batches = int(-(-self.sizes.max() // self.batch_size))
        self.n = int(self.sizes.max())
        self.w_host = None if w is None else np.asarray(to_host(w), dtype=np.float64)
        tdt = target_dtype or dtype
        self.X = be.asarray(X, dtype=dtype)
        self.Y = be.asarray(Y, dtype=tdt)
        self.dtype, self.target_dtype = dtype_name(dtype), dtype_name(tdt)
        self._cache: tuple[Any, np.ndarray, np.ndarray] | None = None
        self._gid: np.ndarray | None = None
        self._real_memo: tuple[Any, np.ndarray, int] | None = None
        self._sizes_memo: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}
        whole = np.arange(N)
        # One member over the whole data set in order: its steps are slices, not gathers.
        self._contiguous = self.n_members == 1 and rows[0].size == N and bool((rows[0] == whole).all())

    def _orders(self, perm: Any) -> list[Any]:
        K = self.n_members
        if perm is None:
            return [None] * K
        if K == 1 and not isinstance(perm, (list, tuple)):
            return [perm]
        orders = list(perm)
        if len(orders) != K:
            raise ValueError(f"the order has {len(orders)} entries for {K} members")
        return orders

    def _layout(self, perm: Any) -> tuple[np.ndarray, np.ndarray]:
        """Row index (K, S·b) and weight (K, S·b) of every place of the epoch (host)."""
        if self._cache is not None and self._cache[0] is perm:
            return self._cache[1], self._cache[2]
        given = perm
        K, L = self.n_members, self.n_batches * self.batch_size
        idx = np.zeros((K, L), dtype=np.int64)
        wts = np.zeros((K, L))
        for k, (r, p) in enumerate(zip(self.rows, self._orders(perm))):
            if p is not None and len(p) == 0:
                idx[k] = r[0]
                continue  # frozen: every place is padding
            order = r if p is None else r[_check_member_perm(p, r.size, k)]
            n = order.size
            idx[k, :n] = order
            idx[k, n:] = order[0]
            wts[k, :n] = 1.0 if self.w_host is None else self.w_host[order]
        # Members with the same rows in the same order (a fold and a seed shared by
        # several candidates) share one gather of X per step (MemberRows.shared).
        labels: dict[bytes, int] = {}
        self._gid = np.array([labels.setdefault(row.tobytes(), len(labels)) for row in idx])
        self._cache = (given, idx, wts)
        return idx, wts

    def _real(self, perm: Any) -> np.ndarray:
        """Each member's rows in the epoch of order ``perm`` (0: it sits the epoch out), (K,)."""
        memo = self._real_memo
        if memo is not None and memo[0] is perm:
            return memo[1]
        real = np.array([0 if (p is not None and len(p) == 0) else n for n, p in zip(self.sizes, self._orders(perm))])
        self._real_memo = (perm, real, int(real.min()))
        return real

    def _fewest(self, perm: Any) -> int:
        self._real(perm)
        assert self._real_memo is not None
        return self._real_memo[2]

    def widths(self, perm: Any) -> np.ndarray:
        """The rows of every step (the most any member has left, at most the batch size),
        shape (n_batches,).

        A step is at least 2 rows wide when the batch is: a product with one row goes
        to other BLAS routines than NumPy's matrix product, and the compiled step
        (:mod:`mlpx.member_step`) must give the bits of the phase-by-phase one.
        """
        widths: np.ndarray = self._sizes(perm)[0].copy()  # typed: NumPy's stubs give Any here
        return widths

    def step_rows(self, perm: Any) -> np.ndarray:
        """Rows of every step per member, shape (n_batches, K)."""
        rows: np.ndarray = self._sizes(perm)[1].copy()  # typed: NumPy's stubs give Any here
        return rows

    def _sizes(self, perm: Any) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`widths` and :meth:`step_rows`, kept for the members' row counts (the
        same every epoch but for members that sit one out)."""
        real = self._real(perm)
        key = real.tobytes()
        got = self._sizes_memo.get(key)
        if got is None:
            b = self.batch_size
            starts = b * np.arange(self.n_batches)
            widths = np.clip(real.max() - starts, min(2, b), b).astype(np.int64)
            rows = np.clip(real[None, :] - starts[:, None], 0, b).astype(np.float64)
            if len(self._sizes_memo) > 8:
                self._sizes_memo.clear()
            got = self._sizes_memo[key] = (widths, rows)
        return got

    def denominators(self, perm: Any) -> np.ndarray:
        """Each member's loss normaliser per step (rows, or Σ w), shape (n_batches, K)."""
        K, S, b = self.n_members, self.n_batches, self.batch_size
        if self.w_host is None:
            return self.step_rows(perm)
        _, wts = self._layout(perm)
        sums: np.ndarray = wts.reshape(K, S, b).sum(axis=2).T
        return sums

    def epoch(self, perm: Any) -> Iterator[Batch]:
        """One pass: ``Batch(X, Y, w (K, width), a, b)`` per step.

        ``X`` and ``Y`` are :class:`MemberRows` (each member's rows of the data set,
        gathered as the network computes: ``X.take(be, slice(None))`` is the
        (K, width, f) minibatch).
        """
        index, w = self.epoch_arrays(perm)
        widths = self.widths(perm)
        for j in range(self.n_batches):
            yield self.batch(index, w, j, widths)

    def batch(self, index: Array, w: Array, j: int, widths: np.ndarray | None = None) -> Batch:
        """Step ``j`` of the epoch whose :meth:`epoch_arrays` are ``index``, ``w``.

        ``w`` is None (unit weights) for a step without sample weights and without
        padding: the losses and counts then skip the multiplication.
        """
        b = self.batch_size
        m = b if widths is None else int(widths[j])
        sel = index[j, :, :m]
        given = self._cache[0] if self._cache is not None else None
        # In order and without padding rows (a last step of one row is two wide): a slice.
        span = (j * b, j * b + m) if self._contiguous and given is None and j * b + m <= self.n else None
        unit = self.w_host is None and self._fewest(given) - j * b >= m  # no padding row in the step
        return Batch(MemberRows(self.X, sel, self.groups, span), MemberRows(self.Y, sel, span=span),
                     None if unit else w[j, :, :m], j * b, j * b + m)

    def epoch_arrays(self, perm: Any) -> tuple[Array, Array]:
        """The whole epoch's row indices and weights on the device, in one transfer each.

        Returns
        -------
        index : array of int64, shape (n_batches, K, b)
            Step ``j`` of member ``k`` takes rows ``index[j, k]`` of the data set.
        w : array, shape (n_batches, K, b)
            Their weights (0: padding), in ``target_dtype``.
        """
        idx, wts = self._layout(perm)
        K, S, b = self.n_members, self.n_batches, self.batch_size
        index = self.be.asarray(np.ascontiguousarray(idx.reshape(K, S, b).transpose(1, 0, 2)))
        w = self.be.asarray(np.ascontiguousarray(wts.reshape(K, S, b).transpose(1, 0, 2)), dtype=self.target_dtype)
        return index, w

    @property
    def groups(self) -> np.ndarray | None:
        """Labels of the last epoch's orders: members with one label take the same rows."""
        return self._gid

    @property
    def w(self) -> Any:
        """The rows' sample weights on the host (None: 1)."""
        return self.w_host


class MemberRows:
    """A step's rows of a device data set, one row of indices per member, gathered lazily.

    The network's threads gather each their own members' rows (:meth:`take`), so the
    gather runs in parallel with no copy of the whole minibatch first.

    Parameters
    ----------
    data : array, shape (N, f)
    index : array of int, shape (K, b), on the device
    groups : ndarray of int, shape (K,), optional
        Host labels: members with one label have the same rows (:meth:`shared`).
    span : (int, int), optional
        The rows are ``data[a:b]`` in order (one member): taken as a view.
    """

    def __init__(self, data: Array, index: Array, groups: np.ndarray | None = None,
                 span: tuple[int, int] | None = None) -> None:
        self.data, self.index, self.groups, self.span = data, index, groups, span
        K, b = index.shape
        self.shape = (int(K), int(b), int(data.shape[1]))

    def shared(self, be: Any, rows: slice, ws: dict[Any, Array] | None = None) -> "SharedRows | None":
        """Runs of consecutive members ``rows`` with the same rows, one gathered (b, f)
        block each; None when no two neighbours share (then :meth:`take`)."""
        if self.groups is None or self.span is not None or self.shape[0] == 1:
            return None
        g = self.groups[rows]
        starts = [0] + [i for i in range(1, g.size) if g[i] != g[i - 1]]
        if len(starts) == g.size:
            return None
        base = 0 if rows.start is None else rows.start
        bounds = list(zip(starts, starts[1:] + [g.size]))
        blocks = []
        for n, (lo, _) in enumerate(bounds):
            out = None
            if ws is not None and "numpy" in be.kinds:
                key = ("shared", n, self.shape[1])
                out = ws.get(key)
                if out is None:
                    out = ws[key] = be.empty((self.shape[1], self.shape[2]), numpy_dtype(self.data.dtype).name)
            blocks.append(be.take_rows(self.data, self.index[base + lo, :], out=out))
        return SharedRows(bounds, blocks, (g.size, self.shape[1], self.shape[2]))

    def take(self, be: Any, rows: slice, ws: dict[Any, Array] | None = None, tag: str = "X") -> Array:
        """The rows of the members ``rows``: an array of shape (k, b, f)."""
        f = self.shape[2]
        if self.span is not None:
            a, b = self.span
            return be.xp.reshape(self.data[a:b, :], (1, b - a, f))
        idx = self.index if rows.start is None and rows.stop is None else self.index[rows, :]
        k, b = idx.shape[0], idx.shape[1]
        if ws is not None and type(idx) is np.ndarray:  # NumPy: gather into a kept buffer
            out = ws.get((tag, k, b))
            if out is None:
                out = ws[(tag, k, b)] = np.empty((k * b, f), self.data.dtype)
            return be.take_rows(self.data, idx.reshape(k * b), out=out).reshape(k, b, f)
        xp = be.xp
        out = None
        if ws is not None and "numpy" in be.kinds:
            out = ws.get((tag, k, b))
            if out is None:
                out = ws[(tag, k, b)] = be.empty((k * b, f), numpy_dtype(self.data.dtype).name)
        got = be.take_rows(self.data, xp.reshape(idx, (k * b,)), out=out)
        return xp.reshape(got, (k, b, f))


class SharedRows(NamedTuple):
    """A chunk's input as runs of members ``lo:hi`` that all see the rows ``X`` (b, f)."""

    runs: list[tuple[int, int]]
    X: list[Array]
    shape: tuple[int, int, int]


def _check_member_perm(p: Any, n: int, k: int) -> np.ndarray:
    order = np.asarray(p)
    if order.shape != (n,) or order.dtype.kind not in "iu":
        raise ValueError(f"member {k}'s order must be integer indices of shape ({n},), got {order.dtype} {order.shape}")
    return order


class MemberHoldout:
    """Each member's own held-out rows of one data set on the device, in chunks for
    :func:`mlpx.metrics.holdout_scores` (scored after every epoch of a stack).

    Parameters
    ----------
    be : Backend
    X, Y, w : arrays, shapes (N, f), (N, c), (N,) or None
        The data set (host arrays, or arrays of ``be``: a stack's training data on
        the device is shared, not copied).
    rows : sequence of K integer arrays or None
        Member ``k``'s held-out rows; None (or empty) for a member without any
        (its scores are NaN).
    dtype, target_dtype : str
    chunk : int
        Rows over all members per pass.
    """

    def __init__(self, be: Any, X: Any, Y: Any, w: Any, rows: Any, dtype: str, target_dtype: str | None = None,
                 chunk: int = 8192) -> None:
        self.be = be
        K = len(rows)
        rows = [np.zeros(0, np.int64) if r is None else np.asarray(r, dtype=np.int64) for r in rows]
        V = max(1, max(r.size for r in rows))
        idx = np.zeros((K, V), dtype=np.int64)
        valid = np.zeros((K, V))
        wh = None if w is None else np.asarray(to_host(w), dtype=np.float64)
        wts = np.zeros((K, V))
        for k, r in enumerate(rows):
            idx[k, : r.size] = r
            valid[k, : r.size] = 1.0
            wts[k, : r.size] = 1.0 if wh is None else wh[r]
        tdt = target_dtype or dtype
        self.n_members, self.width = K, V
        self.step = max(1, chunk // K)
        self.X = be.asarray(X, dtype=dtype)
        self.Y = be.asarray(Y, dtype=tdt)
        self.idx = idx
        self.valid = be.asarray(valid, dtype=tdt)
        self.w = be.asarray(wts, dtype=tdt)

    def chunks(self) -> Iterator[tuple[Array, Array, Array, Array]]:
        """``(X (K, m, f), Y (K, m, c), w (K, m), valid (K, m))`` per chunk of places."""
        be, xp = self.be, self.be.xp
        K = self.n_members
        for a in range(0, self.width, self.step):
            b = min(self.width, a + self.step)
            sel = be.asarray(self.idx[:, a:b].reshape(-1))
            Xc = xp.reshape(be.take_rows(self.X, sel), (K, b - a, int(self.X.shape[1])))
            Yc = xp.reshape(be.take_rows(self.Y, sel), (K, b - a, int(self.Y.shape[1])))
            yield Xc, Yc, self.w[:, a:b], self.valid[:, a:b]

    def scores(self, model: Any, reducer: Any, loss: Any) -> dict[str, np.ndarray]:
        """:func:`~mlpx.metrics.holdout_scores` of every member on its own rows."""
        return holdout_scores(model, self.chunks, reducer, loss)
