"""Every GPU measurement of the engines in one command, with full-size SD-v1 shapes on random weights.

    python bench/gpu.py                # on one GPU (about 5 minutes on an H100/H200)
    python bench/gpu.py --cpu-smoke    # every part at tiny shapes on the CPU (what CI runs)

Parts, each in a fresh process (peaks do not carry over, one failure does not stop the rest):

- kd: one distillation step, this trainer (cached latents, micro-batch 32 × 2) against the
  official recipe (VAE + text encoder every step, batch 64), BK-Small, effective batch 64:
  samples/s and peak memory (bench/kd_step.py).  Goals: ≥ 2× the official samples/s, ≤ 16 GiB.
- lcm: one latent consistency distillation step of this trainer (`--objective lcm`: the
  teacher with CFG on twice the batch, the student, its EMA target), BK-Small at 512²,
  effective batch 72 (the LCM paper's) as micro-batch 24 × 3, the memory plan's settings
  kept as given: s/iter, samples/s and peak memory against the plan's estimate.
- dreambooth: one step, 1 instance + 1 prior image, U-Net + text encoder, BK-Small: plain
  AdamW, the memory options (8-bit AdamW when bitsandbytes is there) and LoRA
  (bench/dreambooth_mem.py).  Goals: options ≤ 8 GiB, LoRA ≤ 5 GiB.
- synth: teacher-made data at 512², 20 steps, CFG, batch 32, images/s straight into the
  cache against the same plus a VAE round trip (bench/synth.py); the H200 anchor is the
  teacher U-Net's own bound, ≈ 8.7 images/s.
- latency: teacher vs Base/Small/Tiny with `bksdm bench`'s measurement at the Orin settings
  (20 steps DPM++ 2M Karras, 512², CFG 7, batch 1); H200 anchors 0.71 / 0.63 / 0.59.

Writes bench/results/<gpu>-<date>.json and .md (or under --out).  The GPU machine needs
torch, transformers, accelerate and safetensors; diffusers (and Pillow, if missing) come
as wheels in bench/wheels/ beside this file, installed into bench/.deps without network:
the script says which ones when they are missing.
"""
import argparse
import datetime
import importlib.util
import json
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WHEELS = HERE / "wheels"
DEPS = HERE / ".deps"
PARTS = ("kd", "lcm", "dreambooth:reference", "dreambooth:options", "dreambooth:lora", "synth",
         "latency")
# docs/facts.md §9 (H200): what the figures are compared with.
ANCHORS = {"official_kd_s_iter": 1.12, "official_kd_peak_gib": 34.9,
           "dreambooth_plain_adamw_gib": 11.5, "teacher_unet_images_s": 8.7,
           "latency_ratios": {"base": 0.71, "small": 0.63, "tiny": 0.59}}


# -- what the GPU machine lacks ----------------------------------------------------


def needed_wheels() -> List[str]:
    """Requirements this script needs that are not importable here: diffusers in the release
    that fits the installed huggingface_hub, Pillow for the datasets."""
    needed = []
    if importlib.util.find_spec("diffusers") is None:
        import huggingface_hub

        major = int(huggingface_hub.__version__.split(".")[0])
        needed.append("diffusers==0.42.1" if major >= 1 else "diffusers==0.30.3")
    if importlib.util.find_spec("PIL") is None:
        needed.append("Pillow")
    return needed


def provide_wheels() -> None:
    """Install missing wheels from bench/wheels into bench/.deps (no index, no network)."""
    needed = needed_wheels()
    if not needed:
        return
    names = [re.split(r"[=<>]", n)[0].lower() for n in needed]
    wheels = [w for w in WHEELS.glob("*.whl")
              if w.name.split("-")[0].lower().replace("_", "-") in names]
    if len(wheels) < len(needed):
        sys.exit("bench/gpu.py needs %s here. On a machine with network, from the repository root:\n"
                 "  pip download --no-deps -d bench/wheels %s\n"
                 "then copy bench/wheels/ beside this script and run it again."
                 % (", ".join(needed), " ".join("'%s'" % n for n in needed)))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                    "--target", str(DEPS)] + [str(w) for w in wheels], check=True)


def _child_path() -> List[str]:
    return [str(ROOT), str(HERE)] + ([str(DEPS)] if DEPS.is_dir() else [])


# -- the parts (each runs in its own process) ----------------------------------------


def part_kd(full: bool, device: Any) -> Dict[str, Any]:
    from kd_step import official_iteration_seconds, trainer_iteration_seconds
    import torch

    batch, micro, steps = (64, 32, 3) if full else (4, 2, 1)
    official = official_iteration_seconds(full, batch, steps, device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    workdir = Path(tempfile.mkdtemp(prefix="bksdm-gpu-kd-"))
    try:
        ours = trainer_iteration_seconds(full, batch, micro, steps, workdir, device)
    finally:
        shutil.rmtree(workdir)
    return {"effective_batch": batch, "micro_batch": micro, "official": official,
            "trainer": ours, "speedup": ours["samples_s"] / official["samples_s"]}


def part_lcm(full: bool, device: Any) -> Dict[str, Any]:
    from kd_step import trainer_iteration_seconds
    import torch

    from bksdm_ext.train.memory_plan import Settings, distill_peak_gib

    batch, micro, steps = (72, 24, 3) if full else (4, 2, 1)
    workdir = Path(tempfile.mkdtemp(prefix="bksdm-gpu-lcm-"))
    try:
        ours = trainer_iteration_seconds(full, batch, micro, steps, workdir, device,
                                         objective="lcm", fit_memory=False)
    finally:
        shutil.rmtree(workdir)
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()  # as kd_step runs it
    planned = Settings(micro, batch // micro, True, False, "bf16" if bf16 else "no", ema=True)
    return {"effective_batch": batch, "micro_batch": micro, "trainer": ours,
            "plan_estimate_gib": round(distill_peak_gib("sd-v1", "small", 512, planned, "lcm"), 2)}


def part_dreambooth(setting: str, full: bool, device: Any) -> Dict[str, Any]:
    from dreambooth_mem import measure

    size, resolution = (320, 512) if full else (32, 64)
    return measure(setting, size, resolution)


def part_synth(full: bool, device: Any) -> Dict[str, Any]:
    from bksdm_ext.demo import write_tiny_teacher
    from bksdm_ext.train.synth_config import SynthSettings
    from synth import measure, write_teacher

    settings = (SynthSettings(count=0, steps=20, resolution=512, batch_size=32) if full else
                SynthSettings(count=0, steps=2, resolution=64, batch_size=2))
    workdir = Path(tempfile.mkdtemp(prefix="bksdm-gpu-synth-"))
    try:
        teacher = workdir / "teacher.safetensors"
        (write_teacher if full else write_tiny_teacher)(teacher)
        figures = measure(teacher, settings, 2 * settings.batch_size, workdir, device)
    finally:
        shutil.rmtree(workdir)
    return dict(figures, resolution=settings.resolution, steps=settings.steps,
                batch_size=settings.batch_size, cfg_scale=settings.cfg_scale)


def part_latency(full: bool, device: Any) -> Dict[str, Any]:
    from bksdm_ext.demo import write_tiny_teacher
    from bksdm_ext.measure.latency import LatencySettings, measure_all
    from bksdm_ext.model.convert import convert_checkpoint
    from synth import write_teacher

    settings = LatencySettings() if full else LatencySettings(steps=2, size=64, runs=1, warmup=0)
    workdir = Path(tempfile.mkdtemp(prefix="bksdm-gpu-latency-"))
    try:
        teacher = workdir / "teacher.safetensors"
        (write_teacher if full else write_tiny_teacher)(teacher)
        models = [teacher]
        for preset in ("base", "small", "tiny"):
            models.append(workdir / ("teacher-bk-%s.safetensors" % preset))
            convert_checkpoint(teacher, models[-1], preset, dtype="fp16" if full else "fp32")
        results = measure_all(models, settings)
    finally:
        shutil.rmtree(workdir)
    return {"settings": results[0].settings,
            "models": [{"preset": r.preset, "seconds_per_image": r.seconds_per_image.median,
                        "unet_ms_per_step": r.unet_ms_per_step.median,
                        "peak_memory_gib": r.peak_memory_gib,
                        "ratio": 1 / r.speedup} for r in results]}


def run_part(name: str, full: bool) -> Dict[str, Any]:
    import torch

    device = torch.device("cuda" if full else "cpu")
    kind, _, setting = name.partition(":")
    if kind == "dreambooth":
        return part_dreambooth(setting, full, device)
    functions: Dict[str, Callable[[bool, Any], Dict[str, Any]]] = {
        "kd": part_kd, "lcm": part_lcm, "synth": part_synth, "latency": part_latency}
    return functions[kind](full, device)


# -- the whole run -------------------------------------------------------------------


def machine(full: bool) -> Dict[str, Any]:
    import torch

    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for module in ("transformers", "accelerate", "diffusers", "safetensors", "bitsandbytes"):
        spec = importlib.util.find_spec(module)
        versions[module] = _version(module) if spec is not None else None
    gpu = torch.cuda.get_device_name(0) if full else "CPU"
    return {"gpu": gpu, "cuda": torch.version.cuda if full else None, "versions": versions}


def _version(module: str) -> Optional[str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module)
    except PackageNotFoundError:
        return None


def goals(parts: Dict[str, Any], full: bool) -> List[Dict[str, Any]]:
    """Each goal of the issue with its figure; `met` is None where a CPU figure cannot say."""
    rows: List[Dict[str, Any]] = []

    def add(goal: str, value: Optional[float], target: str, met: Optional[bool]) -> None:
        rows.append({"goal": goal, "value": value, "target": target,
                     "met": met if full else None})

    kd = parts.get("kd", {})
    if "speedup" in kd:
        add("KD samples/s, this trainer vs official (BK-Small, effective batch 64)",
            round(kd["speedup"], 2), ">= 2x", kd["speedup"] >= 2)
        peak = kd["trainer"]["peak_gib"]
        add("KD peak memory, this trainer", _round(peak), "<= 16 GiB",
            peak is not None and peak <= 16)
    lcm = parts.get("lcm", {})
    if "trainer" in lcm:
        add("LCM s/iter, this trainer (BK-Small, effective batch 72)",
            _round(lcm["trainer"]["s_iter"]), "measured (no anchor yet)", None)
        add("LCM peak memory, this trainer", _round(lcm["trainer"]["peak_gib"]),
            "≈ %.1f GiB (the memory plan's estimate)" % lcm["plan_estimate_gib"], None)
    for setting, target in (("options", 8.0), ("lora", 5.0)):
        figures = parts.get("dreambooth:" + setting, {})
        if "peak_gib" in figures:
            add("DreamBooth peak, %s" % setting, figures["peak_gib"], "<= %g GiB" % target,
                figures["peak_gib"] <= target)
    synth = parts.get("synth", {})
    if "straight_images_s" in synth:
        add("teacher-made data, images/s into the cache", round(synth["straight_images_s"], 3),
            "U-Net bound ≈ %.1f on an H200" % ANCHORS["teacher_unet_images_s"], None)
        add("teacher-made data, speed-up over a VAE round trip", round(synth["speedup"], 3),
            "> 1x", synth["speedup"] > 1)
    for model in parts.get("latency", {}).get("models", [])[1:]:
        anchor = ANCHORS["latency_ratios"].get(model["preset"])
        add("latency %s / teacher, 20-step image" % model["preset"], round(model["ratio"], 3),
            "H200 anchor %.2f" % anchor, None)
    return rows


def _round(value: Optional[float]) -> Optional[float]:
    return None if value is None or value != value else round(value, 2)


def markdown(results: Dict[str, Any]) -> str:
    lines = ["# BK-SDM GPU run: %s, %s" % (results["machine"]["gpu"], results["date"]), "",
             "Mode: %s. Versions: %s." % (results["mode"], ", ".join(
                 "%s %s" % (k, v) for k, v in results["machine"]["versions"].items() if v)),
             "", "| goal | figure | target | met |", "|---|---|---|---|"]
    for row in results["goals"]:
        met = {True: "yes", False: "**no**", None: "-"}[row["met"]]
        lines.append("| %s | %s | %s | %s |" % (row["goal"], row["value"], row["target"], met))
    lines += ["", "| part | seconds | result |", "|---|---|---|"]
    for name, part in results["parts"].items():
        summary = part.get("error") or json.dumps(
            {k: v for k, v in part.items() if k != "seconds"}, default=str)[:300]
        lines.append("| %s | %.1f | %s |" % (name, part["seconds"], summary.replace("|", "/")))
    return "\n".join(lines) + "\n"


def run_all(full: bool, out: Path, parts: List[str]) -> Path:
    import os

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(_child_path() + [
        os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep), HF_HUB_OFFLINE="1")
    results: Dict[str, Any] = {"date": datetime.date.today().isoformat(),
                               "mode": "full-size SD-v1 on the GPU" if full else "cpu-smoke",
                               "machine": machine(full), "anchors": ANCHORS, "parts": {}}
    for name in parts:
        started = time.perf_counter()
        command = [sys.executable, str(Path(__file__).resolve()), "--part", name]
        done = subprocess.run(command + ([] if full else ["--cpu-smoke"]), env=env,
                              capture_output=True, text=True)
        seconds = round(time.perf_counter() - started, 1)
        if done.returncode == 0:
            figures = json.loads(done.stdout.strip().splitlines()[-1])
        else:
            figures = {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip()
                       else "exit code %d" % done.returncode, "log": done.stderr[-4000:]}
        results["parts"][name] = dict(figures, seconds=seconds)
        print("%-22s %6.1f s  %s" % (name, seconds, "failed: " + figures["error"]
                                     if "error" in figures else "ok"), flush=True)
    results["goals"] = goals(results["parts"], full)
    out.mkdir(parents=True, exist_ok=True)
    stem = "%s-%s" % (re.sub(r"[^A-Za-z0-9]+", "-", results["machine"]["gpu"]).strip("-").lower(),
                      results["date"])
    path = out / (stem + ".json")
    path.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    path.with_suffix(".md").write_text(markdown(results), encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="every part at tiny shapes on the CPU (checks the script, not speed)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--only", action="append", choices=PARTS, help="run only these parts")
    parser.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)  # one part, as a child
    args = parser.parse_args()
    if args.part:
        sys.path[:0] = _child_path()
        print(json.dumps(run_part(args.part, not args.cpu_smoke), default=str))
        return
    provide_wheels()
    import torch

    if not args.cpu_smoke and not torch.cuda.is_available():
        sys.exit("no CUDA GPU here: run it on the GPU machine, or with --cpu-smoke")
    path = run_all(not args.cpu_smoke, args.out, args.only or list(PARTS))
    print("wrote %s and %s" % (path, path.with_suffix(".md").name))
    print(path.with_suffix(".md").read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
