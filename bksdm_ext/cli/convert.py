"""``bksdm convert``, ``info``, ``import-diffusers`` and ``export-diffusers``: a checkpoint
in, a student, a description or another format out."""
import argparse
from typing import Any, Dict

from ..model.convert import ConversionSettings
from .flags import add_json, add_settings, progress_bar, render_info, settings_from

UNIT_NAMES = "down.S.L, mid, up.S.L, innermost"


def add(commands: Any) -> None:
    convert = commands.add_parser(
        "convert", help="make a BK-SDM student from an SD-v1/v2 checkpoint",
        description="Write DST.safetensors and DST.yaml: the student with blocks removed and "
                    "initialised from the teacher's weights. VAE and text encoder are copied "
                    "unchanged; --dtype applies to the U-Net.")
    convert.add_argument("source", help="teacher checkpoint (.safetensors or .ckpt)")
    convert.add_argument("--out", required=True, help="output .safetensors path")
    add_settings(convert, ConversionSettings)
    convert.add_argument("--overwrite", action="store_true", help="replace existing output files")
    add_json(convert, "print the report as one JSON object")
    convert.set_defaults(run=run_convert, render=render_conversion)

    info = commands.add_parser("info", help="what a checkpoint is: family, teacher or BK preset, sizes")
    info.add_argument("file")
    info.add_argument("--blocks", action="store_true",
                      help="list the removable units (" + UNIT_NAMES + ") with their "
                           "parameters and estimated share of a U-Net step")
    add_settings(info, ConversionSettings, only=["v_prediction"])
    add_json(info)
    info.set_defaults(run=run_info, render=render_info_or_blocks)

    imp = commands.add_parser(
        "import-diffusers", help="turn a BK-SDM diffusers folder (e.g. nota-ai/bk-sdm-small) "
                                 "into one A1111 .safetensors + .yaml")
    imp.add_argument("folder", help="folder with model_index.json, unet/, vae/, text_encoder/")
    imp.add_argument("--out", required=True, help="output .safetensors path")
    add_settings(imp, ConversionSettings, only=["dtype"])
    imp.add_argument("--overwrite", action="store_true")
    add_json(imp)
    imp.set_defaults(run=run_import_diffusers, render=render_import)

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
    add_settings(export, ConversionSettings, only=["dtype"])
    export.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    add_settings(export, ConversionSettings, only=["v_prediction"])
    add_json(export, "print the report as one JSON object")
    export.set_defaults(run=run_export_diffusers, render=render_export)


def run_convert(args: argparse.Namespace) -> Dict[str, Any]:
    from ..model.convert import convert_checkpoint

    s = settings_from(args, ConversionSettings)
    return convert_checkpoint(args.source, args.out, s.preset, dtype=s.dtype,
                              v_prediction=s.v_prediction, overwrite=args.overwrite,
                              progress=None if args.json else progress_bar("converting"),
                              remove=s.remove).as_dict()


def run_info(args: argparse.Namespace) -> Dict[str, Any]:
    from ..model.info import describe

    if args.blocks:
        from ..model.unit_costs import describe_blocks

        return describe_blocks(args.file, v_prediction=args.v_prediction)
    return describe(args.file, v_prediction=args.v_prediction)


def run_import_diffusers(args: argparse.Namespace) -> Dict[str, Any]:
    from ..model.diffusers_import import import_diffusers

    return import_diffusers(args.folder, args.out, dtype=settings_from(
        args, ConversionSettings).dtype, overwrite=args.overwrite).as_dict()


def run_export_diffusers(args: argparse.Namespace) -> Dict[str, Any]:
    from ..model.diffusers_export import export_diffusers

    s = settings_from(args, ConversionSettings)
    return export_diffusers(args.checkpoint, args.out, dtype=s.dtype, unet_only=args.unet_only,
                            overwrite=args.overwrite, v_prediction=s.v_prediction).as_dict()


def render_conversion(report: Dict[str, Any]) -> str:
    saved = 1 - report["student_unet_params"] / report["teacher_unet_params"]
    lines = [
        "wrote %s" % report["output"],
        "  config      %s" % report["config"],
        "  family      %s (%s)" % (report["family"], report["parameterization"]),
        "  preset      %s" % report["preset"],
        "  U-Net       %s -> %s parameters (%.1f%% smaller), %s"
        % (format(report["teacher_unet_params"], ","), format(report["student_unet_params"], ","),
           100 * saved, report["dtype"]),
        "  took        %.1f s" % report["seconds"],
    ]
    if report.get("parameterization_source") == "family default" and report["family"] == "sd-v2":
        lines.append("  note        no .yaml beside the teacher: assumed epsilon prediction; "
                     "pass --v-prediction for 768 px v models")
    return "\n".join(lines)


def render_import(report: Dict[str, Any]) -> str:
    return render_model_written(report, "  config      %s" % report["config"])


def render_export(report: Dict[str, Any]) -> str:
    return render_model_written(report, "  parts       %s" % ", ".join(report["parts"]))


def render_model_written(report: Dict[str, Any], what: str) -> str:
    """An imported or exported model: where it went, what it is, `what` was written."""
    return "\n".join([
        "wrote %s" % report["output"], what,
        "  family      %s (%s)" % (report["family"], report["parameterization"]),
        "  preset      %s" % report["preset"],
        "  U-Net       %s parameters, %s" % (format(report["unet_params"], ","), report["dtype"]),
        "  took        %.1f s" % report["seconds"]])


def render_info_or_blocks(info: Dict[str, Any]) -> str:
    if "units" not in info:
        return render_info(info)
    from ..model.unit_costs import unit_rows

    head = "%s: %s, removed: %s" % (info["file"], info["model"], info["removed"] or "nothing")
    return head + "\n" + unit_rows(info["units"])
