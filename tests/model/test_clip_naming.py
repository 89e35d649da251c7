"""transformers 4.x nests CLIPTextModel under ``text_model.``, 5.x does not: both namings
convert to the same checkpoint keys, and checkpoint weights load into either."""
import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel

from bksdm_ext.model.clip_naming import model_names, nested_name, nested_names
from bksdm_ext.model.parts_keymap import clip_to_hf, clip_to_ldm


def text_model() -> CLIPTextModel:
    torch.manual_seed(0)
    return CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, vocab_size=49408,
                                        max_position_embeddings=77))


def flat(state):
    """A state dict as transformers 5 names it."""
    return {k[len("text_model."):] if k.startswith("text_model.") else k: v for k, v in state.items()}


def test_names_of_this_transformers_come_out_nested():
    model = text_model()
    state = nested_names(model.state_dict())
    assert state and all(k.startswith("text_model.") for k in state)
    assert nested_name("encoder.layers.0.self_attn.q_proj") == "text_model.encoder.layers.0.self_attn.q_proj"
    assert nested_name("text_projection.weight") == "text_projection.weight"


@pytest.mark.parametrize("family", ["sd-v1", "sd-v2"])
def test_both_namings_make_the_same_checkpoint_keys(family):
    state = nested_names(text_model().state_dict())
    state.pop("text_model.embeddings.position_ids", None)
    nested, unnested = clip_to_ldm(state, family), clip_to_ldm(flat(state), family)
    assert set(nested) == set(unnested)
    assert all(torch.equal(nested[k], unnested[k]) for k in nested)


def test_checkpoint_weights_load_into_this_transformers_model_strictly():
    source, target = text_model(), text_model()
    torch.nn.init.normal_(target.get_input_embeddings().weight)
    state = clip_to_hf(clip_to_ldm(nested_names(source.state_dict()), "sd-v1"), "sd-v1")
    result = target.load_state_dict(model_names(target, state), strict=False)
    assert not result.unexpected_keys
    assert all(k.endswith("position_ids") for k in result.missing_keys)
    assert torch.equal(target.get_input_embeddings().weight, source.get_input_embeddings().weight)
    # A model without the nested level (transformers 5) gets the level stripped.
    assert set(model_names(object(), state)) == set(flat(state))
