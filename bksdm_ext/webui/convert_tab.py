"""The Convert sub-tab: turn the loaded checkpoint into a BK-SDM student that appears in
the checkpoint dropdown, with A1111's own progress bar while it is written."""
import html
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import gradio as gr

from ..model.arch import PRESETS
from ..model.blocks import which_student
from ..model.checkpoint import Checkpoint
from ..model.convert import ConversionSettings, convert_checkpoint, student_unet_params
from ..model.detect import ModelInfo, inspect_checkpoint
from ..errors import BadInput, check_path_text
from ..model.staging import TEMP_NAME_EXTRA
from . import a1111, block_picker, checkpoints, guard, transplant_form
from .messages import message
from ..settings import declaration, label as setting_label
from .presets import default_label, label_of, labels, name_of

# A file name A1111 lists and every OS accepts: no separators, no leading dot.
VALID_NAME = re.compile(r"^\w[\w .()\[\]+,-]*$")


def _loaded() -> Tuple[Optional[a1111.LoadedModel], Optional[Checkpoint], Optional[ModelInfo], str]:
    """The loaded model, its weights as a checkpoint and what it is, or the reason it can't be used."""
    loaded = a1111.loaded_model()
    if loaded is None:
        return None, None, None, ("No checkpoint is loaded: pick an SD-v1 or SD-v2 checkpoint in the "
                                  "dropdown at the top, then press ↻ here.")
    # A .safetensors file says what the model is (its header alone); the loaded weights may
    # be wrong (a wrong yaml zero-fills blocks), or the only copy (an unsaved merge).
    on_disk = loaded.has_file and loaded.filename.suffix == ".safetensors"
    try:
        ckpt = (Checkpoint(loaded.filename) if on_disk
                else Checkpoint(loaded.filename, state=loaded.state_dict()))
        info = inspect_checkpoint(ckpt, v_prediction=loaded.parameterization == "v")
    except BadInput as e:
        return loaded, None, None, "Cannot convert %s: %s" % (loaded.title, _after_path(e))
    if info.is_student:
        return loaded, None, None, ("%s is already a BK-SDM %s student: load its teacher to convert."
                                    % (loaded.title, label_of(info.preset)))
    return loaded, ckpt, info, ""


def _after_path(error: BadInput) -> str:
    """Core messages start with the file path; in the tab the title already says which model."""
    text = str(error)
    return text.split(": ", 1)[1] if ": " in text else text


def loaded_summary() -> str:
    warnings = "".join("⛔ %s  \n" % html.escape(p) for p in guard.last_problem)
    warnings += "".join("⚠️ Not in the BK-SDM lists: %s  \n" % html.escape(p)
                        for p in checkpoints.unreadable())
    loaded, _, info, problem = _loaded()
    if problem:
        return warnings + "⚠️ " + html.escape(problem)
    assert loaded is not None and info is not None
    source = "file" if loaded.has_file else "weights in memory (no file: e.g. an unsaved merge)"
    return warnings + ("**Loaded:** %s  \n**Family:** %s, %s prediction%s · **U-Net:** %s parameters · "
            "**Source:** %s" % (html.escape(loaded.title), info.family.upper(),
                                 "v" if info.parameterization == "v" else "ε",
                                 ", inpainting" if info.arch.teacher.inpainting else "",
                                 format(info.unet_params, ","), source))


def preset_preview(label: str) -> str:
    """What the preset removes and what it gives, for the loaded teacher."""
    removal = PRESETS[name_of(label) or label]
    _, ckpt, info, problem = _loaded()
    lines = ["**%s**: %s." % (label, removal.summary)]
    if info is not None and ckpt is not None:
        student = student_unet_params(ckpt, which_student(info.arch.teacher, removal))
        lines.append("U-Net parameters %s → %s (%.1f%% smaller)."
                     % (format(info.unet_params, ","), format(student, ","),
                        100 * (1 - student / info.unet_params)))
    if removal.paper_speed_ratio:
        lines.append("Paper: U-Net step time %.2f× the teacher's." % removal.paper_speed_ratio)
    lines.append("A converted student needs distillation retraining (Distill tab) to draw well.")
    return "  \n".join(lines)


def student_default_name(title: str, label: str) -> str:
    """The default name when starting from a student: after the student's preset, or the
    chosen preset's when the student has none of its own (a custom one)."""
    preset = transplant_form.student_preset(title)
    return default_name(label_of(preset) if preset in PRESETS else label)


def default_name(label: str) -> str:
    loaded = a1111.loaded_model()
    stem = loaded.filename.stem if loaded is not None else "model"
    return "%s-bk-%s" % (stem, name_of(label))


def output_path(name: str, overwrite: bool) -> Path:
    name = name.strip()
    if name.lower().endswith(".safetensors"):
        name = name[: -len(".safetensors")]
    if not name:
        raise BadInput("Enter a name for the new checkpoint.")
    if ".." in name or not VALID_NAME.match(name):
        raise BadInput("'%s' is not a valid checkpoint name: use letters, digits, spaces and "
                       "- _ . ( ) [ ] + , only, with no folders and no '..'." % name)
    path = a1111.checkpoint_dir() / (name + ".safetensors")
    check_path_text(path.name, "New checkpoint name", reserve=TEMP_NAME_EXTRA)
    if path.exists() and not overwrite:
        raise BadInput("%s already exists: choose another name or tick Overwrite." % path.name)
    return path


def convert(id_task: str, label: str, name: str, dtype: str, overwrite: bool,
            start_from: str = transplant_form.START_FROM[0], student: str = "", base: str = "",
            alpha: float = 1.0, use_blocks: bool = False,
            blocks: Optional[List[str]] = None, lora: str = "") -> List[Any]:
    """Convert the loaded model (to the preset, or to the blocks picked when `use_blocks`; or
    carry its difference from `base`, or `lora`, into `student`);
    returns [new checkpoint title, Load-button update, message]."""
    try:
        loaded, ckpt, info, problem = _loaded()
        if problem:
            raise BadInput(problem)
        assert loaded is not None and ckpt is not None
        output = output_path(name, overwrite)
        if transplant_form.uses_student(start_from):
            report = transplant_form.transplant_loaded(
                ckpt if not loaded.has_file else loaded.filename,
                loaded.parameterization == "v", student, base, alpha, output, dtype, overwrite,
                lora if transplant_form.uses_lora(start_from) else None)
            a1111.refresh_checkpoints()
            title = a1111.checkpoint_title(output) or output.name
            return [title, gr.update(visible=True),
                    message("success", transplant_form.result_text(report))]
        report = convert_checkpoint(ckpt if not loaded.has_file else loaded.filename, output,
                                    None if use_blocks else name_of(label), dtype=dtype,
                                    v_prediction=loaded.parameterization == "v",
                                    overwrite=overwrite, progress=a1111.Progress("Converting"),
                                    remove=block_picker.units_to_remove(use_blocks, blocks))
    except BadInput as e:
        return ["", gr.update(visible=False), message("error", str(e))]
    except InterruptedError:
        return ["", gr.update(visible=False), message("error", "Interrupted: nothing was written.")]
    a1111.refresh_checkpoints()
    title = a1111.checkpoint_title(output) or output.name
    text = ("Wrote %s (%s parameters, %s) and its .yaml in %.1f s. It is in the checkpoint "
            "dropdown now." % (output, format(report.student_unet_params, ","), report.dtype,
                                report.seconds))
    return [title, gr.update(visible=True), message("success", text)]


def build() -> None:
    """Create the tab's components inside the current gradio Blocks context."""
    from modules.call_queue import wrap_gradio_gpu_call

    with gr.Row():
        summary = gr.Markdown(elem_id="bksdm_loaded")
        refresh = gr.Button("↻", elem_id="bksdm_refresh_loaded", scale=0, min_width=40)
    preset = gr.Radio(labels(), value=default_label(),
                      label=setting_label(ConversionSettings, "preset"),
                      elem_id="bksdm_preset")
    preview = gr.Markdown(elem_id="bksdm_preview")
    use_blocks, blocks = block_picker.build(preset, name_of, _loaded)
    start = transplant_form.build()
    with gr.Row():
        name = gr.Textbox(label="New checkpoint name", elem_id="bksdm_output_name")
        dtype_setting = declaration(ConversionSettings, "dtype")
        dtype = gr.Dropdown(list(dtype_setting.setting.choices or ()),
                            value=a1111.opt("bksdm_default_dtype", dtype_setting.default),
                            label=dtype_setting.setting.label, elem_id="bksdm_dtype")
        overwrite = gr.Checkbox(False, label="Overwrite", elem_id="bksdm_overwrite")
    id_task = gr.Textbox(visible=False)
    run = gr.Button("Convert", variant="primary", elem_id="bksdm_convert")
    gr.HTML(elem_id="bksdm_convert_progress")
    result = gr.HTML(elem_id="bksdm_convert_result")
    converted = gr.Textbox(visible=False, elem_id="bksdm_converted_title")
    load = gr.Button("Load it now", visible=False, elem_id="bksdm_load_now")

    def show_loaded(label: str) -> Dict[Any, Any]:
        return {summary: loaded_summary(), preview: preset_preview(label),
                name: default_name(label)}

    refresh.click(show_loaded, inputs=[preset], outputs=[summary, preview, name])
    preset.change(lambda label: {preview: preset_preview(label), name: default_name(label)},
                  inputs=[preset], outputs=[preview, name])
    run.click(wrap_gradio_gpu_call(convert, extra_outputs=["", gr.update()]),
              _js="bksdm_convert_submit", inputs=[id_task, preset, name, dtype, overwrite,
                                                  start.start_from, start.student, start.base,
                                                  start.alpha, use_blocks, blocks, start.lora],
              outputs=[converted, load, result])
    refresh.click(transplant_form.choices, outputs=[start.student, start.base, start.lora])
    start.student.change(student_default_name, inputs=[start.student, preset], outputs=[name])
    converted.change(None, _js="bksdm_refresh_checkpoints", inputs=[converted], outputs=[])
    load.click(None, _js="bksdm_load_checkpoint", inputs=[converted], outputs=[])
