"""The settings of a DreamBooth run, importable without torch: each declared once, with its
flag, help text, WebUI label and range (`bksdm_ext.settings`).  Defaults are the BK-SDM
paper's (appendix J): U-Net and text encoder finetuned jointly, AdamW 1e-6 constant, 800
steps, batch 1 instance + 1 class image, 200 class images from the original model,
prior-preservation weight 1; LoRA rank 16 at 1e-4."""
from dataclasses import dataclass
from typing import Optional, Sequence

from ..model.samplers import DEFAULT_SAMPLER
from ..settings import (BATCH, EVERY, GUIDANCE, IMAGE_SIZE, KEEP_CHECKPOINTS, LEARNING_RATE,
                        LOG_EVERY, LORA_RANK, REQUIRED, SAMPLER_STEPS, SEED, TRAINING_STEPS, Range,
                        check_ranges, check_sample_grids, setting)
from .shared_settings import (EIGHT_BIT_ADAM, EXPORT_DTYPES, FIT_MEMORY, GRADIENT_CHECKPOINTING,
                              MIXED_PRECISION)

FULL_LR = 1e-6
LORA_LR = 1e-4
# Class-image generation: A1111's default sampler and the paper's guidance scale.
CLASS_SAMPLER = DEFAULT_SAMPLER
CLASS_STEPS = 25
CLASS_GUIDANCE = 7.5


@dataclass
class DreamBoothConfig:
    model: str = setting(REQUIRED, "checkpoint to finetune (.safetensors/.ckpt)", required=True,
                         label="Model to personalise (a student or any SD-v1/v2 checkpoint)")
    instance_dir: str = setting(REQUIRED, "folder with the photos of the subject",
                                required=True)
    instance_prompt: str = setting(REQUIRED, 'prompt of every photo, e.g. "a [V] dog"',
                                   label="Instance prompt", required=True)
    out: str = setting(REQUIRED, "run folder", required=True)
    class_prompt: str = setting("", 'the class without the identifier, e.g. "a dog" (needed '
                                    "with prior preservation)", label="Class prompt")
    class_model: Optional[str] = setting(None, "model that generates the class images "
                                               "(default: --model)", label="Class images made by")
    class_dir: Optional[str] = setting(None, "where class-image folders go, to share them "
                                             "between runs (default: the run folder)")
    # Class images are image files in the class folder (the paper makes 200).
    num_class_images: int = setting(200, "class images for prior preservation (default "
                                         "{default})", label="Class images",
                                    range=Range(0, 10_000, "class images"))
    steps: int = setting(800, "optimizer steps (default {default})", label="Steps",
                         range=TRAINING_STEPS)
    resolution: int = setting(512, "training resolution (shorter edge, then random crop) "
                                   "(default {default})", label="Resolution", range=IMAGE_SIZE)
    # None: FULL_LR, or in LoRA mode lora_lr (see learning_rate).
    lr: Optional[float] = setting(None, "AdamW learning rate (constant); with --lora only when "
                                        "given (default %s)" % FULL_LR,
                                  label="Learning rate (full)", range=LEARNING_RATE)
    lora_lr: float = setting(LORA_LR, "learning rate in LoRA mode (default {default})",
                             label="LoRA learning rate", range=LEARNING_RATE)
    batch_size: int = setting(1, "instance images per step (plus as many class images) "
                                 "(default {default})", range=BATCH)
    prior_weight: float = setting(1.0, "weight of the prior-preservation loss (default "
                                       "{default})")
    prior_preservation: bool = setting(True, "train on class images too, so the class keeps "
                                             "its look (default {default})",
                                       label="Prior preservation (weight 1)")
    train_text_encoder: bool = setting(True, "finetune the text encoder with the U-Net "
                                             "(default {default})",
                                       label="Train the text encoder too")
    lora: bool = setting(False, "train LoRA adapters instead of all weights (needs peft)",
                         label="LoRA (needs peft)")
    lora_rank: int = setting(16, "LoRA rank (alpha = rank) (default {default})",
                             label="LoRA rank", range=LORA_RANK)
    max_grad_norm: float = 1.0
    mixed_precision: str = MIXED_PRECISION.field("fp16")
    gradient_checkpointing: bool = GRADIENT_CHECKPOINTING.field(True)
    use_8bit_adam: bool = EIGHT_BIT_ADAM.field(False)
    # A full-finetune checkpoint (weights + AdamW moments) is several GB, so every 200
    # steps: an interruption loses at most a quarter of the paper's 800 steps, and only
    # the newest checkpoint is kept.  LoRA checkpoints are a few MB.
    save_every: int = setting(200, "checkpoint every N steps (0: never) (default {default})",
                              range=EVERY)
    keep_last: int = setting(1, range=KEEP_CHECKPOINTS, cli=False)
    sample_every: int = setting(200, "before/after sample grid every N steps (0: never) "
                                     "(default {default})", range=EVERY)
    sample_prompts: Sequence[str] = setting((), "a prompt for the sample grids (repeatable; "
                                                "default: the instance prompt)",
                                            flag="--sample-prompt")
    # CLIP score of the samples with their prompts (`eval` events): this CLIPModel folder or
    # Hugging Face repository (downloaded if need be); None: one already cached, if any.
    clip_model: Optional[str] = setting(
        None, "CLIP score of the samples with their prompts: a transformers CLIPModel folder, "
              "Hugging Face repository (downloaded if not cached) or OpenAI/open_clip ViT "
              "checkpoint file; default: one already on the machine, if any)")
    sample_steps: int = setting(25, range=SAMPLER_STEPS, cli=False)
    class_steps: int = setting(CLASS_STEPS, range=SAMPLER_STEPS, cli=False)
    class_guidance: float = setting(CLASS_GUIDANCE, range=GUIDANCE, cli=False)
    seed: int = setting(0, "seed of data order, crops and noise (default {default})",
                        range=SEED)
    export_dtype: str = setting("fp16", "precision of the finetuned weights (default "
                                        "{default})", choices=EXPORT_DTYPES)
    log_every: int = setting(10, "event-file line every N steps (default {default})",
                             range=LOG_EVERY)
    fit_memory: bool = FIT_MEMORY.field(True)

    def __post_init__(self) -> None:
        check_ranges(self)
        check_sample_grids(self.steps, self.sample_every)

    def learning_rate(self) -> float:
        """--lr in full mode (1e-6 if not given); --lora-lr in LoRA mode unless --lr was given."""
        if self.lr is not None:
            return self.lr
        return self.lora_lr if self.lora else FULL_LR
