"""The "Blocks" view next to the block picker: the loaded teacher's sensitivity scan.

**Scan** queues ``bksdm blocks`` as a background job (it renders the prompts once per
unit: minutes on a GPU); its results are cached under the teacher's hash in the WebUI's
data folder, so the ranked table and the chart come back for that teacher at once, in
later sessions too.  The job scores with the CLIP model already on this machine, if any
(the Compare tab's **Download CLIP** fetches one); without one the CLIP columns stay empty
and the status says how to get them.
"""
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import gradio as gr

from ..errors import BadInput
from ..measure import block_scan
from ..settings import from_form
from . import a1111, job_form, setting_fields
from .messages import message

COLUMNS = ["unit", "how", "PSNR", "SSIM", "parameters", "% of step", "ms/step saved",
           "CLIP score", "CLIP change"]
_hashes: Dict[Tuple[str, float, int], str] = {}


def cache_dir() -> Path:
    return a1111.data_dir() / "blocks"


def _loaded_teacher() -> Tuple[Optional[Path], str]:
    loaded = a1111.loaded_model()
    if loaded is None or not loaded.has_file:
        return None, "Load a teacher checkpoint (a file) to scan its blocks."
    return loaded.filename, ""


def _hash(path: Path) -> str:
    """The A1111 SHA-256, computed once per file version (a full model takes seconds)."""
    stat = path.stat()
    key = (str(path), stat.st_mtime, stat.st_size)
    if key not in _hashes:
        _hashes[key] = block_scan.teacher_hash(path)
    return _hashes[key]


def table(result: Optional[block_scan.ScanResult]) -> Dict[str, Any]:
    """The ranked rows with the headers spelled out (gradio 3.41 numbers the columns of an
    empty list)."""
    rows = [[r.unit, r.how, round(r.psnr, 2), round(r.ssim, 4), r.params,
             round(100 * r.step_share, 1), round(r.ms_saved, 2), _rounded(r.clip_score),
             _rounded(r.clip_change)]
            for r in (result.ranked() if result else [])]
    return {"headers": COLUMNS, "data": rows or [[""] * len(COLUMNS)]}


def _rounded(value: Optional[float]) -> Any:
    return "-" if value is None else round(value, 2)


def latest_scan(path: Path) -> Optional[block_scan.ScanResult]:
    """The newest cached scan of the teacher at `path` (None when it was never scanned)."""
    return block_scan.latest_for(cache_dir(), _hash(path))


def show() -> List[Any]:
    """[status text, table, chart] for the loaded teacher's newest cached scan."""
    path, problem = _loaded_teacher()
    if path is None:
        return [problem, table(None), None]
    result = latest_scan(path)
    if result is None:
        return ["No scan of %s yet: press **Scan**." % path.name, table(None), None]
    chart = block_scan.plot(result, cache_dir() / ("%s.png" % result.teacher_sha256[:12]))
    settings = result.settings
    text = ("Scan of %s: %d prompts, %d steps at %d px, no retraining; most damaging first. "
            "* = channel-interpolation stand-in (a layer that cannot go alone). %s."
            % (path.name, len(settings["prompts"]), settings["steps"], settings["size"],
               block_scan.clip_note(result)))
    return [text, table(result), str(chart)]


def start_scan(steps: float, size: float) -> str:
    try:
        path, problem = _loaded_teacher()
        if path is None:
            raise BadInput(problem)
        settings = from_form(block_scan.ScanSettings, steps=steps, size=size)
        job = job_form.submit("blocks", settings, "blocks of %s" % path.stem, free_vram=False,
                              options={"cache_dir": str(cache_dir()),
                                       # found, not named: optional in the job too
                                       "clip_folder": [str(f) for f in a1111.clip_folders()]},
                              positional=[str(path)])
    except BadInput as e:
        return message("error", str(e))
    return job_form.submitted(job)


def build() -> None:
    """The view's components inside the current Blocks context."""
    gr.Markdown("**Block sensitivity** (the paper's appendix C): each unit removed alone "
                "from the loaded teacher, images compared with the full teacher's.")
    with gr.Row():
        defaults = block_scan.ScanSettings()
        steps = setting_fields.number(defaults, "steps", precision=0, elem_id="bksdm_scan_steps")
        size = setting_fields.number(defaults, "size", precision=0, elem_id="bksdm_scan_size")
        scan = gr.Button("Scan (background job)", elem_id="bksdm_scan_start")
        refresh = gr.Button("↻", elem_id="bksdm_scan_refresh", scale=0, min_width=40)
    started = gr.HTML(elem_id="bksdm_scan_message")
    job_form.controls("blocks")
    status = gr.Markdown(elem_id="bksdm_scan_status")
    ranked = gr.Dataframe(headers=COLUMNS, interactive=False, elem_id="bksdm_scan_table")
    chart = gr.Image(type="filepath", interactive=False, elem_id="bksdm_scan_chart",
                     show_label=False)
    scan.click(start_scan, inputs=[steps, size], outputs=[started])
    refresh.click(show, inputs=[], outputs=[status, ranked, chart])
