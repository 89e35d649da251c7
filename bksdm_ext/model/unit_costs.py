"""What each removable unit costs: parameters and the FLOPs of one U-Net step.

Both come from the teacher's tensor shapes alone (no model is built), so the Convert
tab can show a student's size and estimated speed the moment blocks are picked.  FLOPs
count the multiply-adds of convolutions, linear layers and attention products (norms and
activations are left out: they are a few percent); the ratio of a student's FLOPs to its
teacher's is the step-time estimate shown until a latency measurement exists.
"""
import math
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

from .arch import Architecture, Block, Origin
from .blocks import INNERMOST, MID, notation, removed_units, teacher_units
from .checkpoint import Checkpoint
from .detect import inspect_checkpoint
from .keymap import UNET_PREFIX, KeyMap

CONTEXT_TOKENS = 77  # CLIP's prompt length: what cross-attention attends to


class UnitCosts:
    """Parameters and FLOPs per teacher block of one checkpoint's U-Net."""

    def __init__(self, ckpt: Checkpoint, arch: Architecture) -> None:
        self.arch = arch
        self.teacher = Architecture(arch.teacher)
        self.params: Dict[Origin, int] = {}
        self.flops: Dict[Origin, float] = {}
        keymap = KeyMap(arch)
        for key in ckpt.keys():
            if not key.startswith(UNET_PREFIX):
                continue
            found = keymap.block_of(key[len(UNET_PREFIX):], "ldm")
            if found is None:
                continue
            block, rest = found
            origin = block.origin  # blocks are named by their teacher origin
            shape = ckpt.shape(key)
            self.params[origin] = self.params.get(origin, 0) + math.prod(shape)
            self.flops[origin] = self.flops.get(origin, 0.0) + self._tensor_flops(
                origin, rest, shape)
        for block in arch.blocks:
            if block.origin[-1] == "attention":
                self.flops[block.origin] += self._attention_flops(ckpt, block)

    # -- totals -------------------------------------------------------------------
    def student_params(self, student: Architecture) -> int:
        return sum(self.params.get(t.origin, 0) for _, t in student.weight_map())

    def student_flops(self, student: Architecture) -> float:
        return sum(self.flops.get(t.origin, 0.0) for _, t in student.weight_map())

    def speed_ratio(self, student: Architecture) -> float:
        """Estimated U-Net step time of `student` relative to the full teacher (FLOPs ratio)."""
        return self.student_flops(student) / self.student_flops(self.teacher)

    def unit(self, name: str) -> Tuple[int, float]:
        """(parameters, FLOPs) of one unit, counted in the teacher."""
        origins = [b.origin for b in self.teacher.blocks if _in_unit(b.origin, name, self.arch)]
        return (sum(self.params.get(o, 0) for o in origins),
                sum(self.flops.get(o, 0.0) for o in origins))

    # -- FLOPs of one step, batch 1 ------------------------------------------------
    def _tokens(self, stage: int) -> int:
        side = self.arch.teacher.sample_size
        return max(1, side >> stage) ** 2

    def _resolution(self, origin: Origin) -> int:
        """Pixels the block's weights are applied at (its output resolution)."""
        kind = origin[0]
        if kind in ("down", "up"):
            return self._tokens(origin[1])
        if kind == "downsample":
            return self._tokens(origin[1] + 1)
        if kind == "upsample":
            return self._tokens(origin[1] - 1)
        if kind == "mid":
            return self._tokens(self.arch.teacher.stages - 1)
        if kind == "time_embed":
            return 1
        return self._tokens(0)  # conv_in, out

    def _tensor_flops(self, origin: Origin, rest: str, shape: Tuple[int, ...]) -> float:
        if rest.split(".")[-1] != "weight" or len(shape) not in (2, 4):
            return 0.0  # biases, norms
        tokens = self._resolution(origin)
        if rest.startswith("emb_layers."):
            tokens = 1  # the time embedding is projected once per sample
        elif ".attn2.to_k." in rest or ".attn2.to_v." in rest:
            tokens = CONTEXT_TOKENS
        return 2.0 * math.prod(shape) * tokens

    def _attention_flops(self, ckpt: Checkpoint, block: Block) -> float:
        """Q·K and attention·V of self- and cross-attention (what no weight shows)."""
        width = ckpt.shape(UNET_PREFIX + block.ldm + ".proj_in.weight")[0]
        tokens = self._resolution(block.origin)
        return 4.0 * tokens * width * (tokens + CONTEXT_TOKENS)


def _in_unit(origin: Origin, unit: str, arch: Architecture) -> bool:
    last = arch.teacher.stages - 1
    kind = origin[0]
    if unit == MID:
        return kind == "mid"
    if unit == INNERMOST:
        return (kind in ("down", "up", "upsample") and origin[1] == last) or \
            (kind == "downsample" and origin[1] == last - 1)
    side, stage, layer = unit.split(".")
    return kind == side and origin[1] == int(stage) and origin[2] == int(layer)


def describe_blocks(path: Union[str, Path], v_prediction: Optional[bool] = None
                    ) -> Dict[str, Any]:
    """``bksdm info --blocks``: every unit of the file's teacher with its parameters and
    share of a step, and whether this file (a teacher or a student) still has it."""
    ckpt = Checkpoint(path)
    info = inspect_checkpoint(ckpt, v_prediction)
    costs = UnitCosts(ckpt, info.arch)
    removed = set(removed_units(info.arch))
    # A student lacks the removed blocks' weights, so only a teacher knows the whole step.
    step = None if info.is_student else costs.student_flops(info.arch)
    rows: List[Dict[str, Any]] = []
    for name in teacher_units(info.arch.teacher):
        kept = name not in removed and not _inside_removed_stage(name, info.arch)
        params, flops = costs.unit(name)
        row: Dict[str, Any] = {"unit": name, "kept": kept, "params": params}
        if step:
            row["step_share"] = round(flops / step, 4)
        rows.append(row)
    return {"file": str(info.path), "model": info.preset, "removed": notation(info.arch),
            "units": rows}


def _inside_removed_stage(unit: str, arch: Architecture) -> bool:
    parts = unit.split(".")
    return len(parts) == 3 and int(parts[1]) >= arch.stages


def unit_rows(rows: Iterable[Dict[str, Any]]) -> str:
    """The table `describe_blocks` returns, as text."""
    lines = ["%-12s %5s %14s %8s" % ("unit", "kept", "parameters", "of step")]
    for row in rows:
        lines.append("%-12s %5s %14s %8s" % (
            row["unit"], "yes" if row["kept"] else "no",
            format(row["params"], ",") if "params" in row else "-",
            "%.1f%%" % (100 * row["step_share"]) if "step_share" in row else "-"))
    return "\n".join(lines)
