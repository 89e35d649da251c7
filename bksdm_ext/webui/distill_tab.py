"""The Distill sub-tab: retrain a BK-SDM student from a teacher in the dropdown, as a
background job, on a captioned image folder, on images the teacher makes itself, or both.

Everything the job needs is checked here before it is queued (teacher file, dataset
counts and problems), so a mistake shows up at once instead of in a log minutes later.
"KD then LCM" queues two jobs, the LCM one waiting for the KD one and starting from its
result, whose name is known before it runs.
"""
from typing import Any, Dict

import gradio as gr

from ..train.dataset import scan_dataset
from ..train.prompts import load_prompts
from ..train.distill_config import DistillConfig, kd_result_name
from ..errors import BadInput
from ..model.blocks import which_student
from ..settings import form_number, from_form, label
from ..train.synth_config import SYNTH_COUNT
from . import (a1111, checkpoints, data_picker, init_student_form, job_form, jobs_service,
               memory_estimate, objective_form, paths, setting_fields)
from .presets import default_label, label_of, labels, name_of
from .messages import message

SOURCES = ("Image folder", "Teacher-made (no dataset)", "Image folder + teacher-made")
DEFAULTS = DistillConfig(teacher="", data="", out="")
FOLDER_FIELD = "Image folder"


def check_dataset(folder: str, uploaded: str = "") -> str:
    """Counts of captioned images and the first problems, as the job will see them."""
    try:
        scan = scan_dataset(data_picker.chosen_folder(data_picker.TRAINING_SET, folder, uploaded,
                                                      FOLDER_FIELD))
    except BadInput as e:
        return message("error", str(e))
    problems = scan.problems()
    text = "%s: %s." % (scan.folder, scan.summary())
    if problems:
        text += " Skipped: " + "; ".join(problems)
    return message("success" if not problems else "error", text)


def data_flags(source: str, folder: str, uploaded: str, synthetic: int,
               prompts: str) -> Dict[str, Any]:
    """The --data (and --synthetic, --prompts) flags for a data source, checked, with
    --resolved-paths: the job refuses a path that resolves elsewhere when it starts."""
    uses_folder, uses_teacher = source != SOURCES[1], source != SOURCES[0]
    values: Dict[str, Any] = {"resolved_paths": True}
    if uses_folder:
        data = data_picker.chosen_folder(data_picker.TRAINING_SET, folder, uploaded, FOLDER_FIELD)
        scan_dataset(data)  # BadInput: no folder, no captioned images
        values["data"] = str(data)
    if uses_teacher:
        count = form_number(synthetic or 0, label(DistillConfig, "synthetic"))
        if count < 1:
            raise BadInput("Set how many images the teacher should make (at least 1).")
        SYNTH_COUNT.check("synthetic", count)
        if uses_folder:
            values["synthetic"] = count
        else:
            values["data"] = "teacher:%d" % count
        values["prompts"] = ""
        if prompts.strip():
            values["prompts"] = str(paths.typed_path(prompts, "Prompts"))
            load_prompts(values["prompts"], 1, 0)  # BadInput: no such file, no prompts in it
    return values


def start(teacher_title: str, preset_label: str, source: str, folder: str, synthetic: int,
          prompts: str, negative_prompt: str, random_conditioning: bool, steps: int,
          batch_size: int, grad_accum: int, lr: float, resolution: int, precision: str,
          gradient_checkpointing: bool, ema: bool, use_8bit_adam: bool, save_every: int,
          sample_every: int, sample_prompts: str, free_vram: bool, gpus: float,
          uploaded: str = "", start_from: str = init_student_form.START_FROM[0],
          init_title: str = "", remove: str = "", objective: str = objective_form.KD_ONLY,
          lcm_steps: float = DEFAULTS.lcm_steps, lora_rank: float = objective_form.NO_LORA
          ) -> str:
    try:
        teacher = checkpoints.filename(teacher_title)
        model = checkpoints.describe(teacher)
        if model is not None and model.is_student:
            raise BadInput("%s is a BK-SDM student; choose the teacher it was made from."
                           % teacher.name)
        values: Dict[str, Any] = init_student_form.flags(start_from, init_title, teacher,
                                                         name_of(preset_label))
        if remove.strip() and "init_student" in values:
            raise BadInput("Also remove these blocks cuts the pruned teacher; a student to start "
                           "from keeps its own blocks. Clear one of the two.")
        if remove.strip():
            values["remove"] = remove.strip()
            if model is not None:  # refused now, not when the job starts
                which_student(model.arch.teacher, values["preset"], values["remove"])
        data = data_flags(source, folder, uploaded, synthetic, prompts)
        values.update((key, value) for key, value in data.items() if key != "resolved_paths")
        if source != SOURCES[0]:
            values.update(negative_prompt=negative_prompt.strip(),
                          random_conditioning=random_conditioning)
        runs = objective_form.runs(objective)
        if runs[0] == "lcm":
            values.update(objective_form.lcm_settings(lcm_steps, lora_rank))
        cfg = from_form(DistillConfig, teacher=str(teacher), out="", steps=steps,
                        batch_size=batch_size, grad_accum=grad_accum, lr=lr,
                        resolution=resolution, mixed_precision=precision,
                        save_every=save_every, sample_every=sample_every,
                        use_8bit_adam=use_8bit_adam,
                        gradient_checkpointing=gradient_checkpointing, ema=ema,
                        sample_prompts=[p.strip() for p in sample_prompts.splitlines()
                                        if p.strip()], **values)
        cfg.check()
        title = "Distill %s → BK-%s%s" % (teacher.stem, label_of(cfg.preset or "custom"),
                                          " minus " + cfg.remove if cfg.remove else "")
        then = objective_form.lcm_run(cfg, lcm_steps, lora_rank) if len(runs) > 1 else None
        if then is not None and model is None:
            raise BadInput("%s: the extension cannot read this teacher, so it cannot tell "
                           "what the KD run will write for the LCM run." % teacher.name)
        gpus = form_number(gpus or 1, "GPUs")
        options = {"resolved_paths": data["resolved_paths"]}
        if then is None:
            job = job_form.submit("distill", cfg, title + (" · LCM" if runs[0] == "lcm" else ""),
                                  free_vram, gpus, options=options)
            return job_form.submitted(job)
        first = job_form.submit("distill", cfg, title + " · KD then LCM, 1 of 2: KD",
                                free_vram, gpus, options=options)
        arch = which_student(model.arch.teacher, cfg.preset, cfg.remove)
        then.init_student = str(jobs_service.runner().folder(first.id)
                                / kd_result_name(cfg.teacher, arch))
        second = job_form.submit("distill", then, title + " · KD then LCM, 2 of 2: LCM",
                                 free_vram, gpus, options=options, after=first.id)
    except BadInput as e:
        return message("error", str(e))
    return job_form.submitted(first, second)


def teacher_choices() -> Dict[str, Any]:
    """A dropdown update listing the teachers, the loaded one chosen."""
    a1111.refresh_checkpoints()
    titles = checkpoints.titles(students=False)
    return gr.update(choices=titles, value=titles[0] if titles else None)


def build() -> None:
    titles = checkpoints.titles(students=False)
    with gr.Row():
        teacher = gr.Dropdown(titles, value=titles[0] if titles else None,
                              label=label(DistillConfig, "teacher"),
                              elem_id="bksdm_distill_teacher", scale=4)
        refresh = gr.Button("↻", elem_id="bksdm_distill_refresh", scale=0, min_width=40)
        preset = gr.Radio(labels(), label=label(DistillConfig, "preset"),
                          elem_id="bksdm_distill_preset", value=default_label())
    objective, lcm_steps, lora_rank = objective_form.build()
    start_from, init_student = init_student_form.build()
    remove = gr.Textbox(label=label(DistillConfig, "remove"), elem_id="bksdm_distill_remove")
    source = gr.Radio(list(SOURCES), value=SOURCES[0], label="Training data",
                      elem_id="bksdm_distill_source")
    picker = data_picker.build(data_picker.TRAINING_SET, "Image folder on the server (images "
                               "with .txt captions, or metadata.jsonl/csv)", "bksdm_distill_folder")
    folder, uploaded = picker.typed, picker.uploaded
    with gr.Row():
        check = gr.Button("Check", elem_id="bksdm_distill_check", scale=0, min_width=80)
        checked = gr.HTML(elem_id="bksdm_distill_checked")
    with gr.Row():
        synthetic = gr.Number(2000, label=label(DistillConfig, "synthetic"), precision=0,
                              elem_id="bksdm_distill_synthetic")
        prompts = gr.Textbox(label=label(DistillConfig, "prompts"),
                             elem_id="bksdm_distill_prompts", visible=paths.typing_allowed())
        negative = gr.Textbox(DEFAULTS.negative_prompt,
                              label=label(DistillConfig, "negative_prompt"),
                              elem_id="bksdm_distill_negative")
        random_conditioning = setting_fields.checkbox(DEFAULTS, "random_conditioning",
                                                elem_id="bksdm_distill_random_conditioning")
    with gr.Row():
        steps = setting_fields.number(DEFAULTS, "steps", precision=0, elem_id="bksdm_distill_steps")
        batch_size = setting_fields.number(DEFAULTS, "batch_size", precision=0, elem_id="bksdm_distill_batch")
        grad_accum = setting_fields.number(DEFAULTS, "grad_accum", precision=0, elem_id="bksdm_distill_accum")
        lr = gr.Number(DEFAULTS.learning_rate(), label=label(DistillConfig, "lr"),  # KD's
                       elem_id="bksdm_distill_lr")
        resolution = setting_fields.number(DEFAULTS, "resolution", precision=0, elem_id="bksdm_distill_resolution")
    objective_form.follow_learning_rate(objective, lora_rank, lr)
    with gr.Row():
        precision = job_form.precision_dropdown("distill")
        gradient_checkpointing, ema, use_8bit_adam = [
            setting_fields.checkbox(DEFAULTS, name)
            for name in ("gradient_checkpointing", "ema", "use_8bit_adam")]
        free_vram = gr.Checkbox(a1111.opt("bksdm_free_vram", False),
                                label="Free the WebUI's VRAM while it runs",
                                elem_id="bksdm_distill_free_vram")
        gpus = gr.Number(1, label="GPUs", precision=0, visible=job_form.gpu_count() > 1)
    with gr.Row():
        save_every = setting_fields.number(DEFAULTS, "save_every", precision=0, elem_id="bksdm_distill_save_every")
        sample_every = setting_fields.number(DEFAULTS, "sample_every", precision=0, elem_id="bksdm_distill_sample_every")
        sample_prompts = gr.Textbox("\n".join(DEFAULTS.sample_prompts), lines=3,
                                    label=label(DistillConfig, "sample_prompts"))
    memory_estimate.show(memory_estimate.distill_estimate,
                         [teacher, preset, batch_size, grad_accum, resolution, precision,
                          gradient_checkpointing, ema, use_8bit_adam], "bksdm_distill_memory")
    run = gr.Button("Start distillation", variant="primary", elem_id="bksdm_distill_start")
    result = gr.HTML(elem_id="bksdm_distill_result")
    job_form.controls("distill")

    refresh.click(teacher_choices, outputs=[teacher])
    refresh.click(init_student_form.student_choices, outputs=[init_student])
    check.click(check_dataset, inputs=[folder, uploaded], outputs=[checked])
    run.click(start, inputs=[teacher, preset, source, folder, synthetic, prompts, negative,
                             random_conditioning, steps, batch_size, grad_accum, lr, resolution,
                             precision, gradient_checkpointing, ema, use_8bit_adam, save_every,
                             sample_every, sample_prompts, free_vram, gpus, uploaded, start_from,
                             init_student, remove, objective, lcm_steps, lora_rank],
              outputs=[result])
