"""The CLIP model the tabs score with when the visitor names none: one already on this machine."""
from typing import Optional

from ..scores.clip import local_model
from . import a1111


def local_clip() -> Optional[str]:
    """A CLIP already on this machine (Hugging Face cache, the interrogator's ViT-L/14)."""
    return local_model(a1111.clip_folders())
