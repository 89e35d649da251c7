"""A published BK-SDM diffusers folder (nota-ai/bk-sdm-small's layout: ``unet/``,
``text_encoder/``, ``vae/``, ``model_index.json``) -> one A1111 ``.safetensors`` + ``.yaml``.

The U-Net's preset is recognised from its config and keys with the same spec the
converter uses, so any preset (or the full teacher) imports the same way.
"""
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch

from .arch import SD_V1, SD_V2_512, Architecture, TeacherSpec
from .checkpoint import Checkpoint
from .convert import Progress, student_metadata, torch_dtype, with_arch_key
from .detect import config_path, match_layout
from ..errors import BadInput
from .keymap import UNET_PREFIX, KeyMap
from .ldm_config import dump_config, model_config
from .parts_keymap import TEXT_PREFIX, VAE_PREFIX, clip_to_ldm, vae_to_ldm
from .safetensors_io import TensorOut, tensor_bytes, write_safetensors
from .staging import check_writable, staged

WEIGHT_FILES = (
    "diffusion_pytorch_model.safetensors", "model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors", "model.fp16.safetensors",
    "diffusion_pytorch_model.bin", "pytorch_model.bin",
)


@dataclass
class ImportReport:
    preset: str
    family: str
    parameterization: str
    unet_params: int
    text_encoder_params: int
    vae_params: int
    dtype: str
    output: str
    config: str
    source: str
    seconds: float

    def as_dict(self) -> Dict[str, Any]:
        return with_arch_key(asdict(self))


def import_diffusers(folder: Union[str, Path], output: Union[str, Path], dtype: str = "fp16",
                     overwrite: bool = False, progress: Optional[Progress] = None) -> ImportReport:
    started = time.perf_counter()
    folder, output = Path(folder), Path(output)
    if not (folder / "model_index.json").is_file():
        raise BadInput("%s: not a diffusers model folder (no model_index.json)" % folder)
    if output.suffix != ".safetensors":
        raise BadInput("%s: the output must be a .safetensors file" % output)
    cast = torch_dtype(dtype)
    targets = [output, config_path(output)]
    check_writable(targets, overwrite)

    unet = _weights(folder / "unet")
    arch = _architecture(folder, unet)
    ldm_unet = KeyMap(arch).convert_to_ldm(unet)
    text = clip_to_ldm(_weights(folder / "text_encoder"), arch.teacher.family)
    vae = vae_to_ldm(_weights(folder / "vae"))
    state = {UNET_PREFIX + k: v for k, v in ldm_unet.items()}
    state.update({TEXT_PREFIX[arch.teacher.family] + k: v for k, v in text.items()})
    state.update({VAE_PREFIX + k: v for k, v in vae.items()})
    tensors = [_out(name, tensor, cast) for name, tensor in sorted(state.items())]
    metadata = student_metadata(arch, output.stem, {"bksdm.source": folder.name})
    with staged(targets, overwrite) as (weights_tmp, config_tmp):
        write_safetensors(weights_tmp, tensors, metadata, progress)
        config_tmp.write_text(dump_config(model_config(arch)), encoding="utf-8")
    return ImportReport(
        preset=arch.removal.name,
        family=arch.teacher.family,
        parameterization=arch.teacher.parameterization,
        unet_params=sum(t.numel() for t in ldm_unet.values()),
        text_encoder_params=sum(t.numel() for t in text.values()),
        vae_params=sum(t.numel() for t in vae.values()),
        dtype=dtype,
        output=str(output),
        config=str(targets[1]),
        source=str(folder),
        seconds=round(time.perf_counter() - started, 3),
    )


def _weights(component: Path) -> Dict[str, torch.Tensor]:
    for name in WEIGHT_FILES:
        path = component / name
        if path.is_file():
            ckpt = Checkpoint(path)
            return {k: ckpt.tensor(k) for k in ckpt.keys()}
    raise BadInput("%s: no weights file (expected one of %s)" % (component, ", ".join(WEIGHT_FILES)))


def _read_json(path: Path) -> Dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInput("%s: missing; the diffusers folder is incomplete" % path) from None
    except ValueError as e:
        raise BadInput("%s: not valid JSON (%s)" % (path, e)) from None


def _architecture(folder: Path, unet: Dict[str, torch.Tensor]) -> Architecture:
    """The spec whose diffusers layout is this U-Net's, from its config.json and keys."""
    config = _read_json(folder / "unet" / "config.json")
    if config.get("in_channels", 4) != 4:
        raise BadInput("%s: its U-Net has %s input channels (inpainting or pix2pix); BK-SDM "
                       "supports text-to-image U-Nets" % (folder, config["in_channels"]))
    channels: List[int] = config["block_out_channels"]
    heads = config.get("attention_head_dim", 8)
    first_heads = heads[0] if isinstance(heads, list) else heads
    linear = bool(config.get("use_linear_projection", False))
    base = SD_V2_512 if linear else SD_V1
    head_counts = dict(num_heads=0, head_channels=channels[0] // first_heads) if linear else \
        dict(num_heads=first_heads, head_channels=0)
    observed: TeacherSpec = replace(
        base,
        model_channels=channels[0],
        channel_mult=tuple(c // channels[0] for c in channels),
        attention_levels=tuple(t.startswith("CrossAttn") for t in config["down_block_types"]),
        context_dim=config["cross_attention_dim"],
        linear_projection=linear,
        sample_size=config.get("sample_size", 64),
        parameterization=_parameterization(folder),
        **head_counts,
    )
    found = match_layout(observed, config["layers_per_block"], unet, "diffusers")
    if found is None:
        raise BadInput("%s: its U-Net is neither an SD-v1/v2 teacher nor a known BK-SDM student"
                       % folder)
    return Architecture(*found)


def _parameterization(folder: Path) -> str:
    scheduler = folder / "scheduler" / "scheduler_config.json"
    if not scheduler.is_file():
        return "eps"
    return "v" if _read_json(scheduler).get("prediction_type") == "v_prediction" else "eps"


def _out(name: str, tensor: torch.Tensor, dtype: Optional[torch.dtype]) -> TensorOut:
    target = dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype
    return TensorOut(name, target, tuple(tensor.shape), lambda: tensor_bytes(tensor.to(target)))
