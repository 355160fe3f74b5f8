"""Writing output files so that nothing is half-written, overwritten by accident or lost to a full disk.

- :class:`OutputLock`: one run per output path.  A lock file ``<output>.lock`` carries a POSIX
  record lock for the duration of the run (released by the kernel when the process dies, so a
  killed run leaves no stale lock on file systems with locking) and names its holder.
- :func:`exclusive_temp`: a temporary file beside the final one, with a random name, created
  exclusively (``O_EXCL``: a symbolic link planted at the name is never followed).  Files are
  written there and renamed over the final name when complete.
- :class:`SpaceReservation`: the bytes an output will need, allocated (``posix_fallocate``)
  before the solve and released just before the write, so a file system that fills up during a
  long solve, or a quota, is found before the work rather than after it.
- :class:`StickyFile`: the file object rank 0 hands to h5py.  HDF5 does not survive a failed
  ``write(2)`` (after ENOSPC its objects are left half-closed and the process segfaults at exit),
  so the first OS error is recorded, later writes are dropped, and the caller raises a clean
  error once HDF5 has closed the file.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import socket
import tempfile
import time
from typing import Any

from ..errors import InputError

log = logging.getLogger(__name__)

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]


def free_bytes(directory: str) -> int:
    """Bytes available to this user in the file system of ``directory``."""
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def exclusive_temp(final: str) -> str:
    """Create and return an empty, new temporary file beside ``final`` (``.<name>.<random>.tmp``),
    with the permissions a new file of this process gets (0666 less the umask, as ``open`` gives):
    it becomes the output by a rename, and ``mkstemp``'s own 0600 would keep collaborators out."""
    directory, name = os.path.split(os.path.abspath(final))
    try:
        fd, path = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise InputError(f"{final}: cannot create a file in {directory} ({exc.strerror})") from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())
    finally:
        os.close(fd)
    return path


def _umask() -> int:
    """The process's umask (reading it means setting it: it is set back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_quietly(path: str | None) -> None:
    """Remove ``path`` if it exists (cleanup after a failure: errors are logged, not raised)."""
    if not path:
        return
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("could not remove %s: %s", path, exc.strerror)


#: lock files held by this process: POSIX record locks do not exclude their own process
_HELD: set[str] = set()


class OutputLock:
    """Hold ``<path>.lock`` for the duration of a run (a context manager; rank 0 only).

    Refuses, naming the holder, when another live process holds it.  Where the file system has
    no record locks (``ENOLCK``/``EOPNOTSUPP``), the holder's host and pid are checked instead:
    a lock of a dead process on this host is taken over; one from another host is refused.
    """

    def __init__(self, path: str):
        self.target = path
        self.path = f"{path}.lock"
        self._fd: int | None = None

    def _holder(self) -> str:
        try:
            with open(self.path, encoding="utf-8", errors="replace") as fh:
                text = fh.read(400).strip()
        except OSError:
            text = ""
        return text or "an unknown process"

    def _refuse(self) -> InputError:
        return InputError(
            f"{self.target}: another run is writing this output ({self._holder()}); "
            f"wait for it, choose another -o, or remove {self.path} if that run is dead"
        )

    def _holder_alive_without_locks(self) -> bool:
        fields = dict(part.split("=", 1) for part in self._holder().split() if "=" in part)
        if not fields:
            return False
        if fields.get("host") != socket.gethostname():
            return True  # cannot tell: assume alive
        try:
            os.kill(int(fields.get("pid", "0")), 0)
        except (ValueError, ProcessLookupError):
            return False
        except PermissionError:
            return True
        return True

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise InputError(f"{self.path}: the lock file is a symbolic link; refusing to follow it") from None
            raise InputError(f"{self.target}: cannot create the lock file {self.path} ({exc.strerror})") from None

    def _lock(self, fd: int) -> None:
        """Take the record lock on ``fd`` (closing it and raising when another process holds it)."""
        try:
            if fcntl is not None:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as exc:
            error = exc
        if error.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL) and not self._holder_alive_without_locks():
            return  # no record locks on this file system, and the recorded holder is gone
        os.close(fd)
        if error.errno in (errno.EACCES, errno.EAGAIN, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
            raise self._refuse() from None
        raise InputError(f"{self.path}: cannot lock ({error.strerror})") from None

    def acquire(self) -> OutputLock:
        key = os.path.realpath(self.path)
        if key in _HELD:
            raise self._refuse()
        for _ in range(5):  # retried when the lock file is replaced while we take it
            fd = self._open()
            self._lock(fd)
            try:  # the file we locked must still be the one at the path (not unlinked meanwhile)
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"host={socket.gethostname()} pid={os.getpid()} since={time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode())
            self._fd = fd
            _HELD.add(key)
            return self
        raise InputError(f"{self.path}: the lock file keeps changing; is another run starting?")

    def release(self) -> None:
        if self._fd is None:
            return
        _HELD.discard(os.path.realpath(self.path))
        remove_quietly(self.path)
        os.close(self._fd)  # closing drops the record lock
        self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


class SpaceReservation:
    """``nbytes`` allocated in ``directory`` until :meth:`release` (a hidden file, removed then).

    Where the file system cannot preallocate, only the free space is checked.  ``what`` names the
    file the space is for, in the error message.
    """

    def __init__(self, directory: str, nbytes: int, what: str):
        self.path: str | None = None
        free = free_bytes(directory)
        if nbytes > free:
            raise InputError(
                f"{what}: not enough space in {directory}: the output needs about {_mib(nbytes)}, "
                f"{_mib(free)} free"
            )
        fd, path = tempfile.mkstemp(prefix=".mpidcr-reserve.", dir=directory)
        try:
            os.posix_fallocate(fd, 0, max(int(nbytes), 1))
        except OSError as exc:
            os.close(fd)
            remove_quietly(path)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise InputError(
                    f"{what}: cannot reserve {_mib(nbytes)} in {directory} for the output ({exc.strerror})"
                ) from None
            log.debug("%s: no preallocation on this file system (%s); free space checked only", directory, exc)
            return
        except AttributeError:  # pragma: no cover - no posix_fallocate on this platform
            os.close(fd)
            remove_quietly(path)
            return
        os.close(fd)
        self.path = path

    def release(self) -> None:
        remove_quietly(self.path)
        self.path = None


class StickyFile(io.RawIOBase):
    """A seekable binary file whose first OS error is kept in :attr:`error` instead of raised.

    After an error, writes are accepted and dropped and reads return zeros, so the library
    writing through it (HDF5) finishes and closes normally; the caller then checks ``error``.
    """

    def __init__(self, path: str):
        super().__init__()
        self._fh = open(path, "r+b", buffering=0)  # noqa: SIM115 - closed in close()
        self.error: OSError | None = None
        self._pos = 0
        self._size = os.fstat(self._fh.fileno()).st_size

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        self._pos = {0: offset, 1: self._pos + offset, 2: self._size + offset}[whence]
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = len(view)
        if self.error is None:
            try:
                self._fh.seek(self._pos)
                got = self._fh.readinto(view) or 0
            except OSError as exc:
                self.error, got = exc, 0
            view[got:] = bytes(n - got)
        else:
            view[:] = bytes(n)
        self._pos += n
        return n

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        n = len(view)
        if self.error is None:
            try:
                self._fh.seek(self._pos)
                done = 0
                while done < n:
                    done += self._fh.write(view[done:])
            except OSError as exc:
                self.error = exc
        self._pos += n
        self._size = max(self._size, self._pos)
        return n

    def truncate(self, size: int | None = None) -> int:
        size = self._pos if size is None else size
        if self.error is None:
            try:
                self._fh.truncate(size)
            except OSError as exc:
                self.error = exc
        self._size = size
        return size

    def flush(self) -> None:
        return None

    def sync(self) -> None:
        """fsync the file (errors recorded like write errors)."""
        if self.error is None:
            try:
                os.fsync(self._fh.fileno())
            except OSError as exc:
                self.error = exc

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()
        super().close()


def write_fits(path: str, hdul: Any) -> None:
    """Write an astropy HDUList to ``path`` atomically: a new exclusive temporary file beside it
    (never a planted link), renamed when complete; InputError (nothing left behind) on failure."""
    tmp = exclusive_temp(path)
    try:
        hdul.writeto(tmp, overwrite=True)
        os.replace(tmp, path)
    except OSError as exc:
        remove_quietly(tmp)
        raise InputError(f"{path}: writing failed ({exc.strerror or exc}); nothing was written") from None
