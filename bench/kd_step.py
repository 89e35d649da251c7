"""One KD iteration: the official BK-SDM recipe versus this trainer, same effective batch.

    .venv/bin/python bench/kd_step.py [--full] [--batch 64] [--micro-batch 32] [--steps 5]

(a) the official recipe (Nota-NetsPresso/BK-SDM kd_train_text_to_image.py): diffusers
    U-Nets, fp16 autocast + GradScaler, gradient checkpointing, EMA, and the VAE and text
    encoder run on every batch;
(b) this trainer (`bksdm_ext.train.distill`), run for real on a teacher checkpoint and a dataset
    it has cached: latents and text embeddings come from its cache, bf16 where the GPU
    has it, gradient accumulation of `--micro-batch` up to the same effective batch.
Prints s/iter, samples/s and peak GiB of each and the ratios.  Without a GPU it runs tiny
shapes on the CPU (the figures then only show that both paths run).
"""
import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's bksdm_ext
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from bksdm_ext.model.arch import PRESETS, SD_V1, Architecture  # noqa: E402
from bksdm_ext.demo import TINY_SD_V1, write_tiny_teacher  # noqa: E402
from bksdm_ext.train.distill import distill  # noqa: E402
from bksdm_ext.train.distill_config import DistillConfig  # noqa: E402
from bksdm_ext.jobs.events import read_events  # noqa: E402
from bksdm_ext.train.kd import EMA, FeatureTaps, LossWeights, kd_loss, student_from_teacher  # noqa: E402


def official_iteration_seconds(full: bool, batch: int, steps: int, device: torch.device) -> dict:
    """The official step, re-implemented with its settings, on random weights."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    spec = SD_V1 if full else TINY_SD_V1
    size = 512 if full else 32
    frozen = torch.float16 if device.type == "cuda" else torch.float32  # CPUs lack fp16 kernels
    teacher = UNet2DConditionModel(**Architecture(spec).diffusers_config()).to(device)
    teacher.requires_grad_(False)
    arch = Architecture(spec, PRESETS["small"])
    student = student_from_teacher(teacher, arch).to(device).train()
    teacher.to(frozen)
    student.enable_gradient_checkpointing()
    vae = (AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2) if full else
           AutoencoderKL(block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1))
    vae = vae.to(device, frozen).requires_grad_(False)
    text = CLIPTextModel(CLIPTextConfig() if full else CLIPTextConfig(hidden_size=spec.context_dim,
                                                                       intermediate_size=128,
                                                                       num_hidden_layers=2,
                                                                       num_attention_heads=1))
    text = text.to(device, frozen).requires_grad_(False)
    ema = EMA(student)
    optimizer = torch.optim.AdamW(student.parameters(), lr=5e-5)
    scaler = torch.cuda.amp.GradScaler(enabled=device.type == "cuda")
    noise = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    pairs = arch.feature_kd_pairs()
    taps = FeatureTaps(teacher, [t for t, _ in pairs]), FeatureTaps(student, [s for _, s in pairs])
    images = torch.randn(batch, 3, size, size, device=device, dtype=frozen)
    ids = torch.randint(0, 49407, (batch, 77), device=device)
    # (torch 2.0 refuses an fp16 CPU autocast even when it is disabled, hence bf16 there)
    autocast = torch.autocast(device.type, enabled=device.type == "cuda",
                              dtype=torch.float16 if device.type == "cuda" else torch.bfloat16)

    def iteration() -> None:
        with torch.no_grad():
            latents = vae.encode(images).latent_dist.sample() * 0.18215
            context = text(ids)[0]
        eps = torch.randn_like(latents)
        t = torch.randint(0, 1000, (batch,), device=device)
        noisy = noise.add_noise(latents, eps, t)
        with autocast:
            with torch.no_grad():
                teacher_pred = teacher(noisy, t, context).sample
            student_pred = student(noisy, t, context).sample
            loss, _ = kd_loss(student_pred, teacher_pred, eps, taps[1].take(), taps[0].take(),
                              LossWeights())
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        ema.update(student)

    iteration()  # warm-up
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    for _ in range(steps):
        iteration()
    _sync(device)
    seconds = (time.perf_counter() - started) / steps
    return {"s_iter": seconds, "samples_s": batch / seconds, "peak_gib": _peak(device)}


def trainer_iteration_seconds(full: bool, batch: int, micro_batch: int, steps: int,
                              workdir: Path, device: torch.device, **settings: object) -> dict:
    """This trainer for real: a random teacher file, a random dataset, its own cache;
    `settings` change the run's (``objective="lcm"``: a consistency distillation step)."""
    from PIL import Image

    if full:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from convert import write_random_teacher  # the full-size random SD-v1 file

        teacher = workdir / "sd-v1-random.safetensors"
        write_random_teacher(teacher)
    else:
        teacher = workdir / "tiny.safetensors"
        write_tiny_teacher(teacher)
    size = 512 if full else 32
    data = workdir / "data"
    data.mkdir()
    generator = torch.Generator().manual_seed(0)
    for i in range(batch):
        pixels = (torch.rand(size, size, 3, generator=generator) * 255).byte().numpy()
        Image.fromarray(pixels).save(data / ("%04d.png" % i))
        (data / ("%04d.txt" % i)).write_text("random image number %d" % i)
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    cfg = DistillConfig(teacher=str(teacher), data=str(data), out=str(workdir / "run"), preset="small",
                        steps=steps + 1, batch_size=micro_batch, grad_accum=batch // micro_batch,
                        resolution=size, mixed_precision="bf16" if bf16 else "no",
                        save_every=0, sample_every=0, log_every=1, **settings)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    distill(cfg)
    events = [e for e in read_events(workdir / "run" / "events.jsonl") if e["event"] == "step"]
    span = events[-1]["time"] - events[0]["time"]  # excludes the first (warm-up) step
    seconds = span / (len(events) - 1)
    return {"s_iter": seconds, "samples_s": batch / seconds, "peak_gib": _peak(device)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="SD-v1 shapes at 512 px (needs a GPU)")
    parser.add_argument("--batch", type=int, default=None, help="effective batch (64 on a GPU)")
    parser.add_argument("--micro-batch", type=int, default=None)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    full = args.full and device.type == "cuda"
    batch = args.batch or (64 if full else 8)
    micro = args.micro_batch or (32 if full else 4)
    workdir = Path(tempfile.mkdtemp(prefix="bksdm-kd-"))
    try:
        official = official_iteration_seconds(full, batch, args.steps, device)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        ours = trainer_iteration_seconds(full, batch, micro, args.steps, workdir, device)
    finally:
        shutil.rmtree(workdir)
    print("device: %s, %s shapes, effective batch %d (micro-batch %d for this trainer)"
          % (torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
             "full SD-v1 512 px" if full else "tiny", batch, micro))
    print("%-16s %8s %10s %9s" % ("", "s/iter", "samples/s", "peak GiB"))
    for name, figures in (("official recipe", official), ("this trainer", ours)):
        print("%-16s %8.3f %10.2f %9.2f" % (name, figures["s_iter"], figures["samples_s"],
                                            figures["peak_gib"]))
    print("speed-up: %.2fx samples/s" % (ours["samples_s"] / official["samples_s"]))
    print(json.dumps({"official": official, "trainer": ours}))


if __name__ == "__main__":
    main()
