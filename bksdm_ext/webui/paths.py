"""Server paths typed into the page, kept inside the folders the server owner allows.

A WebUI started with ``--listen`` serves anyone who can reach it, and a folder or file
typed into a tab is read on the server: without a limit, Check would list any folder and a
prompts file would show any text file's lines. So every typed path is resolved (symlinks
followed, ``..`` removed) and must land inside an allowed root: the WebUI data folder's
``bksdm/`` area (where uploads go) or a folder listed in *Settings → BK-SDM*. Under A1111's
``--hide-ui-dir-config`` typed paths are refused altogether, as A1111 does with its own
folder settings, and visitors upload their files instead.
"""
import os
from pathlib import Path
from typing import List

from ..errors import BadInput, check_path_text
from . import a1111

ROOTS_OPTION = "bksdm_data_roots"


def typing_allowed() -> bool:
    return not a1111.hide_ui_dir_config()


def allowed_roots() -> List[Path]:
    """The bksdm/ data area, then the folders listed in the setting (one per line)."""
    listed = str(a1111.opt(ROOTS_OPTION, "") or "").splitlines()
    return [real_path(str(a1111.data_dir()))] + [real_path(line) for line in listed
                                                 if line.strip()]


def real_path(text: str) -> Path:
    """`text` made absolute with every symlink and ``..`` resolved (os.path.realpath also
    does it for missing paths on Windows, where Python 3.8's Path.resolve does not)."""
    return Path(os.path.realpath(os.path.expanduser(text.strip())))


def is_inside(path: Path, root: Path) -> bool:
    """Whether the resolved `path` is `root` or below it (pure path arithmetic)."""
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


def typed_path(text: str, field: str) -> Path:
    """The resolved path typed into `field`; BadInput when typing paths is off or it lands
    outside every allowed root. Whether an outside path exists is never looked at, so the
    message is the same for every outside path."""
    if not typing_allowed():
        raise BadInput("%s: this WebUI does not take server paths from the page "
                       "(--hide-ui-dir-config); upload the files and pick them from the list"
                       % field)
    check_path_text(text.strip(), field)
    path = real_path(text)
    roots = allowed_roots()
    if not any(is_inside(path, root) for root in roots):
        raise BadInput("%s: %s is outside the folders this page may read (%s); put it there, "
                       "upload it, or add its folder to Settings → BK-SDM → server folders"
                       % (field, text.strip(), ", ".join(str(root) for root in roots)))
    return path
