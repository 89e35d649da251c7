"""Images (or latents) from a U-Net with diffusers, for every part that generates: sample
grids, latency, the demo, DreamBooth's class images and teacher-made training data.

Each sampler (samplers.py) maps to a diffusers scheduler built on the model's own
training noise schedule (from its yaml), so SD-v2 v-models sample right.  An inpainting
model draws from text with everything masked (inpainting.py), as in A1111's txt2img.
"""
from typing import Any, Optional

import torch

from .detect import ModelInfo
from .inpainting import FullyMaskedUNet
from .loading import latent_scale, noise_scheduler
from .samplers import DEFAULT_SAMPLER, SAMPLERS


def make_sampler(info: ModelInfo, name: str = DEFAULT_SAMPLER) -> Any:
    import diffusers

    class_name, extra = SAMPLERS[name]
    return getattr(diffusers, class_name).from_config(noise_scheduler(info).config, **extra)


def make_pipeline(unet: torch.nn.Module, vae: Any, info: ModelInfo,
                  sampler: str = DEFAULT_SAMPLER, text_encoder: Optional[Any] = None,
                  tokenizer: Optional[Any] = None) -> Any:
    """A StableDiffusionPipeline around already-loaded parts, progress bar off (callers
    show their own).  Without a text encoder it takes ``prompt_embeds``."""
    from diffusers import StableDiffusionPipeline

    if info.arch.teacher.inpainting:
        unet = FullyMaskedUNet(unet, vae, latent_scale(info))
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                   unet=unet, scheduler=make_sampler(info, sampler),
                                   safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe
