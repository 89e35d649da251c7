"""The preset choice the Convert and Distill tabs offer: each preset shows its own label
(`Removal.label`, model/arch.py), and a chosen label names its preset again."""
from typing import List, Optional

from ..model.arch import PRESETS
from ..train.distill_config import DEFAULT_PRESET
from . import a1111


def labels() -> List[str]:
    """The presets' labels, in the order the presets are declared."""
    return [removal.label for removal in PRESETS.values()]


def name_of(label: Optional[str]) -> Optional[str]:
    """The preset a label stands for; None for anything else."""
    return next((name for name, removal in PRESETS.items() if removal.label == label), None)


def label_of(name: str) -> str:
    """A preset's label; any other name (custom, teacher) as it is."""
    return PRESETS[name].label if name in PRESETS else name


def default_label() -> str:
    """The label of the preset the WebUI's settings choose (Small unless changed)."""
    chosen = a1111.opt("bksdm_default_preset", DEFAULT_PRESET)
    return label_of(chosen if chosen in PRESETS else DEFAULT_PRESET)
