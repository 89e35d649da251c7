"""Students must never run with wrong or zeroed weights.

A1111 picks a checkpoint's config from the ``.yaml`` beside it, else guesses, and loads
weights with ``strict=False``, printing nothing: a student without its yaml fails to
load, and one with the wrong yaml runs with zero-filled blocks.  So: when a BK student
has no yaml, give A1111 the right one (and write it back next to the file); after every
load, compare the U-Net A1111 built with the file's and report any difference.
"""
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch

from ..model.checkpoint import Checkpoint
from ..model.detect import ModelInfo, config_path, inspect_checkpoint
from ..errors import BadInput
from ..model.keymap import UNET_PREFIX
from ..model.ldm_config import dump_config, model_config
from ..model.safetensors_io import SafetensorsReader
from ..model.staging import staged
from . import a1111, forge

LOG_PREFIX = "[BK-SDM]"
last_problem: List[str] = []  # the latest load problem, shown by the Convert tab too


def _student(filename: Path, state: Dict[str, torch.Tensor]) -> Optional[ModelInfo]:
    """What the file is, if it is a BK student (from its metadata or its key layout)."""
    try:  # a file we cannot read is A1111's to load or refuse, as without the extension
        metadata = (SafetensorsReader(filename).metadata if filename.suffix == ".safetensors"
                    else {})
        info = inspect_checkpoint(Checkpoint(filename, state=state, metadata=metadata))
    except BadInput:
        return None
    return info if info.is_student else None


def restore_config(filename: Path, state: Dict[str, torch.Tensor]) -> Optional[Path]:
    """Write the missing yaml of a BK student; None when the file is not one."""
    info = _student(filename, state)
    if info is None:
        return None
    target = config_path(filename)
    with staged([target], overwrite=False) as (temp,):
        temp.write_text(dump_config(model_config(info.arch)), encoding="utf-8")
    print("%s %s had no .yaml; wrote %s for its BK-SDM %s U-Net" % (
        LOG_PREFIX, filename.name, target.name, info.preset))
    return target


def patch_config_lookup() -> None:
    """Wrap ``sd_models_config.find_checkpoint_config`` (same name and signature in 1.6.1
    and 1.10.1; ``sd_models.load_model`` looks it up on the module at each load)."""
    from modules import sd_models_config

    original: Callable[..., Any] = sd_models_config.find_checkpoint_config
    if getattr(original, "bksdm_patched", False):
        return

    def find_checkpoint_config(state_dict: Dict[str, torch.Tensor], info: Any) -> Any:
        if info is not None and sd_models_config.find_checkpoint_config_near_filename(info) is None:
            restored = restore_config(Path(info.filename), state_dict)
            if restored is not None:
                return str(restored)
        return original(state_dict, info)

    find_checkpoint_config.bksdm_patched = True  # type: ignore[attr-defined]
    sd_models_config.find_checkpoint_config = find_checkpoint_config


def unet_mismatch(loaded: Dict[str, tuple], expected: Dict[str, tuple]) -> List[str]:
    """How the U-Net A1111 built differs from the file's U-Net (keys relative to the U-Net)."""
    problems = []
    unused = sorted(set(expected) - set(loaded))
    unset = sorted(set(loaded) - set(expected))
    reshaped = sorted(k for k in set(loaded) & set(expected) if loaded[k] != expected[k])
    for keys, what in ((unused, "weights in the file have no place in the loaded U-Net and "
                                "were ignored"),
                       (unset, "U-Net parameters got no weights from the file (A1111 leaves "
                               "them zero or random)"),
                       (reshaped, "weights have another shape than the loaded U-Net expects")):
        if keys:
            problems.append("%d %s, e.g. %s" % (len(keys), what, ", ".join(keys[:3])))
    return problems


def check_loaded_model(sd_model: Any) -> None:
    """``on_model_loaded`` callback: a BK student must have loaded exactly."""
    info = getattr(sd_model, "sd_checkpoint_info", None)
    filename = Path(getattr(info, "filename", "") or "")
    del last_problem[:]
    if filename.suffix != ".safetensors" or not filename.is_file():
        return
    try:
        ckpt = Checkpoint(filename)
        student = inspect_checkpoint(ckpt)
    except BadInput:
        return
    if not student.is_student:
        return
    expected = {k[len(UNET_PREFIX):]: ckpt.shape(k) for k in ckpt.keys() if k.startswith(UNET_PREFIX)}
    loaded = {k: tuple(v.shape) for k, v in a1111.diffusion_model(sd_model).state_dict().items()}
    problems = unet_mismatch(loaded, expected)
    if not problems:
        return
    if forge.is_forge():  # Forge builds the U-Net from the file's keys, not from the yaml
        how, remedy = "in Forge", ("BK-SDM's fix for Forge did not cover it: please report this "
                                   "with your Forge version")
    else:
        how = "with config %s" % (getattr(sd_model, "used_config", None) or "A1111's guess")
        remedy = ("Delete %s and load it again: BK-SDM writes the right config."
                  % config_path(filename).name)
    message = ("%s %s (BK-SDM %s) did not load correctly %s: %s. Its images would be wrong. %s"
               % (LOG_PREFIX, filename.name, student.preset, how, "; ".join(problems), remedy))
    last_problem.append(message)
    print(message)
    _warn_in_ui(message)


def _warn_in_ui(message: str) -> None:
    """A toast in the page when the load came from a UI event; outside one (a load at
    start-up or through the API) gradio 3.41's gr.Warning only warns on the console."""
    import gradio as gr

    gr.Warning(message)
