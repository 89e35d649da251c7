"""Tiny random SD teachers built with the real LDM U-Net (no downloads, CPU, seconds)."""
from dataclasses import replace
from pathlib import Path
from typing import Dict, Optional

import torch
from safetensors.torch import save_file

from bksdm_ext.model.arch import SD_V1, SD_V2_512, SD_V2_768_V, Architecture, TeacherSpec
from bksdm_ext.model.ldm_config import dump_config, model_config

TINY = {
    "sd-v1": replace(SD_V1, model_channels=32, context_dim=32),
    "sd-v2": replace(SD_V2_512, model_channels=32, context_dim=32, head_channels=8),
    "sd-v2-v": replace(SD_V2_768_V, model_channels=32, context_dim=32, head_channels=8),
}
TEXT_KEY = {
    "sd-v1": "cond_stage_model.transformer.text_model.final_layer_norm.weight",
    "sd-v2": "cond_stage_model.model.ln_final.weight",
}


def ldm_unet(arch: Architecture, seed: int = 0) -> torch.nn.Module:
    """The real LDM UNetModel for `arch`, with every parameter random (LDM zero-inits some)."""
    from ldm.modules.diffusionmodules.openaimodel import TimestepEmbedSequential, UNetModel

    torch.manual_seed(seed)
    model = UNetModel(**arch.ldm_unet_params())
    if not arch.removal.mid_block:
        model.middle_block = TimestepEmbedSequential()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    return model.eval()


def teacher_state(spec: TeacherSpec, seed: int = 0) -> Dict[str, torch.Tensor]:
    """An A1111 state dict: LDM U-Net plus stand-in VAE/text-encoder tensors and buffers."""
    unet = ldm_unet(Architecture(spec), seed)
    state = {"model.diffusion_model." + k: v.clone() for k, v in unet.state_dict().items()}
    g = torch.Generator().manual_seed(seed + 1)
    state["first_stage_model.decoder.conv_out.weight"] = torch.randn(3, 8, 3, 3, generator=g)
    state[TEXT_KEY[spec.family]] = torch.randn(32, generator=g)
    state["alphas_cumprod"] = torch.linspace(0.99, 0.01, 1000)
    return state


def write_teacher(folder: Path, spec: TeacherSpec, name: str = "teacher.safetensors",
                  with_yaml: bool = True, dtype: Optional[torch.dtype] = None,
                  extra: Optional[Dict[str, torch.Tensor]] = None) -> Path:
    state = teacher_state(spec)
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    state.update(extra or {})
    path = folder / name
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"state_dict": state, "global_step": 1}, str(path))
    if with_yaml:
        path.with_suffix(".yaml").write_text(dump_config(model_config(Architecture(spec))))
    return path
