"""Stand-in for A1111 1.10.1 ``modules/sd_models_config.py``: which yaml a checkpoint is built from.

``find_checkpoint_config``: the ``<checkpoint name>.yaml`` beside the file wins (``sd_models.load_model`` looks this
function up on the module at each load, so extensions can wrap it); otherwise ``guess_model_config_from_state_dict``.
The guess only tells SD-v2 (OpenCLIP text-encoder keys, 1024 wide) from SD-v1 (everything else), and inpainting
models (a 9-channel ``input_blocks.0.0.weight``) from text-to-image ones; 1.10.1 also recognises SDXL, SD3,
instruct-pix2pix, depth, unCLIP, ... and spots SD-v2 v-prediction by running the full-size U-Net once: the stand-in
always guesses ``config_sd2`` there. The yaml files are the stand-in's ``configs/``.
"""

import os

from modules import shared

sd_configs_path = shared.sd_configs_path

config_default = shared.sd_default_config
config_sd2 = os.path.join(sd_configs_path, "v2-inference.yaml")
config_sd2v = os.path.join(sd_configs_path, "v2-inference-v.yaml")
config_sd2_inpainting = os.path.join(sd_configs_path, "v2-inpainting-inference.yaml")
config_inpainting = os.path.join(sd_configs_path, "v1-inpainting-inference.yaml")


def guess_model_config_from_state_dict(sd, filename):
    text_encoder = sd.get("cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight")
    diffusion_model_input = sd.get("model.diffusion_model.input_blocks.0.0.weight")
    inpainting = diffusion_model_input is not None and diffusion_model_input.shape[1] == 9
    if text_encoder is not None and text_encoder.shape[-1] == 1024:
        return config_sd2_inpainting if inpainting else config_sd2
    return config_inpainting if inpainting else config_default


def find_checkpoint_config(state_dict, info):
    near = find_checkpoint_config_near_filename(info)
    return near if near is not None else guess_model_config_from_state_dict(state_dict, info.filename if info else "")


def find_checkpoint_config_near_filename(info):
    if info is not None:
        candidate = os.path.splitext(info.filename)[0] + ".yaml"
        if os.path.exists(candidate):
            return candidate
    return None
