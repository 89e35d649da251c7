"""The settings of a distillation run, importable without torch (the CLI builds its
help from the defaults).

Two objectives share them: ``kd``, the BK-SDM paper's knowledge distillation, and ``lcm``,
latent consistency distillation (Luo et al., 2023) onto the student, whose own settings
(``lcm_*``) default to diffusers' reference scripts ``train_lcm_distill_sd_wds.py`` and
``train_lcm_distill_lora_sd_wds.py`` (docs/facts.md §13).  "KD then LCM" is two runs: a KD
run, then an LCM run whose ``init_student`` is the KD run's result.
"""
from dataclasses import dataclass
from typing import Optional, Sequence

from ..errors import BadInput
from ..model.samplers import Recommendation
from .synth_config import SynthSettings

OBJECTIVES = ("kd", "lcm")
KD_LR = 5e-5  # the BK-SDM paper (docs/facts.md §4)
LCM_LR = 8e-6  # the LCM paper (docs/facts.md §13)
LCM_LORA_LR = 1e-4  # the LCM-LoRA script's default
LCM_LOSSES = ("huber", "l2")
SD_TIMESTEPS = 1000  # SD-v1/v2's training timesteps (a teacher's yaml may say otherwise)

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
    steps: int = 50_000
    batch_size: int = 64
    grad_accum: int = 4
    lr: Optional[float] = None  # None: the objective's own (learning_rate)
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
    # Latent consistency distillation (--objective lcm), the reference scripts' defaults.
    # Guidance w of the teacher's CFG, drawn uniformly from [w_min, w_max] per example, in
    # LCM's formulation cond + w·(cond − uncond): A1111's CFG scale is w + 1.
    lcm_w_min: float = 5.0
    lcm_w_max: float = 15.0
    lcm_ddim_timesteps: int = 50  # the DDIM solver's grid: skipping step k = 1000 / 50 = 20
    lcm_target_decay: float = 0.95  # the target network's EMA rate μ
    lcm_loss: str = "huber"  # one of LCM_LOSSES
    lcm_huber_c: float = 0.001
    lcm_timestep_scaling: float = 10.0  # boundary conditions c_skip, c_out at 10·t
    # Weight of a feature-KD term toward the teacher at the same timestep (EdgeFusion); 0: off.
    lcm_feature_kd: float = 0.0
    # The LCM sampler's steps the samples and eval use, recorded as the recommendation.
    lcm_steps: int = 4
    # LCM-LoRA: only rank-r adapters on the student train, exported as a LoRA file (None: all).
    lora_rank: Optional[int] = None

    def check(self) -> None:
        """The objective's settings make sense together (before anything loads)."""
        if self.objective not in OBJECTIVES:
            raise BadInput("unknown objective '%s'; one of: %s" % (self.objective,
                                                                   ", ".join(OBJECTIVES)))
        if self.objective != "lcm":
            if self.lora_rank:
                raise BadInput("--lora-rank trains LCM-LoRA adapters: it needs --objective lcm")
            return
        if not 0 <= self.lcm_w_min <= self.lcm_w_max:
            raise BadInput("the guidance range needs 0 <= --lcm-w-min <= --lcm-w-max; got %g and "
                           "%g" % (self.lcm_w_min, self.lcm_w_max))
        if self.lcm_loss not in LCM_LOSSES:
            raise BadInput("unknown --lcm-loss '%s'; one of: %s" % (self.lcm_loss,
                                                                   ", ".join(LCM_LOSSES)))
        if self.lcm_steps < 1:
            raise BadInput("--lcm-steps must be at least 1; got %d" % self.lcm_steps)
        if not 1 <= self.lcm_ddim_timesteps <= SD_TIMESTEPS:
            raise BadInput("--lcm-ddim-timesteps must be between 1 and the teacher's %d "
                           "training timesteps; got %d" % (SD_TIMESTEPS, self.lcm_ddim_timesteps))
        if self.lora_rank is not None and self.lora_rank < 1:
            raise BadInput("--lora-rank must be at least 1; got %d" % self.lora_rank)
        if not 0 <= self.lcm_target_decay < 1:
            raise BadInput("--lcm-target-decay must be in [0, 1); got %g" % self.lcm_target_decay)

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
