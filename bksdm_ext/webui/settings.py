"""The extension's section in A1111's Settings."""
import gradio as gr

from ..model.arch import PRESETS
from ..model.convert import DTYPES
from . import a1111

# A 2-tuple section: A1111 1.6.1 dies on 1.7+'s (id, label, category) 3-tuples.
SECTION = ("bksdm", "BK-SDM")
# Folders and limits a visitor must not change on an exposed server (--hide-ui-dir-config).
RESTRICTED = ["bksdm_output_dir", "bksdm_data_roots", "bksdm_upload_limit_mb"]


def on_ui_settings() -> None:
    from modules import shared

    options = {
        "bksdm_output_dir": shared.OptionInfo(
            "", "Folder for new BK-SDM checkpoints (empty: the WebUI's checkpoint folder)",
            section=SECTION),
        "bksdm_default_preset": shared.OptionInfo(
            "small", "Default BK-SDM preset", gr.Radio, {"choices": list(PRESETS)},
            section=SECTION),
        "bksdm_default_dtype": shared.OptionInfo(
            "fp16", "Default U-Net precision of converted students", gr.Radio,
            {"choices": list(DTYPES)}, section=SECTION),
        "bksdm_free_vram": shared.OptionInfo(
            False, "Free the WebUI model's VRAM while a BK-SDM job trains on the GPU "
                   "(default of the tabs' checkbox; the model is reloaded afterwards)",
            section=SECTION),
        "bksdm_data_roots": shared.OptionInfo(
            "", "Server folders the BK-SDM tabs may read training data and prompts from, one "
                "per line (the WebUI data folder's bksdm/ is always allowed)", gr.Textbox,
            {"lines": 3}, section=SECTION),
        "bksdm_upload_limit_mb": shared.OptionInfo(
            2048, "Largest upload in the BK-SDM tabs (MB; a training set .zip counted unpacked)",
            section=SECTION),
    }
    for key, info in options.items():
        shared.opts.add_option(key, info)
    a1111.restrict_options(RESTRICTED)
