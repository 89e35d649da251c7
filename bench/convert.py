"""Conversion speed and memory on a full-size SD-v1 checkpoint (random fp16 weights).

    .venv/bin/python bench/convert.py [--workdir DIR] [--keep]

Writes a ~2 GB teacher with the real SD-v1 tensor names and shapes (U-Net, VAE, CLIP
ViT-L text encoder), converts it to every preset, each in a fresh process, and prints
seconds and peak RSS next to the output size.  Goal: <= 20 s and peak RSS <= 1.5x the
output file per conversion on a 2-core machine.
"""
import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's bksdm_ext

from bksdm_ext.model.arch import PRESETS, SD_V1, Architecture  # noqa: E402
from bksdm_ext.model.keymap import UNET_PREFIX, KeyMap  # noqa: E402
from bksdm_ext.model.parts_keymap import TEXT_PREFIX, VAE_PREFIX, clip_to_ldm, vae_to_ldm  # noqa: E402
from bksdm_ext.model.safetensors_io import TensorOut, tensor_bytes, write_safetensors  # noqa: E402

CHILD = """
import json, resource, sys, time
from bksdm_ext.model.convert import convert_checkpoint  # noqa: E402
report = convert_checkpoint(sys.argv[1], sys.argv[2], sys.argv[3], overwrite=True)
print(json.dumps({"seconds": report.seconds,
                  "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def sd_v1_shapes():
    """Every tensor of an SD-v1 A1111 checkpoint, built on the meta device (no memory)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    arch = Architecture(SD_V1)
    with torch.device("meta"):
        unet = UNet2DConditionModel(**arch.diffusers_config()).state_dict()
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512),
                            down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4,
                            layers_per_block=2, latent_channels=4).state_dict()
        text = CLIPTextModel(CLIPTextConfig(  # CLIP ViT-L/14's text tower (the default is 512 wide)
            hidden_size=768, intermediate_size=3072, num_attention_heads=12,
            projection_dim=768)).state_dict()
    shapes = {UNET_PREFIX + k: v.shape for k, v in KeyMap(arch).convert_to_ldm(unet).items()}
    shapes.update({VAE_PREFIX + k: v.shape for k, v in vae_to_ldm(vae).items()})
    shapes.update({TEXT_PREFIX["sd-v1"] + k: v.shape for k, v in clip_to_ldm(text, "sd-v1").items()})
    return shapes


def write_random_teacher(path: Path) -> None:
    generator = torch.Generator().manual_seed(0)

    def random(shape):
        return lambda: tensor_bytes(torch.randn(shape, generator=generator).half() * 0.02)

    tensors = [TensorOut(k, torch.float16, tuple(s), random(s)) for k, s in sd_v1_shapes().items()]
    write_safetensors(path, tensors, {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the 2 GB of files")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bksdm-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    teacher = workdir / "sd-v1-random.safetensors"
    started = time.perf_counter()
    write_random_teacher(teacher)
    print("teacher: %s, %.2f GB, written in %.1f s" % (teacher, teacher.stat().st_size / 1e9,
                                                       time.perf_counter() - started))
    print("%-12s %8s %10s %10s %8s" % ("preset", "seconds", "output GB", "peak GB", "peak/out"))
    try:
        for name in PRESETS:
            out = workdir / ("student-%s.safetensors" % name)
            result = subprocess.run([sys.executable, "-c", CHILD, str(teacher), str(out), name],
                                    check=True, capture_output=True, text=True)
            figures = json.loads(result.stdout.strip().splitlines()[-1])
            size = out.stat().st_size
            print("%-12s %8.1f %10.2f %10.2f %8.2f" % (name, figures["seconds"], size / 1e9,
                                                       figures["peak_rss"] / 1e9,
                                                       figures["peak_rss"] / size))
    finally:
        if not args.keep:
            shutil.rmtree(workdir)


if __name__ == "__main__":
    main()
