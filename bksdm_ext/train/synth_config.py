"""Settings of teacher-made training data and how ``--data`` names it, importable without
torch (the CLI builds its flags from them; the WebUI checks a form cheaply)."""
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import BadInput
from ..model.arch import V_PREDICTION
from ..model.samplers import DEFAULT_SAMPLER, SAMPLERS
from ..settings import (BATCH, GUIDANCE, IMAGE_SIZE, REQUIRED, SAMPLER_STEPS, SEED, Range,
                        check_ranges, setting)

MARKER = "synth.json"  # in a folder of teacher-made data: its settings, what it depends on
TEACHER_DATA = "teacher:"  # --data teacher:N


# Teacher-made pairs are latents and text embeddings on disk (about 150 KB each at 512²):
# up to 4x the paper's largest training set (2.3M pairs).
SYNTH_COUNT = Range(0, 10_000_000, "teacher-made images")
PREVIEW = Range(0, 1000, "images decoded into the preview, a file each")


@dataclass
class SynthSettings:
    """What a synthetic set is made with (defaults: the issue's fast A1111 sampler)."""

    count: int = setting(REQUIRED, "number of image/caption pairs (0 with a prompt file: one "
                                   "per prompt)", range=SYNTH_COUNT, required=True)
    # A SOURCE for prompts.load_prompts; None: built-in
    prompts: Optional[str] = setting(
        None, "a .txt file (one prompt a line, cycled with new seeds when shorter than "
              "--count), a folder of .txt captions, a dataset folder, or builtin (default: "
              "seeded, de-duplicated generator)")
    negative_prompt: str = setting("", "negative prompt (default {default})")
    cfg_scale: float = setting(7.5, "classifier-free guidance scale (default {default})",
                               range=GUIDANCE)
    steps: int = setting(20, "sampler steps (default {default})", range=SAMPLER_STEPS)
    sampler: str = setting(DEFAULT_SAMPLER, "%s (default {default})" % ", ".join(SAMPLERS))
    resolution: int = setting(512, "image size (the distillation's training resolution) "
                                   "(default {default})", range=IMAGE_SIZE)
    batch_size: int = setting(4, "images per teacher batch (default {default})", range=BATCH)
    seed: int = setting(0, "seed of image 0 (image i gets seed + i) and of the built-in "
                           "prompts (default {default})", range=SEED)
    # The first images decoded for the user to look at.
    preview: int = setting(16, "first images decoded into samples/preview.png (default "
                               "{default})", range=PREVIEW)

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass
class SynthConfig(SynthSettings):
    """A ``bksdm synth`` run: the settings plus the teacher and the run folder (both
    required; the empty defaults only satisfy dataclass field order)."""

    teacher: str = setting("", "SD-v1/v2 checkpoint (.safetensors/.ckpt)", required=True)
    out: str = setting("", "run folder", required=True)
    v_prediction: Optional[bool] = V_PREDICTION.field(None)


@dataclass
class TrainingData:
    """What a distillation run trains on, from ``--data`` and ``--synthetic``."""

    dataset: Optional[Path]  # a folder of captioned images
    synthetic: int  # pairs the teacher makes first, inside the run
    prompts: Optional[str]  # their prompt source (None: built-in)
    synth_run: Optional[Path]  # a finished ``bksdm synth`` run folder

    def teacher_makes_data(self) -> bool:
        """Whether the run synthesises pairs itself (count 0 with a prompt file: one per
        prompt)."""
        return self.synthetic > 0 or (self.dataset is None and self.synth_run is None)


def training_data(data: str, synthetic: int, prompts: Optional[str]) -> TrainingData:
    """Read ``--data``: a dataset folder (plus `synthetic` teacher-made pairs when > 0),
    ``teacher:N``, a .txt prompt file (one teacher-made pair per prompt, or `synthetic`),
    or a ``bksdm synth`` run folder."""
    if synthetic < 0:
        raise BadInput("--synthetic %d: give a number of teacher-made pairs >= 0" % synthetic)
    if data.startswith(TEACHER_DATA):
        count = data[len(TEACHER_DATA):]
        if not re.fullmatch("[0-9]+", count) or int(count) < 1:
            raise BadInput("--data %s: write teacher:N with N the number of image/caption "
                           "pairs the teacher should make, e.g. teacher:20000" % data)
        SYNTH_COUNT.check("data teacher:N", int(count))
        if synthetic:
            raise BadInput("--data %s and --synthetic %d both give a count; give one"
                           % (data, synthetic))
        return TrainingData(None, int(count), prompts, None)
    path = Path(data)
    if path.is_file() and path.suffix.lower() == ".txt":
        if prompts is not None:
            raise BadInput("--data %s is a prompt file and --prompts %s another; give one"
                           % (data, prompts))
        return TrainingData(None, synthetic, str(path), None)  # 0: one pair per prompt
    if (path / MARKER).is_file():
        if synthetic:
            raise BadInput("--data %s is teacher-made data already; drop --synthetic, or give "
                           "a dataset folder to mix with" % data)
        return TrainingData(None, 0, None, path)
    return TrainingData(path, synthetic, prompts, None)
