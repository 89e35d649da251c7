"""Peak memory of one DreamBooth step (batch 1 instance + 1 class image), BK-Small.

    .venv/bin/python bench/dreambooth_mem.py [--full] [--size 64] [--resolution 128]

Three settings of the engine's own step (`bksdm_ext.train.dreambooth.prepare_models`,
`adamw`, `train_step`), each in a fresh process, on random weights:

- reference: U-Net + text encoder, plain AdamW, fp32, no gradient checkpointing;
- options: gradient checkpointing (U-Net and text encoder), fp16 autocast, 8-bit AdamW
  when bitsandbytes is installed, gradients freed after each step;
- lora: the options plus LoRA rank 16 on the attention projections of both.

Latents come from the engine's cache, so no VAE is in memory during a step (the engine
encodes every image once in half precision and frees the VAE before training).  The
issue's targets at 512 px on a GPU: options <= 8 GiB, LoRA <= 5 GiB, against an 11.5 GiB
plain-AdamW anchor.  On CUDA the figure is torch.cuda.max_memory_allocated; without a
GPU it is the growth of the process's peak RSS over its size before the models were
built, at a reduced width (`--size` = U-Net base channels, 320 for the real model) and
resolution: those CPU figures show the ratios of the settings, not GPU gigabytes.
"""
import argparse
import importlib.util
import json
import resource
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Dict

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bksdm_ext.model.arch import PRESETS, SD_V1, Architecture  # noqa: E402
from bksdm_ext.train.dreambooth import prepare_models, train_step  # noqa: E402
from bksdm_ext.train.optim import adamw  # noqa: E402
from bksdm_ext.train.dreambooth_config import DreamBoothConfig  # noqa: E402

SETTINGS = {
    "reference": dict(mixed_precision="no", gradient_checkpointing=False),
    "options": dict(mixed_precision="fp16", gradient_checkpointing=True, use_8bit_adam=True),
    "lora": dict(mixed_precision="fp16", gradient_checkpointing=True, lora=True),
}
STEPS = 2  # the optimizer's state exists from the first step on


def _rss_gib() -> float:
    """This process's resident memory now (Linux)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2 ** 30


def measure(name: str, size: int, resolution: int) -> Dict[str, object]:
    """One setting's peak memory over STEPS training steps, in this process."""
    from accelerate import Accelerator
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    settings = dict(SETTINGS[name])
    note = []
    if settings.get("use_8bit_adam") and importlib.util.find_spec("bitsandbytes") is None:
        settings["use_8bit_adam"] = False
        note.append("no bitsandbytes: plain AdamW")
    if not cuda:
        settings["mixed_precision"] = "no"
        settings["use_8bit_adam"] = False
    hidden = 768 if size == 320 else max(64, 768 * size // 320 // 64 * 64)
    spec = replace(SD_V1, model_channels=size, context_dim=hidden)
    cfg = DreamBoothConfig(model="", instance_dir="", instance_prompt="a sks dog",
                           class_prompt="a dog", out="", **settings)
    rss_before = _rss_gib()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**Architecture(spec, PRESETS["small"]).diffusers_config()).to(device)
    text = CLIPTextModel(CLIPTextConfig(hidden_size=hidden, intermediate_size=4 * hidden,
                                        num_hidden_layers=12, num_attention_heads=hidden // 64,
                                        max_position_embeddings=77)).to(device)
    prepare_models(cfg, unet, text, device)
    params = [p for m in (unet, text) for p in m.parameters() if p.requires_grad]
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, cpu=not cuda)
    optimizer = adamw(params, cfg.learning_rate(), cfg.use_8bit_adam)
    unet, text, optimizer = accelerator.prepare(unet, text, optimizer)
    side = resolution // 8
    for _ in range(STEPS):
        latents = torch.randn(2, 4, side, side, device=device)
        ids = torch.randint(0, 49407, (2, 77), device=device)
        train_step(cfg, accelerator, unet, text, optimizer, params, latents,
                   torch.randint(0, 1000, (2,), device=device), torch.randn_like(latents), ids)
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2 ** 30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20 - rss_before
    return {"setting": name, "peak_gib": round(peak, 3), "trainable": sum(p.numel() for p in params),
            "precision": cfg.mixed_precision, "8bit_adam": cfg.use_8bit_adam, "note": "; ".join(note)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="real BK-Small at 512 px (a GPU)")
    parser.add_argument("--size", type=int, default=64, help="U-Net base channels (320 = real)")
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--one", choices=list(SETTINGS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    size, resolution = (320, 512) if args.full else (args.size, args.resolution)
    if args.one:
        print(json.dumps(measure(args.one, size, resolution)))
        return
    rows = []
    for name in SETTINGS:  # a fresh process each: peaks do not carry over
        out = subprocess.run([sys.executable, __file__, "--one", name, "--size", str(size),
                              "--resolution", str(resolution)], capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit("%s failed:\n%s" % (name, out.stderr[-3000:]))
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    where = ("CUDA %s, torch.cuda.max_memory_allocated" % torch.cuda.get_device_name()
             if torch.cuda.is_available() else
             "CPU (no GPU): peak RSS growth, fp32 only, reduced width - ratios, not GPU GiB")
    print("DreamBooth step memory, BK-Small, U-Net channels %d, %d px, batch 1 + 1 prior; %s"
          % (size, resolution, where))
    reference = rows[0]["peak_gib"]
    print("%-10s %10s %8s %14s %9s %6s  %s" % ("setting", "peak GiB", "vs ref", "trainable",
                                                "precision", "8-bit", "note"))
    for r in rows:
        print("%-10s %10.3f %8.2f %14s %9s %6s  %s" % (
            r["setting"], r["peak_gib"], r["peak_gib"] / reference, format(r["trainable"], ","),
            r["precision"], r["8bit_adam"], r["note"]))


if __name__ == "__main__":
    main()
