"""The Convert tab's block picker: cut a custom student unit by unit.

A collapsible section under the presets.  Its check boxes are the units `bksdm info
--blocks` names (ticked = removed), pre-filled from the chosen preset; each change shows
the student's U-Net parameters and its step time, or why that removal cannot work.  The
step time comes from the milliseconds per unit the Blocks view's scan of this teacher
measured, once there is one, and is estimated from FLOPs until then.  Ticking "Convert
these blocks" makes Convert use them instead of the preset.
"""
from typing import Any, List, Optional, Tuple

import gradio as gr

from ..errors import BadInput
from ..model.arch import PRESETS, SD_V1, Architecture, TeacherSpec
from ..model.blocks import notation, removed_units, teacher_units, which_student
from ..model.unit_costs import UnitCosts
from . import blocks_view


def _teacher(loaded: Tuple[Any, ...]) -> TeacherSpec:
    info = loaded[2]
    return info.arch.teacher if info is not None else SD_V1


def preset_units(preset: str, teacher: TeacherSpec = SD_V1) -> List[str]:
    """The units `preset` removes, one check box each."""
    return removed_units(which_student(teacher, preset))


def picked_summary(loaded: Tuple[Any, ...], units: List[str]) -> str:
    """What the picked units make: parameters before -> after and estimated step time."""
    _, ckpt, info, problem = loaded
    teacher = _teacher(loaded)
    if not units:
        return "Tick the blocks to remove."
    try:
        picked = which_student(teacher, None, ",".join(units))
    except BadInput as e:
        return "⚠️ Cannot remove these: %s" % str(e).split(": ", 1)[-1]
    same = picked.removal
    lines = ["**Removed:** `%s`%s" % (notation(picked), " (= the %s preset)" % same.name
                                      if same.name in PRESETS else "")]
    if info is None or ckpt is None:
        lines.append(problem)
        return "  \n".join(lines)
    costs = UnitCosts(ckpt, info.arch)
    params = costs.student_params(picked)
    step_time = (_measured_step_time(loaded[0], picked)
                 or "%.2f× the teacher's (from FLOPs)" % costs.speed_ratio(picked))
    lines.append("U-Net parameters %s → %s (%.1f%% smaller) · estimated U-Net step time %s"
                 % (format(info.unet_params, ","), format(params, ","),
                    100 * (1 - params / info.unet_params), step_time))
    return "  \n".join(lines)


def _measured_step_time(model: Any, picked: Architecture) -> Optional[str]:
    """The step-time ratio from the newest block scan of the loaded teacher's file, with
    where it was measured; None when that teacher has no scan."""
    if model is None or not model.has_file:
        return None
    scan = blocks_view.latest_scan(model.filename)
    ratio = scan.step_time_ratio(removed_units(picked)) if scan is not None else None
    if ratio is None:
        return None
    settings = scan.settings
    return ("%.2f× the teacher's (measured by the block scan on %s, %d steps at %d px)"
            % (ratio, scan.device or "an unrecorded device", settings["steps"],
               settings["size"]))


def build(preset: Any, label_to_preset: Any, loaded: Any) -> Tuple[Any, Any]:
    """The picker's components (inside the current Blocks); returns (use-them box, units)."""
    with gr.Accordion("Pick blocks (custom student)", open=False, elem_id="bksdm_block_picker"):
        use = gr.Checkbox(False, label="Convert these blocks instead of the preset",
                          elem_id="bksdm_use_blocks")
        units = gr.CheckboxGroup(
            teacher_units(SD_V1), value=preset_units(label_to_preset(preset.value)),
            label="Removed blocks: down.S.L / up.S.L = layer L of stage S (0 = full "
                  "resolution), mid = mid-stage block, innermost = lowest-resolution stage",
            elem_id="bksdm_blocks")
        summary = gr.Markdown(elem_id="bksdm_blocks_summary")
        blocks_view.build()
    units.change(lambda picked: picked_summary(loaded(), picked), inputs=[units],
                 outputs=[summary])
    preset.change(lambda label: preset_units(label_to_preset(label), _teacher(loaded())),
                  inputs=[preset], outputs=[units])
    return use, units


def units_to_remove(use: bool, units: Optional[List[str]]) -> Optional[str]:
    """The ``remove`` argument of the conversion: the picked units, or None for the preset."""
    return ",".join(units or []) if use else None
