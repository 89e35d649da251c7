"""The Convert tab's "Start from" choice: the loaded model's own weights (a pruned copy),
a distilled BK-SDM student plus the loaded model's difference from that student's base
(model/transplant.py), student and base picked from the checkpoint list, or a distilled
student plus a LoRA made for the loaded model (its merged difference), the LoRA picked
from A1111's Lora folder."""
from pathlib import Path
from typing import Any, List, NamedTuple, Optional, Union

import gradio as gr

from ..errors import BadInput
from ..model.checkpoint import Checkpoint
from ..model.transplant import TransplantReport, TransplantSettings, transplant
from ..settings import form_number, label
from . import a1111, checkpoints

START_FROM = ("The loaded model's own weights",
              "A distilled BK-SDM student + the loaded model's difference from its base",
              "A distilled BK-SDM student + a LoRA made for the loaded model")
HINT = ("The student keeps its distilled blocks and gets what your model changed in its base; "
        "text encoder and VAE come from the loaded model. Distilled students from the hub "
        "(nota-ai/bk-sdm-base, -small, -tiny, their -2M and v2 versions) come into the list "
        "with `bksdm import-diffusers FOLDER --out <checkpoint folder>/bk-sdm-small.safetensors`; "
        "their base is the model they were distilled from (SD-v1.4 for nota-ai's v1 students, "
        "SD-v2.1-base for v2). A short distillation from the loaded model (Distill tab, "
        "*Start from* the result) then closes the rest of the gap. The new checkpoint has the "
        "student's preset; the preset above is not used.")


LORA_HINT = ("The LoRA is merged into the student at strength α, its text-encoder part into the "
             "text encoder: the loaded model is the base the LoRA was made for. Modules of "
             "blocks the student removed cannot be carried; the result says how much of the "
             "LoRA's change was kept. (.safetensors LoRAs from A1111's Lora folder.)")


class Fields(NamedTuple):
    start_from: Any
    box: Any
    student: Any
    base: Any
    alpha: Any
    lora: Any


def uses_student(start_from: str) -> bool:
    return start_from in START_FROM[1:]


def uses_lora(start_from: str) -> bool:
    return start_from == START_FROM[2]


def lora_choices() -> List[str]:
    """The .safetensors files of A1111's Lora folder, by their path inside it."""
    folder = a1111.lora_dir()
    if not folder.is_dir():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*.safetensors") if p.is_file())


def lora_file(name: str) -> Path:
    """The listed LoRA of that name; nothing else (the name comes from the page)."""
    if name not in lora_choices():
        raise BadInput("Choose a LoRA from the list (press ↻ if you just added it)."
                       if not name else "'%s' is not in A1111's Lora folder any more; press ↻ "
                       "and choose again." % name)
    return a1111.lora_dir() / name


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
            lora = gr.Dropdown(lora_choices(), label="LoRA (made for the loaded model)",
                               visible=False, elem_id="bksdm_transplant_lora")
            alpha = gr.Slider(0.0, 2.0, value=TransplantSettings.alpha, step=0.05,
                              label=label(TransplantSettings, "alpha"),
                              elem_id="bksdm_transplant_alpha")
        hint = gr.Markdown(HINT)

    def show(choice: str) -> List[Any]:
        return [gr.update(visible=uses_student(choice)), gr.update(visible=not uses_lora(choice)),
                gr.update(visible=uses_lora(choice)),
                gr.update(value=LORA_HINT if uses_lora(choice) else HINT)]

    start_from.change(show, inputs=[start_from], outputs=[box, base, lora, hint])
    return Fields(start_from, box, student, base, alpha, lora)


def choices() -> List[Any]:
    """Fresh student, base and LoRA lists (after an import or a finished job)."""
    return [gr.update(choices=checkpoints.titles(teachers=False)),
            gr.update(choices=checkpoints.titles(students=False)),
            gr.update(choices=lora_choices())]


def student_preset(title: str) -> Optional[str]:
    """The preset of the chosen student, for the new checkpoint's default name."""
    try:
        model = checkpoints.describe(checkpoints.filename(title))
    except BadInput:
        return None
    return model.preset if model is not None and model.is_student else None


def transplant_loaded(mine: Union[Path, Checkpoint], v_prediction: bool, student_title: str,
                      base_title: str, alpha: float, output: Path, dtype: str,
                      overwrite: bool, lora: Optional[str] = None) -> TransplantReport:
    """The student + α × (the loaded model − the base); with `lora` (the third choice), the
    student + α × the LoRA, the loaded model being its base."""
    if lora is not None:
        if not student_title:
            raise BadInput("Choose the distilled student.")
        if not isinstance(mine, Path):
            raise BadInput("The loaded model has no file (an unsaved merge): save it as a "
                           "checkpoint first, load that, then add the LoRA to a student.")
        return transplant(checkpoints.filename(student_title), mine, lora_file(lora), output,
                          alpha=float(alpha), dtype=dtype, overwrite=overwrite,
                          progress=a1111.Progress("Transplanting"))
    if not student_title or not base_title:
        raise BadInput("Choose the distilled student and the base it was distilled from.")
    return transplant(checkpoints.filename(student_title), checkpoints.filename(base_title),
                      mine, output, alpha=form_number(alpha, "α", whole=False), dtype=dtype,
                      overwrite=overwrite, progress=a1111.Progress("Transplanting"),
                      finetune_v_prediction=v_prediction)


def result_text(report: TransplantReport) -> str:
    added = ("the LoRA %s" % Path(report.finetune).name if report.lora
             else "(loaded model − %s)" % Path(report.base).name)
    text = ("Wrote %s: the BK-SDM %s student %s + %.2f × %s, %s parameters, %.0f%% of the %s's "
            "U-Net change kept, in %.1f s. It is in the checkpoint dropdown now."
            % (report.output, report.preset, Path(report.student).name, report.alpha, added,
               format(report.unet_params, ","), 100 * report.carried_share,
               "LoRA" if report.lora else "loaded model", report.seconds))
    return " ".join([text] + ["⚠️ " + w for w in report.warnings])
