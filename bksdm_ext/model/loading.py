"""diffusers/transformers modules built from an A1111 single-file checkpoint.

Distillation, DreamBooth, benchmarks and the demo run on diffusers modules; the
files users have are A1111 checkpoints.  Configs come from the architecture spec
(U-Net) or from tensor shapes (VAE, text encoder), so no hub download is needed.
"""
from typing import Any, Dict

import torch

from ..errors import BadInput
from .checkpoint import Checkpoint
from .clip_naming import model_names
from .detect import ModelInfo
from .keymap import UNET_PREFIX, KeyMap
from .parts_keymap import TEXT_PREFIX, VAE_PREFIX, clip_to_hf, vae_to_diffusers

# SD-v1 uses OpenAI's CLIP ViT-L (quick GELU), SD-v2 OpenCLIP ViT-H (GELU); both 64-wide heads.
TEXT_ACTIVATION = {"sd-v1": "quick_gelu", "sd-v2": "gelu"}
HEAD_WIDTH = 64


def _part(ckpt: Checkpoint, prefix: str) -> Dict[str, torch.Tensor]:
    return {k[len(prefix):]: ckpt.tensor(k) for k in ckpt.keys() if k.startswith(prefix)}


def _required_part(ckpt: Checkpoint, prefix: str, what: str, advice: str
                   ) -> Dict[str, torch.Tensor]:
    """A part the checkpoint must hold itself: A1111 loads a file without it (drawing with a
    separately chosen VAE, say), and the yaml still describes it, but nothing here can."""
    part = _part(ckpt, prefix)
    if not part:
        raise BadInput("%s: it has no %s weights (%s*), which BK-SDM takes from the "
                       "checkpoint itself; %s" % (ckpt.path, what, prefix, advice))
    return part


def load_unet(ckpt: Checkpoint, info: ModelInfo) -> Any:
    """The checkpoint's U-Net (teacher or student) as a diffusers UNet2DConditionModel, fp32."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(**info.arch.diffusers_config())
    unet.load_state_dict(KeyMap(info.arch).convert_to_diffusers(_part(ckpt, UNET_PREFIX)),
                         strict=True)
    return unet.float()


def vae_config(state: Dict[str, torch.Tensor]) -> Dict[str, Any]:
    """AutoencoderKL arguments that fit a diffusers-named VAE state dict."""
    stages = len({k.split(".")[2] for k in state if k.startswith("encoder.down_blocks.")})
    layers = len({k.split(".")[4] for k in state if k.startswith("encoder.down_blocks.0.resnets.")})
    return {
        "in_channels": state["encoder.conv_in.weight"].shape[1],
        "out_channels": state["decoder.conv_out.weight"].shape[0],
        "down_block_types": ["DownEncoderBlock2D"] * stages,
        "up_block_types": ["UpDecoderBlock2D"] * stages,
        "block_out_channels": [state["encoder.down_blocks.%d.resnets.0.conv1.weight" % i].shape[0]
                               for i in range(stages)],
        "layers_per_block": layers,
        "latent_channels": state["quant_conv.weight"].shape[0] // 2,
    }


def load_vae(ckpt: Checkpoint) -> Any:
    from diffusers import AutoencoderKL

    state = vae_to_diffusers(_required_part(
        ckpt, VAE_PREFIX, "VAE", "bake one in with A1111's Checkpoint Merger ('Bake in VAE') "
        "or use the checkpoint it came from"))
    vae = AutoencoderKL(**vae_config(state))
    vae.load_state_dict(state, strict=True)
    return vae.float()


def text_encoder_config(state: Dict[str, torch.Tensor], family: str) -> Dict[str, Any]:
    tokens, hidden = state["text_model.embeddings.token_embedding.weight"].shape
    layers = len({k.split(".")[3] for k in state if k.startswith("text_model.encoder.layers.")})
    return {
        "vocab_size": tokens,
        "hidden_size": hidden,
        "intermediate_size": state["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
        "num_hidden_layers": layers,
        "num_attention_heads": max(1, hidden // HEAD_WIDTH),
        "max_position_embeddings": state["text_model.embeddings.position_embedding.weight"].shape[0],
        "hidden_act": TEXT_ACTIVATION[family],
        "projection_dim": hidden,
    }


def load_text_encoder(ckpt: Checkpoint, family: str) -> Any:
    """The text encoder as transformers' CLIPTextModel, giving what SD conditions on.

    SD-v2 conditions on OpenCLIP's penultimate layer: its last block (and the
    contrastive projection) is left out, as in diffusers' SD-2 folders.
    """
    from transformers import CLIPTextConfig, CLIPTextModel

    state = clip_to_hf(_required_part(ckpt, TEXT_PREFIX[family], "text encoder",
                                      "use the checkpoint it came from"), family)
    state.pop("text_projection.weight", None)
    if family == "sd-v2":
        last = len({k.split(".")[3] for k in state if k.startswith("text_model.encoder.layers.")}) - 1
        state = {k: v for k, v in state.items()
                 if not k.startswith("text_model.encoder.layers.%d." % last)}
    model = CLIPTextModel(CLIPTextConfig(**text_encoder_config(state, family)))
    # position_ids is a buffer that only some transformers versions save (4.30 does, 5 does
    # not): checkpoints may have it or not, and it is always arange(77).
    result = model.load_state_dict(model_names(model, state), strict=False)
    problems = [k for k in result.missing_keys + result.unexpected_keys
                if not k.endswith("position_ids")]
    if problems:
        raise ValueError("text encoder weights do not fit: " + ", ".join(sorted(problems)[:5]))
    return model.float()


def noise_scheduler(info: ModelInfo) -> Any:
    """The teacher's training noise schedule (DDPM, scaled-linear β) from its yaml, else SD's."""
    from diffusers import DDPMScheduler

    params = ((info.config or {}).get("model") or {}).get("params") or {}
    return DDPMScheduler(
        num_train_timesteps=int(params.get("timesteps", 1000)),
        beta_start=float(params.get("linear_start", 0.00085)),
        beta_end=float(params.get("linear_end", 0.012)),
        beta_schedule="scaled_linear",
        prediction_type="v_prediction" if info.parameterization == "v" else "epsilon",
        clip_sample=False,
        steps_offset=1,
    )


def latent_scale(info: ModelInfo) -> float:
    """What VAE latents are multiplied by before the U-Net sees them (0.18215 for SD-v1/v2)."""
    params = ((info.config or {}).get("model") or {}).get("params") or {}
    return float(params.get("scale_factor", 0.18215))
