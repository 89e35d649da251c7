"""The run folder every background job writes (distillation, DreamBooth, synthesis), and
the protocol the job runner and the WebUI read from it.

``events.jsonl`` says what happened (``start``, ``step`` with losses and ``eta_s``,
``checkpoint``, ``samples`` with a grid's path, ``done`` with the ``output`` file,
``stopped``, ``error``); a ``STOP`` file holding "save" or "discard" asks the run to stop
at its next step; ``checkpoints/step-NNNNNNN`` folders let ``--resume`` continue it.
"""
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .errors import BadInput
from .events import EventLog


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

    def resume_point(self, resume: bool) -> Optional[Path]:
        """The checkpoint to continue from; refuses to start over an existing run."""
        latest = self.latest_checkpoint()
        if resume and latest is None:
            raise BadInput("%s: nothing to resume (no checkpoints/step-* folder)" % self.out)
        if not resume and latest is not None:
            raise BadInput("%s already holds a run (%s); pass --resume to continue it or choose "
                           "another --out" % (self.out, latest.name))
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
