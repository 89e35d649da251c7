"""Where a distillation starts: the pruned teacher (the paper), or any student file of the
run's layout (``--init-student``): a transplanted one, an imported hub student, or an
earlier run's result.  Starting close to the goal is what makes a short run enough."""
from dataclasses import replace
from typing import Any, Tuple

from ..errors import BadInput
from ..model.arch import Architecture
from ..model.checkpoint import Checkpoint
from ..model.convert import unet_sources
from ..model.detect import ModelInfo, inspect_checkpoint
from ..model.keymap import UNET_PREFIX
from ..model.loading import load_unet


def checked_init_student(path: str, teacher: Checkpoint, teacher_info: ModelInfo,
                         arch: Architecture) -> Tuple[Checkpoint, ModelInfo]:
    """The student file, once its header shows it fits the run: same family and prediction
    as the teacher, and exactly the U-Net tensors the run's student has (names and shapes).
    Reads no weights, so a wrong file fails before any model loads."""
    ckpt = Checkpoint(path)
    info = inspect_checkpoint(ckpt)
    for what in ("family", "parameterization"):
        if getattr(info, what) != getattr(teacher_info, what):
            raise BadInput("%s: %s %s, but the teacher %s is %s; start from a student of the "
                           "teacher's %s" % (ckpt.path, what, getattr(info, what),
                                             teacher.path.name, getattr(teacher_info, what), what))
    wanted = {name: teacher.shape(source) for name, source in unet_sources(teacher, arch).items()}
    found = {k: ckpt.shape(k) for k in ckpt.keys() if k.startswith(UNET_PREFIX)}
    if found != wanted:
        raise BadInput("%s: its U-Net is a BK-SDM '%s' of another size or layout than the '%s' "
                       "student of %s this run trains; choose --arch %s, or a student made "
                       "from this teacher's family" % (ckpt.path, info.preset, arch.removal.name,
                                                       teacher.path.name, info.preset))
    return ckpt, info


def load_init_student(ckpt: Checkpoint, info: ModelInfo, arch: Architecture) -> Any:
    """The file's U-Net as the run's diffusers student (fp32), loaded strictly."""
    return load_unet(ckpt, replace(info, arch=arch))

