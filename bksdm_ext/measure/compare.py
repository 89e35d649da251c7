"""Teacher and students side by side: scores per model, the labelled grid and the CSV,
whoever made the images (diffusers in `bksdm eval`, A1111's txt2img in the Compare tab).

Every model renders the same (prompt, seed) cases; a student's image is compared with the
teacher's image of the same case.  The teacher is the first model whose preset is
"teacher", else the first model.
"""
import csv
import math
import statistics
import textwrap
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..model.staging import staged
from ..scores.agreement import agreement, to_tensor
from ..scores.clip import HOW_TO_ENABLE, ClipScorer
from ..scores.fid import FidScorer

# One line per score, shown under the table and in `bksdm eval --help`.
EXPLANATIONS = {
    "PSNR": "agreement with the teacher's image for the same prompt and seed, in dB "
            "(higher is closer; inf: identical)",
    "SSIM": "structural similarity with the teacher's image (1: identical, 0: unrelated)",
    "CLIP": "CLIP score: how well the image matches its prompt, 100 x cosine of CLIP's "
            "image and text embeddings (the paper's text-image metric; higher is better)",
    "s/image": "seconds per image while these images were made (median)",
}
# `bksdm eval --fid-reference` only (the WebUI shows no FID).
FID_EXPLANATION = ("Fréchet Inception distance of the model's images to the reference "
                   "folder's (lower is closer; biased on few images: compare models only at "
                   "equal image counts)")
CSV_COLUMNS = ("model", "preset", "sampler", "steps", "cfg_scale", "unet_params", "images", "seconds_per_image", "psnr", "ssim",
               "clip_score", "clip_model")

Case = Tuple[str, int]  # (prompt, seed)
# The grid shows the first cases only (the scores cover all): 100 rows of 256 px, where a
# 30,000-image evaluation would need a 7.7-gigapixel canvas.
GRID_ROWS = 100


@dataclass
class ModelImages:
    """What one model made: an image per case, in the cases' order."""

    model: str
    preset: str
    unet_params: int
    images: List[Any]  # PIL images
    seconds: List[float] = field(default_factory=list)  # per image, when timed
    # The draw point: the sampler as whoever drew names it (diffusers' table or A1111).
    sampler: str = ""
    steps: Optional[int] = None
    cfg_scale: Optional[float] = None


@dataclass
class ModelScores:
    model: str
    preset: str
    unet_params: int
    images: int
    seconds_per_image: Optional[float]
    psnr: float
    ssim: float
    clip_score: Optional[float] = None
    clip_model: str = ""
    fid: Optional[float] = None
    sampler: str = ""
    steps: Optional[int] = None
    cfg_scale: Optional[float] = None

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)


def teacher_index(runs: Sequence[ModelImages]) -> int:
    return next((i for i, run in enumerate(runs) if run.preset == "teacher"), 0)


def score_models(runs: Sequence[ModelImages], cases: Sequence[Case],
                 clip: Optional[ClipScorer] = None,
                 fid: Optional[FidScorer] = None) -> List[ModelScores]:
    """PSNR and SSIM of every model's images against the teacher's, and the CLIP score of
    each image with its prompt when a CLIP model is given; averaged per model.  With `fid`,
    the FID of each model's images against its reference folder."""
    reference = runs[teacher_index(runs)].images
    prompts = [prompt for prompt, _ in cases]
    results = []
    for run in runs:
        if len(run.images) != len(cases):
            raise ValueError("%s made %d images for %d cases" % (run.model, len(run.images),
                                                                  len(cases)))
        agree = agreement(run.images, reference)
        results.append(ModelScores(
            model=run.model, preset=run.preset, unet_params=run.unet_params,
            images=len(run.images),
            seconds_per_image=statistics.median(run.seconds) if run.seconds else None,
            psnr=agree["psnr"], ssim=agree["ssim"],
            clip_score=(float(clip.score(to_tensor(run.images), prompts).mean())
                        if clip is not None else None),
            clip_model=clip.name if clip is not None else "",
            fid=fid.score(run.images) if fid is not None else None,
            sampler=run.sampler, steps=run.steps, cfg_scale=run.cfg_scale))
    return results


def grid(runs: Sequence[ModelImages], cases: Sequence[Case], cell: int = 256) -> Any:
    """Rows: prompt × seed (the first GRID_ROWS); columns: models, each headed by its name.
    Images are shown at `cell` px so that a large set stays a viewable file."""
    from PIL import Image, ImageDraw

    label_width, header = 220, 28
    shown = list(cases[:GRID_ROWS])
    canvas = Image.new("RGB", (label_width + cell * len(runs), header + cell * len(shown)),
                       "white")
    draw = ImageDraw.Draw(canvas)
    if len(shown) < len(cases):
        draw.text((4, 8), "first %d of %s cases" % (len(shown), format(len(cases), ",")),
                  fill="black")
    for column, run in enumerate(runs):
        draw.text((label_width + column * cell + 4, 8), "%s (%s)" % (run.model, run.preset)
                  [: cell // 6], fill="black")
        for row, image in enumerate(run.images[:len(shown)]):
            canvas.paste(image.convert("RGB").resize((cell, cell)),
                         (label_width + column * cell, header + row * cell))
    for row, (prompt, seed) in enumerate(shown):
        lines = textwrap.wrap(prompt, 34)[: max(1, cell // 14 - 2)] + ["seed %d" % seed]
        draw.multiline_text((4, header + row * cell + 4), "\n".join(lines), fill="black")
    return canvas


def write_grid(image: Any, path: Path, overwrite: bool = False) -> Path:
    with staged([Path(path)], overwrite) as (temp,):
        image.save(temp, format="PNG")
    return Path(path)


def write_csv(scores: Sequence[ModelScores], path: Path, overwrite: bool = False,
              extra: Optional[Dict[str, Any]] = None) -> Path:
    """One row per model; `extra` (settings, time, device) is repeated on every row."""
    extra = extra or {}
    with staged([Path(path)], overwrite) as (temp,):
        with open(temp, "w", newline="", encoding="utf-8") as f:
            columns = CSV_COLUMNS + (("fid",) if _has_fid(scores) else ())
            writer = csv.DictWriter(f, list(extra) + list(columns))
            writer.writeheader()
            for row in scores:
                writer.writerow(dict(extra, **csv_row(row, columns)))
    return Path(path)


def csv_row(row: ModelScores, columns: Sequence[str] = CSV_COLUMNS) -> Dict[str, Any]:
    values = row.as_dict()
    return {key: _rounded(values[key]) for key in columns}


def _has_fid(scores: Sequence[ModelScores]) -> bool:
    """Whether FID was asked for (`bksdm eval --fid-reference`): only then is there a column."""
    return any(r.fid is not None for r in scores)


def _rounded(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return "inf" if math.isinf(value) else round(value, 4)
    return value


def table_rows(scores: Sequence[ModelScores]) -> List[List[Any]]:
    """What the Compare tab and `bksdm eval` show: model, preset, draw point, U-Net params,
    s/image, PSNR, SSIM, CLIP score (or how to get one)."""
    return [[r.model, r.preset, r.sampler, _rounded(r.steps), _rounded(r.cfg_scale),
             format(r.unet_params, ","),
             "-" if r.seconds_per_image is None else "%.3f" % r.seconds_per_image,
             "inf" if math.isinf(r.psnr) else "%.2f" % r.psnr, "%.4f" % r.ssim,
             "-" if r.clip_score is None else "%.2f" % r.clip_score] for r in scores]


HEADERS = ["model", "preset", "sampler", "steps", "CFG", "U-Net params", "s/image", "PSNR (dB)", "SSIM", "CLIP score"]


def table(scores: Sequence[ModelScores]) -> str:
    """The CLI's table: the Compare tab's columns, and FID when it was asked for."""
    if _has_fid(scores):
        rows = [HEADERS + ["FID"]] + [row + ["%.2f" % r.fid] for row, r in
                                      zip(table_rows(scores), scores)]
    else:
        rows = [HEADERS] + table_rows(scores)
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip()
             for row in rows]
    if all(r.clip_score is None for r in scores):
        lines.append("CLIP score: " + HOW_TO_ENABLE)
    return "\n".join(lines)
