"""Training settings that fit the GPU's free memory while keeping the paper's effective batch.

The paper distils with 64 × 4 (effective batch 256) on an 80 GB A100; a consumer card holds a
fraction of that.  Before a run starts, `plan_distill` / `plan_dreambooth` estimate the peak
memory of the run's settings and, when they do not fit, trade in this order: a smaller
micro-batch with more accumulation (the effective batch stays), gradient checkpointing,
8-bit AdamW (when bitsandbytes is installed), and, for distillation, the EMA copy as a last
resort.  Precision stays the run's (fp16 or bf16 autocast), except that full fp32 is
replaced by fp16 when nothing else fits.

The estimate is arithmetic plus measurement:

* what stays on the GPU all run: the trained weights, their gradients and AdamW moments
  (16 bytes per parameter, 10 with 8-bit AdamW), the fp32 EMA copy (4), frozen weights
  (2 in half precision, 4 in fp32) and the CUDA context;
* activations per sample, calibrated to the peaks measured on an H200 (docs/facts.md §9) with
  BK-Small at 512² and scaled with the resolution's pixel count: distillation's
  micro-batch 32 (13.8 GiB, the setting this picks on 16-24 GB cards) and 64 (24.5 GiB,
  steeper than the line through the weights: the measured curve is used as is); DreamBooth
  (1 instance + 1 prior image, U-Net + text encoder, plain AdamW) at 11.5 GiB for BK-Small
  and 18.5 GiB for SD-v1.  Gradient checkpointing is taken to keep a third of the
  activations, fp32 twice the autocast ones.

Latent consistency distillation (``--objective lcm``) keeps one more fp32 copy of the student
(the EMA target network) and runs no-grad forwards while the student's activations are held:
the teacher on twice the batch (classifier-free guidance) and the target.  Those are taken as
half as much again as KD's activations (`LCM_ACTIVATIONS`), an estimate until `bench/gpu.py`'s
``lcm`` part measures a peak.  LCM-LoRA trains adapters only: a frozen fp32 student, no EMA,
no target.

A plan keeps 10% of the free memory spare (allocator fragmentation, cuDNN workspaces).
`bench/gpu.py` measures the real peaks; its figures are what these constants follow.
"""
from dataclasses import dataclass, replace
from typing import Callable, Dict, List, Optional, Tuple

GIB = 1024 ** 3
HEADROOM = 0.9
CUDA_CONTEXT_GIB = 0.5

# U-Net and text-encoder parameter counts (docs/facts.md §1); SD-v2 768-v shares SD-v2's.
UNET_PARAMS: Dict[str, Dict[str, int]] = {
    "sd-v1": {"teacher": 859_520_964, "mid-removed": 762_482_884, "base": 579_384_964,
              "small": 482_346_884, "tiny": 323_384_964},
    "sd-v2": {"teacher": 865_910_724, "mid-removed": 768_217_284, "base": 583_480_964,
              "small": 485_787_524, "tiny": 326_825_604},
}
TEXT_PARAMS = {"sd-v1": 123_060_557, "sd-v2": 340_387_917}

# Distillation, BK-Small, 512², autocast, checkpointing: measured peak by micro-batch (GiB).
KD_MEASURED_PEAKS: Tuple[Tuple[int, float], ...] = ((32, 13.8), (64, 24.5))
# DreamBooth, 1 + 1 images, U-Net + text encoder, AdamW, no checkpointing: (U-Net, peak GiB).
DREAMBOOTH_MEASURED_PEAKS: Tuple[Tuple[int, float], ...] = (
    (UNET_PARAMS["sd-v1"]["small"], 11.5), (UNET_PARAMS["sd-v1"]["teacher"], 18.5))
CHECKPOINTING_KEEPS = 1 / 3
FP32_ACTIVATIONS = 2.0
BYTES_ADAMW, BYTES_ADAMW_8BIT, BYTES_EMA = 16, 10, 4
BYTES_FROZEN_FP32 = 4
LCM_ACTIVATIONS = 1.5  # LCM's activations over KD's at the same micro-batch (an estimate)


@dataclass(frozen=True)
class Settings:
    """The memory-relevant settings of a run (one process, one GPU)."""

    micro_batch: int
    grad_accum: int
    gradient_checkpointing: bool
    use_8bit_adam: bool
    mixed_precision: str  # "no", "fp16" or "bf16"
    ema: bool = False

    @property
    def effective_batch(self) -> int:
        return self.micro_batch * self.grad_accum


@dataclass(frozen=True)
class MemoryPlan:
    settings: Settings
    estimate_gib: float
    free_gib: float
    changed: Tuple[str, ...]  # what was traded, in words

    @property
    def fits(self) -> bool:
        return self.estimate_gib <= self.free_gib * HEADROOM

    def describe(self) -> str:
        s = self.settings
        parts = ["micro-batch %d × %d accumulation (effective %d)"
                 % (s.micro_batch, s.grad_accum, s.effective_batch),
                 s.mixed_precision if s.mixed_precision != "no" else "fp32",
                 "gradient checkpointing" if s.gradient_checkpointing else "no checkpointing",
                 "8-bit AdamW" if s.use_8bit_adam else "AdamW"] + (["EMA"] if s.ema else [])
        text = "%s: ≈%.1f GiB peak of %.1f GiB free" % (", ".join(parts), self.estimate_gib,
                                                         self.free_gib)
        if self.changed:
            text += " (changed to fit: %s)" % "; ".join(self.changed)
        if not self.fits:
            text += " — does not fit even so; expect an out-of-memory error"
        return text


def _family(family: str) -> str:
    return "sd-v2" if family.startswith("sd-v2") else "sd-v1"


def _interpolate(points: Tuple[Tuple[float, float], ...], x: float) -> float:
    """Piecewise-linear through `points` (sorted by x), extended by the last segment."""
    segments = list(zip(points, points[1:]))
    (x0, y0), (x1, y1) = next((seg for seg in segments if x <= seg[1][0]), segments[-1])
    return y0 + (x - x0) * (y1 - y0) / (x1 - x0)


def _activation_scale(s: Settings, resolution: int, measured_checkpointing: bool) -> float:
    """Activations of `s` relative to a measurement at 512², autocast, with or without
    gradient checkpointing."""
    scale = (resolution / 512.0) ** 2
    if s.mixed_precision == "no":
        scale *= FP32_ACTIVATIONS
    if s.gradient_checkpointing and not measured_checkpointing:
        scale *= CHECKPOINTING_KEEPS
    if measured_checkpointing and not s.gradient_checkpointing:
        scale /= CHECKPOINTING_KEEPS
    return scale


def distill_state_gib(family: str, preset: str, s: Settings, objective: str = "kd",
                      lora: bool = False) -> float:
    """What a distillation run keeps on the GPU whatever the batch: the student with its
    gradients, AdamW moments and EMA (LCM: and its target network; LCM-LoRA: the frozen
    student alone); the frozen teacher in half precision."""
    params = UNET_PARAMS[_family(family)]
    if lora:
        per_param = BYTES_FROZEN_FP32
    else:
        per_param = ((BYTES_ADAMW_8BIT if s.use_8bit_adam else BYTES_ADAMW)
                     + (BYTES_EMA if s.ema else 0) + (BYTES_EMA if objective == "lcm" else 0))
    return (params[preset] * per_param + params["teacher"] * 2) / GIB + CUDA_CONTEXT_GIB


def distill_peak_gib(family: str, preset: str, resolution: int, s: Settings, objective: str = "kd",
                     lora: bool = False) -> float:
    """Estimated peak GPU memory of one distillation process."""
    measured = Settings(32, 1, True, False, "fp16", ema=True)
    base = distill_state_gib("sd-v1", "small", measured)
    curve = ((0, base),) + KD_MEASURED_PEAKS
    activations = _interpolate(curve, s.micro_batch) - base
    if objective == "lcm":
        activations *= LCM_ACTIVATIONS
    return (distill_state_gib(family, preset, s, objective, lora)
            + activations * _activation_scale(s, resolution, True))


def dreambooth_peak_gib(family: str, preset: str, resolution: int, s: Settings, lora: bool,
                        train_text_encoder: bool) -> float:
    """Estimated peak of one DreamBooth process (instance + prior image per sample)."""
    unet, text = UNET_PARAMS[_family(family)][preset], TEXT_PARAMS[_family(family)]
    weight_bytes = 2 if s.mixed_precision != "no" else 4
    if lora:  # frozen weights; the adapters are a rounding error
        state = (unet * 4 + text * (4 if train_text_encoder else weight_bytes)) / GIB
    else:
        trained = unet + (text if train_text_encoder else 0)
        frozen = 0 if train_text_encoder else text
        state = (trained * (BYTES_ADAMW_8BIT if s.use_8bit_adam else BYTES_ADAMW)
                 + frozen * weight_bytes) / GIB
    state += CUDA_CONTEXT_GIB
    small, teacher = DREAMBOOTH_MEASURED_PEAKS
    per_param = [(peak - ((p + TEXT_PARAMS["sd-v1"]) * BYTES_ADAMW / GIB + CUDA_CONTEXT_GIB)) / p
                 for p, peak in (small, teacher)]
    activations = unet * sum(per_param) / len(per_param) * s.micro_batch
    return state + activations * _activation_scale(s, resolution, False)


def _micro_batches(effective: int, start: int, floor: int) -> List[int]:
    """Micro-batches from `start` down to `floor` that divide the effective batch."""
    return [m for m in range(min(start, effective), floor - 1, -1) if effective % m == 0]


def plan_distill(free_bytes: int, family: str, preset: str, resolution: int, wanted: Settings,
                 have_bitsandbytes: bool, objective: str = "kd", lora: bool = False) -> MemoryPlan:
    """The settings closest to `wanted` whose estimated peak fits `free_bytes`."""
    def estimate(s: Settings) -> float:
        return distill_peak_gib(family, preset, resolution, s, objective, lora)

    return _plan(free_bytes, wanted, estimate, have_bitsandbytes and not lora,
                 allow_no_ema=not lora)


def plan_dreambooth(free_bytes: int, family: str, preset: str, resolution: int, wanted: Settings,
                    have_bitsandbytes: bool, lora: bool, train_text_encoder: bool) -> MemoryPlan:
    def estimate(s: Settings) -> float:
        return dreambooth_peak_gib(family, preset, resolution, s, lora, train_text_encoder)

    return _plan(free_bytes, wanted, estimate, have_bitsandbytes and not lora, allow_no_ema=False)


def _plan(free_bytes: int, wanted: Settings, estimate: Callable[[Settings], float],
          have_bitsandbytes: bool, allow_no_ema: bool) -> MemoryPlan:
    """Try the wanted settings, then each trade on top of the previous ones; at each, the
    micro-batch may shrink to an eighth (speed stays reasonable), at the last one to 1."""
    free = free_bytes / GIB
    levels: List[Tuple[Tuple[str, ...], Settings]] = [((), wanted)]

    def trade(what: str, **change: object) -> None:
        changed, settings = levels[-1]
        levels.append((changed + (what,), replace(settings, **change)))

    if not wanted.gradient_checkpointing:
        trade("gradient checkpointing on", gradient_checkpointing=True)
    if have_bitsandbytes and not wanted.use_8bit_adam:
        trade("8-bit AdamW", use_8bit_adam=True)
    if wanted.mixed_precision == "no":
        trade("fp16 instead of fp32", mixed_precision="fp16")
    if allow_no_ema and wanted.ema:
        trade("EMA off", ema=False)
    last: Optional[MemoryPlan] = None
    for level, (changed, settings) in enumerate(levels):
        floor = 1 if level == len(levels) - 1 else max(1, wanted.micro_batch // 8)
        for micro in _micro_batches(wanted.effective_batch, wanted.micro_batch, floor):
            smaller = () if micro == wanted.micro_batch else (
                "micro-batch %d instead of %d" % (micro, wanted.micro_batch),)
            s = replace(settings, micro_batch=micro, grad_accum=wanted.effective_batch // micro)
            last = MemoryPlan(s, round(estimate(s), 2), round(free, 2), changed + smaller)
            if last.fits:
                return last
    assert last is not None
    return last
