"""Bounded reading of ``.npz`` archives that may have been crafted by an attacker.

:class:`Archive` opens a file for :mod:`mlpx.saving` and reads the ``.npy`` entries it
is asked for, trusting nothing the file says about itself. What a file can make the
reader allocate is bounded by what the caller expects, never by the file:

* Only regular files are opened. ``/dev/zero``, ``/dev/urandom``, a FIFO (opened
  without blocking), a socket or a directory is refused before a byte is read.
* The zip structure is checked before :mod:`zipfile` reads it: the file starts with
  a local-header signature, its end-of-central-directory record (and the ZIP64 one
  where used) lies inside the file, and the central directory it points at is
  inside the file and at most :data:`MAX_DIRECTORY_BYTES`.
* An entry's ``.npy`` header is read first and its dtype and shape are compared
  with what the caller expects (:meth:`Archive.read_array`), so an entry can never
  be larger than that; its sizes must agree with the zip record, and a deflated
  entry cannot claim more than deflate's maximal ratio from the compressed bytes
  present.
* The data is decompressed in chunks of at most :data:`CHUNK_BYTES` straight into
  the destination array (no intermediate copy), stops at the expected size, checks
  every chunk for NaN and infinity, and verifies the entry's CRC.
* Entries nobody asks for are never decompressed.

Every defect raises :class:`ModelFileError` naming the file and the defect.
"""

from __future__ import annotations

import contextlib
import math
import os
import stat
import struct
import tokenize
import zipfile
import zlib
from pathlib import Path
from typing import Any, Iterator

import numpy as np

__all__ = ["Archive", "CHUNK_BYTES", "MAX_DIRECTORY_BYTES", "ModelFileError", "resolve_path"]

#: Decompression and copy granularity: the most a read allocates besides its result.
CHUNK_BYTES = 1 << 20
#: Largest central directory accepted (an mlpx file has a handful of entries).
MAX_DIRECTORY_BYTES = 1 << 16
# Deflate cannot expand data by more than about 1032:1; a header that claims more
# than that from the compressed bytes present is a lie, refused before allocating.
_DEFLATE_RATIO = 1100
_LOCAL_MAGIC = b"PK\x03\x04"
_EOCD = struct.Struct("<4s4H2LH")  # end of central directory, 22 bytes
_EOCD_MAGIC = b"PK\x05\x06"
_ZIP64_LOCATOR = struct.Struct("<4sLQL")  # 20 bytes, just before the EOCD
_ZIP64_LOCATOR_MAGIC = b"PK\x06\x07"
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")  # 56 bytes
_ZIP64_EOCD_MAGIC = b"PK\x06\x06"
_MAX_COMMENT = 0xFFFF
# What the zip, zlib and .npy readers raise on bad input (NumPy's header parser lets a
# tokenizer error through for headers it takes for Python 2 ones).
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, struct.error, EOFError, OSError,
               NotImplementedError, RuntimeError, ValueError, UnicodeError, OverflowError, SyntaxError,
               tokenize.TokenError)


class ModelFileError(ValueError):
    """A model file or record that mlpx cannot read.

    Raised for every defect of the file itself: not a regular file (a device, a
    FIFO, a directory), not an ``.npz`` archive (or a ``.npy`` given for one),
    damaged or truncated, a config that is not a JSON object, missing or unknown
    keys, a bad layer record (unknown type or activation, a width that is not a
    positive integer, widths that do not chain), an unsupported dtype, parameters
    that are not a real float array of the record's dtype and exact length or are
    not finite, a network above the parameter cap, an entry that would expand past
    what the record declares, a checkpoint that lacks part of its optimizer's
    state, or a format version newer than this mlpx reads. The message names the
    file and the defect.
    """


def resolve_path(path: str | os.PathLike[str]) -> Path:
    """``path``, or ``path + ".npz"`` when only that exists (what ``save(path)`` wrote).

    ``save("model")`` writes ``model.npz``; loading ``"model"`` finds it. A path
    that exists as given is always taken as given.
    """
    path = Path(path)
    if path.suffix != ".npz" and not os.path.lexists(path):
        with_suffix = path.with_name(path.name + ".npz")
        if os.path.lexists(with_suffix):
            return with_suffix
    return path


def _open_regular(path: Path, where: str) -> Any:
    """A binary file object of ``path``, which must be a regular file."""
    # O_NONBLOCK: opening a FIFO with no writer would otherwise wait for one.
    flags = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except IsADirectoryError:
        raise ModelFileError(f"{where} is a directory, not an mlpx model file") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            what = ("a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
                    else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                    else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
            raise ModelFileError(f"{where} is {what}, not an mlpx model file (a regular .npz file)")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _directory_bounds(fh: Any, size: int, where: str) -> None:
    """Check the end-of-central-directory records before :mod:`zipfile` trusts them."""
    if size < _EOCD.size + len(_LOCAL_MAGIC):
        raise ModelFileError(f"{where} is not a readable mlpx model file: too short ({size} bytes)")
    fh.seek(0)
    head = fh.read(6)
    if head.startswith(b"\x93NUMPY"):
        raise ModelFileError(f"{where} is a .npy file (one array), not an mlpx model file (.npz archive)")
    if not head.startswith(_LOCAL_MAGIC):
        raise ModelFileError(f"{where} is not a readable mlpx model file: not a zip (.npz) archive")
    tail_len = min(size, _EOCD.size + _MAX_COMMENT)
    fh.seek(size - tail_len)
    tail = fh.read(tail_len)
    at = tail.rfind(_EOCD_MAGIC)
    while at >= 0 and at + _EOCD.size <= len(tail):
        fields = _EOCD.unpack_from(tail, at)
        if at + _EOCD.size + fields[7] == len(tail):  # its comment ends the file
            break
        at = tail.rfind(_EOCD_MAGIC, 0, at)
    else:
        raise ModelFileError(f"{where} is not a readable mlpx model file: no end of the zip directory "
                             f"(truncated or not an .npz archive)")
    eocd_offset = size - tail_len + at
    _, _, _, _, entries, cd_size, cd_offset, _ = fields
    if 0xFFFF in (entries,) or 0xFFFFFFFF in (cd_size, cd_offset):
        loc_at = eocd_offset - _ZIP64_LOCATOR.size
        if loc_at < 0:
            raise ModelFileError(f"{where}: damaged zip directory (ZIP64 locator missing)")
        fh.seek(loc_at)
        magic, _, z64_offset, _ = _ZIP64_LOCATOR.unpack(fh.read(_ZIP64_LOCATOR.size))
        if magic != _ZIP64_LOCATOR_MAGIC or z64_offset + _ZIP64_EOCD.size > loc_at:
            raise ModelFileError(f"{where}: damaged zip directory (bad ZIP64 locator)")
        fh.seek(z64_offset)
        record = _ZIP64_EOCD.unpack(fh.read(_ZIP64_EOCD.size))
        if record[0] != _ZIP64_EOCD_MAGIC:
            raise ModelFileError(f"{where}: damaged zip directory (bad ZIP64 record)")
        cd_size, cd_offset = record[8], record[9]
        eocd_offset = z64_offset
    if cd_size > MAX_DIRECTORY_BYTES:
        raise ModelFileError(f"{where}: the zip directory claims {cd_size} bytes; an mlpx file has a "
                             f"few entries (at most {MAX_DIRECTORY_BYTES} bytes of directory)")
    if cd_offset + cd_size > eocd_offset:
        raise ModelFileError(f"{where}: the zip directory lies outside the file (truncated or damaged)")
    fh.seek(0)


class Archive:
    """An ``.npz`` file opened for bounded reading; use as a context manager.

    Parameters
    ----------
    path : str or path
        Resolved by :func:`resolve_path`.
    max_entries : int, default 16
        More entries than this is not an mlpx file.

    Attributes
    ----------
    path : Path
        The file actually opened.
    where : str
        How messages name it.
    names : list of str
        Entry names without the ``.npy`` suffix, sorted (every entry must be a
        ``.npy`` and appear once).

    Raises
    ------
    FileNotFoundError, PermissionError
        The file cannot be opened.
    ModelFileError
        Anything else (see the module docstring).
    """

    def __init__(self, path: str | os.PathLike[str], *, max_entries: int = 16) -> None:
        self.path = resolve_path(path)
        self.where = str(self.path)
        self._fh = _open_regular(self.path, self.where)
        try:
            self._size = os.fstat(self._fh.fileno()).st_size
            with self._errors():
                _directory_bounds(self._fh, self._size, self.where)
                self._zf = zipfile.ZipFile(self._fh)
            entries: dict[str, zipfile.ZipInfo] = {}
            for info in self._zf.infolist():
                if info.filename in entries:
                    raise ModelFileError(f"{self.where}: the entry {info.filename!r} appears twice")
                if not info.filename.endswith(".npy"):
                    raise ModelFileError(f"{self.where} is not an mlpx model file: unexpected entry {info.filename!r}")
                entries[info.filename] = info
            if len(entries) > max_entries:
                raise ModelFileError(f"{self.where} is not an mlpx model file: {len(entries)} entries")
            self._entries = {name[:-4]: info for name, info in entries.items()}
            self.names = sorted(self._entries)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "Archive":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        zf = getattr(self, "_zf", None)
        if zf is not None:
            zf.close()
        self._fh.close()

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn what zipfile, zlib and the .npy parser raise into ModelFileError."""
        try:
            yield
        except (FileNotFoundError, PermissionError, ModelFileError):
            raise
        except _ZIP_ERRORS as exc:
            raise ModelFileError(
                f"{self.where} is not a readable mlpx model file (damaged, truncated or not an "
                f".npz archive): {type(exc).__name__}: {exc}"
            ) from None

    def read_text(self, key: str, max_chars: int) -> str:
        """Entry ``key``: a 0-d unicode array of at most ``max_chars`` characters, as a str."""
        with self._errors(), self._open(key) as (fp, dtype, shape, header, info):
            if dtype.kind != "U" or shape != ():
                raise ModelFileError(
                    f"{self.where}: {key!r} must be JSON text (a 0-d unicode array), got dtype {dtype} shape {shape}"
                )
            if dtype.itemsize > 4 * max_chars:
                raise ModelFileError(f"{self.where}: {key!r} is implausibly large ({dtype.itemsize} bytes; "
                                     f"at most {max_chars} characters)")
            need = dtype.itemsize
            self._check_sizes(key, info, header, need)
            data = fp.read(need)
            if len(data) != need:
                raise ModelFileError(f"{self.where}: entry {key!r} is truncated ({len(data)} of {need} bytes)")
        codec = "utf-32-be" if dtype.byteorder == ">" else "utf-32-le"
        text: str = data.decode(codec).rstrip("\x00")
        return text

    def check_array(self, key: str, shape: tuple[int, ...], dtype: Any) -> None:
        """Check entry ``key``'s header and sizes against ``shape`` and ``dtype``; read no data."""
        with self._errors(), self._array(key, shape, dtype):
            pass

    def read_array(self, key: str, shape: tuple[int, ...], dtype: Any, out: np.ndarray | None = None) -> np.ndarray:
        """Entry ``key``, which must be a finite float array of ``shape`` in ``dtype``.

        Parameters
        ----------
        key : str
        shape : tuple of int
            Expected shape, e.g. ``(n_params,)``.
        dtype : float dtype
            Expected dtype (either byte order is accepted; the result is native).
        out : ndarray of ``shape`` and native ``dtype``, C-contiguous, optional
            Filled in place (nothing else of that size is allocated); its content
            is undefined when this raises.

        Returns
        -------
        ndarray
            ``out``, or a new array.

        Raises
        ------
        ModelFileError
            Another dtype or shape, sizes the archive does not hold, a truncated or
            corrupted (CRC) entry, NaN or infinity.
        """
        native = np.dtype(dtype).newbyteorder("=")
        if out is not None and (out.shape != shape or out.dtype != native or not out.flags.c_contiguous):
            raise ValueError(f"out must be a C-contiguous {native} array of shape {shape}")
        with self._errors(), self._array(key, shape, dtype) as (fp, stored, need):
            if out is None:
                out = np.empty(shape, native)
            raw = out.reshape(-1).view(np.uint8)
            done = 0
            while done < need:
                piece = fp.read(min(CHUNK_BYTES, need - done))
                if not piece:
                    raise ModelFileError(f"{self.where}: entry {key!r} is truncated ({done} of {need} bytes)")
                raw[done:done + len(piece)] = np.frombuffer(piece, np.uint8)
                done += len(piece)
            if fp.read(1):
                raise ModelFileError(f"{self.where}: entry {key!r} holds more data than its header says")
        flat = out.reshape(-1)
        swap = stored.newbyteorder("=") != stored
        rows = max(CHUNK_BYTES // native.itemsize, 1)
        for a in range(0, flat.size, rows):  # in chunks: no array-sized temporaries
            part = flat[a:a + rows]
            if swap:
                part.byteswap(inplace=True)
            if not np.isfinite(part).all():
                raise ModelFileError(f"{self.where}: {key!r} contains NaN or infinity")
        return out

    @contextlib.contextmanager
    def _array(self, key: str, shape: tuple[int, ...], dtype: Any) -> Iterator[tuple[Any, np.dtype, int]]:
        """Entry ``key`` opened, its header checked: ``(file at the data, stored dtype, data bytes)``."""
        expected = np.dtype(dtype)
        with self._open(key) as (fp, stored, stored_shape, header, info):
            if stored.kind != "f" or stored.newbyteorder("=") != expected.newbyteorder("="):
                raise ModelFileError(
                    f"{self.where}: {key!r} must be a {expected.name} array (the record's dtype), got dtype {stored}"
                )
            if stored_shape != shape:
                raise ModelFileError(
                    f"{self.where}: {key!r} has shape {stored_shape}, but the layers describe {shape[0]} parameters"
                    if len(shape) == 1 else f"{self.where}: {key!r} has shape {stored_shape}, expected {shape}"
                )
            need = math.prod(shape) * stored.itemsize
            self._check_sizes(key, info, header, need)
            yield fp, stored, need

    def _check_sizes(self, key: str, info: zipfile.ZipInfo, header: int, need: int) -> None:
        limit = info.compress_size * (1 if info.compress_type == zipfile.ZIP_STORED else _DEFLATE_RATIO)
        if info.file_size != header + need or header + need > limit:
            raise ModelFileError(
                f"{self.where}: entry {key!r} claims {need} bytes of data, which the archive does "
                f"not hold (truncated or inconsistent)"
            )

    @contextlib.contextmanager
    def _open(self, key: str) -> Iterator[tuple[Any, np.dtype, tuple[int, ...], int, zipfile.ZipInfo]]:
        """The entry opened and its ``.npy`` header read and checked:
        ``(file, dtype, shape, header length, zip record)``."""
        where = self.where
        info = self._entries.get(key)
        if info is None:
            raise ModelFileError(f"{where}: no {key!r} entry (entries: {self.names})")
        if info.flag_bits & 0x1:
            raise ModelFileError(f"{where}: entry {key!r} is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ModelFileError(f"{where}: entry {key!r} uses an unsupported compression ({info.compress_type})")
        if info.header_offset + info.compress_size > self._size:
            raise ModelFileError(f"{where}: entry {key!r} extends past the end of the file (truncated)")
        with self._zf.open(info) as fp:
            version = np.lib.format.read_magic(fp)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
            else:
                raise ModelFileError(f"{where}: entry {key!r} has an unsupported .npy version {version}")
            if dtype.hasobject:
                raise ModelFileError(f"{where}: entry {key!r} holds Python objects; mlpx files never do")
            if fortran and len(shape) > 1:
                raise ModelFileError(f"{where}: entry {key!r} is in Fortran order; mlpx writes C order")
            yield fp, dtype, tuple(shape), fp.tell(), info
