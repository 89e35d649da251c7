"""The settings of a DreamBooth run, importable without torch (the CLI builds its help from
the defaults).  Defaults are the BK-SDM paper's (appendix J): U-Net and text encoder
finetuned jointly, AdamW 1e-6 constant, 800 steps, batch 1 instance + 1 class image,
200 class images from the original model, prior-preservation weight 1; LoRA rank 16 at 1e-4."""
from dataclasses import dataclass
from typing import Optional, Sequence

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
    num_class_images: int = 200
    steps: int = 800
    resolution: int = 512
    lr: Optional[float] = None  # default FULL_LR; in LoRA mode used only when given
    lora_lr: float = LORA_LR
    batch_size: int = 1  # instance images per step (and as many class images)
    prior_weight: float = 1.0
    prior_preservation: bool = True
    train_text_encoder: bool = True
    lora: bool = False
    lora_rank: int = 16
    max_grad_norm: float = 1.0
    mixed_precision: str = "fp16"  # "no", "fp16" or "bf16"; a CPU always runs "no"
    gradient_checkpointing: bool = True
    use_8bit_adam: bool = False
    # A full-finetune checkpoint (weights + AdamW moments) is several GB, so every 200
    # steps: an interruption loses at most a quarter of the paper's 800 steps, and only
    # the newest checkpoint is kept.  LoRA checkpoints are a few MB.
    save_every: int = 200
    keep_last: int = 1
    sample_every: int = 200
    sample_prompts: Sequence[str] = ()  # default: the instance prompt
    # CLIP score of the samples with their prompts (`eval` events): this CLIPModel folder or
    # Hugging Face repository (downloaded if need be); None: one already cached, if any.
    clip_model: Optional[str] = None
    sample_steps: int = 25
    class_steps: int = CLASS_STEPS
    class_guidance: float = CLASS_GUIDANCE
    seed: int = 0
    export_dtype: str = "fp16"
    log_every: int = 10
    # On a GPU, lower the batch/memory settings to fit its free memory (memory_fit.py).
    fit_memory: bool = True

    def learning_rate(self) -> float:
        """--lr in full mode (1e-6 if not given); --lora-lr in LoRA mode unless --lr was given."""
        if self.lr is not None:
            return self.lr
        return self.lora_lr if self.lora else FULL_LR
