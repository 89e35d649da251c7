"""The block picker and the Blocks view inside the A1111 stand-in (issue #15)."""
from pathlib import Path

import pytest

from bksdm_ext.measure import block_scan
from bksdm_ext.model.checkpoint import Checkpoint
from test_convert import load_file, unet_part
from tiny import TINY, write_teacher
from webui_env import load, webui_with_data_roots


@pytest.fixture
def webui(tmp_path):
    yield from webui_with_data_roots(tmp_path)


@pytest.mark.slow
def test_picked_blocks_convert_and_the_student_loads_exactly(webui):
    from bksdm_ext.webui import block_picker, convert_tab, guard

    teacher = write_teacher(webui, TINY["sd-v2-v"])
    load(teacher)
    assert block_picker.preset_units("small") == [
        "down.0.1", "down.1.1", "down.2.1", "down.3.1", "up.0.1", "up.1.1", "up.2.1", "up.3.1", "mid"]
    picked = ["down.0.0", "up.0.1", "innermost"]
    summary = block_picker.picked_summary(convert_tab._loaded(), picked)
    assert "down.0.0,up.0.1,innermost" in summary and "smaller" in summary and "step time" in summary
    assert "every layer of the stage" in block_picker.picked_summary(
        convert_tab._loaded(), ["down.1.0", "down.1.1", "up.1.0", "up.1.1"])
    title, _, text = convert_tab.convert("task(1)", "Small", "cut", "fp32", False,
                                         use_blocks=True, blocks=picked)
    assert "Wrote" in text, text
    student = webui / "cut.safetensors"
    assert Checkpoint(student).metadata["bksdm.removal"] == "down.0.0,up.0.1,innermost"
    model = load(student)
    assert guard.last_problem == []
    assert set(model.model.diffusion_model.state_dict()) == set(unet_part(load_file(student)[0]))
    # Unticked, the preset is converted as before.
    load(teacher)
    convert_tab.convert("task(2)", "Small", "small", "fp32", False, use_blocks=False,
                        blocks=picked)
    assert load_file(webui / "small.safetensors")[1]["bksdm.preset"] == "small"


def test_blocks_view_shows_the_cached_scan_and_queues_a_scan_job(webui, monkeypatch):
    from bksdm_ext.scores.clip import HOW_TO_ENABLE
    from bksdm_ext.webui import a1111, blocks_view

    teacher = write_teacher(webui, TINY["sd-v1"])
    assert "Load a teacher" in blocks_view.show()[0]
    load(teacher)
    assert "No scan of teacher.safetensors yet" in blocks_view.show()[0]
    row = block_scan.UnitResult("mid", "removed", 30.0, 0.9, 1000, 0.01, 2.0, 0.5)
    block_scan.save(block_scan.ScanResult(
        str(teacher), block_scan.teacher_hash(teacher), block_scan.asdict(
            block_scan.ScanSettings(steps=3, size=64)), 2.5, [row]), blocks_view.cache_dir())
    text, table, chart = blocks_view.show()
    assert "3 steps at 64 px" in text and HOW_TO_ENABLE in text
    assert table["data"] == [["mid", "removed", 30.0, 0.9, 1000, 1.0, 0.5, "-", "-"]]
    assert table["headers"][:2] == ["unit", "how"] and table["headers"][-2:] == [
        "CLIP score", "CLIP change"]
    assert chart.endswith(".png")
    # A scan with CLIP scores: the columns filled, the status names the CLIP model.
    row.clip_score, row.clip_change = 28.25, -1.5
    block_scan.save(block_scan.ScanResult(
        str(teacher), block_scan.teacher_hash(teacher), block_scan.asdict(
            block_scan.ScanSettings(steps=3, size=64)), 2.5, [row], "CPU", "tiny-clip", 29.75),
        blocks_view.cache_dir())
    text, table, _ = blocks_view.show()
    assert table["data"][0][-2:] == [28.25, -1.5]
    assert "CLIP score with tiny-clip: the full teacher scores 29.75" in text
    # The job looks for a CLIP where this WebUI's interrogator keeps one, as an optional one.
    monkeypatch.setattr(a1111, "clip_folders", lambda: [Path("/models/interrogate")])
    assert "Follow it in the Jobs tab" in blocks_view.start_scan(2, 32)
    from bksdm_ext.webui import jobs_service

    job = jobs_service.runner().jobs()[-1]
    assert job.kind == "blocks" and job.argv[:2] == ["--steps=2", "--size=32"]
    assert job.argv[-3:] == ["--clip-folder=/models/interrogate", "--", str(teacher)]
    assert not any(a.startswith("--clip-model") for a in job.argv)
    command = jobs_service.runner().command(job)
    assert command[command.index("-m", 4):][:3] == ["-m", "bksdm_ext", "blocks"]


def test_the_picker_estimates_step_time_from_the_teachers_scan_once_there_is_one(webui):
    from bksdm_ext.model.blocks import teacher_units
    from bksdm_ext.model.arch import SD_V1
    from bksdm_ext.webui import block_picker, blocks_view, convert_tab

    teacher = write_teacher(webui, TINY["sd-v1"])
    load(teacher)
    picked = ["down.0.0", "up.0.1", "innermost"]
    before = block_picker.picked_summary(convert_tab._loaded(), picked)
    assert "× the teacher's (from FLOPs)" in before and "measured" not in before
    saved = {"down.0.0": 2.0, "up.0.1": 1.5, "innermost": 3.0}  # of a 10 ms step: 0.35×
    rows = [block_scan.UnitResult(unit, "removed", 30.0, 0.9, 1000, 0.01, 9.0,
                                  saved.get(unit, 0.25)) for unit in teacher_units(SD_V1)]
    block_scan.save(block_scan.ScanResult(
        str(teacher), block_scan.teacher_hash(teacher), block_scan.asdict(
            block_scan.ScanSettings(steps=3, size=64)), 10.0, rows, "Test GPU"),
        blocks_view.cache_dir())
    after = block_picker.picked_summary(convert_tab._loaded(), picked)
    assert ("estimated U-Net step time 0.35× the teacher's (measured by the block scan on "
            "Test GPU, 3 steps at 64 px)") in after
    assert "from FLOPs" not in after


def test_the_distill_tab_queues_a_custom_student_and_refuses_a_bad_removal(webui, tmp_path):
    from bksdm_ext.demo import write_tiny_teacher
    from bksdm_ext.webui import distill_tab, jobs_service
    from test_distill import make_dataset
    from test_webui_jobs import FAST

    write_tiny_teacher(webui / "tiny-sd.safetensors")
    from modules import sd_models

    sd_models.list_models()
    title = distill_tab.checkpoints.titles(students=False)[0]
    data = make_dataset(tmp_path / "pairs")

    def start(remove):
        form = FAST
        return distill_tab.start(
            title, "Base", distill_tab.SOURCES[0], str(data), 0, "", "", False, form["steps"],
            form["batch_size"], form["grad_accum"], form["lr"], form["resolution"],
            form["precision"], False, False, False, form["save_every"], form["sample_every"],
            "", False, 1, remove=remove)

    message = start("up.2.0")
    assert "bksdm-error" in message and "stage 2 removes 1 down and 2 up" in message
    assert jobs_service.runner().jobs() == []
    assert "bksdm-success" in start(" mid ")
    job = jobs_service.runner().jobs()[-1]
    assert job.argv[:2] == ["--teacher=%s" % (webui / "tiny-sd.safetensors"), "--arch=base"]
    assert job.argv[2] == "--remove=mid" and job.title.endswith("BK-Base minus mid")
