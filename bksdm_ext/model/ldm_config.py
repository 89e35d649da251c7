"""The ``.yaml`` A1111 needs beside a student: the teacher's own config with the U-Net
section rewritten from the architecture spec (an inpainting U-Net's as A1111's inpainting
configs have it)."""
import copy
from pathlib import Path
from typing import Any, Dict, Optional

import yaml

from .arch import Architecture

LDM_UNET_TARGET = "ldm.modules.diffusionmodules.openaimodel.UNetModel"
NO_MIDDLE_TARGET = "bksdm_ext.ldm_unet.NoMiddleBlockUNetModel"
# What A1111's configs/v1-inpainting-inference.yaml (and SD-2's v2-inpainting-inference.yaml)
# change in the text-to-image config: the model class, whose U-Net gets the mask and the
# masked image's latent concatenated to the latent ("hybrid": concat + cross-attention).
INPAINT_TARGET = "ldm.models.diffusion.ddpm.LatentInpaintDiffusion"
_STANDARD = {"sd-v1": "v1-inference.yaml", "sd-v2": "v2-inference.yaml"}
# unet_config params the spec decides; the teacher's other params (use_checkpoint,
# use_fp16, ...) are kept as they were.
_SPEC_OWNED = ("num_heads", "num_head_channels", "use_linear_in_transformer")


def standard_config(family: str) -> Dict[str, Any]:
    path = Path(__file__).with_name("configs") / _STANDARD[family]
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def model_config(arch: Architecture, teacher_config: Optional[Dict[str, Any]] = None
                 ) -> Dict[str, Any]:
    """The LDM config of `arch`, derived from the teacher's (else the family's standard one)."""
    config = copy.deepcopy(teacher_config) if teacher_config else standard_config(arch.teacher.family)
    model_params = config["model"].setdefault("params", {})
    if arch.teacher.parameterization == "v":
        model_params["parameterization"] = "v"
    else:
        model_params.pop("parameterization", None)
    unet = model_params.setdefault("unet_config", {})
    params = {k: v for k, v in (unet.get("params") or {}).items() if k not in _SPEC_OWNED}
    params.update(arch.ldm_unet_params())
    unet["target"] = LDM_UNET_TARGET if arch.removal.mid_block else NO_MIDDLE_TARGET
    unet["params"] = params
    if arch.teacher.inpainting:
        config["model"]["target"] = INPAINT_TARGET
        model_params["conditioning_key"] = "hybrid"
        model_params["finetune_keys"] = None
    return config


def dump_config(config: Dict[str, Any]) -> str:
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=None)
