"""Block names: the units a student can lose, and the notation for a custom removal.

``down.S.L``   layer L of down stage S (a resnet, with its attention where the stage has
               one); stages are counted from the full-resolution stage 0
``up.S.L``     layer L (0 to the stage's layer count) of the up stage of resolution S
``mid``        the mid-stage block
``innermost``  the whole lowest-resolution stage, as BK-SDM Tiny removes it

``*`` as S means every stage.  A removal is a comma-separated list of units, e.g. Base =
``down.*.1,up.*.1``.  The same list names a preset's student and a custom one, so a
user's removal that equals a preset *is* that preset (same file, same metadata).
"""
import re
from typing import Dict, List, Optional, Sequence, Set, Tuple, Union

from .arch import PRESETS, SD_V1, TEACHER, Architecture, Removal, TeacherSpec, preset as named
from ..errors import BadInput

CUSTOM = "custom"  # the name (file names, metadata) of a student that is no preset
MID, INNERMOST = "mid", "innermost"
# ASCII digits only: \d would take "１" (full width) and other scripts' digits too.
_LAYER_UNIT = re.compile(r"^(down|up)\.(\*|[0-9]+)\.([0-9]+)$")


def split_units(text: str) -> List[str]:
    """The units of a comma-separated list, in order, blanks dropped."""
    return [unit.strip() for unit in text.split(",") if unit.strip()]


def teacher_units(teacher: TeacherSpec) -> List[str]:
    """Every removable unit of this teacher, in U-Net order (down path, mid, up path)."""
    n = teacher.layers_per_stage
    down = ["down.%d.%d" % (s, layer) for s in range(teacher.stages) for layer in range(n)]
    up = ["up.%d.%d" % (s, layer) for s in reversed(range(teacher.stages)) for layer in range(n + 1)]
    return down + [MID] + up + [INNERMOST]


def removed_units(arch: Architecture) -> List[str]:
    """The units `arch` lacks compared to its teacher, one by one (innermost as one unit)."""
    n = arch.teacher.layers_per_stage
    units = ["down.%d.%d" % (s, layer) for s in range(arch.stages)
             for layer in range(n) if layer not in arch.down_layers(s)]
    units += ["up.%d.%d" % (s, layer) for s in range(arch.stages)
              for layer in range(n + 1) if layer not in arch.up_layers(s)]
    if not arch.removal.mid_block:
        units.append(MID)
    if arch.stages < arch.teacher.stages:
        units.append(INNERMOST)
    return units


def notation(arch: Architecture) -> str:
    """`arch`'s removal as the shortest unit list: a layer removed in every kept stage is
    written ``down.*.L``.  ``removal_from_units(teacher, notation(arch))`` gives it back."""
    removed = removed_units(arch)
    written: List[str] = []
    for unit in removed:
        match = _LAYER_UNIT.match(unit)
        if not match:
            written.append(unit)
            continue
        side, layer = match.group(1), match.group(3)
        everywhere = all("%s.%d.%s" % (side, s, layer) in removed for s in range(arch.stages))
        name = "%s.*.%s" % (side, layer) if everywhere else unit
        if name not in written:
            written.append(name)
    return ",".join(written)


def removal_from_units(teacher: TeacherSpec, units: str, start: Removal = TEACHER) -> Removal:
    """The removal that takes `units` out of `start` (the teacher, or a preset to begin from).

    A result equal to a preset is that preset.  BadInput names the unit that is unknown
    or cannot be removed.
    """
    base = Architecture(teacher, start)
    n = teacher.layers_per_stage
    down: Dict[int, Set[int]] = {s: set(range(n)) for s in range(teacher.stages)}
    up: Dict[int, Set[int]] = {s: set(range(n + 1)) for s in range(teacher.stages)}
    for s in range(base.stages):
        down[s], up[s] = set(base.down_layers(s)), set(base.up_layers(s))
    mid, stages = start.mid_block, base.stages
    for unit in split_units(units):
        if unit == MID:
            mid = False
        elif unit == INNERMOST:
            stages = teacher.stages - 1
        else:
            side, unit_stages, layer = _layer_unit(teacher, unit)
            for s in unit_stages:
                (down if side == "down" else up)[s].discard(layer)
    layers = tuple((tuple(sorted(down[s])), tuple(sorted(up[s]))) for s in range(stages))
    written = ",".join(split_units(units))
    custom = Removal(CUSTOM, "removes %s" % written, mid_block=mid, stages=stages,
                     stage_layers=layers)
    try:
        arch = Architecture(teacher, custom)
    except ValueError as e:
        raise BadInput("--remove %s: %s" % (written, str(e).split(": ", 1)[1])) from None
    return known_as(arch)


def known_as(arch: Architecture) -> Removal:
    """The teacher or preset that keeps exactly what `arch` keeps, else `arch`'s own removal."""
    for removal in [TEACHER] + list(PRESETS.values()):
        try:
            if Architecture(arch.teacher, removal).kept() == arch.kept():
                return removal
        except ValueError:
            continue
    return arch.removal


def preset_name(arch: Architecture) -> str:
    """What files and reports call `arch`: its preset's name, "teacher", or "custom"."""
    name = known_as(arch).name
    return name if name in PRESETS or name == TEACHER.name else CUSTOM


def canonical_removal(teacher: TeacherSpec, layers: Sequence[int], stages: int, mid: bool
                      ) -> Removal:
    """A removal with this block layout (per-stage down layer counts, stages, mid block)
    when the file does not say which teacher layers it kept: the first layers of each down
    stage and the first and last of each up stage, as the presets keep them."""
    n = teacher.layers_per_stage
    kept = tuple((tuple(range(k)), tuple(range(k)) + (n,)) for k in layers)
    return Removal(CUSTOM, "a custom removal", mid_block=mid, stages=stages, stage_layers=kept)


def _layer_unit(teacher: TeacherSpec, unit: str) -> Tuple[str, List[int], int]:
    match = _LAYER_UNIT.match(unit)
    n = teacher.layers_per_stage
    if not match:
        raise BadInput("'%s' is not a block name; use down.S.L, up.S.L (S a stage 0-%d or *, "
                       "L a layer), mid or innermost" % (unit, teacher.stages - 1))
    side, stage, layer = match.group(1), match.group(2), int(match.group(3))
    if stage != "*" and int(stage) >= teacher.stages:
        raise BadInput("'%s': this U-Net has stages 0-%d" % (unit, teacher.stages - 1))
    last = n - 1 if side == "down" else n
    if layer > last:
        raise BadInput("'%s': %s stages have layers 0-%d" % (unit, side, last))
    return side, list(range(teacher.stages)) if stage == "*" else [int(stage)], layer


def describe_presets(teacher: TeacherSpec) -> Dict[str, str]:
    """Each preset in block notation (what ``--help`` and the block picker show)."""
    return {name: notation(Architecture(teacher, removal)) for name, removal in PRESETS.items()}


def which_student(teacher: TeacherSpec, preset: Union[None, str, Removal] = None,
                  remove: Optional[str] = None) -> Architecture:
    """Which student: `teacher` cut as `preset` says (a preset's name, a `Removal`, or None:
    nothing, the teacher itself) with the `remove` units (block notation) taken out too;
    the preset's own removal when the result equals one.  Conversion, distillation,
    transplant, the tabs and the command line all ask this.  BadInput names an unknown
    preset, a unit that is not one, or a removal this teacher cannot take."""
    try:
        start = preset if isinstance(preset, Removal) else named(preset)
        removal = removal_from_units(teacher, remove, start) if remove and remove.strip() else start
        return Architecture(teacher, known_as(Architecture(teacher, removal)))
    except ValueError as e:
        raise BadInput(str(e)) from None


# What the command line says about --arch and --remove.
PRESETS_IN_NOTATION = "; ".join("%s = %s" % item for item in describe_presets(SD_V1).items())
REMOVE_HELP = ("blocks to remove, comma-separated: down.S.L (stage S from the full-resolution "
               "stage 0 or * for every stage, layer L = a ResNet with its attention), up.S.L "
               "(layers 0-2), mid, innermost (the lowest-resolution stage). An up stage must "
               "lose as many layers as its down stage. `bksdm info --blocks` lists them.")
