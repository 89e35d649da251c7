"""A student U-Net seen through its teacher's block lists, for code written for the teacher.

sd-webui-controlnet (and any code built the same way) walks ``input_blocks``, then
``middle_block``, then ``output_blocks``, and adds one control residual per teacher
skip connection plus one after the middle block, pairing them from the end.  A student
has fewer blocks, so the pairs drift.  `TeacherLayoutView` presents the student with the
teacher's lists: position k of ``input_blocks`` is the teacher's input block k, served by
the student block initialised from it (the conversion's weight map) or by nothing when
the student removed it.  The walker's additions are taken as what they were made for:

* a control residual made for teacher input block k goes to the skip connection of the
  student block that came from k, and is dropped when the student has no such block;
* the middle residual is added where the teacher's middle output would have been, the
  bottom feature before the output blocks (with or without a middle block, that is the
  feature the student was distilled to produce there); a student without the teacher's
  innermost stage (Tiny) has no feature at the middle's resolution: its bottom stands in
  for the teacher's output after the whole removed stage, so the residual is dropped;
* an addition to the encoder features after a stage's last layer (a T2I-Adapter's) goes
  to the output of the student's last layer of that stage, its skip connection included,
  as diffusers adds ``down_intrablock_additional_residuals`` to the last layer of a down
  block; one for a removed stage is dropped.

The walker's own arithmetic is kept exactly: each position hands back zeros, so what the
walker adds to them (after its own scaling, resizing, summing of several units) is read
back unchanged and added to the student's real features.
"""
import re
from dataclasses import dataclass
from functools import partial
from typing import Any, Dict, Optional, Tuple

import torch

from .arch import Architecture

_INPUT_BLOCK = re.compile(r"^input_blocks\.(\d+)\.0(\.op)?$")


@dataclass(frozen=True)
class TeacherLayout:
    """Where the teacher's encoder positions are in a student.

    ``skip_sources[k]``: the student input block initialised from teacher input block k,
    or None when the student removed it.  ``widths[k]``/``depths[k]``: the channels of
    the teacher's feature after input block k and how many times it was downsampled.
    ``stage_ends[s]``: the teacher input block that ends down stage s (its last layer).
    ``kept_stages``: how many stages, outermost first, the student keeps.
    ``middle_residual``: whether the residual after the teacher's middle block has a
    place in the student.
    """

    skip_sources: Tuple[Optional[int], ...]
    widths: Tuple[int, ...]
    depths: Tuple[int, ...]
    stage_ends: Tuple[int, ...]
    kept_stages: int
    middle_residual: bool

    @property
    def positions(self) -> int:
        return len(self.skip_sources)

    def stage_ending_at(self, k: int) -> Optional[int]:
        return self.stage_ends.index(k) if k in self.stage_ends else None


def teacher_layout(arch: Architecture) -> TeacherLayout:
    """The layout of `arch`'s student, read from the weight map (custom removals included)."""
    sources: Dict[int, int] = {}
    for student, teacher in arch.weight_map():
        s_match, t_match = _INPUT_BLOCK.match(student.ldm), _INPUT_BLOCK.match(teacher.ldm)
        if s_match and t_match:
            sources[int(t_match.group(1))] = int(s_match.group(1))
    full = Architecture(arch.teacher)
    widths, depths, ends = [], [], []
    for block in full.blocks:
        origin = block.origin
        if origin[0] == "conv_in":
            widths.append(arch.teacher.model_channels)
            depths.append(0)
        elif origin[0] == "downsample":
            widths.append(widths[-1])
            depths.append(origin[1] + 1)
        elif origin[0] == "down" and origin[3] == "resnet":
            widths.append(full.channels[origin[1]])
            depths.append(origin[1])
            if origin[2] == arch.teacher.layers_per_stage - 1:
                ends.append(len(widths) - 1)
    return TeacherLayout(
        skip_sources=tuple(sources.get(k) for k in range(len(widths))),
        widths=tuple(widths),
        depths=tuple(depths),
        stage_ends=tuple(ends),
        kept_stages=arch.stages,
        middle_residual=arch.stages == arch.teacher.stages,
    )


class TeacherLayoutView:
    """`unet` (an LDM ``UNetModel`` of a student) with the teacher's ``input_blocks``,
    ``middle_block`` and ``output_blocks``; every other attribute is the student's.

    Each list entry is called as an LDM block is, ``(h, emb, context)``, in the teacher's
    order: input positions 0..n-1, the middle, output positions 0..n-1 (output position j
    receives the walker's ``cat([h, skip of input position n-1-j])``).  The real features
    live in the view between the calls; see the module docstring for where the walker's
    additions go.
    """

    _OWN = ("_unet", "_layout", "input_blocks", "middle_block", "output_blocks", "_h",
            "_skips", "_zeros", "_handed", "_next_output")

    def __init__(self, unet: torch.nn.Module, layout: TeacherLayout) -> None:
        n = layout.positions
        set_own = partial(object.__setattr__, self)
        set_own("_unet", unet)
        set_own("_layout", layout)
        set_own("input_blocks", [partial(self._input, k) for k in range(n)])
        set_own("middle_block", self._middle)
        set_own("output_blocks", [partial(self._output, j) for j in range(n)])
        self._reset()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._unet, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._OWN:
            object.__setattr__(self, name, value)
        else:  # what the walker records on the U-Net (current shapes, flags) stays there
            setattr(self._unet, name, value)

    def _reset(self) -> None:
        self._h: Optional[torch.Tensor] = None
        self._skips: Dict[int, torch.Tensor] = {}
        self._zeros: Dict[Tuple[Any, ...], torch.Tensor] = {}
        self._handed: Optional[torch.Tensor] = None  # what the last position gave back
        self._next_output = 0

    def _zeros_at(self, k: int) -> torch.Tensor:
        """Zeros shaped as the teacher's feature at input position k (its middle: k = n)."""
        layout, h = self._layout, self._h
        k = min(k, layout.positions - 1)
        height, width = h.shape[-2:]
        for _ in range(layout.depths[k] - (layout.kept_stages - 1)):  # stages the student lacks
            height, width = (height + 1) // 2, (width + 1) // 2
        shape = (h.shape[0], layout.widths[k], height, width)
        key = (shape, h.dtype, h.device)
        if key not in self._zeros:
            self._zeros[key] = h.new_zeros(shape)
        self._handed = self._zeros[key]
        return self._handed

    def _input(self, k: int, h: torch.Tensor, emb: torch.Tensor, context: Any) -> torch.Tensor:
        layout = self._layout
        if k == 0:
            self._reset()
            self._h = h  # the U-Net's input, as the walker prepared it
        else:
            self._take_stage_addition(k - 1, h)
        source = layout.skip_sources[k]
        if source is not None:
            self._h = self._unet.input_blocks[source](self._h, emb, context)
            self._skips[k] = self._h
        return self._zeros_at(k)

    def _take_stage_addition(self, k: int, h: torch.Tensor) -> None:
        """The walker changed what position k gave back: its addition after stage end k."""
        if h is self._handed:
            return
        stage = self._layout.stage_ending_at(k)
        if stage is None or stage >= self._layout.kept_stages:
            return
        self._h = self._h + h
        if self._layout.skip_sources[k] is None:
            # The stage's last layer is gone: its last kept layer's output is the stage's
            # output, skip connection included (the walker's own copy of it is dropped).
            last_kept = max(j for j in self._skips if j <= k)
            self._skips[last_kept] = self._h

    def _middle(self, h: torch.Tensor, emb: torch.Tensor, context: Any) -> torch.Tensor:
        self._take_stage_addition(self._layout.positions - 1, h)
        self._h = self._unet.middle_block(self._h, emb, context)
        return self._zeros_at(self._layout.positions)

    def _output(self, j: int, h: torch.Tensor, emb: torch.Tensor, context: Any) -> torch.Tensor:
        layout = self._layout
        handed = self._handed.shape[1]  # type: ignore[union-attr]
        if j == 0 and layout.middle_residual:
            self._h = self._h + h[:, :handed]  # zeros plus the middle residual
        k = layout.positions - 1 - j
        if layout.skip_sources[k] is not None:
            skip = self._skips.pop(k) + h[:, handed:]
            x = self._h
            if x.shape[-2:] != skip.shape[-2:]:  # as A1111's U-Net resizes (sides not /64)
                x = torch.nn.functional.interpolate(x, skip.shape[-2:], mode="nearest")
            self._h = self._unet.output_blocks[self._next_output](torch.cat([x, skip], dim=1),
                                                                  emb, context)
            self._next_output += 1
        self._handed = self._h
        return self._h

