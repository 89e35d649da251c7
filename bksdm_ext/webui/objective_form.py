"""The Distill tab's "Objective": the BK-SDM paper's knowledge distillation, latent
consistency distillation onto the student (it then draws in a few LCM steps), or both in
turn, as two jobs: the LCM one starts from the KD one's result once that has succeeded."""
from dataclasses import replace
from typing import Any, Dict, Optional, Tuple

import gradio as gr

from ..errors import BadInput
from ..settings import form_number, label
from ..train.distill_config import DistillConfig
from .messages import message

# What each choice runs, in order.
CHOICES: Dict[str, Tuple[str, ...]] = {"KD (the paper)": ("kd",), "LCM (few steps)": ("lcm",),
                                       "KD then LCM": ("kd", "lcm")}
KD_ONLY = next(iter(CHOICES))
DEFAULTS = DistillConfig(teacher="", data="", out="")
NO_LORA = 0  # the LoRA rank box's "train the whole student"


def runs(choice: str) -> Tuple[str, ...]:
    if choice not in CHOICES:
        raise BadInput("Objective '%s': choose one of %s." % (choice, ", ".join(CHOICES)))
    return CHOICES[choice]


def lcm_settings(steps: Any, rank: Any) -> Dict[str, Any]:
    """The LCM run's own settings from the form: its steps and LoRA rank (0: none)."""
    rank = form_number(NO_LORA if rank in (None, "") else rank, label(DistillConfig, "lora_rank"))
    return {"objective": "lcm",
            "lcm_steps": form_number(steps, label(DistillConfig, "lcm_steps")),
            "lora_rank": rank or None}


def lcm_run(first: DistillConfig, steps: Any, rank: Any) -> DistillConfig:
    """The LCM run of "KD then LCM": the KD run's settings at the LCM objective's own
    learning rate, checked now (its init_student is set once the KD job has its folder)."""
    settings = replace(first, lr=None, **lcm_settings(steps, rank))
    settings.check()
    return settings


def draws(choice: str, steps: Any, rank: Any) -> str:
    """How the result will draw, from the LCM run's own recommendation."""
    if runs(choice)[-1] != "lcm":
        return ""
    try:
        settings = replace(DEFAULTS, **lcm_settings(steps, rank))
    except BadInput as e:
        return message("error", str(e))
    point = settings.recommendation()
    assert point is not None  # an LCM run always recommends
    text = ("The result draws with %s in A1111 (the sampler is added on 1.6/1.7)."
            % point.describe())
    if len(runs(choice)) > 1:
        text += " The LCM run learns at its own rate, %g." % settings.learning_rate()
    return message("success", text)


def learning_rate(choice: str, rank: Any, current: Optional[float]) -> Any:
    """The learning-rate box for the first run: its objective's own rate."""
    try:
        first = runs(choice)[0]
        changes = lcm_settings(DEFAULTS.lcm_steps, rank) if first == "lcm" else {}
        return replace(DEFAULTS, **changes).learning_rate()
    except BadInput:
        return current


def build() -> Tuple[Any, Any, Any]:
    """The choice, and the LCM settings (shown only for a choice with an LCM run) with the
    line saying how the result will draw."""
    choice = gr.Radio(list(CHOICES), value=KD_ONLY, label=label(DistillConfig, "objective"),
                      elem_id="bksdm_distill_objective")
    with gr.Group(visible=False, elem_id="bksdm_distill_lcm_box") as box:
        with gr.Row():
            steps = gr.Number(DEFAULTS.lcm_steps, label=label(DistillConfig, "lcm_steps"),
                              precision=0, elem_id="bksdm_distill_lcm_steps")
            rank = gr.Number(NO_LORA, label=label(DistillConfig, "lora_rank"), precision=0,
                             elem_id="bksdm_distill_lora_rank")
        line = gr.HTML(draws(list(CHOICES)[1], DEFAULTS.lcm_steps, NO_LORA),
                       elem_id="bksdm_distill_lcm_draws")
    choice.change(lambda value: gr.update(visible=value != KD_ONLY), inputs=[choice],
                  outputs=[box])
    for field in (choice, steps, rank):
        field.change(draws, inputs=[choice, steps, rank], outputs=[line])
    return choice, steps, rank


def follow_learning_rate(choice: Any, rank: Any, lr: Any) -> None:
    """Choosing an objective (or a LoRA rank) sets the `lr` box to the first run's rate."""
    for field in (choice, rank):
        field.change(learning_rate, inputs=[choice, rank, lr], outputs=[lr])
