"""The block scan as ``bksdm blocks`` runs it, at a terminal or as the Blocks view's
background job: from the cache when this teacher was scanned with these settings (and the
CLIP model there is now, if any), else measured; with a run folder it also writes events,
a checkpoint per unit (for a resume), the table and the chart there."""
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

from ..errors import BadInput, Stopped
from ..jobs.events import EventLog, start_event
from ..jobs.runs import RunPaths, failures_reported
from ..scores.clip import find_scorer, local_model
from . import block_scan
from .block_scan import ScanResult, ScanSettings


def check_plot(plot: Optional[str]) -> None:
    """Before the scan's minutes, not after: a chart needs matplotlib."""
    if plot and not block_scan.can_plot():
        raise BadInput("--plot %s: drawing the chart needs matplotlib, which is not installed: "
                       "pip install matplotlib, or leave out --plot (the table, --csv and "
                       "--json need nothing more)" % plot)


def read_prompts(path: Path) -> List[str]:
    """The prompts of a .txt file, one a line."""
    try:
        prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()
                   if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput("%s: cannot read the prompts (%s)" % (path, e)) from None
    if not prompts:
        raise BadInput("%s: no prompts in it (one a line)" % path)
    return prompts


def scan_teacher(teacher: str, settings: ScanSettings, cache_dir: Path,
                 clip_model: Optional[str] = None, out: Optional[Path] = None,
                 resume: bool = False, csv: Optional[str] = None,
                 plot: Optional[str] = None, clip_folders: Sequence[Path] = ()
                 ) -> Dict[str, Any]:
    """The scan's result as a dict, with ``written``: the files written (--csv, --plot, or
    in `out` the table and, when matplotlib is there, the chart).  Without `clip_model` a
    CLIP already on the machine (or in `clip_folders`) scores, if one is readable."""
    paths = RunPaths(out) if out else None
    log = EventLog(paths.events) if paths else None
    with failures_reported(str(out or ".")):
        result = block_scan.cached(cache_dir, block_scan.teacher_hash(teacher), settings,
                                   clip_model or local_model(clip_folders))
        if result is None:
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
            clip = find_scorer(clip_model, device, say=lambda text: print(text, file=sys.stderr),
                               folders=clip_folders)
            resumed_from = paths.latest_checkpoint() if paths and resume else None
            result = block_scan.scan(teacher, settings, _progress(paths, log, teacher,
                                                                   resumed_from),
                                     device, clip, paths, resume)
            block_scan.save(result, cache_dir)
        written = _write(result, paths, csv, plot)
        if log is not None:
            log.write("done", output=written.get("plot", ""), **written)
    return dict(result.as_dict(), written=written)


def _progress(paths: Optional[RunPaths], log: Optional[EventLog], teacher: str,
              resumed_from: Optional[Path]) -> block_scan.Progress:
    """A job's events and stop requests, unit by unit (nothing at a terminal)."""
    started = [False]

    def progress(done: int, total: int, unit: str) -> None:
        if paths is None or log is None:
            return
        if not started[0]:  # a resumed scan starts after the units it had measured
            started[0] = True
            log.write("start", **start_event(total), teacher=teacher,
                      resumed_from=str(resumed_from) if resumed_from else None)
        if done < total and paths.take_stop_request():
            log.write("stopped", step=done, saved=done > 0)  # every unit is checkpointed
            raise Stopped("stopped after %d of %d units; %s" % (done, total, (
                "they are kept, continue with --resume" if done else "nothing saved")))
        log.write("step", step=done, total=total, unit=unit)

    return progress


def _write(result: ScanResult, paths: Optional[RunPaths], csv: Optional[str],
           plot: Optional[str]) -> Dict[str, str]:
    written = {}
    csv_path = csv or (str(paths.out / "blocks.csv") if paths else None)
    plot_path = plot or (str(paths.out / "blocks.png")
                         if paths and block_scan.can_plot() else None)
    if csv_path:
        written["csv"] = str(block_scan.write_csv(result, Path(csv_path)))
    if plot_path:
        written["plot"] = str(block_scan.plot(result, Path(plot_path)))
    return written
