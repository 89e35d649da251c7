"""The one architecture spec that every other part of BK-SDM derives from.

A student is its teacher with whole blocks removed.  So a model is described by a
teacher (`TeacherSpec`: widths, heads, context size, parameterization) plus which
teacher blocks are kept (`Removal`).  From that pair alone come the student's
diffusers config, its LDM ``unet_config`` params, the block layout in both key
namings (which gives the LDM <-> diffusers key map and the teacher -> student
weight map) and the feature-KD layer pairs.  The paper's presets are data;
a custom removal is a new `Removal`, not new code.
"""
from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Optional, Tuple

from ..settings import Setting

# Why a block exists, in teacher terms.  Student blocks carry the origin of the teacher
# block they are initialised from, so the weight map is a join on origins.
Origin = Tuple[Any, ...]


@dataclass(frozen=True)
class TeacherSpec:
    """The numbers that tell SD-v1, SD-v2 and the tiny models of the tests apart."""

    family: str  # "sd-v1" or "sd-v2"
    parameterization: str = "eps"  # "eps" or "v"
    model_channels: int = 320
    channel_mult: Tuple[int, ...] = (1, 2, 4, 4)
    attention_levels: Tuple[bool, ...] = (True, True, True, False)
    layers_per_stage: int = 2
    context_dim: int = 768
    num_heads: int = 8  # used when head_channels is 0 (SD-v1: 8 heads everywhere)
    head_channels: int = 0  # SD-v2: heads of 64 channels
    linear_projection: bool = False
    in_channels: int = 4
    out_channels: int = 4
    sample_size: int = 64  # latent side: 64 for 512 px models, 96 for 768 px

    @property
    def stages(self) -> int:
        return len(self.channel_mult)

    @property
    def inpainting(self) -> bool:
        """An inpainting U-Net: the latent, the mask and the masked image's latent in (4+1+4)."""
        return self.in_channels == 9

    def heads(self, channels: int) -> int:
        return channels // self.head_channels if self.head_channels else self.num_heads


# What a teacher's file may not say: whether it predicts v.  Every command that reads a
# teacher takes it (inspect_checkpoint's v_prediction; None: the yaml beside it decides).
V_PREDICTION = Setting("the teacher predicts v (SD-2.x 768 px models; --no-v-prediction: "
                       "epsilon); default: from the .yaml beside the file, else epsilon")

SD_V1 = TeacherSpec(family="sd-v1")
SD_V2_512 = TeacherSpec(
    family="sd-v2", context_dim=1024, num_heads=0, head_channels=64, linear_projection=True
)
SD_V2_768_V = replace(SD_V2_512, parameterization="v", sample_size=96)
TEACHERS = {"sd-v1": SD_V1, "sd-v2-512": SD_V2_512, "sd-v2-768-v": SD_V2_768_V}


@dataclass(frozen=True)
class Removal:
    """Which teacher blocks a student keeps.

    ``down_layers``/``up_layers`` are the teacher layer indices (one layer = a resnet,
    plus its attention where the stage has one) kept in every down/up stage; None keeps
    all.  ``stage_layers`` overrides them per stage, outermost first: (down kept, up
    kept) for each kept stage (a custom removal, see `blocks`).  ``stages`` keeps that
    many resolution stages, outermost first (None: all).
    """

    name: str
    summary: str
    label: str = ""  # what the WebUI calls it
    down_layers: Optional[Tuple[int, ...]] = None
    up_layers: Optional[Tuple[int, ...]] = None
    mid_block: bool = True
    stages: Optional[int] = None
    stage_layers: Optional[Tuple[Tuple[Tuple[int, ...], Tuple[int, ...]], ...]] = None
    # The paper's figures shown next to a preset (U-Net step time relative to the teacher).
    paper_speed_ratio: Optional[float] = None


TEACHER = Removal("teacher", "the full U-Net, nothing removed", "Teacher")
PRESETS: Dict[str, Removal] = {
    "base": Removal(
        "base",
        "one R-A pair per down stage, two of three per up stage",
        "Base",
        down_layers=(0,),
        up_layers=(0, 2),
        paper_speed_ratio=0.69,
    ),
    "small": Removal(
        "small",
        "Base without the mid-stage block",
        "Small",
        down_layers=(0,),
        up_layers=(0, 2),
        mid_block=False,
        paper_speed_ratio=0.61,
    ),
    "tiny": Removal(
        "tiny",
        "Small without the innermost stage",
        "Tiny",
        down_layers=(0,),
        up_layers=(0, 2),
        mid_block=False,
        stages=3,
        paper_speed_ratio=0.56,
    ),
    "mid-removed": Removal(
        "mid-removed",
        "the teacher without its mid-stage block",
        "Mid-stage removed",
        mid_block=False,
    ),
}


def preset(name: Optional[str]) -> Removal:
    """The preset of that name (None or "teacher": the teacher itself, nothing removed); the
    error lists the valid ones."""
    if name is None or name == TEACHER.name:
        return TEACHER
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(
            "unknown architecture '%s'; choose one of: %s" % (name, ", ".join(PRESETS))
        ) from None


@dataclass(frozen=True)
class Block:
    """One unit whose parameters move together: same inner names in LDM and diffusers,
    except resnets, whose inner names differ (see RESNET_RENAMES)."""

    ldm: str
    diffusers: str
    origin: Origin
    resnet: bool = False


# LDM ResBlock inner names -> diffusers ResnetBlock2D inner names.
RESNET_RENAMES = (
    ("in_layers.0", "norm1"),
    ("in_layers.2", "conv1"),
    ("emb_layers.1", "time_emb_proj"),
    ("out_layers.0", "norm2"),
    ("out_layers.3", "conv2"),
    ("skip_connection", "conv_shortcut"),
)


@dataclass(frozen=True)
class Architecture:
    """A teacher with a removal applied: everything a student is, in both namings."""

    teacher: TeacherSpec
    removal: Removal = TEACHER
    blocks: Tuple[Block, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._validate()
        object.__setattr__(self, "blocks", tuple(self._layout()))

    # -- the kept structure -------------------------------------------------------
    @property
    def stages(self) -> int:
        return self.removal.stages or self.teacher.stages

    def down_layers(self, stage: int) -> Tuple[int, ...]:
        """Teacher layer indices the student keeps in down stage `stage`."""
        if self.removal.stage_layers is not None:
            return self.removal.stage_layers[stage][0]
        return self.removal.down_layers or tuple(range(self.teacher.layers_per_stage))

    def up_layers(self, stage: int) -> Tuple[int, ...]:
        """Teacher layer indices the student keeps in the up stage of resolution `stage`."""
        if self.removal.stage_layers is not None:
            return self.removal.stage_layers[stage][1]
        return self.removal.up_layers or tuple(range(self.teacher.layers_per_stage + 1))

    @property
    def layers_per_stage(self) -> List[int]:
        """Down layers kept per stage (an up stage keeps one more)."""
        return [len(self.down_layers(s)) for s in range(self.stages)]

    def kept(self) -> Tuple[Any, ...]:
        """What the student keeps, whatever the removal is called: equal for equal students."""
        return (self.stages, self.removal.mid_block,
                tuple((self.down_layers(s), self.up_layers(s)) for s in range(self.stages)))

    @property
    def channels(self) -> List[int]:
        return [self.teacher.model_channels * m for m in self.teacher.channel_mult[: self.stages]]

    @property
    def is_teacher(self) -> bool:
        return self.removal.name == TEACHER.name

    # -- configs ------------------------------------------------------------------
    def diffusers_config(self) -> Dict[str, Any]:
        """Keyword arguments of diffusers' UNet2DConditionModel for this U-Net."""
        t = self.teacher
        attention = t.attention_levels[: self.stages]
        heads = [t.heads(c) for c in self.channels]
        return {
            "sample_size": t.sample_size,
            "in_channels": t.in_channels,
            "out_channels": t.out_channels,
            "center_input_sample": False,
            "flip_sin_to_cos": True,
            "freq_shift": 0,
            "down_block_types": [
                "CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention
            ],
            "mid_block_type": "UNetMidBlock2DCrossAttn" if self.removal.mid_block else None,
            "up_block_types": [
                "CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)
            ],
            "only_cross_attention": False,
            "block_out_channels": self.channels,
            "layers_per_block": _one_or_all(self.layers_per_stage),
            "downsample_padding": 1,
            "mid_block_scale_factor": 1,
            "act_fn": "silu",
            "norm_num_groups": 32,
            "norm_eps": 1e-05,
            "cross_attention_dim": t.context_dim,
            # diffusers calls the number of heads "attention_head_dim" (a known misnomer).
            "attention_head_dim": heads[0] if len(set(heads)) == 1 else heads,
            "use_linear_projection": t.linear_projection,
            "upcast_attention": False,
        }

    def ldm_unet_params(self) -> Dict[str, Any]:
        """The ``unet_config.params`` of an LDM yaml that builds this U-Net's shapes."""
        t = self.teacher
        params: Dict[str, Any] = {
            "image_size": 32,
            "in_channels": t.in_channels,
            "out_channels": t.out_channels,
            "model_channels": t.model_channels,
            "attention_resolutions": [
                2 ** level for level in range(self.stages) if t.attention_levels[level]
            ][::-1],
            "num_res_blocks": _one_or_all(self.layers_per_stage),
            "channel_mult": list(t.channel_mult[: self.stages]),
            "use_spatial_transformer": True,
            "transformer_depth": 1,
            "context_dim": t.context_dim,
            "legacy": False,
        }
        if t.head_channels:
            params["num_head_channels"] = t.head_channels
        else:
            params["num_heads"] = t.num_heads
        if t.linear_projection:
            params["use_linear_in_transformer"] = True
        return params

    # -- maps ---------------------------------------------------------------------
    def weight_map(self) -> List[Tuple[Block, Block]]:
        """(student block, teacher block) pairs: each student block starts as that teacher block."""
        by_origin = {b.origin: b for b in Architecture(self.teacher).blocks}
        return [(b, by_origin[b.origin]) for b in self.blocks]

    def feature_kd_pairs(self) -> List[Tuple[str, str]]:
        """(teacher module, student module) names in diffusers naming whose outputs feature-KD matches.

        A whole stage is compared where both nets end the stage the same way; where the
        student lost the stage's downsampler (Tiny's innermost kept stage), the outputs of
        the stage's last layer before downsampling are compared instead.
        """
        full = Architecture(self.teacher)
        pairs = []
        for s in range(self.stages):
            same_ending = (s < full.stages - 1) == (s < self.stages - 1)
            if same_ending:
                pairs.append(("down_blocks.%d" % s, "down_blocks.%d" % s))
            else:
                pairs.append((full._last_layer_output(s), self._last_layer_output(s)))
        for s in reversed(range(self.stages)):
            pairs.append(
                ("up_blocks.%d" % (full.stages - 1 - s), "up_blocks.%d" % (self.stages - 1 - s))
            )
        return pairs

    def _last_layer_output(self, stage: int) -> str:
        last = len(self.down_layers(stage)) - 1
        if self.teacher.attention_levels[stage]:
            return "down_blocks.%d.attentions.%d.proj_out" % (stage, last)
        return "down_blocks.%d.resnets.%d" % (stage, last)

    def _validate(self) -> None:
        """Refuse removals whose kept blocks could not be wired together with teacher shapes.

        Each kept layer must receive exactly the channels its teacher weights were made
        for, and an up stage must keep one layer more than its down stage (one per skip
        connection: each kept down layer's output and the stage's input).  The messages
        name the units in `blocks`' notation.
        """
        teacher, removal = self.teacher, self.removal
        n = teacher.layers_per_stage
        problems = []
        if len(teacher.attention_levels) != teacher.stages:
            problems.append("attention_levels needs one entry per stage")
        if not 1 <= self.stages <= teacher.stages:
            problems.append("stages must be 1..%d" % teacher.stages)
        elif removal.stage_layers is not None and len(removal.stage_layers) != self.stages:
            problems.append("stage_layers needs one entry per kept stage")
        else:
            for s in range(self.stages):
                problems += self._stage_problems(s, n)
            if removal.mid_block and self.stages < teacher.stages and \
                    self._width(self.stages - 1) != self._width(teacher.stages - 1):
                problems.append("mid: the mid-stage block is %d channels wide, the kept "
                                "innermost stage %d; remove mid too"
                                % (self._width(teacher.stages - 1), self._width(self.stages - 1)))
        if problems:
            raise ValueError("removal '%s' is not valid: %s" % (removal.name, "; ".join(problems)))

    def _width(self, stage: int) -> int:
        return self.teacher.model_channels * self.teacher.channel_mult[stage]

    def _stage_problems(self, s: int, n: int) -> List[str]:
        down, up = self.down_layers(s), self.up_layers(s)
        if list(down) != sorted(set(down)) or not set(down) <= set(range(n)):
            return ["down.%d: kept layers must be increasing indices in 0..%d" % (s, n - 1)]
        if list(up) != sorted(set(up)) or not set(up) <= set(range(n + 1)):
            return ["up.%d: kept layers must be increasing indices in 0..%d" % (s, n)]
        if not down:
            return ["down.%d: every layer of the stage is removed; keep at least one" % s]
        if len(up) != len(down) + 1:
            return ["stage %d removes %d down and %d up layers: each removed down layer drops "
                    "a skip connection, so remove as many up layers of that stage (and keep "
                    "one more up than down layer)" % (s, n - len(down), n + 1 - len(up))]
        width = self._width(s)
        before = self._width(s - 1) if s else self.teacher.model_channels
        below_teacher = self._width(min(s + 1, self.teacher.stages - 1))
        below = self._width(s + 1) if s + 1 < self.stages else width
        problems = []
        for i, layer in enumerate(down):
            made_for = before if layer == 0 else width
            gets = before if i == 0 else width
            if made_for != gets:
                problems.append("down.%d.%d: made for %d input channels, it would get %d"
                                % (s, layer, made_for, gets))
        for i, layer in enumerate(up):
            made_for = (below_teacher if layer == 0 else width) + (before if layer == n else width)
            gets = (below if i == 0 else width) + (before if i == len(up) - 1 else width)
            if made_for != gets:
                problems.append("up.%d.%d: made for %d input channels, it would get %d"
                                % (s, layer, made_for, gets))
        return problems

    def _layout(self) -> List[Block]:
        """Walk the U-Net in LDM order, naming each kept block in both namings."""
        arch_stages = self.stages
        attention = self.teacher.attention_levels
        blocks = [
            Block("input_blocks.0.0", "conv_in", ("conv_in",)),
            Block("time_embed.0", "time_embedding.linear_1", ("time_embed", 0)),
            Block("time_embed.2", "time_embedding.linear_2", ("time_embed", 2)),
        ]
        index = 1
        for s in range(arch_stages):
            for j, layer in enumerate(self.down_layers(s)):
                name = "down_blocks.%d" % s
                blocks.append(Block("input_blocks.%d.0" % index, "%s.resnets.%d" % (name, j),
                                    ("down", s, layer, "resnet"), resnet=True))
                if attention[s]:
                    blocks.append(Block("input_blocks.%d.1" % index, "%s.attentions.%d" % (name, j),
                                        ("down", s, layer, "attention")))
                index += 1
            if s < arch_stages - 1:
                blocks.append(Block("input_blocks.%d.0.op" % index,
                                    "down_blocks.%d.downsamplers.0.conv" % s, ("downsample", s)))
                index += 1
        if self.removal.mid_block:
            blocks += [
                Block("middle_block.0", "mid_block.resnets.0", ("mid", "resnet", 0), resnet=True),
                Block("middle_block.1", "mid_block.attentions.0", ("mid", "attention")),
                Block("middle_block.2", "mid_block.resnets.1", ("mid", "resnet", 1), resnet=True),
            ]
        index = 0
        for u, s in enumerate(reversed(range(arch_stages))):
            name = "up_blocks.%d" % u
            up = self.up_layers(s)
            for j, layer in enumerate(up):
                blocks.append(Block("output_blocks.%d.0" % index, "%s.resnets.%d" % (name, j),
                                    ("up", s, layer, "resnet"), resnet=True))
                if attention[s]:
                    blocks.append(Block("output_blocks.%d.1" % index, "%s.attentions.%d" % (name, j),
                                        ("up", s, layer, "attention")))
                if s > 0 and j == len(up) - 1:
                    blocks.append(Block("output_blocks.%d.%d.conv" % (index, 2 if attention[s] else 1),
                                        "%s.upsamplers.0.conv" % name, ("upsample", s)))
                index += 1
        blocks += [
            Block("out.0", "conv_norm_out", ("out", 0)),
            Block("out.2", "conv_out", ("out", 2)),
        ]
        return blocks


def _one_or_all(counts: List[int]) -> Any:
    """One number when every stage has it (the presets' configs stay as they were), else a list."""
    return counts[0] if len(set(counts)) == 1 else list(counts)
