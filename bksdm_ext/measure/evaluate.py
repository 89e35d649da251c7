"""`bksdm eval`: teacher and students render the same prompts and seeds with diffusers,
then are scored (compare.py).  Each model draws at its own point (``MODEL@SAMPLER:STEPS[:CFG]``;
a few-step student whose metadata recommends one, at that; else the settings' sampler and
steps), so a 4-step LCM student is compared with the teacher at its 25 steps.  As a background job (the Compare tab's larger sets) the run
folder gets the runner's event file, the grid, the CSV and the scores as JSON.
"""
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ..errors import BadInput
from ..jobs.events import EventLog, start_event
from ..jobs.runs import RunPaths, event, failures_reported, progress_bar, stop_run
from ..model.safetensors_io import SafetensorsReader
from ..model.samplers import DEFAULT_SAMPLER, SAMPLERS, DrawPoint
from ..model.staging import check_writable
from ..scores.clip import ClipScorer, find_scorer
from ..scores.eval_prompts import BUILTIN, cases as make_cases, load_prompts
from ..scores.fid import FidScorer, check_count
from ..settings import GUIDANCE, IMAGE_SIZE, SAMPLER_STEPS, SEED, Range, check_ranges, setting
from .compare import Case, ModelImages, ModelScores, grid, score_models, write_csv, write_grid
from .latency import load_pipeline


# Every model's images are kept until they are scored: a comparison in the WebUI's own
# process holds at most this many pixels (1,024 images of 512², 0.8 GB), a larger one runs
# as a job; and no model renders more than the paper's FID sample (30,000 images).
PIXELS_IN_THE_WEBUI = 1024 * 512 * 512
MAX_IMAGES = 30_000


@dataclass
class EvalSettings:
    """What every model renders; the generation defaults are the Latency tab's (the
    paper's Orin setup: 20 steps DPM++ 2M Karras, 512², CFG 7)."""

    prompts: str = setting(BUILTIN, "a .txt file (one prompt a line) or builtin (30 varied "
                                    "prompts; default)")
    seeds: int = setting(1, "seeds per prompt (default {default})", label="Seeds per prompt",
                         range=Range(1, 1000, "seeds per prompt"))
    seed: int = setting(0, "the first seed", range=SEED)
    steps: int = setting(20, range=SAMPLER_STEPS, label="Steps")
    sampler: str = setting(DEFAULT_SAMPLER, choices=list(SAMPLERS))
    size: int = setting(512, range=IMAGE_SIZE, label="Width = height")
    cfg_scale: float = setting(7.0, range=GUIDANCE, label="CFG scale")
    negative_prompt: str = setting("")

    def __post_init__(self) -> None:
        check_ranges(self)

    def cases(self) -> List[Case]:
        return self.cases_of(load_prompts(self.prompts))

    def cases_of(self, prompts: Sequence[str]) -> List[Case]:
        """Every (prompt, seed), at most MAX_IMAGES of them."""
        if len(prompts) * self.seeds > MAX_IMAGES:
            raise BadInput("%s prompts x %s seeds is %s images per model; at most %s: use "
                           "fewer prompts or seeds" % tuple(format(n, ",") for n in (
                               len(prompts), self.seeds, len(prompts) * self.seeds, MAX_IMAGES)))
        return make_cases(prompts, self.seeds, self.seed)

    def check_in_the_webui(self, models: int, cases: int) -> None:
        """BadInput when rendering here would keep more than PIXELS_IN_THE_WEBUI."""
        images = models * cases
        if images * self.size ** 2 > PIXELS_IN_THE_WEBUI:
            raise BadInput("%d checkpoints x %d images at %d px are more than a comparison in "
                           "the WebUI keeps (%s images at 512 px): run it as a background job, "
                           "or use fewer prompts, seeds or pixels"
                           % (models, cases, self.size,
                              format(PIXELS_IN_THE_WEBUI // 512 ** 2, ",")))


@dataclass(frozen=True)
class ModelAt:
    """A model of the comparison, the point it draws at (its CFG scale filled in) and why
    there: "given" (``MODEL@POINT``), "recommended" (its metadata) or "settings"."""

    path: Path
    point: DrawPoint
    chosen_by: str

    def note(self) -> Optional[str]:
        """What the output says of a point the user did not type."""
        if self.chosen_by != "recommended":
            return None
        return ("%s: drawn at %s, the point its metadata recommends (%s@SAMPLER:STEPS[:CFG] "
                "draws it elsewhere)" % (self.path.name, self.point.describe(), self.path.name))


def split_model(text: str) -> Tuple[str, Optional[DrawPoint]]:
    """``MODEL`` or ``MODEL@SAMPLER:STEPS[:CFG]``; a file whose own name holds an @ is taken
    whole.  BadInput for a bad point."""
    if "@" not in text or Path(text).is_file():
        return text, None
    model, point = text.rsplit("@", 1)
    try:
        return model, DrawPoint.parse(point)
    except BadInput as e:
        raise BadInput("%s: %s" % (text, e)) from None


def recommended_point(path: Path) -> Optional[DrawPoint]:
    """The point a .safetensors file's metadata recommends (an LCM student's), if any."""
    if path.suffix.lower() != ".safetensors" or not path.is_file():
        return None
    return DrawPoint.from_metadata(SafetensorsReader(path).metadata)


def model_at(path: Path, given: Optional[DrawPoint], settings: EvalSettings) -> ModelAt:
    """Where a model draws: its given point, else its recommended one, else the settings';
    the CFG scale the settings' where the point names none."""
    point, chosen_by = given, "given"
    if point is None:
        point, chosen_by = recommended_point(path), "recommended"
    if point is None:
        point, chosen_by = DrawPoint(settings.sampler, settings.steps), "settings"
    if point.cfg_scale is None:
        point = DrawPoint(point.sampler, point.steps, settings.cfg_scale)
    return ModelAt(path, point, chosen_by)


def models_at(models: Sequence[str], settings: EvalSettings) -> List[ModelAt]:
    """`bksdm eval`'s model list (``MODEL[@SAMPLER:STEPS[:CFG]]``), each where it draws."""
    return [model_at(Path(name), point, settings)
            for name, point in (split_model(text) for text in models)]


def render(model: ModelAt, cases: Sequence[Case], settings: EvalSettings, device: torch.device,
           on_image: Callable[[], None]) -> ModelImages:
    """One model's image per case at its point, each timed (the GPU synchronised)."""
    point = model.point
    pipe, info = load_pipeline(model.path, point.sampler, device)
    run = ModelImages(model=model.path.name, preset=info.preset, unet_params=info.unet_params,
                      images=[], sampler=point.sampler, steps=point.steps,
                      cfg_scale=point.cfg_scale)
    for prompt, seed in cases:
        started = time.perf_counter()
        image = pipe(prompt, negative_prompt=settings.negative_prompt or None,
                     height=settings.size, width=settings.size,
                     num_inference_steps=point.steps, guidance_scale=point.cfg_scale,
                     generator=torch.Generator().manual_seed(seed)).images[0]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        run.seconds.append(time.perf_counter() - started)
        run.images.append(image)
        on_image()
    del pipe
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return run


def evaluate(models: Sequence[ModelAt], settings: EvalSettings, clip: Optional[ClipScorer] = None,
             on_image: Callable[[int, int], None] = lambda done, total: None,
             device: Optional[torch.device] = None, fid: Optional[FidScorer] = None
             ) -> Tuple[List[Case], List[ModelImages], List[ModelScores]]:
    """Render every case with every model (the teacher first is clearest), then score
    (FID too when `fid` holds a reference folder)."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cases = settings.cases()
    total, done = len(cases) * len(models), [0]

    def count() -> None:
        done[0] += 1
        on_image(done[0], total)

    runs = [render(model, cases, settings, device, count) for model in models]
    return cases, runs, score_models(runs, cases, clip, fid)


def evaluate_run(models: Sequence[ModelAt], settings: EvalSettings, out: Path,
                 clip_model: Optional[str] = None, fid_reference: Optional[Path] = None,
                 fid_weights: Optional[Path] = None, clip_folders: Sequence[Path] = ()
                 ) -> Tuple[List[ModelScores], Path, Path]:
    """The background job: ``out`` gets events.jsonl (an event per image, so the Jobs tab
    shows progress and ETA; STOP ends it), grid.png, scores.csv and scores.json (with FID
    against `fid_reference` when it is given)."""
    paths = RunPaths(Path(out))
    paths.out.mkdir(parents=True, exist_ok=True)
    with failures_reported(paths.out):
        log = EventLog(paths.events)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        clip = find_scorer(clip_model, device, folders=clip_folders)
        fid = (FidScorer.load(Path(fid_reference), fid_weights, device)
               if fid_reference is not None else None)
        cases = settings.cases()
        event(log, "start", **start_event(len(cases) * len(models)),
              models=[str(m.path) for m in models],
              points=[dict(asdict(m.point), chosen_by=m.chosen_by) for m in models],
              settings=asdict(settings), clip_model=clip.name if clip else None,
              **fid_columns(fid))
        started = time.perf_counter()

        def progress(done: int, total: int) -> None:
            rate = done / (time.perf_counter() - started)
            event(log, "step", step=done, it_s=round(rate, 4),
                  eta_s=round((total - done) / rate, 1))
            request = paths.take_stop_request()
            if request and done < total:
                stop_run("discard", done, lambda: None, log, progress_bar(total, enabled=False))

        cases, runs, scores = evaluate(models, settings, clip, progress, device, fid)
        grid_path = write_grid(grid(runs, cases), paths.out / "grid.png", overwrite=True)
        csv_path = write_csv(scores, paths.out / "scores.csv", overwrite=True,
                             extra=dict(_settings_columns(settings), **fid_columns(fid)))
        (paths.out / "scores.json").write_text(json.dumps([s.as_dict() for s in scores],
                                                          indent=2))
        event(log, "done", step=len(cases) * len(models), output=str(grid_path),
              csv=str(csv_path), scores=[s.as_dict() for s in scores])
    return scores, grid_path, csv_path


def compare(models: Sequence[str], settings: EvalSettings, clip_model: Optional[str] = None,
            fid_reference: Optional[str] = None, fid_weights: Optional[str] = None,
            out: Optional[Path] = None, grid_file: Optional[Path] = None,
            csv_file: Optional[Path] = None, overwrite: bool = False,
            say: Callable[[str], None] = lambda text: None,
            clip_folders: Sequence[Path] = ()) -> Dict[str, Any]:
    """``bksdm eval``: the scores (and the grid and CSV written) as a dict; with `out` as
    the background job (`evaluate_run`).  Wrong settings are refused before any model
    loads; so is a bad draw point.  Without `clip_model` a CLIP already on the machine (or
    in `clip_folders`) scores, if one is readable."""
    chosen = models_at(models, settings)
    notes = [note for note in (m.note() for m in chosen) if note]
    cases = settings.cases()  # a bad prompt file fails before any model loads
    if fid_weights and not fid_reference:
        raise BadInput("--fid-weights is for FID: give --fid-reference DIR too")
    if fid_reference:
        check_count(len(cases), "each model makes %d image(s) (prompts x --seeds)" % len(cases))
    if out is not None:
        scores, grid_path, csv_path = evaluate_run(chosen, settings, out, clip_model,
                                                   fid_reference, fid_weights, clip_folders)
        return {"results": [s.as_dict() for s in scores], "grid": str(grid_path),
                "csv": str(csv_path), "notes": notes}
    check_writable([p for p in (grid_file, csv_file) if p], overwrite)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    clip = find_scorer(clip_model, device, say, clip_folders)
    fid = (FidScorer.load(Path(fid_reference), fid_weights, device, say)
           if fid_reference else None)
    cases, runs, scores = evaluate(chosen, settings, clip,
                                   lambda done, total: say("image %d/%d" % (done, total)),
                                   device, fid)
    result: Dict[str, Any] = {"results": [s.as_dict() for s in scores], "notes": notes,
                              **fid_columns(fid)}
    if fid is not None and fid.skipped:
        result["fid_reference_skipped"] = fid.skipped
    if grid_file:
        result["grid"] = str(write_grid(grid(runs, cases), grid_file, overwrite))
    if csv_file:
        result["csv"] = str(write_csv(scores, csv_file, overwrite, extra=fid_columns(fid)))
    return result


def fid_columns(fid: Optional[FidScorer]) -> dict:
    """What a FID value was measured against (values compare only at equal counts)."""
    if fid is None:
        return {}
    return {"fid_reference": str(fid.reference), "fid_reference_images": fid.images}


def _settings_columns(settings: EvalSettings) -> dict:
    return {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "prompts": settings.prompts,
            "seeds": settings.seeds, "size": settings.size}

