"""Outputs appear whole or not at all: written under temporary names beside their final
place and renamed at the end, so a crash or a full disk never leaves half a model that
A1111 would list, and an existing file is replaced only when the user asked."""
import contextlib
import os
from pathlib import Path
from typing import Iterator, List, Sequence

from ..errors import BadInput


def check_writable(targets: Sequence[Path], overwrite: bool) -> None:
    for target in targets:
        if target.exists() and not overwrite:
            raise BadInput("%s already exists; choose another name or allow overwriting "
                           "(--overwrite)" % target)
        if not target.parent.is_dir():
            raise BadInput("%s: the folder %s does not exist" % (target, target.parent))


@contextlib.contextmanager
def staged(targets: Sequence[Path], overwrite: bool = False) -> Iterator[List[Path]]:
    """Yield temporary paths for `targets`; on success rename them into place."""
    check_writable(targets, overwrite)
    temps = [t.with_name(".%s.%d.tmp" % (t.name, os.getpid())) for t in targets]
    try:
        yield temps
        for temp, target in zip(temps, targets):
            os.replace(temp, target)
    finally:
        for temp in temps:
            if temp.exists():
                temp.unlink()
