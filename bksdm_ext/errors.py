"""The exception types for mistakes a user can fix."""
import errno
from pathlib import Path
from typing import Optional, Union


NAME_MAX = 255  # bytes in one file or folder name (Linux, macOS and Windows file systems)


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
                        errno.EROFS, errno.EACCES, errno.EPERM, errno.ENAMETOOLONG})

    def __init__(self, path: Union[str, Path, None], reason: str, needed: Optional[int] = None,
                 free: Optional[int] = None, advice: str = "", then: str = "") -> None:
        self.path = Path(path) if path else None  # None: a write() that names no file
        self.reason, self.needed, self.free, self.advice, self.then = (
            reason, needed, free, advice, then)
        room = "" if needed is None else ": it needs %s%s" % (
            size_text(needed), "" if free is None else ", the disk has %s free" % size_text(free))
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
        elif error.errno == errno.ENAMETOOLONG:
            advice = "choose a shorter name (at most %d bytes a name)" % NAME_MAX
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


def check_path_text(text: str, what: str, reserve: int = 0) -> None:
    """BadInput unless every file system takes `text` as a path: no NUL byte, no name over
    NAME_MAX bytes (the last one `reserve` bytes shorter, for the temporary name it is
    first written under).  Checked before the path is used, so the message says which
    field holds it instead of a traceback from the operating system."""
    if "\0" in text:
        raise BadInput("%s: the path contains a NUL byte, which no file name may; type it "
                       "again" % what)
    names = [name for name in text.replace("\\", "/").split("/") if name]
    for index, name in enumerate(names):
        size = len(name.encode("utf-8", "surrogateescape"))
        room = NAME_MAX - (reserve if index == len(names) - 1 else 0)
        if size > room:
            raise BadInput("%s: the name %s... is %d bytes long, over the %d a file system "
                           "allows%s; choose a shorter name" % (
                               what, name[:40], size, room,
                               " here (%d are kept for the temporary name it is written "
                               "under)" % reserve if reserve else ""))


def size_text(count: int) -> str:
    """A byte count as people read it: 812 bytes, 4.1 KB, 1.7 GB (powers of 1000)."""
    value, unit = float(count), "bytes"
    for bigger in ("KB", "MB", "GB"):
        if value < 1000:
            break
        value, unit = value / 1000, bigger
    return "%d bytes" % count if unit == "bytes" else "%.1f %s" % (value, unit)
