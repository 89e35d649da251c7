"""A job that waits for another ("KD then LCM": the LCM run starts from the KD run's result):
it starts only once that one succeeded, and is cancelled, saying why, when that one ends
any other way.  The processes are real workers running a stand-in run that takes a moment
and refuses to start without the file it starts from."""
import shutil
import sys
import time
from pathlib import Path

import pytest

from bksdm_ext.errors import BadInput
from bksdm_ext.jobs.runner import (CANCELLED, FAILED, QUEUED, RUNNING, SETTLED, SUCCEEDED, WORKER,
                                   JobRunner)

# argv: run folder, seconds to take, "ok" or "fail", the file it starts from ("" for none).
RUN = """
import json, sys, time
from pathlib import Path
out, seconds, outcome, start_from = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4]
def event(**e):
    with open(out + "/events.jsonl", "a") as f:
        f.write(json.dumps(e) + "\\n")
if start_from and not Path(start_from).is_file():
    event(event="error", kind="BadInput", message="no such file: " + start_from)
    sys.exit(2)
time.sleep(seconds)
if outcome != "ok":
    event(event="error", kind="RuntimeError", message="it failed")
    sys.exit(1)
Path(out, "result.safetensors").write_bytes(b"result")
event(event="done", step=1, output=out + "/result.safetensors")
"""


class StandInRunner(JobRunner):
    def command(self, job):
        folder = str(self._path(job.id))
        return [self.python, WORKER, folder, "--", self.python, "-c", RUN, folder] + job.argv


def settle(runner, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        runner.poll()
        if all(job.state in SETTLED for job in runner.jobs()):
            return {job.title: job for job in runner.jobs()}
        time.sleep(0.1)
    raise AssertionError("jobs still running: %s" % [(j.id, j.state) for j in runner.jobs()])


def result_of(runner, job):
    return str(runner.folder(job.id) / "result.safetensors")


def test_a_job_after_another_starts_from_its_result_once_it_succeeded(tmp_path):
    runner = StandInRunner(tmp_path / "jobs", python=sys.executable)
    # The first job runs elsewhere: the device alone would not hold the second back.
    first = runner.submit("distill", ["1.5", "ok", ""], device="cpu:0", title="first")
    second = runner.submit("distill", ["0", "ok", result_of(runner, first)], device="cpu:1",
                           title="second", after=first.id)
    assert runner.job(first.id).state == RUNNING and runner.job(second.id).state == QUEUED
    assert runner.job(second.id).after == first.id  # recorded in job.json
    jobs = settle(runner)
    assert jobs["first"].state == SUCCEEDED and jobs["second"].state == SUCCEEDED, \
        runner.log_tail(second.id)
    assert jobs["second"].started >= jobs["first"].ended


@pytest.mark.parametrize("outcome", ["fail", "cancel"])
def test_a_job_after_one_that_failed_or_was_cancelled_is_cancelled_saying_why(tmp_path, outcome):
    runner = StandInRunner(tmp_path / "jobs", python=sys.executable)
    blocker = runner.submit("distill", ["1", "ok", ""], device="cpu", title="blocker")
    first = runner.submit("distill", ["0", outcome, ""], device="cpu", title="first")
    second = runner.submit("distill", ["0", "ok", ""], device="cpu", title="second",
                           after=first.id)
    third = runner.submit("distill", ["0", "ok", ""], device="cpu", title="third",
                          after=second.id)
    if outcome == "cancel":
        runner.cancel(first.id)
    jobs = settle(runner)
    assert jobs["blocker"].state == SUCCEEDED
    assert jobs["first"].state == (FAILED if outcome == "fail" else CANCELLED)
    ended = "ended " + jobs["first"].state
    assert jobs["second"].state == CANCELLED and jobs["second"].started is None
    assert jobs["second"].reason == ("not started: it starts from the result of job %s, which %s"
                                     % (first.id, ended))
    assert jobs["third"].state == CANCELLED and second.id in jobs["third"].reason


def test_a_job_waiting_for_one_that_is_gone_or_unknown(tmp_path):
    runner = StandInRunner(tmp_path / "jobs", python=sys.executable)
    with pytest.raises(BadInput, match="no job 'nope'"):
        runner.submit("distill", ["0", "ok", ""], device="cpu", after="nope")
    assert runner.jobs() == []
    first = runner.submit("distill", ["0", "ok", ""], device="cpu", title="first")
    settle(runner)
    queue = StandInRunner(runner.root, python=sys.executable, drive=False)  # queues only
    late = queue.submit("distill", ["0", "ok", ""], device="cpu", title="late", after=first.id)
    assert runner.job(late.id).state == QUEUED
    shutil.rmtree(str(runner.folder(first.id)))
    jobs = settle(runner)
    assert jobs["late"].state == CANCELLED and jobs["late"].reason.endswith("which is gone")
