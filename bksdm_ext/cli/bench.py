"""``bksdm bench``: generation latency of a teacher and its students (measure/latency.py)."""
import argparse
import sys
from typing import Any, Dict

from ..measure.latency import LatencySettings
from .flags import add_json, add_settings, settings_from


def add(commands: Any) -> None:
    bench = commands.add_parser(
        "bench", help="generation latency of a teacher and its students (diffusers, this device)",
        description="Times one image end to end and its parts (U-Net per step with the CFG "
                    "batch, VAE decode, text encoder): medians over --runs after warm-up. "
                    "Defaults are the paper's Jetson AGX Orin setup.")
    bench.add_argument("models", nargs="+", help="A1111 checkpoints (teacher first is clearest)")
    add_settings(bench, LatencySettings)
    bench.add_argument("--at", action="append", default=[], metavar="SAMPLER:STEPS[:CFG]",
                       help="time each model at this sampler and steps (and CFG scale) instead "
                            "of --sampler/--steps; repeatable or comma-separated, e.g. --at "
                            "euler_a:25,lcm:4:1: one row per model and point, speed-ups against "
                            "the teacher's first")
    add_json(bench)
    bench.set_defaults(run=run, render=render)


def run(args: argparse.Namespace) -> Dict[str, Any]:
    from ..measure.latency import measure_all
    from ..model.samplers import parse_points

    points = parse_points(args.at)  # a bad one is refused before any model loads
    progress = None if args.json else (lambda name: print("measuring %s ..." % name,
                                                          file=sys.stderr))
    return {"results": [r.as_dict() for r in measure_all(
        args.models, settings_from(args, LatencySettings), progress, points)]}


def render(result: Dict[str, Any]) -> str:
    from ..measure.latency import LatencyResult, Spread, table

    rows = []
    for r in result["results"]:
        r = dict(r)
        for key in ("seconds_per_image", "unet_ms_per_step", "vae_decode_ms", "text_encoder_ms"):
            r[key] = Spread(**r[key])
        rows.append(LatencyResult(**r))
    return table(rows)
