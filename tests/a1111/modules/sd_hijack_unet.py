"""Stand-in for A1111 1.10.1 ``modules/sd_hijack_unet.py``: ``th``, the ``torch`` that ldm's U-Net module sees once a
model is loaded (1.10.1's ``sd_hijack.apply_optimizations`` sets ``ldm.modules.diffusionmodules.openaimodel.th``;
the stand-in's ``sd_models.load_model`` does it, ``standin_app.reset`` puts ``torch`` back). Its ``cat`` of two
tensors whose last two sizes differ first resizes the first one (nearest) to the second's, so images whose sides
are multiples of 8 but not of 64 go through the U-Net's skip connections. No fp16-upcast patches."""

import torch


class TorchHijackForUnet:
    """``torch`` for ldm's U-Net module, except ``cat``."""

    def __getattr__(self, item):
        return self.cat if item == "cat" else getattr(torch, item)

    @staticmethod
    def cat(tensors, *args, **kwargs):
        if len(tensors) == 2:
            first, second = tensors
            if first.shape[-2:] != second.shape[-2:]:  # an upsampled map next to its skip connection
                tensors = (torch.nn.functional.interpolate(first, size=second.shape[-2:], mode="nearest"), second)
        return torch.cat(tensors, *args, **kwargs)


th = TorchHijackForUnet()


def _apply():
    """(stand-in) what loading a model does to ldm's U-Net module in 1.10.1."""
    import ldm.modules.diffusionmodules.openaimodel as openaimodel

    openaimodel.th = th


def _undo():
    """(stand-in) a fresh WebUI process: ldm's U-Net module sees plain torch."""
    openaimodel = __import__("sys").modules.get("ldm.modules.diffusionmodules.openaimodel")
    if openaimodel is not None:
        openaimodel.th = torch
