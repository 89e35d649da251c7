"""The two ways transformers names a CLIPTextModel's weights, translated in one place.

transformers 4.x nests the whole text tower under ``text_model.``
(``text_model.encoder.layers.0.mlp.fc1.weight``); 5.x drops that level
(``encoder.layers.0.mlp.fc1.weight``), in the state dict and in module names alike.
SD-v1 checkpoints, diffusers folders and A1111's LoRA keys (``lora_te_text_model_…``) all
use the nested 4.x names, so this project speaks those and translates at the model's edge:
`nested_names` for whatever comes out of a model, `model_names` for what goes into one.
Very old SD-v1 checkpoints also lack the level; A1111 adds it on load, as `nested_names` does.
"""
from typing import Any, Dict, Mapping, TypeVar

TEXT_MODEL = "text_model."
# The text tower's top-level parts; their names get TEXT_MODEL in front when it is missing.
TOWER_PARTS = ("embeddings.", "encoder.", "final_layer_norm.")

V = TypeVar("V")


def nested_name(name: str) -> str:
    """A weight or module name of either naming, in the nested (transformers 4.x) one."""
    return TEXT_MODEL + name if name.startswith(TOWER_PARTS) else name


def nested_names(state: Mapping[str, V]) -> Dict[str, V]:
    """A text-encoder state dict of either naming with nested (``text_model.``) keys."""
    return {nested_name(k): v for k, v in state.items()}


def model_names(model: Any, state: Mapping[str, V]) -> Dict[str, V]:
    """Nested-name `state` under the names `model` (this transformers' CLIPTextModel) has."""
    if hasattr(model, TEXT_MODEL.rstrip(".")):
        return dict(state)
    return {k[len(TEXT_MODEL):] if k.startswith(TEXT_MODEL) else k: v for k, v in state.items()}
