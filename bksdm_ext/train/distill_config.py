"""The settings of a distillation run, importable without torch: each declared once, with
its flag, help text, WebUI label and range (`bksdm_ext.settings`).

Two objectives share them: ``kd``, the BK-SDM paper's knowledge distillation, and ``lcm``,
latent consistency distillation (Luo et al., 2023) onto the student, whose own settings
(``lcm_*``) default to diffusers' reference scripts ``train_lcm_distill_sd_wds.py`` and
``train_lcm_distill_lora_sd_wds.py`` (docs/facts.md §14).  "KD then LCM" is two runs: a KD
run, then an LCM run whose ``init_student`` is the KD run's result.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from ..errors import BadInput
from ..model.arch import PRESETS, V_PREDICTION, Architecture
from ..model.blocks import REMOVE_HELP, preset_name
from ..model.samplers import DrawPoint
from ..settings import (BATCH, EVERY, GUIDANCE, IMAGE_SIZE, KEEP_CHECKPOINTS, LEARNING_RATE,
                        LOG_EVERY, LORA_RANK, REQUIRED, SAMPLER_STEPS, SEED, TRAINING_STEPS,
                        Range, check_ranges, check_sample_grids, setting)
from .shared_settings import (EIGHT_BIT_ADAM, EXPORT_DTYPES, FIT_MEMORY, GRADIENT_CHECKPOINTING,
                              MIXED_PRECISION)
from .synth_config import PREVIEW, SYNTH_COUNT, SynthSettings

DEFAULT_PRESET = "small"
OBJECTIVES = ("kd", "lcm")
KD_LR = 5e-5  # the BK-SDM paper (docs/facts.md §4)
LCM_LR = 8e-6  # the LCM paper (docs/facts.md §14)
LCM_LORA_LR = 1e-4  # the LCM-LoRA script's default
LCM_LOSSES = ("huber", "l2")
# w of LCM's CFG formulation, cond + w·(cond − uncond): A1111's CFG scale is w + 1.
LCM_GUIDANCE = Range(0.0, GUIDANCE.high - 1, "guidance w; A1111's CFG scale is w + 1")
SAMPLE_PROMPTS = (
    "a photo of an astronaut riding a horse on the moon",
    "a golden retriever puppy playing in the snow",
    "a cozy cabin in the woods, oil painting",
)


@dataclass
class DistillConfig:
    """A run's settings; the defaults are the paper's (BK-SDM, SD-v1, 0.22M/2.3M pairs)."""

    teacher: str = setting(REQUIRED, "SD-v1/v2 checkpoint (.safetensors/.ckpt)", required=True,
                           label="Teacher (SD-v1/v2 checkpoint)")
    # None: Small, or the teacher itself when `remove` names the blocks (as convert does).
    preset: Optional[str] = setting(None, "a preset (default %s; --remove adds to it)"
                                    % DEFAULT_PRESET, flag="--arch", choices=list(PRESETS),
                                    label="Student preset")
    remove: Optional[str] = setting(None, REMOVE_HELP, metavar="UNITS",
                                    label="Also remove these blocks (optional; names as in the "
                                          "Convert tab's block picker, e.g. down.3.0,up.3.2)")
    data: str = setting(
        "", "folder of images with captions (image.txt beside image.png, or metadata.jsonl / "
            "metadata.csv with file_name and text); or teacher:N (the teacher makes N "
            "image/caption pairs first, from --prompts); or a .txt prompt file (one pair per "
            "prompt); or a finished `bksdm synth` run folder", required=True)
    out: str = setting("", "run folder", required=True)
    objective: str = setting("kd", "kd: knowledge distillation (the BK-SDM paper's); lcm: latent "
                                   "consistency distillation onto the student, which then "
                                   "draws in 2-8 steps with the LCM sampler (default {default})",
                             choices=list(OBJECTIVES), label="Objective")
    # A student file to start from instead of the pruned teacher (init_student.py).
    init_student: Optional[str] = setting(
        None, "start from this student (transplanted, imported or an earlier run's result; its "
              "layout must be --arch's) instead of the pruned teacher: the quick path to a "
              "student of your model")
    steps: int = setting(50_000, "optimizer steps (default {default})", label="Steps",
                         range=TRAINING_STEPS)
    batch_size: int = setting(64, "images per GPU per micro-step (default {default})",
                              label="Batch per GPU", range=BATCH)
    # Memory fitting may trade the whole batch for accumulation: up to BATCH's end squared.
    grad_accum: int = setting(4, "micro-steps per optimizer step (default {default})",
                              label="Gradient accumulation",
                              range=Range(1, 1024 ** 2, "micro-steps per optimizer step"))
    # None: the objective's own (learning_rate).
    lr: Optional[float] = setting(None, "AdamW learning rate, constant (default: KD %g, LCM %g, "
                                        "LCM-LoRA %g)" % (KD_LR, LCM_LR, LCM_LORA_LR),
                                  label="Learning rate", range=LEARNING_RATE)
    resolution: int = setting(512, "training resolution (shorter edge, then center crop) "
                                   "(default {default})", label="Resolution", range=IMAGE_SIZE)
    mixed_precision: str = MIXED_PRECISION.field("fp16")
    lambda_task: float = setting(1.0, "weight of the task loss (default {default})")
    lambda_output: float = setting(1.0, "weight of the output-KD loss (default {default})")
    lambda_feature: float = setting(1.0, "weight of the feature-KD loss (default {default})")
    max_grad_norm: float = 1.0
    ema: bool = setting(True, "keep an EMA copy of the student's weights, the one exported "
                              "(default {default})", label="EMA of the weights")
    ema_decay: float = setting(0.9999, "EMA decay (default {default})")
    gradient_checkpointing: bool = GRADIENT_CHECKPOINTING.field(True)
    use_8bit_adam: bool = EIGHT_BIT_ADAM.field(False)
    flip: bool = setting(True, "flip training images horizontally at random (default {default})")
    save_every: int = setting(1000, "checkpoint every N steps (0: only at the end) (default "
                                    "{default})", label="Checkpoint every N steps", range=EVERY)
    keep_last: int = setting(2, "checkpoints to keep (default {default})",
                             range=KEEP_CHECKPOINTS)
    sample_every: int = setting(1000, "teacher-vs-student samples every N steps (0: never) "
                                      "(default {default})",
                                label="Samples every N steps (0: never)", range=EVERY)
    sample_prompts: Sequence[str] = setting(SAMPLE_PROMPTS, "a prompt for the sample grids (repeatable)",
                                            flag="--sample-prompt",
                                            label="Sample prompts (one per line)")
    # PSNR/SSIM of the student's sample images against the teacher's, as `eval` events;
    # None: with the samples (sample_every), 0: never.
    eval_every: Optional[int] = setting(
        None, "score the student's sample images against the teacher's (PSNR, SSIM) every N "
              "steps into events.jsonl (default: with the samples; 0: never)", range=EVERY)
    sample_steps: int = setting(20, range=SAMPLER_STEPS, cli=False)
    seed: int = setting(0, "seed of data order and noise (default {default})", range=SEED)
    v_prediction: Optional[bool] = V_PREDICTION.field(None)
    export_dtype: str = setting("fp16", "precision of exported students (default {default})",
                                choices=EXPORT_DTYPES)
    cache_dir: Optional[str] = setting(None, "where encoded latents/captions go (default: "
                                             "<out>/cache)")
    log_every: int = setting(10, "event-file line every N steps (default {default})",
                             range=LOG_EVERY)
    # Teacher-made pairs, made inside the run before training (synth.py).
    synthetic: int = setting(0, "with a dataset folder as --data: this many teacher-made pairs "
                                "as well (default {default})", label="Teacher-made images",
                             range=SYNTH_COUNT)
    prompts: Optional[str] = setting(
        None, "prompts of the teacher-made pairs: a .txt file (one a line), a folder of .txt "
              "captions, a dataset folder, or builtin (default)",
        label="Prompts (a .txt file, a caption folder or a dataset folder; empty: built-in "
              "generator)")
    negative_prompt: str = setting(SynthSettings.negative_prompt, "negative prompt of the "
                                   "teacher-made pairs (default {default})",
                                   label="Negative prompt")
    synth_cfg_scale: float = setting(SynthSettings.cfg_scale, "CFG scale of the teacher-made "
                                     "pairs (default {default})", range=GUIDANCE)
    synth_steps: int = setting(SynthSettings.steps, "sampler steps of the teacher-made pairs "
                               "(default {default})", range=SAMPLER_STEPS)
    synth_sampler: str = setting(SynthSettings.sampler, "sampler of the teacher-made pairs "
                                 "(default {default})")
    synth_batch_size: int = setting(SynthSettings.batch_size, "images per teacher batch when "
                                    "making pairs (default {default})", range=BATCH)
    synth_preview: int = setting(SynthSettings.preview, "teacher-made images decoded for the "
                                 "preview grid (default {default})", range=PREVIEW)
    # Random conditioning (arXiv 2504.02011): some captions meet unrelated latents.
    random_conditioning: bool = setting(
        False, "pair some captions with unrelated latents (arXiv 2504.02011; off by default: "
               "not yet shown to help here)", label="Random conditioning")
    random_conditioning_p: float = setting(
        0.5, "with --random-conditioning: share of examples whose caption meets an unrelated "
             "latent (default {default})", range=Range(0.0, 1.0, "a share of the examples"))
    fit_memory: bool = FIT_MEMORY.field(True)
    # Latent consistency distillation (--objective lcm), the reference scripts' defaults.
    # Guidance w of the teacher's CFG, drawn uniformly from [w_min, w_max] per example.
    lcm_w_min: float = setting(5.0, "LCM: lowest guidance w of the teacher, drawn per example "
                                    "(LCM's formulation: A1111's CFG scale is w + 1) (default "
                                    "{default})", range=LCM_GUIDANCE)
    lcm_w_max: float = setting(15.0, "LCM: highest guidance w of the teacher (default {default})",
                               range=LCM_GUIDANCE)
    # The DDIM solver's grid: skipping step k = 1000 / 50 = 20 (A1111's LCM sampler assumes 50).
    lcm_ddim_timesteps: int = setting(
        50, "LCM: points of the teacher's DDIM solver (50: skipping step k = 20) (default "
            "{default})", range=Range(1, 1000, "solver points; SD has 1,000 timesteps"))
    lcm_target_decay: float = setting(0.95, "LCM: EMA rate of the target network (default "
                                            "{default})",
                                      range=Range(0.0, 1.0, "the target network's EMA rate"))
    lcm_loss: str = setting("huber", "LCM: the consistency loss, pseudo-Huber or L2 (default "
                                     "{default})", choices=list(LCM_LOSSES))
    lcm_huber_c: float = setting(0.001, "LCM: c of the pseudo-Huber loss (default {default})",
                                 range=Range(0.0, 10.0, "the pseudo-Huber loss's c"))
    lcm_timestep_scaling: float = setting(
        10.0, "LCM: timestep scaling of the boundary conditions (default {default})",
        range=Range(0.0, 1000.0, "boundary conditions at s·t"))
    # Weight of a feature-KD term toward the teacher at the same timestep (EdgeFusion); 0: off.
    lcm_feature_kd: float = setting(
        0.0, "LCM: weight of a feature-KD term toward the teacher at the same timestep "
             "(EdgeFusion; 0: off) (default {default})",
        range=Range(0.0, 1000.0, "a loss weight; 0: off"))
    # The LCM sampler's steps the samples and eval use, recorded as the recommendation.
    lcm_steps: int = setting(4, "LCM: steps of the LCM sampler the samples and eval use, "
                                "recorded in the result as its recommendation (default "
                                "{default})",
                             range=Range(1, 50, "LCM sampler steps; its grid has 50 points"),
                             label="LCM steps it is distilled for")
    # LCM-LoRA: only rank-r adapters on the student train, exported as a LoRA file (None: all).
    lora_rank: Optional[int] = setting(
        None, "LCM-LoRA: train only rank-R LoRA adapters on the student and write them as a LoRA "
              "file A1111 applies to it, beside the student with them merged (the LCM-LoRA "
              "script uses 64; needs peft; no EMA)", range=LORA_RANK,
        label="LoRA rank (0: the whole student; above 0: an LCM-LoRA of that rank)")

    def __post_init__(self) -> None:
        if self.preset is None and not self.remove:
            self.preset = DEFAULT_PRESET
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

    def recommendation(self) -> Optional[DrawPoint]:
        """How the result is meant to draw: an LCM student in its steps without CFG (the
        guidance is distilled in); a KD student as its teacher does (None)."""
        return DrawPoint("lcm", self.lcm_steps, 1.0) if self.objective == "lcm" else None

    def eval_interval(self) -> int:
        return self.sample_every if self.eval_every is None else self.eval_every

    def synth_settings(self, count: int, prompts: Optional[str]) -> SynthSettings:
        """How the teacher makes this run's pairs: at the training resolution, from the
        run's seed."""
        return SynthSettings(count=count, prompts=prompts, negative_prompt=self.negative_prompt,
                             cfg_scale=self.synth_cfg_scale, steps=self.synth_steps,
                             sampler=self.synth_sampler, resolution=self.resolution,
                             batch_size=self.synth_batch_size, seed=self.seed,
                             preview=self.synth_preview)


def kd_result_name(teacher: str, arch: Architecture) -> str:
    """The file a KD run exports into its run folder, known before it runs: "KD then LCM"
    starts its LCM run from it."""
    return "%s-bk-%s-distilled.safetensors" % (Path(teacher).stem, preset_name(arch))
