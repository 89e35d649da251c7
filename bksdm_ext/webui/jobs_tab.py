"""The Jobs sub-tab: every background job with its state, progress and ETA, loss curve,
latest sample grid and log, with Cancel / Save and stop / Resume.  The page refreshes it
every few seconds while "Auto-refresh" is ticked (javascript/bksdm.js)."""
import html
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import gradio as gr

from ..errors import BadInput
from ..jobs.runner import QUEUED, RUNNING, SUCCEEDED, Job, Progress, progress_of
from . import a1111, job_scores, jobs_service
from .job_status import STATE_ICONS, act, duration, progress_bar_html

# Up to this many points a loss curve is drawn with markers: a line through one or two
# points would not show.
MARKED_POINTS = 30


def jobs_table(jobs: List[Job]) -> Dict[str, Any]:
    """The table's value with its headers spelled out: given an empty list, gradio 3.41
    would number the columns instead."""
    rows = []
    for job in reversed(jobs):
        progress = progress_of(jobs_service.runner().events(job.id))
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(job.created))
        rows.append([job.title, job.kind, state_cell(job),
                     "%.0f%%" % (100 * (1.0 if job.state == SUCCEEDED else progress.fraction)),
                     duration(progress.eta_s) if job.state == RUNNING else "",
                     started, job.id])
    return {"headers": HEADERS, "data": rows or [[""] * len(HEADERS)]}


def state_cell(job: Job) -> str:
    """The table's state, with the reason for a run that did not succeed (the first line of
    the log of one that could not start), and the job a queued one waits for ("KD then LCM"
    queues its LCM run behind its KD run, which may take days)."""
    text = "%s %s" % (STATE_ICONS[job.state], job.state)
    if job.state == QUEUED and job.after:
        text += ", after job " + job.after
    if job.reason and job.state != SUCCEEDED:
        text += ": " + (job.reason if len(job.reason) <= 120 else job.reason[:119] + "…")
    return text


def loss_figure(progress: Progress) -> Any:
    """The loss curves; a short run's few points are drawn as markers on whole steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    curves = {name: [(s, v) for s, v in points if job_scores.drawable(v)]
              for name, points in sorted(progress.losses.items())}
    curves = {name: points for name, points in curves.items() if points}
    figure, axes = plt.subplots(figsize=(7, 3.2))
    for name, points in curves.items():
        axes.plot([s for s, _ in points], [v for _, v in points], label=name,
                  marker="o" if len(points) <= MARKED_POINTS else None, markersize=4,
                  linewidth=2.2 if name == "loss" else 1.2)
    steps = [s for points in curves.values() for s, _ in points]
    if steps and max(steps) - min(steps) < 2:  # matplotlib would span one step 3.8 … 4.2
        axes.set_xlim(max(min(steps) - 1, 0), max(steps) + 1)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("step")
    axes.set_yscale("log" if steps and all(v > 0 for p in curves.values() for _, v in p)
                    else "linear")
    if curves:  # all NaN (a run diverged from its first step): an empty chart
        axes.legend(loc="upper right", fontsize="small")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def loss_plot(folder: Path, progress: Progress) -> Optional[str]:
    """The loss curves as a PNG in the job folder, redrawn only when there are new points."""
    if not progress.losses:
        return None
    target = folder / ("loss-%d.png" % progress.step)
    if not target.is_file():
        import matplotlib.pyplot as plt

        for old in folder.glob("loss-*.png"):
            old.unlink()
        figure = loss_figure(progress)
        figure.savefig(target, dpi=90)
        plt.close(figure)
    return str(target)


def teacher_data(folder: Path) -> Tuple[str, Optional[str]]:
    """What a job's teacher-made data is, said plainly: how many pairs, from which prompts,
    with which settings, and a grid of them ("", None for a job without any)."""
    from ..train.synth import synth_summary

    try:
        summary = synth_summary(folder)
    except BadInput:
        return "", None
    lines = ["**Teacher-made training data:** %s of %s image/caption pairs, made by %s with "
             "%s, %s steps, CFG %s at %s px%s." % (
                 format(summary["made"], ","), format(summary["wanted"], ","),
                 html.escape(summary["teacher"].split(":")[0]), summary["sampler"],
                 summary["steps"], summary["cfg_scale"], summary["resolution"],
                 (", negative prompt '%s'" % html.escape(summary["negative_prompt"])
                  if summary["negative_prompt"] else "")),
             "**Prompts:** %s (%s distinct%s)." % (
                 html.escape(str(summary["prompt_source"])),
                 format(summary["distinct_prompts"], ","),
                 ", cycled with new seeds" if summary["cycled"] else "")]
    lines += ["- " + html.escape(prompt) for prompt in summary["example_prompts"]]
    return "  \n".join(lines[:2]) + "\n\n" + "\n".join(lines[2:]), summary["preview"]


def details(selected: str) -> List[Any]:
    """[jobs table, job dropdown, progress, loss plot, samples, log, result title,
    teacher-data text, teacher-data grid, teacher-data panel (shown only when there is
    some)]."""
    runner = jobs_service.runner()
    runner.poll()
    jobs = runner.jobs()
    labels = jobs_service.job_labels(jobs)
    if selected not in labels:
        selected = labels[0] if labels else None
    chooser = gr.update(choices=labels, value=selected)
    job_id = jobs_service.job_id(selected)
    if not job_id:
        return [jobs_table(jobs), chooser, "<i>No jobs yet: start one in the Distill or "
                "DreamBooth tab.</i>", None, None, "", "", "", None, gr.update(visible=False)]
    job = runner.job(job_id)
    folder = runner.folder(job_id)
    progress = progress_of(runner.events(job_id))
    grid = jobs_service.latest_samples(folder)
    registered = a1111.checkpoint_title(Path(job.registered)) if job.registered else None
    made, made_grid = teacher_data(folder)
    return [jobs_table(jobs), chooser, progress_bar_html(job, progress), loss_plot(folder, progress),
            str(grid) if grid else None, runner.log_tail(job_id), registered or "",
            made, made_grid, gr.update(visible=bool(made))]


HEADERS = ["job", "kind", "state", "progress", "ETA", "created", "id"]


def build() -> None:
    with gr.Row():
        chooser = gr.Dropdown([], label="Job", elem_id="bksdm_jobs_select", scale=4)
        # Read by javascript/bksdm.js, which clicks ↻ every few seconds while it is ticked.
        gr.Checkbox(True, label="Auto-refresh", elem_id="bksdm_jobs_auto", scale=1)
        refresh = gr.Button("↻", elem_id="bksdm_jobs_refresh", scale=0, min_width=40)
    bar = gr.HTML(elem_id="bksdm_jobs_progress")
    with gr.Row():
        cancel = gr.Button("Cancel", elem_id="bksdm_jobs_cancel")
        save = gr.Button("Save and stop", elem_id="bksdm_jobs_save")
        resume = gr.Button("Resume", elem_id="bksdm_jobs_resume")
        load = gr.Button("Load the result", elem_id="bksdm_jobs_load")
    result = gr.HTML(elem_id="bksdm_jobs_message")
    with gr.Row():
        plot = gr.Image(label="Loss", interactive=False, elem_id="bksdm_jobs_loss")
        samples = gr.Image(label="Latest samples (teacher | student, or before | after)", interactive=False,
                           elem_id="bksdm_jobs_samples")
        scores = gr.Image(label="Scores over the steps (SSIM/PSNR vs teacher, CLIP)", interactive=False,
                          elem_id="bksdm_jobs_scores")
    best = gr.Markdown(elem_id="bksdm_jobs_best")
    with gr.Accordion("Teacher-made training data", open=True, visible=False) as made_panel:
        made = gr.Markdown(elem_id="bksdm_jobs_teacher_data")
        made_grid = gr.Image(label="The first teacher-made images", interactive=False,
                             elem_id="bksdm_jobs_teacher_grid")
    log = gr.Textbox(label="Log (last lines)", lines=10, max_lines=10, interactive=False,
                     elem_id="bksdm_jobs_log")
    table = gr.Dataframe(headers=HEADERS, interactive=False, elem_id="bksdm_jobs_table")
    registered = gr.Textbox(visible=False, elem_id="bksdm_jobs_result_title")

    outputs = [table, chooser, bar, plot, samples, log, registered, made, made_grid, made_panel]
    refresh.click(details, inputs=[chooser], outputs=outputs, show_progress=False)
    chooser.select(details, inputs=[chooser], outputs=outputs, show_progress=False)
    for trigger in (refresh.click, chooser.select):
        trigger(job_scores.view, inputs=[chooser], outputs=[scores, best], show_progress=False)
    for button, action in ((cancel, "cancel"), (save, "save"), (resume, "resume")):
        button.click(lambda selected, action=action: act(action, selected), inputs=[chooser],
                     outputs=[result]).then(details, inputs=[chooser], outputs=outputs,
                                            show_progress=False)
    registered.change(None, _js="bksdm_refresh_checkpoints", inputs=[registered], outputs=[])
    load.click(None, _js="bksdm_load_checkpoint", inputs=[registered], outputs=[])
