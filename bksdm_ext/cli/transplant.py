"""``bksdm transplant`` and ``lora-adapt``: what a fine-tune or a LoRA made for the teacher
changed, carried onto a student."""
import argparse
from typing import Any, Dict

from ..model.convert import ConversionSettings
from ..model.transplant import TransplantSettings
from .flags import add_json, add_settings, progress_bar, settings_from


def add(commands: Any) -> None:
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
    add_settings(transplant, TransplantSettings)
    add_settings(transplant, ConversionSettings, only=["dtype"])
    transplant.add_argument("--overwrite", action="store_true", help="replace existing output files")
    add_json(transplant, "print the report as one JSON object")
    transplant.set_defaults(run=run_transplant, render=render_transplant)

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
    add_json(adapt, "print the report as one JSON object")
    adapt.set_defaults(run=run_lora_adapt, render=render_lora_adapt)


def run_transplant(args: argparse.Namespace) -> Dict[str, Any]:
    from ..model.transplant import transplant

    return transplant(args.student, args.base, args.finetune, args.out,
                      alpha=settings_from(args, TransplantSettings).alpha,
                      dtype=settings_from(args, ConversionSettings).dtype,
                      overwrite=args.overwrite,
                      progress=None if args.json else progress_bar("transplanting")).as_dict()


def render_transplant(report: Dict[str, Any]) -> str:
    lines = ["wrote %s" % report["output"],
             "  config      %s" % report["config"],
             "  student     %s (BK-%s, %s, %s)" % (report["student"], report["preset"],
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


def run_lora_adapt(args: argparse.Namespace) -> Dict[str, Any]:
    from ..model.lora_adapt import adapt_lora

    return adapt_lora(args.student, args.lora, args.out, overwrite=args.overwrite).as_dict()


def render_lora_adapt(report: Dict[str, Any]) -> str:
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
