"""Students in Stable Diffusion WebUI Forge, built the way Forge builds them (tests/forge_standin):
without BK-SDM a student without a middle block gets a phantom, weightless middle ResBlock and
its first step fails; with `bksdm_ext.webui.forge.install` it loads exactly and computes what
A1111's LDM UNetModel computes."""
import sys
from pathlib import Path

import pytest
import torch

from bksdm_ext.model.arch import PRESETS
from bksdm_ext.model.convert import convert_checkpoint
from bksdm_ext.webui import forge
from test_convert import ldm_from_yaml, load_file, unet_part
from tiny import TINY, write_teacher

pytest.importorskip("ldm.modules.diffusionmodules.openaimodel")

STANDIN = Path(__file__).resolve().parents[1] / "forge_standin"
STANDIN_MODULES = ("backend", "huggingface_guess")


def _forget_standin() -> None:
    for name in list(sys.modules):
        if name.split(".")[0] in STANDIN_MODULES:
            del sys.modules[name]


@pytest.fixture
def forge_backend(monkeypatch):
    """Forge's loader pieces, freshly imported (the fix changes a class of theirs)."""
    monkeypatch.syspath_prepend(str(STANDIN))
    _forget_standin()
    yield
    _forget_standin()


def _student(tmp_path: Path, family: str, preset: str) -> Path:
    """The student of a tiny teacher ("teacher": the teacher itself)."""
    teacher = write_teacher(tmp_path, TINY[family])
    if preset == "teacher":
        return teacher
    student = tmp_path / ("%s-%s.safetensors" % (family, preset))
    convert_checkpoint(teacher, student, preset, dtype="fp32")
    return student


def _load_like_forge(path: Path) -> torch.nn.Module:
    """What Forge's forge_loader does for the U-Net: guess the layout, build, load."""
    import huggingface_guess
    from backend import loader

    huggingface_guess.UNET_EXTRA_CONFIG["sd2"]["num_head_channels"] = TINY["sd-v2"].head_channels
    state = load_file(path)[0]
    guess = huggingface_guess.guess(state)
    unet = {k[len("model.diffusion_model."):]: v for k, v in state.items()
            if k.startswith("model.diffusion_model.")}
    return loader.load_huggingface_component(guess, "unet", "diffusers", "UNet2DConditionModel",
                                             "", unet).eval()


def _inputs(family: str):
    torch.manual_seed(0)
    return (torch.randn(2, 4, 16, 16), torch.tensor([10, 700]),
            torch.randn(2, 7, TINY[family].context_dim))


@pytest.mark.parametrize("preset", ["small", "tiny", "mid-removed"])
def test_without_bksdm_forge_builds_a_phantom_middle_block_that_fails(forge_backend, tmp_path,
                                                                      capsys, preset):
    student = _student(tmp_path, "sd-v1", preset)
    unet = _load_like_forge(student)
    printed = capsys.readouterr().out
    assert "IntegratedUNet2DConditionModel Missing: ['middle_block.0." in printed
    assert len(unet.middle_block) == 1  # the first ResBlock, which the file has no weights for
    assert unet.middle_block[0].in_layers[2].weight is None
    x, t, context = _inputs("sd-v1")
    with pytest.raises(TypeError), torch.no_grad():
        unet(x, t, context)


@pytest.mark.parametrize("family", ["sd-v1", "sd-v2"])
@pytest.mark.parametrize("preset", ["teacher"] + list(PRESETS))
@pytest.mark.slow
def test_with_bksdm_every_student_loads_exactly_and_matches_ldm(forge_backend, tmp_path, capsys,
                                                               family, preset):
    forge.install()
    student = _student(tmp_path, family, preset)
    unet = _load_like_forge(student)
    assert "Missing" not in capsys.readouterr().out
    expected = unet_part(load_file(student)[0])
    assert set(unet.state_dict()) == set(expected)
    assert sum(p.numel() for p in unet.parameters()) == sum(v.numel() for v in expected.values())
    middle = [k for k in expected if k.startswith("middle_block.")]
    assert bool(middle) == (preset in ("teacher", "base"))  # Base keeps its middle block

    ldm = ldm_from_yaml(student.with_suffix(".yaml"))  # the U-Net A1111 builds from the yaml
    ldm.load_state_dict(expected, strict=True)
    x, t, context = _inputs(family)
    with torch.no_grad():
        ours = unet(x, t, context)
        a1111 = ldm(x, timesteps=t, context=context)
    assert torch.allclose(ours, a1111, atol=1e-5), (ours - a1111).abs().max()


def test_the_fix_is_installed_once_and_keeps_the_constructor_signature(forge_backend):
    import inspect

    from backend.nn import unet

    before = inspect.signature(unet.IntegratedUNet2DConditionModel.__init__)
    forge.install()
    assert not forge.skip_missing_middle_block(unet.IntegratedUNet2DConditionModel,
                                               unet.TimestepEmbedSequential)
    # diffusers' from_config reads the constructor's parameters to pick the config's keys
    assert inspect.signature(unet.IntegratedUNet2DConditionModel.__init__) == before


def test_forge_is_told_apart_by_its_modules_forge_package(tmp_path, monkeypatch):
    assert not forge.is_forge()
    (tmp_path / "modules_forge").mkdir()
    (tmp_path / "modules_forge" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert forge.is_forge()


@pytest.fixture
def webui(tmp_path):
    from webui_env import standin_app, start_webui

    yield start_webui(tmp_path / "webui")
    standin_app.reset(tmp_path / "after")


def _forge_lines(blocks) -> list:
    import gradio as gr

    return [b.value for b in blocks.blocks.values()
            if isinstance(b, gr.HTML) and "Not available in Forge yet" in str(b.value)]


@pytest.mark.parametrize("in_forge", [False, True])
def test_in_forge_the_tabs_it_cannot_serve_yet_say_so_in_one_line(webui, monkeypatch, in_forge):
    from bksdm_ext.webui import ui

    monkeypatch.setattr(forge, "is_forge", lambda: in_forge)
    blocks = ui.on_ui_tabs()[0][0]
    lines = _forge_lines(blocks)
    ids = {getattr(b, "elem_id", None) for b in blocks.blocks.values()}
    assert "bksdm_convert_progress" in ids  # Convert is built either way
    if not in_forge:
        assert lines == [] and "bksdm_latency_progress" in ids
        return
    assert len(lines) == len(forge.TABS_NOT_YET) == 2
    assert any("Latency" not in l and "bksdm bench" in l for l in lines)
    assert "bksdm_latency_progress" not in ids and "bksdm_compare_progress" not in ids


def test_in_forge_the_extension_registers_without_the_a1111_config_lookup(tmp_path, monkeypatch,
                                                                          forge_backend):
    """Forge has no ``sd_models_config.find_checkpoint_config``; scripts/bksdm.py installs the
    U-Net fix there instead (Forge's ``backend`` here is the stand-in)."""
    from webui_env import EXTENSION, standin_app

    from backend.nn import unet

    monkeypatch.setattr(forge, "is_forge", lambda: True)
    standin_app.reset(tmp_path / "webui", args=["--use-cpu", "all", "--no-half"])
    try:
        from modules import sd_models_config

        original = sd_models_config.find_checkpoint_config
        standin_app.load_extension(str(EXTENSION), strict=True)
        assert sd_models_config.find_checkpoint_config is original
        assert getattr(unet.IntegratedUNet2DConditionModel.__init__, "bksdm_original", None)
    finally:
        standin_app.reset(tmp_path / "after")


@pytest.mark.parametrize("prediction_type, expected", [("v_prediction", "v"), ("epsilon", "eps")])
def test_the_loaded_models_prediction_comes_from_forges_predictor(prediction_type, expected):
    """Forge's engine has no ``parameterization``; its K-model's predictor says (Forge sets it
    from the yaml), and the Convert tab passes it on to the student."""
    from types import SimpleNamespace

    predictor = SimpleNamespace(prediction_type=prediction_type)
    sd_model = SimpleNamespace(forge_objects=SimpleNamespace(
        unet=SimpleNamespace(model=SimpleNamespace(predictor=predictor, diffusion_model="unet"))))
    assert forge.parameterization(sd_model) == expected
    assert forge.diffusion_model(sd_model) == "unet"


def test_install_py_in_forge_keeps_forges_own_diffusers(webui, tmp_path, monkeypatch, capsys):
    import importlib.metadata

    from webui_env import EXTENSION, standin_app

    (tmp_path / "forge" / "modules_forge").mkdir(parents=True)
    (tmp_path / "forge" / "modules_forge" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "forge"))
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda name: "0.31.0" if name == "diffusers" else real(name))
    assert standin_app.install_extension(str(EXTENSION)) == []
    assert "BK-SDM: keeping Forge's diffusers 0.31.0" in capsys.readouterr().out


def test_in_forge_the_load_check_reports_a_phantom_block_without_yaml_advice(webui, forge_backend,
                                                                              monkeypatch):
    """If Forge ever built a student otherwise than the fix expects, the check after each load
    (run on Forge's U-Net) says so; deleting the yaml would not help there."""
    from types import SimpleNamespace

    from bksdm_ext.webui import guard

    student = _student(webui, "sd-v1", "small")
    unet = _load_like_forge(student)  # the fix is not installed: a phantom middle block
    monkeypatch.setattr(forge, "is_forge", lambda: True)
    sd_model = SimpleNamespace(
        sd_checkpoint_info=SimpleNamespace(filename=str(student)),
        forge_objects=SimpleNamespace(unet=SimpleNamespace(model=SimpleNamespace(
            diffusion_model=unet))))
    guard.check_loaded_model(sd_model)
    assert len(guard.last_problem) == 1
    problem = guard.last_problem[0]
    assert "did not load correctly in Forge" in problem and "middle_block.0." in problem
    assert "Delete" not in problem and "Forge version" in problem


def test_in_forge_convert_works_on_the_dropdowns_choice_before_forge_loads_it(webui, monkeypatch):
    """Forge loads the chosen checkpoint only at the next generation; the Convert tab works on
    the choice (its prediction type from the file's yaml) instead of saying nothing is loaded."""
    from modules import sd_models

    from bksdm_ext.webui import convert_tab

    teacher = write_teacher(webui, TINY["sd-v2-v"], name="v-teacher.safetensors")
    monkeypatch.setattr(forge, "is_forge", lambda: True)
    assert "No checkpoint is loaded" in convert_tab.loaded_summary()
    info = sd_models.CheckpointInfo(str(teacher))
    monkeypatch.setattr(sd_models.model_data, "forge_loading_parameters",
                        {"checkpoint_info": info}, raising=False)
    summary = convert_tab.loaded_summary()
    assert "v-teacher" in summary and "v prediction" in summary
    title, _, message = convert_tab.convert("task(1)", "Small", "v-student", "fp16", False)
    assert "bksdm-success" in message, message
    assert "parameterization: v" in (webui / "v-student.yaml").read_text()
