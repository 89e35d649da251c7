"""Conversion end to end: the written student loads strictly into the real LDM UNetModel
built from the written yaml and computes what the diffusers model computes."""
import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open

from bksdm_ext.model.arch import PRESETS, Architecture, Removal
from bksdm_ext.cli import main
from bksdm_ext.model.convert import convert_checkpoint
from bksdm_ext.model.keymap import UNET_PREFIX, KeyMap
from tiny import TINY, write_teacher

# docs/facts.md §3 (student LDM block index <- teacher index), independent of the code under test.
INPUT_MAP = {"base": [0, 1, 3, 4, 6, 7, 9, 10], "small": [0, 1, 3, 4, 6, 7, 9, 10],
             "tiny": [0, 1, 3, 4, 6, 7], "mid-removed": list(range(12))}
OUTPUT_MAP = {"base": [0, 2, 3, 5, 6, 8, 9, 11], "small": [0, 2, 3, 5, 6, 8, 9, 11],
              "tiny": [3, 5, 6, 8, 9, 11], "mid-removed": list(range(12))}


def load_file(path: Path):
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def ldm_from_yaml(yaml_path: Path) -> torch.nn.Module:
    """Build the U-Net the way A1111 does: ldm.util.instantiate_from_config on unet_config."""
    from ldm.util import instantiate_from_config

    unet_config = yaml.safe_load(yaml_path.read_text())["model"]["params"]["unet_config"]
    unet_config["params"]["use_fp16"] = False  # SD-v2's yaml asks for fp16; we test on a CPU
    return instantiate_from_config(unet_config).eval()


def unet_part(state):
    return {k[len(UNET_PREFIX):]: v for k, v in state.items() if k.startswith(UNET_PREFIX)}


def teacher_key(student_key: str, preset: str) -> str:
    part, index, rest = student_key.split(".", 2)
    table = {"input_blocks": INPUT_MAP, "output_blocks": OUTPUT_MAP}.get(part)
    return student_key if table is None else "%s.%d.%s" % (part, table[preset][int(index)], rest)


def same_outputs(ldm_unet, arch: Architecture, unet_state, spec) -> float:
    from diffusers import UNet2DConditionModel

    diffusers_unet = UNet2DConditionModel(**arch.diffusers_config()).eval()
    diffusers_unet.load_state_dict(KeyMap(arch).convert_to_diffusers(unet_state), strict=True)
    torch.manual_seed(0)
    x = torch.randn(2, 4, 16, 16)
    t = torch.tensor([10, 700])
    context = torch.randn(2, 7, spec.context_dim)
    with torch.no_grad():
        a = ldm_unet(x, timesteps=t, context=context)
        b = diffusers_unet(x, t, encoder_hidden_states=context).sample
    return (a - b).abs().max().item()


@pytest.mark.parametrize("family", ["sd-v1", "sd-v2", "sd-v2-v"])
@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.slow
def test_student_loads_strictly_in_ldm_and_matches_diffusers(tmp_path, capsys, family, preset):
    spec = TINY[family]
    source = write_teacher(tmp_path, spec, extra={"model_ema.decay": torch.tensor(0.999)})
    out = tmp_path / "student.safetensors"
    assert main(["convert", str(source), "--arch", preset, "--out", str(out), "--dtype", "fp32",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["arch"] == preset and report["family"] == spec.family
    assert report["parameterization"] == spec.parameterization
    assert report["output"] == str(out) and report["config"] == str(out.with_suffix(".yaml"))

    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["preset"], info["family"]) == (preset, spec.family)
    assert info["parameterization"] == spec.parameterization  # from the student's own yaml
    assert main(["info", str(source), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["preset"] == "teacher"

    student, metadata = load_file(out)
    teacher, _ = load_file(source)
    assert metadata["bksdm.preset"] == preset and metadata["bksdm.family"] == spec.family
    assert metadata["bksdm.teacher"] == source.name and len(metadata["bksdm.teacher_sha256"]) == 64
    assert metadata["modelspec.title"] == "student" and "modelspec.architecture" in metadata

    # Every student tensor is the teacher tensor the official map names.
    student_unet, teacher_unet = unet_part(student), unet_part(teacher)
    for key, value in student_unet.items():
        assert torch.equal(value, teacher_unet[teacher_key(key, preset)]), key
    # Everything else is copied unchanged; the EMA copy A1111 ignores is dropped.
    for key, value in teacher.items():
        if not key.startswith((UNET_PREFIX, "model_ema.")):
            assert torch.equal(student[key], value), key
    assert not any(k.startswith("model_ema.") for k in student)
    assert report["student_unet_params"] == sum(v.numel() for v in student_unet.values())

    ldm_unet = ldm_from_yaml(out.with_suffix(".yaml"))
    ldm_unet.load_state_dict(student_unet, strict=True)
    config = yaml.safe_load(out.with_suffix(".yaml").read_text())
    assert config["model"]["params"].get("parameterization", "eps") == spec.parameterization
    arch = Architecture(spec, PRESETS[preset])
    assert same_outputs(ldm_unet, arch, student_unet, spec) <= 1e-4


def test_teacher_round_trips_and_matches_diffusers_own_converter(tmp_path):
    from diffusers import UNet2DConditionModel
    from diffusers.pipelines.stable_diffusion.convert_from_ckpt import convert_ldm_unet_checkpoint

    spec = TINY["sd-v1"]
    teacher, _ = load_file(write_teacher(tmp_path, spec))
    arch = Architecture(spec)
    keymap = KeyMap(arch)
    ldm_state = unet_part(teacher)
    ours = keymap.convert_to_diffusers(ldm_state)
    full_config = dict(UNet2DConditionModel(**arch.diffusers_config()).config)
    theirs = convert_ldm_unet_checkpoint(dict(teacher), full_config)
    assert set(ours) == set(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    back = keymap.convert_to_ldm(ours)
    assert set(back) == set(ldm_state) and all(torch.equal(back[k], ldm_state[k]) for k in back)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_student_layouts_round_trip(preset):
    from diffusers import UNet2DConditionModel

    arch = Architecture(TINY["sd-v2"], PRESETS[preset])
    diffusers_keys = set(UNet2DConditionModel(**arch.diffusers_config()).state_dict())
    keymap = KeyMap(arch)
    ldm_keys = {keymap.to_ldm(k) for k in diffusers_keys}
    assert {keymap.to_diffusers(k) for k in ldm_keys} == diffusers_keys
    assert len(ldm_keys) == len(diffusers_keys)


def test_fp16_default_casts_the_unet_only_and_ckpt_gives_the_same_student(tmp_path):
    spec = TINY["sd-v1"]
    from_st = convert_checkpoint(write_teacher(tmp_path, spec), tmp_path / "a.safetensors",
                                 "small")
    ckpt = write_teacher(tmp_path, spec, name="teacher2.ckpt")
    convert_checkpoint(ckpt, tmp_path / "b.safetensors", "small")
    a, _ = load_file(tmp_path / "a.safetensors")
    b, _ = load_file(tmp_path / "b.safetensors")
    assert from_st.dtype == "float16"
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert all(v.dtype == torch.float16 for v in unet_part(a).values())
    assert a["first_stage_model.decoder.conv_out.weight"].dtype == torch.float32


def test_custom_removal_converts_and_loads(tmp_path):
    custom = Removal("tiny-with-mid", "test", down_layers=(0,), up_layers=(0, 2), stages=3)
    spec = TINY["sd-v1"]
    source = write_teacher(tmp_path, spec)
    out = tmp_path / "custom.safetensors"
    convert_checkpoint(source, out, custom)
    state, _ = load_file(out)
    ldm_unet = ldm_from_yaml(out.with_suffix(".yaml"))
    ldm_unet.load_state_dict({k: v.float() for k, v in unet_part(state).items()}, strict=True)


def test_weights_in_memory_convert_like_the_file(tmp_path):
    from bksdm_ext.model.checkpoint import Checkpoint

    source = write_teacher(tmp_path, TINY["sd-v1"])
    state, _ = load_file(source)
    in_memory = Checkpoint(tmp_path / "unsaved-merge.safetensors", state=state)
    report = convert_checkpoint(in_memory, tmp_path / "m.safetensors", "tiny")
    convert_checkpoint(source, tmp_path / "f.safetensors", "tiny")
    from_memory, metadata = load_file(tmp_path / "m.safetensors")
    from_file, _ = load_file(tmp_path / "f.safetensors")
    assert set(from_memory) == set(from_file)
    assert all(torch.equal(from_memory[k], from_file[k]) for k in from_file)
    assert metadata["bksdm.teacher"] == "unsaved-merge.safetensors"
    assert "bksdm.teacher_sha256" not in metadata and report.teacher_sha256 == ""


def test_a_student_without_yaml_keeps_what_the_weights_cannot_tell(tmp_path):
    from bksdm_ext.model.checkpoint import Checkpoint
    from bksdm_ext.model.detect import inspect_checkpoint

    spec = TINY["sd-v2-v"]  # 8-channel heads and v-prediction: neither is in the weights
    out = tmp_path / "student.safetensors"
    convert_checkpoint(write_teacher(tmp_path, spec), out, "small")
    out.with_suffix(".yaml").unlink()
    info = inspect_checkpoint(Checkpoint(out))
    assert info.arch == Architecture(spec, PRESETS["small"])
    assert info.parameterization_source == "metadata"
