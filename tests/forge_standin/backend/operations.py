"""Stand-in for Forge's ``backend/operations.py``: while a model is built, torch's layers are
replaced by ones without weights; the state dict gives them theirs."""
import contextlib
from typing import Iterator

import torch

_REPLACED = ("Linear", "Conv2d", "GroupNorm", "LayerNorm")


def _weights_later(base: type) -> type:
    class Layer(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs):
            kwargs["device"] = "meta"  # nothing allocated: Forge's layers hold no weight yet
            super().__init__(*args, **kwargs)
            self.expected = [n for n in ("weight", "bias") if getattr(self, n) is not None]
            self.weight = None
            self.bias = None

        def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict,
                                  missing_keys, unexpected_keys, error_msgs):
            for name in self.expected:
                if prefix + name in state_dict:
                    setattr(self, name, torch.nn.Parameter(state_dict[prefix + name].clone(),
                                                           requires_grad=False))
                else:
                    missing_keys.append(prefix + name)

    Layer.__name__ = Layer.__qualname__ = base.__name__
    return Layer


class ForgeOperations:
    Linear = _weights_later(torch.nn.Linear)
    Conv2d = _weights_later(torch.nn.Conv2d)
    GroupNorm = _weights_later(torch.nn.GroupNorm)
    LayerNorm = _weights_later(torch.nn.LayerNorm)


@contextlib.contextmanager
def using_forge_operations(operations=None, device=None, dtype=None, manual_cast_enabled=False,
                           bnb_dtype=None) -> Iterator[None]:
    operations = operations or ForgeOperations
    saved = {name: getattr(torch.nn, name) for name in _REPLACED}
    try:
        for name in _REPLACED:
            setattr(torch.nn, name, getattr(operations, name))
        yield
    finally:
        for name, layer in saved.items():
            setattr(torch.nn, name, layer)
