"""The Distill tab's "Start from": the pruned teacher (the paper's start), or a BK-SDM
student in the checkpoint list (transplanted in the Convert tab, imported from the hub, or
an earlier run's result), the quick path to a student of the user's own model."""
from pathlib import Path
from typing import Any, Dict, Tuple

import gradio as gr

from ..errors import BadInput
from ..model.arch import PRESETS
from ..model.blocks import notation, which_student
from ..model.checkpoint import Checkpoint
from ..model.detect import inspect_checkpoint
from ..train.init_student import checked_init_student
from . import checkpoints

START_FROM = ("The teacher, pruned (the paper's start)",
              "A BK-SDM student from the list (transplanted, imported or an earlier result)")
HINT = ("A student close to the goal (e.g. the Convert tab's student + your model's difference) "
        "needs far fewer steps than the pruned teacher: a few thousand instead of 50K. The "
        "student's own preset is trained; the preset above is then not used.")


def build() -> Tuple[Any, Any]:
    """The choice and the student dropdown (shown only when starting from a student)."""
    start_from = gr.Radio(list(START_FROM), value=START_FROM[0], label="Start from",
                          elem_id="bksdm_distill_start_from")
    with gr.Group(visible=False, elem_id="bksdm_distill_init_box") as box:
        student = gr.Dropdown(checkpoints.titles(teachers=False), label="Student to start from",
                              elem_id="bksdm_distill_init_student")
        gr.Markdown(HINT)
    start_from.change(lambda choice: gr.update(visible=choice == START_FROM[1]),
                      inputs=[start_from], outputs=[box])
    return start_from, student


def student_choices() -> Any:
    return gr.update(choices=checkpoints.titles(teachers=False))


def flags(start_from: str, student_title: str, teacher: Path, preset: str) -> Dict[str, str]:
    """The preset (and init_student) settings: the student's own preset, once its file is
    known to fit the teacher, so a wrong pick is refused here instead of in the job's log; a
    custom student's layout is `remove` (--arch takes presets only)."""
    if start_from != START_FROM[1]:
        return {"preset": preset}
    path = checkpoints.filename(student_title)
    model = checkpoints.describe(path)
    if model is None or not model.is_student:
        raise BadInput("%s is not a BK-SDM student; choose one to start from." % path.name)
    teacher_ckpt = Checkpoint(teacher)
    info = inspect_checkpoint(teacher_ckpt)
    checked_init_student(str(path), teacher_ckpt, info,
                         which_student(info.arch.teacher, model.arch.removal))
    if model.preset not in PRESETS:
        return {"remove": notation(model.arch), "init_student": str(path)}
    return {"preset": model.preset, "init_student": str(path)}

