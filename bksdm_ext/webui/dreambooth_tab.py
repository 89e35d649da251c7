"""The DreamBooth sub-tab: personalise a student (or any SD-v1/v2 checkpoint) on a few
images of one subject, as a background job; the result lands in the checkpoint dropdown.

Class images for prior preservation come from the teacher, as in the paper ("generated
by the original SDM"): for a student the tab proposes the teacher it was converted from
when that file is in the dropdown.
"""
from typing import Any, Dict, List, Tuple

import gradio as gr

from ..model.ranges import from_form
from ..train.dreambooth import instance_images
from ..train.dreambooth_config import DreamBoothConfig
from ..errors import BadInput
from . import a1111, checkpoints, data_picker, job_form, memory_estimate
from .messages import message

SAME_MODEL = "(the model itself)"
FOLDER_FIELD = "Instance images folder"


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
        form = from_form(DreamBoothConfig, model=str(model), instance_dir=str(instance_dir),
                         instance_prompt=instance_prompt, class_prompt=class_prompt, out="",
                         num_class_images=num_class_images, steps=steps, lr=lr,
                         resolution=resolution, lora_rank=lora_rank, lora_lr=lora_lr)
        values: Dict[str, Any] = {
            "model": str(model), "instance_dir": str(instance_dir),
            "instance_prompt": instance_prompt.strip(), "class_prompt": class_prompt.strip(),
            "steps": form.steps, "resolution": form.resolution, "mixed_precision": precision,
            "no_prior_preservation": not prior, "no_train_text_encoder": not text_encoder,
            "no_gradient_checkpointing": not gradient_checkpointing,
            "use_8bit_adam": use_8bit_adam,
            "resolved_paths": True}  # the job refuses the folder if a link stands there then
        if prior:
            # One shared folder: a later run with the same class prompt reuses the images.
            values.update(num_class_images=form.num_class_images,
                          class_dir=str(a1111.data_dir() / "class-images"))
            if class_title and class_title != SAME_MODEL:
                values["class_model"] = str(checkpoints.filename(class_title))
        if lora:
            values.update(lora=True, lora_rank=form.lora_rank, lora_lr=form.lora_lr)
        else:
            values["lr"] = form.lr
        title = "DreamBooth %s on '%s' (%d images%s)" % (
            model.stem, instance_prompt.strip(), len(images), ", LoRA" if lora else "")
        job = job_form.submit("dreambooth", values, title, free_vram)
    except BadInput as e:
        return message("error", str(e))
    return job_form.submitted(job)


def build() -> None:
    titles = checkpoints.titles()
    first = titles[0] if titles else None
    classes, proposed = class_model_choices(first or "")
    with gr.Row():
        model = gr.Dropdown(titles, value=first, label="Model to personalise (a student or any "
                            "SD-v1/v2 checkpoint)", elem_id="bksdm_db_model", scale=4)
        refresh = gr.Button("↻", elem_id="bksdm_db_refresh", scale=0, min_width=40)
        class_model = gr.Dropdown(classes, value=proposed, label="Class images made by",
                                  elem_id="bksdm_db_class_model", scale=3)
    picker = data_picker.build(data_picker.PHOTOS, "Instance images folder on the server (3–5 "
                               "photos of the subject)", "bksdm_db_folder")
    folder, uploaded = picker.typed, picker.uploaded
    with gr.Row():
        instance_prompt = gr.Textbox(label="Instance prompt", placeholder="a photo of sks dog",
                                     elem_id="bksdm_db_instance_prompt")
        class_prompt = gr.Textbox(label="Class prompt", placeholder="a photo of a dog",
                                  elem_id="bksdm_db_class_prompt")
    with gr.Row():
        prior = gr.Checkbox(True, label="Prior preservation (weight 1)")
        num_class_images = gr.Number(200, label="Class images", precision=0,
                                     elem_id="bksdm_db_class_images")
        steps = gr.Number(800, label="Steps", precision=0, elem_id="bksdm_db_steps")
        lr = gr.Number(1e-6, label="Learning rate (full)", elem_id="bksdm_db_lr")
        resolution = gr.Number(512, label="Resolution", precision=0, elem_id="bksdm_db_resolution")
    with gr.Row():
        text_encoder = gr.Checkbox(True, label="Train the text encoder too")
        lora = gr.Checkbox(False, label="LoRA (needs peft)", elem_id="bksdm_db_lora")
        lora_rank = gr.Number(16, label="LoRA rank", precision=0)
        lora_lr = gr.Number(1e-4, label="LoRA learning rate")
    with gr.Row():
        precision = job_form.precision_dropdown("dreambooth")
        gradient_checkpointing = gr.Checkbox(True, label="Gradient checkpointing")
        use_8bit_adam = gr.Checkbox(False, label="8-bit AdamW (bitsandbytes)")
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
