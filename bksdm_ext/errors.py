"""The exception types for mistakes a user can fix."""
import errno
from pathlib import Path
from typing import Optional, Union


class BadInput(Exception):
    """A problem with what the user gave us: the message names the file, what is wrong
    and what to do.  The CLI prints it on one line and exits 2; the UI shows it."""


class Stopped(Exception):
    """A run stopped on request (its folder's STOP file) before its last step; the message
    says whether a checkpoint was saved to resume from."""


class DiskError(BadInput):
    """A file could not be written (or read) because of the disk, not the data: full,
    read-only, over a size limit, or not ours to write.  The message names the file, the
    system's reason, the space needed when it is known, and what to do."""

    ERRNOS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG,
                        errno.EROFS, errno.EACCES, errno.EPERM})

    def __init__(self, path: Union[str, Path, None], reason: str, needed: Optional[int] = None,
                 free: Optional[int] = None, advice: str = "", then: str = "") -> None:
        self.path = Path(path) if path else None  # None: a write() that names no file
        self.reason, self.needed, self.free, self.advice, self.then = (
            reason, needed, free, advice, then)
        room = "" if needed is None else ": it needs %s%s" % (
            _size(needed), "" if free is None else ", the disk has %s free" % _size(free))
        super().__init__("%s%s%s; %s%s" % ("%s: " % path if path else "", reason, room, advice,
                                            "; " + then if then else ""))

    @classmethod
    def of(cls, error: BaseException) -> Optional["DiskError"]:
        """`error` as a DiskError when it is one of the disk's problems, else None."""
        if isinstance(error, DiskError):
            return error
        if not isinstance(error, OSError) or error.errno not in cls.ERRNOS:
            return None
        if error.errno == errno.EROFS:
            advice = "the disk is mounted read-only: choose a folder on a writable disk"
        elif error.errno in (errno.EACCES, errno.EPERM):
            advice = "check that this user may read and write there, or choose another folder"
        else:
            advice = "free some space or choose another folder"
        return cls(error.filename, error.strerror or str(error), advice=advice)

    def about(self, path: Union[str, Path], then: str = "") -> "DiskError":
        """The same problem, told about `path` (the final name of a temporary file), with
        `then` saying what became of the work."""
        return DiskError(path, self.reason, self.needed, self.free, self.advice,
                         then or self.then)


def ensure_room(path: Union[str, Path], needed: int) -> None:
    """Fail before writing a file of `needed` bytes at `path` that would not fit."""
    import shutil

    free = shutil.disk_usage(str(Path(path).parent)).free
    if free < needed:
        raise DiskError(path, "not enough space", needed, free,
                        "free some space or choose another folder")


def _size(count: int) -> str:
    value, unit = float(count), "bytes"
    for bigger in ("KB", "MB", "GB"):
        if value < 1000:
            break
        value, unit = value / 1000, bigger
    return "%d bytes" % count if unit == "bytes" else "%.1f %s" % (value, unit)
