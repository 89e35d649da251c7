"""A run's settings fitted to the GPU it starts on, and an out-of-memory error turned into advice.

On a GPU, distillation and DreamBooth start with the settings `memory_plan` finds for the
free memory (only ever lowered from the run's own, effective batch kept; ``--no-fit-memory``
keeps them as given) and say so on stderr and in the event file.  When the GPU still runs
out, the run fails with one message that names the setting to lower, and records the
smaller micro-batch in ``memory.json`` in the run folder, so resuming the run (``--resume``,
the Jobs tab's Resume) continues from its last checkpoint with it.  Otherwise a resumed run
keeps the settings it started with (its ``config.json``) whatever memory is free now: a
different micro-batch would draw other noise, and the run would not continue exactly.
"""
import importlib.util
import json
import os
import sys
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Tuple, TypeVar

from ..errors import BadInput
from ..model.arch import preset as removal_of
from .distill_config import DistillConfig
from .dreambooth_config import DreamBoothConfig
from .memory_plan import MemoryPlan, Settings, plan_distill, plan_dreambooth

MEMORY_FILE = "memory.json"
STARTED_WITH = "config.json"  # the settings a run started with, written by distill/dreambooth
MEMORY_FIELDS = ("batch_size", "grad_accum", "gradient_checkpointing", "use_8bit_adam",
                 "mixed_precision", "ema")
C = TypeVar("C", DistillConfig, DreamBoothConfig)


def free_gpu_bytes() -> Optional[int]:
    """Free memory of this process's CUDA device; None without one, and under DDP
    (``accelerate launch``), where each process could fit differently but all must agree."""
    import torch

    if not torch.cuda.is_available() or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return None
    free, _total = torch.cuda.mem_get_info()
    return int(free)


def have_bitsandbytes() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


def settings_of(cfg: Any) -> Settings:
    """The memory-relevant settings of a DistillConfig or DreamBoothConfig."""
    return Settings(cfg.batch_size, getattr(cfg, "grad_accum", 1), cfg.gradient_checkpointing,
                    cfg.use_8bit_adam, cfg.mixed_precision, getattr(cfg, "ema", False))


def with_settings(cfg: C, s: Settings) -> C:
    changes = dict(batch_size=s.micro_batch, gradient_checkpointing=s.gradient_checkpointing,
                   use_8bit_adam=s.use_8bit_adam, mixed_precision=s.mixed_precision)
    if isinstance(cfg, DistillConfig):
        changes.update(grad_accum=s.grad_accum, ema=s.ema)
    return replace(cfg, **changes)


def recorded_micro_batch(out: Path) -> Optional[int]:
    """The micro-batch an earlier out-of-memory error of this run left in memory.json."""
    path = Path(out) / MEMORY_FILE
    if not path.is_file():
        return None
    return int(json.loads(path.read_text(encoding="utf-8"))["max_micro_batch"])


def _capped(cfg: C) -> C:
    """`cfg` with its micro-batch lowered to what memory.json allows (the effective batch kept)."""
    cap = recorded_micro_batch(Path(cfg.out))
    if cap is None or cfg.batch_size <= cap:
        return cfg
    if not isinstance(cfg, DistillConfig):
        return replace(cfg, batch_size=cap)
    effective = cfg.batch_size * cfg.grad_accum
    micro = max(m for m in range(1, cap + 1) if effective % m == 0)
    return replace(cfg, batch_size=micro, grad_accum=effective // micro)


def _started_with(cfg: C) -> Optional[C]:
    """`cfg` with the memory settings its run folder's config.json recorded, if it has one."""
    path = Path(cfg.out) / STARTED_WITH
    if not path.is_file():
        return None
    recorded = json.loads(path.read_text(encoding="utf-8"))
    return replace(cfg, **{k: recorded[k] for k in MEMORY_FIELDS
                           if k in recorded and hasattr(cfg, k)})


def _resumed(cfg: C, resume: bool) -> Optional[C]:
    """The settings a resumed run continues with (announced), or None to plan afresh."""
    started = _started_with(cfg) if resume else None
    if started is None:
        return None
    kept = _capped(started)
    s = settings_of(kept)
    print("GPU memory plan: resuming with the run's own settings, micro-batch %d × %d "
          "accumulation%s" % (s.micro_batch, s.grad_accum,
                              " (lowered by %s)" % MEMORY_FILE if kept != started else ""),
          file=sys.stderr, flush=True)
    return kept


def fit_distill(cfg: DistillConfig, family: str, free_bytes: Optional[int],
                bitsandbytes: bool, resume: bool = False
                ) -> Tuple[DistillConfig, Optional[MemoryPlan]]:
    """The run's settings for a GPU with `free_bytes` free (None: no GPU, nothing changes);
    a resumed run keeps those it started with."""
    return _fit(cfg, free_bytes, resume, lambda c: plan_distill(
        free_bytes, family, removal_of(c.preset).name, c.resolution, settings_of(c), bitsandbytes,
        c.objective, bool(c.lora_rank)))


def fit_dreambooth(cfg: DreamBoothConfig, family: str, preset: str, free_bytes: Optional[int],
                   bitsandbytes: bool, resume: bool = False
                   ) -> Tuple[DreamBoothConfig, Optional[MemoryPlan]]:
    return _fit(cfg, free_bytes, resume, lambda c: plan_dreambooth(
        free_bytes, family, preset, c.resolution, settings_of(c), bitsandbytes, c.lora,
        c.train_text_encoder))


def _fit(cfg: C, free_bytes: Optional[int], resume: bool,
         plan_for: Callable[[C], MemoryPlan]) -> Tuple[C, Optional[MemoryPlan]]:
    """What both engines do: nothing without a GPU or with fitting off (but the micro-batch
    cap an out-of-memory error recorded); a resumed run's own settings; else a fresh plan."""
    if free_bytes is None or not cfg.fit_memory:
        return _capped(cfg), None
    resumed = _resumed(cfg, resume)
    if resumed is not None:
        return resumed, None
    cfg = _capped(cfg)
    plan = plan_for(cfg)
    return with_settings(cfg, plan.settings), plan


def announce(plan: Optional[MemoryPlan]) -> None:
    """Show the plan before the run starts (the CLI's and the job log's stderr)."""
    if plan is not None:
        print("GPU memory plan: %s" % plan.describe(), file=sys.stderr, flush=True)


def advice(cfg: Any, bitsandbytes: bool) -> Tuple[str, Optional[int]]:
    """What to lower after an out-of-memory error, and the micro-batch to record (if any)."""
    s = settings_of(cfg)
    if s.micro_batch > 1 and isinstance(cfg, DistillConfig):
        smaller = s.micro_batch // 2
        return ("lower the micro-batch: --batch-size %d --grad-accum %d keeps the effective "
                "batch %d" % (smaller, s.effective_batch // smaller, s.effective_batch), smaller)
    if not s.gradient_checkpointing:
        return "turn gradient checkpointing on (leave out --no-gradient-checkpointing)", None
    if not s.use_8bit_adam:
        how = "" if bitsandbytes else " (pip install bitsandbytes)"
        return "use 8-bit AdamW: --use-8bit-adam%s" % how, None
    if isinstance(cfg, DreamBoothConfig) and not cfg.lora:
        return "train LoRA adapters instead of all weights: --lora", None
    if getattr(cfg, "ema", False):
        return "turn the EMA copy off: --no-ema", None
    return "lower --resolution", None


@contextmanager
def out_of_memory_explained(cfg: Any) -> Iterator[None]:
    """Turn CUDA's out-of-memory error into a BadInput naming the setting to lower."""
    import torch

    try:
        yield
    except torch.cuda.OutOfMemoryError:
        s = settings_of(cfg)
        what, micro = advice(cfg, have_bitsandbytes())
        if micro is not None:
            Path(cfg.out).mkdir(parents=True, exist_ok=True)
            (Path(cfg.out) / MEMORY_FILE).write_text(json.dumps({"max_micro_batch": micro}),
                                                     encoding="utf-8")
            resume = ("resuming (--resume, or Resume in the Jobs tab) continues from the last "
                      "checkpoint, and a run with none yet starts again in the same folder, "
                      "with micro-batch %d (recorded in %s)" % (micro, MEMORY_FILE))
        else:
            resume = ("then resume (--resume) from the last checkpoint, or start again in the "
                      "same folder if there is none yet")
        raise BadInput(
            "%s: out of GPU memory with micro-batch %d × %d, %s%s%s; %s; %s"
            % (cfg.out, s.micro_batch, s.grad_accum, s.mixed_precision,
               ", gradient checkpointing" if s.gradient_checkpointing else "",
               ", 8-bit AdamW" if s.use_8bit_adam else "", what, resume)) from None
