"""Settings of teacher-made training data and how ``--data`` names it, importable without
torch (the CLI builds its help from the defaults; the WebUI checks a form cheaply)."""
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import BadInput
from ..model.ranges import (BATCH, GUIDANCE, IMAGE_SIZE, REQUIRED, SAMPLER_STEPS, SEED, Range,
                            check_ranges, ranged)
from ..model.samplers import DEFAULT_SAMPLER

MARKER = "synth.json"  # in a folder of teacher-made data: its settings, what it depends on
TEACHER_DATA = "teacher:"  # --data teacher:N


# Teacher-made pairs are latents and text embeddings on disk (about 150 KB each at 512²):
# up to 4x the paper's largest training set (2.3M pairs).
SYNTH_COUNT = Range(0, 10_000_000, "teacher-made images")
PREVIEW = Range(0, 1000, "images decoded into the preview, a file each")


@dataclass
class SynthSettings:
    """What a synthetic set is made with (defaults: the issue's fast A1111 sampler)."""

    count: int = ranged(REQUIRED, SYNTH_COUNT)
    prompts: Optional[str] = None  # a SOURCE for prompts.load_prompts; None: built-in
    negative_prompt: str = ""
    cfg_scale: float = ranged(7.5, GUIDANCE)
    steps: int = ranged(20, SAMPLER_STEPS)
    sampler: str = DEFAULT_SAMPLER
    resolution: int = ranged(512, IMAGE_SIZE)
    batch_size: int = ranged(4, BATCH)
    seed: int = ranged(0, SEED)
    preview: int = ranged(16, PREVIEW)  # the first images decoded for the user to look at

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass
class SynthConfig(SynthSettings):
    """A ``bksdm synth`` run: the settings plus the teacher and the run folder (both
    required; the empty defaults only satisfy dataclass field order)."""

    teacher: str = ""
    out: str = ""
    v_prediction: Optional[bool] = None


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
