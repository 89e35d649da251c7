"""Which of the dropdown's checkpoints each tab can offer: teachers (SD-v1/v2) for
distillation, students for timing, both for DreamBooth.  A .safetensors file says what it
is from its header, so listing reads no weights; a .ckpt is assumed to be a teacher
(reading it would unpickle the whole file) and is checked when a job starts."""
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..model.checkpoint import Checkpoint
from ..model.detect import ModelInfo, inspect_checkpoint
from ..errors import BadInput
from . import a1111

_seen: Dict[Tuple[str, int, int], Optional[ModelInfo]] = {}


def describe(path: Path) -> Optional[ModelInfo]:
    """What an SD-v1/v2 .safetensors is (None: not one we can use), remembered per file version."""
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    stat = path.stat()
    key = (str(path), stat.st_size, int(stat.st_mtime))
    if key not in _seen:
        try:
            _seen[key] = inspect_checkpoint(Checkpoint(path))
        except BadInput:
            _seen[key] = None
    return _seen[key]


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
