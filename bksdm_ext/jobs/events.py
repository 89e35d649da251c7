"""The JSON-lines event file a training run writes and the WebUI and CLI read.

One object per line: ``{"time": ..., "event": "step", "step": 10, "loss": ...}``; a
reader tolerates a half-written last line (the writer may be mid-line).
"""
import json
import time
from pathlib import Path
from typing import Any, Dict, List, Union


class EventLog:
    def __init__(self, path: Union[str, Path]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, event: str, **fields: Any) -> None:
        record = {"time": round(time.time(), 3), "event": event}
        record.update(fields)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=str) + "\n")


def read_events(path: Union[str, Path]) -> List[Dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            break  # the line being written right now
    return events
