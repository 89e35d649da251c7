"""Stand-in for A1111 1.10.1 ``modules/shared_options.py``: the two options the stand-in page needs, with 1.10.1's
keys, labels, defaults and sections (the real module defines a few hundred more)."""

import gradio as gr

from modules import shared_items
from modules.options import OptionInfo

restricted_opts = set()

options_templates = {
    "sd_model_checkpoint": OptionInfo(
        None, "Stable Diffusion checkpoint", gr.Dropdown,
        lambda: {"choices": shared_items.list_checkpoint_tiles()},
        refresh=shared_items.refresh_checkpoints, infotext="Model hash",
        section=("sd", "Stable Diffusion"), category_id="sd"),
    "quicksettings_list": OptionInfo(
        ["sd_model_checkpoint"], "Quicksettings list", section=("ui", "User interface"), category_id="ui"),
}
