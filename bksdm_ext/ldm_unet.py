"""The U-Net class path that students' ``.yaml`` files already name, kept forever.

Every student written so far says ``unet_config.target:
bksdm_ext.ldm_unet.NoMiddleBlockUNetModel``; the class itself lives in
`bksdm_ext.model.ldm_unet`.  Attributes are forwarded lazily because that module builds
its classes only when first asked (A1111's ``ldm`` must be importable by then).
"""
from typing import Any

from .model import ldm_unet as _ldm_unet


def __getattr__(name: str) -> Any:
    return getattr(_ldm_unet, name)
