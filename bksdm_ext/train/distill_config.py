"""The settings of a distillation run, importable without torch: each declared once, with
its flag, help text, WebUI label and range (`bksdm_ext.settings`)."""
from dataclasses import dataclass
from typing import Optional, Sequence

from ..model.arch import PRESETS, V_PREDICTION
from ..model.blocks import REMOVE_HELP
from ..settings import (BATCH, EVERY, GUIDANCE, IMAGE_SIZE, KEEP_CHECKPOINTS, LEARNING_RATE,
                        LOG_EVERY, REQUIRED, SAMPLER_STEPS, SEED, TRAINING_STEPS, Range,
                        check_ranges, check_sample_grids, setting)
from .shared_settings import (EIGHT_BIT_ADAM, EXPORT_DTYPES, FIT_MEMORY, GRADIENT_CHECKPOINTING,
                              MIXED_PRECISION)
from .synth_config import PREVIEW, SYNTH_COUNT, SynthSettings

DEFAULT_PRESET = "small"
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
    lr: float = setting(5e-5, "AdamW learning rate (constant) (default {default})",
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

    def __post_init__(self) -> None:
        if self.preset is None and not self.remove:
            self.preset = DEFAULT_PRESET
        check_ranges(self)
        check_sample_grids(self.steps, self.sample_every)

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
