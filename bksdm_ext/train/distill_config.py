"""The settings of a distillation run, importable without torch (the CLI builds its
help from the defaults)."""
from dataclasses import dataclass
from typing import Optional, Sequence

from ..model.ranges import (BATCH, EVERY, GUIDANCE, IMAGE_SIZE, KEEP_CHECKPOINTS, LEARNING_RATE,
                            LOG_EVERY, SAMPLER_STEPS, SEED, TRAINING_STEPS, Range, check_ranges,
                            check_sample_grids, ranged)
from .synth_config import PREVIEW, SYNTH_COUNT, SynthSettings

SAMPLE_PROMPTS = (
    "a photo of an astronaut riding a horse on the moon",
    "a golden retriever puppy playing in the snow",
    "a cozy cabin in the woods, oil painting",
)


@dataclass
class DistillConfig:
    """A run's settings; the defaults are the paper's (BK-SDM, SD-v1, 0.22M/2.3M pairs)."""

    teacher: str
    data: str  # a dataset folder, teacher:N, a .txt prompt file or a `bksdm synth` run folder
    out: str
    arch: str = "small"
    remove: Optional[str] = None  # more units to remove, in block notation (model.blocks)
    steps: int = ranged(50_000, TRAINING_STEPS)
    batch_size: int = ranged(64, BATCH)
    # Memory fitting may trade the whole batch for accumulation: up to BATCH's end squared.
    grad_accum: int = ranged(4, Range(1, 1024 ** 2, "micro-steps per optimizer step"))
    lr: float = ranged(5e-5, LEARNING_RATE)
    resolution: int = ranged(512, IMAGE_SIZE)
    mixed_precision: str = "fp16"  # "no", "fp16" or "bf16"
    lambda_task: float = 1.0
    lambda_output: float = 1.0
    lambda_feature: float = 1.0
    max_grad_norm: float = 1.0
    ema: bool = True
    ema_decay: float = 0.9999
    gradient_checkpointing: bool = True
    use_8bit_adam: bool = False
    flip: bool = True
    save_every: int = ranged(1000, EVERY)
    keep_last: int = ranged(2, KEEP_CHECKPOINTS)
    sample_every: int = ranged(1000, EVERY)
    sample_prompts: Sequence[str] = SAMPLE_PROMPTS
    # PSNR/SSIM of the student's sample images against the teacher's, as `eval` events;
    # None: with the samples (sample_every), 0: never.
    eval_every: Optional[int] = ranged(None, EVERY)
    sample_steps: int = ranged(20, SAMPLER_STEPS)
    seed: int = ranged(0, SEED)
    v_prediction: Optional[bool] = None
    export_dtype: str = "fp16"
    cache_dir: Optional[str] = None  # default: <out>/cache
    # A student file to start from instead of the pruned teacher (init_student.py).
    init_student: Optional[str] = None
    log_every: int = ranged(10, LOG_EVERY)
    # Teacher-made pairs, made inside the run before training (synth.py).
    synthetic: int = ranged(0, SYNTH_COUNT)  # with a dataset folder as --data: this many more
    prompts: Optional[str] = None  # their prompt source; None: the built-in generator
    negative_prompt: str = SynthSettings.negative_prompt
    synth_cfg_scale: float = ranged(SynthSettings.cfg_scale, GUIDANCE)
    synth_steps: int = ranged(SynthSettings.steps, SAMPLER_STEPS)
    synth_sampler: str = SynthSettings.sampler
    synth_batch_size: int = ranged(SynthSettings.batch_size, BATCH)
    synth_preview: int = ranged(SynthSettings.preview, PREVIEW)
    # Random conditioning (arXiv 2504.02011): some captions meet unrelated latents.
    random_conditioning: bool = False
    random_conditioning_p: float = ranged(0.5, Range(0.0, 1.0, "a share of the examples"))
    # On a GPU, lower the batch/memory settings to fit its free memory (memory_fit.py).
    fit_memory: bool = True

    def __post_init__(self) -> None:
        check_ranges(self)
        check_sample_grids(self.steps, self.sample_every)

    def eval_interval(self) -> int:
        return self.sample_every if self.eval_every is None else self.eval_every

    def synth_settings(self, count: int, prompts: Optional[str]) -> SynthSettings:
        """How the teacher makes this run's pairs: at the training resolution, from the
        run's seed."""
        return SynthSettings(count, prompts, self.negative_prompt, self.synth_cfg_scale,
                             self.synth_steps, self.synth_sampler, self.resolution,
                             self.synth_batch_size, self.seed, self.synth_preview)
