"""LoRA adapters for DreamBooth (peft), folded back into the weights or saved for A1111.

Training uses peft's ``LoraConfig`` on the attention projections.  Two outputs come of it:
the model with every adapter merged (W + up @ down * alpha / rank), and a LoRA file A1111's
built-in Lora extension can apply to the base model.  That extension (1.6.1 and 1.10.1
alike) resolves ``lora_unet_<name>`` by replacing ``lora_unet`` with ``diffusion_model``
and looking the result up among the LDM model's module names with "." turned into "_";
its fallback for diffusers-style names assumes the full SD layout, which would land a
student's adapters in the wrong blocks.  So U-Net keys here are the LDM module paths of
THIS architecture (``lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q``), and
text-encoder keys are transformers 4.x names (``lora_te_text_model_encoder_layers_0_self_attn_q_proj``,
also under transformers 5: see clip_naming),
which A1111 maps to SD-v1's CLIP and to SD-v2's OpenCLIP attention (q/k/v into its fused
``in_proj_weight``, ``out_proj`` as is).

peft is not part of A1111's environment: only LoRA mode needs it, and it asks for it.
"""
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch

from ..model.arch import Architecture
from ..model.clip_naming import nested_name
from ..errors import BadInput
from ..model.keymap import KeyMap
from ..model.lora_keymap import layout_metadata
from ..model.safetensors_io import tensor_out, write_safetensors
from ..model.staging import staged

UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
ADAPTER = "default"
UNET_PREFIX = "lora_unet_"
TEXT_PREFIX = "lora_te_"


def require_peft() -> str:
    """peft's version; a BadInput that says how to get it when it is missing."""
    try:
        import peft
    except ImportError:
        raise BadInput("LoRA mode needs peft: pip install peft (or train without --lora)") from None
    return str(peft.__version__)


def add_lora(model: torch.nn.Module, targets: Sequence[str], rank: int) -> None:
    """Freeze `model` and give each target projection a trainable rank-`rank` adapter
    (alpha = rank: the update is up @ down, unscaled)."""
    from peft import LoraConfig, inject_adapter_in_model

    model.requires_grad_(False)
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=list(targets)),
                            model, adapter_name=ADAPTER)


def lora_layers(model: torch.nn.Module) -> Dict[str, Any]:
    """Module name -> peft LoRA layer."""
    from peft.tuners.lora import LoraLayer

    return {name: module for name, module in model.named_modules() if isinstance(module, LoraLayer)}


def merged_state_dict(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """The state dict the model would have without adapters, with each adapter folded in."""
    state = {key.replace(".base_layer.", "."): value for key, value in model.state_dict().items()
             if ".lora_" not in key}
    with torch.no_grad():
        for name, layer in lora_layers(model).items():
            base = layer.get_base_layer().weight
            state[name + ".weight"] = base + layer.get_delta_weight(ADAPTER).to(base.dtype)
    return state


def kohya_state(unet: torch.nn.Module, arch: Architecture,
                text_encoder: Optional[torch.nn.Module] = None) -> Dict[str, torch.Tensor]:
    """The adapters under the key names A1111's Lora extension resolves for `arch`."""
    keymap = KeyMap(arch)
    state: Dict[str, torch.Tensor] = {}
    for name, layer in lora_layers(unet).items():
        ldm_name = keymap.to_ldm(name + ".weight")[:-len(".weight")]
        state.update(_kohya_entries(UNET_PREFIX + ldm_name.replace(".", "_"), layer))
    if text_encoder is not None:
        for name, layer in lora_layers(text_encoder).items():
            state.update(_kohya_entries(TEXT_PREFIX + nested_name(name).replace(".", "_"), layer))
    return state


def _kohya_entries(key: str, layer: Any) -> Dict[str, torch.Tensor]:
    return {
        key + ".lora_down.weight": layer.lora_A[ADAPTER].weight.detach(),
        key + ".lora_up.weight": layer.lora_B[ADAPTER].weight.detach(),
        key + ".alpha": torch.tensor(float(layer.lora_alpha[ADAPTER])),
    }


def kohya_metadata(arch: Architecture, rank: int, base_name: str) -> Dict[str, str]:
    """What A1111's Lora tab reads (``ss_v2`` decides the SD version it shows the LoRA for)
    plus the student it belongs to: its keys fit only that block layout."""
    return {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(rank),
        "ss_v2": str(arch.teacher.family == "sd-v2"),
        "ss_base_model_version": "sd_v2" if arch.teacher.family == "sd-v2" else "sd_v1",
        "ss_sd_model_name": base_name,
        "bksdm.lora_base": base_name,
        **layout_metadata(arch),  # how the WebUI knows these names are the student's
    }


def write_lora(path: Path, adapters: Dict[str, torch.Tensor], dtype: torch.dtype,
               metadata: Dict[str, str]) -> None:
    """The LoRA file, written under a temporary name and renamed (an older one replaced)."""
    with staged([path], overwrite=True) as (temp,):
        write_safetensors(temp, [tensor_out(k, v, dtype) for k, v in sorted(adapters.items())],
                          metadata)
