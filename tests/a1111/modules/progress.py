"""Stand-in for A1111 1.10.1 ``modules/progress.py``: task queue bookkeeping and the ``POST /internal/progress``
API the page's progress bars poll. Progress is computed from ``shared.state`` as in 1.10.1; no live previews,
no ``/internal/pending-tasks``, no result restoring."""

import random
import string
import time

from pydantic import BaseModel

from modules import shared

current_task = None
pending_tasks = {}  # id -> time it was queued
finished_tasks = []  # the latest 16
recorded_results = []  # the latest 2 (id, result)
recorded_results_limit = 2


def start_task(id_task):
    global current_task
    current_task = id_task
    if id_task in pending_tasks:
        del pending_tasks[id_task]


def finish_task(id_task):
    global current_task
    current_task = None if current_task == id_task else current_task
    finished_tasks[:] = (finished_tasks + [id_task])[-16:]


def create_task_id(task_type):
    suffix = "".join(random.choice(string.ascii_uppercase + string.digits) for _ in range(7))
    return "task(%s-%s)" % (task_type, suffix)


def record_results(id_task, res):
    recorded_results[:] = (recorded_results + [(id_task, res)])[-recorded_results_limit:]


def add_task_to_queue(id_job):
    pending_tasks.update({id_job: time.time()})


class ProgressRequest(BaseModel):
    id_task: str = None
    id_live_preview: int = -1
    live_preview: bool = True


class ProgressResponse(BaseModel):
    active: bool
    queued: bool
    completed: bool
    progress: float = None  # 0..1
    eta: float = None  # seconds
    live_preview: str = None
    id_live_preview: int = None
    textinfo: str = None


def setup_progress_api(app):
    app.add_api_route("/internal/progress", progressapi, response_model=ProgressResponse, methods=["POST"])


def progressapi(req: ProgressRequest):
    task = req.id_task
    queued, completed = task in pending_tasks, task in finished_tasks
    if task != current_task:
        text = "Waiting..."
        if queued:
            order = sorted(pending_tasks, key=pending_tasks.get)
            text = "In queue: %d/%d" % (order.index(task) + 1, len(order))
        return ProgressResponse(active=False, queued=queued, completed=completed, id_live_preview=-1, textinfo=text)

    # finished jobs, plus the current job's share of sampling steps
    state = shared.state
    done = 0.0
    if state.job_count > 0:
        step = state.sampling_step / state.sampling_steps if state.sampling_steps > 0 else 0.0
        done = min(1.0, (state.job_no + step) / state.job_count)
    elapsed = time.time() - state.time_start
    eta = elapsed / done - elapsed if done > 0 else None
    return ProgressResponse(active=True, queued=queued, completed=completed, progress=done, eta=eta,
                            id_live_preview=req.id_live_preview, textinfo=state.textinfo)
