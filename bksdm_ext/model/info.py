"""``bksdm info``: what a checkpoint (or a LoRA file made here) is, in the terms the WebUI
tab shows too, with the sampler, steps and CFG it was made for when it records them."""
from pathlib import Path
from typing import Any, Dict, Optional, Union

from .checkpoint import Checkpoint
from .blocks import notation
from .detect import config_path, inspect_checkpoint
from .lora_keymap import is_lora
from .samplers import DrawPoint


def describe(path: Union[str, Path], v_prediction: Optional[bool] = None) -> Dict[str, Any]:
    ckpt = Checkpoint(path)
    if is_lora(ckpt.keys()):
        return _describe_lora(ckpt)
    info = inspect_checkpoint(ckpt, v_prediction)
    yaml_path = config_path(info.path)
    described = {
        "file": str(info.path),
        "family": info.family,
        "parameterization": info.parameterization,
        "parameterization_from": info.parameterization_source,
        "model": "BK-SDM %s student" % info.preset if info.is_student else "teacher (full U-Net)",
        "inputs": ("inpainting (latent, mask, masked image: 9 channels)"
                   if info.arch.teacher.inpainting else "text-to-image (latent: 4 channels)"),
        "preset": info.preset,
        "removed": notation(info.arch) or "nothing",
        "unet_params": info.unet_params,
        "text_encoder_params": info.text_encoder_params,
        "vae_params": info.vae_params,
        "unet_dtype": info.unet_dtype,
        "config": str(yaml_path) if yaml_path.is_file() else "none (A1111 will guess)",
        "metadata": _own(info.metadata),
    }
    return _with_recommendation(described, info.metadata)


def _describe_lora(ckpt: Checkpoint) -> Dict[str, Any]:
    """A LoRA file: the block layout its ``bksdm.*`` metadata names (the student it was made
    for, when made here), its rank and module count."""
    metadata = ckpt.metadata
    preset = metadata.get("bksdm.preset")
    described = {
        "file": str(ckpt.path),
        "model": ("LoRA for a BK-SDM %s student (%s)" % (preset, metadata.get("bksdm.lora_base"))
                  if preset and preset != "teacher" else "LoRA"),
        "rank": metadata.get("ss_network_dim", "unknown"),
        "modules": len({k.split(".")[0] for k in ckpt.keys()}),
        "metadata": _own(metadata),
    }
    return _with_recommendation(described, metadata)


def _with_recommendation(described: Dict[str, Any], metadata: Dict[str, str]) -> Dict[str, Any]:
    """`described` with ``recommended`` (e.g. "LCM, 4 steps, CFG 1") before the metadata,
    when the file records one."""
    recommendation = DrawPoint.from_metadata(metadata)
    if recommendation is None:
        return described
    own = described.pop("metadata")
    return dict(described, recommended=recommendation.describe(), metadata=own)


def _own(metadata: Dict[str, str]) -> Dict[str, str]:
    return {k: v for k, v in metadata.items() if k.startswith(("bksdm.", "modelspec."))}
