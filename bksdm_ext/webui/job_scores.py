"""The Jobs tab's scores panel: a run's `eval` events over the steps, next to the loss
curves (a distillation's PSNR/SSIM against the teacher with the best step marked, a
DreamBooth run's CLIP score), and an evaluation job's score table."""
import html
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from . import jobs_service


def evals(events: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    return [e for e in events if e.get("event") == "eval"]


def best_line(points: List[Dict[str, Any]]) -> str:
    best = [e for e in points if e.get("best") and _has(e, "ssim") and _has(e, "psnr")]
    if not best:
        return ""
    e = best[-1]
    where = ("; its checkpoint: `%s`" % html.escape(Path(e["checkpoint"]).name)
             if e.get("checkpoint") else "; no checkpoint was saved at that step")
    return ("**Best student so far:** step %d, SSIM %.4f, PSNR %.2f dB against the teacher's "
            "samples%s." % (e["step"], e["ssim"], e["psnr"], where))


LARGEST_DRAWN = 1e30  # matplotlib's axis arithmetic overflows near the float limit


def drawable(value: float) -> bool:
    """A value a chart shows: finite and not absurdly large (a diverged run's NaN, an
    infinite PSNR of identical images are left out of the curve)."""
    return abs(value) <= LARGEST_DRAWN  # NaN fails it too


SERIES = (("ssim", "SSIM vs teacher"), ("psnr", "PSNR vs teacher (dB)"),
          ("clip_score", "CLIP score"))


def score_plot(folder: Path, points: List[Dict[str, Any]]) -> Optional[str]:
    """Each score a run logs (SSIM and PSNR against the teacher for a distillation, the CLIP
    score for DreamBooth) over the steps, as a PNG in the job folder redrawn when new points
    arrive; the best step starred."""
    series = [(key, label) for key, label in SERIES if any(_has(e, key) for e in points)]
    if not series:
        return None
    target = folder / ("scores-%d.png" % points[-1]["step"])
    if not target.is_file():
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        for old in folder.glob("scores-*.png"):
            old.unlink()
        figure, axes = plt.subplots(1, len(series), figsize=(7, 3.2), squeeze=False)
        best = [e for e in points if e.get("best")]
        for plot, (key, label) in zip(axes[0], series):
            shown = [e for e in points if _has(e, key) and drawable(e[key])]
            plot.plot([e["step"] for e in shown], [e[key] for e in shown], marker="o")
            if best and _has(best[-1], key) and drawable(best[-1][key]):
                plot.plot([best[-1]["step"]], [best[-1][key]], marker="*", markersize=16,
                          color="gold", markeredgecolor="black", linestyle="")
            plot.set_xlabel("step")
            plot.set_title(label, fontsize="medium")
            plot.grid(alpha=0.3)
        figure.tight_layout()
        figure.savefig(target, dpi=90)
        plt.close(figure)
    return str(target)


def eval_job_table(events: List[Dict[str, Any]]) -> str:
    """An evaluation job's result as a Markdown table (empty for other jobs)."""
    from ..measure.compare import HEADERS, ModelScores, table_rows

    done = events[-1] if events and events[-1].get("event") == "done" else {}
    if "scores" not in done:
        return ""
    try:
        rows = table_rows([ModelScores(**s) for s in done["scores"]])
    except (TypeError, ValueError):  # a damaged events.jsonl
        return ("The scores in this job's events.jsonl are damaged; its scores.csv holds "
                "them too.")
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(html.escape(str(c)) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _has(event: Dict[str, Any], score: str) -> bool:
    """Whether `event` holds that score (the event file's reader checked it is a number)."""
    return event.get(score) is not None


def view(selected: str) -> Tuple[Optional[str], str]:
    """[scores plot, text] of the chosen job."""
    job_id = jobs_service.job_id(selected)
    runner = jobs_service.runner()
    if job_id not in runner.ids():  # none chosen, or an id the page made up
        return None, ""
    events = runner.events(job_id)
    points = evals(events)
    text = best_line(points) or eval_job_table(events)
    return score_plot(runner.folder(job_id), points), text
