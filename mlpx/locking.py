"""Locks around a model: shared reads of its parameters, and one trainer at a time.

:class:`ReadWriteLock`: a model's parameters are read by every inference call
(``predict``, ``evaluate``, ``score``, in any number of threads) and written by a
training step's update, by ``set_weights`` and by checkpoint or early-stopping
restores. Readers share the lock; a writer waits until the readers in flight finish
and holds new readers back meanwhile (writer preference, so a stream of predictions
cannot starve training). A prediction therefore sees one consistent set of weights,
from between two updates.

:class:`TrainingGuard`: training is not shared. Two threads training one model at
once would interleave their steps on the same weights, gradients and optimizer
state (a matmul on another thread's half-written workspace, or weights that differ
from either serial order). So a model admits one training thread: ``fit``,
``partial_fit`` and ``train_step`` called from a second thread while the first is
still inside one of them raise :class:`ConcurrentTrainingError` at once, instead
of waiting (a wait would only serialise two runs the caller thought were
independent). The training thread itself may re-enter (``fit`` runs its steps
through ``train_step``, a callback may train further). :func:`exclusive_training`
takes the guard around a method or function whose first argument is the model.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from typing import Any, Callable, Iterator, TypeVar, cast

__all__ = ["ConcurrentTrainingError", "ReadWriteLock", "TrainingGuard", "exclusive_training", "training_guard"]

F = TypeVar("F", bound=Callable[..., Any])


class ReadWriteLock:
    """Shared reads, exclusive writes; re-entrant.

    A reading thread may read again (nested calls), and the thread holding the
    write lock may also read (a callback predicting inside ``fit``); a reading
    thread must not ask to write (that would wait for itself): it raises instead.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._local = threading.local()  # this thread's read depth
        self._readers = 0
        self._writer: int | None = None
        self._writes = 0  # the writer's re-entry depth
        self._waiting_writers = 0

    @contextlib.contextmanager
    def read(self) -> Iterator[None]:
        """Hold the lock for reading (shared)."""
        me = threading.get_ident()
        depth = getattr(self._local, "depth", 0)
        with self._cond:
            if self._writer == me:  # the writer reads its own weights
                self._writes += 1
                nested = "write"
            elif depth:  # already reading: never wait behind a writer for oneself
                nested = "read"
            else:
                while self._writer is not None or self._waiting_writers:
                    self._cond.wait()
                self._readers += 1
                nested = ""
        self._local.depth = depth + 1
        try:
            yield
        finally:
            self._local.depth = depth
            with self._cond:
                if nested == "write":
                    self._writes -= 1
                elif not nested:
                    self._readers -= 1
                    if self._readers == 0:
                        self._cond.notify_all()

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        """Hold the lock for writing (exclusive)."""
        me = threading.get_ident()
        if getattr(self._local, "depth", 0) and self._writer != me:
            raise RuntimeError("a thread that is reading the parameters cannot write them")
        with self._cond:
            if self._writer == me:
                self._writes += 1
            else:
                self._waiting_writers += 1
                try:
                    while self._writer is not None or self._readers:
                        self._cond.wait()
                finally:
                    self._waiting_writers -= 1
                self._writer, self._writes = me, 1
        try:
            yield
        finally:
            with self._cond:
                self._writes -= 1
                if self._writes == 0:
                    self._writer = None
                    self._cond.notify_all()


class ConcurrentTrainingError(RuntimeError):
    """A model (or estimator) was asked to train while another thread trains it.

    Raised at once in the second caller; the first goes on undisturbed. Train
    copies in parallel instead (``model.to(model.backend)``, ``sklearn.base.clone``),
    or a :class:`~mlpx.stacked.Stack` of them.
    """


class TrainingGuard:
    """One training thread per object; the others are refused, not made to wait.

    Also lets readers of what a trainer changes (an estimator's ``predict``) stay
    consistent: :meth:`serving` gives a reader in another thread the trainer's
    ``previous`` object (the state before training began), and a trainer starting
    waits for the readers already in flight on the object itself.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # taken directly (C speed) unless a reader is waited for
        self._cond = threading.Condition(self._lock)
        self._owner: int | None = None
        self._depth = 0
        self._what = ""
        self._previous: Any = None
        self._readers = 0

    def enter(self, what: str, previous: Any = None) -> None:
        """Become the training thread (or re-enter as it).

        Parameters
        ----------
        what : str
            The call, for the message another thread gets (``"MLPClassifier.fit"``).
        previous : object, optional
            What :meth:`serving` hands other threads until :meth:`exit`; ignored
            on re-entry.

        Raises
        ------
        ConcurrentTrainingError
            Another thread is training.
        """
        me = threading.get_ident()
        if self._owner == me:  # re-entry (fit's own steps): only this thread changes the depth now
            self._depth += 1
            return
        with self._lock:
            if self._owner is not None and self._owner != me:
                raise ConcurrentTrainingError(
                    f"{what} was called while another thread is training the same object "
                    f"(in {self._what}); one object trains in one thread at a time: wait for "
                    f"that call to return, or train a copy"
                )
            self._depth += 1
            if self._depth == 1:
                self._owner, self._what, self._previous = me, what, previous
                while self._readers:  # readers of the object itself finish first
                    self._cond.wait()

    def exit(self) -> None:
        """Leave the training call entered last."""
        if self._depth > 1:  # still inside the outer call: the guard stays this thread's
            self._depth -= 1
            return
        with self._lock:
            self._depth -= 1
            if self._depth == 0:
                self._owner, self._what, self._previous = None, "", None

    def busy_elsewhere(self) -> bool:
        """Whether a thread other than this one is training."""
        owner = self._owner
        return owner is not None and owner != threading.get_ident()

    @contextlib.contextmanager
    def serving(self) -> Iterator[tuple[bool, Any]]:
        """Read consistently: ``(False, None)`` to read the object itself, or
        ``(True, previous)`` while another thread trains it.

        A reader of the object itself holds back a trainer that starts meanwhile
        until it is done, so it never sees a training call's first changes.
        """
        me = threading.get_ident()
        with self._lock:
            elsewhere = self._owner is not None and self._owner != me
            previous = self._previous
            if not elsewhere:
                self._readers += 1
        try:
            yield elsewhere, previous
        finally:
            if not elsewhere:
                with self._lock:
                    self._readers -= 1
                    if not self._readers:
                        self._cond.notify_all()


_GUARDS = threading.Lock()


def training_guard(obj: Any) -> TrainingGuard:
    """The :class:`TrainingGuard` of ``obj``, made on first use (kept in its ``__dict__``
    as ``_training_guard``; classes that pickle their ``__dict__`` leave it out)."""
    guard: TrainingGuard | None = obj.__dict__.get("_training_guard")
    if guard is None:
        with _GUARDS:
            guard = cast(TrainingGuard, obj.__dict__.setdefault("_training_guard", TrainingGuard()))
    return guard


def exclusive_training(fn: F) -> F:
    """Decorate a training method or function (first argument: the model) with the
    model's :class:`TrainingGuard`: a second thread's call raises
    :class:`ConcurrentTrainingError` while the first runs."""
    name = fn.__name__

    @functools.wraps(fn)
    def guarded(model: Any, *args: Any, **kwargs: Any) -> Any:
        guard = training_guard(model)
        guard.enter(f"{type(model).__name__}.{name}")
        try:
            return fn(model, *args, **kwargs)
        finally:
            guard.exit()

    return cast(F, guarded)
