"""``bksdm eval``: teacher and students side by side (measure/evaluate.py)."""
import argparse
import sys
from pathlib import Path
from typing import Any, Dict

from ..measure.evaluate import EvalSettings
from .flags import add_clip_folder, add_json, add_settings, settings_from


def add(commands: Any) -> None:
    from ..scores.fid import WEIGHTS_FILE as FID_WEIGHTS_FILE, WEIGHTS_SIZE as FID_WEIGHTS_SIZE

    evaluation = commands.add_parser(
        "eval", help="teacher and students side by side: a labelled grid and scores "
                     "(PSNR/SSIM against the teacher, CLIP score), one row per model",
        description="Every model renders the same prompts and seeds with diffusers; each "
                    "student image is compared with the teacher's for the same prompt and "
                    "seed. Each model draws at its own point: MODEL@SAMPLER:STEPS[:CFG] "
                    "(e.g. teacher.safetensors@euler_a:25 student-lcm.safetensors@lcm:4:1); "
                    "a model without one draws at the point its metadata recommends (a "
                    "consistency-distilled student's; the output says so), else at --sampler, "
                    "--steps and --cfg-scale. CLIP score needs a CLIP model: one already on the machine is "
                    "used (Hugging Face cache, open_clip's LAION models there, A1111's "
                    "interrogator's ViT-L-14.pt), --clip-model names one (downloaded if it "
                    "is not there). FID (--fid-reference) needs torch-fidelity and "
                    "torchmetrics.")
    evaluation.add_argument("models", nargs="+", metavar="MODEL[@SAMPLER:STEPS[:CFG]]",
                            help="A1111 checkpoints, the teacher first; each optionally at "
                                 "its own sampler, steps and CFG scale")
    add_settings(evaluation, EvalSettings)
    evaluation.add_argument("--clip-model", dest="clip_model", default=None,
                            help="a transformers CLIPModel folder, Hugging Face repository "
                                 "(e.g. openai/clip-vit-large-patch14, 1.7 GB, downloaded when "
                                 "not in the cache) or OpenAI/open_clip ViT checkpoint file")
    add_clip_folder(evaluation)
    evaluation.add_argument("--fid-reference", dest="fid_reference", default=None,
                            metavar="DIR",
                            help="FID of each model's images against the images in DIR and "
                                 "its subfolders (.png .jpg .jpeg .webp); compare models only "
                                 "at equal counts (the paper: 30k MS-COCO images). The "
                                 "Inception weights (%s, %s) are downloaded once into "
                                 "torch.hub's cache" % (FID_WEIGHTS_FILE, FID_WEIGHTS_SIZE))
    evaluation.add_argument("--fid-weights", dest="fid_weights", default=None, metavar="FILE",
                            help="a copy of %s to use instead of the download (offline)"
                                 % FID_WEIGHTS_FILE)
    evaluation.add_argument("--grid", default=None, help="write the labelled grid PNG here")
    evaluation.add_argument("--csv", default=None, help="write the scores CSV here")
    evaluation.add_argument("--overwrite", action="store_true",
                            help="replace an existing --grid / --csv file")
    evaluation.add_argument("--out", default=None,
                            help="run folder (background jobs): events.jsonl, grid.png, "
                                 "scores.csv, scores.json")
    add_json(evaluation)
    evaluation.set_defaults(run=run, render=render)


def run(args: argparse.Namespace) -> Dict[str, Any]:
    from ..measure.evaluate import compare

    say = (lambda text: None) if args.json else (lambda text: print(text, file=sys.stderr))
    return compare(args.models, settings_from(args, EvalSettings), args.clip_model,
                   args.fid_reference, args.fid_weights, Path(args.out) if args.out else None,
                   Path(args.grid) if args.grid else None, Path(args.csv) if args.csv else None,
                   args.overwrite, say, args.clip_folders)


def render(result: Dict[str, Any]) -> str:
    from ..measure.compare import EXPLANATIONS, FID_EXPLANATION, ModelScores, table

    lines = list(result.get("notes", []))
    lines.append(table([ModelScores(**r) for r in result["results"]]))
    explanations = dict(EXPLANATIONS)
    if any(r.get("fid") is not None for r in result["results"]):
        explanations["FID"] = FID_EXPLANATION + (
            "; here %d images in %s" % (result["fid_reference_images"], result["fid_reference"])
            if "fid_reference" in result else "")
    lines += ["  %-8s %s" % (name, text) for name, text in explanations.items()]
    lines += ["wrote %s" % result[key] for key in ("grid", "csv") if key in result]
    return "\n".join(lines)
