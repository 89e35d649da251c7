"""The optimizer every trainer here uses: the paper's AdamW, or bitsandbytes' 8-bit AdamW
to save memory (its moments take a quarter of the space), and the update step they share."""
from typing import Any, Iterable, List, Optional

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


def optimizer_step(accelerator: Any, loss: torch.Tensor, params: Iterable[torch.nn.Parameter],
                   optimizer: Any, max_grad_norm: float, scheduler: Optional[Any] = None) -> None:
    """Backpropagate `loss` and update through accelerate: with gradient accumulation the
    clipping (at `max_grad_norm`) and the update happen once the micro-batches are summed
    (accelerate's prepared optimizer skips the others); the gradients are freed after."""
    accelerator.backward(loss)
    if accelerator.sync_gradients:
        accelerator.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
