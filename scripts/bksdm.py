"""A1111 entry point of the BK-SDM extension: registers the tab, settings, load checks, the
LoRA translation and the ControlNet adaptation for students, and the LCM sampler where A1111
has none (1.6, 1.7), and how a few-step student is meant to draw.

A1111 puts the extension folder on sys.path only while this script runs, so the
package is imported here, students' U-Net class included: their yaml names
``bksdm_ext.ldm_unet.NoMiddleBlockUNetModel``, and scripts load before the start-up model.
A1111 runs every ``Script`` class it finds in this module: `LoraNotes` is one.
Forge runs this file too; there students need `forge.install` instead of the yaml lookup.
"""
from modules import script_callbacks

import bksdm_ext.ldm_unet  # noqa: F401 - makes students' yaml target importable
from bksdm_ext.webui import (controlnet, forge, guard, jobs_service, lcm_sampler, recommendation,
                             settings, student_lora, ui)
from bksdm_ext.webui.student_lora import LoraNotes  # noqa: F401 - an always-visible script

if forge.is_forge():
    forge.install()  # before Forge's first model load: no phantom middle block in students
else:
    guard.patch_config_lookup()
lcm_sampler.register()  # before the page is built: its sampler dropdowns list it
student_lora.install()  # again at each model load and generation: the Lora extension may load later
script_callbacks.on_ui_tabs(ui.on_ui_tabs)
script_callbacks.on_ui_settings(settings.on_ui_settings)
script_callbacks.on_model_loaded(guard.check_loaded_model)
script_callbacks.on_model_loaded(recommendation.on_model_loaded)
script_callbacks.on_model_loaded(student_lora.forget_other_layouts)
script_callbacks.on_cfg_denoiser(controlnet.on_cfg_denoiser)
# Re-attach jobs that outlived a restart, and keep the queue moving from the start.
script_callbacks.on_app_started(lambda demo, app: jobs_service.runner())
