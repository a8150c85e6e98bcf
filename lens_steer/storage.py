"""Writing to disk safely: atomic files and directories, writer locks, one-line storage errors.

Every artefact the package writes goes through here:

* :func:`atomic_write` (bytes / text / JSON) and :func:`atomic_file` (a path for another writer): a temporary file in the same directory, ``fsync``,
  ``os.replace``, then an ``fsync`` of the directory, so a reader sees the old file or the new one,
  never a part; the temporary is removed if anything fails.
* :func:`replace_dir`: a fully written temporary directory takes the place of an existing one in
  one step (Linux ``renameat2(RENAME_EXCHANGE)``; elsewhere two renames, the old copy kept until
  the new one is in place).
* :class:`DirLock`: one writer per directory (``flock`` on a sibling ``.NAME.lock`` file, released
  by the kernel when its process dies, so a killed writer's lock is taken over; the file names
  the holder for the refusal message and is removed on a clean exit).
* :func:`storage_errors`: ``OSError`` s from a full disk, missing permissions or a read-only file
  system become :class:`StorageError` with one line naming the path.

JSON written here never holds NaN or Infinity (:func:`json_text` turns non-finite floats into
``null``).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import math
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["DirLock", "LockedError", "StorageError", "atomic_file", "atomic_write", "json_text", "replace_dir",
           "storage_errors", "write_json"]

_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EFBIG, errno.EIO}


class StorageError(OSError):
    """A write failed for a reason of the disk (full, no permission, read-only); one line, the path named."""

    def __str__(self) -> str:
        return str(self.strerror)


class LockedError(RuntimeError):
    """Another process is writing the directory."""


def _storage_error(exc: OSError, path: Path) -> StorageError:
    where = exc.filename or path
    return StorageError(exc.errno, f"cannot write {where}: {exc.strerror or exc}")


@contextlib.contextmanager
def storage_errors(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn disk-full / permission / read-only ``OSError`` s inside the block into :class:`StorageError`."""
    try:
        yield
    except StorageError:
        raise
    except OSError as exc:
        if exc.errno in _STORAGE_ERRNOS:
            raise _storage_error(exc, Path(path)) from exc
        raise


def _finite(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def json_text(obj, *, indent: int | None = 2) -> str:
    """``obj`` as strict JSON (non-finite floats written as ``null``)."""
    return json.dumps(_finite(obj), indent=indent, ensure_ascii=False, allow_nan=False)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that needs a file name (``GGUFWriter``, ...); on a
    clean exit it is ``fsync``-ed and renamed onto ``path``, on an error removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with storage_errors(path):
        try:
            yield tmp
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        _fsync_dir(path.parent)


def atomic_write(path: str | os.PathLike[str], data: bytes | str) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file in the same directory, fsync, rename)."""
    blob = data.encode() if isinstance(data, str) else data
    with atomic_file(path) as tmp:
        tmp.write_bytes(blob)
    return Path(path)


def write_json(path: str | os.PathLike[str], obj) -> Path:
    """:func:`atomic_write` of :func:`json_text` (plus a final newline)."""
    return atomic_write(path, json_text(obj) + "\n")


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EXDEV, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def replace_dir(new: str | os.PathLike[str], final: str | os.PathLike[str]) -> Path:
    """Put the complete directory ``new`` at ``final`` (same parent), replacing what is there only
    once ``new`` is in place; the old contents are then deleted."""
    new, final = Path(new), Path(final)
    with storage_errors(final):
        for f in new.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        _fsync_dir(new)
        if not final.exists():
            os.rename(new, final)
        elif _exchange(new, final):
            shutil.rmtree(new, ignore_errors=True)  # ``new`` now holds the old contents
        else:
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.rename(final, old)
            os.rename(new, final)
            shutil.rmtree(old, ignore_errors=True)
        _fsync_dir(final.parent)
    return final


def temp_dir_beside(final: str | os.PathLike[str]) -> Path:
    """A fresh empty directory next to ``final`` (same file system) to build a replacement in."""
    final = Path(final)
    with storage_errors(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.new-{os.getpid()}")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    return tmp


_HELD: dict[str, int] = {}
"""Lock files this process holds, with their nesting depth."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class DirLock:
    """Exclusive writer lock on a directory, held in a ``with`` block.

    The lock is ``flock`` on ``PARENT/.NAME.lock``, which records the holder (pid, host, start time,
    command). A second writer gets :class:`LockedError` at once, naming the holder; a lock whose
    process died (kill -9 included) is free again, since the kernel drops ``flock`` locks with
    their process, and :attr:`took_over` then names the dead holder. Within one process the lock
    is re-entrant (a command that locks its output can call library code that locks it again).
    Readers take no lock.
    """

    def __init__(self, directory: str | os.PathLike[str], command: str = "") -> None:
        self.directory = Path(directory)
        self.path = self.directory.with_name(f".{self.directory.name}.lock")
        self.command = command
        self.took_over: str | None = None
        self._fd: int | None = None
        self._nested: str | None = None

    def __enter__(self) -> "DirLock":
        key = os.path.abspath(self.path)
        if key in _HELD:
            _HELD[key] += 1
            self._nested = key
            return self
        fd = self._acquire()
        previous = _read_holder(fd, describe=False)
        if previous:
            self.took_over = _describe(previous)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "command": self.command}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self._fd = fd
        _HELD[key] = 1
        return self

    def _acquire(self) -> int:
        """Open and ``flock`` the lock file; retry when the file was replaced meanwhile (a holder removes
        it on a clean exit, before unlocking, so a lock on a removed file is never trusted)."""
        while True:
            with storage_errors(self.path):
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise LockedError(f"{self.directory} is being written by {holder}; wait for it to finish or use "
                                  "another output directory") from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)

    def __exit__(self, *exc) -> None:
        key = os.path.abspath(self.path)
        if self._nested:
            self._nested = None
            _HELD[key] -= 1
            return
        _HELD.pop(key, None)
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.unlink(self.path)  # while still locked: nobody can hold a lock on the removed file
        except OSError:
            pass
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _read_holder(fd: int, *, describe: bool = True):
    try:
        raw = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        info = json.loads(raw) if raw else None
    except (OSError, ValueError):
        info = None
    if not describe:
        return info if isinstance(info, dict) else None
    return _describe(info) if isinstance(info, dict) else "another process"


def _describe(info: dict) -> str:
    alive = ""
    if info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int):
        alive = "" if _pid_alive(info["pid"]) else ", no longer running"
    cmd = f" ({info['command']})" if info.get("command") else ""
    return f"pid {info.get('pid')} on {info.get('host')} since {info.get('started')}{cmd}{alive}"
