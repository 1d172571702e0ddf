"""A readers-writer lock: many predictions at once, or one parameter update.

A model's parameters are read by every inference call (``predict``, ``evaluate``,
``score``, in any number of threads) and written by a training step's update, by
``set_weights`` and by checkpoint or early-stopping restores. Readers share the
lock; a writer waits until the readers in flight finish and holds new readers back
meanwhile (writer preference, so a stream of predictions cannot starve training).
A prediction therefore sees one consistent set of weights, from between two updates.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator

__all__ = ["ReadWriteLock"]


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
