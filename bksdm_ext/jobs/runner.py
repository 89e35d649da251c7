"""Background jobs: distillation (and later DreamBooth, synthesis) runs in processes of
their own, queued one at a time per device.

A crash or an out-of-memory error in a job cannot take the WebUI down, and the WebUI
stays responsive.  A job is a folder (``job.json``, ``log.txt`` and the run itself:
``events.jsonl``, checkpoints, samples, result), so the list survives a WebUI restart: a
process still running is re-attached, a dead one is marked interrupted and can resume
from its last checkpoint.  The run's own event file and its worker's ``exit.json`` say
how it ended.

A job may wait for another (``after``: "KD then LCM" starts the LCM run from the KD run's
result): it starts only once that one succeeded, and is cancelled, saying why, when that
one ends any other way.

Several processes may share one jobs folder (the WebUI, ``bksdm jobs watch``): every change
of a ``job.json`` happens under a lock file in the folder, so a queued job starts once.
"""
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

from ..errors import BadInput
from .events import TOTAL_STEPS, read_events
from .file_lock import exclusive
from .runs import RunPaths
from .worker import EXIT_FILE, KILL_SIGNALS, last_line, log_tail, read_exit, shown

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED, INTERRUPTED = (
    "queued", "running", "succeeded", "failed", "cancelled", "interrupted")
BROKEN = "broken"  # its job.json cannot be read: listed with the reason, never touched
LARGEST_JOB_FILE = 1024 * 1024  # bytes; a job file holds settings, a few kB
FINISHED = (SUCCEEDED, FAILED, CANCELLED, INTERRUPTED)
SETTLED = FINISHED + (BROKEN,)  # nothing more will happen to it without a user
STATES = (QUEUED, RUNNING) + SETTLED
KINDS = ("distill", "dreambooth", "synth", "eval", "blocks")
LOCK_FILE = ".lock"
WORKER = str(Path(__file__).resolve().with_name("worker.py"))
# The folder holding the bksdm_ext package: a job's Python imports the package from there,
# as the WebUI did (A1111 puts an extension's folder on sys.path only while loading it).
EXTENSION_ROOT = str(Path(__file__).resolve().parents[2])


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
    after: str = ""  # the id of a job this one waits for (it starts from that one's result)
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
    """Training totals come from the `start` event's TOTAL_STEPS, teacher-data totals
    from `synth` events; runs that say neither are estimated from their rate and ETA."""
    progress, training_total = Progress(), None
    for e in events:
        name = e.get("event")
        if name == "start":
            training_total = e.get(TOTAL_STEPS)
        elif name == "synth":
            progress.phase, progress.step, progress.total = "teacher data", e["done"], e["total"]
            progress.eta_s, progress.it_s = e.get("eta_s"), e.get("images_s")
        elif name == "step":
            losses = {key: float(value) for key, value in e.items()
                      if key not in NOT_LOSSES and _plottable(value)}
            if losses or progress.phase != "teacher data":  # not a synth job's own progress
                progress.phase, progress.total = "training", training_total
            progress.step, progress.eta_s, progress.it_s = e["step"], e.get("eta_s"), e.get("it_s")
            for key, value in losses.items():
                progress.losses.setdefault(key, []).append((progress.step, value))
    if progress.total is None and progress.eta_s is not None and progress.it_s:
        progress.total = progress.step + int(round(progress.eta_s * progress.it_s))
    if events and events[-1].get("event") == "done":
        progress.total = progress.step = events[-1].get("step") or progress.step
    return progress


def _plottable(value: Any) -> bool:
    """A loss value: a float (NaN and infinity included: a diverged run shows as one) or
    an int a float holds; never a flag."""
    return type(value) is float or (type(value) is int and abs(value) <= 2 ** 53)


def default_device() -> str:
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


def child_environment(base: Mapping[str, str]) -> Dict[str, str]:
    """`base` with the extension's folder first on PYTHONPATH (what was there stays after
    it), so ``python -m bksdm_ext`` works from any working directory, also when the
    package is not installed, as in a WebUI."""
    env = dict(base)
    kept = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != EXTENSION_ROOT]
    env["PYTHONPATH"] = os.pathsep.join([EXTENSION_ROOT] + kept)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


class JobRunner:
    """Owns a folder of jobs; `poll()` moves them along (the WebUI calls it on a timer).

    `drive=False` makes a reader that never starts a job nor records one's end (``bksdm
    jobs list``); every reader sees each job as it stands (`_as_it_stands`)."""

    def __init__(self, root: Path, python: str = sys.executable,
                 on_start: Optional[Callable[[Job], None]] = None,
                 on_finish: Optional[Callable[[Job], None]] = None, drive: bool = True) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.python = python
        self.on_start, self.on_finish, self.drive = on_start, on_finish, drive
        self._processes: Dict[str, subprocess.Popen] = {}
        self._lock = threading.RLock()
        self._depth = 0  # nesting of _exclusive() in this process
        if drive:
            self.poll()  # after a restart: re-attach live processes, mark dead ones interrupted

    # -- queries ------------------------------------------------------------------
    def jobs(self) -> List[Job]:
        """Every job as it stands now, oldest first."""
        return [self._as_it_stands(job) for job in self._recorded()]

    def ids(self) -> List[str]:
        """The job ids: the folders here holding a job.json."""
        return sorted(p.parent.name for p in self.root.glob("*/job.json"))

    def job(self, job_id: str) -> Job:
        """The job as it stands now."""
        return self._as_it_stands(self._read(self.folder(job_id)))

    def folder(self, job_id: str) -> Path:
        """The folder of a job in the list; any other id (from a web page, say) is refused
        before a file is touched."""
        if job_id not in self.ids():
            raise BadInput("no job '%s' in %s; `bksdm jobs list` shows the ids" % (job_id, self.root))
        return self._path(job_id)

    def events(self, job_id: str) -> List[Dict]:
        return read_events(self.folder(job_id) / "events.jsonl")

    def log_tail(self, job_id: str, lines: int = 40) -> str:
        return log_tail(self.folder(job_id), lines)

    # -- actions ------------------------------------------------------------------
    def submit(self, kind: str, argv: List[str], device: Optional[str] = None, title: str = "",
               processes: int = 1, free_vram: bool = False, after: str = "") -> Job:
        """Queue a job; with `after` (a job id), it waits for that job to succeed."""
        if kind not in KINDS:
            raise BadInput("unknown job kind '%s'; one of: %s" % (kind, ", ".join(KINDS)))
        if after:
            self.folder(after)  # BadInput: no such job
        job_id = "%s-%s-%s" % (time.strftime("%Y%m%d-%H%M%S"), kind, uuid.uuid4().hex[:6])
        job = Job(id=job_id, kind=kind, argv=list(argv), device=device or default_device(),
                  title=title or kind, processes=processes, free_vram=free_vram, after=after)
        with self._exclusive():
            self._path(job_id).mkdir()
            self._write(job)
        if self.drive:
            self.poll()
        return self.job(job_id)

    def cancel(self, job_id: str, save: bool = False) -> Job:
        """Queued: cancelled at once.  Running: asked to stop at its next step, saving a
        checkpoint (and the student) first when `save`."""
        with self._exclusive():
            job = self._changeable(job_id)
            if job.state == QUEUED:
                self._finish(job, CANCELLED, "cancelled before it started")
            elif job.state == RUNNING:
                (self.folder(job_id) / "STOP").write_text("save" if save else "discard")
        return self.job(job_id)

    def resume(self, job_id: str) -> Job:
        """Queue an interrupted, failed or cancelled run again, from its last checkpoint."""
        with self._exclusive():
            job = self._changeable(job_id)
            if job.state not in FINISHED or job.state == SUCCEEDED:
                raise BadInput("job %s is %s; only a stopped job can resume" % (job_id, job.state))
            if not self._resumable(job):
                raise BadInput("job %s saved no checkpoint to resume from; submit it again"
                               % job_id)
            job.state, job.reason, job.resume, job.ended = QUEUED, "", True, None
            self._write(job)
        if self.drive:
            self.poll()
        return self.job(job_id)

    def note_registered(self, job_id: str, where: str) -> None:
        """Record where a finished job's result was put for the WebUI's dropdown."""
        with self._exclusive():
            job = self._changeable(job_id)
            job.registered = where
            self._write(job)

    def poll(self) -> None:
        """Notice ended processes, cancel a job whose awaited job ended without success,
        then start the oldest queued job on each free device whose awaited job (if any)
        succeeded."""
        with self._exclusive():
            jobs = self._recorded()
            for job in jobs:
                ended = self._ended(job)
                if ended is not None:
                    state, reason, job.result = ended
                    self._finish(job, state, reason)
            states = {job.id: job.state for job in jobs}
            for job in jobs:
                awaited = states.get(job.after, BROKEN) if job.after else SUCCEEDED
                if job.state == QUEUED and awaited in SETTLED and awaited != SUCCEEDED:
                    self._finish(job, CANCELLED, "not started: it starts from the result of "
                                 "job %s, which %s" % (job.after, "is gone" if job.after not in
                                                       states else "ended " + awaited))
                    states[job.id] = CANCELLED
            busy = {job.device for job in jobs if job.state == RUNNING}
            for job in jobs:
                ready = not job.after or states.get(job.after) == SUCCEEDED
                if job.state == QUEUED and ready and job.device not in busy:
                    self._start(job)
                    busy.add(job.device)

    # -- internals ----------------------------------------------------------------
    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """This thread alone in this process, and this process alone on the jobs folder."""
        with self._lock:
            self._depth += 1
            try:
                if self._depth == 1:
                    with exclusive(self.root / LOCK_FILE):
                        yield
                else:
                    yield
            finally:
                self._depth -= 1

    def _recorded(self) -> List[Job]:
        """Every job as its job.json has it, oldest first."""
        found = [self._read(self._path(job_id)) for job_id in self.ids()]
        return sorted(found, key=lambda job: job.created)

    def _as_it_stands(self, job: Job) -> Job:
        """`job` as every command and tab shows and changes it: a job whose file says
        running but whose process has ended is what its run's files say (succeeded,
        failed, cancelled, interrupted), before any poll has recorded that."""
        ended = self._ended(job)
        if ended is not None:
            job.state, job.reason, job.result = ended
        return job

    def _ended(self, job: Job) -> Optional[Tuple[str, str, str]]:
        """(state, reason, result) of a job recorded as running whose process has ended;
        None for any other.  The one place that decides a job's state."""
        if job.state != RUNNING or self._alive(job):
            return None
        return self._outcome(job)

    def _resumable(self, job: Job) -> bool:
        """Whether its run folder holds what a ``--resume`` continues from."""
        return RunPaths(self._path(job.id)).resumable()

    def _path(self, job_id: str) -> Path:
        """The folder of an id read from this folder's own job list."""
        return self.root / job_id

    def _changeable(self, job_id: str) -> Job:
        job = self.job(job_id)
        if job.state == BROKEN:
            raise BadInput("job %s is broken (%s); delete its folder %s" % (
                job_id, job.reason, self.folder(job_id)))
        return job

    def command(self, job: Job) -> List[str]:
        """The worker (by absolute path), which runs ``python -m bksdm_ext KIND ...`` and
        records how it ended."""
        folder = str(self._path(job.id))
        # Ahead of the job's own arguments, which may end in ``-- POSITIONAL...``.
        bksdm = ["-m", "bksdm_ext", job.kind, "--out=" + folder] + (
            ["--resume"] if job.resume else []) + job.argv
        if job.processes > 1:
            run = [self.python, "-m", "accelerate.commands.launch", "--multi_gpu",
                   "--num_processes", str(job.processes)] + bksdm
        else:
            run = [self.python] + bksdm
        return [self.python, WORKER, folder, "--"] + run

    def _start(self, job: Job) -> None:
        if self.on_start is not None:
            self.on_start(job)
        env = child_environment(os.environ)
        if job.device.startswith("cuda:") and job.processes == 1:
            env["CUDA_VISIBLE_DEVICES"] = job.device.split(":", 1)[1]
        folder = self._path(job.id)
        for stale in (folder / "STOP", folder / EXIT_FILE):  # an old run's, not this one's
            if stale.exists():
                stale.unlink()
        with open(str(folder / "log.txt"), "ab") as log:
            log.write(("[bksdm jobs] %s started by process %d\n" % (
                time.strftime("%Y-%m-%d %H:%M:%S"), os.getpid())).encode("utf-8"))
            log.flush()
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
        if read_exit(self._path(job.id)) is not None:
            return False
        return _pid_runs(job.pid, str(self._path(job.id)))

    def _outcome(self, job: Job) -> Tuple[str, str, str]:
        """(state, reason, result) of a run that is no longer running: its own event file
        first, then its worker's exit record; with neither, it was interrupted."""
        events = self.events(job.id)
        last = events[-1] if events else {}
        if last.get("event") == "done":
            return SUCCEEDED, "", last.get("output") or ""
        if last.get("event") == "stopped":
            return CANCELLED, "stopped at step %s, %s" % (
                last.get("step"), "checkpoint saved" if last.get("saved") else "nothing saved"), ""
        if last.get("event") == "error":
            return FAILED, "%s: %s" % (last.get("kind"), last.get("message")), ""
        record = read_exit(self._path(job.id))
        process = self._processes.get(job.id)
        if record is not None:
            code, reason = record.get("exit_code"), str(record.get("reason") or "")
        elif process is not None and process.returncode is not None:  # the worker itself ended
            code, reason = process.returncode, ""
        else:
            code, reason = None, ""
        then = ("resume it from its last checkpoint" if self._resumable(job) else
                "it saved nothing to resume from: submit it again")
        if code is None:
            return INTERRUPTED, "%s; %s" % (reason or "the process ended without finishing "
                                            "(killed, or the machine restarted)", then), ""
        if code < 0 and -code in KILL_SIGNALS:
            return INTERRUPTED, "%s (out of memory, or stopped from outside); %s" % (
                reason or "killed by signal %d" % -code, then), ""
        return FAILED, reason or last_line(self.log_tail(job.id)) or "exit code %s" % code, ""

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
        """The job in `folder`; one whose job.json is damaged comes back `broken`, with
        what is wrong as its reason, so the list and the queue carry on around it."""
        path = folder / "job.json"
        try:
            size = path.stat().st_size
            if size > LARGEST_JOB_FILE:
                raise ValueError("%d bytes, more than a job file holds" % size)
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            unknown = sorted(set(data) - {f.name for f in fields(Job)})
            if unknown:
                raise ValueError("unknown key %s" % ", ".join(map(repr, unknown)))
            for name, value in data.items():
                fits, what = FIELD_RULES[name]
                if not fits(value):
                    raise ValueError("%s must be %s, not %s" % (name, what, shown(value)))
            job = Job(**data)
            if job.id != folder.name or job.kind not in KINDS or job.state not in STATES:
                raise ValueError("id, kind or state is wrong: %r, %r, %r"
                                 % (job.id, job.kind, job.state))
            return job
        except RecursionError:
            return _broken(folder, "nested too deeply to be a job file")
        except (OSError, ValueError, TypeError) as e:  # UnicodeDecodeError is a ValueError
            return _broken(folder, str(e))

    def _write(self, job: Job) -> None:
        if job.state != RUNNING:  # a process this runner started is over for good
            self._processes.pop(job.id, None)
        target = self._path(job.id) / "job.json"
        temp = target.with_name("job.json.tmp")
        temp.write_text(json.dumps(asdict(job), indent=2), encoding="utf-8")
        os.replace(temp, target)


def _broken(folder: Path, problem: str) -> Job:
    path = folder / "job.json"
    try:
        created = path.stat().st_mtime
    except OSError:
        created = 0.0
    return Job(id=folder.name, kind="", argv=[], device="", title=folder.name, state=BROKEN,
               reason="job.json: %s" % problem, created=created)


def _whole(value: Any, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


def _moment(value: Any) -> bool:
    """A time the list can print: seconds since 1970, before the year 10000."""
    return type(value) in (int, float) and 0 <= value < 253402300800  # NaN: neither


def _passed_on(value: Any) -> bool:
    """Text a process gets (an argument, an environment variable): no NUL byte."""
    return isinstance(value, str) and "\0" not in value


TEXT = (lambda value: isinstance(value, str), "text")
# What each field of job.json must be, and how to say it: a job file that parsed but holds
# something else is broken, not a crash of whoever reads it.
FIELD_RULES: Dict[str, Tuple[Callable[[Any], bool], str]] = {
    "id": TEXT, "kind": TEXT, "title": TEXT, "state": TEXT, "reason": TEXT, "result": TEXT,
    "registered": TEXT, "after": TEXT, "device": (_passed_on, "text without NUL"),
    "argv": (lambda v: isinstance(v, list) and all(map(_passed_on, v)),
             "a list of texts without NUL"),
    "processes": (lambda v: _whole(v, 1, 4096), "a whole number from 1"),
    "free_vram": (lambda v: isinstance(v, bool), "true or false"),
    "resume": (lambda v: isinstance(v, bool), "true or false"),
    "pid": (lambda v: v is None or _whole(v, 1, 2 ** 31 - 1), "a process id or null"),
    "created": (_moment, "a time in seconds"),
    "started": (lambda v: v is None or _moment(v), "a time in seconds or null"),
    "ended": (lambda v: v is None or _moment(v), "a time in seconds or null"),
}


def _pid_runs(pid: Optional[int], marker: str) -> bool:
    """Whether `pid` is alive and still our job (its command line names the job folder),
    so a recycled pid is not mistaken for it."""
    if not pid:
        return False
    if os.name == "nt":
        return _windows_pid_runs(pid)
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    proc = Path("/proc/%d" % pid)
    if not (proc / "cmdline").is_file():
        return True  # no /proc (macOS): alive is all we can tell
    command = _command_line(proc)
    return command is not None and marker in command


def _command_line(proc: Path, wait_s: float = 1.0) -> Optional[str]:
    """The command line in `proc`; None for a zombie or a process gone.  It reads empty for
    about a millisecond after the process was started (while it is exec'ing), which is just
    when another process may list the jobs: an empty one is read again."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            command = (proc / "cmdline").read_bytes().decode("utf-8", "replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except (OSError, IndexError):
            return None
        if state == "Z":
            return None
        if command or time.monotonic() > deadline:
            return command
        time.sleep(0.005)


def _windows_pid_runs(pid: int) -> bool:
    """Windows has no signal 0 (os.kill would end the process): ask for its exit code."""
    import ctypes

    kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return False
    try:
        code = ctypes.c_ulong()
        return bool(kernel32.GetExitCodeProcess(handle, ctypes.byref(code))) and code.value == 259
    finally:  # 259: STILL_ACTIVE
        kernel32.CloseHandle(handle)
