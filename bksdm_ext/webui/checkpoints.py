"""Which of the dropdown's checkpoints each tab can offer: teachers (SD-v1/v2) for
distillation, students for timing, both for DreamBooth.  A .safetensors file says what it
is from its header, so listing reads no weights; a .ckpt is assumed to be a teacher
(reading it would unpickle the whole file) and is checked when a job starts.

Every tab builds its lists from here while A1111 builds the page, so no file may stop
that: one the extension cannot read is left out of the lists and named, with the reason,
by `unreadable` (the Convert tab shows them) and on the console."""
import traceback
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..model.checkpoint import Checkpoint
from ..model.detect import ModelInfo, inspect_checkpoint
from ..errors import BadInput
from . import a1111
from .guard import LOG_PREFIX

# Per file version: what it is (None: not an SD-v1/v2 model we can use) and why it could
# not be read ("" when it could).
_seen: Dict[Tuple[str, int, int], Tuple[Optional[ModelInfo], str]] = {}


def describe(path: Path) -> Optional[ModelInfo]:
    """What an SD-v1/v2 .safetensors is (None: not one we can use), remembered per file version."""
    return _listing(path)[0]


def unreadable() -> List[str]:
    """"name: why" for each of the dropdown's files the extension cannot read."""
    problems = []
    for info in a1111.checkpoint_infos():
        problem = _listing(Path(info.filename))[1]
        if problem:
            problems.append(problem)
    return problems


def _listing(path: Path) -> Tuple[Optional[ModelInfo], str]:
    try:
        if path.suffix != ".safetensors" or not path.is_file():
            return None, ""
        stat = path.stat()
    except OSError:  # gone meanwhile, or a name the system refuses
        return None, ""
    key = (str(path), stat.st_size, int(stat.st_mtime))
    if key not in _seen:
        _seen[key] = _read(path)
        if _seen[key][1]:
            print("%s %s is left out of the BK-SDM lists: %s" % (LOG_PREFIX, path.name,
                                                                  _seen[key][1]))
    return _seen[key]


def _read(path: Path) -> Tuple[Optional[ModelInfo], str]:
    try:
        ckpt = Checkpoint(path)
        try:
            return inspect_checkpoint(ckpt), ""
        except BadInput:
            return None, ""  # readable, just not an SD-v1/v2 model (SDXL, a LoRA, ...)
    except BadInput as e:
        return None, _named(path, str(e))
    except Exception as e:  # a damage we failed to foresee must not take the page down
        traceback.print_exc()
        return None, "%s: cannot be read (%s: %s)" % (path.name, type(e).__name__, e)


def _named(path: Path, message: str) -> str:
    """A core message (it starts with the full path) that starts with the file's name."""
    return path.name + message[len(str(path)):] if message.startswith(str(path)) else message


def titles(teachers: bool = True, students: bool = True) -> List[str]:
    """Dropdown titles of the usable checkpoints, the loaded one first."""
    loaded = a1111.loaded_model()
    found = []
    for info in a1111.checkpoint_infos():
        path = Path(info.filename)
        model = describe(path)
        usable = path.suffix == ".ckpt" and teachers
        if model is not None:
            usable = students if model.is_student else teachers
        if usable:
            found.append(info.title)
    if loaded is not None and loaded.title in found:
        found.remove(loaded.title)
        found.insert(0, loaded.title)
    return found


def filename(title: str) -> Path:
    """The file behind a dropdown title, or a message saying to refresh."""
    for info in a1111.checkpoint_infos():
        if info.title == title:
            return Path(info.filename)
    raise BadInput("'%s' is not in the checkpoint list any more; press ↻ and choose again."
                   % title if title else "Choose a checkpoint.")


def teacher_of(student: Path) -> Optional[str]:
    """The dropdown title of the teacher a student was converted from: the file whose
    sha256 its metadata records, else (among files A1111 has not hashed yet) the file of
    the teacher's recorded name."""
    metadata = Checkpoint(student).metadata
    wanted = metadata.get("bksdm.teacher_sha256", "")
    name = metadata.get("bksdm.teacher", "")
    infos = a1111.checkpoint_infos()
    for info in infos:
        if wanted and getattr(info, "sha256", None) == wanted:
            return info.title
    for info in infos:
        if name and Path(info.filename).name == name and not getattr(info, "sha256", None):
            return info.title
    return None
