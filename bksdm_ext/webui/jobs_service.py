"""The WebUI's job runner, one per WebUI process.

A background thread polls it, so the queue moves and a finished student lands in the
checkpoint dropdown even while nobody has the Jobs tab open.  The thread also gives the
WebUI's model its GPU memory back once no running job asked for it to be freed.
"""
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..jobs.events import read_events
from ..jobs.runner import RUNNING, SUCCEEDED, Job, JobRunner
from . import a1111

POLL_SECONDS = 2.0
_lock = threading.Lock()
_vram_lock = threading.Lock()  # the check and the change of _vram_freed go together
_runner: Optional[JobRunner] = None
_vram_freed = False  # a job start moved the WebUI's model out of GPU memory


def jobs_root() -> Path:
    return a1111.data_dir() / "jobs"


def runner() -> JobRunner:
    """The runner of this WebUI's data folder (a new one after the folder changes, or after
    it was deleted: a new runner makes it again)."""
    global _runner
    root = jobs_root()
    with _lock:
        if _runner is None or _runner.root != root or not root.is_dir():
            _runner = JobRunner(root, on_start=_job_started, on_finish=_job_finished)
            threading.Thread(target=_poll_forever, args=(_runner,), daemon=True,
                             name="bksdm-jobs").start()
        return _runner


def _poll_forever(owner: JobRunner) -> None:
    """Until another runner replaces it; while its folder is missing (deleted by hand, or
    before the first job makes it) there is nothing to poll, and nothing worth printing,
    also when the folder went while a poll was reading it."""
    while _runner is owner:
        if not owner.root.is_dir():
            time.sleep(POLL_SECONDS)
            continue
        try:
            owner.poll()
            register_finished_elsewhere(owner)
            _give_vram_back(owner)
        except Exception as e:  # a bad job folder must not stop the queue for good
            if owner.root.is_dir():
                print("[BK-SDM] job queue: %s: %s" % (type(e).__name__, e))
        time.sleep(POLL_SECONDS)


def _job_started(job: Job) -> None:
    global _vram_freed
    with _vram_lock:
        if job.free_vram and job.device.startswith("cuda") and not _vram_freed:
            with a1111.queue_lock():  # never under a generation that is running
                a1111.free_vram()
            _vram_freed = True
            print("[BK-SDM] moved the WebUI's model out of GPU memory for job %s" % job.id)


def _give_vram_back(owner: JobRunner) -> None:
    global _vram_freed
    with _vram_lock:
        if _vram_freed and not any(job.state == RUNNING and job.free_vram
                                   for job in owner.jobs()):
            with a1111.queue_lock():
                a1111.restore_vram()
            _vram_freed = False
            print("[BK-SDM] the WebUI's model is back in GPU memory")


def _job_finished(job: Job) -> None:
    if job.state == SUCCEEDED and job.result.endswith(".safetensors"):
        target = register(job)
        job.registered = str(target)
        print("[BK-SDM] job %s finished: %s is in the checkpoint dropdown" % (job.id, target.name))


def register_finished_elsewhere(owner: JobRunner) -> None:
    """A job whose end another process noticed first (a ``bksdm jobs watch`` on this
    folder) still lands in the checkpoint dropdown."""
    for job in owner.jobs():
        if (job.state == SUCCEEDED and not job.registered and not job.reason
                and job.result.endswith(".safetensors")):
            _job_finished(job)
            owner.note_registered(job.id, job.registered)


def register(job: Job) -> Path:
    """Put a finished job's checkpoint (and its yaml, and a card image from its last
    samples) into the checkpoint folder under a name nothing else has, and list it."""
    result = Path(job.result)
    target = free_name(a1111.checkpoint_dir(), result.stem)
    # The yaml first: the dropdown must never list a student its config is missing for.
    _place(result.with_suffix(".yaml"), target.with_suffix(".yaml"))
    grid = latest_samples(jobs_root() / job.id)
    if grid is not None:
        write_preview(grid, target.with_suffix(".preview.png"))
    _place(result, target)
    lora = done_event(jobs_root() / job.id).get("lora")
    if lora:  # DreamBooth's LoRA file, for A1111's Lora extension (keys of this student)
        _place(Path(lora), free_name(a1111.lora_dir(), Path(lora).stem))
    a1111.refresh_checkpoints()
    return target


def done_event(folder: Path) -> Dict[str, Any]:
    events = read_events(folder / "events.jsonl")
    return events[-1] if events and events[-1].get("event") == "done" else {}


def free_name(folder: Path, stem: str) -> Path:
    """``stem.safetensors``, or ``stem-2.safetensors``… when taken: never overwrite."""
    folder.mkdir(parents=True, exist_ok=True)
    candidate, number = folder / (stem + ".safetensors"), 1
    while candidate.exists() or candidate.with_suffix(".yaml").exists():
        number += 1
        candidate = folder / ("%s-%d.safetensors" % (stem, number))
    return candidate


def _place(source: Path, target: Path) -> None:
    """A hard link when the job folder is on the same disk (no second copy of gigabytes),
    else a copy; under a temporary name the dropdown ignores, then renamed."""
    temporary = target.with_name(target.name + ".tmp")
    if temporary.exists():
        temporary.unlink()
    try:
        os.link(str(source), str(temporary))
    except OSError:
        shutil.copy2(str(source), str(temporary))
    os.replace(str(temporary), str(target))


def latest_samples(folder: Path) -> Optional[Path]:
    """The newest sample grid the job in `folder` wrote, if any."""
    grids = [Path(e["path"]) for e in read_events(folder / "events.jsonl")
             if e.get("event") == "samples" and e.get("path")]
    grids = [grid for grid in grids if grid.is_file()]
    return grids[-1] if grids else None


def write_preview(grid: Path, target: Path) -> None:
    """The card image: the top-right square of a grid whose rows are teacher | student
    (or before | after) pairs, i.e. the trained model's first sample."""
    from PIL import Image

    with Image.open(grid) as image:
        cell = image.width // 2
        image.crop((cell, 0, 2 * cell, min(cell, image.height))).save(target)


def job_labels(jobs: List[Job]) -> List[str]:
    return [label(job) for job in reversed(jobs)]


def label(job: Job) -> str:
    return "%s  [%s]" % (job.title, job.id)


def job_id(selected: Any) -> str:
    """The job id inside a dropdown label (the text between the last brackets)."""
    text = str(selected or "")
    return text[text.rfind("[") + 1:text.rfind("]")] if text.endswith("]") else ""
