"""The Latency panel inside the A1111 1.10.1 stand-in: A1111's own txt2img pipeline times
teacher and students, the original checkpoint comes back, results land in a table, a chart
and a CSV history."""
import csv
import html
from pathlib import Path

import pytest
import torch

from bksdm_ext.model.convert import convert_checkpoint
from tiny import TINY, write_teacher
from webui_env import load, standin_app, start_webui


@pytest.fixture
def webui(tmp_path):
    folder = start_webui(tmp_path / "webui")
    teacher = write_teacher(folder, TINY["sd-v1"])
    for preset in ("small", "tiny"):
        convert_checkpoint(teacher, folder / ("teacher-bk-%s.safetensors" % preset), preset,
                           dtype="fp32")
    load(teacher)
    yield folder
    standin_app.reset(tmp_path / "after")


def _loaded_name():
    from modules import sd_models

    return Path(sd_models.model_data.sd_model.sd_checkpoint_info.filename).name


def test_panel_times_each_model_and_loads_the_original_again(webui):
    from bksdm_ext.webui import latency_tab

    titles = latency_tab.candidates()
    assert [t.split(" [")[0] for t in titles] == [
        "teacher.safetensors", "teacher-bk-small.safetensors", "teacher-bk-tiny.safetensors"]
    rows, chart, history, message = latency_tab.run_from_ui(
        "task(1)", titles, steps=3, size=32, cfg_scale=7, runs=2, warmup=1, seed=1)
    assert "bksdm-success" in message and _loaded_name() == "teacher.safetensors"
    assert [(row[0].split(" [")[0], row[1]) for row in rows] == [
        ("teacher.safetensors", "teacher"), ("teacher-bk-small.safetensors", "small"),
        ("teacher-bk-tiny.safetensors", "tiny")]
    assert rows[0][-1] == "1.00x" and all(row[5] > 0 and row[7] > 0 for row in rows)
    assert all(row[9] > 0 for row in rows)  # the text encoder ran in every timed run
    assert Path(chart).is_file() and Path(chart).stat().st_size > 1000
    with open(history, newline="") as f:
        recorded = list(csv.DictReader(f))
    assert [r["preset"] for r in recorded] == ["teacher", "small", "tiny"]
    assert all(r["steps"] == "3" and r["sampler"] == "DPM++ 2M Karras" and r["device"]
               and r["webui"] == "v1.10.1" for r in recorded)
    latency_tab.run_from_ui("task(2)", titles[:1], steps=2, size=32, cfg_scale=7, runs=1,
                            warmup=0, seed=1)
    with open(history, newline="") as f:
        assert len(list(csv.DictReader(f))) == 4  # history grows, nothing is overwritten


def test_each_checkpoint_is_timed_at_each_draw_point_in_one_table(webui):
    from bksdm_ext.webui import latency_tab

    titles = latency_tab.candidates()[:2]
    rows, _, history, message = latency_tab.run_from_ui(
        "task(1)", titles, steps=3, size=32, cfg_scale=7, runs=1, warmup=0, seed=1,
        points="Euler:2, DPM++ 2M:1:3")
    assert "at 2 draw point(s)" in message and _loaded_name() == "teacher.safetensors"
    assert [(row[0].split(" [")[0], row[2], row[3]) for row in rows] == [
        ("teacher.safetensors", "Euler", 2), ("teacher.safetensors", "DPM++ 2M", 1),
        ("teacher-bk-small.safetensors", "Euler", 2),
        ("teacher-bk-small.safetensors", "DPM++ 2M", 1)]
    assert rows[0][-1] == "1.00x" and all(row[5] > 0 for row in rows)
    with open(history, newline="") as f:
        recorded = list(csv.DictReader(f))
    assert [(r["preset"], r["sampler"], r["steps"], r["cfg_scale"]) for r in recorded] == [
        ("teacher", "Euler", "2", "7.0"), ("teacher", "DPM++ 2M", "1", "3.0"),
        ("small", "Euler", "2", "7.0"), ("small", "DPM++ 2M", "1", "3.0")]


@pytest.mark.parametrize("points, said", [
    ("Euler a:25:x", "draw point 'Euler a:25:x': cfg_scale: enter a number"),
    ("euler_a:25", "draw point 'euler_a:25': unknown sampler 'euler_a'; one of DPM++ 2M, "),
    ("Euler:", "draw point 'Euler:': steps"),
    ("LCM", "draw point 'LCM': write sampler:steps or sampler:steps:cfg, e.g. Euler a:25 or "
            "LCM:4:1"),
])
def test_a_bad_draw_point_is_one_message_and_nothing_is_timed(webui, monkeypatch, points,
                                                              said):
    from bksdm_ext.webui import latency_tab

    monkeypatch.setattr(latency_tab, "measure_loaded", lambda *a: pytest.fail("timed"))
    rows, chart, history, message = latency_tab.run_from_ui(
        "task(1)", latency_tab.candidates()[:1], steps=3, size=32, cfg_scale=7, runs=1,
        warmup=0, seed=1, points=points)
    assert (rows, chart, history) == (None, None, None)
    assert "bksdm-error" in message and said in html.unescape(message)


def test_a_loaded_student_brings_its_teacher_along(webui):
    """The teacher is found by the hash the student records once A1111 has hashed it, and by
    its recorded file name before that (a never-loaded teacher has no hash yet)."""
    from bksdm_ext.webui import latency_tab

    other = write_teacher(webui, TINY["sd-v1"], name="other.safetensors",
                          extra={"marker": torch.ones(1)})  # another file, another hash
    other_student = webui / "other-bk-base.safetensors"
    convert_checkpoint(other, other_student, "base", dtype="fp32")
    load(webui / "teacher-bk-small.safetensors")
    names = [t.split(" [")[0] for t in latency_tab.candidates()]
    assert names[:2] == ["teacher-bk-small.safetensors", "teacher.safetensors"]
    assert "other.safetensors" not in names
    load(other_student)
    names = [t.split(" [")[0] for t in latency_tab.candidates()]
    assert names[:2] == ["other-bk-base.safetensors", "other.safetensors"]
    assert "teacher.safetensors" not in names


def test_the_original_checkpoint_is_restored_after_a_failure(webui, monkeypatch):
    from bksdm_ext.webui import latency_tab

    real = latency_tab.measure_loaded
    seen = []

    def fails_on_the_second(title, *args):
        seen.append(title)
        if len(seen) == 2:
            raise RuntimeError("out of memory (simulated)")
        return real(title, *args)

    monkeypatch.setattr(latency_tab, "measure_loaded", fails_on_the_second)
    from bksdm_ext.measure.latency import LatencySettings

    with pytest.raises(RuntimeError):
        latency_tab.run(latency_tab.candidates(), LatencySettings(steps=2, size=32, runs=1))
    assert _loaded_name() == "teacher.safetensors"


def test_device_panel_shows_jetson_facts_only_on_a_jetson(webui, monkeypatch):
    from bksdm_ext.measure import device_info
    from bksdm_ext.webui import latency_tab

    assert "Jetson" not in latency_tab.device_panel()
    assert "WebUI v1.10.1" in latency_tab.device_panel()
    monkeypatch.setattr(device_info, "jetson_status", lambda: {
        "board": "NVIDIA Jetson AGX Orin Developer Kit", "l4t": "35.4.1", "jetpack": "5.1.2",
        "power_mode": "MODE_30W", "power_mode_id": 3, "clocks_locked": False,
        "warnings": ["Power mode is MODE_30W, not MAXN"]})
    panel = latency_tab.device_panel()
    assert "AGX Orin" in panel and "JetPack 5.1.2" in panel and "⚠️ Power mode is MODE_30W" in panel


def test_jetson_readings_during_the_run_are_reported(webui, monkeypatch):
    from bksdm_ext.measure import device_info
    from bksdm_ext.webui import latency_tab

    class Monitor:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def peak(self):
            return {"source": "tegrastats", "samples": 3, "ram_used_mb_max": 5637,
                    "gpu_load_pct_max": 99, "power_w_max": 31.2, "power_w_mean": 25.0}

    monkeypatch.setattr(device_info, "TegraMonitor", Monitor)
    message = latency_tab.run_from_ui("task(3)", latency_tab.candidates()[:1], steps=2, size=32,
                                      cfg_scale=7, runs=1, warmup=0, seed=1)[3]
    assert "peak RAM 5637 MB, GPU load 99%, power 31.2 W (mean 25.0 W)" in message
