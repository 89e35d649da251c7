"""Teacher-made training data: the teacher draws the distillation set itself.

Most users who want a small version of their checkpoint have no captioned dataset.  Here
the teacher samples images from prompts (prompts.py) with a fast sampler and the result
goes straight into the training cache as latents plus the prompts' text embeddings: the
trainer never decodes and re-encodes them through the VAE (only a small preview is decoded,
for the user to look at).  Image ``i`` always gets prompt ``i`` and seed ``seed + i`` and
batches start at multiples of the batch size, so a run resumed after a kill makes the
same cache as an uninterrupted one, with no duplicates and no gaps.

A folder of teacher-made data holds ``synth.json`` (settings and the fingerprint of what
the images depend on), ``prompts.txt`` (prompt i on line i), ``cache/`` (a LatentCache of
added examples, std zero) and ``samples/preview.png``.  ``bksdm synth`` makes one as a job
of its own; ``bksdm distill --data teacher:N`` makes one inside the distillation run.
"""
import json
import math
import os
from dataclasses import asdict, dataclass, fields, replace
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch

from ..model.checkpoint import Checkpoint
from ..model.detect import ModelInfo, inspect_checkpoint
from ..errors import BadInput, Stopped
from ..jobs.events import EventLog
from ..model.generation import make_pipeline
from .latent_cache import LatentCache, teacher_identity
from ..model.loading import latent_scale, load_unet, load_vae
from .prompts import BUILTIN, PromptSet, load_prompts
from .skeleton import SpeedMeter
from ..jobs.runs import RunPaths, event, failures_reported, progress_bar
from ..model.samplers import SAMPLERS
from .synth_config import MARKER, SynthConfig, SynthSettings
from ..model.text_encoding import text_encoder_fn

PROMPTS_FILE = "prompts.txt"
STATE_FILE = "synth_state.json"
EXAMPLE_PROMPTS = 5


@dataclass
class SynthPlan:
    """A synthetic set before it is made: settings, prompts, and the teacher they go to."""

    settings: SynthSettings
    prompts: PromptSet
    teacher: str  # teacher_identity of the checkpoint
    parameterization: str

    def prompt(self, index: int) -> str:
        return self.prompts.prompt(index)

    def seed(self, index: int) -> int:
        return self.settings.seed + index

    def fingerprint(self) -> Dict[str, str]:
        """Everything the images depend on: change any and the cache is made again."""
        s = self.settings
        return {"synthetic": "teacher", "teacher": self.teacher,
                "parameterization": self.parameterization, "prompts": self.prompts.digest(),
                "count": str(s.count), "seed": str(s.seed), "sampler": s.sampler,
                "steps": str(s.steps), "cfg_scale": repr(float(s.cfg_scale)),
                "negative_prompt": s.negative_prompt, "resolution": str(s.resolution)}

    def description(self) -> Dict[str, Any]:
        """For events, synth.json and the UI: where the prompts come from, and whether a
        short list is cycled (each repeat with another seed)."""
        count = self.settings.count
        cycled = self.prompts.cycled(count)
        return {"prompt_source": self.prompts.description,
                "distinct_prompts": min(len(self.prompts.prompts), count),
                "cycled": cycled,
                "note": ("{:,} prompts for {:,} images: each prompt is used about {} times, "
                         "with a different seed each time".format(
                             len(self.prompts.prompts), count,
                             math.ceil(count / len(self.prompts.prompts))) if cycled else "")}


def plan_synthesis(ckpt: Checkpoint, info: ModelInfo, settings: SynthSettings) -> SynthPlan:
    """Check the settings and read the prompts (BadInput, before any model loads).  A
    count of 0 with a prompt file means one image per prompt."""
    s = SynthSettings(**{f.name: getattr(settings, f.name) for f in fields(SynthSettings)})
    if s.sampler not in SAMPLERS:
        raise BadInput("unknown sampler '%s'; one of: %s" % (s.sampler, ", ".join(SAMPLERS)))
    if s.count == 0 and (s.prompts is None or s.prompts == BUILTIN):
        raise BadInput("say how many images the teacher should make (e.g. teacher:20000, "
                       "--count or --synthetic); the built-in prompts never run out")
    prompts = load_prompts(s.prompts, s.count, s.seed)
    if s.count == 0:
        s = replace(s, count=len(prompts.prompts))
    return SynthPlan(s, prompts, teacher_identity(ckpt.path), info.parameterization)


class TeacherSampler:
    """Prompts and seeds -> the teacher's latents (VAE scale, as the cache keeps them) and
    the prompts' text embeddings; decodes latents for the preview."""

    def __init__(self, ckpt: Checkpoint, info: ModelInfo, unet: torch.nn.Module,
                 settings: SynthSettings, device: torch.device) -> None:
        self.settings, self.device = settings, device
        self.dtype = next(unet.parameters()).dtype  # fp16 on a GPU: VAE follows
        self.encode = text_encoder_fn(ckpt, info, device)
        self.negative = self.encode([settings.negative_prompt])
        self.vae = load_vae(ckpt).to(device, self.dtype).eval()
        self.pipe = make_pipeline(unet, self.vae, info, settings.sampler)
        self.scale = latent_scale(info)

    @torch.no_grad()
    def latents(self, prompts: List[str], seeds: List[int]) -> Tuple[torch.Tensor, torch.Tensor]:
        """([n, C, h, w] float32 CPU latents / scale, [n, 77, D] embeddings).  Each image's
        starting noise comes from its own seed, whatever batch it is in."""
        embeddings = self.encode(prompts)
        n, size = len(prompts), self.settings.resolution
        latents = self.pipe(prompt_embeds=embeddings.to(self.device, self.dtype),
                            negative_prompt_embeds=self.negative.expand(n, -1, -1)
                            .to(self.device, self.dtype),
                            height=size, width=size, num_inference_steps=self.settings.steps,
                            guidance_scale=self.settings.cfg_scale, output_type="latent",
                            generator=[torch.Generator().manual_seed(s) for s in seeds]).images
        return latents.float().cpu() / self.scale, embeddings

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> Any:
        """One [C, h, w] latent (VAE scale) -> a PIL image."""
        from PIL import Image

        image = self.vae.decode(latent[None].to(self.device, self.dtype)).sample[0].float()
        pixels = ((image.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return Image.fromarray(pixels.permute(1, 2, 0).cpu().numpy())


class SynthFolder:
    """Where a synthetic set lives (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.marker = self.root / MARKER
        self.prompts = self.root / PROMPTS_FILE
        self.cache = self.root / "cache"
        self.previews = self.root / "samples" / "preview"
        self.grid = self.root / "samples" / "preview.png"

    def record(self) -> Dict[str, Any]:
        try:
            return json.loads(self.marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise BadInput("%s: no readable %s; not a folder of teacher-made data (make one "
                           "with bksdm synth)" % (self.root, MARKER)) from None

    def open_cache(self) -> LatentCache:
        return LatentCache(self.cache, self.record()["fingerprint"])

    def write_plan(self, plan: SynthPlan) -> None:
        """synth.json and prompts.txt; written whole (temporary name, then renamed)."""
        self.root.mkdir(parents=True, exist_ok=True)
        record = dict(plan.description(), format=1, teacher=plan.teacher,
                      settings=asdict(plan.settings), fingerprint=plan.fingerprint())
        lines = "".join(plan.prompt(i) + "\n" for i in range(plan.settings.count))
        for path, text in ((self.prompts, lines), (self.marker, json.dumps(record, indent=1))):
            temporary = path.with_name(path.name + ".tmp")
            temporary.write_text(text, encoding="utf-8")
            os.replace(str(temporary), str(path))

    def preview_path(self, index: int) -> Path:
        return self.previews / ("%05d.png" % index)

    def missing_previews(self, count: int) -> List[int]:
        return [i for i in range(count) if not self.preview_path(i).is_file()]

    def write_grid(self, count: int) -> Optional[Path]:
        """The first `count` previews in a near-square grid, once all of them exist."""
        from PIL import Image

        paths = [self.preview_path(i) for i in range(count)]
        if not count or not all(p.is_file() for p in paths):
            return None
        images = [Image.open(p) for p in paths]
        columns = math.ceil(math.sqrt(count))
        width, height = images[0].size
        grid = Image.new("RGB", (columns * width, math.ceil(count / columns) * height), "white")
        for i, image in enumerate(images):
            grid.paste(image, ((i % columns) * width, (i // columns) * height))
        temporary = self.grid.with_name(".preview.png.tmp")
        grid.save(temporary, format="PNG")
        os.replace(str(temporary), str(self.grid))
        return self.grid


def synthesize(folder: SynthFolder, plan: SynthPlan, make_sampler: Callable[[], TeacherSampler],
               paths: RunPaths, log: Optional[EventLog], job: bool) -> LatentCache:
    """Make the images of `plan` not in `folder`'s cache yet; returns the cache.

    Writes ``synth`` events (done, total, images_s, eta_s) and a ``samples`` event when the
    preview grid is complete; as a job of its own (`job`) also ``step`` events for the
    generic progress bar and a ``checkpoints/step-N`` marker after each batch.  The run is
    marked resumable before the first batch, so a kill that lands between a batch's cache
    shard and its marker (or the distillation's first checkpoint) loses nothing either.
    A STOP file stops it between batches: every finished batch is kept, so a stop always
    saves.
    """
    folder.write_plan(plan)
    cache = LatentCache(folder.cache, plan.fingerprint())
    total, batch_size = plan.settings.count, plan.settings.batch_size
    preview = min(plan.settings.preview, total)
    first = len(cache)
    if first >= total and not folder.missing_previews(preview) and (
            folder.grid.is_file() or not preview):
        return cache
    paths.mark_resumable()  # from the first shard on, a kill anywhere leaves work to keep
    sampler = make_sampler()
    # A kill between a batch and its previews leaves some to make from the cache.
    _fill_previews(folder, cache, sampler, min(first, preview), log, grid_at=preview)
    bar = progress_bar(total, first, True, "teacher making training data")
    meter = SpeedMeter(first, total, rate="images_s")
    for start in range(first, total, batch_size):
        indices = list(range(start, min(start + batch_size, total)))
        prompts = [plan.prompt(i) for i in indices]
        latents, embeddings = sampler.latents(prompts, [plan.seed(i) for i in indices])
        cache.add_batch(latents, torch.zeros_like(latents), embeddings, prompts)
        done = indices[-1] + 1
        bar.update(len(indices))
        figures = meter.figures(done)
        event(log, "synth", done=done, total=total, **figures)
        if job:
            event(log, "step", step=done, total=total, **figures)
            _mark(paths, done)
        if start < preview:
            _fill_previews(folder, cache, sampler, min(done, preview), log,
                           grid_at=preview)
        request = paths.take_stop_request() if done < total else ""
        if request:
            bar.close()
            event(log, "stopped", step=done, saved=True)
            raise Stopped("stopped after {:,} of {:,} images; they are kept, continue with "
                          "--resume".format(done, total))
    bar.close()
    return cache


def _fill_previews(folder: SynthFolder, cache: LatentCache, sampler: TeacherSampler, made: int,
                   log: Optional[EventLog], grid_at: int = 0) -> None:
    """Decode the previews of the first `made` images that have none yet, from the cache
    (so a resumed run's previews are pixel for pixel an uninterrupted run's); only these
    few pass through the VAE.  Once `grid_at` previews exist, the grid is written."""
    for index in folder.missing_previews(made):  # one at a time: a 512 px decode is large
        folder.previews.mkdir(parents=True, exist_ok=True)
        image = sampler.decode(cache.item(index)["mean"])
        path = folder.preview_path(index)
        temporary = path.with_name("." + path.name + ".tmp")
        image.save(temporary, format="PNG")
        os.replace(str(temporary), str(path))
    grid = folder.write_grid(grid_at) if grid_at and made >= grid_at else None
    if grid is not None:
        event(log, "samples", step=made, path=str(grid))


def _mark(paths: RunPaths, done: int) -> None:
    """checkpoints/step-N (N images made): the run protocol's resume point.  The cache is
    what counts (a resumed run continues from the images it holds); the marker tells the
    job runner how far the run came."""
    paths.write_checkpoint(done, lambda folder: (folder / STATE_FILE).write_text(
        json.dumps({"done": done}), encoding="utf-8"), keep_last=1)


# -- the synth job ------------------------------------------------------------------


def synth(cfg: SynthConfig, resume: bool = False) -> Path:
    """``bksdm synth``: make `cfg.count` pairs into the run folder; returns the folder."""
    paths = RunPaths(Path(cfg.out))
    with failures_reported(paths.out):
        ckpt = Checkpoint(cfg.teacher)
        info = inspect_checkpoint(ckpt, cfg.v_prediction)
        plan = plan_synthesis(ckpt, info, cfg)
        start_point = paths.resume_point(resume)
        folder = SynthFolder(paths.out)
        if resume:
            _same_plan(folder, plan)
        paths.out.mkdir(parents=True, exist_ok=True)
        log = EventLog(paths.events)
        event(log, "start", kind="synth", teacher=str(ckpt.path), family=info.family,
              parameterization=info.parameterization, count=plan.settings.count,
              settings=asdict(plan.settings), resumed_from=str(start_point) if start_point
              else None, **plan.description())
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.float16 if device.type == "cuda" else torch.float32

        def make_sampler() -> TeacherSampler:
            unet = load_unet(ckpt, info).to(device, dtype).requires_grad_(False).eval()
            return TeacherSampler(ckpt, info, unet, plan.settings, device)

        cache = synthesize(folder, plan, make_sampler, paths, log, job=True)
        event(log, "done", step=len(cache), output=str(paths.out), made=len(cache),
              preview=str(folder.grid) if folder.grid.is_file() else None)
        return paths.out


def _same_plan(folder: SynthFolder, plan: SynthPlan) -> None:
    """--resume continues the same set; other settings would silently mix two sets."""
    stored = folder.record().get("fingerprint", {})
    changed = sorted(key for key, value in plan.fingerprint().items() if stored.get(key) != value)
    if changed:
        raise BadInput("%s was made with other settings (%s differ); resume with the same ones "
                       "or choose another --out" % (folder.root, ", ".join(changed)))


# -- reading teacher-made data --------------------------------------------------------


def finished_synthetic_cache(folder: Path) -> LatentCache:
    """The cache of a finished ``bksdm synth`` run, for ``--data RUN_DIR``."""
    synth_folder = SynthFolder(folder)
    cache = synth_folder.open_cache()
    wanted = synth_folder.record()["settings"]["count"]
    if len(cache) < wanted:
        raise BadInput("{}: the teacher made {:,} of {:,} images; finish it first (bksdm synth "
                       "... --out {} --resume)".format(folder, len(cache), wanted, folder))
    return cache


def synth_summary(run_or_cache_dir: Union[str, Path]) -> Dict[str, Any]:
    """What the UI shows about teacher-made data: counts made and wanted, where the prompts
    came from and a few of them, the preview grid and the sampler settings.  Takes a
    ``bksdm synth`` run folder, the synthetic folder itself, or a distillation run folder
    (its cache's ``synthetic/``)."""
    folder = SynthFolder(_find_synth_folder(Path(run_or_cache_dir)))
    record = folder.record()
    settings = record["settings"]
    with open(folder.prompts, encoding="utf-8") as lines:
        examples = [line.rstrip("\n") for line in islice(lines, EXAMPLE_PROMPTS)]
    return {"folder": str(folder.root), "made": len(folder.open_cache()),
            "wanted": settings["count"], "prompt_source": record["prompt_source"],
            "distinct_prompts": record["distinct_prompts"], "cycled": record["cycled"],
            "note": record["note"], "example_prompts": examples,
            "preview": str(folder.grid) if folder.grid.is_file() else None,
            "teacher": record["teacher"],
            **{key: settings[key] for key in ("sampler", "steps", "cfg_scale", "negative_prompt",
                                              "resolution", "seed")}}


def _find_synth_folder(path: Path) -> Path:
    candidates = [path, path / "cache" / "synthetic"]
    config = path / "config.json"
    if config.is_file():
        cache_dir = json.loads(config.read_text(encoding="utf-8")).get("cache_dir")
        if cache_dir:
            candidates.append(Path(cache_dir) / "synthetic")
    for candidate in candidates:
        if (candidate / MARKER).is_file():
            return candidate
    raise BadInput("%s: no teacher-made data here (no %s)" % (path, MARKER))
