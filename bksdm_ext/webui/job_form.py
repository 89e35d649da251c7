"""What the Distill and DreamBooth tabs share: turning a config into a queued job and the
Cancel / Save and stop / Resume row for the tab's newest job."""
from typing import Any, Mapping, Optional, Sequence

import gradio as gr
import torch

from ..errors import BadInput
from ..jobs.arguments import command_line, config_argv
from ..jobs.runner import Job, progress_of
from ..train.shared_settings import MIXED_PRECISION
from . import jobs_service
from .job_status import act, progress_bar_html
from .messages import message


def precision_dropdown(kind: str) -> gr.Dropdown:
    """Mixed precision for a job: fp16 on a GPU, none on a CPU (where autocast would not help)."""
    return gr.Dropdown(list(MIXED_PRECISION.choices or ()),
                       value="fp16" if torch.cuda.is_available() else "no",
                       label=MIXED_PRECISION.label, elem_id="bksdm_%s_precision" % kind)


def gpu_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def submit(kind: str, settings: Any, title: str, free_vram: bool, gpus: float = 1,
           options: Optional[Mapping[str, Any]] = None, positional: Sequence[str] = (),
           after: str = "") -> Job:
    """Queue a `kind` run of `settings` (the command's settings dataclass, which writes its
    own options), the command's other `options` (``{"cache_dir": ...}``) and `positional`
    values, all written by `command_line`: no text typed in a form is ever read as an
    option.  With `after` (a job id) it waits for that job and starts once it succeeded."""
    processes = max(int(gpus or 1), 1)
    if processes > max(gpu_count(), 1):
        raise BadInput("%d GPUs asked for, %d found." % (processes, gpu_count()))
    argv = config_argv(settings) + command_line(options or {}, positional)
    return jobs_service.runner().submit(kind, argv, title=title, free_vram=free_vram,
                                        processes=processes, after=after)


def submitted(job: Job, *later: Job) -> str:
    """Where the job is; each of `later` (jobs waiting for the one before) waits for it."""
    where = ("started on %s" % job.device if job.state == "running" else
             "queued behind the job running on %s" % job.device)
    text = "%s: %s." % (job.title, where)
    for then in later:
        text += " Then %s: starts from its result once it has succeeded." % then.title
    return message("success", text + " Follow %s in the Jobs tab." % ("them" if later else "it"))


def newest(kind: str) -> str:
    """The dropdown label of the newest job of `kind`, or ""."""
    jobs = [job for job in jobs_service.runner().jobs() if job.kind == kind]
    return jobs_service.label(jobs[-1]) if jobs else ""


def status(kind: str) -> str:
    label = newest(kind)
    if not label:
        return ""
    runner = jobs_service.runner()
    job = runner.job(jobs_service.job_id(label))
    return progress_bar_html(job, progress_of(runner.events(job.id)))


def controls(kind: str) -> None:
    """Status of the tab's newest job, with its buttons; the message says what happened."""
    with gr.Row():
        state = gr.HTML(elem_id="bksdm_%s_job_status" % kind)
        refresh = gr.Button("↻", elem_id="bksdm_%s_job_refresh" % kind, scale=0, min_width=40)
    with gr.Row():
        buttons = [(gr.Button(text, elem_id="bksdm_%s_%s" % (kind, action)), action)
                   for text, action in (("Cancel", "cancel"), ("Save and stop", "save"),
                                        ("Resume", "resume"))]
    result = gr.HTML(elem_id="bksdm_%s_job_message" % kind)
    refresh.click(lambda: status(kind), outputs=[state], show_progress=False)
    for button, action in buttons:
        button.click(lambda action=action: act(action, newest(kind)),
                     outputs=[result]).then(lambda: status(kind), outputs=[state],
                                            show_progress=False)
