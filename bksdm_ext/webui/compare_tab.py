"""The Compare sub-tab: teacher and students render the same prompts and seeds, shown as
one labelled grid with a score table (agreement with the teacher, CLIP score) and the
seconds per image beside them.

A quick look runs here, through A1111's own txt2img (as the Latency tab times it), with
the original checkpoint loaded again afterwards; a larger set runs as a background job
(`bksdm eval` in its own process, followed in the Jobs tab).  Each checkpoint draws at its
own point ("Draw points": a 4-step LCM student beside its teacher at 20 steps), by default
the one its metadata recommends, else the form's steps.  Every comparison is appended to a
CSV history.
"""
import csv
import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import gradio as gr

from ..errors import BadInput, size_text
from ..measure.compare import (EXPLANATIONS, HEADERS, ModelImages, grid, score_models,
                               table_rows, write_csv, write_grid)
from ..measure import device_info
from ..measure.evaluate import EvalSettings, ModelAt, model_at
from ..measure.latency import LatencySettings, at_point
from ..model.checkpoint import Checkpoint
from ..model.detect import inspect_checkpoint
from ..model.samplers import DrawPoint
from ..model.staging import staged
from ..scores.clip import DEFAULT_DOWNLOAD, HOW_TO_ENABLE, KNOWN_MODELS, fetch, find_scorer
from ..scores.eval_prompts import BUILTIN, load_prompts, prompt_lines
from ..settings import form_number, from_form, label
from . import a1111, checkpoints, client_files, job_form, setting_fields
from .clip_choice import local_clip
from .txt2img import SAMPLER, a1111_sampler, txt2img
from .messages import message

SOURCES = ("Built-in set (30 prompts)", "Prompt file", "Typed lines")


def candidates() -> Tuple[List[str], List[str]]:
    """(every usable checkpoint, the preselected ones: the loaded model and the students
    converted from it)."""
    titles = checkpoints.titles()
    loaded = a1111.loaded_model()
    if loaded is None:
        return titles, titles[:1]
    teacher_name = loaded.filename.name
    chosen = [loaded.title] + [
        title for title in titles
        if title != loaded.title and _teacher_of(checkpoints.filename(title)) == teacher_name]
    return titles, chosen


def _teacher_of(path: Path) -> str:
    info = checkpoints.describe(path)
    if info is None or not info.is_student:
        return ""
    return Checkpoint(path).metadata.get("bksdm.teacher", "")


def chosen_prompts(source: str, prompt_file: Optional[str], typed: str) -> List[str]:
    if source == SOURCES[1]:
        if not prompt_file:
            raise BadInput("Upload a prompt file (.txt, one prompt a line) first.")
        return load_prompts(prompt_file)
    if source == SOURCES[2]:
        prompts = prompt_lines(typed or "")
        if not prompts:
            raise BadInput("Type at least one prompt (one a line).")
        return prompts
    return load_prompts(BUILTIN)


def clip_status() -> str:
    found = local_clip()
    if found:
        return "CLIP score with **%s** (already on this machine)." % found
    return ("No CLIP model on this machine, so no CLIP score. **Download CLIP** fetches %s "
            "(%s) into the Hugging Face cache once." % (DEFAULT_DOWNLOAD,
                                                          KNOWN_MODELS[DEFAULT_DOWNLOAD]))


def download_clip() -> Tuple[str, str]:
    """[status, message]: the one download this tab does, only on the button: what the
    Hugging Face cache lacks of the CLIP (on an A1111 machine, its weights: A1111 caches
    only its config and tokenizer)."""
    try:
        fetched = fetch(DEFAULT_DOWNLOAD)
    except BadInput as e:
        return clip_status(), message("error", str(e))
    if not fetched:
        return clip_status(), message("success", "CLIP %s is already in the Hugging Face "
                                                 "cache; nothing downloaded." % DEFAULT_DOWNLOAD)
    files = ", ".join("%s (%s)" % (name, size_text(size)) for name, size in fetched)
    return clip_status(), message("success", "Downloaded CLIP %s into the Hugging Face cache: "
                                             "%s; the CLIP score column uses it."
                                  % (DEFAULT_DOWNLOAD, files))


def draw_points(titles: Sequence[str], text: str, form: EvalSettings) -> List[ModelAt]:
    """Each chosen checkpoint and where it draws: the form's "Draw points"
    (``FILE=sampler:steps[:cfg]``, comma- or line-separated), else the point its metadata
    recommends, else the form's steps with `bksdm eval`'s sampler (SAMPLER)."""
    paths = [checkpoints.filename(title) for title in titles]
    given: Dict[str, DrawPoint] = {}
    for entry in filter(None, (e.strip() for e in re.split(r"[,\n]", text or ""))):
        name, equals, point = entry.partition("=")
        if not equals or not name.strip():
            raise BadInput("Draw points: %r: write FILE=sampler:steps[:cfg], e.g. "
                           "student-lcm.safetensors=lcm:4:1" % entry)
        if name.strip() not in {path.name for path in paths}:
            raise BadInput("Draw points: %s is not a chosen checkpoint; one of %s"
                           % (name.strip(), ", ".join(path.name for path in paths)))
        try:
            given[name.strip()] = DrawPoint.parse(point)
        except BadInput as e:
            raise BadInput("Draw points: %s: %s" % (name.strip(), e)) from None
    return [model_at(path, given.get(path.name), form) for path in paths]


def render_loaded(title: str, cases: Sequence[Tuple[str, int]], settings: LatencySettings,
                  sampler: str) -> ModelImages:
    """Every case with the loaded checkpoint through A1111's txt2img, each timed."""
    from modules import processing, shared

    model = shared.sd_model
    info = inspect_checkpoint(Checkpoint(model.sd_checkpoint_info.filename))
    run = ModelImages(model=title.split(" [")[0], preset=info.preset,
                      unet_params=info.unet_params, images=[], sampler=sampler,
                      steps=settings.steps, cfg_scale=settings.cfg_scale)
    for prompt, seed in cases:
        p = txt2img(replace(settings, prompt=prompt, seed=seed), sampler)
        started = time.perf_counter()
        try:
            processed = processing.process_images(p)
        finally:
            p.close()
        if shared.state.interrupted:
            raise InterruptedError("interrupted")
        run.seconds.append(time.perf_counter() - started)
        run.images.append(processed.images[0])
    return run


def compare_here(titles: Sequence[str], cases: Sequence[Tuple[str, int]],
                 settings: LatencySettings, points: Sequence[DrawPoint]) -> List[ModelImages]:
    """Each checkpoint in turn at its draw point (its CFG scale, else the settings'), then
    the original one again, whatever happens."""
    from modules import shared

    samplers = [a1111_sampler(point.sampler) for point in points]  # all, before any loads
    original = a1111.loaded_model()
    shared.state.job_count = len(titles) * len(cases)
    runs = []
    try:
        for title, point, sampler in zip(titles, points, samplers):
            a1111.load_checkpoint(title)
            runs.append(render_loaded(title, cases, at_point(settings, point), sampler))
    finally:
        if original is not None:
            a1111.load_checkpoint(original.title)
    return runs


def history_path() -> Path:
    return a1111.data_dir() / "compare_history.csv"


def _append_history(csv_file: Path) -> Path:
    """The comparison's rows appended to the history (its header once).  A history with
    other columns (an older version's) is rewritten with both versions' columns, its rows
    kept."""
    history = history_path()
    lines = csv_file.read_text(encoding="utf-8").splitlines(keepends=True)
    header = next(csv.reader(lines[:1]))
    fresh = not history.is_file() or history.stat().st_size == 0
    old_header = header
    if not fresh:
        with open(history, encoding="utf-8", newline="") as f:
            old_header = next(csv.reader(f), header)
    if old_header == header:
        with open(history, "a", encoding="utf-8", newline="") as f:
            f.writelines(lines if fresh else lines[1:])
        return history
    with open(history, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f)) + list(csv.DictReader(lines))
    with staged([history], overwrite=True) as (temp,):
        with open(temp, "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, old_header + [c for c in header if c not in old_header])
            writer.writeheader()
            writer.writerows(rows)
    return history


def run_from_ui(id_task: str, titles: List[str], source: str, prompt_file: Any, typed: str,
                max_prompts: float, seeds: float, steps: float, size: float,
                cfg_scale: float, points: str = "") -> List[Any]:
    """[grid, table, grid file, CSV, history, message]."""
    nothing: List[Any] = [None, None, None, None, None]
    try:
        form = _form_settings(seeds, steps, size, cfg_scale)
        prompts = _form_prompts(titles, source, prompt_file, typed, max_prompts)
        chosen = draw_points(titles, points, form)
        cases = form.cases_of(prompts)
        form.check_in_the_webui(len(titles), len(cases))
        settings = LatencySettings(steps=form.steps, size=form.size, cfg_scale=form.cfg_scale)
        clip = find_scorer(None, folders=a1111.clip_folders())
        runs = compare_here(titles, cases, settings, [m.point for m in chosen])
    except InterruptedError:
        return nothing + [message("error", "Interrupted; the original checkpoint is loaded "
                                           "again.")]
    except BadInput as e:
        return nothing + [message("error", str(e))]
    scores = score_models(runs, cases, clip)
    folder = a1111.data_dir() / "compare"
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    grid_file = write_grid(grid(runs, cases), folder / ("grid-%s.png" % stamp), overwrite=True)
    csv_file = write_csv(scores, folder / ("scores-%s.csv" % stamp), overwrite=True, extra={
        "time": time.strftime("%Y-%m-%d %H:%M:%S"), "device": device_info.software()["gpu"],
        "webui": a1111.webui_version(), "prompts": len(prompts), "seeds": form.seeds,
        "size": settings.size})
    text = "Compared %d checkpoints on %d images each; the original checkpoint is loaded " \
           "again." % (len(runs), len(cases))
    text += "".join(" %s: drawn at %s, the point its metadata recommends." % (
        m.path.name, m.point.describe()) for m in chosen if m.chosen_by == "recommended")
    if clip is None:
        text += " CLIP score: " + HOW_TO_ENABLE + "."
    return [str(grid_file), {"headers": HEADERS, "data": table_rows(scores)}, str(grid_file),
            str(csv_file), str(_append_history(csv_file)), message("success", text)]


def submit_job(titles: List[str], source: str, prompt_file: Any, typed: str,
               max_prompts: float, seeds: float, steps: float, size: float,
               cfg_scale: float, points: str = "") -> str:
    """The same comparison as a background `bksdm eval` job (diffusers, its own process),
    each model given as MODEL@POINT where the form gives it one (`bksdm eval` itself picks a
    recommended one up)."""
    try:
        form = _form_settings(seeds, steps, size, cfg_scale)
        prompts = _form_prompts(titles, source, prompt_file, typed, max_prompts)
        chosen = draw_points(titles, points, form)
        form.cases_of(prompts)  # the job's own check, before anything is written
        folder = a1111.data_dir() / "compare"
        folder.mkdir(parents=True, exist_ok=True)
        prompt_file_path = folder / ("prompts-%s.txt" % time.strftime("%Y%m%d-%H%M%S"))
        prompt_file_path.write_text("\n".join(prompts) + "\n", encoding="utf-8")
        models = [str(m.path) + ("@" + m.point.spec() if m.chosen_by == "given" else "")
                  for m in chosen]
        job = job_form.submit("eval", replace(form, prompts=str(prompt_file_path)),
                              "compare %d models" % len(models), False,
                              # a CLIP found here is looked for, not named: optional there too
                              options={"clip_folder": [str(f) for f in a1111.clip_folders()]},
                              positional=models)
    except BadInput as e:
        return message("error", str(e))
    return job_form.submitted(job)


def _form_settings(seeds: Any, steps: Any, size: Any, cfg_scale: Any) -> EvalSettings:
    """The form's numbers, checked against the ranges `bksdm eval` has."""
    return from_form(EvalSettings, seeds=seeds, steps=steps, size=size, cfg_scale=cfg_scale)


def _form_prompts(titles: List[str], source: str, prompt_file: Any, typed: str,
                  max_prompts: Any) -> List[str]:
    """The first `max_prompts` prompts of the form, once it names a checkpoint."""
    if not titles:
        raise BadInput("Choose at least one checkpoint (the teacher first).")
    uploaded = client_files.received(prompt_file)
    first = max(form_number(max_prompts, "Prompts to use"), 1)
    return chosen_prompts(source, str(uploaded[0][0]) if uploaded else None, typed)[:first]


def build() -> None:
    from modules.call_queue import wrap_gradio_gpu_call

    defaults = EvalSettings()
    choices, chosen = candidates()
    with gr.Row():
        models = gr.CheckboxGroup(choices, value=chosen, label="Checkpoints (teacher first)",
                                  elem_id="bksdm_compare_models")
        refresh = gr.Button("↻", elem_id="bksdm_compare_refresh", scale=0, min_width=40)
    with gr.Row():
        source = gr.Radio(list(SOURCES), value=SOURCES[0], label="Prompts",
                          elem_id="bksdm_compare_source")
        prompt_file = client_files.File(label="Prompt file (.txt, one a line)",
                                        file_types=[".txt"], elem_id="bksdm_compare_file")
        typed = gr.Textbox(label="Typed prompts (one a line)", lines=3,
                           elem_id="bksdm_compare_typed")
    with gr.Row():
        max_prompts = gr.Number(4, label="Prompts to use (the first N)", precision=0,
                                elem_id="bksdm_compare_max_prompts")
        seeds = setting_fields.number(defaults, "seeds", precision=0,
                                      elem_id="bksdm_compare_seeds")
        steps = setting_fields.number(defaults, "steps", precision=0, label="%s (%s)" % (
            label(defaults, "steps"), SAMPLER))
        size = setting_fields.number(defaults, "size", precision=0, elem_id="bksdm_compare_size")
        cfg_scale = setting_fields.number(defaults, "cfg_scale")
    points = gr.Textbox(label="Draw points (FILE=sampler:steps[:CFG], one a line or "
                              "comma-separated; a checkpoint not named draws at the point its "
                              "metadata recommends, else at %s and the Steps above)" % SAMPLER,
                        placeholder="student-lcm.safetensors=lcm:4:1", lines=1,
                        elem_id="bksdm_compare_points")
    with gr.Row():
        clip_text = gr.Markdown(clip_status(), elem_id="bksdm_compare_clip")
        download = gr.Button("Download CLIP", elem_id="bksdm_compare_download", scale=0)
    id_task = gr.Textbox(visible=False)
    with gr.Row():
        start = gr.Button("Compare here (A1111 txt2img)", variant="primary",
                          elem_id="bksdm_compare_run")
        background = gr.Button("Run as a background job", elem_id="bksdm_compare_job")
    gr.HTML(elem_id="bksdm_compare_progress")
    result = gr.HTML(elem_id="bksdm_compare_result")
    table = gr.Dataframe(headers=HEADERS, interactive=False, elem_id="bksdm_compare_table")
    gr.Markdown("  \n".join("**%s**: %s" % item for item in EXPLANATIONS.items()),
                elem_id="bksdm_compare_explanations")
    picture = gr.Image(label="Rows: prompt × seed; columns: checkpoints", interactive=False,
                       elem_id="bksdm_compare_grid")
    with gr.Row():
        grid_file = gr.File(label="Grid (PNG)", interactive=False, elem_id="bksdm_compare_png")
        csv_file = gr.File(label="Scores (CSV)", interactive=False, elem_id="bksdm_compare_csv")
        history = gr.File(label="History (CSV)", interactive=False,
                          elem_id="bksdm_compare_history")

    def refreshed() -> Dict[str, Any]:
        a1111.refresh_checkpoints()
        titles, preselected = candidates()
        return gr.update(choices=titles, value=preselected)

    form = [models, source, prompt_file, typed, max_prompts, seeds, steps, size, cfg_scale,
            points]
    refresh.click(refreshed, outputs=[models])
    download.click(download_clip, outputs=[clip_text, result])
    start.click(wrap_gradio_gpu_call(run_from_ui, extra_outputs=[None] * 5),
                _js="bksdm_compare_submit", inputs=[id_task] + form,
                outputs=[picture, table, grid_file, csv_file, history, result])
    background.click(submit_job, inputs=form, outputs=[result])
