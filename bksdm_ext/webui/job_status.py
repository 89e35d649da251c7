"""How a job's state and progress read on the page: one line and a bar, shown by the Jobs
tab and under the Distill and DreamBooth forms; and the Cancel / Save and stop / Resume
actions both places offer."""
import html
from typing import Optional

from ..errors import BadInput
from ..jobs.runner import BROKEN, FINISHED, RUNNING, SUCCEEDED, Job, Progress
from . import jobs_service
from .messages import message

STATE_ICONS = {"queued": "⏳", "running": "▶️", "succeeded": "✅", "failed": "❌",
               "cancelled": "⏹", "interrupted": "⚠️", "broken": "💔"}


def duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "–"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return "%dh%02dm" % (hours, minutes) if hours else "%dm%02ds" % (minutes, secs)


def progress_line(job: Job, progress: Progress) -> str:
    if job.state == BROKEN or (job.state in FINISHED and job.state != SUCCEEDED):
        return "%s %s: %s" % (STATE_ICONS[job.state], job.state, job.reason)
    if job.state != RUNNING:
        return "%s %s" % (STATE_ICONS[job.state], job.state)
    if not progress.step:
        return "%s starting: loading the models and data" % STATE_ICONS[job.state]
    total = "/%d" % progress.total if progress.total else ""
    unit, rate_unit = (("step", "it/s") if progress.phase == "training" else
                       ("teacher making training images", "images/s"))
    rate = " · %.2f %s" % (progress.it_s, rate_unit) if progress.it_s else ""
    return "%s %s %d%s (%.0f%%)%s · ETA %s" % (
        STATE_ICONS[job.state], unit, progress.step, total, 100 * progress.fraction, rate,
        duration(progress.eta_s))


def progress_bar_html(job: Job, progress: Progress) -> str:
    fraction = 1.0 if job.state == SUCCEEDED else progress.fraction
    return ('<div class="bksdm-job-bar"><div class="bksdm-job-bar-fill bksdm-job-%s" '
            'style="width: %.1f%%"></div></div><div class="bksdm-job-line">%s</div>'
            % (job.state, 100 * fraction, html.escape(progress_line(job, progress))))


def act(action: str, selected: str) -> str:
    """Cancel, save and stop, or resume the selected job; returns a message."""
    job_id = jobs_service.job_id(selected)
    try:
        if not job_id:
            raise BadInput("Choose a job first.")
        runner = jobs_service.runner()
        if action == "resume":
            job = runner.resume(job_id)
            return message("success", "%s is queued again and resumes from its last checkpoint."
                           % job.title)
        job = runner.cancel(job_id, save=action == "save")
    except BadInput as e:
        return message("error", str(e))
    if job.state == RUNNING:
        text = ("%s stops at its next step%s." % (
            job.title, ", after saving a checkpoint you can resume" if action == "save" else
            "; nothing is saved"))
    else:
        text = "%s is %s." % (job.title, job.state)
    return message("success", text)
