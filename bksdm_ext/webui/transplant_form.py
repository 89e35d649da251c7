"""The Convert tab's "Start from" choice: the loaded model's own weights (a pruned copy),
or a distilled BK-SDM student plus the loaded model's difference from that student's
base (model/transplant.py), student and base picked from the checkpoint list."""
from pathlib import Path
from typing import Any, List, NamedTuple, Optional, Union

import gradio as gr

from ..errors import BadInput
from ..model.checkpoint import Checkpoint
from ..model.ranges import form_number
from ..model.transplant import TransplantReport, transplant
from . import a1111, checkpoints

START_FROM = ("The loaded model's own weights",
              "A distilled BK-SDM student + the loaded model's difference from its base")
HINT = ("The student keeps its distilled blocks and gets what your model changed in its base; "
        "text encoder and VAE come from the loaded model. Distilled students from the hub "
        "(nota-ai/bk-sdm-base, -small, -tiny, their -2M and v2 versions) come into the list "
        "with `bksdm import-diffusers FOLDER --out <checkpoint folder>/bk-sdm-small.safetensors`; "
        "their base is the model they were distilled from (SD-v1.4 for nota-ai's v1 students, "
        "SD-v2.1-base for v2). A short distillation from the loaded model (Distill tab, "
        "*Start from* the result) then closes the rest of the gap. The new checkpoint has the "
        "student's preset; the preset above is not used.")


class Fields(NamedTuple):
    start_from: Any
    box: Any
    student: Any
    base: Any
    alpha: Any


def uses_student(start_from: str) -> bool:
    return start_from == START_FROM[1]


def build() -> Fields:
    """The choice and, shown only for the second way, the student, base and α pickers."""
    start_from = gr.Radio(list(START_FROM), value=START_FROM[0], label="Start from",
                          elem_id="bksdm_start_from")
    with gr.Group(visible=False, elem_id="bksdm_transplant_box") as box:
        with gr.Row():
            student = gr.Dropdown(checkpoints.titles(teachers=False),
                                  label="Distilled BK-SDM student", elem_id="bksdm_transplant_student")
            base = gr.Dropdown(checkpoints.titles(students=False),
                               label="Its base (the model the student was distilled from)",
                               elem_id="bksdm_transplant_base")
            alpha = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Share of the difference (α)",
                              elem_id="bksdm_transplant_alpha")
        gr.Markdown(HINT)
    start_from.change(lambda choice: gr.update(visible=uses_student(choice)),
                      inputs=[start_from], outputs=[box])
    return Fields(start_from, box, student, base, alpha)


def choices() -> List[Any]:
    """Fresh student and base lists (after an import or a finished job)."""
    return [gr.update(choices=checkpoints.titles(teachers=False)),
            gr.update(choices=checkpoints.titles(students=False))]


def student_preset(title: str) -> Optional[str]:
    """The preset of the chosen student, for the new checkpoint's default name."""
    try:
        model = checkpoints.describe(checkpoints.filename(title))
    except BadInput:
        return None
    return model.preset if model is not None and model.is_student else None


def transplant_loaded(mine: Union[Path, Checkpoint], v_prediction: bool, student_title: str,
                      base_title: str, alpha: float, output: Path, dtype: str,
                      overwrite: bool) -> TransplantReport:
    if not student_title or not base_title:
        raise BadInput("Choose the distilled student and the base it was distilled from.")
    return transplant(checkpoints.filename(student_title), checkpoints.filename(base_title),
                      mine, output, alpha=form_number(alpha, "α", whole=False), dtype=dtype,
                      overwrite=overwrite, progress=a1111.Progress("Transplanting"),
                      finetune_v_prediction=v_prediction)


def result_text(report: TransplantReport) -> str:
    text = ("Wrote %s: the BK-SDM %s student %s + %.2f × (loaded model − %s), %s parameters, "
            "%.0f%% of the loaded model's U-Net change kept, in %.1f s. It is in the checkpoint "
            "dropdown now." % (report.output, report.arch, Path(report.student).name, report.alpha,
                               Path(report.base).name, format(report.unet_params, ","),
                               100 * report.carried_share, report.seconds))
    return " ".join([text] + ["⚠️ " + w for w in report.warnings])
