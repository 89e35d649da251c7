"""An A1111 checkpoint (a BK-SDM student or its teacher) -> a diffusers folder, the inverse
of `diffusers_import`: ``unet/`` with the official BK-SDM config names (``mid_block_type:
null`` for Small and Tiny, docs/facts.md §2), and unless ``unet_only`` a whole
``StableDiffusionPipeline`` folder as nota-ai/bk-sdm-small publishes it (``vae/``,
``text_encoder/``, ``tokenizer/``, ``scheduler/``, ``model_index.json``; no safety checker).

Each part is built with the loaders training uses (`loading`), so the folder holds exactly
the modules BK-SDM's own jobs run.  The folder is written beside its final name and renamed
into place at the end; an existing folder is replaced only when asked.
"""
import contextlib
import json
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Union

import torch

from ..errors import BadInput, DiskError
from .checkpoint import Checkpoint
from .convert import torch_dtype, with_arch_key
from .detect import inspect_checkpoint
from .loading import load_text_encoder, load_unet, load_vae, noise_scheduler
from .staging import check_writable
from .tokenizer import clip_tokenizer

# nota-ai/bk-sdm-*'s model_index.json, less the safety checker this file does not hold.
PIPELINE_CLASSES = {
    "feature_extractor": [None, None],
    "safety_checker": [None, None],
    "scheduler": ["diffusers", "PNDMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


@dataclass
class ExportReport:
    preset: str
    family: str
    parameterization: str
    unet_params: int
    parts: List[str]
    dtype: str
    output: str
    source: str
    seconds: float

    def as_dict(self) -> Dict[str, Any]:
        return with_arch_key(asdict(self))


def export_diffusers(source: Union[str, Path], output: Union[str, Path], dtype: str = "fp16",
                     unet_only: bool = False, overwrite: bool = False,
                     v_prediction: Optional[bool] = None) -> ExportReport:
    started = time.perf_counter()
    source, output = Path(source), Path(output)
    target = torch_dtype(dtype)
    check_writable([output], overwrite)
    ckpt = Checkpoint(source)
    info = inspect_checkpoint(ckpt, v_prediction)
    parts = {"unet": load_unet(ckpt, info)}
    if not unet_only:
        parts["vae"] = load_vae(ckpt)
        parts["text_encoder"] = load_text_encoder(ckpt, info.family)
        parts["tokenizer"] = _tokenizer(info.family)
        parts["scheduler"] = _scheduler(info)
    with _staged_folder(output, overwrite) as folder:
        for name, part in parts.items():
            if isinstance(part, torch.nn.Module) and target is not None:
                part = part.to(target)
            part.save_pretrained(str(folder / name))
        if not unet_only:
            _write_model_index(folder / "model_index.json")
    return ExportReport(
        preset=info.preset, family=info.family, parameterization=info.parameterization,
        unet_params=sum(p.numel() for p in parts["unet"].parameters()), parts=sorted(parts),
        dtype=dtype, output=str(output), source=str(source),
        seconds=round(time.perf_counter() - started, 3))


def _tokenizer(family: str) -> Any:
    """CLIP's tokenizer; SD-v2 folders pad with "!" (id 0), as OpenCLIP does."""
    tokenizer = clip_tokenizer("sd-v1")
    if family == "sd-v2":
        tokenizer.pad_token = "!"
    return tokenizer


def _scheduler(info: Any) -> Any:
    """SD's PNDM inference scheduler on the teacher's own noise schedule and prediction."""
    from diffusers import PNDMScheduler

    return PNDMScheduler.from_config(noise_scheduler(info).config, skip_prk_steps=True,
                                     set_alpha_to_one=False)


def _write_model_index(path: Path) -> None:
    from diffusers import __version__

    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": __version__,
             "requires_safety_checker": False}
    index.update(PIPELINE_CLASSES)
    path.write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


@contextlib.contextmanager
def _staged_folder(output: Path, overwrite: bool) -> Iterator[Path]:
    """A temporary folder beside `output`, renamed to it when the block succeeds."""
    run = "%d.%s" % (os.getpid(), uuid.uuid4().hex[:8])
    temp = output.with_name(".%s.%s.tmp" % (output.name, run))
    old = output.with_name(".%s.%s.old" % (output.name, run))
    try:
        temp.mkdir()
        yield temp
        if output.exists():
            if not overwrite:
                raise BadInput("%s already exists; choose another name or allow overwriting "
                               "(--overwrite)" % output)
            os.rename(output, old)
        os.rename(temp, output)
    except OSError as e:
        problem = DiskError.of(e)
        if problem is None:
            raise
        raise problem.about(output) from None
    finally:
        shutil.rmtree(str(temp), ignore_errors=True)
        shutil.rmtree(str(old), ignore_errors=True)
