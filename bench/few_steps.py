"""Block removal times step reduction: seconds per image of the teacher at 25 steps against
each student at 25 steps and drawn as its consistency-distilled (LCM) version at 2, 4, 8 steps.

    .venv/bin/python bench/few_steps.py [--full] [--size 64] [--runs 3]

Every row goes through the generation path the Latency tab, `bksdm bench` and the sample
grids use (measure/latency.py: diffusers' pipeline around the file's own text encoder,
U-Net and VAE; text encoding, every U-Net step, VAE decode), end to end for one image:

- teacher and students at 25 steps of DPM++ 2M Karras with CFG 7 (`bksdm bench`'s sampler
  and guidance): two U-Net passes a step;
- each student as an LCM student draws (`bksdm distill --objective lcm` records it: the
  LCM sampler, no CFG): one U-Net pass a step, 2, 4 and 8 steps.

Times do not depend on the weights, so the students are converted random ones (a
consistency-distilled student has the same U-Net).  Each figure is the median of `--runs`
timed images after a warm-up, printed as seconds and as a ratio to the teacher's 25 steps.
`--full`: SD-v1 shapes at 512² in fp16 (a GPU); without it the tiny SD-v1 of the tests on
the CPU at `--size`, where fixed per-call costs weigh more than on a GPU.
"""
import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the checkout's bksdm_ext
sys.path.insert(0, str(HERE))

from bksdm_ext.demo import write_tiny_teacher  # noqa: E402
from bksdm_ext.measure.latency import LatencySettings, measure  # noqa: E402
from bksdm_ext.model.convert import convert_checkpoint  # noqa: E402
from bksdm_ext.model.samplers import DEFAULT_SAMPLER  # noqa: E402

PRESETS = ("base", "small", "tiny")
FULL_STEPS, LCM_STEPS = 25, (2, 4, 8)


def plan(teacher: Path, students: Dict[str, Path]) -> List[Tuple[str, Path, str, int, float]]:
    """(label, file, sampler, steps, CFG) of every row, the teacher's first."""
    rows = [("teacher", teacher, DEFAULT_SAMPLER, FULL_STEPS, 7.0)]
    for preset, path in students.items():
        rows.append((preset, path, DEFAULT_SAMPLER, FULL_STEPS, 7.0))
        rows += [("%s LCM" % preset, path, "lcm", steps, 1.0) for steps in LCM_STEPS]
    return rows


def run(full: bool, size: int, runs: int, workdir: Path) -> List[Dict[str, Any]]:
    teacher = workdir / "teacher.safetensors"
    if full:
        from synth import write_teacher  # the full-size random SD-v1 file

        write_teacher(teacher)
    else:
        write_tiny_teacher(teacher)
    students = {}
    for preset in PRESETS:
        students[preset] = workdir / ("teacher-bk-%s.safetensors" % preset)
        convert_checkpoint(teacher, students[preset], preset, dtype="fp16" if full else "fp32")
    results = []
    for label, path, sampler, steps, cfg_scale in plan(teacher, students):
        settings = LatencySettings(steps=steps, sampler=sampler, size=size, cfg_scale=cfg_scale,
                                   warmup=1, runs=runs)
        result = measure(path, settings)
        results.append({"model": label, "sampler": sampler, "steps": steps, "cfg": cfg_scale,
                        "seconds": result.seconds_per_image.median,
                        "unet_ms_per_step": result.unet_ms_per_step.median,
                        "device": result.device})
        print("  %-12s %-16s %2d steps  %.3f s" % (label, sampler, steps, results[-1]["seconds"]),
              file=sys.stderr, flush=True)
    reference = results[0]["seconds"]
    for row in results:
        row["ratio"] = row["seconds"] / reference
    return results


def table(results: List[Dict[str, Any]]) -> str:
    lines = ["| model | sampler | steps | CFG | s/image | / teacher 25 steps |",
             "|---|---|---|---|---|---|"]
    lines += ["| %s | %s | %d | %g | %.3f | %.2f |" % (r["model"], r["sampler"], r["steps"], r["cfg"],
                                                      r["seconds"], r["ratio"]) for r in results]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="SD-v1 shapes at 512² (needs a GPU)")
    parser.add_argument("--size", type=int, default=None, help="image side (512 full, 64 tiny)")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    full = args.full and torch.cuda.is_available()
    size = args.size or (512 if full else 64)
    workdir = Path(tempfile.mkdtemp(prefix="bksdm-few-steps-"))
    try:
        results = run(full, size, args.runs, workdir)
    finally:
        shutil.rmtree(workdir)
    print("device: %s, %s shapes at %d², one image" % (results[0]["device"],
                                                      "SD-v1" if full else "tiny SD-v1", size))
    print(table(results))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
