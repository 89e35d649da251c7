"""A pickle module for torch.load that rebuilds tensors and plain containers, nothing else.

A .ckpt is a pickle, and a pickle can run any code on load.  Passed as
``torch.load(..., pickle_module=safe_pickle)``, this refuses every global that is not on
the list below (the same list A1111's own safe loader allows), so a crafted file fails
before any of its code runs.
"""
import codecs
import collections
import pickle
from typing import Any, BinaryIO, Dict, Tuple

import numpy
import torch

__all__ = ["Unpickler", "load", "UnpicklingError", "RefusedGlobal"]

UnpicklingError = pickle.UnpicklingError


class RefusedGlobal(UnpicklingError):
    """The file names a global that is not on the list: loading it could run code (as
    opposed to a file that is merely damaged, which fails with other errors)."""


class _Ignored:
    """Stands in for training-time objects (Lightning callbacks) that hold no weights,
    however the file builds them (called with arguments, or given state)."""

    def __new__(cls, *args: Any, **kwargs: Any) -> "_Ignored":
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


def _numpy_multiarray() -> Any:
    import numpy.core.multiarray

    return numpy.core.multiarray


_ALLOWED: Dict[Tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch", "Size"): torch.Size,
    ("numpy", "dtype"): numpy.dtype,
    ("numpy", "ndarray"): numpy.ndarray,
    ("numpy.core.multiarray", "scalar"): _numpy_multiarray().scalar,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_multiarray()._reconstruct,
    ("_codecs", "encode"): codecs.encode,
    ("__builtin__", "set"): set,
    ("builtins", "set"): set,
    ("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint"): _Ignored,
}
_TORCH_DTYPES = {"float32", "float16", "bfloat16", "float64", "int64", "int32", "uint8"}


class Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        found = _ALLOWED.get((module, name))
        if found is not None:
            return found
        if module == "torch" and (name.endswith("Storage") or name in _TORCH_DTYPES):
            return getattr(torch, name)
        raise RefusedGlobal("refused to load global '%s.%s'" % (module, name))


def load(file: BinaryIO, **kwargs: Any) -> Any:
    return Unpickler(file, **kwargs).load()
