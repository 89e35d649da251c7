"""CLIP checkpoints in OpenAI's layout as a transformers ``CLIPModel``: OpenAI's own files
(the ``.pt`` TorchScript archives of the `clip` package, e.g. the ViT-L/14 that A1111's
interrogator already downloaded, ``~/.cache/clip/ViT-L-14.pt`` or ``--clip-models-path``)
and open_clip's (``open_clip_pytorch_model.bin``, open_clip_cache.py), which use the same
tensor names.  Either gives CLIP scores without another download.

The weights are renamed to transformers' names (the fused attention input projection
split into q, k, v; the projections transposed); the sizes come from the tensors, as
`clip.model.build_model` reads them.  What the tensors do not say (the attention heads'
width, the activation, the image normalisation) is a `ClipSettings`: OpenAI's by default,
open_clip's from its config or open_clip_cache.py's table.  Only vision transformers:
transformers has no ResNet CLIP.
"""
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Tuple

import torch

from ..errors import BadInput

INTERROGATOR_FILE = "ViT-L-14.pt"  # A1111's interrogator: clip.load("ViT-L/14")
CLIP_PACKAGE_FOLDER = Path("~/.cache/clip")  # the `clip` package's default download_root
# What can be named instead of a ResNet CLIP (RN50.pt ...), which transformers cannot run.
SUPPORTED = ("a vision-transformer CLIP: one of OpenAI's ViT-B-32.pt, ViT-B-16.pt, "
             "ViT-L-14.pt, ViT-L-14-336px.pt, an open_clip ViT checkpoint "
             "(open_clip_pytorch_model.bin) or a transformers CLIPModel folder")
BLOCK = {"attn.out_proj": "self_attn.out_proj", "ln_1": "layer_norm1", "ln_2": "layer_norm2",
         "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}


@dataclass(frozen=True)
class ClipSettings:
    """What an OpenAI-layout state dict does not say about its model (OpenAI's values by
    default; open_clip's LAION models use gelu and, from ViT-H on, wider vision heads)."""

    vision_head_width: int = 64
    text_head_width: int = 64
    activation: str = "quick_gelu"  # transformers' name; open_clip: quick_gelu True/False
    mean: Tuple[float, ...] = (0.48145466, 0.4578275, 0.40821073)
    std: Tuple[float, ...] = (0.26862954, 0.26130258, 0.27577711)


OPENAI = ClipSettings()


def interrogator_file(folders: Iterable[Path] = ()) -> Optional[Path]:
    """The interrogator's ViT-L/14 file in `folders` or the `clip` package's cache (the
    only OpenAI file looked for: never a ResNet one, which transformers cannot run)."""
    for folder in list(folders) + [CLIP_PACKAGE_FOLDER.expanduser()]:
        path = Path(folder) / INTERROGATOR_FILE
        if path.is_file():
            return path
    return None


def read_state(path: Path) -> Dict[str, torch.Tensor]:
    """The tensors of an OpenAI-layout CLIP file: a TorchScript archive, a safetensors
    file or a plain state dict."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
    except RuntimeError:
        pass
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise BadInput("%s: not a CLIP checkpoint (%s); give %s"
                       % (path, e, SUPPORTED)) from None
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


def _check_vision_transformer(state: Dict[str, torch.Tensor], name: str) -> None:
    if any(key.startswith(("visual.layer1.", "visual.attnpool.")) for key in state):
        raise BadInput("%s: a ResNet CLIP (visual.layer1 / visual.attnpool), which "
                       "transformers has no model for, so it cannot give CLIP scores; "
                       "use %s" % (name, SUPPORTED))
    if "visual.conv1.weight" not in state or "text_projection" not in state:
        raise BadInput("%s: not a CLIP checkpoint in OpenAI's layout (no visual.conv1.weight "
                       "/ text_projection); use %s" % (name, SUPPORTED))


def _heads(width: int, head_width: int, name: str) -> int:
    if width % head_width:
        raise BadInput("%s: a width of %d does not split into %d-wide attention heads; is it "
                       "an open_clip model without its open_clip_config.json?"
                       % (name, width, head_width))
    return width // head_width


def to_clip_model(state: Dict[str, torch.Tensor], name: str,
                  settings: ClipSettings = OPENAI) -> Any:
    """A transformers CLIPModel holding an OpenAI-layout CLIP's weights."""
    from transformers import CLIPConfig, CLIPModel

    _check_vision_transformer(state, name)
    width, _, patch, _ = state["visual.conv1.weight"].shape
    grid = int(round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5))
    text_width = state["ln_final.weight"].shape[0]
    config = CLIPConfig(
        text_config=dict(vocab_size=state["token_embedding.weight"].shape[0],
                         hidden_size=text_width,
                         intermediate_size=_mlp_width(state, "transformer."),
                         num_hidden_layers=_layers(state, "transformer."),
                         num_attention_heads=_heads(text_width, settings.text_head_width, name),
                         max_position_embeddings=state["positional_embedding"].shape[0],
                         hidden_act=settings.activation),
        vision_config=dict(hidden_size=width,
                           intermediate_size=_mlp_width(state, "visual.transformer."),
                           num_hidden_layers=_layers(state, "visual.transformer."),
                           num_attention_heads=_heads(width, settings.vision_head_width, name),
                           image_size=patch * grid, patch_size=patch,
                           hidden_act=settings.activation),
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


def _mlp_width(state: Dict[str, torch.Tensor], prefix: str) -> int:
    """The blocks' MLP width (4 × width for OpenAI; ViT-g-14 and ViT-bigG-14 differ)."""
    return state[prefix + "resblocks.0.mlp.c_fc.weight"].shape[0]
