"""Background jobs: distillation (and later DreamBooth, synthesis) runs in processes of
their own, queued one at a time per device.

A crash or an out-of-memory error in a job cannot take the WebUI down, and the WebUI
stays responsive.  A job is a folder (``job.json``, ``log.txt`` and the run itself:
``events.jsonl``, checkpoints, samples, result), so the list survives a WebUI restart: a
process still running is re-attached, a dead one is marked interrupted and can resume
from its last checkpoint.  The run's own event file says how it ended.
"""
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from ..errors import BadInput
from .events import read_events

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED, INTERRUPTED = (
    "queued", "running", "succeeded", "failed", "cancelled", "interrupted")
FINISHED = (SUCCEEDED, FAILED, CANCELLED, INTERRUPTED)
KINDS = ("distill", "dreambooth", "synth", "blocks")


@dataclass
class Job:
    id: str
    kind: str
    argv: List[str]  # the command's arguments, without --out (the job folder is the run folder)
    device: str  # "cuda:0", "cpu", ...: one running job per device
    title: str = ""
    processes: int = 1  # > 1: accelerate launch --multi_gpu (DDP)
    free_vram: bool = False  # the WebUI moves its model out of GPU memory while this runs
    state: str = QUEUED
    reason: str = ""  # why it failed, was cancelled or interrupted
    result: str = ""  # the exported checkpoint of a finished run
    registered: str = ""  # where the WebUI put it for its checkpoint dropdown
    resume: bool = False
    pid: Optional[int] = None
    created: float = field(default_factory=time.time)
    started: Optional[float] = None
    ended: Optional[float] = None


# Fields of a `step` event that are not a loss (everything else numeric is plotted).
NOT_LOSSES = {"time", "event", "step", "lr", "it_s", "samples_s", "eta_s", "peak_mem_gb",
              "images_s", "total"}


@dataclass
class Progress:
    """Where a run is, read from its event file: what the Jobs tab and `bksdm jobs` show."""

    step: int = 0
    total: Optional[int] = None
    eta_s: Optional[float] = None
    it_s: Optional[float] = None
    phase: str = "training"  # or "teacher data": images the teacher is making first
    losses: Dict[str, List[Tuple[int, float]]] = field(default_factory=dict)  # name -> (step, value)

    @property
    def fraction(self) -> float:
        return min(self.step / self.total, 1.0) if self.total else 0.0


def progress_of(events: List[Dict]) -> Progress:
    """Training totals come from the `start` event's ``total_steps``, teacher-data totals
    from `synth` events; runs that say neither are estimated from their rate and ETA."""
    progress, training_total = Progress(), None
    for e in events:
        name = e.get("event")
        if name == "start":
            training_total = e.get("total_steps")
        elif name == "synth":
            progress.phase, progress.step, progress.total = "teacher data", e["done"], e["total"]
            progress.eta_s, progress.it_s = e.get("eta_s"), e.get("images_s")
        elif name == "step":
            losses = {key: float(value) for key, value in e.items()
                      if key not in NOT_LOSSES and isinstance(value, (int, float))}
            if losses or progress.phase != "teacher data":  # not a synth job's own progress
                progress.phase, progress.total = "training", training_total
            progress.step, progress.eta_s, progress.it_s = int(e["step"]), e.get("eta_s"), e.get("it_s")
            for key, value in losses.items():
                progress.losses.setdefault(key, []).append((progress.step, value))
    if progress.total is None and progress.eta_s is not None and progress.it_s:
        progress.total = progress.step + int(round(progress.eta_s * progress.it_s))
    if events and events[-1].get("event") == "done":
        progress.total = progress.step = int(events[-1].get("step") or progress.step)
    return progress


def default_device() -> str:
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


class JobRunner:
    """Owns a folder of jobs; `poll()` moves them along (the WebUI calls it on a timer)."""

    def __init__(self, root: Path, python: str = sys.executable,
                 on_start: Optional[Callable[[Job], None]] = None,
                 on_finish: Optional[Callable[[Job], None]] = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.python = python
        self.on_start, self.on_finish = on_start, on_finish
        self._processes: Dict[str, subprocess.Popen] = {}
        self._lock = threading.RLock()
        self.poll()  # after a restart: re-attach live processes, mark dead ones interrupted

    # -- queries ------------------------------------------------------------------
    def jobs(self) -> List[Job]:
        found = [self._read(p.parent) for p in self.root.glob("*/job.json")]
        return sorted(found, key=lambda job: job.created)

    def job(self, job_id: str) -> Job:
        folder = self.root / job_id
        if not (folder / "job.json").is_file():
            raise BadInput("no job %s in %s" % (job_id, self.root))
        return self._read(folder)

    def folder(self, job_id: str) -> Path:
        return self.root / job_id

    def events(self, job_id: str) -> List[Dict]:
        return read_events(self.folder(job_id) / "events.jsonl")

    def log_tail(self, job_id: str, lines: int = 40) -> str:
        log = self.folder(job_id) / "log.txt"
        if not log.is_file():
            return ""
        with open(log, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 200 * lines))
            text = f.read().decode("utf-8", "replace").replace("\r", "\n")
        return "\n".join(text.splitlines()[-lines:])

    # -- actions ------------------------------------------------------------------
    def submit(self, kind: str, argv: List[str], device: Optional[str] = None, title: str = "",
               processes: int = 1, free_vram: bool = False) -> Job:
        if kind not in KINDS:
            raise BadInput("unknown job kind '%s'; one of: %s" % (kind, ", ".join(KINDS)))
        job_id = "%s-%s-%s" % (time.strftime("%Y%m%d-%H%M%S"), kind, uuid.uuid4().hex[:6])
        job = Job(id=job_id, kind=kind, argv=list(argv), device=device or default_device(),
                  title=title or kind, processes=processes, free_vram=free_vram)
        with self._lock:
            self.folder(job_id).mkdir()
            self._write(job)
        self.poll()
        return self.job(job_id)

    def cancel(self, job_id: str, save: bool = False) -> Job:
        """Queued: cancelled at once.  Running: asked to stop at its next step, saving a
        checkpoint (and the student) first when `save`."""
        with self._lock:
            job = self.job(job_id)
            if job.state == QUEUED:
                self._finish(job, CANCELLED, "cancelled before it started")
            elif job.state == RUNNING:
                (self.folder(job_id) / "STOP").write_text("save" if save else "discard")
        return self.job(job_id)

    def resume(self, job_id: str) -> Job:
        """Queue an interrupted, failed or cancelled run again, from its last checkpoint."""
        with self._lock:
            job = self.job(job_id)
            if job.state not in FINISHED or job.state == SUCCEEDED:
                raise BadInput("job %s is %s; only a stopped job can resume" % (job_id, job.state))
            if not (self.folder(job_id) / "checkpoints").is_dir():
                raise BadInput("job %s saved no checkpoint to resume from; submit it again"
                               % job_id)
            job.state, job.reason, job.resume, job.ended = QUEUED, "", True, None
            self._write(job)
        self.poll()
        return self.job(job_id)

    def poll(self) -> None:
        """Notice ended processes, then start the oldest queued job on each free device."""
        with self._lock:
            jobs = self.jobs()
            for job in jobs:
                if job.state == RUNNING and not self._alive(job):
                    self._ended(job)
            busy = {job.device for job in jobs if job.state == RUNNING}
            for job in jobs:
                if job.state == QUEUED and job.device not in busy:
                    self._start(job)
                    busy.add(job.device)

    # -- internals ----------------------------------------------------------------
    def command(self, job: Job) -> List[str]:
        folder = str(self.folder(job.id))
        bksdm = ["-m", "bksdm_ext", job.kind] + job.argv + ["--out", folder]
        if job.resume:
            bksdm.append("--resume")
        if job.processes > 1:
            return [self.python, "-m", "accelerate.commands.launch", "--multi_gpu",
                    "--num_processes", str(job.processes)] + bksdm
        return [self.python] + bksdm

    def _start(self, job: Job) -> None:
        if self.on_start is not None:
            self.on_start(job)
        env = dict(os.environ)
        if job.device.startswith("cuda:") and job.processes == 1:
            env["CUDA_VISIBLE_DEVICES"] = job.device.split(":", 1)[1]
        env.setdefault("PYTHONUNBUFFERED", "1")
        folder = self.folder(job.id)
        stop = folder / "STOP"
        if stop.exists():  # an old request must not stop the new process
            stop.unlink()
        with open(folder / "log.txt", "ab") as log:
            # Its own session: the job outlives a WebUI restart and is re-attached after it.
            process = subprocess.Popen(self.command(job), stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, env=env,
                                       start_new_session=True)
        self._processes[job.id] = process
        job.state, job.pid, job.started = RUNNING, process.pid, time.time()
        self._write(job)

    def _alive(self, job: Job) -> bool:
        process = self._processes.get(job.id)
        if process is not None:
            return process.poll() is None
        return _pid_runs(job.pid, str(self.folder(job.id)))

    def _ended(self, job: Job) -> None:
        """Decide how a run that is no longer running ended, from its own event file."""
        process = self._processes.pop(job.id, None)
        code = process.returncode if process is not None else None
        events = self.events(job.id)
        last = events[-1] if events else {}
        if last.get("event") == "done":
            job.result = str(last.get("output", ""))
            self._finish(job, SUCCEEDED, "")
        elif last.get("event") == "stopped":
            self._finish(job, CANCELLED, "stopped at step %s, %s" % (
                last.get("step"), "checkpoint saved" if last.get("saved") else "nothing saved"))
        elif last.get("event") == "error":
            self._finish(job, FAILED, "%s: %s" % (last.get("kind"), last.get("message")))
        elif code not in (None, -signal.SIGKILL, -signal.SIGTERM):
            self._finish(job, FAILED, _last_line(self.log_tail(job.id)) or "exit code %s" % code)
        else:
            self._finish(job, INTERRUPTED, "the process ended without finishing (killed, or the "
                                           "machine restarted); resume it from its last checkpoint")

    def _finish(self, job: Job, state: str, reason: str) -> None:
        job.state, job.reason, job.ended = state, reason, time.time()
        if self.on_finish is not None:
            try:
                self.on_finish(job)  # e.g. fills in job.registered
            except Exception as e:  # the run itself is done: say what went wrong after it
                job.reason = ("%s; " % job.reason if job.reason else "") + (
                    "afterwards: %s: %s" % (type(e).__name__, e))
        self._write(job)

    def _read(self, folder: Path) -> Job:
        return Job(**json.loads((folder / "job.json").read_text(encoding="utf-8")))

    def _write(self, job: Job) -> None:
        target = self.folder(job.id) / "job.json"
        temp = target.with_name("job.json.tmp")
        temp.write_text(json.dumps(asdict(job), indent=2), encoding="utf-8")
        os.replace(temp, target)


def _pid_runs(pid: Optional[int], marker: str) -> bool:
    """Whether `pid` is alive and still our job (its command line names the job folder),
    so a recycled pid is not mistaken for it."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    cmdline = Path("/proc/%d/cmdline" % pid)
    if cmdline.is_file():
        try:
            return marker in cmdline.read_bytes().decode("utf-8", "replace")
        except OSError:
            return False
    return True


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""
