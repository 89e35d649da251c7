"""A LoRA rewritten in another block layout, as a file: ``bksdm lora-adapt``.

What the WebUI does for a teacher's LoRA when a student is loaded (lora_keymap), written
down for other UIs and for sharing: every module of a kept block under the student's own
LDM name (``lora_unet_input_blocks_3_1_…``, which A1111, ComfyUI and Forge resolve on the
student without help), modules of removed blocks left out, text-encoder modules and
everything else copied as they are, tensors byte for byte.  The metadata says which layout
the names follow (``bksdm.*``), so the WebUI reads the file as the student's.
"""
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

from ..errors import BadInput
from .blocks import preset_name
from .checkpoint import Checkpoint
from .detect import inspect_checkpoint
from .keymap import UNET_PREFIX
from .lora_keymap import LoraFile, LoraPlan, ModelModules, is_lora, layout_metadata, plan_lora
from .safetensors_io import TensorOut, write_safetensors
from .staging import check_writable, staged

# A LoRA's own hashes (A1111 shows them as the file's): the new file has other bytes.
STALE_METADATA = ("sshs_model_hash", "sshs_legacy_hash")


@dataclass
class AdaptReport:
    lora: str
    student: str
    output: str
    model: str  # the student's preset ("teacher" when the model is one)
    family: str
    layout: str  # the layout the LoRA's names followed
    unet_modules: int
    placed: int
    removed_blocks: int
    unplaced: int
    text_modules: int
    note: str
    seconds: float

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)


def read_lora(path: Union[str, Path]) -> Tuple[Checkpoint, LoraFile]:
    """A LoRA file's tensors and what the key map needs of it; BadInput when it is none."""
    ckpt = Checkpoint(path)
    if not is_lora(ckpt.keys()):
        raise BadInput("%s: not a LoRA (it has no lora_unet_*/lora_te_* tensors); give the "
                       "LoRA file A1111 lists in its Lora tab" % ckpt.path)
    shapes = {k: ckpt.shape(k) for k in ckpt.keys()}
    return ckpt, LoraFile(ckpt.path.stem, shapes, ckpt.metadata)


def checkpoint_modules(ckpt: Checkpoint) -> ModelModules:
    """The U-Net modules of an A1111 checkpoint, from its tensor names and shapes."""
    return ModelModules.from_state_keys({k[len(UNET_PREFIX):]: ckpt.shape(k) for k in ckpt.keys()
                                         if k.startswith(UNET_PREFIX)})


def adapt_lora(student: Union[str, Path], lora: Union[str, Path], output: Union[str, Path],
               overwrite: bool = False) -> AdaptReport:
    """Write `output`: `lora` with its U-Net modules under `student`'s block names."""
    started = time.perf_counter()
    output = Path(output)
    if output.suffix != ".safetensors":
        raise BadInput("%s: the output must be a .safetensors file" % output)
    for given in (student, lora):
        if output.resolve() == Path(given).resolve():
            raise BadInput("%s: the output would replace an input; choose another name" % output)
    check_writable([output], overwrite)
    model_ckpt = Checkpoint(student)
    info = inspect_checkpoint(model_ckpt)
    lora_ckpt, lora_file = read_lora(lora)
    plan = plan_lora(lora_file, info.arch, checkpoint_modules(model_ckpt))
    names = plan.new_names()
    tensors = [_renamed(lora_ckpt, key, plan, names) for key in lora_ckpt.keys()]
    metadata = adapted_metadata(lora_file, plan, output)
    with staged([output], overwrite) as (temp,):
        write_safetensors(temp, sorted((t for t in tensors if t is not None),
                                       key=lambda t: t.name), metadata)
    return AdaptReport(
        lora=str(lora_ckpt.path), student=str(model_ckpt.path), output=str(output),
        model=preset_name(plan.model), family=info.family, layout=preset_name(plan.layout),
        unet_modules=plan.unet_modules, placed=len(plan.targets),
        removed_blocks=len(plan.removed), unplaced=len(plan.unplaced),
        text_modules=len(plan.text), note=plan.note() or "",
        seconds=round(time.perf_counter() - started, 3))


def _renamed(ckpt: Checkpoint, key: str, plan: LoraPlan, names: Dict[str, str]
             ) -> Optional[TensorOut]:
    """The tensor under its name in the model's layout; None for modules left out."""
    module, _, part = key.partition(".")
    if module in plan.removed or module in plan.unplaced:
        return None
    name = names[module] + "." + part if module in plan.targets else key
    return TensorOut(name, ckpt.dtype(key), ckpt.shape(key), lambda: ckpt.raw_bytes(key),
                     lambda: ckpt.release(key))


def adapted_metadata(lora: LoraFile, plan: LoraPlan, output: Path) -> Dict[str, str]:
    """The LoRA's own metadata (what A1111's Lora tab shows), less its stale hashes, plus
    the layout its names now follow and where it came from."""
    metadata = {k: v for k, v in lora.metadata.items() if k not in STALE_METADATA}
    if "ss_output_name" in metadata:  # A1111's alias: not the original's, or they collide
        metadata["ss_output_name"] = output.stem
    metadata.update(layout_metadata(plan.model))
    metadata.update({"bksdm.lora_adapted_from": lora.name,
                     "bksdm.lora_removed_modules": str(len(plan.removed))})
    return metadata

