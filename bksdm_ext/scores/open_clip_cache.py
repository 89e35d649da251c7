"""open_clip's LAION CLIPs already in the Hugging Face cache.

open_clip fetches only ``open_clip_pytorch_model.bin`` (newer versions
``open_clip_model.safetensors``) and maybe ``open_clip_config.json`` from a laion
repository, never transformers' config.json, so a user who ran SD-v2's text encoder
(ViT-H-14) or SDXL's (ViT-bigG-14) through open_clip has a CLIP that
``CLIPModel.from_pretrained`` cannot see.  Its state dict uses OpenAI's names
(openai_clip.py converts it); what the tensors do not say comes from the
open_clip_config.json cached beside it, else from the table below.
"""
import json
from dataclasses import replace
from pathlib import Path
from typing import Optional

from .openai_clip import OPENAI, ClipSettings

WEIGHT_FILES = ("open_clip_pytorch_model.bin", "open_clip_model.safetensors")
CONFIG_FILE = "open_clip_config.json"
LAION_VIT = ClipSettings(activation="gelu")  # open_clip's nn.GELU; 64-wide heads up to ViT-L
# open_clip's model_configs: the vision heads of ViT-H/g/bigG-14 are wider than 64.
LAION = {
    "laion/CLIP-ViT-L-14-laion2B-s32B-b82K": LAION_VIT,
    "laion/CLIP-ViT-H-14-laion2B-s32B-b79K": replace(LAION_VIT, vision_head_width=80),
    "laion/CLIP-ViT-g-14-laion2B-s12B-b42K": replace(LAION_VIT, vision_head_width=88),
    "laion/CLIP-ViT-g-14-laion2B-s34B-b88K": replace(LAION_VIT, vision_head_width=88),
    "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k": replace(LAION_VIT, vision_head_width=104),
}


def cached_weights(repo: str) -> Optional[Path]:
    """open_clip's weight file of `repo` in the Hugging Face cache, if it is there."""
    from huggingface_hub import try_to_load_from_cache

    for filename in WEIGHT_FILES:
        found = try_to_load_from_cache(repo, filename)
        if isinstance(found, str):
            return Path(found)
    return None


def settings_for(weights: Path) -> ClipSettings:
    """The settings of an OpenAI-layout CLIP file: from the open_clip_config.json beside
    it, else the table's for the cached laion repository it lies in, else OpenAI's."""
    config = weights.parent / CONFIG_FILE
    fallback = LAION.get(cached_repo(weights.parent) or "", OPENAI)
    if not config.is_file():
        return fallback
    saved = json.loads(config.read_text(encoding="utf-8"))
    model, preprocess = saved.get("model_cfg", {}), saved.get("preprocess_cfg", {})
    vision, text = model.get("vision_cfg", {}), model.get("text_cfg", {})
    # open_clip's defaults (CLIPVisionCfg, CLIPTextCfg) where the config is silent.
    return ClipSettings(
        vision_head_width=int(vision.get("head_width", 64)),
        text_head_width=int(text.get("width", 512)) // int(text.get("heads", 8)),
        activation="quick_gelu" if model.get("quick_gelu") else "gelu",
        mean=tuple(preprocess.get("mean", OPENAI.mean)),
        std=tuple(preprocess.get("std", OPENAI.std)))


def cached_repo(snapshot: Path) -> Optional[str]:
    """'org/X' for the cache's snapshot folder models--org--X/snapshots/<commit>, else None."""
    snapshots, repo_folder = snapshot.parent, snapshot.parent.parent
    if snapshots.name != "snapshots" or not repo_folder.name.startswith("models--"):
        return None
    return repo_folder.name[len("models--"):].replace("--", "/")
