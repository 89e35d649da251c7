"""A consistency-distilled student or LCM-LoRA says how it is meant to draw, in the WebUI:
when the checkpoint is loaded, and in the infotext of an image its LoRA made at other
settings; nothing the user set is changed."""
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from bksdm_ext.model.convert import convert_checkpoint
from bksdm_ext.model.samplers import DrawPoint
from bksdm_ext.webui import lcm_sampler
from test_lcm_sampler import a1111_1_6_samplers  # noqa: F401 - a fixture
from test_webui_lora import networks, save_lora, student_made_lora
from tiny import TINY, write_teacher
from webui_env import load, standin_app, start_webui_with_lora

LCM_4 = DrawPoint("lcm", 4, 1.0)


def with_metadata(source: Path, target: Path, extra: dict) -> Path:
    """A copy of a safetensors file (and its yaml) with `extra` added to its metadata."""
    from safetensors import safe_open

    with safe_open(str(source), framework="pt") as f:
        metadata = dict(f.metadata() or {})
    save_file(load_file(str(source)), str(target), dict(metadata, **extra))
    if source.with_suffix(".yaml").is_file():
        shutil.copyfile(source.with_suffix(".yaml"), target.with_suffix(".yaml"))
    return target


@pytest.fixture
def webui(tmp_path, monkeypatch):
    import gradio

    folder, loras = start_webui_with_lora(tmp_path / "webui")
    teacher = write_teacher(folder, TINY["sd-v1"])
    student = Path(convert_checkpoint(teacher, folder / "student.safetensors", "small",
                                      dtype="fp32").output)
    shown = []
    monkeypatch.setattr(gradio, "Info", shown.append)
    yield folder, loras, student, shown
    standin_app.reset(tmp_path / "after")


def test_loading_an_lcm_student_shows_how_it_draws_and_changes_no_setting(webui):
    from modules import shared

    folder, _, student, shown = webui
    lcm = with_metadata(student, folder / "student-lcm.safetensors", LCM_4.metadata())
    before = dict(shared.opts.data)
    load(student)
    assert shown == []  # a student without a recommendation: nothing to say
    load(lcm)
    assert shown == ["BK-SDM: student-lcm.safetensors was distilled to draw with LCM, 4 steps, "
                     "CFG 1: choose them in Sampling method, Sampling steps and CFG Scale "
                     "(BK-SDM changes no setting)."]
    assert {k: v for k, v in shared.opts.data.items() if k != "sd_model_checkpoint"} == \
        {k: v for k, v in before.items() if k != "sd_model_checkpoint"}


def test_an_lcm_lora_drawn_at_other_settings_says_so_in_the_infotext(a1111_1_6_samplers, webui):
    """(On the stand-in as A1111 1.6, whose LCM sampler is BK-SDM's: the stand-in's 1.10.1
    list names LCM but cannot run it.)"""
    from modules import processing, scripts

    lcm_sampler.register()
    folder, loras, student, _ = webui
    lora = student_made_lora("small")
    lora.metadata = dict(lora.metadata, **LCM_4.metadata())
    save_lora(loras / "lcm-lora.safetensors", lora)
    networks().list_available_networks()
    load(student)

    def draw(sampler, steps, cfg):
        p = processing.StableDiffusionProcessingTxt2Img(
            prompt="a cat <lora:lcm-lora:1>", steps=steps, width=32, height=32,
            sampler_name=sampler, cfg_scale=cfg, do_not_save_samples=True, do_not_save_grid=True)
        p.scripts = scripts.scripts_txt2img
        return processing.process_images(p).infotexts[0]

    assert ('BK-SDM: "lcm-lora — made to draw with LCM, 4 steps, CFG 1 (this image: Euler, 2 '
            'steps, CFG 7)"') in draw("Euler", 2, 7.0)
    assert "BK-SDM:" not in draw("LCM", 4, 1.0)
