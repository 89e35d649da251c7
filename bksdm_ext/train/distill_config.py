"""The settings of a distillation run, importable without torch (the CLI builds its
help from the defaults).

Two objectives share them: ``kd``, the BK-SDM paper's knowledge distillation, and ``lcm``,
latent consistency distillation (Luo et al., 2023) onto the student, whose own settings
(``lcm_*``) default to diffusers' reference scripts ``train_lcm_distill_sd_wds.py`` and
``train_lcm_distill_lora_sd_wds.py`` (docs/facts.md §14).  "KD then LCM" is two runs: a KD
run, then an LCM run whose ``init_student`` is the KD run's result.
"""
from dataclasses import dataclass
from typing import Optional, Sequence

from ..errors import BadInput
from ..model.ranges import (BATCH, EVERY, GUIDANCE, IMAGE_SIZE, KEEP_CHECKPOINTS, LEARNING_RATE,
                            LOG_EVERY, LORA_RANK, SAMPLER_STEPS, SEED, TRAINING_STEPS, Range,
                            check_ranges, check_sample_grids, ranged)
from ..model.samplers import Recommendation
from .synth_config import PREVIEW, SYNTH_COUNT, SynthSettings

OBJECTIVES = ("kd", "lcm")
KD_LR = 5e-5  # the BK-SDM paper (docs/facts.md §4)
LCM_LR = 8e-6  # the LCM paper (docs/facts.md §14)
LCM_LORA_LR = 1e-4  # the LCM-LoRA script's default
LCM_LOSSES = ("huber", "l2")
# w of LCM's CFG formulation, cond + w·(cond − uncond): A1111's CFG scale is w + 1.
LCM_GUIDANCE = Range(0.0, GUIDANCE.high - 1, "guidance w; A1111's CFG scale is w + 1")

# The help text of each setting the LCM objective adds, declared here beside the settings so
# the command line, the job runner and the tabs say the same (the command line adds
# "(default X)" from the dataclass).
LCM_HELP = {
    "objective": "kd: knowledge distillation (the BK-SDM paper's); lcm: latent consistency "
                 "distillation onto the student, which then draws in 2-8 steps with the LCM "
                 "sampler",
    "lr": "AdamW learning rate, constant (default: KD %g, LCM %g, LCM-LoRA %g)"
          % (KD_LR, LCM_LR, LCM_LORA_LR),
    "lcm_w_min": "LCM: lowest guidance w of the teacher, drawn per example (LCM's "
                 "formulation: A1111's CFG scale is w + 1)",
    "lcm_w_max": "LCM: highest guidance w of the teacher",
    "lcm_ddim_timesteps": "LCM: points of the teacher's DDIM solver (50: skipping step k = 20)",
    "lcm_target_decay": "LCM: EMA rate of the target network",
    "lcm_loss": "LCM: the consistency loss, pseudo-Huber or L2",
    "lcm_huber_c": "LCM: c of the pseudo-Huber loss",
    "lcm_timestep_scaling": "LCM: timestep scaling of the boundary conditions",
    "lcm_feature_kd": "LCM: weight of a feature-KD term toward the teacher at the same "
                      "timestep (EdgeFusion; 0: off)",
    "lcm_steps": "LCM: steps of the LCM sampler the samples and eval use, recorded in the "
                 "result as its recommendation",
    "lora_rank": "LCM-LoRA: train only rank-R LoRA adapters on the student and write them as a "
                 "LoRA file A1111 applies to it, beside the student with them merged (the "
                 "LCM-LoRA script uses 64; needs peft; no EMA)",
}

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
    objective: str = "kd"  # one of OBJECTIVES
    arch: str = "small"
    remove: Optional[str] = None  # more units to remove, in block notation (model.blocks)
    steps: int = ranged(50_000, TRAINING_STEPS)
    batch_size: int = ranged(64, BATCH)
    # Memory fitting may trade the whole batch for accumulation: up to BATCH's end squared.
    grad_accum: int = ranged(4, Range(1, 1024 ** 2, "micro-steps per optimizer step"))
    lr: Optional[float] = ranged(None, LEARNING_RATE)  # None: the objective's (learning_rate)
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
    # Latent consistency distillation (--objective lcm), the reference scripts' defaults.
    # Guidance w of the teacher's CFG, drawn uniformly from [w_min, w_max] per example.
    lcm_w_min: float = ranged(5.0, LCM_GUIDANCE)
    lcm_w_max: float = ranged(15.0, LCM_GUIDANCE)
    # The DDIM solver's grid: skipping step k = 1000 / 50 = 20 (A1111's LCM sampler assumes 50).
    lcm_ddim_timesteps: int = ranged(50, Range(1, 1000, "solver points; SD has 1,000 timesteps"))
    lcm_target_decay: float = ranged(0.95, Range(0.0, 1.0, "the target network's EMA rate"))
    lcm_loss: str = "huber"  # one of LCM_LOSSES
    lcm_huber_c: float = ranged(0.001, Range(0.0, 10.0, "the pseudo-Huber loss's c"))
    lcm_timestep_scaling: float = ranged(10.0, Range(0.0, 1000.0, "boundary conditions at s·t"))
    # Weight of a feature-KD term toward the teacher at the same timestep (EdgeFusion); 0: off.
    lcm_feature_kd: float = ranged(0.0, Range(0.0, 1000.0, "a loss weight; 0: off"))
    # The LCM sampler's steps the samples and eval use, recorded as the recommendation.
    lcm_steps: int = ranged(4, Range(1, 50, "LCM sampler steps; its grid has 50 points"))
    # LCM-LoRA: only rank-r adapters on the student train, exported as a LoRA file (None: all).
    lora_rank: Optional[int] = ranged(None, LORA_RANK)

    def __post_init__(self) -> None:
        check_ranges(self)
        check_sample_grids(self.steps, self.sample_every)

    def check(self) -> None:
        """The objective's settings make sense together (before anything loads); each
        number's own range is checked when the settings are made."""
        if self.objective not in OBJECTIVES:
            raise BadInput("unknown objective '%s'; one of: %s" % (self.objective,
                                                                   ", ".join(OBJECTIVES)))
        if self.lora_rank and self.objective != "lcm":
            raise BadInput("--lora-rank trains LCM-LoRA adapters: it needs --objective lcm")
        if self.lcm_w_min > self.lcm_w_max:
            raise BadInput("--lcm-w-min %g is above --lcm-w-max %g: give the guidance range low "
                           "to high" % (self.lcm_w_min, self.lcm_w_max))
        if self.lcm_loss not in LCM_LOSSES:
            raise BadInput("unknown --lcm-loss '%s'; one of: %s" % (self.lcm_loss,
                                                                   ", ".join(LCM_LOSSES)))

    def learning_rate(self) -> float:
        """--lr, else the objective's own: KD 5e-5, LCM 8e-6, LCM-LoRA 1e-4."""
        if self.lr is not None:
            return self.lr
        if self.objective == "lcm":
            return LCM_LORA_LR if self.lora_rank else LCM_LR
        return KD_LR

    def recommendation(self) -> Optional[Recommendation]:
        """How the result is meant to draw: an LCM student in its steps without CFG (the
        guidance is distilled in); a KD student as its teacher does (None)."""
        return Recommendation("lcm", self.lcm_steps, 1.0) if self.objective == "lcm" else None

    def eval_interval(self) -> int:
        return self.sample_every if self.eval_every is None else self.eval_every

    def synth_settings(self, count: int, prompts: Optional[str]) -> SynthSettings:
        """How the teacher makes this run's pairs: at the training resolution, from the
        run's seed."""
        return SynthSettings(count, prompts, self.negative_prompt, self.synth_cfg_scale,
                             self.synth_steps, self.synth_sampler, self.resolution,
                             self.synth_batch_size, self.seed, self.synth_preview)
