"""Stand-in for A1111 1.10.1 ``extensions-builtin/Lora/lora_patches.py``: the forward and ``_load_from_state_dict``
of torch's Linear, Conv2d, GroupNorm, LayerNorm and MultiheadAttention replaced by ``networks``' versions (for the
whole process, as in A1111), keeping the originals; ``undo`` puts them back."""
import torch

import networks
from modules import patches

PATCHED = ("Linear", "Conv2d", "GroupNorm", "LayerNorm", "MultiheadAttention")


class LoraPatches:
    def __init__(self):
        for kind in PATCHED:
            cls = getattr(torch.nn, kind)
            setattr(self, kind + "_forward", patches.patch(__name__, cls, "forward", getattr(networks, "network_%s_forward" % kind)))
            setattr(self, kind + "_load_state_dict", patches.patch(
                __name__, cls, "_load_from_state_dict", getattr(networks, "network_%s_load_state_dict" % kind)))

    def undo(self):
        for kind in PATCHED:
            cls = getattr(torch.nn, kind)
            patches.undo(__name__, cls, "forward")
            patches.undo(__name__, cls, "_load_from_state_dict")
