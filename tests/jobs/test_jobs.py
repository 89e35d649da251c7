"""Background jobs with real worker processes running tiny distillations on the CPU."""
import time
from pathlib import Path

import pytest

from bksdm_ext.demo import write_tiny_teacher
from bksdm_ext.jobs.runner import (CANCELLED, FAILED, INTERRUPTED, QUEUED, RUNNING, SUCCEEDED,
                            JobRunner)
from test_distill import make_dataset
from test_job_processes import kill_worker


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    teacher = root / "tiny.safetensors"
    write_tiny_teacher(teacher)
    return teacher, make_dataset(root / "data")


def distill_args(inputs, steps=2, **extra):
    teacher, data = inputs
    args = ["--teacher", str(teacher), "--data", str(data), "--arch", "small", "--steps",
            str(steps), "--batch-size", "2", "--grad-accum", "1", "--resolution", "32",
            "--mixed-precision", "no", "--sample-every", "0", "--no-ema",
            "--no-gradient-checkpointing", "--log-every", "1",
            "--save-every", str(extra.pop("save_every", 0))]
    return args


def wait(runner, job_id, until, timeout=600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        runner.poll()
        job = runner.job(job_id)
        if until(job):
            return job
        time.sleep(0.5)
    raise AssertionError("job %s stuck in %s: %s" % (job_id, runner.job(job_id).state,
                                                     runner.log_tail(job_id)))


def first_step_done(runner, job_id):
    return lambda job: any(e["event"] == "step" for e in runner.events(job_id))


@pytest.mark.slow
def test_a_job_runs_to_success_and_the_next_one_waits_for_the_device(inputs, tmp_path):
    finished = []
    runner = JobRunner(tmp_path / "jobs", on_finish=finished.append)
    first = runner.submit("distill", distill_args(inputs), device="cpu", title="first")
    second = runner.submit("distill", distill_args(inputs), device="cpu", title="second")
    assert runner.job(first.id).state == RUNNING and runner.job(second.id).state == QUEUED
    done = wait(runner, first.id, lambda job: job.state == SUCCEEDED)
    assert Path(done.result).is_file() and done.result.startswith(str(runner.folder(first.id)))
    assert [job.title for job in finished] == ["first"]
    wait(runner, second.id, lambda job: job.state == SUCCEEDED)
    assert "distilling" in runner.log_tail(first.id)


@pytest.mark.slow
def test_cancel_stops_a_running_job_and_saves_nothing(inputs, tmp_path):
    runner = JobRunner(tmp_path / "jobs")
    job = runner.submit("distill", distill_args(inputs, steps=500), device="cpu")
    wait(runner, job.id, first_step_done(runner, job.id))
    runner.cancel(job.id)
    cancelled = wait(runner, job.id, lambda job: job.state == CANCELLED)
    assert "nothing saved" in cancelled.reason
    assert not (runner.folder(job.id) / "checkpoints").exists()
    queued = runner.submit("distill", distill_args(inputs), device="cpu")
    other = runner.submit("distill", distill_args(inputs), device="cpu")
    assert runner.cancel(other.id).state == CANCELLED  # still queued: cancelled at once
    wait(runner, queued.id, lambda job: job.state == SUCCEEDED)


@pytest.mark.slow
def test_a_killed_worker_is_interrupted_after_a_restart_and_resumes_to_the_end(inputs, tmp_path):
    runner = JobRunner(tmp_path / "jobs")
    job = runner.submit("distill", distill_args(inputs, steps=16, save_every=2), device="cpu")
    wait(runner, job.id, lambda j: any(e["event"] == "checkpoint" for e in runner.events(job.id)))
    kill_worker(runner.job(job.id).pid, runner.folder(job.id))
    restarted = JobRunner(tmp_path / "jobs")  # the WebUI starts again
    interrupted = restarted.job(job.id)
    assert interrupted.state == INTERRUPTED and "resume" in interrupted.reason
    restarted.resume(job.id)
    done = wait(restarted, job.id, lambda j: j.state == SUCCEEDED, timeout=600)
    events = restarted.events(job.id)
    assert events[-1]["event"] == "done" and events[-1]["step"] == 16
    assert any(e["event"] == "start" and e["resumed_from"] for e in events)
    assert Path(done.result).is_file()


@pytest.mark.slow
def test_a_running_job_is_reattached_after_a_restart(inputs, tmp_path):
    runner = JobRunner(tmp_path / "jobs")
    job = runner.submit("distill", distill_args(inputs, steps=500), device="cpu")
    wait(runner, job.id, first_step_done(runner, job.id))
    restarted = JobRunner(tmp_path / "jobs")
    assert restarted.job(job.id).state == RUNNING
    restarted.cancel(job.id, save=True)
    cancelled = wait(restarted, job.id, lambda j: j.state == CANCELLED)
    assert "checkpoint saved" in cancelled.reason
    assert (restarted.folder(job.id) / "checkpoints").is_dir()


@pytest.mark.slow
def test_a_failing_job_reports_its_reason(inputs, tmp_path):
    runner = JobRunner(tmp_path / "jobs")
    args = distill_args(inputs)
    args[args.index("--teacher") + 1] = str(tmp_path / "missing.safetensors")
    job = runner.submit("distill", args, device="cpu")
    failed = wait(runner, job.id, lambda j: j.state == FAILED)
    assert "missing.safetensors" in failed.reason and "no such file" in failed.reason


@pytest.mark.slow
def test_the_command_line_queues_watches_and_lists_jobs(inputs, tmp_path, capsys):
    import json

    from bksdm_ext.cli import main

    root = str(tmp_path / "jobs")
    for title in ("first", "second"):
        assert main(["jobs", "submit", "--root", root, "--device", "cpu", "--title", title,
                     "distill"] + distill_args(inputs)) == 0
    capsys.readouterr()
    assert main(["jobs", "list", "--root", root, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["jobs"]
    assert [(j["title"], j["state"]) for j in listed] == [("first", RUNNING), ("second", QUEUED)]

    assert main(["jobs", "watch", "--root", root, "--interval", "0.5", "--json"]) == 0
    done = json.loads(capsys.readouterr().out)["jobs"]
    assert [(j["state"], j["step"], j["total"]) for j in done] == [(SUCCEEDED, 2, 2)] * 2
    assert all(Path(j["result"]).is_file() for j in done)

    assert main(["jobs", "submit", "--root", root, "distill", "--out", "x"]) == 2
    assert "leave out --out" in capsys.readouterr().err
    assert main(["jobs", "resume", "--root", root, done[0]["id"]]) == 2
    assert "only a stopped job can resume" in capsys.readouterr().err
