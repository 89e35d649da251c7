"""Stand-in for A1111 1.10.1 ``modules/shared_options.py``: the options the stand-in page and ``processing`` read,
with 1.10.1's keys, labels, defaults and sections (the real module defines a few hundred more)."""

import gradio as gr

from modules import shared_items
from modules.options import OptionInfo

restricted_opts = set()

_optimizations = dict(section=("optimizations", "Optimizations"), category_id="sd")
_sampler_params = dict(section=("sampler-params", "Sampler parameters"), category_id="sd")

options_templates = {
    "sd_model_checkpoint": OptionInfo(
        None, "Stable Diffusion checkpoint", gr.Dropdown,
        lambda: {"choices": shared_items.list_checkpoint_tiles()},
        refresh=shared_items.refresh_checkpoints, infotext="Model hash",
        section=("sd", "Stable Diffusion"), category_id="sd"),
    "quicksettings_list": OptionInfo(
        ["sd_model_checkpoint"], "Quicksettings list", section=("ui", "User interface"), category_id="ui"),
    # read by processing: the cond cache, the CFG batch, the sampler parameters p.fill_fields_from_opts takes
    "s_min_uncond": OptionInfo(0.0, "Negative Guidance minimum sigma", gr.Slider, {"minimum": 0.0, "maximum": 15.0, "step": 0.01}, infotext="NGMS", **_optimizations),
    "persistent_cond_cache": OptionInfo(True, "Persistent cond cache", **_optimizations),
    "batch_cond_uncond": OptionInfo(True, "Batch cond/uncond", **_optimizations),
    "s_churn": OptionInfo(0.0, "sigma churn", gr.Slider, {"minimum": 0.0, "maximum": 100.0, "step": 0.01}, infotext="Sigma churn", **_sampler_params),
    "s_tmin": OptionInfo(0.0, "sigma tmin", gr.Slider, {"minimum": 0.0, "maximum": 10.0, "step": 0.01}, infotext="Sigma tmin", **_sampler_params),
    "s_tmax": OptionInfo(0.0, "sigma tmax", gr.Slider, {"minimum": 0.0, "maximum": 999.0, "step": 0.01}, infotext="Sigma tmax", **_sampler_params),
    # read by img2img and inpainting
    "inpainting_mask_weight": OptionInfo(1.0, "Inpainting conditioning mask strength", gr.Slider, {"minimum": 0.0, "maximum": 1.0, "step": 0.01}, infotext='Conditional mask weight', section=("img2img", "img2img"), category_id="sd"),
    "initial_noise_multiplier": OptionInfo(1.0, "Noise multiplier for img2img", gr.Slider, {"minimum": 0.0, "maximum": 1.5, "step": 0.001}, infotext='Noise multiplier', section=("img2img", "img2img"), category_id="sd"),
    "img2img_fix_steps": OptionInfo(False, "With img2img, do exactly the amount of steps the slider specifies.", section=("img2img", "img2img"), category_id="sd"),
    "sd_vae_encode_method": OptionInfo("Full", "VAE type for encode", gr.Radio, {"choices": ["Full", "TAESD"]}, infotext="VAE Encoder", section=("vae", "VAE"), category_id="sd"),
    "hide_samplers": OptionInfo([], "Hide samplers in user interface", gr.CheckboxGroup, lambda: {"choices": [x.name for x in shared_items.list_samplers()]}, **_sampler_params),
    "s_noise": OptionInfo(1.0, "sigma noise", gr.Slider, {"minimum": 0.0, "maximum": 1.1, "step": 0.001}, infotext="Sigma noise", **_sampler_params),
}
