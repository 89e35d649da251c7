"""The training state a checkpoint holds (weights, optimizer, generators), on disk."""
from pathlib import Path
from typing import Any, Dict

import torch


def save_state(state: Dict[str, Any], path: Path) -> None:
    """``torch.save`` through a Python file, so that a full disk is the ``OSError``
    (ENOSPC) the run reports as one, not the zip writer's opaque ``RuntimeError``
    ("unexpected pos ...", which it raises when it has a path to write to, and again while
    closing the file after the ``OSError``)."""
    with open(path, "wb") as f:
        try:
            torch.save(state, f)
        except RuntimeError as e:
            if isinstance(e.__context__, OSError):
                raise e.__context__ from None
            raise
