"""OpenAI's own CLIP files (the ``.pt`` TorchScript archives of the `clip` package) as a
transformers ``CLIPModel``, so the ViT-L/14 that A1111's interrogator already downloaded
(``~/.cache/clip/ViT-L-14.pt``, or ``--clip-models-path``) gives CLIP scores without
another download.

The weights are renamed to transformers' names (the fused attention input projection
split into q, k, v; the projections transposed); the sizes come from the tensors, as
`clip.model.build_model` reads them.
"""
import re
from pathlib import Path
from typing import Any, Dict, Iterable, Optional

import torch

from ..errors import BadInput

INTERROGATOR_FILE = "ViT-L-14.pt"  # A1111's interrogator: clip.load("ViT-L/14")
CLIP_PACKAGE_FOLDER = Path("~/.cache/clip")  # the `clip` package's default download_root
HEAD_WIDTH = 64  # OpenAI CLIP: heads = width // 64
BLOCK = {"attn.out_proj": "self_attn.out_proj", "ln_1": "layer_norm1", "ln_2": "layer_norm2",
         "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}


def interrogator_file(folders: Iterable[Path] = ()) -> Optional[Path]:
    """The interrogator's ViT-L/14 file in `folders` or the `clip` package's cache."""
    for folder in list(folders) + [CLIP_PACKAGE_FOLDER.expanduser()]:
        path = Path(folder) / INTERROGATOR_FILE
        if path.is_file():
            return path
    return None


def read_state(path: Path) -> Dict[str, torch.Tensor]:
    """The tensors of an OpenAI CLIP file: a TorchScript archive, or a plain state dict."""
    try:
        return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
    except RuntimeError:
        pass
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise BadInput("%s: not an OpenAI CLIP file (%s); give a .pt file of the `clip` "
                       "package or a transformers CLIPModel folder" % (path, e)) from None
    return dict(state.get("state_dict", state)) if isinstance(state, dict) else {}


def _layers(state: Dict[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"resblocks\.(\d+)\.")
    return len({m.group(1) for m in map(pattern.match, state) if m})


def _tower(state: Dict[str, torch.Tensor], source: str, target: str) -> Dict[str, torch.Tensor]:
    """One transformer's blocks, OpenAI names to transformers names."""
    out = {}
    for i in range(_layers(state, source)):
        old, new = "%sresblocks.%d." % (source, i), "%sencoder.layers.%d." % (target, i)
        for kind in ("weight", "bias"):
            q, k, v = state[old + "attn.in_proj_" + kind].chunk(3)
            for name, part in (("q", q), ("k", k), ("v", v)):
                out[new + "self_attn.%s_proj.%s" % (name, kind)] = part
            for a, b in BLOCK.items():
                out[new + b + "." + kind] = state[old + a + "." + kind]
    return out


def to_clip_model(state: Dict[str, torch.Tensor], name: str) -> Any:
    """A transformers CLIPModel holding an OpenAI CLIP's weights (vision transformers only)."""
    from transformers import CLIPConfig, CLIPModel

    if "visual.conv1.weight" not in state or "text_projection" not in state:
        raise BadInput("%s: not an OpenAI CLIP vision-transformer checkpoint (no "
                       "visual.conv1.weight / text_projection); ResNet CLIPs are not "
                       "supported" % name)
    width, _, patch, _ = state["visual.conv1.weight"].shape
    grid = int(round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5))
    text_width = state["ln_final.weight"].shape[0]
    config = CLIPConfig(
        text_config=dict(vocab_size=state["token_embedding.weight"].shape[0],
                         hidden_size=text_width, intermediate_size=4 * text_width,
                         num_hidden_layers=_layers(state, "transformer."),
                         num_attention_heads=text_width // HEAD_WIDTH,
                         max_position_embeddings=state["positional_embedding"].shape[0]),
        vision_config=dict(hidden_size=width, intermediate_size=4 * width,
                           num_hidden_layers=_layers(state, "visual.transformer."),
                           num_attention_heads=width // HEAD_WIDTH, image_size=patch * grid,
                           patch_size=patch),
        projection_dim=state["text_projection"].shape[1])
    weights = {
        "logit_scale": state["logit_scale"],
        "text_projection.weight": state["text_projection"].t(),
        "visual_projection.weight": state["visual.proj"].t(),
        "text_model.embeddings.token_embedding.weight": state["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": state["positional_embedding"],
        "text_model.final_layer_norm.weight": state["ln_final.weight"],
        "text_model.final_layer_norm.bias": state["ln_final.bias"],
        "vision_model.embeddings.class_embedding": state["visual.class_embedding"],
        "vision_model.embeddings.patch_embedding.weight": state["visual.conv1.weight"],
        "vision_model.embeddings.position_embedding.weight": state["visual.positional_embedding"],
    }
    for ours, theirs in (("pre_layrnorm", "ln_pre"), ("post_layernorm", "ln_post")):
        for kind in ("weight", "bias"):
            weights["vision_model.%s.%s" % (ours, kind)] = state["visual.%s.%s" % (theirs, kind)]
    weights.update(_tower(state, "transformer.", "text_model."))
    weights.update(_tower(state, "visual.transformer.", "vision_model."))
    model = CLIPModel(config)
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in weights.items()},
                                                strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise BadInput("%s: the CLIP weights do not fit (missing %s, unexpected %s)"
                       % (name, missing[:3], unexpected[:3]))
    return model
