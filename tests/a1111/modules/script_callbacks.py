"""Stand-in for A1111 1.10.1 ``modules/script_callbacks.py``: the callback kinds BK-SDM, the stand-in page and the
built-in Lora extension's and the sd-webui-controlnet stand-in use (app_started, model_loaded, ui_tabs, ui_settings,
before_ui, script_unloaded, cfg_denoiser), and ``remove_callbacks_for_function``. Callbacks are named
``<extension>/<script file>/<category>[/<name>]`` (``-1``, ``-2``, ... when taken) and run in registration
order; one that raises is reported and skipped. No user ordering of callbacks.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from typing import TYPE_CHECKING, Optional

from modules import errors, extensions

if TYPE_CHECKING:
    from fastapi import FastAPI
    from gradio import Blocks

callback_map = {"callbacks_" + kind: [] for kind in ("app_started", "model_loaded", "ui_tabs", "ui_settings",
                                                      "before_ui", "script_unloaded", "cfg_denoiser")}


class CFGDenoiserParams:
    """What ``cfg_denoiser`` callbacks get, before the U-Net call of each sampling step."""

    def __init__(self, x, image_cond, sigma, sampling_step, total_sampling_steps, text_cond, text_uncond, denoiser=None):
        self.x = x
        self.image_cond = image_cond
        self.sigma = sigma
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps
        self.text_cond = text_cond
        self.text_uncond = text_uncond
        self.denoiser = denoiser


def report_exception(c, job):
    errors.report("Error executing callback %s for %s" % (job, c.script), exc_info=True)


@dataclasses.dataclass
class ScriptCallback:
    script: str
    callback: any
    name: str = "unnamed"


def add_callback(callbacks, fun, *, name=None, category='unknown', filename=None):
    if filename is None:  # the nearest caller outside this module
        frame = sys._getframe(1)
        while frame is not None and frame.f_code.co_filename == __file__:
            frame = frame.f_back
        filename = frame.f_code.co_filename if frame is not None else "unknown file"
    owner = extensions.find_extension(filename)
    base = "/".join([owner.canonical_name if owner else "base", os.path.basename(filename), category] + ([name] if name else []))
    taken = {c.name for c in callbacks}
    unique = base
    for n in range(1, 1000):
        if unique not in taken:
            break
        unique = "%s-%d" % (base, n)
    callbacks.append(ScriptCallback(filename, fun, unique))


def clear_callbacks():
    for callbacks in callback_map.values():
        callbacks.clear()


def _run(kind, *args):
    """(stand-in helper) calls every ``kind`` callback with ``args``; returns their results"""
    results = []
    for c in list(callback_map["callbacks_" + kind]):
        try:
            results.append(c.callback(*args))
        except Exception:
            report_exception(c, kind + "_callback")
    return results


def app_started_callback(demo: Optional[Blocks], app: FastAPI):
    _run("app_started", demo, app)


def model_loaded_callback(sd_model):
    _run("model_loaded", sd_model)


def ui_tabs_callback():
    return [tab for tabs in _run("ui_tabs") for tab in (tabs or [])]


def ui_settings_callback():
    _run("ui_settings")


def before_ui_callback():
    _run("before_ui")


def script_unloaded_callback():
    _run("script_unloaded")


def cfg_denoiser_callback(params: CFGDenoiserParams):
    _run("cfg_denoiser", params)


def remove_callbacks_for_function(callback_func):
    for callbacks in callback_map.values():
        callbacks[:] = [c for c in callbacks if c.callback != callback_func]


def on_app_started(callback, *, name=None):
    """``callback(demo, app)`` once the server runs (the gradio Blocks and the FastAPI app)."""
    add_callback(callback_map["callbacks_app_started"], callback, name=name, category="app_started")


def on_model_loaded(callback, *, name=None):
    """``callback(sd_model)`` after every model load or weight reload."""
    add_callback(callback_map["callbacks_model_loaded"], callback, name=name, category="model_loaded")


def on_ui_tabs(callback, *, name=None):
    """``callback()`` returns None or a list of ``(gradio Blocks, tab title, elem_id)``, one per new top-level tab."""
    add_callback(callback_map["callbacks_ui_tabs"], callback, name=name, category="ui_tabs")


def on_ui_settings(callback, *, name=None):
    """``callback()`` adds settings with ``shared.opts.add_option(key, shared.OptionInfo(...))``."""
    add_callback(callback_map["callbacks_ui_settings"], callback, name=name, category="ui_settings")


def on_before_ui(callback, *, name=None):
    """``callback()`` once the scripts are loaded, before the UI is built (webui.py; also without a UI)."""
    add_callback(callback_map["callbacks_before_ui"], callback, name=name, category="before_ui")


def on_script_unloaded(callback, *, name=None):
    """``callback()`` before the scripts are reloaded (here: at ``standin_app.reset``)."""
    add_callback(callback_map["callbacks_script_unloaded"], callback, name=name, category="script_unloaded")


def on_cfg_denoiser(callback, *, name=None):
    """``callback(params)`` (a ``CFGDenoiserParams``) in each sampling step, before the U-Net is called; the
    callback may replace ``params.x``, ``image_cond``, ``sigma``, ``text_cond``, ``text_uncond``."""
    add_callback(callback_map["callbacks_cfg_denoiser"], callback, name=name, category="cfg_denoiser")
