"""The optimizer every trainer here uses: the paper's AdamW, or bitsandbytes' 8-bit AdamW
to save memory (its moments take a quarter of the space)."""
from typing import Any, List

import torch

from ..errors import BadInput


def require_bitsandbytes() -> Any:
    """The bitsandbytes module, or a message saying how to get it (checked before a run starts)."""
    try:
        import bitsandbytes
    except ImportError:
        raise BadInput("--use-8bit-adam needs bitsandbytes: pip install bitsandbytes") from None
    return bitsandbytes


def adamw(params: List[torch.nn.Parameter], lr: float, use_8bit: bool) -> torch.optim.Optimizer:
    kwargs = dict(lr=lr, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    if use_8bit:
        return require_bitsandbytes().optim.AdamW8bit(params, **kwargs)
    # The fused CUDA kernel (torch >= 2.0) updates all parameters in a few launches.
    return torch.optim.AdamW(params, fused=params[0].is_cuda, **kwargs)
