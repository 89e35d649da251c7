"""A distilled student plus what a fine-tune changed in its base: the short road to a
BK-SDM version of a user's own model.  The fine-tune may be a LoRA made for the base: its
merged difference is carried the same way (lora_merge), text-encoder part included.

Most checkpoints people load are fine-tunes or merges of SD-1.5 / SD-2.1, whose distilled
students exist.  For every tensor the student keeps, the output is
``student + alpha * (finetune - base)``, the difference taken at the teacher tensor the
weight map names; text encoder and VAE come from the fine-tune.  Like `convert`, it
streams tensor by tensor from memory-mapped files and writes under a temporary name.
"""
import math
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch

from ..errors import BadInput
from .arch import Architecture
from .checkpoint import Checkpoint
from .blocks import which_student
from .convert import (Progress, teacher_origin, teacher_parts, torch_dtype, unet_sources,
                      with_arch_key, write_student)
from .detect import ModelInfo, config_path, inspect_checkpoint
from .hashing import a1111_sha256
from .keymap import UNET_PREFIX, KeyMap
from .lora_keymap import is_lora
from .lora_merge import MergedLora, lora_warnings
from .safetensors_io import TensorOut, tensor_bytes
from .staging import check_writable
from ..settings import Range, check_ranges, setting

# Below this share of the fine-tune's U-Net change in kept blocks, the user is told that
# the transplant misses most of it.
MOSTLY_REMOVED = 0.5
# How much of the difference is carried: 1 is all of it, 0 none, negative values take it
# away; ten times the change a fine-tune made is far past any useful model.
ALPHA = Range(-10.0, 10.0, "times the fine-tune's difference; 1.0 carries all of it")


@dataclass
class TransplantSettings:
    """What `bksdm transplant` (and the Convert tab's "Start from") choose besides the files
    and --dtype (`ConversionSettings`)."""

    alpha: float = setting(1.0, "how much of the difference to carry (default {default})",
                           label="Share of the difference (α)", range=ALPHA)

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass
class BlockChange:
    """How much the fine-tune changed one teacher block: ||MINE - BASE|| / ||BASE||."""

    block: str  # teacher block, LDM naming (input_blocks.4, middle_block, ...)
    relative: float
    carried: bool  # False: the student removed the block, its change is lost


@dataclass
class TransplantReport:
    preset: str
    family: str
    parameterization: str
    alpha: float
    student: str
    base: str
    finetune: str
    output: str
    config: str
    dtype: str
    unet_params: int
    carried_share: float  # share of the fine-tune's squared U-Net change the student keeps
    blocks: List[BlockChange] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    seconds: float = 0.0
    lora: bool = False  # the fine-tune was a LoRA made for the base, merged at strength alpha

    def as_dict(self) -> Dict[str, Any]:
        return with_arch_key(asdict(self))


def transplant(student: Union[str, Path], base: Union[str, Path],
               finetune: Union[str, Path, Checkpoint], output: Union[str, Path],
               alpha: float = TransplantSettings.alpha, dtype: str = "fp16",
               overwrite: bool = False,
               progress: Optional[Progress] = None,
               finetune_v_prediction: Optional[bool] = None) -> TransplantReport:
    """Write `output` (.safetensors + .yaml): `student` + alpha·(`finetune` − `base`).
    `finetune` may be a `Checkpoint` of weights in memory (a WebUI merge not saved, whose
    parameterization only the WebUI knows: `finetune_v_prediction`)."""
    started = time.perf_counter()
    output = Path(output)
    cast = torch_dtype(dtype)
    ALPHA.check("alpha", alpha)
    if output.suffix != ".safetensors":
        raise BadInput("%s: the output must be a .safetensors file" % output)
    mine = finetune if isinstance(finetune, Checkpoint) else Checkpoint(finetune)
    original = Checkpoint(base)
    lora = MergedLora(original, mine, alpha) if is_lora(mine.keys()) else None
    mine = lora or mine
    carry = 1.0 if lora else alpha  # a LoRA is merged at strength alpha already
    sources = [Checkpoint(student), original, mine]
    for source in sources:
        if output.resolve() == source.path.resolve() or \
                config_path(output).resolve() == config_path(source.path).resolve():
            raise BadInput("%s: the output would replace %s or its yaml; choose another name"
                           % (output, source.path))
    check_writable([output, config_path(output)], overwrite)
    pupil, original, changed = sources
    infos = [inspect_checkpoint(pupil), inspect_checkpoint(original),
             inspect_checkpoint(changed, finetune_v_prediction)]
    _check_roles(*infos)
    arch = which_student(infos[2].arch.teacher, infos[0].arch.removal)
    pairs = _matched_keys(pupil, original, changed, arch)
    base_sha256 = a1111_sha256(original.path)
    warnings = _base_warnings(pupil, original, base_sha256)

    change = _BlockTally(Architecture(arch.teacher))
    unet = [_sum_out(name, pupil, original, changed, teacher_key, carry, cast, change)
            for name, teacher_key in pairs.items()]
    carried = set(pairs.values())
    for key in changed.keys():
        if key.startswith(UNET_PREFIX) and key not in carried:
            change.add(key, changed, original, carried=False)
            changed.release(key)
            original.release(key)
    # the student now stands for MINE: distil from it (for a LoRA: its base, with the LoRA)
    origin = teacher_origin(original if lora else changed)
    if lora:
        origin["bksdm.transplant_lora"] = changed.path.name
        warnings += lora_warnings(lora)
    origin.update({"bksdm.transplant_student": pupil.path.name,
                   "bksdm.transplant_student_sha256": a1111_sha256(pupil.path),
                   "bksdm.transplant_base": original.path.name,
                   "bksdm.transplant_base_sha256": base_sha256,
                   "bksdm.transplant_finetune": changed.path.name,
                   "bksdm.transplant_alpha": repr(float(alpha))})
    write_student(output, arch, teacher_parts(changed) + unet, infos[2].config, origin,
                  overwrite, progress)
    warnings += change.warnings()
    return TransplantReport(
        preset=arch.removal.name, family=arch.teacher.family,
        parameterization=arch.teacher.parameterization, alpha=float(alpha),
        student=str(pupil.path), base=str(original.path), finetune=str(changed.path),
        output=str(output), config=str(config_path(output)),
        dtype=str(unet[0].dtype).replace("torch.", ""),
        unet_params=sum(math.prod(t.shape) for t in unet),
        carried_share=change.carried_share(), blocks=change.blocks(), warnings=warnings,
        seconds=round(time.perf_counter() - started, 3), lora=lora is not None)


def _check_roles(student: ModelInfo, base: ModelInfo, finetune: ModelInfo) -> None:
    """A student and two teachers of one family, parameterization and width."""
    if not student.is_student:
        raise BadInput("%s: not a BK-SDM student (it has the full teacher U-Net); pass a "
                       "distilled student as --student" % student.path)
    for role, info in (("--base", base), ("--finetune", finetune)):
        if info.is_student:
            raise BadInput("%s: a BK-SDM '%s' student, but %s must be a full SD model (a "
                           "teacher)" % (info.path, info.preset, role))
    for role, info in (("--base", base), ("--finetune", finetune)):
        if info.arch.teacher.inpainting != student.arch.teacher.inpainting:
            raise BadInput("%s: %s, but the student %s is %s; pick a %s of the same kind"
                           % (info.path, _kind(info), student.path.name, _kind(student),
                              role[2:]))
        for what in ("family", "parameterization"):
            if getattr(info, what) != getattr(student, what):
                raise BadInput("%s: %s %s, but the student %s is %s; pick a %s of the same %s"
                               % (info.path, what, getattr(info, what), student.path.name,
                                  getattr(student, what), role[2:], what))


def _kind(info: ModelInfo) -> str:
    return ("an inpainting model (9 U-Net input channels)" if info.arch.teacher.inpainting
            else "a text-to-image model (4 U-Net input channels)")


def _matched_keys(student: Checkpoint, base: Checkpoint, finetune: Checkpoint,
                  arch: Architecture) -> "OrderedDict[str, str]":
    """Student key -> teacher key, after checking that the three U-Nets fit together."""
    base_unet = {k: base.shape(k) for k in base.keys() if k.startswith(UNET_PREFIX)}
    mine_unet = {k: finetune.shape(k) for k in finetune.keys() if k.startswith(UNET_PREFIX)}
    if base_unet != mine_unet:
        odd = sorted(set(base_unet) ^ set(mine_unet)) or \
            sorted(k for k in base_unet if base_unet[k] != mine_unet[k])
        raise BadInput("%s: its U-Net does not have the layout of %s (first difference: %s); "
                       "the fine-tune must be a fine-tune of that base"
                       % (finetune.path, base.path.name, odd[0]))
    pairs = OrderedDict(sorted(unet_sources(base, arch).items()))
    own = {k: student.shape(k) for k in student.keys() if k.startswith(UNET_PREFIX)}
    for name in sorted(set(own) | set(pairs)):
        wanted = base_unet[pairs[name]] if name in pairs else None
        if own.get(name) != wanted:
            raise BadInput("%s: its U-Net does not fit %s (%s: %s in the student, %s through "
                           "the BK-SDM '%s' map); the student was not made from a model of "
                           "this size" % (student.path, base.path.name, name,
                                          own.get(name, "missing"), wanted or "not expected",
                                          arch.removal.name))
    return pairs


def _base_warnings(student: Checkpoint, base: Checkpoint, base_sha256: str) -> List[str]:
    """Whether BASE is the teacher the student records."""
    recorded = student.metadata.get("bksdm.teacher_sha256")
    name = student.metadata.get("bksdm.teacher", "")
    if not recorded:
        return ["%s does not record its teacher: make sure %s is the model it was distilled "
                "from (nota-ai's v1 students: SD-v1.4; v2: SD-v2.1-base)"
                % (student.path.name, base.path.name)]
    if recorded != base_sha256:
        return ["%s is not the student's recorded teacher (%s): the difference is taken from "
                "another model than the student learned from" % (base.path.name, name or recorded)]
    return []


def _sum_out(name: str, student: Checkpoint, base: Checkpoint, finetune: Checkpoint,
             teacher_key: str, alpha: float, dtype: Optional[torch.dtype],
             change: "_BlockTally") -> TensorOut:
    """Student tensor `name` + alpha·(fine-tune − base) at `teacher_key`, computed when written."""
    own_dtype = student.dtype(name)
    out_dtype = dtype if dtype is not None and own_dtype.is_floating_point else own_dtype

    def compute() -> memoryview:
        delta = change.add(teacher_key, finetune, base, carried=True)
        value = student.tensor(name)
        if value.is_floating_point():  # in float64: rounded once, to the output dtype
            value = value.double() + alpha * delta
        value = value.to(out_dtype)
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise BadInput("%s: %s would hold inf or NaN (the student's tensor + %s x the "
                           "fine-tune's difference does not fit %s); nothing was written: use "
                           "an --alpha nearer 1 or --dtype fp32, and check that the three files "
                           "hold finite weights" % (student.path, name, float(alpha),
                                                    str(out_dtype).replace("torch.", "")))
        data = tensor_bytes(value)
        for ckpt, key in ((student, name), (finetune, teacher_key), (base, teacher_key)):
            ckpt.release(key)
        return data

    return TensorOut(name, out_dtype, student.shape(name), compute)


class _BlockTally:
    """Squared norms of the fine-tune's change and of the base, per teacher block."""

    def __init__(self, teacher: Architecture) -> None:
        self._keymap = KeyMap(teacher)
        self._change: Dict[str, float] = {}
        self._size: Dict[str, float] = {}
        self._carried: Dict[str, bool] = {}

    def add(self, key: str, finetune: Checkpoint, base: Checkpoint, carried: bool
            ) -> torch.Tensor:
        """Count the change of tensor `key`; returns it (float64)."""
        original = base.tensor(key)
        delta = finetune.tensor(key).double() - original.double()
        if original.is_floating_point():
            block = _coarse(self._keymap.find(key[len(UNET_PREFIX):], "ldm")[0].ldm)
            self._change[block] = self._change.get(block, 0.0) + _squared_norm(delta)
            self._size[block] = self._size.get(block, 0.0) + _squared_norm(original)
            self._carried[block] = self._carried.get(block, False) or carried
        return delta

    def blocks(self) -> List[BlockChange]:
        order = [_coarse(b.ldm) for b in self._keymap.arch.blocks]
        seen = list(OrderedDict.fromkeys(b for b in order if b in self._change))
        return [BlockChange(b, math.sqrt(self._change[b] / self._size[b]) if self._size[b] else 0.0,
                            self._carried[b]) for b in seen]

    def carried_share(self) -> float:
        total = sum(self._change.values())
        kept = sum(v for b, v in self._change.items() if self._carried[b])
        return kept / total if total else 1.0

    def warnings(self) -> List[str]:
        if not sum(self._change.values()):
            return ["the fine-tune's U-Net equals the base's: the student is carried over "
                    "unchanged (text encoder and VAE still come from the fine-tune)"]
        share = self.carried_share()
        if share < MOSTLY_REMOVED:
            return ["the fine-tune changed mostly blocks the student removed: only %.0f%% of "
                    "its U-Net change is carried over; distil from it (bksdm distill "
                    "--init-student) to recover the rest" % (100 * share)]
        return []


def _squared_norm(tensor: torch.Tensor) -> float:
    return torch.linalg.vector_norm(tensor, dtype=torch.float64).item() ** 2


def _coarse(ldm_block: str) -> str:
    """The block a user recognises: input_blocks.4 rather than input_blocks.4.1."""
    parts = ldm_block.split(".")
    return ".".join(parts[:2]) if parts[0] in ("input_blocks", "output_blocks") else parts[0]
