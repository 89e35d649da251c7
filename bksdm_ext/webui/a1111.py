"""Every A1111 call the extension makes, in one place, written for 1.6.1 and 1.10.1 alike.

Where the two differ (docs/facts.md §6b) the difference is handled here: options are read with
a default because 1.6 does not store defaults, the loaded model is read without
triggering a load, and callbacks are registered without 1.7+'s ``name=``.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from modules import sd_models, shared

from ..errors import BadInput
from . import forge

# A1111 wraps the text encoder when it hijacks a model; its weights keep their place.
HIJACK_PREFIX = ("cond_stage_model.wrapped.", "cond_stage_model.")


def opt(key: str, default: Any) -> Any:
    return getattr(shared.opts, key, default)


def hide_ui_dir_config() -> bool:
    """A1111's switch for an exposed server: no server paths typed in the page."""
    return bool(getattr(shared.cmd_opts, "hide_ui_dir_config", False))


def restrict_options(keys: List[str]) -> None:
    """Settings that under --hide-ui-dir-config cannot change (as A1111's own output folders)."""
    shared.opts.restricted_opts.update(keys)


def lora_dir() -> Path:
    """Where A1111's built-in Lora extension looks (its ``--lora-dir``, else models/Lora)."""
    from modules import paths_internal

    configured = getattr(shared.cmd_opts, "lora_dir", None)
    return Path(configured) if configured else Path(paths_internal.models_path) / "Lora"


def checkpoint_dir() -> Path:
    """Where new students go: the extension's setting, else --ckpt-dir, else models/Stable-diffusion."""
    configured = opt("bksdm_output_dir", "")
    if configured:
        return Path(configured)
    ckpt_dir = getattr(shared.cmd_opts, "ckpt_dir", None)
    return Path(ckpt_dir) if ckpt_dir else Path(sd_models.model_path)


@dataclass
class LoadedModel:
    title: str
    filename: Path
    parameterization: str  # "eps" or "v"
    model: Any

    @property
    def has_file(self) -> bool:
        return self.filename.is_file()

    def state_dict(self) -> Dict[str, torch.Tensor]:
        """The model's weights under the names A1111 files use (no copies)."""
        old, new = HIJACK_PREFIX
        return {(new + k[len(old):] if k.startswith(old) else k): v
                for k, v in self.model.state_dict().items()}


def loaded_model() -> Optional[LoadedModel]:
    """The model A1111 has loaded now, or None; never starts a load itself.  In Forge, until
    it loads the checkpoint chosen in its dropdown (at the next generation), that choice."""
    model = sd_models.model_data.sd_model
    info = getattr(model, "sd_checkpoint_info", None)
    if forge.is_forge():
        return _forge_choice(model, info)
    if model is None or info is None:
        return None
    return LoadedModel(title=info.title, filename=Path(info.filename),
                       parameterization=getattr(model, "parameterization", "eps"), model=model)


def _forge_choice(model: Any, info: Any) -> Optional[LoadedModel]:
    """Forge's dropdown choice: the loaded model when it is that one, else the chosen file."""
    chosen = forge.selected_checkpoint() or info
    if chosen is None:
        return None
    if info is not None and Path(info.filename) == Path(chosen.filename):
        return LoadedModel(title=info.title, filename=Path(info.filename),
                           parameterization=forge.parameterization(model), model=model)
    return LoadedModel(title=chosen.title, filename=Path(chosen.filename),
                       parameterization=forge.file_parameterization(Path(chosen.filename)),
                       model=None)


def diffusion_model(sd_model: Any) -> torch.nn.Module:
    """The loaded model's U-Net (Forge keeps it elsewhere)."""
    return forge.diffusion_model(sd_model) if forge.is_forge() else sd_model.model.diffusion_model


def refresh_checkpoints() -> None:
    sd_models.list_models()


def checkpoint_infos() -> List[Any]:
    """The dropdown's checkpoints (A1111 CheckpointInfo objects)."""
    return list(sd_models.checkpoints_list.values())


def load_checkpoint(title: str) -> None:
    """Load a listed checkpoint as the dropdown would (the setting itself is left alone)."""
    info = sd_models.checkpoint_aliases.get(title)
    if info is None:
        raise BadInput("%s is no longer in the checkpoint list; press ↻ and choose again" % title)
    sd_models.reload_model_weights(info=info)


def free_vram() -> None:
    """What Settings › Actions › "Unload SD checkpoint to RAM" does: 1.10 moves the model to
    the CPU, 1.6 drops it."""
    sd_models.unload_model_weights()


def restore_vram() -> None:
    """Undo `free_vram` as A1111's own "Load SD checkpoint to VRAM" button does: 1.10 moves
    the kept model back, 1.6 (model dropped, no ``send_model_to_device`` use) loads it again."""
    model = sd_models.model_data.sd_model
    if model is not None and hasattr(sd_models, "send_model_to_device"):
        sd_models.send_model_to_device(model)
    else:
        sd_models.reload_model_weights()


def queue_lock() -> Any:
    """The lock A1111 holds while it generates; model moves wait for it."""
    from modules import call_queue

    return call_queue.queue_lock


def data_dir() -> Path:
    """The extension's folder for its own files (latency history, jobs)."""
    from modules import paths_internal

    folder = Path(paths_internal.data_path) / "bksdm"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def clip_folders() -> List[Path]:
    """Where A1111's interrogator keeps its CLIP file when ``--clip-models-path`` is set
    (otherwise the `clip` package's own cache, which bksdm_ext.scores searches anyway)."""
    folder = getattr(shared.cmd_opts, "clip_models_path", None)
    return [Path(folder)] if folder else []


def webui_version() -> str:
    from modules import launch_utils

    return launch_utils.git_tag()


def checkpoint_title(filename: Path) -> Optional[str]:
    """The dropdown title of a listed file (titles gain a [hash] only once it is loaded)."""
    for info in sd_models.checkpoints_list.values():
        if Path(info.filename) == filename:
            return info.title
    return None


class Progress:
    """Conversion progress shown by A1111's progress bar (it reads ``shared.state``)."""

    def __init__(self, label: str) -> None:
        self.label = label
        shared.state.job_count = 1

    def __call__(self, done: int, total: int) -> None:
        if shared.state.interrupted:
            raise InterruptedError("interrupted")
        shared.state.sampling_steps = total
        shared.state.sampling_step = done
        shared.state.textinfo = "%s: %d/%d tensors" % (self.label, done, total)
