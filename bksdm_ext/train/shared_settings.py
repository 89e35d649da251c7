"""The settings distillation and DreamBooth (and any objective to come) declare alike: one
`Setting` each, which each config's field takes with its own default."""
from ..settings import Setting

MIXED_PRECISION = Setting("autocast on a GPU (default {default}; a CPU runs fp32)",
                          choices=["no", "fp16", "bf16"], label="Mixed precision")
GRADIENT_CHECKPOINTING = Setting("recompute activations in the backward pass: less memory, "
                                 "slower steps (default {default})",
                                 label="Gradient checkpointing")
EIGHT_BIT_ADAM = Setting("bitsandbytes' 8-bit AdamW (needs bitsandbytes)",
                         label="8-bit AdamW (bitsandbytes)")
# On a GPU, lower the batch/memory settings to fit its free memory (memory_fit.py).
FIT_MEMORY = Setting("on a GPU, lower the batch and memory settings to fit its free memory "
                     "(the estimate is printed before the run starts); --no-fit-memory keeps "
                     "them as given (default {default})")
EXPORT_DTYPES = ["fp16", "bf16", "fp32"]
