"""LDM U-Net classes that students' yaml files name as ``unet_config.target``.

A1111 builds the U-Net from the yaml with LDM's own ``UNetModel``; a student without a
mid-stage block needs a subclass whose middle block is empty.  The subclass is created
on first access, so this module imports without A1111's ``ldm`` package and the
extension can import it at script-load time, before any checkpoint is loaded.
"""
from typing import Any

_classes = {}


def _no_middle_block_unet() -> type:
    from ldm.modules.diffusionmodules.openaimodel import TimestepEmbedSequential, UNetModel

    class NoMiddleBlockUNetModel(UNetModel):
        """LDM's UNetModel with the mid-stage block removed (BK-SDM Small, Tiny, mid-removed).

        An empty TimestepEmbedSequential is the identity, so LDM's forward runs unchanged
        and the state dict simply has no ``middle_block.*`` keys.
        """

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.middle_block = TimestepEmbedSequential()

    NoMiddleBlockUNetModel.__module__ = __name__
    return NoMiddleBlockUNetModel


def __getattr__(name: str) -> type:
    if name != "NoMiddleBlockUNetModel":
        raise AttributeError("module %r has no attribute %r" % (__name__, name))
    if name not in _classes:
        _classes[name] = _no_middle_block_unet()
    return _classes[name]
