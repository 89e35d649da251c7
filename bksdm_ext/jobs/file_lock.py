"""An exclusive lock between processes on a lock file, so that two processes moving the
same job queue (the WebUI and a ``bksdm jobs watch``, two CLIs) never start one job twice.

``fcntl.flock`` on Linux, macOS and the Jetson; ``msvcrt.locking`` on Windows.  The
operating system drops the lock when its holder dies, so a crash never leaves the queue
stuck.
"""
import time
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]
    import msvcrt

WINDOWS_RETRY_S = 0.05


@contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold the lock on `path` (created if missing) for the ``with`` block; waits for it."""
    with open(str(path), "a+b") as handle:
        _acquire(handle)
        try:
            yield
        finally:
            _release(handle)


def _acquire(handle: IO[bytes]) -> None:
    if fcntl is not None:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        return
    while True:  # msvcrt's blocking mode gives up after ten seconds: wait as long as it takes
        handle.seek(0)
        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
            return
        except OSError:
            time.sleep(WINDOWS_RETRY_S)


def _release(handle: IO[bytes]) -> None:
    if fcntl is not None:
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        return
    handle.seek(0)
    msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
