"""The job runner between processes: how a job's process finds the package, how it records
its end, one start per job whatever the number of processes moving the queue, and a
damaged job.json that the list and the queue carry on around.  Every process here is
real; the runs themselves fail fast (bad arguments) or are killed."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bksdm_ext.cli import main
from bksdm_ext.errors import BadInput
from bksdm_ext.jobs.runner import (BROKEN, EXTENSION_ROOT, FAILED, INTERRUPTED, QUEUED, RUNNING,
                                   SETTLED, JobRunner, child_environment)
from bksdm_ext.jobs.worker import read_exit

BAD_ARGS = ["--no-such-option"]  # the run's argument parser refuses it at once:
REFUSED = "bksdm distill: error: the following arguments are required"


def clean_environment():
    return {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}


def wait_settled(runner, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        runner.poll()
        jobs = runner.jobs()
        if all(job.state in SETTLED for job in jobs):
            return jobs
        time.sleep(0.2)
    raise AssertionError("jobs still running: %s" % [(j.id, j.state) for j in runner.jobs()])


def test_the_tests_python_cannot_import_the_project_without_the_extension_folder(tmp_path):
    """As in a real WebUI, where the extension is not installed: nothing may import it by
    accident (an installed copy, the working directory), or the job tests would prove
    nothing."""
    code = "import bksdm_ext; print(bksdm_ext.__file__)"
    alone = subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path),
                           env=clean_environment(), capture_output=True, text=True)
    assert alone.returncode != 0 and "No module named 'bksdm_ext'" in alone.stderr
    given = subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path),
                           env=child_environment(clean_environment()), capture_output=True,
                           text=True)
    assert given.returncode == 0, given.stderr
    assert Path(given.stdout.strip()).parent.parent == Path(EXTENSION_ROOT)


def test_a_jobs_python_path_starts_with_the_extension_and_keeps_what_was_there():
    env = child_environment({"PYTHONPATH": os.pathsep.join(["/a", EXTENSION_ROOT, "/b"]),
                             "HOME": "/home/x"})
    assert env["PYTHONPATH"].split(os.pathsep) == [EXTENSION_ROOT, "/a", "/b"]
    assert env["HOME"] == "/home/x" and env["PYTHONUNBUFFERED"] == "1"
    assert child_environment({})["PYTHONPATH"] == EXTENSION_ROOT


def test_a_job_started_from_anywhere_finds_the_package_and_fails_with_its_log_line(tmp_path):
    """The runner's children get the package from the extension folder, whatever the
    working directory and PYTHONPATH of the process that starts them (here one that has
    the package on sys.path only, as a WebUI does)."""
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    script = ("import sys, time; sys.path.insert(0, %r)\n"
              "from bksdm_ext.jobs.runner import JobRunner, SETTLED\n" % EXTENSION_ROOT +
              "runner = JobRunner(sys.argv[1])\n"
              "job = runner.submit('distill', ['--no-such-option'], device='cpu')\n"
              "while runner.job(job.id).state not in SETTLED:\n"
              "    time.sleep(0.2); runner.poll()\n"
              "print(runner.job(job.id).reason)\n")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "jobs")],
                          cwd=str(elsewhere), env=clean_environment(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert REFUSED in done.stdout  # not "No module named bksdm_ext"


@pytest.mark.slow
def test_a_queued_job_starts_exactly_once_when_many_processes_move_the_queue(tmp_path):
    """Eight processes poll the same jobs folder at the same moment, three times over; each
    queued job (one per device) must be started by exactly one of them."""
    poller = ("import sys, time\n"
              "from bksdm_ext.jobs.runner import JobRunner\n"
              "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))\n"
              "JobRunner(sys.argv[1])\n")
    root = tmp_path / "jobs"
    submitter = JobRunner(root, drive=False)
    env = child_environment(os.environ)
    for round_ in range(3):
        # Devices of their own: a job of the last round still running (a loaded machine)
        # would rightly keep a new job on its device waiting.
        jobs = [submitter.submit("distill", BAD_ARGS, device="dev-%d-%d" % (round_, i),
                                 title="r%d" % round_)
                for i in range(6)]
        moment = time.time() + 2.0
        pollers = [subprocess.Popen([sys.executable, "-c", poller, str(root), str(moment)],
                                    env=env) for _ in range(8)]
        assert [p.wait(timeout=120) for p in pollers] == [0] * 8
        for job in jobs:
            log = submitter.log_tail(job.id, lines=1000)
            assert log.count("[bksdm jobs]") == 1, log
    settled = wait_settled(JobRunner(root))
    assert [job.state for job in settled] == [FAILED] * 18


def test_jobs_list_cancel_and_resume_never_start_a_job(tmp_path, capsys):
    root = str(tmp_path / "jobs")
    job = JobRunner(root, drive=False).submit("distill", BAD_ARGS, device="cpu")
    assert main(["jobs", "list", "--root", root]) == 0
    assert main(["jobs", "list", "--root", root, "--json"]) == 0
    assert JobRunner(root, drive=False).job(job.id).state == QUEUED
    assert main(["jobs", "cancel", "--root", root, job.id]) == 0
    assert JobRunner(root, drive=False).job(job.id).state == "cancelled"
    (tmp_path / "jobs" / job.id / "checkpoints" / "step-0000001").mkdir(parents=True)
    assert main(["jobs", "resume", "--root", root, job.id]) == 0
    assert main(["jobs", "list", "--root", root]) == 0
    assert JobRunner(root, drive=False).job(job.id).state == QUEUED
    assert not (tmp_path / "jobs" / job.id / "log.txt").exists()  # never started


def test_jobs_submit_after_waits_for_that_job_and_the_list_says_so(tmp_path, capsys):
    from bksdm_ext.cli.jobs import render

    root = str(tmp_path / "jobs")
    first = JobRunner(root, drive=False).submit("distill", BAD_ARGS, device="cpu")
    assert main(["jobs", "submit", "--root", root, "--device", "cpu", "--after", first.id,
                 "--json", "distill"] + BAD_ARGS) == 0
    second = next(job for job in JobRunner(root, drive=False).jobs() if job.id != first.id)
    assert second.after == first.id
    row = dict(json.loads(capsys.readouterr().out)["jobs"][-1], state=QUEUED, reason="")
    assert row["after"] == first.id and render([row]).endswith("  (after %s)" % first.id)
    settled = {job.id: job for job in wait_settled(JobRunner(root))}
    assert settled[first.id].state == FAILED
    assert settled[second.id].state == "cancelled" and first.id in settled[second.id].reason
    capsys.readouterr()
    assert main(["jobs", "submit", "--root", root, "--after", "nope", "distill"] + BAD_ARGS) == 2
    assert "no job 'nope'" in capsys.readouterr().err


def kill_worker(pid, folder):
    """SIGKILL a job's worker and wait until no reader of the job list takes it for running
    (a killed process takes a moment to end, more on a loaded machine)."""
    from bksdm_ext.jobs.runner import _pid_runs

    os.kill(pid, signal.SIGKILL)
    deadline = time.time() + 60
    while _pid_runs(pid, str(folder)):
        assert time.time() < deadline, "the killed worker %d still runs" % pid
        time.sleep(0.05)


def run_started(runner, job_id):
    """Wait until the job's worker has started its run; returns the run's pid."""
    worker = runner.job(job_id).pid
    children = Path("/proc/%d/task/%d/children" % (worker, worker))
    deadline = time.time() + 60
    while time.time() < deadline:
        found = children.read_text().split() if children.is_file() else []
        if found:
            return int(found[0])
        time.sleep(0.1)
    raise AssertionError("the worker of %s started no run" % job_id)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_every_reader_tells_a_failed_job_from_an_interrupted_one(tmp_path, capsys):
    """The process that started a job is gone (a WebUI restart, a CLI that returned): a
    reader that never saw the job end still tells failed from interrupted, from the
    worker's record in the job folder."""
    root = tmp_path / "jobs"
    submitter = JobRunner(root, drive=False)
    failing = submitter.submit("distill", BAD_ARGS, device="cpu", title="failing")
    killed = submitter.submit("distill", ["--teacher", "t", "--data", "d"], device="cpu:1",
                              title="killed")  # another device: both start in one poll
    starter = JobRunner(root)
    os.kill(run_started(starter, killed.id), signal.SIGKILL)  # as the OOM killer does
    deadline = time.time() + 60
    while time.time() < deadline and None in (read_exit(root / failing.id),
                                              read_exit(root / killed.id)):
        time.sleep(0.2)
    del starter  # never polled again: it saw neither end
    (root / killed.id / "checkpoints" / "step-0000001").mkdir(parents=True)  # resumable

    assert main(["jobs", "list", "--root", str(root), "--json"]) == 0
    listed = {row["title"]: row for row in json.loads(capsys.readouterr().out)["jobs"]}
    assert listed["failing"]["state"] == FAILED
    assert REFUSED in listed["failing"]["reason"]
    assert listed["killed"]["state"] == INTERRUPTED
    assert "killed by SIGKILL" in listed["killed"]["reason"]
    assert "resume it" in listed["killed"]["reason"]
    record = read_exit(root / failing.id)
    assert record["exit_code"] == 2 and record["signal"] is None
    # `list` only read: the job files still say running until a queue mover notices.
    assert {json.loads((root / job.id / "job.json").read_text())["state"]
            for job in (failing, killed)} == {RUNNING}
    moved = {job.title: job for job in JobRunner(root).jobs()}
    assert (moved["failing"].state, moved["killed"].state) == (FAILED, INTERRUPTED)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_every_command_sees_a_killed_worker_as_jobs_list_does_before_anything_polled(
        tmp_path, capsys):
    """kill -9 of a worker: `jobs list` says interrupted, so `jobs resume` queues it again
    at once and `jobs cancel` asks nothing of it, with no poll in between (issue 22 #10)."""
    root = tmp_path / "jobs"
    job = JobRunner(root, drive=False).submit("distill", ["--teacher", "t", "--data", "d"],
                                              device="cpu")
    starter = JobRunner(root)
    run_started(starter, job.id)
    (root / job.id / "checkpoints" / "step-0000001").mkdir(parents=True)
    worker = starter.job(job.id).pid
    kill_worker(worker, root / job.id)  # its run goes with it
    del starter  # never polls again
    assert json.loads((root / job.id / "job.json").read_text())["state"] == RUNNING

    assert main(["jobs", "list", "--root", str(root), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)["jobs"][0]
    assert row["state"] == INTERRUPTED and "resume it from its last checkpoint" in row["reason"]
    assert main(["jobs", "cancel", "--root", str(root), job.id]) == 0
    assert not (root / job.id / "STOP").exists()  # nothing runs that would read it
    assert main(["jobs", "resume", "--root", str(root), job.id]) == 0, capsys.readouterr().err
    resumed = JobRunner(root, drive=False).job(job.id)
    assert (resumed.state, resumed.resume) == (QUEUED, True)


def test_an_interrupted_job_that_saved_nothing_says_to_submit_it_again(tmp_path, capsys):
    """The state text promises a resume only where there is a checkpoint to resume from."""
    root = tmp_path / "jobs"
    runner = JobRunner(root, drive=False)
    for title in ("saved", "nothing"):
        job = runner.submit("blocks", ["t.safetensors"], device="cpu", title=title)
        data = json.loads((root / job.id / "job.json").read_text())
        data.update(state=RUNNING, pid=None)  # its process is gone
        (root / job.id / "job.json").write_text(json.dumps(data))
        if title == "saved":
            (root / job.id / "checkpoints" / "step-0000003").mkdir(parents=True)
    assert main(["jobs", "list", "--root", str(root), "--json"]) == 0
    rows = {row["title"]: row for row in json.loads(capsys.readouterr().out)["jobs"]}
    assert rows["saved"]["reason"].endswith("; resume it from its last checkpoint")
    assert rows["nothing"]["reason"].endswith(
        "; it saved nothing to resume from: submit it again")
    assert main(["jobs", "resume", "--root", str(root), rows["nothing"]["id"]]) == 2
    assert "saved no checkpoint to resume from; submit it again" in capsys.readouterr().err
    assert main(["jobs", "resume", "--root", str(root), rows["saved"]["id"]]) == 0


@pytest.mark.slow
def test_a_damaged_job_file_is_listed_as_broken_and_the_rest_carries_on(tmp_path, capsys):
    root = tmp_path / "jobs"
    good = JobRunner(root, drive=False).submit("distill", BAD_ARGS, device="cpu", title="good")
    damage = {"garbage": "{not json", "empty": "", "unknown": None, "list": "[1, 2]",
              "typed": None}
    for name, text in damage.items():
        (root / name).mkdir()
        if text is None:  # a job file with a key this version does not know, or a wrong type
            data = json.loads((root / good.id / "job.json").read_text())
            data.update({"id": name, "colour": "blue"} if name == "unknown" else
                        {"id": name, "argv": "--steps 5"})
            text = json.dumps(data)
        (root / name / "job.json").write_text(text)

    assert main(["jobs", "list", "--root", str(root), "--json"]) == 0
    rows = {row["id"]: row for row in json.loads(capsys.readouterr().out)["jobs"]}
    assert rows[good.id]["state"] == QUEUED
    assert {name: rows[name]["state"] for name in damage} == {name: BROKEN for name in damage}
    assert "Expecting" in rows["garbage"]["reason"] and "Expecting" in rows["empty"]["reason"]
    assert "unknown key 'colour'" in rows["unknown"]["reason"]
    assert "not a JSON object" in rows["list"]["reason"]
    assert "argv must be a list of texts without NUL, not '--steps 5'" in rows["typed"]["reason"]
    assert main(["jobs", "list", "--root", str(root)]) == 0
    assert "garbage" in capsys.readouterr().out

    runner = JobRunner(root)  # the queue moves past them
    wait_settled(runner)
    assert runner.job(good.id).state == FAILED
    assert main(["jobs", "resume", "--root", str(root), "garbage"]) == 2
    assert "is broken" in capsys.readouterr().err
    assert (root / "garbage" / "job.json").read_text() == "{not json"  # never rewritten


def test_ids_not_in_the_list_are_refused_before_any_file_is_touched(tmp_path, capsys):
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "jobs"
    job = JobRunner(root, drive=False).submit("distill", BAD_ARGS, device="cpu")
    data = json.loads((root / job.id / "job.json").read_text())
    data.update(id="outside", state=RUNNING)
    (outside / "job.json").write_text(json.dumps(data))
    runner = JobRunner(root, drive=False)
    for bad in ("../outside", str(outside), "", ".", job.id + "/.."):
        for action in (lambda: runner.cancel(bad), lambda: runner.resume(bad),
                       lambda: runner.events(bad), lambda: runner.log_tail(bad)):
            with pytest.raises(BadInput, match="no job"):
                action()
    assert sorted(p.name for p in outside.iterdir()) == ["job.json"]  # no STOP written there
    assert main(["jobs", "cancel", "--root", str(root), "../outside"]) == 2
    assert "no job '../outside'" in capsys.readouterr().err


@pytest.mark.slow
def test_a_multi_process_job_finds_the_package_in_every_accelerate_process(tmp_path,
                                                                           monkeypatch):
    """`--processes 2`: accelerate launch (DDP over gloo on the CPU) starts two ranks, and
    both import bksdm_ext from the extension folder, from a directory outside it."""
    monkeypatch.delenv("PYTHONPATH", raising=False)
    monkeypatch.chdir(tmp_path)
    runner = JobRunner(tmp_path / "jobs")
    job = runner.submit("distill", BAD_ARGS, device="cpu", processes=2)
    assert "accelerate.commands.launch" in runner.command(job)
    wait_settled(runner, timeout=300)
    log = runner.log_tail(job.id, lines=400)
    assert runner.job(job.id).state == FAILED
    assert log.count(REFUSED) == 2 and "No module named" not in log


@pytest.mark.skipif(not Path("/proc/self/cmdline").is_file(), reason="needs Linux's /proc")
def test_a_job_process_that_just_started_is_running_and_a_zombie_is_not(tmp_path):
    """Another process may list the jobs a moment after one started, while the new process
    is still exec'ing and its command line reads empty: it must not be taken for dead (and
    its device for free). A process that ended but was not waited for (a zombie) is dead."""
    from bksdm_ext.jobs.runner import _pid_runs

    marker = str(tmp_path / "job-folder")
    # Started as the runner starts a job. The empty window lasts about a millisecond; the
    # check without a second read missed 1 start in 8 here, so 100 starts cannot all pass.
    with open(str(tmp_path / "log.txt"), "ab") as log:
        for _ in range(100):
            process = subprocess.Popen(
                [sys.executable, "-c", "import time; time.sleep(5)", marker], stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
            try:
                assert _pid_runs(process.pid, marker)
            finally:
                process.kill()
                process.wait()
    ended = subprocess.Popen([sys.executable, "-c", "pass", marker], stdin=subprocess.DEVNULL)
    while Path("/proc/%d/stat" % ended.pid).read_text().rsplit(")", 1)[-1].split()[0] != "Z":
        time.sleep(0.01)
    started = time.monotonic()
    assert not _pid_runs(ended.pid, marker)  # not waited for yet: a zombie
    assert time.monotonic() - started < 0.5
    ended.wait()
    assert not _pid_runs(ended.pid, marker)
