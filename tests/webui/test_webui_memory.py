"""The Distill and DreamBooth tabs show the GPU-memory plan of their settings before a job starts."""
import pytest

from bksdm_ext.train.memory_plan import GIB
from tiny import TINY, write_teacher
from webui_env import load, standin_app, start_webui


@pytest.fixture
def webui(tmp_path):
    folder = start_webui(tmp_path / "webui")
    load(write_teacher(folder, TINY["sd-v1"]))
    yield folder
    standin_app.reset(tmp_path / "after")


def test_estimates_follow_the_settings_and_the_free_memory(webui, monkeypatch):
    from bksdm_ext.webui import checkpoints, memory_estimate

    teacher = checkpoints.titles(students=False)[0]
    settings = [teacher, "Small", 64, 4, 512, "fp16", True, True, False]
    assert "No CUDA GPU" in memory_estimate.distill_estimate(*settings)
    monkeypatch.setattr(memory_estimate, "free_gpu_bytes", lambda: 16 * GIB)
    shown = memory_estimate.distill_estimate(*settings)
    assert "micro-batch 32 × 8 accumulation (effective 256)" in shown and "bksdm-success" in shown
    monkeypatch.setattr(memory_estimate, "have_bitsandbytes", lambda: False)
    monkeypatch.setattr(memory_estimate, "free_gpu_bytes", lambda: 6 * GIB)
    assert "does not fit" in memory_estimate.distill_estimate(*settings)
    monkeypatch.setattr(memory_estimate, "free_gpu_bytes", lambda: 8 * GIB)
    full = memory_estimate.dreambooth_estimate(teacher, 512, True, False, "fp16", True, False)
    lora = memory_estimate.dreambooth_estimate(teacher, 512, True, True, "fp16", True, False)
    assert "does not fit" in full and "bksdm-success" in lora


def test_the_tabs_build_with_the_estimate_line(webui):
    import gradio as gr

    from bksdm_ext.webui import distill_tab, dreambooth_tab

    with gr.Blocks() as page:
        distill_tab.build()
        dreambooth_tab.build()
    ids = {getattr(block, "elem_id", None) for block in page.blocks.values()}
    assert {"bksdm_distill_memory", "bksdm_db_memory"} <= ids
