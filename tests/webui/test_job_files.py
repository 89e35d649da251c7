"""Damaged job files (issue 22, items 8 and 9): one job's job.json, exit.json or
events.jsonl, damaged by a disk, a kill or a hand, never takes `bksdm jobs` or the Jobs tab
down; the damaged job is listed with what is wrong and every other job stays usable.  Ends
with a seeded fuzz of the three files through both readers."""
import json
import random
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import pytest

from bksdm_ext.cli import main
from bksdm_ext.jobs.events import EventLog, read_events
from bksdm_ext.jobs.runner import (BROKEN, CANCELLED, FAILED, INTERRUPTED, QUEUED, RUNNING,
                                   SUCCEEDED, Job, JobRunner)
from webui_env import standin_app, start_webui

# A run as the job runner leaves it: every event the readers use, each with its fields.
EVENTS = [
    {"time": 1.0, "event": "start", "total_steps": 4},
    {"time": 2.0, "event": "synth", "done": 2, "total": 4, "images_s": 0.5, "eta_s": 4},
    {"time": 3.0, "event": "step", "step": 2, "loss": 0.5, "kd_out": 0.25, "lr": 1e-4,
     "it_s": 1.5, "eta_s": 2},
    {"time": 4.0, "event": "checkpoint", "step": 2, "path": "/nowhere/step-0000002"},
    {"time": 5.0, "event": "samples", "step": 2, "path": "/nowhere/grid.png"},
    {"time": 6.0, "event": "eval", "step": 2, "best": True, "ssim": 0.5, "psnr": 20.0,
     "checkpoint": None},
    {"time": 7.0, "event": "step", "step": 4, "loss": 0.25, "kd_out": 0.125, "lr": 1e-4,
     "it_s": 1.5, "eta_s": 0},
    {"time": 8.0, "event": "done", "step": 4, "output": "/nowhere/result.png"},
]
EXIT = {"exit_code": 0, "signal": None, "reason": "", "ended": 9.0}


def write_job(root: Path, job_id: str, state: str = RUNNING, **fields) -> Path:
    """A job folder as the runner writes it; `state` running with no pid: its process is
    gone, so its run's own files say how it ended."""
    folder = root / job_id
    folder.mkdir(parents=True, exist_ok=True)
    job = Job(id=job_id, kind="distill", argv=["--teacher", "t.safetensors"], device="cpu",
              title=job_id, state=state, **fields)
    (folder / "job.json").write_text(json.dumps(asdict(job)), encoding="utf-8")
    return folder


def write_events(folder: Path, lines) -> None:
    """Events as JSON lines; a `bytes` item is written as it is."""
    with open(str(folder / "events.jsonl"), "wb") as f:
        for line in lines:
            f.write(line if isinstance(line, bytes) else json.dumps(line).encode() + b"\n")


def listed(capsys, root: Path):
    assert main(["jobs", "list", "--root", str(root), "--json"]) == 0
    return {row["id"]: row for row in json.loads(capsys.readouterr().out)["jobs"]}


DEEP = b"[" * 200000
# Each damage with the state the job is listed in and a word of its reason.
DAMAGES = {
    "job-deep": ({"job.json": DEEP}, BROKEN, "nested too deeply"),
    "job-pid": ({"job.json": {"pid": "abc"}}, BROKEN, "pid"),
    "job-created": ({"job.json": {"created": 1e300}}, BROKEN, "created"),
    "job-argv-nul": ({"job.json": {"argv": ["--teacher", "a\0b"]}}, BROKEN, "argv"),
    "exit-code-text": ({"exit.json": {"exit_code": "abc"}, "events": EVENTS[:3]},
                       INTERRUPTED, "exit.json"),
    "exit-deep": ({"exit.json": DEEP, "events": EVENTS[:3]}, INTERRUPTED, "exit.json"),
    "events-ff": ({"events": [EVENTS[0], b"\xff\xfe{\n"] + EVENTS[1:]}, SUCCEEDED, ""),
    "events-number": ({"events": [5] + EVENTS}, SUCCEEDED, ""),
    "events-list": ({"events": EVENTS[:2] + [[1, 2]] + EVENTS[2:]}, SUCCEEDED, ""),
    "step-without-step": ({"events": EVENTS + [{"event": "step"}]}, SUCCEEDED, ""),
    "step-text": ({"events": EVENTS[:3] + [{"event": "step", "step": "x"}]}, FAILED, ""),
    "synth-without-done": ({"events": EVENTS[:2] + [{"event": "synth", "total": 3}]},
                           FAILED, ""),
    "eta-infinite": ({"events": EVENTS[:3] + [{"event": "step", "step": 3, "eta_s": 1e400,
                                               "it_s": 1e308}]}, FAILED, ""),
    "deep-event": ({"events": EVENTS[:3] + [b'{"event": "step", "step": ' + DEEP + b"\n"]},
                   FAILED, ""),
    "samples-path-object": ({"events": EVENTS[:4] + [{"event": "samples", "step": 2,
                                                      "path": {"a": 1}}]}, FAILED, ""),
    "eval-score-text": ({"events": EVENTS[:5] + [{"event": "eval", "step": 2, "best": True,
                                                  "ssim": "high", "psnr": None}]},
                        FAILED, ""),
}


def damage(root: Path, name: str) -> None:
    files, _, _ = DAMAGES[name]
    folder = write_job(root, name)
    job = files.get("job.json")
    if isinstance(job, dict):
        data = json.loads((folder / "job.json").read_text())
        data.update(job)
        (folder / "job.json").write_text(json.dumps(data))
    elif job is not None:
        (folder / "job.json").write_bytes(job)
    record = files.get("exit.json", EXIT)
    (folder / "exit.json").write_bytes(record if isinstance(record, bytes) else
                                       json.dumps(record).encode())
    write_events(folder, files.get("events", EVENTS))
    (folder / "checkpoints" / "step-0000002").mkdir(parents=True)


def test_one_damaged_file_is_listed_with_its_reason_and_every_other_job_stays_usable(
        tmp_path, capsys):
    root = tmp_path / "jobs"
    for name in DAMAGES:
        damage(root, name)
    write_job(root, "good-queued", state=QUEUED)
    write_job(root, "good-stopped", state=CANCELLED, reason="stopped")
    (root / "good-stopped" / "checkpoints" / "step-0000001").mkdir(parents=True)

    rows = listed(capsys, root)
    for name, (_, state, word) in DAMAGES.items():
        assert rows[name]["state"] == state, (name, rows[name])
        assert word in rows[name]["reason"], (name, rows[name])
    assert rows["exit-code-text"]["reason"].startswith(
        "exit.json is damaged (exit_code must be a whole number, not 'abc')")
    assert rows["events-ff"]["step"] == rows["step-without-step"]["step"] == 4
    assert main(["jobs", "list", "--root", str(root)]) == 0
    assert "job-deep" in capsys.readouterr().out

    # The others stay usable from the command line while the damaged ones are there.
    assert main(["jobs", "cancel", "--root", str(root), "good-queued"]) == 0
    assert main(["jobs", "resume", "--root", str(root), "good-stopped"]) == 0
    assert main(["jobs", "resume", "--root", str(root), "exit-code-text"]) == 0
    assert main(["jobs", "cancel", "--root", str(root), "events-ff"]) == 0
    assert main(["jobs", "resume", "--root", str(root), "job-deep"]) == 2
    assert "is broken (job.json: nested too deeply" in capsys.readouterr().err
    states = {job.id: job.state for job in JobRunner(root, drive=False).jobs()}
    assert (states["good-queued"], states["good-stopped"], states["exit-code-text"]) == (
        CANCELLED, QUEUED, QUEUED)
    assert (root / "job-deep" / "job.json").read_bytes() == DEEP  # never rewritten


class Drawn:
    """Stands in for matplotlib in the fuzz (a few hundred figures would take minutes): it
    keeps what would be drawn, which must be what `test_extreme_values_are_drawn` draws
    for real: whole steps and float values."""

    def __init__(self):
        self.curves = []

    def loss_figure(self, progress):
        for name, points in progress.losses.items():
            assert all(type(step) is int and type(value) is float for step, value in points)
        self.curves.append(progress.losses)
        return self

    def savefig(self, target, **kwargs):
        Path(target).write_bytes(b"")

    def score_plot(self, folder, points):
        self.curves.append([(e["step"], e.get("ssim"), e.get("psnr"), e.get("clip_score"))
                            for e in points])


@pytest.fixture
def page(tmp_path, monkeypatch):
    """The Jobs tab in the A1111 stand-in, its queue moved only by the calls under test
    (no poll thread), its charts kept by `Drawn`: the jobs folder (root), the modules
    (tab, service, scores, form) and the charts (drawn)."""
    import matplotlib.pyplot as plt

    start_webui(tmp_path / "webui")
    from bksdm_ext.webui import job_form, job_scores, jobs_service, jobs_tab

    monkeypatch.setattr(jobs_service, "_poll_forever", lambda owner: None)
    drawn = Drawn()
    monkeypatch.setattr(jobs_tab, "loss_figure", drawn.loss_figure)
    monkeypatch.setattr(plt, "close", lambda figure: None)
    monkeypatch.setattr(job_scores, "score_plot", drawn.score_plot)
    yield SimpleNamespace(root=jobs_service.jobs_root(), tab=jobs_tab, service=jobs_service,
                          scores=job_scores, form=job_form, drawn=drawn)
    jobs_service._runner = None
    standin_app.reset(tmp_path / "after")


def show_everything(page, job_id: str):
    """What the page calls for a job: the table and details, the scores panel, the Distill
    tab's status line; returns the details."""
    label = next(label for label in page.service.job_labels(page.service.runner().jobs())
                 if label.endswith("[%s]" % job_id))
    shown = page.tab.details(label)
    page.scores.view(label)
    page.form.status("distill")
    return shown


def test_the_jobs_tab_shows_each_damaged_job_and_the_others(page):
    for name in DAMAGES:
        damage(page.root, name)
    write_job(page.root, "good", state=CANCELLED, reason="stopped at step 2, checkpoint saved")
    (page.root / "good" / "checkpoints" / "step-0000002").mkdir(parents=True)
    for name, (_, state, word) in DAMAGES.items():
        table, chooser, bar, *_ = show_everything(page, name)
        assert chooser["value"].endswith("[%s]" % name)
        assert state in bar and word in bar, (name, bar)
        assert len(table["data"]) == len(DAMAGES) + 1
    _, _, bar, *_ = show_everything(page, "good")
    assert "cancelled: stopped at step 2" in bar
    # An evaluation whose score table in its done event is damaged says so.
    write_events(page.root / "good", [{"event": "done", "step": 2, "output": "grid.png",
                                       "scores": [{"model": "t", "psnr": "high"}]}])
    assert "scores in this job's events.jsonl are damaged" in page.scores.view("good  [good]")[1]
    assert "is broken" in page.tab.act("cancel", "job-deep  [job-deep]")


def test_a_cut_off_line_hides_nothing_after_it(tmp_path, capsys):
    """A kill cut the last line short; the resumed run goes on writing after it, and its
    events (the new start and the end) count, so the run shows how it really ended."""
    folder = write_job(tmp_path / "jobs", "resumed")
    write_events(folder, EVENTS[:3] + [b'{"time": 3.5, "event": "step", "st'])
    log = EventLog(folder / "events.jsonl")  # the resumed run
    log.write("start", total_steps=4, resumed_from="step-0000002")
    log.write("step", step=4, loss=0.2)
    log.write("done", step=4, output="/nowhere/result.png")
    (folder / "exit.json").write_text(json.dumps(EXIT))
    events = read_events(folder / "events.jsonl")
    assert [e["event"] for e in events] == ["start", "synth", "step", "start", "step", "done"]
    assert events[3]["resumed_from"] == "step-0000002"
    row = listed(capsys, tmp_path / "jobs")["resumed"]
    assert (row["state"], row["step"], row["result"]) == (SUCCEEDED, 4, "/nowhere/result.png")


def test_the_half_written_last_line_is_skipped_while_the_run_writes_it(tmp_path):
    path = tmp_path / "events.jsonl"
    write_events(tmp_path, EVENTS[:3] + [b'{"time": 3.5, "event": "st'])
    assert read_events(path) == EVENTS[:3]


# -- the fuzz -------------------------------------------------------------------------

SWAPS = [None, True, False, 0, -1, 7, 2 ** 64, 10 ** 400, 1.5, -2.5, 1e308, float("nan"),
         float("inf"), "", "x", "-1", "\u00ff", [], [1, 2], {}, {"a": None}, [[[[]]]]]
FILES = ("job.json", "exit.json", "events.jsonl")


def base_files(job_id: str):
    job = asdict(Job(id=job_id, kind="distill", argv=["--teacher", "t.safetensors"],
                     device="cpu", title="fuzzed", state=RUNNING, pid=None))
    return {"job.json": job, "exit.json": dict(EXIT), "events.jsonl": [dict(e) for e in EVENTS]}


def swap_one(data, rng: random.Random):
    """`data` (an object, or a list of events) with one value replaced by another type."""
    target = rng.choice(data) if isinstance(data, list) else data
    key = rng.choice(sorted(target))
    target[key] = rng.choice(SWAPS)
    return data


def encoded(name: str, data) -> bytes:
    if name == "events.jsonl":
        return b"".join(json.dumps(e).encode() + b"\n" for e in data)
    return json.dumps(data).encode()


def mutated(name: str, data, rng: random.Random) -> bytes:
    """One damage to one file: a type swap, a truncation, changed or random bytes, a line
    that is not an object, or deep nesting."""
    how = rng.randrange(6)
    if how == 0:
        return encoded(name, swap_one(data, rng))
    text = encoded(name, data)
    if how == 1:
        return text[:rng.randrange(len(text))]
    if how == 2:
        text = bytearray(text)
        for _ in range(rng.randint(1, 4)):
            text[rng.randrange(len(text))] = rng.randrange(256)
        return bytes(text)
    if how == 3:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(300)))
    if how == 4:
        lines = text.splitlines(keepends=True)
        lines.insert(rng.randrange(len(lines) + 1), rng.choice(
            [b"5\n", b"[1, 2]\n", b"null\n", b'"step"\n', b"{}\n", b'{"event": 5}\n']))
        return b"".join(lines)
    depth = rng.choice([100, 5000, 200000])
    return text[:rng.randrange(len(text))] + b"[" * depth + b"]" * rng.choice([0, depth])


def fuzz_cases(seed: int, count: int):
    rng = random.Random(seed)
    for _ in range(count):
        files = base_files("fuzzed")
        damaged = rng.sample(FILES, rng.randint(1, 2))
        yield {name: mutated(name, data, rng) if name in damaged else encoded(name, data)
               for name, data in files.items()}


def test_fuzzed_job_files_never_raise_out_of_jobs_list_or_the_jobs_tab(page):
    """Random bytes, truncations and type swaps of each job file, a few hundred cases: the
    command line lists every job, the tab shows every job, the good one as it is."""
    from bksdm_ext.cli import build_parser

    write_job(page.root, "good", state=FAILED, reason="bad argument")
    folder = page.root / "fuzzed"
    folder.mkdir()
    listing = build_parser().parse_args(["jobs", "list", "--root", str(page.root)])
    for number, case in enumerate(fuzz_cases(seed=22, count=300)):
        for name, content in case.items():
            (folder / name).write_bytes(content)
        try:
            result = listing.run(listing)  # `bksdm jobs list`, and with --json
            listing.render(result), json.dumps(result)
            rows = {row["id"]: row for row in result["jobs"]}
            assert rows["good"]["state"] == FAILED and rows["fuzzed"]["state"] in (
                SUCCEEDED, FAILED, INTERRUPTED, BROKEN, RUNNING)
            table, *_ = show_everything(page, "fuzzed")
        except BaseException:
            print("case %d: %r" % (number, case))
            raise
        assert sorted(row[-1] for row in table["data"]) == ["fuzzed", "good"]
    assert not (folder / "log.txt").exists()  # no fuzzed file made a queued job that started
    assert len(page.drawn.curves) > 50  # the fuzz reached the charts


def test_extreme_values_are_drawn(tmp_path):
    """What a diverged or damaged run gives the plots: NaN, infinities, huge and negative
    values, one point, big step numbers."""
    import matplotlib.pyplot as plt

    from bksdm_ext.jobs.runner import progress_of
    from bksdm_ext.webui import job_scores, jobs_tab

    values = [float("nan"), float("inf"), -float("inf"), 1e308, -1e308, 0.0, -2.5, 5e-324]
    events = [{"event": "step", "step": 2 ** 53 - i, "loss": v, "kd_out": -v}
              for i, v in enumerate(values)]
    for progress in (progress_of(events), progress_of(events[:1]), progress_of(events[1:2])):
        plt.close(jobs_tab.loss_figure(progress))
    points = [{"event": "eval", "step": i, "best": True, "ssim": v, "psnr": v, "clip_score": v}
              for i, v in enumerate(values)]
    assert Path(job_scores.score_plot(tmp_path, points)).is_file()
    assert job_scores.best_line(points)
