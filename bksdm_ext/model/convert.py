"""Teacher checkpoint -> BK-SDM student checkpoint, tensor by tensor.

No model is built: the student's U-Net tensors are the teacher tensors the weight map
names, renamed, cast and streamed to disk; everything else (VAE, text encoder) is
copied byte for byte.  Peak memory stays near one tensor plus what the OS caches.
"""
import math
import datetime
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

import torch

from .. import __version__
from .arch import PRESETS, V_PREDICTION, Architecture, Removal
from .blocks import (CUSTOM, PRESETS_IN_NOTATION, REMOVE_HELP, notation, preset_name,
                     which_student)
from .checkpoint import Checkpoint
from .detect import REMOVAL_KEY, config_path, inspect_checkpoint
from ..errors import BadInput, ensure_room
from .hashing import a1111_sha256
from .keymap import UNET_PREFIX, student_sources
from .ldm_config import dump_config, model_config
from .safetensors_io import TensorOut, data_size, tensor_bytes, write_safetensors
from .staging import check_writable, staged
from ..settings import setting

DTYPES: Dict[str, Optional[torch.dtype]] = {
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp32": torch.float32,
    "keep": None,
}
MODELSPEC_ARCH = {("sd-v1", "eps"): "stable-diffusion-v1", ("sd-v1", "v"): "stable-diffusion-v1",
                  ("sd-v2", "eps"): "stable-diffusion-v2-512", ("sd-v2", "v"): "stable-diffusion-v2-768-v"}
# Keys A1111 never loads into an SD-v1/v2 model (use_ema is False in its configs); they
# hold a teacher-shaped copy of the U-Net that would be wrong in a student.
DROPPED_PREFIXES = ("model_ema.",)

Progress = Callable[[int, int], None]


@dataclass
class ConversionSettings:
    """Which student `bksdm convert` writes and how; ``dtype`` is also import-diffusers'
    and transplant's."""

    preset: Optional[str] = setting(None, "a preset: %s (--remove adds to it)"
                                    % PRESETS_IN_NOTATION, flag="--arch", choices=list(PRESETS),
                                    label="Preset")
    remove: Optional[str] = setting(None, REMOVE_HELP, metavar="UNITS")
    dtype: str = setting("fp16", "precision of the written U-Net (default {default})",
                         choices=list(DTYPES), label="U-Net precision")
    v_prediction: Optional[bool] = V_PREDICTION.field(None)


def torch_dtype(name: str) -> Optional[torch.dtype]:
    """The dtype a written U-Net gets (None: keep the source's); BadInput for a name
    that is none of DTYPES."""
    if name not in DTYPES:
        raise BadInput("unknown dtype '%s'; choose one of: %s" % (name, ", ".join(DTYPES)))
    return DTYPES[name]


def with_arch_key(report: Dict[str, Any]) -> Dict[str, Any]:
    """A report as JSON: ``preset`` also under ``arch``, the key scripts read before the
    preset had its own name."""
    return dict(report, arch=report["preset"])


@dataclass
class ConversionReport:
    preset: str
    family: str
    parameterization: str
    parameterization_source: str
    teacher_unet_params: int
    student_unet_params: int
    dtype: str
    output: str
    config: str
    teacher: str
    teacher_sha256: str
    dropped_tensors: int
    seconds: float

    def as_dict(self) -> Dict[str, Any]:
        return with_arch_key(asdict(self))


def student_metadata(arch: Architecture, title: str, origin: Dict[str, str]) -> Dict[str, str]:
    """``modelspec.*`` for model browsers, ``bksdm.*`` for this extension's own checks;
    `origin` adds the ``bksdm.*`` keys that say where the weights came from."""
    t = arch.teacher
    metadata = {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": "%s%s-bk-%s" % (MODELSPEC_ARCH[t.family, t.parameterization],
                                                  "-inpainting" if t.inpainting else "",
                                                  preset_name(arch)),
        "modelspec.title": title,
        "modelspec.date": datetime.date.today().isoformat(),
        "modelspec.prediction_type": "v" if t.parameterization == "v" else "epsilon",
        "bksdm.preset": preset_name(arch),
        "bksdm.family": t.family,
        "bksdm.parameterization": t.parameterization,
        # What the weights cannot tell (head counts), for rebuilding a lost yaml.
        "bksdm.unet_config": json.dumps(arch.ldm_unet_params(), sort_keys=True),
        "bksdm.version": __version__,
    }
    if preset_name(arch) == CUSTOM:
        # Which teacher layers were kept: the weights only tell how many.
        metadata[REMOVAL_KEY] = notation(arch)
    metadata.update(origin)
    return metadata


def convert_checkpoint(
    source: Union[str, Path, Checkpoint],
    output: Union[str, Path],
    preset: Union[None, str, Removal],
    dtype: str = "fp16",
    v_prediction: Optional[bool] = None,
    overwrite: bool = False,
    progress: Optional[Progress] = None,
    remove: Optional[str] = None,
) -> ConversionReport:
    """Write `output` (.safetensors) and its .yaml: the `preset` student of `source`
    (a preset name, any `Removal` for a custom student, or None: the teacher), with the
    units `remove` (block notation, see `blocks`) taken out too.  `source` is a file, or a
    `Checkpoint` (for weights that exist only in memory)."""
    started = time.perf_counter()
    ckpt = source if isinstance(source, Checkpoint) else None
    source, output = (ckpt.path if ckpt else Path(source)), Path(output)
    cast = torch_dtype(dtype)
    if output.suffix != ".safetensors":
        raise BadInput("%s: the output must be a .safetensors file" % output)
    targets = [output, config_path(output)]
    if output.resolve() == source.resolve() or targets[1].resolve() == config_path(source).resolve():
        raise BadInput("%s: the output would replace the source checkpoint or its yaml; "
                       "choose another name" % output)
    check_writable(targets, overwrite)
    ckpt = ckpt or Checkpoint(source)
    info = inspect_checkpoint(ckpt, v_prediction)
    if info.is_student:
        raise BadInput("%s is already a BK-SDM '%s' student; convert its teacher instead"
                       % (source, info.preset))
    arch = which_student(info.arch.teacher, preset, remove)
    if arch.is_teacher:
        raise BadInput("%s: that removes nothing; name blocks with --remove or pick a preset"
                       % source)
    unet = [_copy(ckpt, teacher, name, cast) for name, teacher in unet_sources(ckpt, arch).items()]
    tensors = teacher_parts(ckpt) + unet
    ensure_room(output, data_size(tensors))  # before hashing a multi-GB teacher
    metadata = write_student(output, arch, tensors, info.config, teacher_origin(ckpt),
                             overwrite, progress)
    return ConversionReport(
        preset=preset_name(arch),
        family=info.family,
        parameterization=info.parameterization,
        parameterization_source=info.parameterization_source,
        teacher_unet_params=info.unet_params,
        student_unet_params=sum(math.prod(t.shape) for t in unet),
        dtype=str(unet[0].dtype).replace("torch.", ""),
        output=str(output),
        config=str(targets[1]),
        teacher=str(source),
        teacher_sha256=metadata.get("bksdm.teacher_sha256", ""),
        dropped_tensors=sum(k.startswith(DROPPED_PREFIXES) for k in ckpt.keys()),
        seconds=round(time.perf_counter() - started, 3),
    )


def unet_sources(ckpt: Checkpoint, arch: Architecture) -> Dict[str, str]:
    """Student U-Net key -> the teacher key in `ckpt` it is copied from (full names)."""
    unet_keys = [k[len(UNET_PREFIX):] for k in ckpt.keys() if k.startswith(UNET_PREFIX)]
    try:
        sources = student_sources(arch, unet_keys)
    except KeyError as e:
        raise BadInput("%s: %s" % (ckpt.path, e.args[0])) from None
    return {UNET_PREFIX + s: UNET_PREFIX + t for s, t in sources.items()}


def student_unet_params(ckpt: Checkpoint, arch: Architecture) -> int:
    """How many parameters the `arch` student of this teacher will have."""
    return sum(math.prod(ckpt.shape(t)) for t in unet_sources(ckpt, arch).values())


def teacher_parts(ckpt: Checkpoint) -> List[TensorOut]:
    """Everything but the U-Net, copied unchanged (minus the EMA copy A1111 never loads)."""
    return [_copy(ckpt, k, k, None) for k in ckpt.keys()
            if not k.startswith(UNET_PREFIX) and not k.startswith(DROPPED_PREFIXES)]


def teacher_origin(ckpt: Checkpoint) -> Dict[str, str]:
    """The ``bksdm.*`` metadata that names the teacher a student came from."""
    origin = {"bksdm.teacher": ckpt.path.name}
    if not ckpt.in_memory:
        origin["bksdm.teacher_sha256"] = a1111_sha256(ckpt.path)
    return origin


def write_student(output: Path, arch: Architecture, tensors: List[TensorOut],
                  teacher_config: Optional[Dict[str, Any]], origin: Dict[str, str],
                  overwrite: bool = False, progress: Optional[Progress] = None) -> Dict[str, str]:
    """Write a student's .safetensors and .yaml atomically; returns the metadata written."""
    metadata = student_metadata(arch, output.stem, origin)
    with staged([output, config_path(output)], overwrite) as (weights_tmp, config_tmp):
        write_safetensors(weights_tmp, sorted(tensors, key=lambda t: t.name), metadata, progress)
        config_tmp.write_text(dump_config(model_config(arch, teacher_config)), encoding="utf-8")
    return metadata


def _copy(ckpt: Checkpoint, key: str, name: str, dtype: Optional[torch.dtype]) -> TensorOut:
    """The tensor `key` written as `name`, cast to `dtype` when it is floating point."""
    source_dtype = ckpt.dtype(key)
    if dtype is None or dtype == source_dtype or not source_dtype.is_floating_point:
        return TensorOut(name, source_dtype, ckpt.shape(key), lambda: ckpt.raw_bytes(key),
                         lambda: ckpt.release(key))

    def cast() -> memoryview:
        data = tensor_bytes(ckpt.tensor(key).to(dtype))
        ckpt.release(key)
        return data

    return TensorOut(name, dtype, ckpt.shape(key), cast)

