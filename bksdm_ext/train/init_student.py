"""Where a distillation starts: the pruned teacher (the paper), or any student file of the
run's layout (``--init-student``): a transplanted one, an imported hub student, or an
earlier run's result.  Starting close to the goal is what makes a short run enough."""
from dataclasses import replace
from typing import Any, Tuple

from ..errors import BadInput
from ..model.arch import PRESETS, Architecture
from ..model.blocks import notation, preset_name
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
        raise BadInput("%s: its U-Net is %s of another size or layout than the '%s' student of "
                       "%s this run trains; %s" % (ckpt.path, _what(info), preset_name(arch),
                                                   teacher.path.name, _advice(info)))
    return ckpt, info


def _what(info: ModelInfo) -> str:
    if not info.is_student:
        return "a full teacher U-Net"
    return "a BK-SDM '%s'" % (info.preset if info.preset in PRESETS else notation(info.arch))


def _advice(info: ModelInfo) -> str:
    """The distill flags that make a run of this file's layout (--arch takes presets only)."""
    if not info.is_student:
        return "give a student file, or leave out --init-student to start from the pruned teacher"
    if info.preset in PRESETS:
        return "choose --arch %s, or a student made from this teacher's family" % info.preset
    return ("give --remove %s without --arch (it removes those blocks from the teacher), or a "
            "student made from this teacher's family" % notation(info.arch))


def load_init_student(ckpt: Checkpoint, info: ModelInfo, arch: Architecture) -> Any:
    """The file's U-Net as the run's diffusers student (fp32), loaded strictly."""
    return load_unet(ckpt, replace(info, arch=arch))

