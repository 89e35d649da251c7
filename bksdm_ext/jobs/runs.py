"""The run folder every background job writes (distillation, DreamBooth, synthesis), and
the protocol the job runner and the WebUI read from it.

``events.jsonl`` says what happened (``start``, ``step`` with losses and ``eta_s``,
``checkpoint``, ``samples`` with a grid's path, ``done`` with the ``output`` file,
``stopped``, ``error``); a ``STOP`` file holding "save" or "discard" asks the run to stop
at its next step; ``checkpoints/step-NNNNNNN`` folders let ``--resume`` continue it, and so
does a ``checkpoints/resumable`` file, left by a run with work to keep before its first
checkpoint (the teacher making its training data).
"""
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

from ..errors import BadInput, DiskError, Stopped
from .events import EventLog

RESUMABLE = "resumable"  # in checkpoints/: see RunPaths.mark_resumable


@dataclass
class RunPaths:
    out: Path
    events: Path = field(init=False)
    stop: Path = field(init=False)
    checkpoints: Path = field(init=False)
    samples: Path = field(init=False)

    def __post_init__(self) -> None:
        self.events = self.out / "events.jsonl"
        self.stop = self.out / "STOP"  # "save" or "discard": stop at the next step
        self.checkpoints = self.out / "checkpoints"
        self.samples = self.out / "samples"

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / ("step-%07d" % step)

    def latest_checkpoint(self) -> Optional[Path]:
        found = sorted(self.checkpoints.glob("step-*[0-9]")) if self.checkpoints.is_dir() else []
        return found[-1] if found else None

    def mark_resumable(self) -> None:
        """Say that --resume has something to continue before the first checkpoint."""
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        (self.checkpoints / RESUMABLE).touch()

    def resumable(self) -> bool:
        """Whether --resume continues this run (the job runner offers it when so)."""
        return self.latest_checkpoint() is not None or (self.checkpoints / RESUMABLE).is_file()

    def write_checkpoint(self, step: int, fill: Callable[[Path], None], keep_last: int,
                         keep: Optional[Path] = None) -> Path:
        """``checkpoints/step-N``, filled by `fill(folder)` under a temporary name and then
        renamed, so a kill never leaves half a checkpoint; only the newest `keep_last` stay,
        and `keep` (the checkpoint an evaluation marked best), so pruning never deletes
        the student a user would pick.  A full disk removes the half-written one and is a
        `DiskError` that names the last good checkpoint, which stays for --resume."""
        target = self.checkpoint(step)
        temp = target.with_name(target.name + ".tmp")
        shutil.rmtree(temp, ignore_errors=True)
        try:
            temp.mkdir(parents=True)
            fill(temp)
        except BaseException as e:
            shutil.rmtree(temp, ignore_errors=True)  # half a checkpoint only takes space
            problem = DiskError.of(e)
            if problem is None:
                raise
            raise problem.about(target, self._not_saved(target)) from None
        shutil.rmtree(target, ignore_errors=True)
        os.replace(temp, target)
        for old in sorted(self.checkpoints.glob("step-*[0-9]"))[:-max(keep_last, 1)]:
            if keep is None or old != keep:
                shutil.rmtree(old)
        return target

    def _not_saved(self, target: Path) -> str:
        """What a run that could not write `target` leaves to resume from."""
        latest = self.latest_checkpoint()
        return "the run stopped without saving %s; %s" % (target.name, (
            "its last good checkpoint %s is kept: continue with --resume once there is room"
            % latest.name) if latest else "there is no earlier checkpoint")

    def resume_point(self, resume: bool) -> Optional[Path]:
        """The checkpoint to continue from (None for a run resumable before its first);
        refuses to start over an existing run."""
        latest = self.latest_checkpoint()
        if resume and not self.resumable():
            raise BadInput("%s: nothing to resume (no checkpoints/step-* folder)" % self.out)
        if not resume and self.resumable():
            raise BadInput("%s already holds a run (%s); pass --resume to continue it or choose "
                           "another --out" % (self.out, latest.name if latest else
                                              "stopped before its first checkpoint"))
        return latest if resume else None

    def take_stop_request(self) -> str:
        """"save", "discard", or "" when no stop was asked for; the request is consumed."""
        if not self.stop.is_file():
            return ""
        request = "save" if self.stop.read_text().strip() == "save" else "discard"
        self.stop.unlink()
        return request


def progress_bar(total: int, initial: int = 0, enabled: bool = True, desc: str = "") -> Any:
    """A tqdm bar: the job's log.txt shows it, and so does a terminal."""
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc=desc, dynamic_ncols=True)


def event(log: Optional[EventLog], name: str, **fields: Any) -> None:
    """Write an event where there is a log (only process 0 of a DDP run has one)."""
    if log is not None:
        log.write(name, **fields)


@contextmanager
def failures_reported(out: Union[str, Path]) -> Iterator[None]:
    """A run that fails says why in its event file too, where the job list reads it (a
    stopped run has already said so; in DDP only process 0 writes)."""
    try:
        yield
    except Stopped:
        raise
    except BaseException as e:
        events = RunPaths(Path(out)).events
        if os.environ.get("RANK", "0") == "0" and events.is_file():
            try:
                EventLog(events).write("error", kind=type(e).__name__, message=str(e))
            except OSError:  # a disk still full: the error itself is what matters
                pass
        raise


def stop_run(request: str, step: int, save: Callable[[], None], log: Optional[EventLog],
             progress: Any) -> None:
    """End a run at a STOP request ("save" checkpoints first): the `stopped` event the job
    list reads, then `Stopped` for the command line's exit code."""
    if request == "save":
        save()
    event(log, "stopped", step=step, saved=request == "save")
    progress.close()
    raise Stopped("stopped at step %d%s" % (step, "; checkpoint saved, continue with --resume"
                                            if request == "save" else "; nothing saved"))
