"""What a checkpoint is: SD-v1 or v2, teacher or which BK student, and why not when it is
neither.  Structure comes from tensor names and shapes; what weights cannot tell (head
counts, v-prediction) comes from the user, the ``.yaml`` beside the file, or metadata."""
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import yaml

from .arch import PRESETS, TEACHER, SD_V1, SD_V2_512, Architecture, Removal, TeacherSpec
from .blocks import CUSTOM, canonical_removal, notation, removal_from_units
from .checkpoint import Checkpoint
from ..errors import BadInput
from .keymap import UNET_PREFIX, KeyMap
from .parts_keymap import TEXT_PREFIX, VAE_PREFIX
from .samplers import DrawPoint


# A custom student's removal in block notation (which teacher layers it kept).
REMOVAL_KEY = "bksdm.removal"

# U-Net input channels BK-SDM converts: text-to-image (the latent) and inpainting (latent,
# mask, masked-image latent: docs/facts.md §13).
INPUT_CHANNELS = (4, 9)
# (a key that only that kind of file has, what it is)
FOREIGN_MARKERS = (
    ("model.diffusion_model.joint_blocks.", "an SD3 checkpoint"),
    ("model.diffusion_model.double_blocks.", "a Flux checkpoint"),
    ("conditioner.embedders.1.", "an SDXL checkpoint"),
    ("model.diffusion_model.label_emb.", "an SDXL checkpoint"),
    ("lora_unet_", "a LoRA, not a full checkpoint"),
    ("lora_te_", "a LoRA, not a full checkpoint"),
    ("encoder.down.0.block.0.", "a VAE, not a full checkpoint"),
)


@dataclass
class ModelInfo:
    """A checkpoint's architecture and the facts a conversion report needs."""

    path: Path
    arch: Architecture
    parameterization_source: str  # "flag", "yaml", "metadata", "family default"
    config: Optional[Dict[str, Any]]  # the yaml beside the file, if any
    unet_params: int
    text_encoder_params: int
    vae_params: int
    unet_dtype: str
    metadata: Dict[str, str]

    @property
    def family(self) -> str:
        return self.arch.teacher.family

    @property
    def parameterization(self) -> str:
        return self.arch.teacher.parameterization

    @property
    def preset(self) -> str:
        return self.arch.removal.name

    @property
    def is_student(self) -> bool:
        return not self.arch.is_teacher

    @property
    def recommendation(self) -> Optional[DrawPoint]:
        """The sampler, steps and CFG the file says it was made for (an LCM student's)."""
        return DrawPoint.from_metadata(self.metadata)


def config_path(checkpoint: Path) -> Path:
    """Where A1111 looks for a checkpoint's config: same name, .yaml."""
    return checkpoint.with_suffix(".yaml")


def read_config(path: Path) -> Optional[Dict[str, Any]]:
    if not path.is_file():
        return None
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise BadInput("%s: not a readable yaml config (%s); fix or delete it"
                       % (path, str(e).splitlines()[0])) from None
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise BadInput("%s: not an LDM model config (no 'model:' section); fix or delete it" % path)
    problem = _config_problem(config["model"])
    if problem:
        raise BadInput("%s: not an LDM model config (%s); fix or delete it" % (path, problem))
    return config


def _config_problem(model: Dict[str, Any]) -> str:
    """What is wrong in the parts of a config's 'model:' section that are read here and by
    `ldm_config.model_config`; "" when nothing is."""
    params = model.get("params", {})
    if not isinstance(params, dict):
        return "model.params is not a section"
    unet = params.get("unet_config", {})
    if not isinstance(unet, dict) or not isinstance(unet.get("params", {}), dict):
        return "model.params.unet_config or its params is not a section"
    if "image_size" in params and not _is_positive(params["image_size"]):
        return "model.params.image_size is not a positive whole number"
    if params.get("parameterization", "eps") not in ("eps", "v"):
        return "model.params.parameterization is neither eps nor v"
    return ""


def inspect_checkpoint(ckpt: Checkpoint, v_prediction: Optional[bool] = None) -> ModelInfo:
    """Identify an SD-v1/v2 checkpoint; BadInput for anything else."""
    keys = ckpt.keys()
    unet_keys = [k[len(UNET_PREFIX):] for k in keys if k.startswith(UNET_PREFIX)]
    _refuse_foreign(ckpt, keys, unet_keys)
    config = read_config(config_path(ckpt.path))
    family = _family(ckpt, keys)
    teacher, removal = _structure(ckpt, unet_keys, family)
    teacher = _apply_heads(teacher, _unet_params(config, ckpt.metadata), ckpt.path)
    parameterization, source = _parameterization(v_prediction, config, ckpt.metadata)
    teacher = replace(teacher, parameterization=parameterization,
                      sample_size=_sample_size(family, parameterization, config))
    claimed = ckpt.metadata.get("bksdm.preset")
    recorded = ckpt.metadata.get(REMOVAL_KEY)
    found = notation(Architecture(teacher, removal))
    if (claimed and claimed != removal.name) or (recorded and recorded != found):
        raise BadInput("%s: its metadata says BK-SDM '%s' but its U-Net has the layout of '%s'; "
                       "the file was altered after conversion: convert its teacher again"
                       % (ckpt.path, recorded or claimed, found if removal.name == CUSTOM
                          else removal.name))
    dtypes = sorted({str(ckpt.dtype(UNET_PREFIX + k)).replace("torch.", "") for k in unet_keys})
    return ModelInfo(
        path=ckpt.path,
        arch=Architecture(teacher, removal),
        parameterization_source=source,
        config=config,
        unet_params=ckpt.numel(UNET_PREFIX),
        text_encoder_params=ckpt.numel("cond_stage_model."),
        vae_params=ckpt.numel(VAE_PREFIX),
        unet_dtype="/".join(dtypes),
        metadata=ckpt.metadata,
    )


def _sample_size(family: str, parameterization: str, config: Optional[Dict[str, Any]]) -> int:
    """Latent side the model was trained at: the yaml says; else SD-2's v models are 768 px."""
    if config is not None and "image_size" in config["model"].get("params", {}):
        return int(config["model"]["params"]["image_size"])
    return 96 if family == "sd-v2" and parameterization == "v" else 64


def _refuse_foreign(ckpt: Checkpoint, keys: List[str], unet_keys: List[str]) -> None:
    for marker, what in FOREIGN_MARKERS:
        if any(k.startswith(marker) for k in keys):
            raise BadInput("%s: this is %s; BK-SDM students are made from SD-v1/v2 text-to-image "
                           "checkpoints" % (ckpt.path, what))
    if not unet_keys:
        raise BadInput("%s: not a Stable Diffusion checkpoint (it has no model.diffusion_model.* "
                       "U-Net weights)" % ckpt.path)
    conv_in = UNET_PREFIX + "input_blocks.0.0.weight"
    if conv_in not in ckpt:
        raise BadInput("%s: its U-Net has no input convolution (%s); not an SD-v1/v2 U-Net"
                       % (ckpt.path, conv_in))
    channels = _shape(ckpt, conv_in, 4)[1]
    if channels not in INPUT_CHANNELS:
        what = {8: "an instruct-pix2pix model"}.get(
            channels, "a U-Net with %d input channels" % channels)
        raise BadInput("%s: this is %s; BK-SDM supports SD-v1/v2 text-to-image U-Nets "
                       "(4 input channels) and inpainting U-Nets (9)" % (ckpt.path, what))


def _family(ckpt: Checkpoint, keys: List[str]) -> str:
    if ckpt.metadata.get("bksdm.family") in TEXT_PREFIX:
        return ckpt.metadata["bksdm.family"]
    for family, prefix in TEXT_PREFIX.items():
        if any(k.startswith(prefix) for k in keys):
            return family
    # No text encoder in the file: SD-v2 is the family with linear attention projections.
    proj = UNET_PREFIX + "input_blocks.1.1.proj_in.weight"
    return "sd-v2" if proj in ckpt and len(ckpt.shape(proj)) == 2 else "sd-v1"


def _structure(ckpt: Checkpoint, unet_keys: List[str], family: str
               ) -> Tuple[TeacherSpec, Removal]:
    """(teacher spec, removal) whose block layout is exactly the file's."""
    def shape(key: str, *ranks: int) -> Tuple[int, ...]:
        return _shape(ckpt, UNET_PREFIX + key, *ranks)

    present = set(unet_keys)
    levels: List[List[int]] = [[]]
    index = 1
    while "input_blocks.%d.0.in_layers.0.weight" % index in present or \
            "input_blocks.%d.0.op.weight" % index in present:
        if "input_blocks.%d.0.op.weight" % index in present:
            levels.append([])
        else:
            levels[-1].append(index)
        index += 1
    if not all(levels):
        raise BadInput("%s: its U-Net's down path is not an SD-v1/v2 layout (%s layers per stage)"
                       % (ckpt.path, [len(level) for level in levels]))
    model_channels = shape("input_blocks.0.0.weight", 4)[0]
    widths = [shape("input_blocks.%d.0.out_layers.3.weight" % level[0], 4)[0] for level in levels]
    if any(width % model_channels for width in widths):
        raise BadInput("%s: its U-Net's stage widths %s are not multiples of its %d input "
                       "channels; not an SD-v1/v2 U-Net" % (ckpt.path, widths, model_channels))
    attention = ["input_blocks.%d.1.proj_in.weight" % level[0] in present for level in levels]
    if not any(attention):
        raise BadInput("%s: its U-Net has no cross-attention; not an SD-v1/v2 U-Net" % ckpt.path)
    first = next(level[0] for level, a in zip(levels, attention) if a)
    context_dim = shape("input_blocks.%d.1.transformer_blocks.0.attn2.to_k.weight" % first, 2)[1]
    base = SD_V1 if family == "sd-v1" else SD_V2_512
    observed = replace(
        base,
        in_channels=shape("input_blocks.0.0.weight", 4)[1],
        model_channels=model_channels,
        channel_mult=tuple(w // model_channels for w in widths),
        attention_levels=tuple(attention),
        context_dim=context_dim,
        linear_projection=len(shape("input_blocks.%d.1.proj_in.weight" % first, 2, 4)) == 2,
    )
    counts = [len(level) for level in levels]
    found = match_layout(observed, counts, present, "ldm", ckpt.metadata.get(REMOVAL_KEY))
    if found is None:
        raise BadInput("%s: its U-Net layout (%d stages, %s layers per stage, middle block %s) is "
                       "neither an SD-v1/v2 teacher nor a BK-SDM student"
                       % (ckpt.path, len(levels), counts,
                          "present" if any(k.startswith("middle_block.") for k in present)
                          else "absent"))
    return found


def _shape(ckpt: Checkpoint, key: str, *ranks: int) -> Tuple[int, ...]:
    """The shape of `key`, which in an SD-v1/v2 U-Net has one of `ranks` dimensions, none 0."""
    shape = ckpt.shape(key)
    if len(shape) not in ranks or not all(shape):
        raise BadInput("%s: its tensor %s has shape %s, which no SD-v1/v2 U-Net has; the file is "
                       "damaged or not an SD checkpoint" % (ckpt.path, key, list(shape)))
    return shape


def match_layout(observed: TeacherSpec, layers: Union[int, Sequence[int]], keys: Iterable[str],
                 naming: str, removal_units: Optional[str] = None
                 ) -> Optional[Tuple[TeacherSpec, Removal]]:
    """(teacher, removal) whose blocks are exactly those the U-Net keys belong to.

    `observed` describes the file's own stages (widths, attention) and `layers` its
    layers per down stage (one number for all, or one per stage); `naming` is "ldm" or
    "diffusers".  `removal_units` is the removal a custom student's metadata records
    (which teacher layers it kept: the weights only tell how many); without it a custom
    layout gets `canonical_removal`.
    """
    keys = set(keys)
    counts = [layers] * observed.stages if isinstance(layers, int) else list(layers)
    teacher = _teacher_of(observed)
    candidates = [TEACHER] + list(PRESETS.values())
    if removal_units:
        try:
            candidates.insert(0, removal_from_units(teacher, removal_units))
        except BadInput:
            pass  # not this teacher's notation: the layout decides alone
    has_mid = any(k.startswith(("middle_block.", "mid_block.")) for k in keys)
    candidates.append(canonical_removal(teacher, counts, observed.stages, has_mid))
    for removal in candidates:
        try:
            arch = Architecture(teacher, removal)
        except ValueError:
            continue
        if arch.stages != observed.stages or arch.layers_per_stage != counts:
            continue
        keymap = KeyMap(arch)
        if not keymap.missing_blocks(keys, naming) and all(keymap.block_of(k, naming) for k in keys):
            return teacher, removal
    return None


def _teacher_of(observed: TeacherSpec) -> TeacherSpec:
    """The teacher a file with this observed structure comes from.

    SD teachers have four stages of two layers per down stage; a student with fewer
    stages lost the innermost one, which in SD has the width of the stage above and
    no attention.
    """
    extra = SD_V1.stages - observed.stages
    return replace(
        observed,
        layers_per_stage=SD_V1.layers_per_stage,
        channel_mult=observed.channel_mult + (observed.channel_mult[-1],) * extra,
        attention_levels=observed.attention_levels + (False,) * extra,
    )


def _apply_heads(teacher: TeacherSpec, params: Dict[str, Any], path: Path) -> TeacherSpec:
    """Head counts are not in the weights: take them from the U-Net config when there is one."""
    for name in ("num_head_channels", "num_heads"):
        value = params.get(name, -1)
        if value in (-1, None):
            continue
        if not _is_positive(value):
            raise BadInput("%s: its U-Net config gives %s = %r, not a positive whole number; fix "
                           "or delete its .yaml (a student: convert its teacher again)"
                           % (path, name, value))
        if name == "num_head_channels":
            return replace(teacher, head_channels=value, num_heads=0)
        return replace(teacher, num_heads=value, head_channels=0)
    return teacher


def _is_positive(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _unet_params(config: Optional[Dict[str, Any]], metadata: Dict[str, str]) -> Dict[str, Any]:
    """The LDM U-Net params of the yaml beside the file (`read_config` checked its sections),
    else those a student records."""
    unet = config["model"].get("params", {}).get("unet_config", {}) if config else {}
    if "params" in unet:
        return dict(unet["params"])
    try:
        recorded = json.loads(metadata.get("bksdm.unet_config", "{}"))
    except (ValueError, RecursionError):
        return {}
    return recorded if isinstance(recorded, dict) else {}


def _parameterization(v_prediction: Optional[bool], config: Optional[Dict[str, Any]],
                      metadata: Dict[str, str]) -> Tuple[str, str]:
    if v_prediction is not None:
        return ("v" if v_prediction else "eps"), "flag"
    if config is not None:
        return config["model"].get("params", {}).get("parameterization", "eps"), "yaml"
    if metadata.get("bksdm.parameterization") in ("eps", "v"):
        return metadata["bksdm.parameterization"], "metadata"
    return "eps", "family default"
