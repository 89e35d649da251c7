"""Teacher-made data: images/s straight into the cache versus with the VAE round trip.

    .venv/bin/python bench/synth.py [--full] [--images 16] [--batch-size 4] [--steps 20]

(a) straight (what `bksdm synth` does): text encoder, the sampler's steps with CFG, the
    latents and embeddings appended to a latent cache;
(b) round trip (what making images first and encoding them as a dataset costs): the
    same, plus VAE decode to pixels and VAE encode back (PNG writing and reading left
    out, so (b) is a lower bound).
Both run the real code path (synth.TeacherSampler, LatentCache) on a random full-size
SD-v1 checkpoint (bench/convert.py's shapes, with CLIP ViT-L's 768-wide text tower).  --full: 512 px, 20 steps, fp16, on a GPU.
Without a GPU: the same full-size shapes at 128 px and 10 steps in fp32 (a CPU needs
minutes per 512 px image); the ratio then holds for that size only.  Prints images/s of
each, the speed-up from skipping the round trip, and the machine.
"""
import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's bksdm_ext
sys.path.insert(0, str(Path(__file__).resolve().parent))

from convert import sd_v1_shapes  # noqa: E402

from bksdm_ext.model.checkpoint import Checkpoint  # noqa: E402
from bksdm_ext.model.detect import inspect_checkpoint  # noqa: E402
from bksdm_ext.train.latent_cache import LatentCache  # noqa: E402
from bksdm_ext.model.loading import load_unet  # noqa: E402
from bksdm_ext.model.safetensors_io import TensorOut, tensor_bytes, write_safetensors  # noqa: E402
from bksdm_ext.train.synth import TeacherSampler  # noqa: E402
from bksdm_ext.train.synth_config import SynthSettings  # noqa: E402


def write_teacher(path: Path) -> None:
    """A random full-size SD-v1 A1111 file, fp16."""
    shapes = sd_v1_shapes()
    generator = torch.Generator().manual_seed(0)

    def random(shape):
        return lambda: tensor_bytes(torch.randn(shape, generator=generator).half() * 0.02)

    write_safetensors(path, [TensorOut(k, torch.float16, tuple(s), random(s))
                             for k, s in sorted(shapes.items())], {})


def measure(teacher: Path, settings: SynthSettings, images: int, workdir: Path,
            device: torch.device) -> dict:
    """Seconds per image of (a) and (b), over `images` images after one warm-up batch."""
    ckpt = Checkpoint(teacher)
    info = inspect_checkpoint(ckpt)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    unet = load_unet(ckpt, info).to(device, dtype).requires_grad_(False).eval()
    sampler = TeacherSampler(ckpt, info, unet, settings, device)
    cache = LatentCache(workdir / "cache", {"bench": "synth"})
    straight = round_trip = 0.0
    batches = [settings.batch_size] * (images // settings.batch_size)
    for number, size in enumerate([settings.batch_size] + batches):
        prompts = ["a random prompt number %d" % (number * 100 + i) for i in range(size)]
        _sync(device)
        started = time.perf_counter()
        latents, embeddings = sampler.latents(prompts, list(range(size)))
        cache.add_batch(latents, torch.zeros_like(latents), embeddings, prompts)
        _sync(device)
        made = time.perf_counter()
        with torch.no_grad():
            pixels = sampler.vae.decode(latents.to(device, dtype)).sample
            sampler.vae.encode(pixels).latent_dist.mean.cpu()
        _sync(device)
        if number:  # the first batch warms up
            straight += made - started
            round_trip += time.perf_counter() - started
    count = sum(batches)
    return {"straight_images_s": count / straight, "round_trip_images_s": count / round_trip,
            "speedup": round_trip / straight, "images": count}


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return "%s, torch %s" % (torch.cuda.get_device_name(device), torch.__version__)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return "CPU %s, %d threads, torch %s" % (cpu, torch.get_num_threads(), torch.__version__)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="512 px, 20 steps (needs a GPU)")
    parser.add_argument("--images", type=int, default=None, help="timed images (16; CPU 2)")
    parser.add_argument("--batch-size", type=int, default=None, help="4 (CPU 1)")
    parser.add_argument("--steps", type=int, default=None, help="20 (CPU 10)")
    parser.add_argument("--resolution", type=int, default=None, help="512 (CPU 128)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    full = args.full and device.type == "cuda"
    settings = SynthSettings(count=0, steps=args.steps or (20 if full else 10),
                             resolution=args.resolution or (512 if full else 128),
                             batch_size=args.batch_size or (4 if full else 1))
    images = args.images or (16 if full else 2)
    workdir = Path(tempfile.mkdtemp(prefix="bksdm-synth-bench-"))
    try:
        teacher = workdir / "sd-v1-random.safetensors"
        write_teacher(teacher)
        figures = measure(teacher, settings, images, workdir, device)
    finally:
        shutil.rmtree(workdir)
    print("machine: %s" % machine(device))
    print("random full-size SD-v1 teacher, %d px, %d steps %s, CFG %.1f, batch %d, %d images%s"
          % (settings.resolution, settings.steps, settings.sampler, settings.cfg_scale,
             settings.batch_size, figures["images"], "" if full else " (reduced: no --full GPU)"))
    for name, key in (("straight to latents", "straight_images_s"),
                      ("with VAE decode+encode", "round_trip_images_s")):
        print("%-24s %10.4f images/s  (%.2f s/image)" % (name, figures[key], 1 / figures[key]))
    print("speed-up from skipping the round trip: %.3fx" % figures["speedup"])
    print(json.dumps(dict(figures, machine=machine(device), resolution=settings.resolution,
                          steps=settings.steps, batch_size=settings.batch_size)))


if __name__ == "__main__":
    main()
