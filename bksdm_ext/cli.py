"""The ``bksdm`` command line: the same jobs as the WebUI tab, for scripts and labs."""
import argparse
import json
import os
import sys
from typing import Any, Callable, Dict, List, Optional

from . import __version__
from .model.arch import PRESETS, SD_V1
from .model.blocks import describe_presets
from .errors import BadInput, DiskError, Stopped
from .model.samplers import DEFAULT_SAMPLER, SAMPLERS

EXIT_BAD_INPUT = 2
EXIT_STOPPED = 3


def _convert(args: argparse.Namespace) -> Dict[str, Any]:
    from .model.convert import convert_checkpoint

    report = convert_checkpoint(args.source, args.out, args.arch or "teacher", dtype=args.dtype,
                                v_prediction=args.v_prediction, overwrite=args.overwrite,
                                progress=None if args.json else _progress_bar("converting"),
                                remove=args.remove)
    return report.as_dict()


def _info(args: argparse.Namespace) -> Dict[str, Any]:
    from .model.info import describe

    if args.blocks:
        from .model.unit_costs import describe_blocks

        return describe_blocks(args.file, v_prediction=args.v_prediction)
    return describe(args.file, v_prediction=args.v_prediction)


def _import_diffusers(args: argparse.Namespace) -> Dict[str, Any]:
    from .model.diffusers_import import import_diffusers

    return import_diffusers(args.folder, args.out, dtype=args.dtype, overwrite=args.overwrite
                            ).as_dict()


def _transplant(args: argparse.Namespace) -> Dict[str, Any]:
    from .model.transplant import transplant

    return transplant(args.student, args.base, args.finetune, args.out, alpha=args.alpha,
                      dtype=args.dtype, overwrite=args.overwrite,
                      progress=None if args.json else _progress_bar("transplanting")).as_dict()


def _distill(args: argparse.Namespace) -> Dict[str, Any]:
    from dataclasses import fields

    from .train.distill import distill
    from .train.distill_config import DistillConfig

    options = {f.name: getattr(args, f.name) for f in fields(DistillConfig)
               if getattr(args, f.name, None) is not None}
    if args.remove and args.arch is None:
        options["arch"] = "teacher"  # --remove alone cuts the teacher, as in convert
    output = distill(DistillConfig(**options), resume=args.resume)
    result = {"output": str(output), "config": str(output.with_suffix(".yaml")), "run": args.out}
    if args.lora_rank:
        from .train.lcm import lora_file

        result["lora"] = str(lora_file(output))
    return result


def _dreambooth(args: argparse.Namespace) -> Dict[str, Any]:
    from dataclasses import fields

    from .train.dreambooth import dreambooth
    from .train.dreambooth_config import DreamBoothConfig

    options = {f.name: getattr(args, f.name) for f in fields(DreamBoothConfig)
               if getattr(args, f.name, None) is not None}
    output = dreambooth(DreamBoothConfig(**options), resume=args.resume)
    result = {"output": str(output), "config": str(output.with_suffix(".yaml")), "run": args.out}
    lora = output.with_name(output.stem + "-lora.safetensors")
    if args.lora and lora.is_file():
        result["lora"] = str(lora)
    return result


def _synth(args: argparse.Namespace) -> Dict[str, Any]:
    from dataclasses import fields

    from .train.synth import synth, synth_summary
    from .train.synth_config import SynthConfig

    options = {f.name: getattr(args, f.name) for f in fields(SynthConfig)
               if getattr(args, f.name, None) is not None}
    run = synth(SynthConfig(**options), resume=args.resume)
    return dict(synth_summary(run), output=str(run))


def _blocks(args: argparse.Namespace) -> Dict[str, Any]:
    """The sensitivity scan, from the cache when this teacher was scanned with these
    settings (and the CLIP model there is now, if any); with --out (a background job) it
    also writes events, a checkpoint per unit (for --resume), table and chart there."""
    from pathlib import Path

    import torch

    from .errors import Stopped
    from .jobs.events import EventLog
    from .jobs.runs import RunPaths, failures_reported
    from .measure import block_scan
    from .scores.clip import find_scorer, local_model
    settings = block_scan.ScanSettings(steps=args.steps, size=args.size, cfg_scale=args.cfg_scale,
                                       seed=args.seed, groups=not args.no_groups)
    if args.plot and not block_scan.can_plot():  # before the scan's minutes, not after
        raise BadInput("--plot %s: drawing the chart needs matplotlib, which is not installed: "
                       "pip install matplotlib, or leave out --plot (the table, --csv and "
                       "--json need nothing more)" % args.plot)
    if args.prompts:
        settings.prompts = _prompt_lines(Path(args.prompts))
    paths = RunPaths(Path(args.out)) if args.out else None
    log = EventLog(paths.events) if paths else None
    resumed_from = paths.latest_checkpoint() if paths and args.resume else None
    started = False

    def progress(done: int, total: int, unit: str) -> None:
        nonlocal started
        if paths is None:
            return
        if not started:  # a resumed scan starts after the units it had measured
            started = True
            log.write("start", total_steps=total, teacher=args.teacher,
                      resumed_from=str(resumed_from) if resumed_from else None)
        if done < total and paths.take_stop_request():
            log.write("stopped", step=done, saved=done > 0)  # every unit is checkpointed
            raise Stopped("stopped after %d of %d units; %s" % (done, total, (
                "they are kept, continue with --resume" if done else "nothing saved")))
        log.write("step", step=done, total=total, unit=unit)

    with failures_reported(args.out or "."):
        cache = Path(args.cache_dir).expanduser()
        clip_model = args.clip_model or local_model()
        result = block_scan.cached(cache, block_scan.teacher_hash(args.teacher), settings,
                                   clip_model)
        if result is None:
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
            clip = find_scorer(args.clip_model, device,
                               say=lambda text: print(text, file=sys.stderr))
            result = block_scan.scan(args.teacher, settings, progress, device, clip, paths,
                                     args.resume)
            block_scan.save(result, cache)
        written = {}
        csv_path = args.csv or (str(paths.out / "blocks.csv") if paths else None)
        plot_path = args.plot or (str(paths.out / "blocks.png")
                                  if paths and block_scan.can_plot() else None)
        if csv_path:
            written["csv"] = str(block_scan.write_csv(result, Path(csv_path)))
        if plot_path:
            written["plot"] = str(block_scan.plot(result, Path(plot_path)))
        if log is not None:
            log.write("done", output=written.get("plot", ""), **written)
    return dict(result.as_dict(), written=written)


def _prompt_lines(path: "Any") -> List[str]:
    try:
        prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()
                   if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput("%s: cannot read the prompts (%s)" % (path, e)) from None
    if not prompts:
        raise BadInput("%s: no prompts in it (one a line)" % path)
    return prompts


def _render_blocks(result: Dict[str, Any]) -> str:
    from .measure.block_scan import ScanResult, table

    written = result.pop("written")
    lines = [table(ScanResult.from_dict(result))]
    lines += ["wrote %s" % p for p in written.values()]
    return "\n".join(lines)


def _bench(args: argparse.Namespace) -> Dict[str, Any]:
    from .measure.latency import LatencySettings, measure_all

    settings = LatencySettings(steps=args.steps, sampler=args.sampler, size=args.size,
                               cfg_scale=args.cfg_scale, runs=args.runs, warmup=args.warmup,
                               seed=args.seed)
    progress = None if args.json else (lambda name: print("measuring %s ..." % name, file=sys.stderr))
    return {"results": [r.as_dict() for r in measure_all(args.models, settings, progress)]}


def _render_bench(result: Dict[str, Any]) -> str:
    from .measure.latency import LatencyResult, Spread, table

    rows = []
    for r in result["results"]:
        r = dict(r)
        for key in ("seconds_per_image", "unet_ms_per_step", "vae_decode_ms", "text_encoder_ms"):
            r[key] = Spread(**r[key])
        rows.append(LatencyResult(**r))
    return table(rows)


def _eval(args: argparse.Namespace) -> Dict[str, Any]:
    from pathlib import Path

    from .measure.compare import grid, write_csv, write_grid
    from .measure.evaluate import EvalSettings, evaluate, evaluate_run, fid_columns
    from .model.staging import check_writable
    from .scores.clip import find_scorer
    from .scores.fid import FidScorer, check_count

    settings = EvalSettings(prompts=args.prompts, seeds=args.seeds, seed=args.seed,
                            steps=args.steps, sampler=args.sampler, size=args.size,
                            cfg_scale=args.cfg_scale, negative_prompt=args.negative_prompt)
    cases = settings.cases()  # a bad prompt file fails before any model loads
    if args.fid_weights and not args.fid_reference:
        raise BadInput("--fid-weights is for FID: give --fid-reference DIR too")
    if args.fid_reference:
        check_count(len(cases), "each model makes %d image(s) (prompts x --seeds)"
                    % len(cases))
    if args.out:  # a background job's run folder
        scores, grid_path, csv_path = evaluate_run(args.models, settings, Path(args.out),
                                                   args.clip_model, args.fid_reference,
                                                   args.fid_weights)
        return {"results": [s.as_dict() for s in scores], "grid": str(grid_path),
                "csv": str(csv_path)}
    outputs = [Path(p) for p in (args.grid, args.csv) if p]
    check_writable(outputs, args.overwrite)
    say = (lambda text: None) if args.json else (lambda text: print(text, file=sys.stderr))
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    clip = find_scorer(args.clip_model, device, say)
    fid = (FidScorer.load(Path(args.fid_reference), args.fid_weights, device, say)
           if args.fid_reference else None)
    cases, runs, scores = evaluate(
        args.models, settings, clip,
        lambda done, total: say("image %d/%d" % (done, total)), device, fid)
    result: Dict[str, Any] = {"results": [s.as_dict() for s in scores], **fid_columns(fid)}
    if fid is not None and fid.skipped:
        result["fid_reference_skipped"] = fid.skipped
    if args.grid:
        result["grid"] = str(write_grid(grid(runs, cases), Path(args.grid), args.overwrite))
    if args.csv:
        result["csv"] = str(write_csv(scores, Path(args.csv), args.overwrite,
                                      extra=fid_columns(fid)))
    return result


def _render_eval(result: Dict[str, Any]) -> str:
    from .measure.compare import EXPLANATIONS, FID_EXPLANATION, ModelScores, table

    lines = [table([ModelScores(**r) for r in result["results"]])]
    explanations = dict(EXPLANATIONS)
    if any(r.get("fid") is not None for r in result["results"]):
        explanations["FID"] = FID_EXPLANATION + (
            "; here %d images in %s" % (result["fid_reference_images"], result["fid_reference"])
            if "fid_reference" in result else "")
    lines += ["  %-8s %s" % (name, text) for name, text in explanations.items()]
    lines += ["wrote %s" % result[key] for key in ("grid", "csv") if key in result]
    return "\n".join(lines)


def _demo(args: argparse.Namespace) -> Dict[str, Any]:
    from .demo import run_demo

    return run_demo(args.workdir, arch=args.arch)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bksdm", description="Make Stable Diffusion small and fast with BK-SDM.")
    parser.add_argument("--version", action="version", version="bksdm " + __version__)
    commands = parser.add_subparsers(dest="command", required=True)

    convert = commands.add_parser(
        "convert", help="make a BK-SDM student from an SD-v1/v2 checkpoint",
        description="Write DST.safetensors and DST.yaml: the student with blocks removed and "
                    "initialised from the teacher's weights. VAE and text encoder are copied "
                    "unchanged; --dtype applies to the U-Net.")
    convert.add_argument("source", help="teacher checkpoint (.safetensors or .ckpt)")
    convert.add_argument("--arch", choices=list(PRESETS),
                         help="a preset: " + _PRESETS_IN_NOTATION + " (--remove adds to it)")
    convert.add_argument("--remove", metavar="UNITS", help=_REMOVE_HELP)
    convert.add_argument("--out", required=True, help="output .safetensors path")
    _add_dtype(convert)
    convert.add_argument("--overwrite", action="store_true", help="replace existing output files")
    _add_v_prediction(convert)
    convert.add_argument("--json", action="store_true", help="print the report as one JSON object")
    convert.set_defaults(run=_convert, render=_render_conversion)

    info = commands.add_parser("info", help="what a checkpoint is: family, teacher or BK preset, sizes")
    info.add_argument("file")
    info.add_argument("--blocks", action="store_true",
                      help="list the removable units (" + _UNIT_NAMES + ") with their "
                           "parameters and estimated share of a U-Net step")
    _add_v_prediction(info)
    info.add_argument("--json", action="store_true")
    info.set_defaults(run=_info, render=_render_info_or_blocks)

    imp = commands.add_parser(
        "import-diffusers", help="turn a BK-SDM diffusers folder (e.g. nota-ai/bk-sdm-small) "
                                 "into one A1111 .safetensors + .yaml")
    imp.add_argument("folder", help="folder with model_index.json, unet/, vae/, text_encoder/")
    imp.add_argument("--out", required=True, help="output .safetensors path")
    _add_dtype(imp)
    imp.add_argument("--overwrite", action="store_true")
    imp.add_argument("--json", action="store_true")
    imp.set_defaults(run=_import_diffusers, render=_render_conversion)

    _add_transplant(commands)
    _add_lora_adapt(commands)
    _add_export_diffusers(commands)
    _add_distill(commands)
    _add_synth(commands)
    _add_dreambooth(commands)
    _add_jobs(commands)
    _add_blocks(commands)

    bench = commands.add_parser(
        "bench", help="generation latency of a teacher and its students (diffusers, this device)",
        description="Times one image end to end and its parts (U-Net per step with the CFG "
                    "batch, VAE decode, text encoder): medians over --runs after warm-up. "
                    "Defaults are the paper's Jetson AGX Orin setup.")
    bench.add_argument("models", nargs="+", help="A1111 checkpoints (teacher first is clearest)")
    bench.add_argument("--steps", type=int, default=20)
    bench.add_argument("--sampler", default=DEFAULT_SAMPLER, choices=list(SAMPLERS))
    bench.add_argument("--size", type=int, default=512)
    bench.add_argument("--cfg-scale", dest="cfg_scale", type=float, default=7.0)
    bench.add_argument("--runs", type=int, default=5)
    bench.add_argument("--warmup", type=int, default=1)
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--json", action="store_true")
    bench.set_defaults(run=_bench, render=_render_bench)

    _add_eval(commands)

    demo = commands.add_parser(
        "demo", help="make a tiny random SD-v1 checkpoint, convert it and compare the student "
                     "with its teacher (no download, a few seconds on a CPU)")
    demo.add_argument("--workdir", default="bksdm-demo", help="where the demo files go")
    demo.add_argument("--arch", default="small", choices=list(PRESETS))
    demo.add_argument("--json", action="store_true")
    demo.set_defaults(run=_demo, render=_render_info)
    return parser


def _add_transplant(commands: Any) -> None:
    transplant = commands.add_parser(
        "transplant", help="a distilled student + what your fine-tune changed in its base",
        description="Write OUT.safetensors and OUT.yaml: every U-Net tensor the student keeps "
                    "plus ALPHA x (FINETUNE - BASE) at the teacher tensor it came from; text "
                    "encoder and VAE from FINETUNE. Then distil briefly from FINETUNE with "
                    "`bksdm distill --init-student OUT`.")
    transplant.add_argument("--student", required=True,
                            help="a distilled BK-SDM student (e.g. imported nota-ai/bk-sdm-small)")
    transplant.add_argument("--base", required=True,
                            help="the model the student was distilled from (e.g. SD-v1.4)")
    transplant.add_argument("--finetune", required=True,
                            help="your fine-tune or merge of BASE (same family and prediction), "
                                 "or a LoRA made for BASE: its merged difference is carried, "
                                 "text-encoder part included")
    transplant.add_argument("--out", required=True, help="output .safetensors path")
    transplant.add_argument("--alpha", type=float, default=1.0,
                            help="how much of the difference to carry (default 1.0)")
    _add_dtype(transplant)
    transplant.add_argument("--overwrite", action="store_true", help="replace existing output files")
    transplant.add_argument("--json", action="store_true", help="print the report as one JSON object")
    transplant.set_defaults(run=_transplant, render=_render_transplant)


# -- bksdm lora-adapt: a teacher's LoRA in a student's block layout ----------------------

def _add_lora_adapt(commands: Any) -> None:
    adapt = commands.add_parser(
        "lora-adapt", help="rewrite a LoRA made for the teacher in a student's block layout",
        description="Write OUT.safetensors: LORA with every module of a block the student "
                    "kept under the student's own block name, modules of removed blocks left "
                    "out (counted), text-encoder modules unchanged. The WebUI does this by "
                    "itself when a student is loaded; the file is for other UIs and sharing.")
    adapt.add_argument("--student", required=True, help="the BK-SDM student (.safetensors)")
    adapt.add_argument("--lora", required=True, help="a LoRA (kohya/LyCORIS) made for its teacher")
    adapt.add_argument("--out", required=True, help="output .safetensors path")
    adapt.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    adapt.add_argument("--json", action="store_true", help="print the report as one JSON object")
    adapt.set_defaults(run=_lora_adapt, render=_render_lora_adapt)


def _lora_adapt(args: argparse.Namespace) -> Dict[str, Any]:
    from .model.lora_adapt import adapt_lora

    return adapt_lora(args.student, args.lora, args.out, overwrite=args.overwrite).as_dict()


def _render_lora_adapt(report: Dict[str, Any]) -> str:
    lines = ["wrote %s" % report["output"],
             "  LoRA        %s (%s layout)" % (report["lora"], report["layout"]),
             "  student     %s (BK-%s, %s)" % (report["student"], report["model"],
                                              report["family"]),
             "  U-Net       %d of %d modules on the student's blocks, %d left out (their "
             "blocks were removed)" % (report["placed"], report["unet_modules"],
                                       report["removed_blocks"]),
             "  text        %d modules unchanged" % report["text_modules"]]
    if report["unplaced"]:
        lines.append("  unplaced    %d modules name no U-Net module (A1111 ignores them on the "
                     "teacher too): left out" % report["unplaced"])
    if report["note"]:
        lines.append("BK-SDM: " + report["note"])
    return "\n".join(lines)


# -- bksdm export-diffusers: a student as a diffusers folder, for labs' pipelines ------------

def _add_export_diffusers(commands: Any) -> None:
    export = commands.add_parser(
        "export-diffusers", help="write a student (or any SD-v1/v2 checkpoint) as a diffusers "
                                 "folder: StableDiffusionPipeline.from_pretrained loads it",
        description="Write OUT/ with unet/ (the official BK-SDM config names: mid_block_type "
                    "null for Small and Tiny), vae/, text_encoder/, tokenizer/, scheduler/ and "
                    "model_index.json, as nota-ai/bk-sdm-* are published (no safety checker). "
                    "The inverse of import-diffusers.")
    export.add_argument("checkpoint", help="an A1111 .safetensors/.ckpt (its .yaml beside it, "
                                           "if any, gives the prediction type)")
    export.add_argument("--out", required=True, help="output folder (must not exist)")
    export.add_argument("--unet-only", dest="unet_only", action="store_true",
                        help="write unet/ alone (UNet2DConditionModel.from_pretrained(OUT, "
                             "subfolder='unet')), e.g. for a file without VAE or text encoder")
    _add_dtype(export)
    export.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    _add_v_prediction(export)
    export.add_argument("--json", action="store_true", help="print the report as one JSON object")
    export.set_defaults(run=_export_diffusers, render=_render_export_diffusers)


def _export_diffusers(args: argparse.Namespace) -> Dict[str, Any]:
    from .model.diffusers_export import export_diffusers

    return export_diffusers(args.checkpoint, args.out, dtype=args.dtype, unet_only=args.unet_only,
                            overwrite=args.overwrite, v_prediction=args.v_prediction).as_dict()


def _render_export_diffusers(report: Dict[str, Any]) -> str:
    return "\n".join([
        "wrote %s" % report["output"],
        "  model       %s (%s, %s)" % (report["arch"], report["family"], report["parameterization"]),
        "  U-Net       %s parameters, %s" % (format(report["unet_params"], ","), report["dtype"]),
        "  parts       %s" % ", ".join(report["parts"]),
        "  took        %.1f s" % report["seconds"]])


def _add_eval(commands: Any) -> None:
    from .measure.evaluate import EvalSettings
    from .scores.fid import WEIGHTS_FILE as FID_WEIGHTS_FILE, WEIGHTS_SIZE as FID_WEIGHTS_SIZE

    defaults = EvalSettings()
    evaluation = commands.add_parser(
        "eval", help="teacher and students side by side: a labelled grid and scores "
                     "(PSNR/SSIM against the teacher, CLIP score), one row per model",
        description="Every model renders the same prompts and seeds with diffusers; each "
                    "student image is compared with the teacher's for the same prompt and "
                    "seed. CLIP score needs a CLIP model: one already on the machine is "
                    "used (Hugging Face cache, open_clip's LAION models there, A1111's "
                    "interrogator's ViT-L-14.pt), --clip-model names one (downloaded if it "
                    "is not there). FID (--fid-reference) needs torch-fidelity and "
                    "torchmetrics.")
    evaluation.add_argument("models", nargs="+", help="A1111 checkpoints, the teacher first")
    evaluation.add_argument("--prompts", default=defaults.prompts,
                            help="a .txt file (one prompt a line) or builtin (30 varied "
                                 "prompts; default)")
    evaluation.add_argument("--seeds", type=int, default=defaults.seeds,
                            help="seeds per prompt (default %d)" % defaults.seeds)
    evaluation.add_argument("--seed", type=int, default=defaults.seed, help="the first seed")
    evaluation.add_argument("--steps", type=int, default=defaults.steps)
    evaluation.add_argument("--sampler", default=defaults.sampler, choices=list(SAMPLERS))
    evaluation.add_argument("--size", type=int, default=defaults.size)
    evaluation.add_argument("--cfg-scale", dest="cfg_scale", type=float,
                            default=defaults.cfg_scale)
    evaluation.add_argument("--negative-prompt", dest="negative_prompt",
                            default=defaults.negative_prompt)
    evaluation.add_argument("--clip-model", dest="clip_model", default=None,
                            help="a transformers CLIPModel folder, Hugging Face repository "
                                 "(e.g. openai/clip-vit-large-patch14, 1.7 GB, downloaded when "
                                 "not in the cache) or OpenAI/open_clip ViT checkpoint file")
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
    evaluation.add_argument("--json", action="store_true")
    evaluation.set_defaults(run=_eval, render=_render_eval)


_UNIT_NAMES = "down.S.L, mid, up.S.L, innermost"
_PRESETS_IN_NOTATION = "; ".join("%s = %s" % item for item in describe_presets(SD_V1).items())
_REMOVE_HELP = ("blocks to remove, comma-separated: down.S.L (stage S from the full-resolution "
                "stage 0 or * for every stage, layer L = a ResNet with its attention), up.S.L "
                "(layers 0-2), mid, innermost (the lowest-resolution stage). An up stage must "
                "lose as many layers as its down stage. `bksdm info --blocks` lists them.")


def _add_blocks(commands: Any) -> None:
    blocks = commands.add_parser(
        "blocks", help="block sensitivity analysis: remove each unit alone, measure the damage",
        description="Renders fixed prompts and seeds with the teacher, then with each unit ("
                    + _UNIT_NAMES + ", and each stage's down.S.1+up.S.1 pair) taken out without "
                    "retraining, and ranks the units by how much the images change (PSNR, SSIM "
                    "against the teacher), with parameters, FLOPs share and U-Net ms per step "
                    "saved, and the change of CLIP score where a CLIP model is available. A layer "
                    "that cannot go alone is bypassed by a channel-interpolation stand-in "
                    "(marked *), as in the paper's appendix C. Results are cached per teacher "
                    "hash and settings; a cached scan without CLIP scores is redone once a "
                    "CLIP model is there.")
    blocks.add_argument("teacher", help="SD-v1/v2 teacher checkpoint")
    blocks.add_argument("--prompts", help="a .txt file, one prompt a line (default: 4 built in)")
    blocks.add_argument("--steps", type=int, default=20)
    blocks.add_argument("--size", type=int, default=512)
    blocks.add_argument("--cfg-scale", dest="cfg_scale", type=float, default=7.0)
    blocks.add_argument("--seed", type=int, default=0)
    blocks.add_argument("--no-groups", action="store_true", help="single units only")
    blocks.add_argument("--clip-model", dest="clip_model", default=None,
                        help="CLIP score of each removal's images with their prompts: a "
                             "transformers CLIPModel folder or Hugging Face repository "
                             "(downloaded if not cached; default: one already on the machine, "
                             "if any)")
    blocks.add_argument("--cache-dir", default="~/.cache/bksdm/blocks")
    blocks.add_argument("--csv", help="write the ranked table here")
    blocks.add_argument("--plot", help="write the bar chart (PNG) here")
    blocks.add_argument("--out", help="run folder of a background job (events, table, chart)")
    blocks.add_argument("--resume", action="store_true",
                        help="continue the stopped or killed scan in --out from its last "
                             "unit (a finished one is cached)")
    blocks.add_argument("--json", action="store_true")
    blocks.set_defaults(run=_blocks, render=_render_blocks)


def _add_distill(commands: Any) -> None:
    from .train.distill_config import LCM_HELP, LCM_LOSSES, OBJECTIVES, DistillConfig

    defaults = DistillConfig(teacher="", data="", out="")
    distill = commands.add_parser(
        "distill", help="retrain a BK-SDM student by knowledge distillation from its teacher, "
                        "or consistency-distil it to draw in a few steps",
        description="Task + output-KD + feature-KD distillation (the paper's recipe and "
                    "defaults), or with --objective lcm latent consistency distillation (the "
                    "LCM paper's; a student that draws in 2-8 steps with the LCM sampler). "
                    "The run folder gets events.jsonl, checkpoints/, samples/ and finally the "
                    "student as an A1111 .safetensors + .yaml (with --lora-rank also an "
                    "LCM-LoRA file for the student it started from). KD then LCM: a KD run, then an LCM run with "
                    "--init-student set to its result. Several GPUs: "
                    "accelerate launch --multi_gpu -m bksdm_ext distill ...")
    distill.add_argument("--objective", choices=list(OBJECTIVES), default=None,
                         help="%s (default %s)" % (LCM_HELP["objective"], defaults.objective))
    distill.add_argument("--teacher", required=True, help="SD-v1/v2 checkpoint (.safetensors/.ckpt)")
    distill.add_argument("--arch", choices=list(PRESETS),
                         help="a preset (default %s; --remove adds to it)" % defaults.arch)
    distill.add_argument("--remove", metavar="UNITS", help=_REMOVE_HELP)
    distill.add_argument("--data", required=True,
                         help="folder of images with captions (image.txt beside image.png, or "
                              "metadata.jsonl / metadata.csv with file_name and text); or "
                              "teacher:N (the teacher makes N image/caption pairs first, from "
                              "--prompts); or a .txt prompt file (one pair per prompt); or a "
                              "finished `bksdm synth` run folder")
    distill.add_argument("--out", required=True, help="run folder")
    distill.add_argument("--resume", action="store_true", help="continue the run in --out")
    distill.add_argument("--init-student", dest="init_student", default=None,
                         help="start from this student (transplanted, imported or an earlier "
                              "run's result; its layout must be --arch's) instead of the "
                              "pruned teacher: the quick path to a student of your model")
    for name, kind, help_text in (
            ("steps", int, "optimizer steps"),
            ("batch_size", int, "images per GPU per micro-step"),
            ("grad_accum", int, "micro-steps per optimizer step"),
            ("resolution", int, "training resolution (shorter edge, then center crop)"),
            ("save_every", int, "checkpoint every N steps (0: only at the end)"),
            ("keep_last", int, "checkpoints to keep"),
            ("sample_every", int, "teacher-vs-student samples every N steps (0: never)"),
            ("seed", int, "seed of data order and noise"),
            ("lambda_task", float, "weight of the task loss"),
            ("lambda_output", float, "weight of the output-KD loss"),
            ("lambda_feature", float, "weight of the feature-KD loss"),
            ("ema_decay", float, "EMA decay"),
            ("log_every", int, "event-file line every N steps"),
            ("cache_dir", str, "where encoded latents/captions go (default: <out>/cache)"),
            ("synthetic", int, "with a dataset folder as --data: this many teacher-made pairs "
                               "as well"),
            ("negative_prompt", str, "negative prompt of the teacher-made pairs"),
            ("synth_cfg_scale", float, "CFG scale of the teacher-made pairs"),
            ("synth_steps", int, "sampler steps of the teacher-made pairs"),
            ("synth_sampler", str, "sampler of the teacher-made pairs"),
            ("synth_batch_size", int, "images per teacher batch when making pairs"),
            ("synth_preview", int, "teacher-made images decoded for the preview grid"),
            ("random_conditioning_p", float, "with --random-conditioning: share of examples "
                                             "whose caption meets an unrelated latent"),
            *((name, type(getattr(defaults, name)), LCM_HELP[name])
              for name in ("lcm_w_min", "lcm_w_max", "lcm_ddim_timesteps", "lcm_target_decay",
                           "lcm_huber_c", "lcm_timestep_scaling", "lcm_feature_kd",
                           "lcm_steps"))):
        flag = "--" + name.replace("_", "-")
        distill.add_argument(flag, dest=name, type=kind, default=None,
                             help="%s (default %s)" % (help_text, getattr(defaults, name)))
    distill.add_argument("--lr", dest="lr", type=float, default=None, help=LCM_HELP["lr"])
    distill.add_argument("--lcm-loss", dest="lcm_loss", choices=list(LCM_LOSSES), default=None,
                         help="%s (default %s)" % (LCM_HELP["lcm_loss"], defaults.lcm_loss))
    distill.add_argument("--lora-rank", dest="lora_rank", type=int, default=None,
                         help=LCM_HELP["lora_rank"])
    distill.add_argument("--mixed-precision", dest="mixed_precision", choices=["no", "fp16", "bf16"],
                         default=None, help="default fp16")
    distill.add_argument("--export-dtype", dest="export_dtype", choices=["fp16", "bf16", "fp32"],
                         default=None, help="precision of exported students (default fp16)")
    distill.add_argument("--sample-prompt", dest="sample_prompts", action="append", default=None,
                         help="a prompt for the sample grids (repeatable)")
    distill.add_argument("--eval-every", dest="eval_every", type=int, default=None,
                         help="score the student's sample images against the teacher's (PSNR, "
                              "SSIM) every N steps into events.jsonl (default: with the "
                              "samples; 0: never)")
    distill.add_argument("--prompts", dest="prompts", default=None,
                         help="prompts of the teacher-made pairs: a .txt file (one a line), a "
                              "folder of .txt captions, a dataset folder, or builtin (default)")
    distill.add_argument("--random-conditioning", dest="random_conditioning",
                         action="store_true", default=None,
                         help="pair some captions with unrelated latents (arXiv 2504.02011; "
                              "off by default: not yet shown to help here)")
    distill.add_argument("--no-ema", dest="ema", action="store_false", default=None)
    distill.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing",
                         action="store_false", default=None)
    distill.add_argument("--no-flip", dest="flip", action="store_false", default=None)
    distill.add_argument("--use-8bit-adam", dest="use_8bit_adam", action="store_true", default=None,
                         help="bitsandbytes' 8-bit AdamW (needs bitsandbytes)")
    _add_no_fit_memory(distill)
    _add_resolved_paths(distill, "data", "prompts")
    _add_v_prediction(distill)
    distill.add_argument("--json", action="store_true")
    distill.set_defaults(run=_distill, render=_render_info)


def _add_dreambooth(commands: Any) -> None:
    from .train.dreambooth_config import FULL_LR, DreamBoothConfig

    defaults = DreamBoothConfig(model="", instance_dir="", instance_prompt="", class_prompt="",
                                out="")
    dreambooth = commands.add_parser(
        "dreambooth", help="finetune a model (BK-SDM student or SD-v1/v2) on a few photos of "
                           "a subject",
        description="DreamBooth with prior preservation (the paper's recipe and defaults): "
                    "U-Net and text encoder finetuned jointly on the instance photos, class "
                    "images generated once by --class-model and reused. The run folder gets "
                    "events.jsonl, checkpoints/, samples/, the class images and finally the "
                    "finetuned model as an A1111 .safetensors + .yaml (with --lora also a "
                    "LoRA file for A1111's Lora extension).")
    dreambooth.add_argument("--model", required=True, help="checkpoint to finetune (.safetensors/.ckpt)")
    dreambooth.add_argument("--instance-dir", dest="instance_dir", required=True,
                            help="folder with the photos of the subject")
    dreambooth.add_argument("--instance-prompt", dest="instance_prompt", required=True,
                            help='prompt of every photo, e.g. "a [V] dog"')
    dreambooth.add_argument("--class-prompt", dest="class_prompt", default="",
                            help='the class without the identifier, e.g. "a dog" (needed with '
                                 "prior preservation)")
    dreambooth.add_argument("--out", required=True, help="run folder")
    dreambooth.add_argument("--resume", action="store_true", help="continue the run in --out")
    dreambooth.add_argument("--class-model", dest="class_model", default=None,
                            help="model that generates the class images (default: --model)")
    dreambooth.add_argument("--class-dir", dest="class_dir", default=None,
                            help="where class-image folders go, to share them between runs "
                                 "(default: the run folder)")
    for name, kind, help_text in (
            ("num_class_images", int, "class images for prior preservation"),
            ("steps", int, "optimizer steps"),
            ("resolution", int, "training resolution (shorter edge, then random crop)"),
            ("lr", float, "AdamW learning rate (constant); with --lora only when given"),
            ("batch_size", int, "instance images per step (plus as many class images)"),
            ("prior_weight", float, "weight of the prior-preservation loss"),
            ("lora_rank", int, "LoRA rank (alpha = rank)"),
            ("lora_lr", float, "learning rate in LoRA mode"),
            ("save_every", int, "checkpoint every N steps (0: never)"),
            ("sample_every", int, "before/after sample grid every N steps (0: never)"),
            ("seed", int, "seed of data order, crops and noise"),
            ("log_every", int, "event-file line every N steps")):
        flag = "--" + name.replace("_", "-")
        default = FULL_LR if name == "lr" else getattr(defaults, name)
        dreambooth.add_argument(flag, dest=name, type=kind, default=None,
                                help="%s (default %s)" % (help_text, default))
    dreambooth.add_argument("--no-prior-preservation", dest="prior_preservation",
                            action="store_false", default=None)
    dreambooth.add_argument("--no-train-text-encoder", dest="train_text_encoder",
                            action="store_false", default=None)
    dreambooth.add_argument("--lora", action="store_true", default=None,
                            help="train LoRA adapters instead of all weights (needs peft)")
    dreambooth.add_argument("--mixed-precision", dest="mixed_precision",
                            choices=["no", "fp16", "bf16"], default=None,
                            help="autocast on a GPU (default fp16; a CPU runs fp32)")
    dreambooth.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing",
                            action="store_false", default=None)
    dreambooth.add_argument("--use-8bit-adam", dest="use_8bit_adam", action="store_true",
                            default=None, help="bitsandbytes' 8-bit AdamW (needs bitsandbytes)")
    _add_no_fit_memory(dreambooth)
    _add_resolved_paths(dreambooth, "instance_dir")
    dreambooth.add_argument("--sample-prompt", dest="sample_prompts", action="append",
                            default=None, help="a prompt for the sample grids (repeatable; "
                                               "default: the instance prompt)")
    dreambooth.add_argument("--clip-model", dest="clip_model", default=None,
                            help="CLIP score of the samples with their prompts: a transformers "
                                 "CLIPModel folder, Hugging Face repository (downloaded if "
                                 "not cached) or OpenAI/open_clip ViT checkpoint file; default: "
                                 "one already on the machine, if any)")
    dreambooth.add_argument("--export-dtype", dest="export_dtype", choices=["fp16", "bf16", "fp32"],
                            default=None, help="precision of the finetuned weights (default fp16)")
    dreambooth.add_argument("--json", action="store_true")
    dreambooth.set_defaults(run=_dreambooth, render=_render_info)


def _add_synth(commands: Any) -> None:
    from .train.synth_config import SynthSettings

    defaults = SynthSettings(count=0)
    synth = commands.add_parser(
        "synth", help="let the teacher make distillation data: latents + text embeddings "
                      "for N prompts, no dataset needed",
        description="The teacher samples --count images (image i: prompt i, seed --seed + i) "
                    "and writes their latents and the prompts' text embeddings into a "
                    "training cache in --out, with prompts.txt and a decoded preview grid "
                    "(samples/preview.png). Use the folder as `bksdm distill --data OUT`. "
                    "--resume continues a stopped or killed run without duplicates or gaps.")
    synth.add_argument("--teacher", required=True, help="SD-v1/v2 checkpoint (.safetensors/.ckpt)")
    synth.add_argument("--count", type=int, required=True,
                       help="number of image/caption pairs (0 with a prompt file: one per prompt)")
    synth.add_argument("--out", required=True, help="run folder")
    synth.add_argument("--resume", action="store_true", help="continue the run in --out")
    synth.add_argument("--prompts", default=None,
                       help="a .txt file (one prompt a line, cycled with new seeds when "
                            "shorter than --count), a folder of .txt captions, a dataset "
                            "folder, or builtin (default: seeded, de-duplicated generator)")
    for name, kind, help_text in (
            ("negative_prompt", str, "negative prompt"),
            ("cfg_scale", float, "classifier-free guidance scale"),
            ("steps", int, "sampler steps"),
            ("sampler", str, ", ".join(SAMPLERS)),
            ("resolution", int, "image size (the distillation's training resolution)"),
            ("batch_size", int, "images per teacher batch"),
            ("seed", int, "seed of image 0 (image i gets seed + i) and of the built-in prompts"),
            ("preview", int, "first images decoded into samples/preview.png")):
        default = getattr(defaults, name)
        synth.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=None,
                           help="%s (default %s)" % (help_text, "none" if default == "" else default))
    _add_v_prediction(synth)
    synth.add_argument("--json", action="store_true")
    synth.set_defaults(run=_synth, render=_render_info)


def _jobs(args: argparse.Namespace) -> Dict[str, Any]:
    import time

    from .jobs.runner import SETTLED, JobRunner

    # Only `submit` and `watch` start queued jobs; `list`, `cancel` and `resume` just read
    # and change job files, whatever process moves the queue.
    runner = JobRunner(args.root, drive=args.action in ("submit", "watch"))
    if args.action == "submit":
        if any(arg == "--out" or arg.startswith("--out=") for arg in args.argv):
            raise BadInput("leave out --out: the job's folder under %s is its run folder"
                           % runner.root)
        runner.submit(args.kind, args.argv, device=args.device, title=args.title,
                      processes=args.processes)
    elif args.action == "cancel":
        runner.cancel(args.job, save=args.save)
    elif args.action == "resume":
        runner.resume(args.job)
    while args.action == "watch" and not all(job.state in SETTLED for job in runner.jobs()):
        time.sleep(args.interval)  # poll() starts queued jobs as devices free up
        runner.poll()
        if not args.json:
            print(_render_jobs(_job_rows(runner)), file=sys.stderr)
    return {"root": str(runner.root), "jobs": _job_rows(runner)}


def _job_rows(runner: Any) -> List[Dict[str, Any]]:
    from .jobs.runner import progress_of

    rows = []
    for job in runner.jobs():
        progress = progress_of(runner.events(job.id))
        rows.append({"id": job.id, "kind": job.kind, "state": job.state, "title": job.title,
                     "step": progress.step, "total": progress.total, "eta_s": progress.eta_s,
                     "reason": job.reason, "result": job.result})
    return rows


def _render_jobs(result: Any) -> str:
    rows = result["jobs"] if isinstance(result, dict) else result
    if not rows:
        return "no jobs"
    return "\n".join("%-34s %-10s %-11s %9s  %s%s" % (
        row["id"], row["kind"], row["state"],
        "%s/%s" % (row["step"], row["total"] or "?"), row["title"],
        "  (%s)" % row["reason"] if row["reason"] else "") for row in rows)


def _add_jobs(commands: Any) -> None:
    from .jobs.runner import KINDS

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--root", default="bksdm-jobs",
                        help="jobs folder (default bksdm-jobs; the WebUI's: <webui data>/bksdm/jobs)")
    common.add_argument("--json", action="store_true")
    jobs = commands.add_parser(
        "jobs", help="queue runs as background jobs (as the WebUI does) and follow them",
        description="A job is a folder under --root holding its run; one job runs per device "
                    "and the rest wait. `watch` starts queued jobs as devices free up and "
                    "returns when all have finished.")
    actions = jobs.add_subparsers(dest="action", required=True)
    actions.add_parser("list", parents=[common], help="every job with its state and progress")
    submit = actions.add_parser(
        "submit", parents=[common], help="queue a run: bksdm jobs submit distill --teacher ...",
        description="The run's own arguments follow KIND, without --out (the job folder is "
                    "the run folder).")
    submit.add_argument("--title", default="", help="a name for the list")
    submit.add_argument("--device", default=None,
                        help="cuda:N or cpu (default cuda:0 when there is a GPU)")
    submit.add_argument("--processes", type=int, default=1, help="GPUs (accelerate, DDP)")
    submit.add_argument("kind", choices=list(KINDS))
    submit.add_argument("argv", nargs=argparse.REMAINDER)
    cancel = actions.add_parser("cancel", parents=[common], help="stop a job at its next step")
    cancel.add_argument("job")
    cancel.add_argument("--save", action="store_true", help="save a checkpoint first")
    resume = actions.add_parser("resume", parents=[common],
                                help="queue a stopped job again, from its last checkpoint")
    resume.add_argument("job")
    watch = actions.add_parser("watch", parents=[common],
                               help="start queued jobs as devices free up, until all are done")
    watch.add_argument("--interval", type=float, default=5.0, help="seconds between polls")
    jobs.set_defaults(run=_jobs, render=_render_jobs)


def _add_dtype(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32", "keep"],
                        help="precision of the written U-Net (default fp16)")


def _add_resolved_paths(parser: argparse.ArgumentParser, *dests: str) -> None:
    flags = " and ".join("--" + dest.replace("_", "-") for dest in dests)
    parser.add_argument("--resolved-paths", dest="resolved_paths", action="store_true",
                        help="refuse %s when it no longer resolves to itself: the WebUI passes "
                             "the resolved paths it checked, so a link put in their way since "
                             "is not followed" % flags)
    parser.set_defaults(resolved_path_args=dests)


def _check_resolved_paths(args: argparse.Namespace) -> None:
    """With --resolved-paths, each data path must still be the place it was checked as."""
    if not getattr(args, "resolved_paths", False):
        return
    for dest in args.resolved_path_args:
        value = getattr(args, dest, None)
        if value and os.path.isabs(value) and os.path.realpath(value) != value:
            raise BadInput("--%s %s: a link now stands in the path that was checked; nothing "
                           "was read from it; check the folder and start the job again"
                           % (dest.replace("_", "-"), value))


def _add_no_fit_memory(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-fit-memory", dest="fit_memory", action="store_false", default=None,
                        help="on a GPU, keep the batch and memory settings as given instead of "
                             "lowering them to fit its free memory (the estimate is printed "
                             "before the run starts)")


def _add_v_prediction(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--v-prediction", dest="v_prediction", action="store_true", default=None,
                        help="the teacher predicts v (SD-2.x 768 px models); default: from the "
                             ".yaml beside the file, else epsilon")


def _progress_bar(label: str) -> Callable[[int, int], None]:
    from tqdm import tqdm

    bar: List[Optional[Any]] = [None]

    def update(done: int, total: int) -> None:
        if bar[0] is None:
            bar[0] = tqdm(total=total, desc=label, unit="tensor", leave=False)
        bar[0].update(done - bar[0].n)
        if done == total:
            bar[0].close()

    return update


def _render_conversion(report: Dict[str, Any]) -> str:
    saved = 1 - report["student_unet_params"] / report["teacher_unet_params"]
    lines = [
        "wrote %s" % report["output"],
        "  config      %s" % report["config"],
        "  family      %s (%s)" % (report["family"], report["parameterization"]),
        "  preset      %s" % report["arch"],
        "  U-Net       %s -> %s parameters (%.1f%% smaller), %s"
        % (format(report["teacher_unet_params"], ","), format(report["student_unet_params"], ","),
           100 * saved, report["dtype"]),
        "  took        %.1f s" % report["seconds"],
    ]
    if report.get("parameterization_source") == "family default" and report["family"] == "sd-v2":
        lines.append("  note        no .yaml beside the teacher: assumed epsilon prediction; "
                     "pass --v-prediction for 768 px v models")
    return "\n".join(lines)


def _render_transplant(report: Dict[str, Any]) -> str:
    lines = ["wrote %s" % report["output"],
             "  config      %s" % report["config"],
             "  student     %s (BK-%s, %s, %s)" % (report["student"], report["arch"],
                                                   report["family"], report["parameterization"]),
             "  carried     %.2f x %s" % (report["alpha"], "LoRA %s (made for %s)" % (
                 report["finetune"], report["base"]) if report.get("lora") else "(%s - %s)" % (
                 report["finetune"], report["base"])),
             "  U-Net       %s parameters, %s; %.0f%% of the fine-tune's change kept"
             % (format(report["unet_params"], ","), report["dtype"], 100 * report["carried_share"]),
             "  change per block (||finetune - base|| / ||base||):"]
    lines += ["    %-18s %8.2f%%%s" % (b["block"], 100 * b["relative"],
                                       "" if b["carried"] else "  removed: not carried")
              for b in report["blocks"]]
    lines += ["  warning     %s" % w for w in report["warnings"]]
    return "\n".join(lines)


def _render_info(info: Dict[str, Any]) -> str:
    width = max(map(len, info))
    return "\n".join("%-*s  %s" % (width, k, format(v, ",") if isinstance(v, int) and not
                                   isinstance(v, bool) else v) for k, v in info.items())


def _render_info_or_blocks(info: Dict[str, Any]) -> str:
    if "units" not in info:
        return _render_info(info)
    from .model.unit_costs import unit_rows

    head = "%s: %s, removed: %s" % (info["file"], info["model"], info["removed"] or "nothing")
    return head + "\n" + unit_rows(info["units"])


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _check_resolved_paths(args)
        result = args.run(args)
    except BadInput as e:
        print("bksdm %s: error: %s" % (args.command, e), file=sys.stderr)
        return EXIT_BAD_INPUT
    except Stopped as e:
        print("bksdm %s: %s" % (args.command, e), file=sys.stderr)
        return EXIT_STOPPED
    except OSError as e:  # a full, read-only or forbidden disk: the user's to fix
        problem = DiskError.of(e)
        if problem is None:
            raise
        print("bksdm %s: error: %s" % (args.command, problem), file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("bksdm %s: interrupted; nothing was written" % args.command, file=sys.stderr)
        return 130
    print(json.dumps(result) if args.json else args.render(result))
    return 0
