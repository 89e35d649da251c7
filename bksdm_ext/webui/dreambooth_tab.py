"""The DreamBooth sub-tab: personalise a student (or any SD-v1/v2 checkpoint) on a few
images of one subject, as a background job; the result lands in the checkpoint dropdown.

Class images for prior preservation come from the teacher, as in the paper ("generated
by the original SDM"): for a student the tab proposes the teacher it was converted from
when that file is in the dropdown.
"""
from dataclasses import replace
from typing import Any, List, Tuple

import gradio as gr

from ..settings import from_form, label
from ..train.dreambooth import instance_images
from ..train.dreambooth_config import FULL_LR, DreamBoothConfig
from ..errors import BadInput
from . import a1111, checkpoints, data_picker, job_form, memory_estimate, setting_fields
from .messages import message

SAME_MODEL = "(the model itself)"
FOLDER_FIELD = "Instance images folder"
DEFAULTS = DreamBoothConfig(model="", instance_dir="", instance_prompt="", out="")


def class_model_choices(model_title: str) -> Tuple[List[str], str]:
    """The teacher of a student first (when the dropdown has it), else the model itself."""
    choices = [SAME_MODEL] + checkpoints.titles(students=False)
    proposed = SAME_MODEL
    try:
        path = checkpoints.filename(model_title)
        info = checkpoints.describe(path)
        if info is not None and info.is_student:
            proposed = checkpoints.teacher_of(path) or SAME_MODEL
    except BadInput:
        pass
    return choices, proposed


def start(model_title: str, class_title: str, folder: str, instance_prompt: str,
          class_prompt: str, num_class_images: int, steps: int, lr: float, resolution: int,
          prior: bool, text_encoder: bool, lora: bool, lora_rank: int, lora_lr: float,
          precision: str, gradient_checkpointing: bool, use_8bit_adam: bool,
          free_vram: bool, uploaded: str = "") -> str:
    try:
        model = checkpoints.filename(model_title)
        instance_dir = data_picker.chosen_folder(data_picker.PHOTOS, folder, uploaded, FOLDER_FIELD)
        images = instance_images(instance_dir)
        if not instance_prompt.strip():
            raise BadInput("Write the instance prompt, e.g. 'a photo of sks dog'.")
        if prior and not class_prompt.strip():
            raise BadInput("Write the class prompt, e.g. 'a photo of a dog', or untick prior "
                           "preservation.")
        # One shared folder for class images: a later run with the same class prompt
        # reuses them.
        class_dir = str(a1111.data_dir() / "class-images") if prior else None
        class_model = (str(checkpoints.filename(class_title))
                       if prior and class_title and class_title != SAME_MODEL else None)
        cfg = from_form(DreamBoothConfig, model=str(model), instance_dir=str(instance_dir),
                        instance_prompt=instance_prompt.strip(),
                        class_prompt=class_prompt.strip(), out="",
                        num_class_images=num_class_images, steps=steps, lr=lr,
                        resolution=resolution, lora_rank=lora_rank,
                        lora_lr=lora_lr, mixed_precision=precision, prior_preservation=prior,
                        train_text_encoder=text_encoder, lora=lora,
                        gradient_checkpointing=gradient_checkpointing,
                        use_8bit_adam=use_8bit_adam, class_dir=class_dir,
                        class_model=class_model)
        if lora:  # LoRA mode trains at the LoRA learning rate
            cfg = replace(cfg, lr=None)
        title = "DreamBooth %s on '%s' (%d images%s)" % (
            model.stem, instance_prompt.strip(), len(images), ", LoRA" if lora else "")
        # The job refuses the folder if a link stands there by then.
        job = job_form.submit("dreambooth", cfg, title, free_vram,
                              options={"resolved_paths": True})
    except BadInput as e:
        return message("error", str(e))
    return job_form.submitted(job)


def build() -> None:
    titles = checkpoints.titles()
    first = titles[0] if titles else None
    classes, proposed = class_model_choices(first or "")
    with gr.Row():
        model = gr.Dropdown(titles, value=first, label=label(DEFAULTS, "model"),
                            elem_id="bksdm_db_model", scale=4)
        refresh = gr.Button("↻", elem_id="bksdm_db_refresh", scale=0, min_width=40)
        class_model = gr.Dropdown(classes, value=proposed, label=label(DEFAULTS, "class_model"),
                                  elem_id="bksdm_db_class_model", scale=3)
    picker = data_picker.build(data_picker.PHOTOS, "Instance images folder on the server (3–5 "
                               "photos of the subject)", "bksdm_db_folder")
    folder, uploaded = picker.typed, picker.uploaded
    with gr.Row():
        instance_prompt = gr.Textbox(label=label(DEFAULTS, "instance_prompt"),
                                     placeholder="a photo of sks dog",
                                     elem_id="bksdm_db_instance_prompt")
        class_prompt = gr.Textbox(label=label(DEFAULTS, "class_prompt"),
                                  placeholder="a photo of a dog", elem_id="bksdm_db_class_prompt")
    with gr.Row():
        prior = setting_fields.checkbox(DEFAULTS, "prior_preservation")
        num_class_images = setting_fields.number(DEFAULTS, "num_class_images", precision=0,
                                           elem_id="bksdm_db_class_images")
        steps = setting_fields.number(DEFAULTS, "steps", precision=0, elem_id="bksdm_db_steps")
        lr = gr.Number(FULL_LR, label=label(DEFAULTS, "lr"), elem_id="bksdm_db_lr")
        resolution = setting_fields.number(DEFAULTS, "resolution", precision=0,
                                     elem_id="bksdm_db_resolution")
    with gr.Row():
        text_encoder = setting_fields.checkbox(DEFAULTS, "train_text_encoder")
        lora = setting_fields.checkbox(DEFAULTS, "lora", elem_id="bksdm_db_lora")
        lora_rank = setting_fields.number(DEFAULTS, "lora_rank", precision=0)
        lora_lr = setting_fields.number(DEFAULTS, "lora_lr")
    with gr.Row():
        precision = job_form.precision_dropdown("dreambooth")
        gradient_checkpointing = setting_fields.checkbox(DEFAULTS, "gradient_checkpointing")
        use_8bit_adam = setting_fields.checkbox(DEFAULTS, "use_8bit_adam")
        free_vram = gr.Checkbox(a1111.opt("bksdm_free_vram", False),
                                label="Free the WebUI's VRAM while it runs")
    memory_estimate.show(memory_estimate.dreambooth_estimate,
                         [model, resolution, text_encoder, lora, precision,
                          gradient_checkpointing, use_8bit_adam], "bksdm_db_memory")
    run = gr.Button("Start DreamBooth", variant="primary", elem_id="bksdm_db_start")
    result = gr.HTML(elem_id="bksdm_db_result")
    job_form.controls("dreambooth")

    def refreshed(current: str) -> List[Any]:
        a1111.refresh_checkpoints()
        names = checkpoints.titles()
        value = current if current in names else (names[0] if names else None)
        choices, proposed = class_model_choices(value or "")
        return [gr.update(choices=names, value=value), gr.update(choices=choices, value=proposed)]

    refresh.click(refreshed, inputs=[model], outputs=[model, class_model])
    model.select(lambda title: gr.update(value=class_model_choices(title)[1]), inputs=[model],
                 outputs=[class_model])
    run.click(start, inputs=[model, class_model, folder, instance_prompt, class_prompt,
                             num_class_images, steps, lr, resolution, prior, text_encoder, lora,
                             lora_rank, lora_lr, precision, gradient_checkpointing, use_8bit_adam,
                             free_vram, uploaded], outputs=[result])
