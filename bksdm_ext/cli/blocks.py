"""``bksdm blocks``: the block sensitivity scan of a teacher (measure/scan_run.py)."""
import argparse
from pathlib import Path
from typing import Any, Dict

from ..measure.block_scan import ScanSettings
from .convert import UNIT_NAMES
from .flags import add_clip_folder, add_json, add_settings, settings_from


def add(commands: Any) -> None:
    blocks = commands.add_parser(
        "blocks", help="block sensitivity analysis: remove each unit alone, measure the damage",
        description="Renders fixed prompts and seeds with the teacher, then with each unit ("
                    + UNIT_NAMES + ", and each stage's down.S.1+up.S.1 pair) taken out without "
                    "retraining, and ranks the units by how much the images change (PSNR, SSIM "
                    "against the teacher), with parameters, FLOPs share and U-Net ms per step "
                    "saved, and the change of CLIP score where a CLIP model is available. A layer "
                    "that cannot go alone is bypassed by a channel-interpolation stand-in "
                    "(marked *), as in the paper's appendix C. Results are cached per teacher "
                    "hash and settings; a cached scan without CLIP scores is redone once a "
                    "CLIP model is there.")
    blocks.add_argument("teacher", help="SD-v1/v2 teacher checkpoint")
    blocks.add_argument("--prompts", help="a .txt file, one prompt a line (default: 4 built in)")
    add_settings(blocks, ScanSettings)
    blocks.add_argument("--clip-model", dest="clip_model", default=None,
                        help="CLIP score of each removal's images with their prompts: a "
                             "transformers CLIPModel folder or Hugging Face repository "
                             "(downloaded if not cached; default: one already on the machine, "
                             "if any)")
    add_clip_folder(blocks)
    blocks.add_argument("--cache-dir", default="~/.cache/bksdm/blocks")
    blocks.add_argument("--csv", help="write the ranked table here")
    blocks.add_argument("--plot", help="write the bar chart (PNG) here")
    blocks.add_argument("--out", help="run folder of a background job (events, table, chart)")
    blocks.add_argument("--resume", action="store_true",
                        help="continue the stopped or killed scan in --out from its last "
                             "unit (a finished one is cached)")
    add_json(blocks)
    blocks.set_defaults(run=run, render=render)


def run(args: argparse.Namespace) -> Dict[str, Any]:
    from ..measure.scan_run import check_plot, read_prompts, scan_teacher

    settings = settings_from(args, ScanSettings)
    check_plot(args.plot)
    if args.prompts:
        settings.prompts = read_prompts(Path(args.prompts))
    return scan_teacher(args.teacher, settings, Path(args.cache_dir).expanduser(),
                        args.clip_model, Path(args.out) if args.out else None, args.resume,
                        args.csv, args.plot, args.clip_folders)


def render(result: Dict[str, Any]) -> str:
    from ..measure.block_scan import ScanResult, table

    written = result.pop("written")
    lines = [table(ScanResult.from_dict(result))]
    lines += ["wrote %s" % p for p in written.values()]
    return "\n".join(lines)
