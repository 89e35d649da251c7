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

    def heads(self, channels: int) -> int:
        return channels // self.head_channels if self.head_channels else self.num_heads


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
    all.  ``stages`` keeps that many resolution stages, outermost first (None: all).
    """

    name: str
    summary: str
    down_layers: Optional[Tuple[int, ...]] = None
    up_layers: Optional[Tuple[int, ...]] = None
    mid_block: bool = True
    stages: Optional[int] = None
    # The paper's figures shown next to a preset (U-Net step time relative to the teacher).
    paper_speed_ratio: Optional[float] = None


TEACHER = Removal("teacher", "the full U-Net, nothing removed")
PRESETS: Dict[str, Removal] = {
    "base": Removal(
        "base",
        "one R-A pair per down stage, two of three per up stage",
        down_layers=(0,),
        up_layers=(0, 2),
        paper_speed_ratio=0.69,
    ),
    "small": Removal(
        "small",
        "Base without the mid-stage block",
        down_layers=(0,),
        up_layers=(0, 2),
        mid_block=False,
        paper_speed_ratio=0.61,
    ),
    "tiny": Removal(
        "tiny",
        "Small without the innermost stage",
        down_layers=(0,),
        up_layers=(0, 2),
        mid_block=False,
        stages=3,
        paper_speed_ratio=0.56,
    ),
    "mid-removed": Removal(
        "mid-removed",
        "the teacher without its mid-stage block",
        mid_block=False,
    ),
}


def preset(name: str) -> Removal:
    """The preset of that name; the error lists the valid ones."""
    if name == TEACHER.name:
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

    @property
    def down_layers(self) -> Tuple[int, ...]:
        return self.removal.down_layers or tuple(range(self.teacher.layers_per_stage))

    @property
    def up_layers(self) -> Tuple[int, ...]:
        return self.removal.up_layers or tuple(range(self.teacher.layers_per_stage + 1))

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
            "layers_per_block": len(self.down_layers),
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
            "num_res_blocks": len(self.down_layers),
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
        last = len(self.down_layers) - 1
        if self.teacher.attention_levels[stage]:
            return "down_blocks.%d.attentions.%d.proj_out" % (stage, last)
        return "down_blocks.%d.resnets.%d" % (stage, last)

    def _validate(self) -> None:
        """Refuse removals whose kept blocks could not be wired together with teacher shapes."""
        teacher, removal = self.teacher, self.removal
        n = teacher.layers_per_stage
        down, up, stages = self.down_layers, self.up_layers, self.stages
        problems = []
        if len(teacher.attention_levels) != teacher.stages:
            problems.append("attention_levels needs one entry per stage")
        if not 1 <= stages <= teacher.stages:
            problems.append("stages must be 1..%d" % teacher.stages)
        if list(down) != sorted(set(down)) or not set(down) <= set(range(n)):
            problems.append("down_layers must be increasing indices in 0..%d" % (n - 1))
        if list(up) != sorted(set(up)) or not set(up) <= set(range(n + 1)):
            problems.append("up_layers must be increasing indices in 0..%d" % n)
        if len(up) != len(down) + 1:
            problems.append("an up stage keeps one layer more than a down stage")
        # The first up layer takes the deeper stage's width, the last one the skip from the
        # shallower stage: only the teacher's first and last layers have those input shapes.
        if up and (up[0] != 0 or up[-1] != n):
            problems.append("up_layers must keep the teacher's first and last up layer (0 and %d)" % n)
        if problems:
            raise ValueError("removal '%s' is not valid: %s" % (removal.name, "; ".join(problems)))


    def _layout(self) -> List[Block]:
        """Walk the U-Net in LDM order, naming each kept block in both namings."""
        arch_stages, down, up = self.stages, self.down_layers, self.up_layers
        attention = self.teacher.attention_levels
        blocks = [
            Block("input_blocks.0.0", "conv_in", ("conv_in",)),
            Block("time_embed.0", "time_embedding.linear_1", ("time_embed", 0)),
            Block("time_embed.2", "time_embedding.linear_2", ("time_embed", 2)),
        ]
        index = 1
        for s in range(arch_stages):
            for j, layer in enumerate(down):
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
