"""A1111 single-file checkpoints, read the way A1111 reads them, without loading a model.

`.safetensors` files are memory-mapped; `.ckpt` files go through `safe_pickle`.  Keys
are normalised as A1111 normalises them before loading (nested ``state_dict``, old
CLIP key names, SD2-turbo's ``conditioner`` prefix), so everything downstream sees the
names A1111's model will get.
"""
import math
import zipfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import torch

from . import safe_pickle
from ..errors import BadInput
from .safetensors_io import SafetensorsReader, tensor_bytes

CKPT_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")

# A1111's sd_models.checkpoint_dict_replacements_sd1 (1.6.1 and 1.10.1 alike).
SD1_REPLACEMENTS = {
    "cond_stage_model.transformer.embeddings.": "cond_stage_model.transformer.text_model.embeddings.",
    "cond_stage_model.transformer.encoder.": "cond_stage_model.transformer.text_model.encoder.",
    "cond_stage_model.transformer.final_layer_norm.":
        "cond_stage_model.transformer.text_model.final_layer_norm.",
}
SD2_TURBO_REPLACEMENTS = {"conditioner.embedders.0.model.": "cond_stage_model.model."}
SD2_TURBO_PROBE = "conditioner.embedders.0.model.ln_final.weight"


class Checkpoint:
    """Tensor names, shapes and data of one checkpoint file, or of weights in memory."""

    def __init__(self, path: Union[str, Path], state: Optional[Dict[str, torch.Tensor]] = None,
                 metadata: Optional[Dict[str, str]] = None) -> None:
        """Open the file at `path`; or, given `state`, stand for weights already in memory
        (a model the WebUI has loaded) under that name."""
        self.path = Path(path)
        self.in_memory = state is not None
        self._file: Optional[SafetensorsReader] = None
        self._tensors: Dict[str, torch.Tensor] = {}
        suffix = self.path.suffix.lower()
        if state is not None:
            self._tensors = dict(state)
            self.metadata = dict(metadata or {})
            raw_keys = list(self._tensors)
            shapes = {k: tuple(t.shape) for k, t in self._tensors.items()}
        elif not self.path.is_file():
            raise BadInput(_not_a_file(self.path))
        elif suffix == ".safetensors":
            self._file = SafetensorsReader(self.path)
            self.metadata = dict(self._file.metadata)
            raw_keys = self._file.keys()
            shapes = {k: e.shape for k, e in self._file.entries.items()}
        elif suffix in CKPT_SUFFIXES:
            self._tensors = _load_pickled(self.path)
            self.metadata = {}
            raw_keys = list(self._tensors)
            shapes = {k: tuple(t.shape) for k, t in self._tensors.items()}
        else:
            raise BadInput("%s: not a checkpoint (expected .safetensors or .ckpt)" % self.path)
        self._raw_name = _normalised_names(raw_keys, shapes)

    def keys(self) -> List[str]:
        return list(self._raw_name)

    def __contains__(self, key: str) -> bool:
        return key in self._raw_name

    def shape(self, key: str) -> Tuple[int, ...]:
        raw = self._raw_name[key]
        if self._file is not None:
            return self._file.entries[raw].shape
        return tuple(self._tensors[raw].shape)

    def dtype(self, key: str) -> torch.dtype:
        raw = self._raw_name[key]
        if self._file is not None:
            return self._file.entries[raw].dtype
        return self._tensors[raw].dtype

    def tensor(self, key: str) -> torch.Tensor:
        """The tensor; for .safetensors a view of the mapped file (clone it to keep it)."""
        raw = self._raw_name[key]
        if self._file is not None:
            return self._file.tensor(raw)
        return self._tensors[raw]

    def raw_bytes(self, key: str) -> memoryview:
        raw = self._raw_name[key]
        if self._file is not None:
            return self._file.raw(raw)
        return tensor_bytes(self._tensors[raw])

    def release(self, key: str) -> None:
        """Done with this tensor for now: its pages may leave resident memory."""
        if self._file is not None:
            self._file.release(self._raw_name[key])

    def numel(self, prefix: str = "") -> int:
        """Parameters in all tensors whose key starts with `prefix`."""
        total = 0
        for key in self._raw_name:
            if key.startswith(prefix):
                total += math.prod(self.shape(key))
        return total


def _not_a_file(path: Path) -> str:
    """Why `path`, which is no regular file, cannot be a checkpoint."""
    if not path.exists():
        return "%s: no such file" % path
    if path.is_dir():
        if (path / "model_index.json").is_file():
            return ("%s: a diffusers folder, not a checkpoint file; make one with "
                    "`bksdm import-diffusers %s --out NAME.safetensors`" % (path, path))
        return "%s: a folder, not a checkpoint file; give the .safetensors or .ckpt file" % path
    return ("%s: not a regular file (a named pipe, socket or device); give a .safetensors or "
            ".ckpt file" % path)


def _normalised_names(raw_keys: List[str], shapes: Dict[str, Tuple[int, ...]]) -> Dict[str, str]:
    """A1111's key normalisation (sd_models.get_state_dict_from_checkpoint): new name -> stored name."""
    turbo = SD2_TURBO_PROBE in shapes and shapes[SD2_TURBO_PROBE][0] == 1024
    replacements = SD2_TURBO_REPLACEMENTS if turbo else SD1_REPLACEMENTS
    names = {}
    for raw in raw_keys:
        key = raw
        for old, new in replacements.items():
            if key.startswith(old):
                key = new + key[len(old):]
        names[key] = raw
    return names


def _load_pickled(path: Path) -> Dict[str, torch.Tensor]:
    try:
        loaded = torch.load(str(path), map_location="cpu", pickle_module=safe_pickle,
                            weights_only=False)
    except safe_pickle.RefusedGlobal as e:
        raise BadInput(
            "%s: refused: the file holds more than weights (%s), and loading it could run code. "
            "Use a .safetensors version of this model" % (path, e)
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile) as e:
        raise BadInput("%s: cannot be read as a checkpoint (%s); it may be truncated: download or "
                       "copy it again" % (path, _first_line(e))) from None
    except Exception as e:  # random bytes fail the unpickler in many ways
        raise BadInput("%s: not a checkpoint (damaged or not a PyTorch file; %s); download or "
                       "copy it again" % (path, _first_line(e))) from None
    if not isinstance(loaded, dict):
        raise BadInput("%s: holds a %s, not a checkpoint's dictionary of weights"
                       % (path, type(loaded).__name__))
    state = loaded.pop("state_dict", loaded)
    if not isinstance(state, dict):
        raise BadInput("%s: its 'state_dict' is not a dictionary of weights" % path)
    state.pop("state_dict", None)
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _first_line(error: Exception) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__
