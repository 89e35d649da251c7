"""How a model is meant to draw, said where the user draws: a consistency-distilled student
(or an LCM-LoRA) records the sampler, steps and CFG it was distilled for, and at other
settings it makes poor images.  Said when such a checkpoint is loaded and in the infotext
of an image made with such a LoRA at other settings; the user's settings are never changed.
"""
from pathlib import Path
from typing import Any, Dict, Iterable, Optional

from ..errors import BadInput
from ..model.checkpoint import Checkpoint
from ..model.samplers import A1111_NAMES, DrawPoint

LOG_PREFIX = "BK-SDM:"


def for_file(path: Path) -> Optional[DrawPoint]:
    """The recommendation a .safetensors file's header records, if any."""
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    try:
        return DrawPoint.from_metadata(Checkpoint(path).metadata)
    except BadInput:  # an unreadable file: the load check and the lists say so
        return None


def on_model_loaded(sd_model: Any) -> None:
    """``on_model_loaded``: say how the checkpoint just loaded is meant to draw (a toast
    when the dropdown loaded it, the console when it loaded at start-up)."""
    info = getattr(sd_model, "sd_checkpoint_info", None)
    path = Path(getattr(info, "filename", "") or "")
    recommendation = for_file(path)
    if recommendation is None:
        return
    message = ("%s %s was distilled to draw with %s: choose them in Sampling method, Sampling "
               "steps and CFG Scale (BK-SDM changes no setting)."
               % (LOG_PREFIX, path.name, recommendation.describe()))
    import gradio as gr

    gr.Info(message)  # outside a page event (a load at start-up) gradio prints it instead


def lora_notes(p: Any, networks: Iterable[Any]) -> Dict[str, str]:
    """name -> note, for each applied LoRA that records a recommendation the image's
    sampler, steps or CFG do not follow."""
    drawn = (getattr(p, "sampler_name", None), getattr(p, "steps", None),
             getattr(p, "cfg_scale", None))
    notes = {}
    for net in networks:
        metadata = getattr(getattr(net, "network_on_disk", None), "metadata", None) or {}
        recommendation = DrawPoint.from_metadata(metadata)
        if recommendation is None:
            continue
        meant = (A1111_NAMES.get(recommendation.sampler, recommendation.sampler),
                 recommendation.steps, recommendation.cfg_scale)
        if drawn != meant:
            notes[net.name] = "%s — made to draw with %s (this image: %s, %s steps, CFG %g)" % (
                net.name, recommendation.describe(), drawn[0], drawn[1], float(drawn[2] or 0))
    return notes
