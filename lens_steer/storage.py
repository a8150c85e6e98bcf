"""Writing to disk safely: atomic files and directories, writer locks, one-line storage errors.

Every artefact the package writes goes through here:

* :func:`atomic_write` (bytes / text / JSON) and :func:`atomic_file` (a path for another writer): a temporary file in the same directory, ``fsync``,
  ``os.replace``, then an ``fsync`` of the directory, so a reader sees the old file or the new one,
  never a part; the temporary is removed if anything fails.
* :func:`replace_dir`: a fully written temporary directory takes the place of an existing one in
  one step (Linux ``renameat2(RENAME_EXCHANGE)``; elsewhere two renames, the old copy kept until
  the new one is in place).
* :class:`DirLock`: one writer per directory (``flock`` on a sibling ``.NAME.lock`` file, released
  by the kernel when its process dies, so a killed writer's lock is taken over, and the temporary
  files and directories it left are removed; the file names the holder for the refusal message and
  is removed on a clean exit).
* :func:`storage_errors` and :func:`read_bytes`: ``OSError`` s from a full disk, missing permissions or
  a read-only file system become :class:`StorageError` with one line naming the path.

An output path without a name of its own (``.``, ``runs/..``) is taken as the absolute directory it names.

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
import re
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["DirLock", "LockedError", "StorageError", "atomic_file", "atomic_write", "json_text", "read_bytes",
           "replace_dir", "storage_errors", "write_json"]

_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EFBIG, errno.EIO,
                   errno.EISDIR, errno.ENOTDIR, errno.ENAMETOOLONG, errno.ELOOP}


class StorageError(OSError):
    """A read or write failed for a reason of the file system (full, no permission, read-only, a directory
    where a file belongs); one line, the path named."""

    def __str__(self) -> str:
        return str(self.strerror)


class LockedError(RuntimeError):
    """Another process is writing the directory."""


def _storage_error(exc: OSError, path: Path, verb: str = "write") -> StorageError:
    where = exc.filename or path
    if exc.filename is not None and Path(exc.filename).parent == path.parent \
            and Path(exc.filename).name.startswith(f".{path.name}."):
        where = path  # our temporary beside it: name what the user asked for
    return StorageError(exc.errno, f"cannot {verb} {where}: {exc.strerror or exc}")


@contextlib.contextmanager
def storage_errors(path: str | os.PathLike[str], verb: str = "write") -> Iterator[None]:
    """Turn disk-full / permission / read-only ``OSError`` s inside the block into :class:`StorageError`
    (``"cannot {verb} PATH: reason"``)."""
    try:
        yield
    except StorageError:
        raise
    except OSError as exc:
        if exc.errno in _STORAGE_ERRNOS:
            raise _storage_error(exc, Path(path), verb) from exc
        raise


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """The contents of ``path``; a file that cannot be read (no permission, an I/O error, a directory) raises
    :class:`StorageError` ``"cannot read PATH: reason"`` (a missing one stays ``FileNotFoundError``)."""
    with storage_errors(path, "read"):
        return Path(path).read_bytes()


def _named(path: str | os.PathLike[str]) -> Path:
    """``path`` with a final name to put siblings beside: ``.`` and ``x/..`` become the absolute directory
    they name; ``ValueError`` for the root directory."""
    p = Path(path)
    if p.name in ("", ".", ".."):
        p = Path(os.path.abspath(p))
    if not p.name:
        raise ValueError(f"{path} is the root directory: name a file or directory below it")
    return p


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
    path = _named(path)
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


def _cwd_within(final: Path) -> Path | None:
    """The current directory relative to ``final`` when it is ``final`` or inside it (else None)."""
    try:
        cwd, top = Path(os.getcwd()), Path(os.path.realpath(final))
    except OSError:
        return None
    return cwd.relative_to(top) if cwd == top or top in cwd.parents else None


def replace_dir(new: str | os.PathLike[str], final: str | os.PathLike[str]) -> Path:
    """Put the complete directory ``new`` at ``final`` (same parent), replacing what is there only
    once ``new`` is in place; the old contents are then deleted. A process working inside ``final``
    (``--out .``) moves into the new one, so its relative paths keep naming what they named."""
    new, final = Path(new), _named(final)
    with storage_errors(final):
        for f in new.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        _fsync_dir(new)
        inside = _cwd_within(final) if final.exists() else None
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
        if inside is not None:  # the old directory, our working directory, is gone
            os.chdir(final / inside if (final / inside).is_dir() else final)
    return final


def temp_dir_beside(final: str | os.PathLike[str]) -> Path:
    """A fresh empty directory next to ``final`` (same file system) to build a replacement in."""
    final = _named(final)
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
    their process, and :attr:`took_over` then names the dead holder. What that holder left half
    done (:func:`atomic_file`'s ``.X.PID.tmp`` and :func:`replace_dir`'s ``.X.new-PID`` /
    ``.X.old-PID`` with its pid, beside the directory or in it) is removed then, and named in
    :attr:`took_over`. Within one process the lock is re-entrant (a command that locks its output
    can call library code that locks it again). Readers take no lock.
    """

    def __init__(self, directory: str | os.PathLike[str], command: str = "") -> None:
        self.directory = Path(directory)
        self._named = _named(directory)
        self.path = self._named.with_name(f".{self._named.name}.lock")
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
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "command": self.command}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        except OSError as exc:  # a full disk: the same one line as any other write, and no lock file left
            self._release(fd)
            if exc.errno in _STORAGE_ERRNOS:
                raise StorageError(exc.errno, f"cannot write {self.path} (the lock of {self.directory}): "
                                              f"{exc.strerror or exc}") from exc
            raise
        self._fd = fd
        _HELD[key] = 1
        if previous:
            self.took_over = _describe(previous)
            removed = _remove_leftovers(self._named, previous.get("pid"))
            if removed:
                self.took_over += "; removed what it left unfinished: " + ", ".join(removed)
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
        if fd is not None:
            self._release(fd)

    def _release(self, fd: int) -> None:
        try:
            os.unlink(self.path)  # while still locked: nobody can hold a lock on the removed file
        except OSError:
            pass
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _remove_leftovers(directory: Path, pid) -> list[str]:
    """Remove what writer ``pid`` left half done: ``.NAME.new-PID`` / ``.NAME.old-PID`` beside ``directory``,
    and ``.X.new-PID``, ``.X.old-PID`` and ``.X.PID.tmp`` anywhere in it. Called only by the next holder of
    the lock that ``pid`` held and lost without releasing it (it died), so nothing of a live writer is
    touched. Returns the names removed (relative to ``directory``'s parent)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return []
    temp_dir = re.compile(rf"\..+\.(?:new|old)-{pid}")
    temp_file = re.compile(rf"\..+\.{pid}\.tmp")
    found = [directory.with_name(f".{directory.name}.{kind}-{pid}") for kind in ("new", "old")]
    found = [p for p in found if p.is_dir() and not p.is_symlink()]
    if directory.is_dir() and not directory.is_symlink():
        for root, dirs, files in os.walk(directory):
            for d in list(dirs):
                if temp_dir.fullmatch(d):
                    found.append(Path(root, d))
                    dirs.remove(d)
            found += [Path(root, f) for f in files if temp_file.fullmatch(f)]
    removed = []
    for p in found:
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        except OSError:
            continue
        removed.append(os.path.relpath(p, directory.parent))
    return removed


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
