"""Captions -> the text embeddings a U-Net is conditioned on, offline.

Distillation's cache, its sample grids, teacher-made data and DreamBooth's class images all
encode prompts the same way: the checkpoint's own text encoder with a CLIP tokenizer from
files already on the machine.
"""
from typing import Any, List

import torch

from .checkpoint import Checkpoint
from .detect import ModelInfo
from .loading import load_text_encoder


def text_encoder_fn(ckpt: Checkpoint, info: ModelInfo, device: torch.device) -> Any:
    """captions -> the embeddings the U-Net is conditioned on, with the checkpoint's own
    text encoder and a CLIP tokenizer from files already on the machine."""
    from .tokenizer import clip_tokenizer

    tokenizer = clip_tokenizer(info.family)
    encoder = load_text_encoder(ckpt, info.family).to(device).eval()

    @torch.no_grad()
    def encode(captions: List[str]) -> torch.Tensor:
        ids = tokenizer(list(captions), padding="max_length", truncation=True,
                        max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
        return encoder(ids.to(device))[0].cpu()

    return encode
