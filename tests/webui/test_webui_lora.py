"""Teacher LoRAs on students in the A1111 stand-in's built-in Lora extension (its name
resolution mirrors 1.10.1's networks.py): without the extension's help a teacher LoRA lands
on other blocks of a student; with it every module of a kept block lands on the student module
the block map written out in test_lora_keymap says, txt2img says once what was dropped,
networks resolved for another layout are reloaded, student LoRAs and lora-adapt's output
resolve to themselves, and a LoRA of another family is left out with a note."""
import shutil
import sys
from pathlib import Path

import pytest
import torch

from bksdm_ext.cli import main
from bksdm_ext.model.convert import convert_checkpoint
from bksdm_ext.model.lora_keymap import LoraFile, layout_metadata
from test_lora_keymap import (_lora, _weighted, expected_target, ldm_modules, other_family_lora,
                              save_lora, student_arch, teacher_lora)
from tiny import TINY, write_teacher
from webui_env import load, standin_app, start_webui_with_lora


@pytest.fixture
def webui(tmp_path):
    folder, loras = start_webui_with_lora(tmp_path / "webui")
    teacher = write_teacher(folder, TINY["sd-v1"])
    for preset in ("base", "small", "tiny"):
        convert_checkpoint(teacher, folder / ("student-%s.safetensors" % preset), preset, dtype="fp32")
    yield folder, loras
    standin_app.reset(tmp_path / "after")


def networks():
    return sys.modules["networks"]


def write_lora(path: Path, lora: LoraFile, seed: int = 0, scale: float = 0.1) -> Path:
    """The file, listed by the Lora extension."""
    save_lora(path, lora, seed, scale)
    networks().list_available_networks()
    return path


def resolution(net, model) -> dict:
    """LoRA module key -> the model module (underscore name) the extension put it on."""
    names = {id(m): "diffusion_model_" + n.replace(".", "_")
             for n, m in model.model.diffusion_model.named_modules()}
    return {m.network_key.partition(".")[0]: names.get(id(m.sd_module), "text encoder")
            for m in net.modules.values()}


def expected(teacher_module: dict, name: str) -> dict:
    found = {k: expected_target(t, name) for k, t in teacher_module.items()}
    return {k: None if t is None else "diffusion_model_" + t for k, t in found.items()}


@pytest.mark.parametrize("preset", ["small", "tiny"])
def test_without_help_a_teacher_lora_lands_on_other_blocks_of_a_student(webui, preset):
    """What A1111's own resolution does (the extension's wrapper bypassed): the stand-in
    reproduces what a real A1111 1.10.1 does (docs/facts.md §12): attention modules on other
    blocks or nowhere, and a LoRA with resnet convolutions failing to load at all."""
    folder, loras = webui
    lora, teacher_module = teacher_lora("sd-v1", "lora", "diffusers")
    attention = {k: s for k, s in lora.shapes.items() if "_attentions_" in k}
    write_lora(loras / "attn.safetensors", LoraFile("attn", attention))
    write_lora(loras / "locon.safetensors", lora)
    model = load(folder / ("student-%s.safetensors" % preset))
    plain = networks().load_network.bksdm_original
    placed = resolution(plain("attn", networks().available_networks["attn"]), model)
    wanted = {k: t for k, t in expected(teacher_module, preset).items() if "_attentions_" in k}
    kept = {k: t for k, t in wanted.items() if t is not None}
    right = sum(placed.get(k) == t for k, t in kept.items())
    elsewhere = sum(k in placed and placed[k] != t for k, t in kept.items())
    removed_but_applied = sum(k in placed for k in wanted if k not in kept)
    # the counts the real A1111 1.10.1 gives for the same tiny LoRA (module by module)
    assert (len(kept), right, elsewhere, removed_but_applied) == \
        ((108, 12, 36, 36) if preset == "small" else (108, 12, 24, 24))
    if preset == "small":  # a conv module lands on a ResBlock's Identity skip_connection
        with pytest.raises(TypeError):
            plain("locon", networks().available_networks["locon"])


@pytest.mark.parametrize("preset", ["base", "small", "tiny"])
@pytest.mark.parametrize("kind,naming", [("lora", "diffusers"), ("lora", "compvis"),
                                         ("locon-cp", "diffusers"), ("loha", "compvis"),
                                         ("lokr", "diffusers"), ("ia3", "compvis"),
                                         ("full", "diffusers"), ("norm", "compvis"),
                                         ("oft", "diffusers"), ("glora", "compvis")])
@pytest.mark.slow
def test_a_teacher_lora_lands_on_the_mapped_student_modules(webui, preset, kind, naming):
    folder, loras = webui
    lora, teacher_module = teacher_lora("sd-v1", kind, naming)
    write_lora(loras / "mylora.safetensors", lora)
    model = load(folder / ("student-%s.safetensors" % preset))
    networks().load_networks(["mylora"])
    (net,) = networks().loaded_networks
    wanted = expected(teacher_module, preset)
    placed = resolution(net, model)
    unplaced = ["lora_unet_conv_norm_out"] if naming == "diffusers" and kind in ("full", "norm") else []
    assert placed == {k: t for k, t in wanted.items() if t is not None and k not in unplaced}
    # the extension finds a module by the layer's own name when it changes weights
    assert all(key == placed[m.network_key.partition(".")[0]] for key, m in net.modules.items())
    dropped = sum(t is None for k, t in wanted.items() if k not in unplaced)
    assert net.bksdm_note == "mylora — %d of %d modules target blocks this student does not " \
                             "have" % (dropped, len(teacher_module))


def test_txt2img_applies_a_teacher_lora_to_a_student_and_says_once_what_was_dropped(
        webui, capsys):
    from modules import processing, scripts

    folder, loras = webui
    lora, teacher_module = teacher_lora("sd-v1", "lora", "diffusers")
    attention = {k: s for k, s in lora.shapes.items() if "_attentions_" in k}  # the usual kind
    write_lora(loras / "mylora.safetensors", LoraFile("mylora", attention))
    model = load(folder / "student-small.safetensors")
    layer = model.model.diffusion_model.output_blocks[2][1].proj_out  # teacher output_blocks.3.1
    before = layer.weight.detach().clone()
    p = processing.StableDiffusionProcessingTxt2Img(prompt="a cat <lora:mylora:1>", steps=2,
                                                    width=32, height=32, n_iter=2,
                                                    sampler_name="Euler")
    p.scripts = scripts.scripts_txt2img
    result = processing.process_images(p)
    # 16 attention blocks of 12 modules; BK-Small has 9 of them
    note = "BK-SDM: mylora — 84 of 192 modules target blocks this student does not have"
    assert capsys.readouterr().out.count(note) == 1  # two batches, one note
    assert all(note in info for info in result.infotexts) and "Lora hashes: \"mylora: " in result.info
    assert "Networks with errors" not in result.comments
    (net,) = networks().loaded_networks
    module = net.modules["diffusion_model_output_blocks_2_1_proj_out"]
    assert module.network_key.startswith("lora_unet_up_blocks_1_attentions_0_proj_out.")
    delta, _ = module.calc_updown(before)
    assert torch.allclose(layer.weight, before + delta) and delta.abs().max() > 0


def test_a_lora_of_another_family_is_left_out_and_the_infotext_says_why(webui, capsys):
    from modules import processing, scripts

    folder, loras = webui
    write_lora(loras / "v2lora.safetensors", other_family_lora())
    model = load(folder / "student-small.safetensors")
    before = {k: v.clone() for k, v in model.model.diffusion_model.state_dict().items()}
    p = processing.StableDiffusionProcessingTxt2Img(prompt="a cat <lora:v2lora:1>", steps=1,
                                                    width=32, height=32, sampler_name="Euler")
    p.scripts = scripts.scripts_txt2img
    result = processing.process_images(p)
    assert networks().loaded_networks == []
    assert all(torch.equal(v, before[k]) for k, v in model.model.diffusion_model.state_dict().items())
    assert "not applied: v2lora was made for another model (text conditioning 48 wide) and " \
           "this model is SD-v1 (32)" in result.info
    assert "use a LoRA made for SD-v1" in capsys.readouterr().out


def test_networks_resolved_for_the_teacher_are_resolved_again_for_a_student(webui):
    folder, loras = webui
    lora, _ = teacher_lora("sd-v1", "lora", "compvis")
    write_lora(loras / "mylora.safetensors", lora)
    load(folder / "teacher.safetensors")
    networks().load_networks(["mylora"])
    (on_teacher,) = networks().loaded_networks
    assert "diffusion_model_input_blocks_4_1_proj_in" in on_teacher.modules
    model = load(folder / "student-small.safetensors")
    assert networks().loaded_networks == []  # forgotten: its names are the teacher's
    networks().load_networks(["mylora"])
    (on_student,) = networks().loaded_networks
    assert on_student is not on_teacher
    layer = on_student.modules["diffusion_model_input_blocks_3_1_proj_in"]
    assert layer.sd_module is model.model.diffusion_model.input_blocks[3][1].proj_in
    assert layer.network_key.startswith("lora_unet_input_blocks_4_1_proj_in.")


def student_made_lora(preset: str) -> LoraFile:
    """A LoRA made on the student (its own LDM names and this project's layout metadata)."""
    arch = student_arch("sd-v1", preset)
    shapes = {"lora_unet_" + n.replace(".", "_") + "." + p: s
              for n, m in ldm_modules(arch).items() if _weighted(m)
              for p, s in _lora(tuple(m.weight.shape), m).items()}
    return LoraFile("mine", shapes, layout_metadata(arch))


def test_a_lora_made_on_the_student_stays_on_its_own_modules_and_fits_the_teacher_too(webui):
    folder, loras = webui
    write_lora(loras / "mine.safetensors", student_made_lora("small"))
    model = load(folder / "student-small.safetensors")
    networks().load_networks(["mine"])
    (net,) = networks().loaded_networks
    placed = resolution(net, model)
    assert len(placed) == len(student_made_lora("small").unet_modules) and net.bksdm_note is None
    assert all(t == k.replace("lora_unet", "diffusion_model") for k, t in placed.items())
    teacher = load(folder / "teacher.safetensors")  # the student's blocks are teacher blocks
    networks().load_networks(["mine"])
    (net,) = networks().loaded_networks
    assert resolution(net, teacher)["lora_unet_output_blocks_7_1_proj_out"] == \
        "diffusion_model_output_blocks_11_1_proj_out"


def test_lora_adapt_output_loads_in_a1111_lora_code_with_every_kept_module(webui, tmp_path,
                                                                          capsys):
    folder, loras = webui
    lora, teacher_module = teacher_lora("sd-v1", "loha", "diffusers")
    original = write_lora(tmp_path / "mylora.safetensors", lora)
    adapted = loras / "mylora-small.safetensors"
    assert main(["lora-adapt", "--student", str(folder / "student-small.safetensors"),
                 "--lora", str(original), "--out", str(adapted)]) == 0
    dropped = sum(expected_target(t, "small") is None for t in teacher_module.values())
    assert "BK-SDM: mylora — %d of %d modules target blocks this student does not have" % (
        dropped, len(teacher_module)) in capsys.readouterr().out
    networks().list_available_networks()
    model = load(folder / "student-small.safetensors")
    # A1111's own resolution, without the extension's help: what other UIs get too
    plain = networks().load_network.bksdm_original("mylora-small",
                                                   networks().available_networks["mylora-small"])
    placed = resolution(plain, model)
    wanted = {k: t for k, t in expected(teacher_module, "small").items() if t is not None}
    assert len(placed) == len(wanted) == len(teacher_module) - dropped
    assert sorted(placed.values()) == sorted(wanted.values())
    networks().load_networks(["mylora-small"])  # and with the extension: the same, no note
    (net,) = networks().loaded_networks
    assert resolution(net, model) == placed and net.bksdm_note is None
    shutil.rmtree(tmp_path / "after", ignore_errors=True)


def test_the_convert_tab_bakes_a_lora_made_for_the_loaded_model_into_a_student(webui):
    from bksdm_ext.webui import convert_tab, transplant_form
    from test_convert import load_file
    from test_webui_transplant import title_of

    folder, loras = webui
    lora, _ = teacher_lora("sd-v1", "lora", "diffusers")
    (loras / "style").mkdir()
    write_lora(loras / "style" / "mylora.safetensors", lora)
    load(folder / "teacher.safetensors")
    assert transplant_form.lora_choices() == ["style/mylora.safetensors"]
    student = folder / "student-small.safetensors"
    title, button, message = convert_tab.convert(
        "task(1)", "Small", "teacher-small-mylora", "fp32", False, transplant_form.START_FROM[2],
        title_of(student), "", 0.8, False, None, "style/mylora.safetensors")
    assert "bksdm-success" in message and "+ 0.80 × the LoRA mylora.safetensors" in message
    out = folder / "teacher-small-mylora.safetensors"
    assert title == title_of(out) and button["visible"] is True
    written, metadata = load_file(out)
    before, _ = load_file(student)
    given, _ = load_file(loras / "style" / "mylora.safetensors")
    key = "model.diffusion_model.output_blocks.2.1.proj_out.weight"  # teacher up_blocks.1.attentions.0
    module = "lora_unet_up_blocks_1_attentions_0_proj_out"
    delta = (given[module + ".lora_up.weight"].flatten(1) @ given[module + ".lora_down.weight"]
             .flatten(1)).reshape(before[key].shape) * float(given[module + ".alpha"]) / 4
    assert torch.allclose(written[key], before[key] + 0.8 * delta, atol=1e-6)
    assert metadata["bksdm.transplant_lora"] == "mylora.safetensors"

    for name, problem in (("", "Choose a LoRA from the list"),
                          ("../Stable-diffusion/teacher.safetensors", "Lora folder any more")):
        refused = convert_tab.convert("task(2)", "Small", "other", "fp32", False,
                                      transplant_form.START_FROM[2], title_of(student), "", 1.0,
                                      False, None, name)
        assert "bksdm-error" in refused[2] and problem in refused[2]
    assert not (folder / "other.safetensors").exists()


def test_on_a_teacher_an_ordinary_lora_is_left_to_a1111(webui):
    """Even one that cannot apply: on a teacher only LoRAs made for a student are translated."""
    folder, loras = webui
    write_lora(loras / "v2lora.safetensors", other_family_lora())
    load(folder / "teacher.safetensors")
    networks().load_networks(["v2lora"], [1.0], [1.0], [None])
    (net,) = networks().loaded_networks  # loaded as A1111 loads it (its shapes fail later)
    assert net.bksdm_note is None and len(net.modules) > 0
    for suffix in (".safetensors", ".yaml"):  # another teacher of the same layout
        shutil.copy(folder / ("teacher" + suffix), folder / ("teacher2" + suffix))
    load(folder / "teacher2.safetensors")
    assert networks().loaded_networks == [net]  # kept, as A1111 keeps it


@pytest.mark.parametrize("naming", ["diffusers", "compvis"])
def test_an_sd_v2_teacher_lora_lands_on_the_mapped_student_modules(webui, naming):
    folder, loras = webui
    teacher = write_teacher(folder, TINY["sd-v2"], name="v2.safetensors")
    convert_checkpoint(teacher, folder / "v2-tiny.safetensors", "tiny", dtype="fp32")
    lora, teacher_module = teacher_lora("sd-v2", "lora", naming)
    write_lora(loras / "v2lora.safetensors", lora)
    model = load(folder / "v2-tiny.safetensors")
    networks().load_networks(["v2lora"], [1.0], [1.0], [None])
    (net,) = networks().loaded_networks
    wanted = expected(teacher_module, "tiny")
    assert resolution(net, model) == {k: t for k, t in wanted.items() if t is not None}
    assert net.bksdm_note.startswith("v2lora — %d of %d modules" % (
        sum(t is None for t in wanted.values()), len(wanted)))
