"""The ``bksdm`` command line: the same jobs as the WebUI tab, for scripts and labs."""
import argparse
import json
import sys
from typing import Any, Callable, Dict, List, Optional

from . import __version__
from .arch import PRESETS
from .errors import BadInput

EXIT_BAD_INPUT = 2


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

    demo = commands.add_parser(
        "demo", help="make a tiny random SD-v1 checkpoint, convert it and compare the student "
                     "with its teacher (no download, a few seconds on a CPU)")
    demo.add_argument("--workdir", default="bksdm-demo", help="where the demo files go")
    demo.add_argument("--arch", default="small", choices=list(PRESETS))
    demo.add_argument("--json", action="store_true")
    demo.set_defaults(run=_demo, render=_render_info)
    return parser


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
    except KeyboardInterrupt:
        print("bksdm %s: interrupted; nothing was written" % args.command, file=sys.stderr)
        return 130
    print(json.dumps(result) if args.json else args.render(result))
    return 0
