"""Outputs appear whole or not at all: written under temporary names beside their final
place and renamed at the end, so a crash or a full disk never leaves half a model that
A1111 would list, and an existing file is replaced only when the user asked.

Without overwriting, the final names are taken with ``os.link``, which fails when the name
exists: a file that appeared while we were writing (another conversion to the same name)
is never replaced, and the files of one output (weights and yaml) are placed as a unit,
all from this run or none."""
import contextlib
import os
import uuid
from pathlib import Path
from typing import Iterator, List, Sequence

from ..errors import BadInput, DiskError, check_path_text

# What a temporary name adds to its target's: ".", then ".<pid>.<8 hex>.tmp" (pids < 2**22).
TEMP_NAME_EXTRA = len("..%d.%s.tmp" % (2 ** 22, "0" * 8))


def check_writable(targets: Sequence[Path], overwrite: bool) -> None:
    for target in targets:
        check_path_text(str(target), "output file", reserve=TEMP_NAME_EXTRA)
        if target.exists() and not overwrite:
            raise _exists(target)
        if not target.parent.is_dir():
            raise BadInput("%s: the folder %s does not exist" % (target, target.parent))


@contextlib.contextmanager
def staged(targets: Sequence[Path], overwrite: bool = False) -> Iterator[List[Path]]:
    """Yield temporary paths for `targets`, to be written in their order; on success move
    them into place.  A full or read-only disk is a `DiskError` about the target (not its
    temporary name)."""
    check_writable(targets, overwrite)
    # Unique per call, not per process: the WebUI may convert twice at once in one process.
    run = "%d.%s" % (os.getpid(), uuid.uuid4().hex[:8])
    temps = [t.with_name(".%s.%s.tmp" % (t.name, run)) for t in targets]
    try:
        yield temps
        if overwrite:
            for temp, target in zip(temps, targets):
                os.replace(temp, target)
        else:
            _place_new(temps, targets)
    except (DiskError, OSError) as e:
        problem = DiskError.of(e)
        if problem is None:
            raise
        written = problem.path or _being_written(temps)  # a failed write() names no file
        raise problem.about(_final_name(written, temps, targets)) from None
    finally:
        for temp in temps:
            if temp.exists():
                temp.unlink()


def _place_new(temps: Sequence[Path], targets: Sequence[Path]) -> None:
    """Give each temp its target name, none of which may exist; if one does, take back the
    names already given, so no output is left half from this run and half from another."""
    placed: List[Path] = []
    try:
        for temp, target in zip(temps, targets):
            _link_new(temp, target)
            placed.append(target)
    except FileExistsError:
        for temp, target in zip(temps, placed):
            if not temp.exists() or os.path.samefile(temp, target):  # still ours
                target.unlink()
        raise _exists(targets[len(placed)]) from None


def _link_new(temp: Path, target: Path) -> None:
    """`target` becomes `temp`'s content, or FileExistsError when `target` exists."""
    try:
        os.link(temp, target)
    except FileExistsError:
        raise
    except OSError:  # no hard links here (FAT, some network shares): claim the name first
        os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        os.replace(temp, target)


def _being_written(temps: Sequence[Path]) -> Path:
    """The temp a failed write was for: the last one begun, as they are written in order."""
    begun = [temp for temp in temps if temp.exists()]
    return begun[-1] if begun else temps[0]


def _final_name(path: Path, temps: Sequence[Path], targets: Sequence[Path]) -> Path:
    return targets[list(temps).index(path)] if path in temps else path


def _exists(target: Path) -> BadInput:
    return BadInput("%s already exists; choose another name or allow overwriting "
                    "(--overwrite)" % target)
