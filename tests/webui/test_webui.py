"""The extension inside the A1111 1.10.1 stand-in: registration, Convert tab handlers,
the loading guard and install.py."""

import shutil
from pathlib import Path

import pytest
import torch

from bksdm_ext.model.arch import PRESETS, Architecture
from bksdm_ext.model.convert import convert_checkpoint
from bksdm_ext.model.ldm_config import dump_config, model_config
from test_convert import load_file, unet_part
from tiny import TINY, write_teacher
from webui_env import EXTENSION, load, standin_app, start_webui


@pytest.fixture
def webui(tmp_path):
    folder = start_webui(tmp_path / "webui")
    yield folder
    standin_app.reset(tmp_path / "after")


def _convert_tab():
    from bksdm_ext.webui import convert_tab

    return convert_tab


def test_registers_one_tab_settings_and_the_student_unet_class(webui):
    import sys

    from modules import script_callbacks, shared

    tabs = script_callbacks.ui_tabs_callback()
    assert [(title, elem) for _, title, elem in tabs] == [("BK-SDM", "bksdm")]
    script_callbacks.ui_settings_callback()
    info = shared.opts.data_labels["bksdm_default_preset"]
    assert info.section == ("bksdm", "BK-SDM") and info.default == "small"
    assert "bksdm_ext.ldm_unet" in sys.modules


def test_convert_tab_converts_the_loaded_model_into_the_dropdown(webui):
    from modules import sd_models

    teacher = write_teacher(webui, TINY["sd-v2-v"], name="tiny-v2.safetensors")
    load(teacher)
    tab = _convert_tab()
    assert "SD-V2, v prediction" in tab.loaded_summary()
    preview = tab.preset_preview("Small")
    assert "smaller" in preview and "0.61" in preview
    assert tab.default_name("Small") == "tiny-v2-bk-small"

    title, button, message = tab.convert("task(1)", "Small", "tiny-v2-bk-small", "fp16", False)
    student = webui / "tiny-v2-bk-small.safetensors"
    assert student.is_file() and student.with_suffix(".yaml").is_file(), message
    assert "bksdm-success" in message and button["visible"] is True
    assert title in {i.title for i in sd_models.checkpoints_list.values()}
    _, metadata = load_file(student)
    assert metadata["bksdm.parameterization"] == "v"

    again = tab.convert("task(2)", "Small", "tiny-v2-bk-small", "fp16", False)
    assert "already exists" in again[2] and "Overwrite" in again[2]


@pytest.mark.parametrize("name", ["../evil", "sub/x", "a\\b", "", "  ", ".hidden", "x..y"])
@pytest.mark.slow
def test_invalid_output_names_are_refused_and_nothing_is_written(webui, name):
    load(write_teacher(webui, TINY["sd-v1"]))
    before = sorted(p.name for p in webui.parent.rglob("*"))
    title, button, message = _convert_tab().convert("task(3)", "Tiny", name, "fp16", False)
    assert title == "" and "bksdm-error" in message
    assert sorted(p.name for p in webui.parent.rglob("*")) == before


def test_a_loaded_model_without_a_file_converts_from_memory(webui):
    teacher = write_teacher(webui, TINY["sd-v1"], name="merge.safetensors")
    model = load(teacher)
    teacher.unlink()
    teacher.with_suffix(".yaml").unlink()
    tab = _convert_tab()
    assert "weights in memory" in tab.loaded_summary()
    tab.convert("task(4)", "Base", "merge-bk-base", "fp32", False)
    state, _ = load_file(webui / "merge-bk-base.safetensors")
    loaded = model.model.diffusion_model.state_dict()
    assert torch.equal(unet_part(state)["input_blocks.3.0.in_layers.2.weight"],
                       loaded["input_blocks.4.0.in_layers.2.weight"])


def test_refuses_clearly_when_nothing_or_a_student_is_loaded(webui):
    tab = _convert_tab()
    assert "No checkpoint is loaded" in tab.loaded_summary()
    assert "No checkpoint is loaded" in tab.convert("task(5)", "Small", "x", "fp16", False)[2]
    teacher = write_teacher(webui, TINY["sd-v1"])
    convert_checkpoint(teacher, webui / "student.safetensors", "small")
    load(webui / "student.safetensors")
    assert "already a BK-SDM Small student" in tab.loaded_summary()


@pytest.mark.parametrize("family", ["sd-v1", "sd-v2-v"])
@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.slow
def test_every_student_loads_exactly_and_runs(webui, family, preset):
    from bksdm_ext.webui import guard

    teacher = write_teacher(webui, TINY[family])
    student = webui / ("student-%s.safetensors" % preset)
    convert_checkpoint(teacher, student, preset, dtype="fp32")
    model = load(student)
    assert guard.last_problem == []
    unet = model.model.diffusion_model
    expected = unet_part(load_file(student)[0])
    assert set(unet.state_dict()) == set(expected)
    assert all(torch.equal(unet.state_dict()[k], v) for k, v in expected.items())
    assert model.parameterization == TINY[family].parameterization
    with torch.no_grad():
        out = unet(torch.randn(1, 4, 16, 16), torch.tensor([500]),
                   context=torch.randn(1, 5, TINY[family].context_dim))
    assert out.shape == (1, 4, 16, 16) and torch.isfinite(out).all()


FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "students"


@pytest.mark.parametrize("yaml_file", sorted(p.name for p in FIXTURES.glob("*.yaml")))
@pytest.mark.slow
def test_a_yaml_written_before_the_package_split_still_loads_its_student(webui, yaml_file):
    """Students on users' disks name ``bksdm_ext.ldm_unet.NoMiddleBlockUNetModel``; these
    yaml files were written by the code of that time and are kept byte for byte."""
    from bksdm_ext.webui import guard

    family, preset = yaml_file[len("tiny-"):-len(".yaml")].split("-bk-")
    assert "target: bksdm_ext.ldm_unet.NoMiddleBlockUNetModel" in (FIXTURES / yaml_file).read_text()
    student = webui / ("old-%s-%s.safetensors" % (family, preset))
    convert_checkpoint(write_teacher(webui, TINY[family]), student, preset, dtype="fp32")
    shutil.copyfile(FIXTURES / yaml_file, student.with_suffix(".yaml"))
    model = load(student)
    assert guard.last_problem == []
    unet = model.model.diffusion_model
    assert type(unet).__name__ == "NoMiddleBlockUNetModel"
    expected = unet_part(load_file(student)[0])
    assert set(unet.state_dict()) == set(expected)
    assert all(torch.equal(unet.state_dict()[k], v) for k, v in expected.items())


@pytest.mark.parametrize("family", ["sd-v1", "sd-v2-v"])
def test_a_student_without_its_yaml_gets_the_right_config_and_the_yaml_back(webui, family):
    from bksdm_ext.webui import guard

    teacher = write_teacher(webui, TINY[family])
    student = webui / "lost-yaml.safetensors"
    convert_checkpoint(teacher, student, "tiny", dtype="fp32")
    written = student.with_suffix(".yaml").read_text()
    student.with_suffix(".yaml").unlink()
    model = load(student)
    assert student.with_suffix(".yaml").read_text() == written
    assert guard.last_problem == []
    assert model.parameterization == TINY[family].parameterization
    assert set(model.model.diffusion_model.state_dict()) == set(unet_part(load_file(student)[0]))


def test_small_weights_with_a_base_yaml_are_reported(webui, capsys):
    from bksdm_ext.webui import guard

    teacher = write_teacher(webui, TINY["sd-v1"])
    student = webui / "mismatch.safetensors"
    convert_checkpoint(teacher, student, "small", dtype="fp32")
    base_yaml = dump_config(model_config(Architecture(TINY["sd-v1"], PRESETS["base"])))
    student.with_suffix(".yaml").write_text(base_yaml)
    load(student)
    assert len(guard.last_problem) == 1
    problem = guard.last_problem[0]
    assert "mismatch.safetensors" in problem and "middle_block" in problem
    assert "got no weights" in problem and "Delete mismatch.yaml" in problem
    assert problem in capsys.readouterr().out
    summary = _convert_tab().loaded_summary()
    assert "⛔" in summary and "already a BK-SDM Small student" in summary  # the file's truth


def test_install_py_does_nothing_when_everything_is_present(webui):
    assert standin_app.install_extension(str(EXTENSION)) == []


def test_install_py_installs_only_what_is_missing(webui, monkeypatch):
    import launch

    real = launch.is_installed
    monkeypatch.setattr(launch, "is_installed", lambda name: name != "diffusers" and real(name))
    calls = standin_app.install_extension(str(EXTENSION))
    assert [c["command"] for c in calls] == ["install --no-deps diffusers==0.30.3"]


def test_install_py_installs_a_missing_dependency_on_its_own(webui, monkeypatch):
    import launch

    real = launch.is_installed
    monkeypatch.setattr(launch, "is_installed", lambda name: name not in ("diffusers", "regex")
                        and real(name))
    calls = standin_app.install_extension(str(EXTENSION))
    assert [c["command"] for c in calls] == ["install --no-deps diffusers==0.30.3", "install regex"]
