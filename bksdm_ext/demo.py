"""``bksdm demo``: the whole conversion path on a tiny random SD-v1 model, offline.

It writes a tiny teacher in A1111's single-file layout (U-Net, VAE, CLIP text
encoder, .yaml), converts it to a student, loads both back the way the training
and benchmark code do, and generates one image with each from the same noise.
With random weights the pictures are noise; the point is that every step runs and
what the student removed, and at what cost in parameters, is printed.
"""
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, Union

import torch

from .model.arch import SD_V1, Architecture, TeacherSpec
from .model.checkpoint import Checkpoint
from .model.convert import convert_checkpoint
from .model.detect import config_path, inspect_checkpoint
from .model.generation import make_pipeline
from .model.keymap import UNET_PREFIX, KeyMap
from .model.ldm_config import dump_config, model_config
from .model.loading import TEXT_ACTIVATION, load_text_encoder, load_unet, load_vae
from .model.parts_keymap import TEXT_PREFIX, VAE_PREFIX, clip_to_ldm, vae_to_ldm
from .model.safetensors_io import TensorOut, tensor_bytes, write_safetensors

TINY_SD_V1 = replace(SD_V1, model_channels=32, context_dim=64)
IMAGE_SIZE = 64
STEPS = 10


def write_tiny_teacher(path: Path, teacher: TeacherSpec = TINY_SD_V1) -> None:
    """A random SD-shaped checkpoint small enough to run anywhere, with its yaml."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    arch = Architecture(teacher)
    unet = UNet2DConditionModel(**arch.diffusers_config())
    vae = AutoencoderKL(block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1)
    text = CLIPTextModel(CLIPTextConfig(hidden_size=teacher.context_dim, intermediate_size=128,
                                        num_hidden_layers=2, num_attention_heads=1,
                                        vocab_size=49408, max_position_embeddings=77,
                                        hidden_act=TEXT_ACTIVATION[teacher.family]))
    state = {UNET_PREFIX + k: v for k, v in
             KeyMap(arch).convert_to_ldm(unet.state_dict()).items()}
    state.update({VAE_PREFIX + k: v for k, v in vae_to_ldm(vae.state_dict()).items()})
    state.update({TEXT_PREFIX[teacher.family] + k: v for k, v in
                  clip_to_ldm(text.state_dict(), teacher.family).items()})
    write_safetensors(path, [TensorOut(k, v.dtype, tuple(v.shape), lambda v=v: tensor_bytes(v))
                             for k, v in sorted(state.items())], {})
    config = model_config(arch)
    config["model"]["params"]["first_stage_config"]["params"]["ddconfig"].update(
        ch=32, ch_mult=[1, 1], num_res_blocks=1)
    config_path(path).write_text(dump_config(config), encoding="utf-8")


def prompt_embeddings(text_encoder: Any, prompt: str) -> torch.Tensor:
    """Embeddings for a prompt; the tiny model has no real vocabulary, so words map to
    ids by a fixed hash (a real model uses its CLIP tokenizer)."""
    length = text_encoder.config.max_position_embeddings
    vocab = text_encoder.config.vocab_size
    ids = [vocab - 2] + [sum(map(ord, w)) % (vocab - 2) for w in prompt.split()] + [vocab - 1]
    ids = (ids + [vocab - 1] * length)[:length]
    with torch.no_grad():
        return text_encoder(torch.tensor([ids]))[0]


def generate(path: Path, prompt: str) -> Dict[str, Any]:
    """One image with diffusers' DPM++ 2M Karras from a fixed seed; returns image and timing."""
    ckpt = Checkpoint(path)
    info = inspect_checkpoint(ckpt)
    text_encoder = load_text_encoder(ckpt, info.family)
    pipe = make_pipeline(load_unet(ckpt, info), load_vae(ckpt), info)
    started = time.perf_counter()
    image = pipe(prompt_embeds=prompt_embeddings(text_encoder, prompt),
                 negative_prompt_embeds=prompt_embeddings(text_encoder, ""),
                 height=IMAGE_SIZE, width=IMAGE_SIZE, num_inference_steps=STEPS,
                 generator=torch.Generator().manual_seed(0)).images[0]
    return {"image": image, "seconds": time.perf_counter() - started,
            "unet_params": info.unet_params, "preset": info.preset}


def run_demo(workdir: Union[str, Path], preset: str = "small",
             prompt: str = "a photo of a cat") -> Dict[str, Any]:
    from PIL import Image

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    teacher = workdir / "tiny-sd-v1.safetensors"
    student = workdir / ("tiny-sd-v1-bk-%s.safetensors" % preset)
    write_tiny_teacher(teacher)
    report = convert_checkpoint(teacher, student, preset, dtype="fp32", overwrite=True)
    images = [generate(teacher, prompt), generate(student, prompt)]
    grid = Image.new("RGB", (2 * IMAGE_SIZE, IMAGE_SIZE))
    for i, result in enumerate(images):
        grid.paste(result["image"], (i * IMAGE_SIZE, 0))
    grid_path = workdir / "teacher-vs-student.png"
    grid.save(grid_path)
    return {
        "teacher": str(teacher),
        "student": report.output,
        "student_config": report.config,
        "preset": preset,
        "teacher_unet_params": report.teacher_unet_params,
        "student_unet_params": report.student_unet_params,
        "unet_smaller_by": "%.1f%%" % (100 * (1 - report.student_unet_params
                                              / report.teacher_unet_params)),
        "teacher_seconds_per_image": round(images[0]["seconds"], 3),
        "student_seconds_per_image": round(images[1]["seconds"], 3),
        "images": str(grid_path),
        "note": "random weights: the images are noise; run `bksdm convert` on a real model",
    }
