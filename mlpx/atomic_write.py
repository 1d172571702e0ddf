"""Atomic file writes: readers see the old file or the new one, never a partial one.

Every file mlpx writes (model files, checkpoints, ONNX exports) goes through
:func:`write_atomically`:

* the data is written to ``.<name>.mlpx-tmp-<pid>-<random>`` in the target's
  folder, flushed to disk, and renamed over the target;
* any exception (KeyboardInterrupt included) removes the temporary file, and
  temporaries of the same target left by processes that no longer run (killed
  mid-write) are removed first (POSIX only, where the process table can be asked);
* an existing target keeps its permission bits (and, where allowed, its owner and
  group); a new one gets the usual ``0o666 & ~umask`` (not ``mkstemp``'s private
  ``0o600``, so that a serving process running as another user can read it);
* a symbolic link is written through: its target is replaced, the link stays.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path
from typing import BinaryIO, Callable

__all__ = ["TMP_MARK", "write_atomically"]

#: Part of every temporary file's name: ``.<name>.mlpx-tmp-<pid>-<random>``.
TMP_MARK = ".mlpx-tmp-"


def write_atomically(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> None:
    """Write a file atomically through ``write(fh)`` (see the module docstring).

    Parameters
    ----------
    path : str or path-like
        The file to create or replace; a symbolic link is followed. Missing folders
        are created.
    write : callable
        Called once with the temporary file, opened for binary writing; it writes
        the whole content (``fh.write(data)``, ``np.savez(fh, ...)``). What it
        returns is ignored.

    Raises
    ------
    OSError
        From the file system; the temporary file is removed and the target is as
        it was.
    """
    target = Path(os.path.realpath(path))
    folder = target.parent
    folder.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(folder, target.name)
    try:
        old = os.stat(target)
    except FileNotFoundError:
        old = None
    tmp = folder / f".{target.name}{TMP_MARK}{os.getpid()}-{secrets.token_hex(6)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            if old is not None and stat.S_ISREG(old.st_mode):
                _copy_mode(fh.fileno(), tmp, old)
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_folder(folder)


def _copy_mode(fd: int, tmp: Path, old: os.stat_result) -> None:
    """Give the new file the old one's permission bits (and owner, where allowed)."""
    new = os.fstat(fd)
    if hasattr(os, "fchown") and (old.st_uid, old.st_gid) != (new.st_uid, new.st_gid):
        with contextlib.suppress(PermissionError):
            os.fchown(fd, old.st_uid, old.st_gid)
    if hasattr(os, "fchmod"):
        os.fchmod(fd, stat.S_IMODE(old.st_mode))
    else:  # pragma: no cover - Windows
        os.chmod(tmp, stat.S_IMODE(old.st_mode))


def _remove_stale_temporaries(folder: Path, name: str) -> None:
    """Delete ``.<name>.mlpx-tmp-<pid>-*`` files whose process no longer runs."""
    if os.name != "posix":  # pragma: no cover - os.kill(pid, 0) terminates on Windows
        return
    prefix = f".{name}{TMP_MARK}"
    try:
        entries = os.listdir(folder)
    except OSError:
        return
    for entry in entries:
        if not entry.startswith(prefix):
            continue
        pid_text, _, token = entry[len(prefix):].partition("-")
        if not (pid_text.isdigit() and token) or int(pid_text) == os.getpid():
            continue
        if not _process_alive(int(pid_text)):
            with contextlib.suppress(FileNotFoundError, PermissionError):
                os.unlink(folder / entry)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    except (OverflowError, ValueError):
        return False
    return True


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX; best effort)."""
    if os.name != "posix":  # pragma: no cover
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
