"""The extension's section in A1111's Settings."""
import gradio as gr

from ..model.arch import PRESETS
from ..model.convert import DTYPES

# A 2-tuple section: A1111 1.6.1 dies on 1.7+'s (id, label, category) 3-tuples.
SECTION = ("bksdm", "BK-SDM")


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
    }
    for key, info in options.items():
        shared.opts.add_option(key, info)
