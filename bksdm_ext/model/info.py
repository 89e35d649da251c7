"""``bksdm info``: what a checkpoint is, in the terms the WebUI tab shows too."""
from pathlib import Path
from typing import Any, Dict, Optional, Union

from .checkpoint import Checkpoint
from .blocks import notation
from .detect import config_path, inspect_checkpoint


def describe(path: Union[str, Path], v_prediction: Optional[bool] = None) -> Dict[str, Any]:
    info = inspect_checkpoint(Checkpoint(path), v_prediction)
    yaml_path = config_path(info.path)
    return {
        "file": str(info.path),
        "family": info.family,
        "parameterization": info.parameterization,
        "parameterization_from": info.parameterization_source,
        "model": "BK-SDM %s student" % info.preset if info.is_student else "teacher (full U-Net)",
        "inputs": ("inpainting (latent, mask, masked image: 9 channels)"
                   if info.arch.teacher.inpainting else "text-to-image (latent: 4 channels)"),
        "preset": info.preset,
        "removed": notation(info.arch) or "nothing",
        "unet_params": info.unet_params,
        "text_encoder_params": info.text_encoder_params,
        "vae_params": info.vae_params,
        "unet_dtype": info.unet_dtype,
        "config": str(yaml_path) if yaml_path.is_file() else "none (A1111 will guess)",
        "metadata": {k: v for k, v in info.metadata.items()
                     if k.startswith(("bksdm.", "modelspec."))},
    }
