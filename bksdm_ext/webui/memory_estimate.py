"""The GPU-memory line under the Distill and DreamBooth settings: what the job will use
on this GPU before it is started (the job itself fits its settings the same way when it
starts, train/memory_fit.py)."""
from typing import Any, Callable, List, Optional

import gradio as gr

from ..errors import BadInput
from ..settings import from_form
from ..train.distill_config import DistillConfig
from ..train.dreambooth_config import DreamBoothConfig
from ..train.memory_fit import fit_distill, fit_dreambooth, free_gpu_bytes, have_bitsandbytes
from ..train.memory_plan import MemoryPlan
from . import checkpoints
from .presets import name_of
from .messages import message


def _model(title: str) -> Any:
    """What the chosen checkpoint is (None: a .ckpt or nothing chosen; SD-v1 is assumed)."""
    try:
        return checkpoints.describe(checkpoints.filename(title))
    except BadInput:
        return None


def _shown(plan: Optional[MemoryPlan]) -> str:
    if plan is None:
        return message("success", "No CUDA GPU here: the job runs on the CPU with these settings.")
    return message("success" if plan.fits else "error",
                   "GPU memory: %s. The job uses these settings when it starts (it is fitted "
                   "again to what is free then)." % plan.describe())


def distill_estimate(teacher: str, preset_label: str, batch_size: float, grad_accum: float,
                     resolution: float, precision: str, checkpointing: bool, ema: bool,
                     eight_bit: bool) -> str:
    model = _model(teacher)
    try:
        cfg = from_form(DistillConfig, teacher="", data="", out="",
                        preset=name_of(preset_label), batch_size=batch_size,
                        grad_accum=grad_accum, resolution=resolution, mixed_precision=precision,
                        gradient_checkpointing=checkpointing, ema=ema, use_8bit_adam=eight_bit)
    except BadInput as e:
        return message("error", str(e))
    family = model.family if model is not None else "sd-v1"
    return _shown(fit_distill(cfg, family, free_gpu_bytes(), have_bitsandbytes())[1])


def dreambooth_estimate(title: str, resolution: float, text_encoder: bool, lora: bool,
                        precision: str, checkpointing: bool, eight_bit: bool) -> str:
    model = _model(title)
    try:
        cfg = from_form(DreamBoothConfig, model="", instance_dir="", instance_prompt="",
                        class_prompt="", out="", resolution=resolution,
                        train_text_encoder=text_encoder, lora=lora, mixed_precision=precision,
                        gradient_checkpointing=checkpointing, use_8bit_adam=eight_bit)
    except BadInput as e:
        return message("error", str(e))
    family, preset = (model.family, model.preset) if model is not None else ("sd-v1", "teacher")
    return _shown(fit_dreambooth(cfg, family, preset, free_gpu_bytes(), have_bitsandbytes())[1])


def show(estimate: Callable[..., str], inputs: List[Any], elem_id: str) -> None:
    """An HTML line kept up to date with `estimate(*inputs)` whenever a setting changes.

    The first input, the model dropdown, is read but does not trigger it: any listener on
    that dropdown keeps gradio 3.41 from opening its list after ↻ has updated it (seen in
    tests/webui/test_browser.py), and the model changes the estimate only through SD-v1 vs v2.
    """
    box = gr.HTML(estimate(*[getattr(c, "value", None) for c in inputs]), elem_id=elem_id)
    for component in inputs[1:]:
        component.change(estimate, inputs=inputs, outputs=[box])
