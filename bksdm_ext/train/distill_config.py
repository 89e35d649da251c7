"""The settings of a distillation run, importable without torch (the CLI builds its
help from the defaults)."""
from dataclasses import dataclass
from typing import Optional, Sequence

from .synth_config import SynthSettings

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
    steps: int = 50_000
    batch_size: int = 64
    grad_accum: int = 4
    lr: float = 5e-5
    resolution: int = 512
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
    save_every: int = 1000
    keep_last: int = 2
    sample_every: int = 1000
    sample_prompts: Sequence[str] = SAMPLE_PROMPTS
    # PSNR/SSIM of the student's sample images against the teacher's, as `eval` events;
    # None: with the samples (sample_every), 0: never.
    eval_every: Optional[int] = None
    sample_steps: int = 20
    seed: int = 0
    v_prediction: Optional[bool] = None
    export_dtype: str = "fp16"
    cache_dir: Optional[str] = None  # default: <out>/cache
    # A student file to start from instead of the pruned teacher (init_student.py).
    init_student: Optional[str] = None
    log_every: int = 10
    # Teacher-made pairs, made inside the run before training (synth.py).
    synthetic: int = 0  # with a dataset folder as --data: this many more, teacher-made
    prompts: Optional[str] = None  # their prompt source; None: the built-in generator
    negative_prompt: str = SynthSettings.negative_prompt
    synth_cfg_scale: float = SynthSettings.cfg_scale
    synth_steps: int = SynthSettings.steps
    synth_sampler: str = SynthSettings.sampler
    synth_batch_size: int = SynthSettings.batch_size
    synth_preview: int = SynthSettings.preview
    # Random conditioning (arXiv 2504.02011): some captions meet unrelated latents.
    random_conditioning: bool = False
    random_conditioning_p: float = 0.5
    # On a GPU, lower the batch/memory settings to fit its free memory (memory_fit.py).
    fit_memory: bool = True

    def eval_interval(self) -> int:
        return self.sample_every if self.eval_every is None else self.eval_every

    def synth_settings(self, count: int, prompts: Optional[str]) -> SynthSettings:
        """How the teacher makes this run's pairs: at the training resolution, from the
        run's seed."""
        return SynthSettings(count, prompts, self.negative_prompt, self.synth_cfg_scale,
                             self.synth_steps, self.synth_sampler, self.resolution,
                             self.synth_batch_size, self.seed, self.synth_preview)
