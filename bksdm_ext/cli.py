"""The ``bksdm`` command line: the same jobs as the WebUI tab, for scripts and labs."""
import argparse
import json
import sys
from typing import Any, Callable, Dict, List, Optional

from . import __version__
from .arch import PRESETS
from .errors import BadInput, Stopped

EXIT_BAD_INPUT = 2
EXIT_STOPPED = 3


def _convert(args: argparse.Namespace) -> Dict[str, Any]:
    from .convert import convert_checkpoint

    report = convert_checkpoint(args.source, args.out, args.arch, dtype=args.dtype,
                                v_prediction=args.v_prediction, overwrite=args.overwrite,
                                progress=None if args.json else _progress_bar("converting"))
    return report.as_dict()


def _info(args: argparse.Namespace) -> Dict[str, Any]:
    from .info import describe

    return describe(args.file, v_prediction=args.v_prediction)


def _import_diffusers(args: argparse.Namespace) -> Dict[str, Any]:
    from .diffusers_import import import_diffusers

    return import_diffusers(args.folder, args.out, dtype=args.dtype, overwrite=args.overwrite
                            ).as_dict()


def _distill(args: argparse.Namespace) -> Dict[str, Any]:
    from dataclasses import fields

    from .distill import distill
    from .distill_config import DistillConfig

    options = {f.name: getattr(args, f.name) for f in fields(DistillConfig)
               if getattr(args, f.name, None) is not None}
    output = distill(DistillConfig(**options), resume=args.resume)
    return {"output": str(output), "config": str(output.with_suffix(".yaml")), "run": args.out}


def _bench(args: argparse.Namespace) -> Dict[str, Any]:
    from .latency import LatencySettings, measure_all

    settings = LatencySettings(steps=args.steps, sampler=args.sampler, size=args.size,
                               cfg_scale=args.cfg_scale, runs=args.runs, warmup=args.warmup,
                               seed=args.seed)
    progress = None if args.json else (lambda name: print("measuring %s ..." % name, file=sys.stderr))
    return {"results": [r.as_dict() for r in measure_all(args.models, settings, progress)]}


def _render_bench(result: Dict[str, Any]) -> str:
    from .latency import LatencyResult, Spread, table

    rows = []
    for r in result["results"]:
        r = dict(r)
        for key in ("seconds_per_image", "unet_ms_per_step", "vae_decode_ms", "text_encoder_ms"):
            r[key] = Spread(**r[key])
        rows.append(LatencyResult(**r))
    return table(rows)


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
    convert.add_argument("--arch", required=True, choices=list(PRESETS))
    convert.add_argument("--out", required=True, help="output .safetensors path")
    _add_dtype(convert)
    convert.add_argument("--overwrite", action="store_true", help="replace existing output files")
    _add_v_prediction(convert)
    convert.add_argument("--json", action="store_true", help="print the report as one JSON object")
    convert.set_defaults(run=_convert, render=_render_conversion)

    info = commands.add_parser("info", help="what a checkpoint is: family, teacher or BK preset, sizes")
    info.add_argument("file")
    _add_v_prediction(info)
    info.add_argument("--json", action="store_true")
    info.set_defaults(run=_info, render=_render_info)

    imp = commands.add_parser(
        "import-diffusers", help="turn a BK-SDM diffusers folder (e.g. nota-ai/bk-sdm-small) "
                                 "into one A1111 .safetensors + .yaml")
    imp.add_argument("folder", help="folder with model_index.json, unet/, vae/, text_encoder/")
    imp.add_argument("--out", required=True, help="output .safetensors path")
    _add_dtype(imp)
    imp.add_argument("--overwrite", action="store_true")
    imp.add_argument("--json", action="store_true")
    imp.set_defaults(run=_import_diffusers, render=_render_conversion)

    _add_distill(commands)

    bench = commands.add_parser(
        "bench", help="generation latency of a teacher and its students (diffusers, this device)",
        description="Times one image end to end and its parts (U-Net per step with the CFG "
                    "batch, VAE decode, text encoder): medians over --runs after warm-up. "
                    "Defaults are the paper's Jetson AGX Orin setup.")
    bench.add_argument("models", nargs="+", help="A1111 checkpoints (teacher first is clearest)")
    bench.add_argument("--steps", type=int, default=20)
    bench.add_argument("--sampler", default="dpmpp_2m_karras",
                       choices=["dpmpp_2m_karras", "dpmpp_2m", "euler", "euler_a", "ddim", "pndm"])
    bench.add_argument("--size", type=int, default=512)
    bench.add_argument("--cfg-scale", dest="cfg_scale", type=float, default=7.0)
    bench.add_argument("--runs", type=int, default=5)
    bench.add_argument("--warmup", type=int, default=1)
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--json", action="store_true")
    bench.set_defaults(run=_bench, render=_render_bench)

    demo = commands.add_parser(
        "demo", help="make a tiny random SD-v1 checkpoint, convert it and compare the student "
                     "with its teacher (no download, a few seconds on a CPU)")
    demo.add_argument("--workdir", default="bksdm-demo", help="where the demo files go")
    demo.add_argument("--arch", default="small", choices=list(PRESETS))
    demo.add_argument("--json", action="store_true")
    demo.set_defaults(run=_demo, render=_render_info)
    return parser


def _add_distill(commands: Any) -> None:
    from .distill_config import DistillConfig

    defaults = DistillConfig(teacher="", data="", out="")
    distill = commands.add_parser(
        "distill", help="retrain a BK-SDM student by knowledge distillation from its teacher",
        description="Task + output-KD + feature-KD distillation (the paper's recipe and "
                    "defaults). The run folder gets events.jsonl, checkpoints/, samples/ and "
                    "finally the student as an A1111 .safetensors + .yaml. Several GPUs: "
                    "accelerate launch --multi_gpu -m bksdm_ext distill ...")
    distill.add_argument("--teacher", required=True, help="SD-v1/v2 checkpoint (.safetensors/.ckpt)")
    distill.add_argument("--arch", default=defaults.arch, choices=list(PRESETS))
    distill.add_argument("--data", required=True,
                         help="folder of images with captions (image.txt beside image.png, or "
                              "metadata.jsonl / metadata.csv with file_name and text)")
    distill.add_argument("--out", required=True, help="run folder")
    distill.add_argument("--resume", action="store_true", help="continue the run in --out")
    for name, kind, help_text in (
            ("steps", int, "optimizer steps"),
            ("batch_size", int, "images per GPU per micro-step"),
            ("grad_accum", int, "micro-steps per optimizer step"),
            ("lr", float, "AdamW learning rate (constant)"),
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
            ("cache_dir", str, "where encoded latents/captions go (default: <out>/cache)")):
        flag = "--" + name.replace("_", "-")
        distill.add_argument(flag, dest=name, type=kind, default=None,
                             help="%s (default %s)" % (help_text, getattr(defaults, name)))
    distill.add_argument("--mixed-precision", dest="mixed_precision", choices=["no", "fp16", "bf16"],
                         default=None, help="default fp16")
    distill.add_argument("--export-dtype", dest="export_dtype", choices=["fp16", "bf16", "fp32"],
                         default=None, help="precision of exported students (default fp16)")
    distill.add_argument("--sample-prompt", dest="sample_prompts", action="append", default=None,
                         help="a prompt for the sample grids (repeatable)")
    distill.add_argument("--no-ema", dest="ema", action="store_false", default=None)
    distill.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing",
                         action="store_false", default=None)
    distill.add_argument("--no-flip", dest="flip", action="store_false", default=None)
    distill.add_argument("--use-8bit-adam", dest="use_8bit_adam", action="store_true", default=None,
                         help="bitsandbytes' 8-bit AdamW (needs bitsandbytes)")
    _add_v_prediction(distill)
    distill.add_argument("--json", action="store_true")
    distill.set_defaults(run=_distill, render=_render_info)


def _add_dtype(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32", "keep"],
                        help="precision of the written U-Net (default fp16)")


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


def _render_info(info: Dict[str, Any]) -> str:
    width = max(map(len, info))
    return "\n".join("%-*s  %s" % (width, k, format(v, ",") if isinstance(v, int) and not
                                   isinstance(v, bool) else v) for k, v in info.items())


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.run(args)
    except BadInput as e:
        print("bksdm %s: error: %s" % (args.command, e), file=sys.stderr)
        return EXIT_BAD_INPUT
    except Stopped as e:
        print("bksdm %s: %s" % (args.command, e), file=sys.stderr)
        return EXIT_STOPPED
    except KeyboardInterrupt:
        print("bksdm %s: interrupted; nothing was written" % args.command, file=sys.stderr)
        return 130
    print(json.dumps(result) if args.json else args.render(result))
    return 0
