"""``bksdm lora-adapt``: a teacher's LoRA written in a student's block layout (names from the
block map written out in test_lora_keymap), the counts printed, tensors copied unchanged, the
layout metadata added; a LoRA of another family or an SDXL LoRA: exit 2 with one line."""
import json

import pytest
import torch
from safetensors import safe_open

from bksdm_ext.cli import main
from bksdm_ext.model.arch import Architecture
from bksdm_ext.model.convert import convert_checkpoint
from test_lora_keymap import (expected_target, linear_lora, other_family_lora, save_lora,
                              teacher_lora)
from tiny import TINY, write_teacher


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    teacher = write_teacher(folder, TINY["sd-v1"])
    path = folder / "student-tiny.safetensors"
    convert_checkpoint(teacher, path, "tiny", dtype="fp32")
    return path


def read(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def test_a_teacher_lora_is_written_in_the_students_layout(student, tmp_path, capsys):
    lora, teacher_module = teacher_lora("sd-v1", "locon-cp", "diffusers")
    lora.shapes["lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight"] = (32, 4)
    lora.shapes["lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"] = (4, 32)
    lora.metadata = {"ss_output_name": "mylora", "sshs_model_hash": "abc", "ss_v2": "False"}
    source = save_lora(tmp_path / "mylora.safetensors", lora)
    out = tmp_path / "mylora-tiny.safetensors"
    assert main(["lora-adapt", "--student", str(student), "--lora", str(source),
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    kept = {k: expected_target(t, "tiny") for k, t in teacher_module.items()}
    dropped = [k for k, t in kept.items() if t is None]
    assert "BK-SDM: mylora — %d of %d modules target blocks this student does not have" % (
        len(dropped), len(kept)) in printed
    assert "%d of %d modules on the student's blocks, %d left out" % (
        len(kept) - len(dropped), len(kept), len(dropped)) in printed
    assert "1 modules unchanged" in printed
    before, _ = read(source)
    after, metadata = read(out)
    for key, target in kept.items():
        for part in ("lora_down.weight", "lora_mid.weight", "lora_up.weight", "alpha"):
            if target is not None:
                assert torch.equal(after["lora_unet_%s.%s" % (target, part)],
                                   before["%s.%s" % (key, part)])
    assert len(after) == 4 * (len(kept) - len(dropped)) + 2  # modules of removed blocks left out
    te = "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight"
    assert torch.equal(after[te], before[te])
    assert metadata["bksdm.preset"] == "tiny" and metadata["bksdm.family"] == "sd-v1"
    assert metadata["bksdm.lora_adapted_from"] == "mylora" and "sshs_model_hash" not in metadata
    assert metadata["ss_output_name"] == "mylora-tiny" and metadata["ss_v2"] == "False"
    assert main(["lora-adapt", "--student", str(student), "--lora", str(source),
                 "--out", str(out), "--json"]) == 2  # nothing overwritten without being asked
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize("kind,expected", [
    ("sd-v2", "v2lora was made for another model (text conditioning 48 wide) and this model is "
              "SD-v1 (32): use a LoRA made for SD-v1"),
    ("sdxl", "xllora is an SDXL LoRA; BK-SDM students are SD-v1/v2 models: use a LoRA made for "
             "SD-v1"),
])
def test_a_lora_of_another_family_exits_2_with_one_line(student, tmp_path, capsys, kind,
                                                        expected):
    if kind == "sd-v2":
        lora = other_family_lora()
    else:
        lora = linear_lora(Architecture(TINY["sd-v1"]), "xllora")
        lora.shapes["lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_up.weight"] = (32, 4)
    source = save_lora(tmp_path / (lora.name + ".safetensors"), lora)
    out = tmp_path / "out.safetensors"
    assert main(["lora-adapt", "--student", str(student), "--lora", str(source),
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == "bksdm lora-adapt: error: %s\n" % expected
    assert not out.exists()


def test_a_file_that_is_no_lora_is_refused(student, tmp_path, capsys):
    assert main(["lora-adapt", "--student", str(student), "--lora", str(student),
                 "--out", str(tmp_path / "x.safetensors"), "--json"]) == 2
    assert "not a LoRA (it has no lora_unet_*/lora_te_* tensors)" in capsys.readouterr().err


def test_json_report(student, tmp_path, capsys):
    lora, _ = teacher_lora("sd-v1", "lora", "compvis")
    source = save_lora(tmp_path / "mylora.safetensors", lora)
    assert main(["lora-adapt", "--student", str(student), "--lora", str(source),
                 "--out", str(tmp_path / "o.safetensors"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["layout"] == "teacher" and report["model"] == "tiny"
    assert report["placed"] + report["removed_blocks"] == report["unet_modules"]
    assert report["removed_blocks"] > 0 and report["unplaced"] == 0
