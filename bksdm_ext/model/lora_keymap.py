"""The LoRA key map: where each module of a LoRA file lands in a teacher or in a student.

A LoRA file for A1111's built-in Lora extension (kohya's and LyCORIS' formats) names each
module it changes ``<prefix><module>.<part>``.  The prefix says which part of the model
(``lora_unet_``, or kohya's OFT ``oft_unet_``; ``lora_te_`` for the text encoder), the module
is a module path with "." written "_" -- in LDM naming (``input_blocks_4_1_transformer_blocks_0_
attn1_to_q``, "compvis") or in diffusers naming (``down_blocks_1_attentions_0_…``, what kohya
writes for SD-1/2) -- and the part is a tensor of the network type (``lora_up.weight``,
``hada_w1_a``, ``diff``, ...).  A1111 splits a key at its first "." (docs/facts.md §12).

Block removal renumbers a student's blocks, so one name means different modules in a
teacher and in its student.  A file is read in the layout it was made for: the one its
``bksdm.*`` metadata names (LoRAs this project writes), else the first of the teacher's and
the model's own layouts whose blocks and shapes it fits.  Each module then goes to the
model's copy of its block through the weight map (blocks joined on their teacher origin,
`Architecture.weight_map`), so custom removals work as presets do.  Modules of blocks the
model does not have are counted, not applied; a file that fits no layout is refused whole,
never applied halfway.  Text-encoder modules are left alone: a student's text encoder is
its teacher's.
"""
import math
import re
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

from ..errors import BadInput
from .arch import PRESETS, TEACHER, Architecture, Block, Removal, TeacherSpec
from .blocks import CUSTOM, notation, preset_name, removal_from_units

Shape = Tuple[int, ...]

UNET_PREFIXES = ("lora_unet_", "oft_unet_")
TEXT_PREFIXES = ("lora_te_",)
SDXL_TEXT_PREFIXES = ("lora_te1_", "lora_te2_")
REMOVAL_KEY = "bksdm.removal"  # as in a student checkpoint's metadata (detect.REMOVAL_KEY)

# The diffusers names A1111's convert_diffusers_name_to_compvis rewrites (its other names,
# conv_norm_out among them, it looks up unchanged and never finds).
DIFFUSERS_STARTS = ("conv_in", "conv_out", "time_embedding_linear_", "down_blocks_",
                    "mid_block_", "up_blocks_")
# diffusers resnet module -> LDM ResBlock module (arch.RESNET_RENAMES with "_" for ".").
RESNET_MODULES = {"norm1": "in_layers_0", "conv1": "in_layers_2", "time_emb_proj": "emb_layers_1",
                  "norm2": "out_layers_0", "conv2": "out_layers_3",
                  "conv_shortcut": "skip_connection"}
# SD-1/2 U-Nets have one transformer per attention block and no class embedding; SDXL's
# have up to ten and a label embedding.
SDXL_MODULE = re.compile(r"(^|_)transformer_blocks_[1-9]|^label_emb")
FAMILY_NAMES = {"sd-v1": "SD-v1", "sd-v2": "SD-v2"}
FAMILY_OF_CONTEXT = {768: "SD-v1", 1024: "SD-v2"}


def underscored(name: str) -> str:
    return name.replace(".", "_")


class LoraMismatch(BadInput):
    """A LoRA that cannot apply to this model; nothing of it is applied."""


@dataclass
class LoraFile:
    """A LoRA's tensor names and shapes and its metadata (no tensor data needed)."""

    name: str
    shapes: Dict[str, Shape]
    metadata: Dict[str, str] = field(default_factory=dict)

    def modules(self, prefixes: Iterable[str]) -> Dict[str, Dict[str, Shape]]:
        """Module key (``lora_unet_…``) -> {part: shape}, for keys with one of `prefixes`."""
        prefixes = tuple(prefixes)
        found: Dict[str, Dict[str, Shape]] = {}
        for key, shape in self.shapes.items():
            module, _, part = key.partition(".")
            if module.startswith(prefixes):
                found.setdefault(module, {})[part] = tuple(shape)
        return found

    @property
    def unet_modules(self) -> Dict[str, Dict[str, Shape]]:
        return self.modules(UNET_PREFIXES)

    @property
    def text_modules(self) -> Dict[str, Dict[str, Shape]]:
        return self.modules(TEXT_PREFIXES + SDXL_TEXT_PREFIXES)


def is_lora(keys: Iterable[str]) -> bool:
    """Whether tensor names are a LoRA's (kohya/LyCORIS), not a checkpoint's."""
    return any(k.startswith(UNET_PREFIXES + TEXT_PREFIXES + SDXL_TEXT_PREFIXES) for k in keys)


def split_prefix(module: str) -> Tuple[str, str]:
    """(``lora_unet_``, ``input_blocks_4_1_…``) of a U-Net module key."""
    for prefix in UNET_PREFIXES:
        if module.startswith(prefix):
            return prefix, module[len(prefix):]
    raise ValueError("%s is not a U-Net module of a LoRA" % module)


def layout_metadata(arch: Architecture) -> Dict[str, str]:
    """The ``bksdm.*`` metadata that tells which block layout a LoRA's U-Net names follow."""
    metadata = {"bksdm.preset": preset_name(arch), "bksdm.family": arch.teacher.family}
    if preset_name(arch) == CUSTOM:
        metadata[REMOVAL_KEY] = notation(arch)
    return metadata


def declared_layout(metadata: Mapping[str, str], teacher: TeacherSpec) -> Optional[Architecture]:
    """The layout a LoRA's ``bksdm.*`` metadata names, if it names one of this teacher."""
    preset = metadata.get("bksdm.preset")
    removal: Optional[Removal] = None
    if metadata.get(REMOVAL_KEY):
        try:
            removal = removal_from_units(teacher, metadata[REMOVAL_KEY])
        except BadInput:
            return None
    elif preset == TEACHER.name:
        removal = TEACHER
    elif preset in PRESETS:
        removal = PRESETS[preset]
    if removal is None:
        return None
    try:
        return Architecture(teacher, removal)
    except ValueError:
        return None


class BlockNames:
    """A layout's blocks under their underscore names, in both namings."""

    def __init__(self, arch: Architecture) -> None:
        self.arch = arch
        self._ldm = {underscored(b.ldm): b for b in arch.blocks}
        self._diffusers = {underscored(b.diffusers): b for b in arch.blocks
                           if underscored(b.diffusers).startswith(DIFFUSERS_STARTS)}

    def locate(self, name: str) -> Optional[Tuple[Block, str]]:
        """(block, the LDM module path inside it with "_") of a module name, or None."""
        diffusers = name.startswith(DIFFUSERS_STARTS)
        table = self._diffusers if diffusers else self._ldm
        words = name.split("_")
        for cut in range(len(words), 0, -1):
            block = table.get("_".join(words[:cut]))
            if block is not None:
                rest = "_".join(words[cut:])
                if diffusers and block.resnet:
                    rest = RESNET_MODULES.get(rest, rest)
                return block, rest
        return None


class ModelModules:
    """The weight-bearing modules of a U-Net: LDM path (relative to the U-Net) -> weight shape."""

    def __init__(self, shapes: Mapping[str, Shape]) -> None:
        self.shapes = {name: tuple(shape) for name, shape in shapes.items()}
        self._by_underscored = {underscored(name): name for name in self.shapes}

    @classmethod
    def from_state_keys(cls, shapes: Mapping[str, Shape]) -> "ModelModules":
        """From U-Net state-dict keys (``input_blocks.1.1.proj_in.weight``) and shapes."""
        return cls({k[:-len(".weight")]: s for k, s in shapes.items() if k.endswith(".weight")})

    def find(self, underscore_name: str) -> Optional[str]:
        return self._by_underscored.get(underscore_name)


@dataclass
class LoraPlan:
    """Where a LoRA's U-Net modules land in a model."""

    name: str
    layout: Architecture  # the block layout the file's names follow
    model: Architecture
    targets: Dict[str, str]  # module key -> model module (LDM path relative to the U-Net)
    removed: List[str]  # module keys of blocks the model does not have
    unplaced: List[str]  # modules no layout has (A1111 ignores them on the teacher too)
    text: List[str]  # text-encoder module keys, applied as they are
    moved: int = 0  # modules whose block has another number in the model than in the layout

    @property
    def unet_modules(self) -> int:
        return len(self.targets) + len(self.removed) + len(self.unplaced)

    @property
    def adapted(self) -> bool:
        """Whether the file's modules needed the block map: some renumbered or dropped."""
        return bool(self.moved or self.removed)

    def new_names(self) -> Dict[str, str]:
        """Module key -> the key that names its model module in the model's own layout."""
        renamed = {}
        for key, target in self.targets.items():
            prefix, _ = split_prefix(key)
            renamed[key] = prefix + underscored(target)
        return renamed

    def note(self) -> Optional[str]:
        """What a user is told when the file was made for another layout (None otherwise)."""
        if not self.adapted:
            return None
        return "%s — %d of %d modules target blocks this %s does not have" % (
            self.name, len(self.removed), self.unet_modules,
            "student" if not self.model.is_teacher else "model")


@dataclass
class _Trial:
    """One layout tried on a file."""

    layout: Architecture
    targets: Dict[str, str] = field(default_factory=dict)
    removed: List[str] = field(default_factory=list)
    unknown: List[str] = field(default_factory=list)
    misfits: List[str] = field(default_factory=list)  # why, one line per module
    moved: int = 0


def plan_lora(lora: LoraFile, model: Architecture, modules: ModelModules) -> LoraPlan:
    """Decide the file's layout and place its U-Net modules on `model`; LoraMismatch when
    it is another family's, or fits no layout."""
    _check_family(lora, model)
    unet = lora.unet_modules
    text = sorted(lora.text_modules)
    candidates = _candidates(lora.metadata, model)
    trials = [_try(layout, model, unet, modules) for layout in candidates]
    everywhere_unknown = set.intersection(*(set(t.unknown) for t in trials)) if trials else set()
    for trial in trials:
        if not trial.misfits and set(trial.unknown) <= everywhere_unknown:
            return LoraPlan(lora.name, trial.layout, model, trial.targets, sorted(trial.removed),
                            sorted(trial.unknown), text, trial.moved)
    raise LoraMismatch(_no_fit_message(lora, model, trials, everywhere_unknown))


def _candidates(metadata: Mapping[str, str], model: Architecture) -> List[Architecture]:
    """The layouts to try, in order: the declared one, the teacher's, the model's own."""
    layouts = [declared_layout(metadata, model.teacher), Architecture(model.teacher), model]
    unique: List[Architecture] = []
    for layout in layouts:
        if layout is not None and all(layout.kept() != u.kept() for u in unique):
            unique.append(layout)
    return unique


def _try(layout: Architecture, model: Architecture, unet: Mapping[str, Mapping[str, Shape]],
         modules: ModelModules) -> _Trial:
    names = BlockNames(layout)
    model_block = {b.origin: b for b in model.blocks}
    trial = _Trial(layout)
    for key, parts in sorted(unet.items()):
        found = names.locate(split_prefix(key)[1])
        if found is None:
            trial.unknown.append(key)
            continue
        block, rest = found
        target_block = model_block.get(block.origin)
        if target_block is None:
            trial.removed.append(key)
            continue
        target = modules.find(underscored(target_block.ldm) + ("_" + rest if rest else ""))
        if target is None:
            trial.unknown.append(key)
        elif not fits(parts, modules.shapes[target]):
            trial.misfits.append("%s does not fit %s (%s)" % (
                key, target, "x".join(map(str, modules.shapes[target]))))
        else:
            trial.targets[key] = target
            trial.moved += target_block.ldm != block.ldm
    return trial


def fits(parts: Mapping[str, Shape], weight: Shape) -> bool:
    """Whether a module's tensors (of any network type A1111 handles) fit a weight of this
    shape: its output width, and its input width where the parts tell it."""
    if "diff" in parts:
        return parts["diff"][0] == weight[0] and math.prod(parts["diff"]) == math.prod(weight)
    if "w_norm" in parts:
        return tuple(parts["w_norm"]) == tuple(weight)
    if "weight" in parts and "on_input" in parts:  # IA3 scales the input or the output side
        return parts["weight"][0] in weight[:2]
    out, into = _widths(parts)
    if out is not None and out != weight[0]:
        return False
    if into is not None and len(weight) > 1 and into not in (weight[1], math.prod(weight[1:])):
        return False
    return True


def _widths(p: Mapping[str, Shape]) -> Tuple[Optional[int], Optional[int]]:
    """(output, input) width a module's tensors were made for; None where they do not say."""
    if "lora_up.weight" in p and "lora_down.weight" in p:
        return p["lora_up.weight"][0], p["lora_down.weight"][1]
    if "lora_B.weight" in p and "lora_A.weight" in p:
        return p["lora_B.weight"][0], p["lora_A.weight"][1]
    if "hada_w1_a" in p and "hada_w1_b" in p:
        return p["hada_w1_a"][1 if "hada_t1" in p else 0], p["hada_w1_b"][1]
    if ("lokr_w1" in p or "lokr_w1_a" in p) and ("lokr_w2" in p or "lokr_w2_a" in p):
        out1, in1 = (p["lokr_w1"][:2] if "lokr_w1" in p
                     else (p["lokr_w1_a"][0], p["lokr_w1_b"][1]))
        if "lokr_w2" in p:
            out2, in2 = p["lokr_w2"][:2]
        else:
            out2, in2 = p["lokr_w2_a"][1 if "lokr_t2" in p else 0], p["lokr_w2_b"][1]
        return out1 * out2, in1 * in2
    if "b2.weight" in p and "b1.weight" in p:  # GLoRA
        return p["b2.weight"][0], p["b1.weight"][1]
    if "oft_blocks" in p:  # (blocks, size, size); BOFT (m, blocks, size, size)
        blocks = p["oft_blocks"][-3:]
        return blocks[0] * blocks[1], None
    if "oft_diag" in p:
        return p["oft_diag"][0] * p["oft_diag"][1], None
    return None, None


def _check_family(lora: LoraFile, model: Architecture) -> None:
    """Refuse SDXL LoRAs and LoRAs of the other SD family, with what they are."""
    metadata = lora.metadata
    base = str(metadata.get("ss_base_model_version", "")) + " " + \
        str(metadata.get("modelspec.architecture", ""))
    if "sdxl" in base or "stable-diffusion-xl" in base or \
            any(k.startswith(SDXL_TEXT_PREFIXES) for k in lora.shapes) or \
            any(SDXL_MODULE.search(split_prefix(m)[1]) for m in lora.unet_modules):
        raise LoraMismatch("%s is an SDXL LoRA; BK-SDM students are SD-v1/v2 models: use a "
                           "LoRA made for %s" % (lora.name, _family_name(model)))
    claimed = metadata.get("bksdm.family")
    if claimed and claimed != model.teacher.family:
        raise LoraMismatch("%s was made for an %s model and this one is %s: use a LoRA made for "
                           "%s" % (lora.name, FAMILY_NAMES.get(claimed, claimed),
                                   _family_name(model), _family_name(model)))
    width = context_width(lora)
    if width is not None and width != model.teacher.context_dim:
        raise LoraMismatch("%s was made for %s (text conditioning %d wide) and this model is %s "
                           "(%d): use a LoRA made for %s" % (
                               lora.name, FAMILY_OF_CONTEXT.get(width, "another model"), width,
                               _family_name(model), model.teacher.context_dim,
                               _family_name(model)))


def context_width(lora: LoraFile) -> Optional[int]:
    """The text-conditioning width the LoRA's cross-attention key/value modules expect."""
    for key, parts in lora.unet_modules.items():
        if key.endswith(("attn2_to_k", "attn2_to_v")):
            width = _widths(parts)[1]
            if width is not None:
                return width
    return None


def _family_name(model: Architecture) -> str:
    return FAMILY_NAMES[model.teacher.family]


def _no_fit_message(lora: LoraFile, model: Architecture, trials: List[_Trial],
                    ignored: set) -> str:
    reasons = []
    for trial in trials:
        what = "the teacher's blocks" if trial.layout.is_teacher else \
            "the blocks of BK-SDM '%s'" % preset_name(trial.layout)
        problems = trial.misfits + ["%s names no module there" % k for k in trial.unknown
                                    if k not in ignored]
        reasons.append("%s: %d modules do not fit, e.g. %s" % (what, len(problems), problems[0]))
    return ("%s fits no block layout of this model (%s), so none of it is applied; use a LoRA "
            "made for %s or for this student" % (lora.name, "; ".join(reasons),
                                                  _family_name(model)))
