"""Stand-in for lllyasviel/huggingface_guess: the U-Net layout of an SD-v1/v2 state dict."""
from types import SimpleNamespace
from typing import Dict, List

import torch

# model_list.SD15 / SD20's unet_extra_config: heads are not in the weights, so the guess takes
# them from the family it matched (a test of tiny models sets its own).
UNET_EXTRA_CONFIG = {"sd1": dict(num_heads=8, num_head_channels=-1),
                     "sd2": dict(num_heads=-1, num_head_channels=64)}


def _count(keys: List[str], pattern: str) -> int:
    count = 0
    while any(k.startswith(pattern.format(count)) for k in keys):
        count += 1
    return count


def _transformer_depth(keys: List[str], prefix: str) -> int:
    return _count(keys, prefix + "1.transformer_blocks.{}.")


def detect_unet_config(state_dict: Dict[str, torch.Tensor], key_prefix: str) -> dict:
    keys = list(state_dict)
    first = state_dict[key_prefix + "input_blocks.0.0.weight"]
    model_channels = first.shape[0]
    blocks = _count(keys, key_prefix + "input_blocks.{}.")
    # transformer_depth_output[c] is output block blocks-1-c's: built from the end, popped.
    num_res_blocks, channel_mult, depth = [], [], []
    depth_output = [_transformer_depth(keys, "%soutput_blocks.%d." % (key_prefix, blocks - 1))]
    resnets, mult, context_dim, linear = 0, 0, None, False
    for i in range(1, blocks):
        prefix = "%sinput_blocks.%d." % (key_prefix, i)
        output = "%soutput_blocks.%d." % (key_prefix, blocks - i - 1)
        if prefix + "0.op.weight" in state_dict:  # a downsampler ends a stage
            num_res_blocks.append(resnets)
            channel_mult.append(mult)
            resnets = 0
            depth_output.append(_transformer_depth(keys, output))
            continue
        resnets += 1
        mult = state_dict[prefix + "0.out_layers.3.weight"].shape[0] // model_channels
        depth.append(_transformer_depth(keys, prefix))
        if depth[-1] and context_dim is None:
            context_dim = state_dict[prefix + "1.transformer_blocks.0.attn2.to_k.weight"].shape[1]
            linear = state_dict[prefix + "1.proj_in.weight"].dim() == 2
        depth_output.append(_transformer_depth(keys, output))
    num_res_blocks.append(resnets)
    channel_mult.append(mult)
    if key_prefix + "middle_block.1.proj_in.weight" in state_dict:
        middle = _count(keys, key_prefix + "middle_block.1.transformer_blocks.{}.")
    elif key_prefix + "middle_block.0.in_layers.0.weight" in state_dict:
        middle = -1
    else:
        middle = -2
    heads = UNET_EXTRA_CONFIG["sd2" if linear else "sd1"]
    return dict(use_checkpoint=False, image_size=32, use_spatial_transformer=True, legacy=False,
                adm_in_channels=None, in_channels=first.shape[1],
                out_channels=state_dict[key_prefix + "out.2.weight"].shape[0],
                model_channels=model_channels, num_res_blocks=num_res_blocks,
                transformer_depth=depth, transformer_depth_output=depth_output,
                channel_mult=channel_mult, transformer_depth_middle=middle,
                use_linear_in_transformer=linear, context_dim=context_dim, **heads)


def guess(state_dict: Dict[str, torch.Tensor]) -> SimpleNamespace:
    prefix = "model.diffusion_model."
    return SimpleNamespace(unet_config=detect_unet_config(state_dict, prefix),
                           unet_key_prefix=[prefix])
