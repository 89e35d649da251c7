"""``bksdm jobs``: queue runs as background jobs (as the WebUI does) and follow them."""
import argparse
import sys
import time
from typing import Any, Dict, List

from ..errors import BadInput


def add(commands: Any) -> None:
    from ..jobs.runner import KINDS

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--root", default="bksdm-jobs",
                        help="jobs folder (default bksdm-jobs; the WebUI's: <webui data>/bksdm/jobs)")
    common.add_argument("--json", action="store_true")
    jobs = commands.add_parser(
        "jobs", help="queue runs as background jobs (as the WebUI does) and follow them",
        description="A job is a folder under --root holding its run; one job runs per device "
                    "and the rest wait. `watch` starts queued jobs as devices free up and "
                    "returns when all have finished.")
    actions = jobs.add_subparsers(dest="action", required=True)
    actions.add_parser("list", parents=[common], help="every job with its state and progress")
    submit = actions.add_parser(
        "submit", parents=[common], help="queue a run: bksdm jobs submit distill --teacher ...",
        description="The run's own arguments follow KIND, without --out (the job folder is "
                    "the run folder).")
    submit.add_argument("--title", default="", help="a name for the list")
    submit.add_argument("--device", default=None,
                        help="cuda:N or cpu (default cuda:0 when there is a GPU)")
    submit.add_argument("--processes", type=int, default=1, help="GPUs (accelerate, DDP)")
    submit.add_argument("--after", default="", metavar="JOB",
                        help="start only once job JOB has succeeded (cancelled if it does not)")
    submit.add_argument("kind", choices=list(KINDS))
    submit.add_argument("argv", nargs=argparse.REMAINDER)
    cancel = actions.add_parser("cancel", parents=[common], help="stop a job at its next step")
    cancel.add_argument("job")
    cancel.add_argument("--save", action="store_true", help="save a checkpoint first")
    resume = actions.add_parser("resume", parents=[common],
                                help="queue a stopped job again, from its last checkpoint")
    resume.add_argument("job")
    watch = actions.add_parser("watch", parents=[common],
                               help="start queued jobs as devices free up, until all are done")
    watch.add_argument("--interval", type=float, default=5.0, help="seconds between polls")
    jobs.set_defaults(run=run, render=render)


def run(args: argparse.Namespace) -> Dict[str, Any]:
    from ..jobs.runner import SETTLED, JobRunner

    # Only `submit` and `watch` start queued jobs; `list`, `cancel` and `resume` just read
    # and change job files, whatever process moves the queue.
    runner = JobRunner(args.root, drive=args.action in ("submit", "watch"))
    if args.action == "submit":
        if any(arg == "--out" or arg.startswith("--out=") for arg in args.argv):
            raise BadInput("leave out --out: the job's folder under %s is its run folder"
                           % runner.root)
        runner.submit(args.kind, args.argv, device=args.device, title=args.title,
                      processes=args.processes, after=args.after)
    elif args.action == "cancel":
        runner.cancel(args.job, save=args.save)
    elif args.action == "resume":
        runner.resume(args.job)
    while args.action == "watch" and not all(job.state in SETTLED for job in runner.jobs()):
        time.sleep(args.interval)  # poll() starts queued jobs as devices free up
        runner.poll()
        if not args.json:
            print(render(_rows(runner)), file=sys.stderr)
    return {"root": str(runner.root), "jobs": _rows(runner)}


def _rows(runner: Any) -> List[Dict[str, Any]]:
    from ..jobs.runner import progress_of

    rows = []
    for job in runner.jobs():
        progress = progress_of(runner.events(job.id))
        rows.append({"id": job.id, "kind": job.kind, "state": job.state, "title": job.title,
                     "step": progress.step, "total": progress.total, "eta_s": progress.eta_s,
                     "reason": job.reason, "result": job.result, "after": job.after})
    return rows


def render(result: Any) -> str:
    rows = result["jobs"] if isinstance(result, dict) else result
    if not rows:
        return "no jobs"
    return "\n".join("%-34s %-10s %-11s %9s  %s%s" % (
        row["id"], row["kind"], row["state"],
        "%s/%s" % (row["step"], row["total"] or "?"), row["title"], _note(row)) for row in rows)


def _note(row: Dict[str, Any]) -> str:
    """Why a job did not succeed, or the job a queued one waits for."""
    from ..jobs.runner import QUEUED

    if row["reason"]:
        return "  (%s)" % row["reason"]
    if row["state"] == QUEUED and row.get("after"):
        return "  (after %s)" % row["after"]
    return ""
