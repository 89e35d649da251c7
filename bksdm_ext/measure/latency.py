"""Generation latency of a teacher and its students, measured with diffusers.

What the paper reports for Jetson AGX Orin is the end-to-end time of one image (20
steps of DPM++ 2M Karras, 512², CFG 7, batch 1).  Besides that, each part is timed on
its own (U-Net per step with its CFG batch, VAE decode, text encoder), so a speed-up
can be traced to the U-Net where BK-SDM removes blocks.  Medians over timed runs after
warm-up, with the spread.  Each model may be timed at several draw points (sampler and
steps): a teacher at 25 steps of Euler a beside a consistency-distilled student at 4 of
LCM, where each is used.
"""
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import torch

from ..model.checkpoint import Checkpoint
from ..model.detect import inspect_checkpoint
from ..model.generation import make_pipeline
from ..model.loading import load_text_encoder, load_unet, load_vae
from ..model.samplers import DEFAULT_SAMPLER, SAMPLERS, DrawPoint
from ..settings import GUIDANCE, IMAGE_SIZE, SAMPLER_STEPS, SEED, Range, check_ranges, setting

# The paper's Jetson AGX Orin 32GB figures (A1111 1.6.1, 20 steps DPM++ 2M Karras, 512², CFG 7).
PAPER_ORIN_SECONDS = {"SDM-v1.5": 4.9, "BK-SDM-Base-2M": 3.4}


@dataclass
class LatencySettings:
    steps: int = setting(20, range=SAMPLER_STEPS, label="Steps")
    sampler: str = setting(DEFAULT_SAMPLER, choices=list(SAMPLERS))
    size: int = setting(512, range=IMAGE_SIZE, label="Width = height")
    cfg_scale: float = setting(7.0, range=GUIDANCE, label="CFG scale")
    batch: int = 1
    # As many as A1111's batch count allows in one click.
    runs: int = setting(5, range=Range(1, 100, "timed runs"), label="Timed runs")
    warmup: int = setting(1, range=Range(0, 100, "warm-up runs"), label="Warm-up runs")
    seed: int = setting(0, range=SEED, label="Seed")
    prompt: str = "a photo of an astronaut riding a horse on mars"

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass
class Spread:
    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> "Spread":
        return cls(statistics.median(values), min(values), max(values))


@dataclass
class LatencyResult:
    model: str
    preset: str
    unet_params: int
    device: str
    seconds_per_image: Spread
    unet_ms_per_step: Spread
    vae_decode_ms: Spread
    text_encoder_ms: Spread
    peak_memory_gib: Optional[float]
    speedup: float = 1.0
    settings: Dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)


class Stopwatch:
    """Times every call of a module (forward hooks) or function, synchronising the GPU."""

    def __init__(self, device: torch.device, module: Optional[torch.nn.Module] = None) -> None:
        self.device = device
        self.calls: List[float] = []
        self._started = 0.0
        self._handles = [] if module is None else [module.register_forward_pre_hook(self.start),
                                                   module.register_forward_hook(self.stop)]

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def start(self, *args: Any) -> None:
        self._sync()
        self._started = time.perf_counter()

    def stop(self, *args: Any) -> None:
        self._sync()
        self.calls.append(time.perf_counter() - self._started)

    def wrap(self, function: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            self.start()
            result = function(*args, **kwargs)
            self.stop()
            return result
        return timed

    def take(self) -> List[float]:
        calls, self.calls = self.calls, []
        return calls

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def load_pipeline(path: Path, sampler: str, device: torch.device) -> Any:
    """A diffusers pipeline of an A1111 checkpoint on `device` (fp16 on a GPU), with what
    the file is."""
    from ..model.tokenizer import clip_tokenizer

    ckpt = Checkpoint(path)
    info = inspect_checkpoint(ckpt)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    pipe = make_pipeline(load_unet(ckpt, info), load_vae(ckpt), info, sampler,
                         text_encoder=load_text_encoder(ckpt, info.family),
                         tokenizer=clip_tokenizer(info.family))
    return pipe.to(device, dtype), info


def _run(pipe: Any, settings: LatencySettings) -> None:
    pipe(settings.prompt, height=settings.size, width=settings.size,
         num_inference_steps=settings.steps, guidance_scale=settings.cfg_scale,
         num_images_per_prompt=settings.batch,
         generator=torch.Generator().manual_seed(settings.seed))


def measure(path: Union[str, Path], settings: LatencySettings,
            device: Optional[torch.device] = None) -> LatencyResult:
    """Warm up, then time `settings.runs` generations of one model with diffusers."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    path = Path(path)
    pipe, info = load_pipeline(path, settings.sampler, device)
    timings = time_generation(lambda: _run(pipe, settings), pipe.unet, pipe.text_encoder,
                              pipe.vae, settings, device)
    return LatencyResult(model=path.name, preset=info.preset, unet_params=info.unet_params,
                         device=device_name(device), settings=asdict(settings), **timings)


def time_generation(generate: Callable[[], None], unet: torch.nn.Module,
                    text_encoder: torch.nn.Module, vae: Any, settings: LatencySettings,
                    device: torch.device) -> Dict[str, Any]:
    """Time `generate` end to end and its parts, for diffusers and A1111 alike: the U-Net
    and text encoder by forward hooks, the VAE by its ``decode`` (what pipelines call)."""
    unet_watch, text_watch, decode = (Stopwatch(device, unet), Stopwatch(device, text_encoder),
                                      Stopwatch(device))
    original_decode = vae.decode
    vae.decode = decode.wrap(original_decode)
    try:
        for _ in range(settings.warmup):
            generate()
        for watch in (unet_watch, text_watch, decode):
            watch.take()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        totals, unet_ms, vae_ms, text_ms = [], [], [], []
        for _ in range(settings.runs):
            started = time.perf_counter()
            generate()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            totals.append((time.perf_counter() - started) / settings.batch)
            unet_ms.append(1000 * sum(unet_watch.take()) / settings.steps)
            vae_ms.append(1000 * sum(decode.take()))
            text_ms.append(1000 * sum(text_watch.take()))
    finally:
        vae.decode = original_decode
        unet_watch.close()
        text_watch.close()
    return {
        "seconds_per_image": Spread.of(totals),
        "unet_ms_per_step": Spread.of(unet_ms),
        "vae_decode_ms": Spread.of(vae_ms),
        "text_encoder_ms": Spread.of(text_ms),
        "peak_memory_gib": (torch.cuda.max_memory_allocated(device) / 2 ** 30
                            if device.type == "cuda" else None),
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return "CPU (%s)" % (platform.processor() or platform.machine())


def measure_all(paths: Sequence[Union[str, Path]], settings: LatencySettings,
                progress: Optional[Callable[[str], None]] = None,
                points: Sequence[DrawPoint] = ()) -> List[LatencyResult]:
    """Every model in turn, at each draw point (none: the settings' sampler and steps),
    with speed-ups."""
    results = []
    for path in paths:
        for each in [at_point(settings, point) for point in points] or [settings]:
            if progress is not None:
                progress("%s, %s %d steps" % (Path(path).name, each.sampler, each.steps))
            results.append(measure(path, each))
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    set_speedups(results)
    return results


def at_point(settings: LatencySettings, point: DrawPoint) -> LatencySettings:
    """The settings with the point's sampler, steps and (when it has one) CFG scale."""
    return replace(settings, sampler=point.sampler, steps=point.steps,
                   cfg_scale=settings.cfg_scale if point.cfg_scale is None else point.cfg_scale)


def set_speedups(results: Sequence[LatencyResult]) -> None:
    """Speed-ups relative to the teacher's first result (at the first draw point), else to
    the first one."""
    reference = next((r for r in results if r.preset == "teacher"), results[0])
    for result in results:
        result.speedup = reference.seconds_per_image.median / result.seconds_per_image.median


def table(results: Sequence[LatencyResult]) -> str:
    head = ("model", "preset", "U-Net params", "sampler", "steps", "s/image (min-max)",
            "U-Net ms/step", "VAE ms", "text ms", "peak GiB", "speed-up")
    rows = [head] + [(
        r.model, r.preset, format(r.unet_params, ","), str(r.settings.get("sampler", "")),
        str(r.settings.get("steps", "")),
        "%.3f (%.3f-%.3f)" % (r.seconds_per_image.median, r.seconds_per_image.low,
                              r.seconds_per_image.high),
        "%.1f" % r.unet_ms_per_step.median, "%.1f" % r.vae_decode_ms.median,
        "%.1f" % r.text_encoder_ms.median,
        "-" if r.peak_memory_gib is None else "%.2f" % r.peak_memory_gib,
        "%.2fx" % r.speedup) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
                     for row in rows)
