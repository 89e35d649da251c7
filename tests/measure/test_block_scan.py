"""The block sensitivity scan (issue #15 item 3) on a tiny random teacher."""
import csv
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from bksdm_ext.cli import main
from bksdm_ext.demo import write_tiny_teacher
from bksdm_ext.jobs.events import read_events
from bksdm_ext.measure import block_scan

# down.0.1 (LDM input_blocks.2) made a no-op: a resnet whose residual branch ends in zeros
# is the identity (same width), and so is an attention block whose proj_out is zero.
NO_OP_UNIT = "down.0.1"
ZEROED = ("model.diffusion_model.input_blocks.2.0.out_layers.3.",
          "model.diffusion_model.input_blocks.2.1.proj_out.")

# The chart: A1111 has matplotlib (gradio needs it), the `train` extra does not (the newest stack).
NEEDS_MATPLOTLIB = pytest.mark.skipif(not block_scan.can_plot(),
                                      reason="draws the chart: needs matplotlib")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    path = tmp_path_factory.mktemp("scan") / "tiny-sd-v1.safetensors"
    write_tiny_teacher(path)
    state = load_file(str(path))
    for key in state:
        if key.startswith(ZEROED):
            state[key] = torch.zeros_like(state[key])
    save_file(state, str(path))
    return path


@NEEDS_MATPLOTLIB
@pytest.mark.slow
def test_scan_ranks_every_unit_and_writes_table_and_chart(teacher, tmp_path, capsys,
                                                          monkeypatch):
    out = tmp_path / "job"
    argv = ["blocks", str(teacher), "--steps", "2", "--size", "32", "--cache-dir",
            str(tmp_path / "cache"), "--out", str(out), "--json"]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n\na blue square\n")
    assert main(argv + ["--prompts", str(prompts)]) == 0
    result = json.loads(capsys.readouterr().out)
    rows = {r["unit"]: r for r in result["rows"]}
    singles = ["down.%d.%d" % (s, l) for s in range(4) for l in range(2)] + ["mid"] + \
        ["up.%d.%d" % (s, l) for s in range(4) for l in range(3)] + ["innermost"]
    pairs = ["down.%d.1,up.%d.1" % (s, s) for s in range(4)]
    assert sorted(rows) == sorted(singles + pairs)
    assert result["settings"]["prompts"] == ["a red circle", "a blue square"]
    assert math.isinf(rows[NO_OP_UNIT]["psnr"]) and rows[NO_OP_UNIT]["ssim"] == 1.0
    for unit, row in rows.items():
        if unit != NO_OP_UNIT:
            assert row["ssim"] < 1.0 and math.isfinite(row["psnr"]), unit
    assert rows["mid"]["how"] == rows["innermost"]["how"] == rows[pairs[1]]["how"] == "removed"
    assert rows["down.1.0"]["how"] == rows["up.2.1"]["how"] == "stand-in"
    assert rows["innermost"]["params"] > rows["down.3.0"]["params"] > 0
    ranked = [r["ssim"] for r in result["rows"]]
    assert ranked == sorted(ranked)
    with open(out / "blocks.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    assert (out / "blocks.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    events = read_events(out / "events.jsonl")
    assert events[-1]["event"] == "done" and events[-1]["output"] == str(out / "blocks.png")
    assert [e["step"] for e in events if e["event"] == "step"][-1] == len(rows)
    assert events[0]["event"] == "start" and events[0]["total_steps"] == len(rows)

    # Cached per teacher hash and settings: the same scan does not render again.
    monkeypatch.setattr(block_scan, "scan", lambda *a, **k: pytest.fail("scanned again"))
    assert main(argv[:-3] + ["--prompts", str(prompts), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == result["rows"]


def test_channel_interpolation_stand_in_keeps_the_identity_and_resizes():
    same = block_scan.ChannelInterpolation(8, 8)
    x = torch.randn(2, 8, 3, 3)
    assert same(x, None) is x
    wider = block_scan.ChannelInterpolation(4, 7)(torch.arange(4.0).view(1, 4, 1, 1), None)
    assert torch.allclose(wider.flatten(), torch.linspace(0, 3, 7))


def test_a_missing_teacher_is_refused(tmp_path, capsys):
    assert main(["blocks", str(tmp_path / "nope.safetensors")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_a_chart_without_matplotlib_is_refused_before_the_scan(teacher, tmp_path, capsys,
                                                               monkeypatch):
    """`pip install .[train]` brings no matplotlib: --plot says so before any unit is scanned."""
    monkeypatch.setattr(block_scan, "can_plot", lambda: False)
    monkeypatch.setattr(block_scan, "scan", lambda *args, **kwargs: pytest.fail("scanned"))
    assert main(["blocks", str(teacher), "--plot", str(tmp_path / "chart.png"),
                 "--cache-dir", str(tmp_path / "cache")]) == 2
    assert "needs matplotlib, which is not installed: pip install matplotlib" in capsys.readouterr().err
    assert not (tmp_path / "chart.png").exists()


def agreeable_clip(folder: Path) -> Path:
    """A tiny random CLIP whose text and image embeddings point roughly the same way (a
    shared offset before one shared projection), so its scores are well above CLIP score's
    floor of 0 and still move with the image."""
    from transformers import CLIPModel

    from test_scores import tiny_clip

    model = CLIPModel.from_pretrained(str(tiny_clip(folder)))
    with torch.no_grad():
        offset = torch.linspace(-1, 1, model.config.text_config.hidden_size)
        for norm in (model.vision_model.post_layernorm, model.text_model.final_layer_norm):
            norm.weight.mul_(0.2)
            norm.bias.copy_(offset)
        model.visual_projection.weight.copy_(model.text_projection.weight)
    model.save_pretrained(str(folder))
    return folder


def test_a_clip_found_in_a_clip_folder_that_cannot_be_read_leaves_the_score_empty(
        teacher, tmp_path, capsys, a1111_machine):
    """What the WebUI's scan job gets: its interrogator's folder, not a CLIP named; a
    ViT-L-14.pt cut short there is no reason to fail the scan."""
    folder = tmp_path / "interrogate"
    folder.mkdir()
    (folder / "ViT-L-14.pt").write_bytes(b"PK\x03\x04 cut short")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n")
    assert main(["blocks", str(teacher), "--steps", "1", "--size", "32", "--no-groups",
                 "--prompts", str(prompts), "--cache-dir", str(tmp_path / "cache"),
                 "--clip-folder", str(folder), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["clip_model"] == ""
    assert "no CLIP score: %s: not a CLIP checkpoint" % (folder / "ViT-L-14.pt") in captured.err


@NEEDS_MATPLOTLIB
@pytest.mark.slow
def test_clip_scores_join_the_scan_and_a_clip_less_cached_scan_is_redone(
        teacher, tmp_path, capsys, monkeypatch, a1111_machine):
    """First with the Hugging Face cache A1111 leaves (CLIP's config without weights): no
    CLIP score, the table says how to get one; then with a CLIP named."""
    from PIL import Image

    from bksdm_ext.scores import clip as clip_module

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n")
    argv = ["blocks", str(teacher), "--steps", "1", "--size", "32", "--no-groups", "--prompts",
            str(prompts), "--cache-dir", str(tmp_path / "cache")]
    assert main(argv + ["--plot", str(tmp_path / "plain.png"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["clip_model"] == "" and result["teacher_clip_score"] is None
    assert all(r["clip_score"] is None for r in result["rows"])
    assert main(argv) == 0  # cached now: the table
    assert "CLIP score: " + clip_module.HOW_TO_ENABLE in capsys.readouterr().out

    clip = str(agreeable_clip(tmp_path / "clip"))
    out = tmp_path / "job"
    assert main(argv + ["--clip-model", clip, "--out", str(out), "--json"]) == 0  # not cached
    result = json.loads(capsys.readouterr().out)
    assert result["clip_model"] == clip and result["device"].startswith("CPU")
    teacher_score = result["teacher_clip_score"]
    assert 0 < teacher_score <= 100  # above the floor, so a change can show
    rows = {r["unit"]: r for r in result["rows"]}
    assert rows[NO_OP_UNIT]["clip_score"] == teacher_score and rows[NO_OP_UNIT]["clip_change"] == 0
    for unit, row in rows.items():
        assert row["clip_change"] == pytest.approx(row["clip_score"] - teacher_score)
        if unit != NO_OP_UNIT:
            assert row["clip_change"] != 0, unit
    with open(out / "blocks.csv") as f:
        first = next(csv.DictReader(f))
    assert float(first["clip_change"]) == pytest.approx(rows[first["unit"]]["clip_change"])
    with Image.open(out / "blocks.png") as chart, Image.open(tmp_path / "plain.png") as plain:
        assert chart.height > plain.height  # the CLIP-change panel under the SSIM bars

    # Now cached with CLIP scores: asked again, nothing renders; the table shows them.
    monkeypatch.setattr(block_scan, "scan", lambda *a, **k: pytest.fail("scanned again"))
    assert main(argv + ["--clip-model", clip]) == 0
    text = capsys.readouterr().out
    assert "ΔCLIP" in text and "CLIP score with %s: the full teacher scores %.2f" % (
        clip, teacher_score) in text


@pytest.mark.slow
def test_a_stopped_scan_resumes_where_it_stopped_and_matches_an_uninterrupted_one(
        teacher, tmp_path, capsys, monkeypatch):
    """Each unit's row is checkpointed as it is measured (issue 22 #11): a resumed scan
    renders only the units it had not measured and ends as an uninterrupted scan does."""
    from bksdm_ext.cli import EXIT_STOPPED

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n")
    argv = ["blocks", str(teacher), "--steps", "1", "--size", "32", "--no-groups", "--prompts",
            str(prompts), "--json"]
    assert main(argv + ["--cache-dir", str(tmp_path / "whole")]) == 0
    whole = json.loads(capsys.readouterr().out)

    out, renders, render, stop_at = tmp_path / "job", [], block_scan._render, [4]

    def counted(pipe, settings, device):
        renders.append(settings)
        if len(renders) in stop_at:  # the teacher and three units: stop after this one
            (out / "STOP").write_text("discard")
        return render(pipe, settings, device)

    monkeypatch.setattr(block_scan, "_render", counted)
    job = argv + ["--cache-dir", str(tmp_path / "cache"), "--out", str(out)]
    assert main(job) == EXIT_STOPPED
    assert "stopped after 3 of %d units; they are kept" % len(whole["rows"]) in \
        capsys.readouterr().err
    assert (out / "checkpoints" / "step-0000003" / block_scan.SCAN_SO_FAR).is_file()
    assert main(job) == 2  # not over a run without --resume
    assert "pass --resume" in capsys.readouterr().err

    renders.clear()
    stop_at.clear()
    assert main(job + ["--resume"]) == 0
    resumed = json.loads(capsys.readouterr().out)
    assert len(renders) == len(whole["rows"]) - 3  # neither the teacher nor a unit again
    same = ("unit", "how", "psnr", "ssim", "params", "step_share")
    assert [{k: r[k] for k in same} for r in resumed["rows"]] == [
        {k: r[k] for k in same} for r in whole["rows"]]
    events = read_events(out / "events.jsonl")
    assert [e["saved"] for e in events if e["event"] == "stopped"] == [True]
    starts = [e for e in events if e["event"] == "start"]
    assert [bool(e["resumed_from"]) for e in starts] == [False, True]
    assert events[events.index(starts[1]) + 1]["step"] == 3 and events[-1]["event"] == "done"

    other = tmp_path / "other-prompts.txt"
    other.write_text("a blue square\n")
    (out / "STOP").write_text("discard")
    shutil.rmtree(str(tmp_path / "cache"))
    changed = [a if a != str(prompts) else str(other) for a in job]
    assert main(changed + ["--resume"]) == 2  # other settings would mix two scans
    assert "with other settings" in capsys.readouterr().err


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs Linux /proc")
@pytest.mark.slow
def test_a_killed_scan_job_resumes_from_its_last_unit(teacher, tmp_path):
    """The job as the Blocks view queues it, its worker killed mid-scan: interrupted,
    resumable, and resumed to the end without measuring a unit twice."""
    import os
    import signal
    import time

    from bksdm_ext.jobs.arguments import command_line
    from bksdm_ext.jobs.runner import INTERRUPTED, SUCCEEDED, JobRunner
    from bksdm_ext.jobs.runs import RunPaths
    from bksdm_ext.jobs.worker import read_exit
    from test_jobs import wait

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n")
    runner = JobRunner(tmp_path / "jobs")
    job = runner.submit("blocks", command_line(
        {"steps": 1, "size": 32, "no_groups": True, "prompts": str(prompts),
         "cache_dir": str(tmp_path / "cache")}, [str(teacher)]), device="cpu")
    run = RunPaths(runner.folder(job.id))
    deadline = time.time() + 600
    while run.latest_checkpoint() is None:  # killed within a unit of its first checkpoint
        assert read_exit(run.out) is None and time.time() < deadline, runner.log_tail(job.id)
        time.sleep(0.01)
    os.kill(runner.job(job.id).pid, signal.SIGKILL)
    time.sleep(0.5)
    restarted = JobRunner(tmp_path / "jobs")
    interrupted = restarted.job(job.id)
    assert interrupted.state == INTERRUPTED, interrupted
    assert "resume it from its last checkpoint" in interrupted.reason
    measured = int(run.latest_checkpoint().name.split("-")[1])
    restarted.resume(job.id)
    done = wait(restarted, job.id, lambda j: j.state not in ("queued", "running"))
    assert done.state == SUCCEEDED, restarted.log_tail(job.id)
    events = restarted.events(job.id)
    start = max(i for i, e in enumerate(events) if e["event"] == "start")
    assert events[start]["resumed_from"] and events[start + 1]["step"] >= measured
    with open(str(run.out / "blocks.csv")) as f:
        assert len(list(csv.DictReader(f))) == events[start]["total_steps"]
