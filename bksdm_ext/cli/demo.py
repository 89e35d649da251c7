"""``bksdm demo``: the whole conversion path on a tiny random model, offline (demo.py)."""
import argparse
from typing import Any, Dict

from ..model.arch import PRESETS
from .flags import add_json, render_info


def add(commands: Any) -> None:
    demo = commands.add_parser(
        "demo", help="make a tiny random SD-v1 checkpoint, convert it and compare the student "
                     "with its teacher (no download, a few seconds on a CPU)")
    demo.add_argument("--workdir", default="bksdm-demo", help="where the demo files go")
    demo.add_argument("--arch", dest="preset", default="small", choices=list(PRESETS))
    add_json(demo)
    demo.set_defaults(run=run, render=render_info)


def run(args: argparse.Namespace) -> Dict[str, Any]:
    from ..demo import run_demo

    return run_demo(args.workdir, preset=args.preset)
