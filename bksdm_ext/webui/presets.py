"""The preset choice the Convert and Distill tabs offer: each preset's own label
(model/arch.py) <-> its name."""
from ..model.arch import PRESETS
from ..train.distill_config import DEFAULT_PRESET
from . import a1111

PRESET_LABELS = {removal.label: name for name, removal in PRESETS.items()}
LABEL_OF = {name: label for label, name in PRESET_LABELS.items()}


def default_label() -> str:
    """The label of the preset the WebUI's settings choose (Small unless changed)."""
    return LABEL_OF.get(a1111.opt("bksdm_default_preset", DEFAULT_PRESET), LABEL_OF[DEFAULT_PRESET])
