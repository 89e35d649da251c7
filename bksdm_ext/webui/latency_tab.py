"""The Latency sub-tab: teacher and students timed through the WebUI's own txt2img
pipeline on this device, next to the paper's Jetson AGX Orin figures.

The end-to-end seconds are what A1111's "Time taken" shows; the parts (U-Net per step
with its CFG batch, VAE decode, text encoder) are timed by hooks on the loaded model.
Checkpoints are switched for the user and the original one is loaded again afterwards,
also when a run fails or is interrupted.  Each checkpoint may be timed at several draw
points in A1111's sampler names ("Euler a:25, LCM:4:1"): one table of model × sampler × steps.
"""
import csv
import html
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import gradio as gr
import torch

from ..measure import device_info
from ..model.checkpoint import Checkpoint
from ..model.detect import inspect_checkpoint
from ..errors import BadInput
from ..settings import from_form, label
from ..measure.latency import (PAPER_ORIN_SECONDS, LatencyResult, LatencySettings, at_point,
                               set_speedups, table, time_generation)
from ..model.samplers import DrawPoint, parse_points
from . import a1111, checkpoints, setting_fields
from .txt2img import SAMPLER, sampler_names, txt2img
from .messages import message

HISTORY_COLUMNS = ("time", "device", "board", "power_mode", "webui", "model", "preset",
                   "unet_params", "steps", "sampler", "size", "cfg_scale", "batch", "runs",
                   "seconds_per_image", "seconds_low", "seconds_high", "unet_ms_per_step",
                   "vae_decode_ms", "text_encoder_ms", "peak_memory_gib", "speedup")


def candidates() -> List[str]:
    """Checkpoints worth timing: the loaded one, its teacher when a student is loaded
    (named in the student's metadata, if that file is in the dropdown), and every BK
    student in the dropdown."""
    loaded = a1111.loaded_model()
    titles = [loaded.title] if loaded is not None else []
    if loaded is not None:
        info = checkpoints.describe(Path(loaded.filename))
        teacher = checkpoints.teacher_of(Path(loaded.filename)) if info and info.is_student else None
        titles += [teacher] if teacher is not None else []
    return titles + [t for t in checkpoints.titles(teachers=False) if t not in titles]


def _generate(settings: LatencySettings, sampler: str) -> None:
    from modules import processing, shared

    # A1111 keeps the last prompt's encoding between jobs (persistent_cond_cache): drop it,
    # so every timed run encodes its prompt like a user's first generation does.
    for cache in ("cached_c", "cached_uc"):
        if hasattr(processing.StableDiffusionProcessing, cache):
            setattr(processing.StableDiffusionProcessing, cache, [None, None])
    p = txt2img(settings, sampler)
    try:
        processing.process_images(p)
    finally:
        p.close()
    if shared.state.interrupted:
        raise InterruptedError("interrupted")


def measure_loaded(title: str, settings: LatencySettings, sampler: str) -> LatencyResult:
    from modules import devices, shared

    model = shared.sd_model
    timings = time_generation(lambda: _generate(settings, sampler), model.model.diffusion_model,
                              model.cond_stage_model, model.first_stage_model, settings,
                              torch.device(devices.device))
    info = inspect_checkpoint(Checkpoint(model.sd_checkpoint_info.filename))
    return LatencyResult(model=title, preset=info.preset, unet_params=info.unet_params,
                         device=device_info.software()["gpu"], settings=asdict(settings),
                         **timings)


def parse_a1111_points(text: str) -> List[DrawPoint]:
    """The form's draw points, in A1111's sampler names ("Euler a:25, LCM:4:1"); BadInput
    as `bksdm bench --at` says it."""
    return parse_points([text or ""], sampler_names(), example="Euler a:25 or LCM:4:1")


def run(titles: Sequence[str], settings: LatencySettings, sampler: str = SAMPLER,
        points: Optional[Sequence[DrawPoint]] = None) -> List[LatencyResult]:
    """Time each checkpoint in turn at each draw point (none: `sampler` at the settings'
    steps), then load the original one again, whatever happens."""
    from modules import shared

    at = [at_point(settings, point)
          for point in points or [DrawPoint(sampler, settings.steps)]]
    original = a1111.loaded_model()
    shared.state.job_count = len(titles) * len(at) * (settings.warmup + settings.runs)
    results = []
    try:
        for title in titles:
            a1111.load_checkpoint(title)
            for each in at:
                with device_info.TegraMonitor() as monitor:
                    result = measure_loaded(title, each, each.sampler)
                result.settings["tegra"] = monitor.peak()
                results.append(result)
    finally:
        if original is not None:
            a1111.load_checkpoint(original.title)
    set_speedups(results)
    return results


# -- results ------------------------------------------------------------------------


def history_path() -> Path:
    return a1111.data_dir() / "latency_history.csv"


def append_history(results: Sequence[LatencyResult]) -> Path:
    """One row per model and draw point with the device and settings, so runs stay
    comparable later."""
    path = history_path()
    jetson = device_info.jetson_status() or {}
    new = not path.is_file()
    with open(path, "a", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, HISTORY_COLUMNS)
        if new:
            writer.writeheader()
        for r in results:
            s = r.settings
            writer.writerow({
                "time": time.strftime("%Y-%m-%d %H:%M:%S"), "device": r.device,
                "board": jetson.get("board", ""), "power_mode": jetson.get("power_mode", ""),
                "webui": a1111.webui_version(), "model": r.model, "preset": r.preset,
                "unet_params": r.unet_params, "steps": s["steps"], "sampler": s["sampler"],
                "size": s["size"], "cfg_scale": s["cfg_scale"], "batch": s["batch"],
                "runs": s["runs"], "seconds_per_image": round(r.seconds_per_image.median, 4),
                "seconds_low": round(r.seconds_per_image.low, 4),
                "seconds_high": round(r.seconds_per_image.high, 4),
                "unet_ms_per_step": round(r.unet_ms_per_step.median, 2),
                "vae_decode_ms": round(r.vae_decode_ms.median, 2),
                "text_encoder_ms": round(r.text_encoder_ms.median, 2),
                "peak_memory_gib": "" if r.peak_memory_gib is None else round(r.peak_memory_gib, 3),
                "speedup": round(r.speedup, 3)})
    return path


def chart(results: Sequence[LatencyResult]) -> Path:
    """Seconds per image of each model beside the paper's Orin figures, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = ["%s (%s, %d steps)" % (r.model, r.settings["sampler"],
                                     r.settings["steps"]) for r in results]
    labels += ["paper (Orin): %s" % k for k in PAPER_ORIN_SECONDS]
    seconds = [r.seconds_per_image.median for r in results] + list(PAPER_ORIN_SECONDS.values())
    colors = ["#3b7dd8"] * len(results) + ["#b0b0b0"] * len(PAPER_ORIN_SECONDS)
    figure, axes = plt.subplots(figsize=(8, 0.5 + 0.45 * len(labels)))
    bars = axes.barh(labels[::-1], seconds[::-1], color=colors[::-1])
    for bar, r in zip(bars[::-1], list(results) + [None] * len(PAPER_ORIN_SECONDS)):
        text = "%.2f s" % bar.get_width() + ("  (%.2fx)" % r.speedup if r is not None else "")
        axes.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, " " + text, va="center")
    axes.set_xlabel("seconds per image")
    axes.set_xlim(0, max(seconds) * 1.35)
    figure.tight_layout()
    path = a1111.data_dir() / "latency_chart.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def device_panel() -> str:
    soft = device_info.software()
    lines = ["**Device:** %s · torch %s · CUDA %s · xformers %s · WebUI %s" % (
        html.escape(soft["gpu"]), soft["torch"], soft["cuda"], soft["xformers"],
        html.escape(a1111.webui_version()))]
    jetson = device_info.jetson_status()
    if jetson is not None:
        lines.append("**Jetson:** %s · L4T %s (JetPack %s) · power mode %s · clocks locked: %s" % (
            html.escape(str(jetson["board"])), jetson["l4t"], jetson["jetpack"],
            jetson["power_mode"], jetson["clocks_locked"]))
        lines += ["⚠️ " + html.escape(w) for w in jetson["warnings"]]
    return "  \n".join(lines)


def run_from_ui(id_task: str, titles: List[str], steps: float, size: float, cfg_scale: float,
                runs: float, warmup: float, seed: float, points: str = "") -> Tuple[Any, ...]:
    """[table rows, chart, CSV, message]."""
    if not titles:
        return None, None, None, message("error", "Choose at least one checkpoint.")
    try:
        settings = from_form(LatencySettings, steps=steps, size=size, cfg_scale=cfg_scale,
                             runs=runs, warmup=warmup, seed=seed)
        results = run(titles, settings, points=parse_a1111_points(points))
    except InterruptedError:
        return None, None, None, message("error", "Interrupted; the original checkpoint is "
                                                   "loaded again.")
    except BadInput as e:
        return None, None, None, message("error", str(e))
    rows = [[r.model, r.preset, r.settings["sampler"], r.settings["steps"], r.unet_params,
             round(r.seconds_per_image.median, 3),
             "%.3f–%.3f" % (r.seconds_per_image.low, r.seconds_per_image.high),
             round(r.unet_ms_per_step.median, 1), round(r.vae_decode_ms.median, 1),
             round(r.text_encoder_ms.median, 1),
             "" if r.peak_memory_gib is None else round(r.peak_memory_gib, 2),
             "%.2fx" % r.speedup] for r in results]
    history = append_history(results)
    print("[BK-SDM] latency\n" + table(results))
    text = "Measured %d checkpoints at %d draw point(s); the original checkpoint is loaded " \
           "again." % (len(titles), len(results) // len(titles))
    for r in results:  # Jetson readings during the run (jtop or tegrastats), when there are any
        tegra = r.settings.get("tegra") or {}
        if tegra:
            text += " %s: peak RAM %s MB, GPU load %s%%, power %s W (mean %s W)." % (
                r.model, tegra.get("ram_used_mb_max"), tegra.get("gpu_load_pct_max"),
                tegra.get("power_w_max"), tegra.get("power_w_mean"))
    return rows, str(chart(results)), str(history), message("success", text)


HEADERS = ["model", "preset", "sampler", "steps", "U-Net params", "s/image", "min–max", "U-Net ms/step", "VAE ms",
           "text ms", "peak GiB", "speed-up"]


def build() -> None:
    """Create the tab's components inside the current gradio Blocks context."""
    from modules.call_queue import wrap_gradio_gpu_call

    defaults = LatencySettings(runs=3)
    gr.Markdown(device_panel(), elem_id="bksdm_device")
    with gr.Row():
        models = gr.CheckboxGroup(candidates(), label="Checkpoints to time",
                                  elem_id="bksdm_latency_models")
        refresh = gr.Button("↻", elem_id="bksdm_latency_refresh", scale=0, min_width=40)
    with gr.Row():
        steps = setting_fields.number(defaults, "steps", precision=0, label="%s (%s)" % (
            label(defaults, "steps"), SAMPLER))
        size = setting_fields.number(defaults, "size", precision=0)
        cfg_scale = setting_fields.number(defaults, "cfg_scale")
        runs, warmup, seed = [setting_fields.number(defaults, name, precision=0)
                              for name in ("runs", "warmup", "seed")]
    points = gr.Textbox(label="Draw points (sampler:steps[:CFG], comma-separated; empty: %s at "
                              "the Steps above)" % SAMPLER,
                        placeholder="Euler a:25, LCM:4:1", elem_id="bksdm_latency_points")
    id_task = gr.Textbox(visible=False)
    start = gr.Button("Measure", variant="primary", elem_id="bksdm_latency_run")
    gr.HTML(elem_id="bksdm_latency_progress")
    results = gr.Dataframe(headers=HEADERS, interactive=False, elem_id="bksdm_latency_table")
    with gr.Row():
        picture = gr.Image(label="Seconds per image (paper: Jetson AGX Orin 32GB, A1111 1.6.1)",
                           interactive=False, elem_id="bksdm_latency_chart")
        history = gr.File(label="History (CSV)", interactive=False, elem_id="bksdm_latency_csv")
    message = gr.HTML(elem_id="bksdm_latency_result")

    def refreshed() -> Dict[str, Any]:
        a1111.refresh_checkpoints()
        return gr.update(choices=candidates())

    refresh.click(refreshed, outputs=[models])
    start.click(wrap_gradio_gpu_call(run_from_ui, extra_outputs=[None, None, None]),
                _js="bksdm_latency_submit",
                inputs=[id_task, models, steps, size, cfg_scale, runs, warmup, seed, points],
                outputs=[results, picture, history, message])
