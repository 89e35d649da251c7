"""The JSON-lines event file a training run writes and the WebUI and CLI read.

One object per line: ``{"time": ..., "event": "step", "step": 10, "loss": ...}``.  A reader
skips a line it cannot use and reads on: the half-written last line (the writer may be
mid-line), a line a kill cut short before a resumed run wrote on after it, bytes that are
not UTF-8, a line that is not an object, and an event whose fields the readers compute
with are missing or of another kind.  So one damaged line neither hides the rest of a run
nor takes the job list down.
"""
import json
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

LARGEST_COUNT = 2 ** 53  # steps, images: a float still holds them exactly
LARGEST_AMOUNT = 1e12  # seconds, items per second: far beyond any run


def _count(value: Any) -> bool:
    return type(value) is int and 0 <= value <= LARGEST_COUNT


def _amount(value: Any) -> bool:  # NaN fails both comparisons
    return type(value) in (int, float) and 0 <= value <= LARGEST_AMOUNT


def _score(value: Any) -> bool:  # a PSNR of identical images is infinite
    return type(value) in (int, float)


def _text(value: Any) -> bool:
    return isinstance(value, str)


# The `start` event's field for a run's number of steps: a config's ``steps``, the
# ``total`` of the Jobs tab's progress (runner.Progress).  Event files of runs to resume
# keep it, so it keeps this name.
TOTAL_STEPS = "total_steps"

# What a field the readers compute with must hold, in whichever event it appears (None
# stands for "not known", as a rate before the first step).
FIELD_KINDS: Dict[str, Callable[[Any], bool]] = {
    "step": _count, "total": _count, "done": _count, TOTAL_STEPS: _count,
    "eta_s": _amount, "it_s": _amount, "images_s": _amount,
    "ssim": _score, "psnr": _score, "clip_score": _score,
    "path": _text, "output": _text, "lora": _text, "checkpoint": _text,
}
# The fields without which an event says nothing.
REQUIRED = {"step": ("step",), "synth": ("done", "total"), "eval": ("step",),
            "samples": ("step", "path"), "checkpoint": ("step",)}


class EventLog:
    def __init__(self, path: Union[str, Path]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._end_cut_line()

    def write(self, event: str, **fields: Any) -> None:
        record = {"time": round(time.time(), 3), "event": event}
        record.update(fields)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=str) + "\n")

    def _end_cut_line(self) -> None:
        """A run killed mid-line left its last line open: a resumed run starts on a line
        of its own, so its first event is not glued to the cut one."""
        if not self.path.is_file():
            return
        with open(str(self.path), "rb+") as f:
            size = f.seek(0, 2)
            if size:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    f.write(b"\n")


def start_event(total: int) -> Dict[str, int]:
    """The field of a `start` event that says a run has `total` steps."""
    return {TOTAL_STEPS: total}


def read_events(path: Union[str, Path]) -> List[Dict[str, Any]]:
    """The run's events in order, each with the fields of `REQUIRED` and `FIELD_KINDS`
    as they must be; what is not is left out."""
    path = Path(path)
    if not path.is_file():  # also never a FIFO, whose reading would never end
        return []
    try:
        lines = path.read_bytes().splitlines()
    except OSError:
        return []
    return [event for event in map(_event, lines) if event is not None]


def _event(line: bytes) -> Optional[Dict[str, Any]]:
    try:
        record = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # cut, not UTF-8, nested deep
        return None
    if not isinstance(record, dict) or not _text(record.get("event")):
        return None
    if any(record.get(name) is None for name in REQUIRED.get(record["event"], ())):
        return None
    if any(record.get(name) is not None and not fits(record[name])
           for name, fits in FIELD_KINDS.items()):
        return None
    return record
