"""Stable Diffusion WebUI Forge: what differs from A1111 for a BK-SDM student.

Forge keeps A1111's extension system but loads checkpoints its own way (docs/facts.md §12):
``huggingface_guess`` reads the U-Net's layout from the keys (a student without a middle
block is ``transformer_depth_middle = -2``, as in ComfyUI), the ``.yaml`` beside a file is
read only for the prediction type, and ``backend/nn/unet.py``'s
``IntegratedUNet2DConditionModel`` always builds, and always calls, a first middle ResBlock.
Its layers start without weights and the loader loads with ``strict=False``, so a student
gets a phantom middle block whose first step raises ``TypeError: linear(): argument 'weight'
… NoneType``.

The fix wraps the class's constructor: a config that says "no middle block" gets an empty
``TimestepEmbedSequential`` there, which Forge's forward runs as the identity, exactly as the
student was trained and as A1111 runs it (``NoMiddleBlockUNetModel``).  Forge's files are not
touched; every other config builds as before.  The loaded U-Net is
``sd_model.forge_objects.unet.model.diffusion_model`` (A1111: ``sd_model.model.diffusion_model``).
"""
import functools
import importlib.util
import inspect
from pathlib import Path
from typing import Any, Callable, Optional

from ..errors import BadInput
from ..model.checkpoint import Checkpoint
from ..model.detect import inspect_checkpoint

NO_MIDDLE_BLOCK = -2  # huggingface_guess's transformer_depth_middle for a U-Net without one
# Tabs that drive A1111's model objects (``sd_model.model``, ``cond_stage_model``, …), which
# Forge replaces with its own engine: in Forge their page says so in one line.
TABS_NOT_YET = {
    "Latency": "times the U-Net, text encoder and VAE through A1111's model objects, which "
               "Forge replaces; use `bksdm bench` (docs/cli.md) meanwhile",
    "Compare": "loads models and draws through A1111's loader, which Forge replaces; use "
               "`bksdm eval` (docs/cli.md) meanwhile",
}


def is_forge() -> bool:
    """True inside Forge: its ``modules_forge`` package sits beside A1111's ``modules``."""
    try:
        return importlib.util.find_spec("modules_forge") is not None
    except (ImportError, ValueError):
        return False


def skip_missing_middle_block(unet_class: type, empty_block: Callable[[], Any]) -> bool:
    """Make ``unet_class`` build ``empty_block()`` as the middle block of a U-Net whose
    config has none; False when it was already done.  ``functools.wraps`` keeps the
    constructor's signature visible to diffusers' ``from_config``, which reads it."""
    original = unet_class.__init__
    if getattr(original, "bksdm_original", None) is not None:
        return False
    signature = inspect.signature(original)

    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        known = {k: v for k, v in kwargs.items() if k in signature.parameters}
        depth = signature.bind_partial(self, *args, **known).arguments.get("transformer_depth_middle")
        if depth is not None and depth <= NO_MIDDLE_BLOCK:
            self.middle_block = empty_block()

    __init__.bksdm_original = original  # type: ignore[attr-defined]
    unet_class.__init__ = __init__  # type: ignore[misc]
    return True


def install() -> None:
    """In Forge, at script-load time (before its first model load): students build without
    a phantom middle block."""
    from backend.nn import unet

    skip_missing_middle_block(unet.IntegratedUNet2DConditionModel, unet.TimestepEmbedSequential)


def not_yet_line(tab: str) -> str:
    """The one line a tab shows in Forge instead of controls it cannot serve there yet."""
    return "Not available in Forge yet: this tab %s. Convert, Distill, DreamBooth and Jobs " \
           "do not need A1111's model objects." % TABS_NOT_YET[tab]


def diffusion_model(sd_model: Any) -> Any:
    """The loaded U-Net module, LDM-named (``input_blocks``, ``middle_block``, …)."""
    return sd_model.forge_objects.unet.model.diffusion_model


def parameterization(sd_model: Any) -> str:
    """"v" or "eps", as Forge's predictor was set (from the yaml, else its guess)."""
    predictor = sd_model.forge_objects.unet.model.predictor
    return "v" if getattr(predictor, "prediction_type", "") == "v_prediction" else "eps"


def selected_checkpoint() -> Optional[Any]:
    """The checkpoint chosen in Forge's dropdown (its CheckpointInfo), or None.  Forge loads
    it only at the next generation, so until then this, not a loaded model, is what the
    user means by "the loaded model"."""
    from modules import sd_models

    parameters = getattr(sd_models.model_data, "forge_loading_parameters", None) or {}
    return parameters.get("checkpoint_info")


def file_parameterization(filename: Path) -> str:
    """"v" or "eps" for a checkpoint not loaded yet: what its yaml or metadata say."""
    try:
        return inspect_checkpoint(Checkpoint(filename)).parameterization
    except BadInput:  # not an SD-v1/v2 file: the tabs say so when they inspect it
        return "eps"
