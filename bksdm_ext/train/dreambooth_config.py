"""The settings of a DreamBooth run, importable without torch (the CLI builds its help from
the defaults).  Defaults are the BK-SDM paper's (appendix J): U-Net and text encoder
finetuned jointly, AdamW 1e-6 constant, 800 steps, batch 1 instance + 1 class image,
200 class images from the original model, prior-preservation weight 1; LoRA rank 16 at 1e-4."""
from dataclasses import dataclass
from typing import Optional, Sequence

from ..model.ranges import (BATCH, EVERY, GUIDANCE, IMAGE_SIZE, KEEP_CHECKPOINTS, LEARNING_RATE,
                            LOG_EVERY, LORA_RANK, SAMPLER_STEPS, SEED, TRAINING_STEPS, Range,
                            check_ranges, check_sample_grids, ranged)
from ..model.samplers import DEFAULT_SAMPLER

FULL_LR = 1e-6
LORA_LR = 1e-4
# Class-image generation: A1111's default sampler and the paper's guidance scale.
CLASS_SAMPLER = DEFAULT_SAMPLER
CLASS_STEPS = 25
CLASS_GUIDANCE = 7.5


@dataclass
class DreamBoothConfig:
    model: str
    instance_dir: str
    instance_prompt: str
    class_prompt: str
    out: str
    class_model: Optional[str] = None  # default: `model` itself
    class_dir: Optional[str] = None  # default: inside `out`; share one across runs
    # Class images are image files in the class folder (the paper makes 200).
    num_class_images: int = ranged(200, Range(0, 10_000, "class images"))
    steps: int = ranged(800, TRAINING_STEPS)
    resolution: int = ranged(512, IMAGE_SIZE)
    lr: Optional[float] = ranged(None, LEARNING_RATE)  # default FULL_LR; LoRA: only when given
    lora_lr: float = ranged(LORA_LR, LEARNING_RATE)
    batch_size: int = ranged(1, BATCH)  # instance images per step (and as many class images)
    prior_weight: float = 1.0
    prior_preservation: bool = True
    train_text_encoder: bool = True
    lora: bool = False
    lora_rank: int = ranged(16, LORA_RANK)
    max_grad_norm: float = 1.0
    mixed_precision: str = "fp16"  # "no", "fp16" or "bf16"; a CPU always runs "no"
    gradient_checkpointing: bool = True
    use_8bit_adam: bool = False
    # A full-finetune checkpoint (weights + AdamW moments) is several GB, so every 200
    # steps: an interruption loses at most a quarter of the paper's 800 steps, and only
    # the newest checkpoint is kept.  LoRA checkpoints are a few MB.
    save_every: int = ranged(200, EVERY)
    keep_last: int = ranged(1, KEEP_CHECKPOINTS)
    sample_every: int = ranged(200, EVERY)
    sample_prompts: Sequence[str] = ()  # default: the instance prompt
    # CLIP score of the samples with their prompts (`eval` events): this CLIPModel folder or
    # Hugging Face repository (downloaded if need be); None: one already cached, if any.
    clip_model: Optional[str] = None
    sample_steps: int = ranged(25, SAMPLER_STEPS)
    class_steps: int = ranged(CLASS_STEPS, SAMPLER_STEPS)
    class_guidance: float = ranged(CLASS_GUIDANCE, GUIDANCE)
    seed: int = ranged(0, SEED)
    export_dtype: str = "fp16"
    log_every: int = ranged(10, LOG_EVERY)
    # On a GPU, lower the batch/memory settings to fit its free memory (memory_fit.py).
    fit_memory: bool = True

    def __post_init__(self) -> None:
        check_ranges(self)
        check_sample_grids(self.steps, self.sample_every)

    def learning_rate(self) -> float:
        """--lr in full mode (1e-6 if not given); --lora-lr in LoRA mode unless --lr was given."""
        if self.lr is not None:
            return self.lr
        return self.lora_lr if self.lora else FULL_LR
