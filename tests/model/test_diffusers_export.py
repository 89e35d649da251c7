"""`bksdm export-diffusers`: a student as a diffusers folder whose U-Net computes what the
A1111 student computes (LDM UNetModel from its yaml), whose pipeline loads, and which
`import-diffusers` turns back into the same A1111 file."""
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from bksdm_ext.cli import main
from bksdm_ext.demo import write_tiny_teacher
from bksdm_ext.model.arch import SD_V1, SD_V2_512
from bksdm_ext.model.checkpoint import Checkpoint
from bksdm_ext.model.loading import load_text_encoder
from bksdm_ext.model.tokenizer import clip_tokenizer
from test_convert import ldm_from_yaml, load_file, unet_part

pytest.importorskip("ldm.modules.diffusionmodules.openaimodel")

TEACHERS = {"sd-v1": replace(SD_V1, model_channels=32, context_dim=64),
            "sd-v2": replace(SD_V2_512, model_channels=32, context_dim=64, head_channels=8)}
# docs/facts.md §2: the official configs' names, per preset.
OFFICIAL = {"small": dict(mid_block_type=None, layers_per_block=1, block_out_channels=[32, 64, 128, 128],
                          down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]),
            "tiny": dict(mid_block_type=None, layers_per_block=1, block_out_channels=[32, 64, 128],
                         down_block_types=["CrossAttnDownBlock2D"] * 3,
                         up_block_types=["CrossAttnUpBlock2D"] * 3)}


def _student(tmp_path: Path, family: str, preset: str) -> Path:
    teacher = tmp_path / "teacher.safetensors"
    write_tiny_teacher(teacher, TEACHERS[family])
    student = tmp_path / ("%s-%s.safetensors" % (family, preset))
    assert main(["convert", str(teacher), "--arch", preset, "--out", str(student),
                 "--dtype", "fp32", "--json"]) == 0
    return student


@pytest.mark.parametrize("family", ["sd-v1", "sd-v2"])
@pytest.mark.parametrize("preset", ["small", "tiny"])
@pytest.mark.slow
def test_exported_unet_computes_what_the_a1111_student_computes(tmp_path, capsys, family, preset):
    from diffusers import UNet2DConditionModel

    student = _student(tmp_path, family, preset)
    capsys.readouterr()
    out = tmp_path / "exported"
    assert main(["export-diffusers", str(student), "--out", str(out), "--dtype", "fp32",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["arch"], report["family"], report["output"]) == (preset, family, str(out))

    config = json.loads((out / "unet" / "config.json").read_text())
    for name, value in OFFICIAL[preset].items():
        assert config[name] == value, name
    unet = UNet2DConditionModel.from_pretrained(str(out / "unet")).eval()
    state = unet_part(load_file(student)[0])
    ldm = ldm_from_yaml(student.with_suffix(".yaml"))
    ldm.load_state_dict(state, strict=True)
    assert sum(p.numel() for p in unet.parameters()) == sum(v.numel() for v in state.values())
    torch.manual_seed(0)
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([10, 700])
    context = torch.randn(2, 7, TEACHERS[family].context_dim)
    with torch.no_grad():
        ours = unet(x, t, encoder_hidden_states=context).sample
        a1111 = ldm(x, timesteps=t, context=context)
    assert torch.allclose(ours, a1111, atol=1e-5), (ours - a1111).abs().max()


@pytest.mark.parametrize("family", ["sd-v1", "sd-v2"])
@pytest.mark.slow
def test_the_folder_is_a_pipeline_and_imports_back_to_the_same_file(tmp_path, capsys, family):
    from diffusers import StableDiffusionPipeline

    student = _student(tmp_path, family, "small")
    out = tmp_path / "exported"
    assert main(["export-diffusers", str(student), "--out", str(out), "--dtype", "fp32"]) == 0
    shown = capsys.readouterr().out
    assert "wrote %s" % out in shown
    assert "  parts       scheduler, text_encoder, tokenizer, unet, vae" in shown.splitlines()
    assert "  preset      small" in shown.splitlines()
    index = json.loads((out / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["scheduler"] == ["diffusers", "PNDMScheduler"]

    pipe = StableDiffusionPipeline.from_pretrained(str(out), safety_checker=None)
    prompt = "a photo of a cat"
    ids = pipe.tokenizer(prompt, padding="max_length", max_length=77, return_tensors="pt").input_ids
    ours = clip_tokenizer(family)(prompt, padding="max_length", max_length=77,
                                  return_tensors="pt").input_ids
    assert torch.equal(ids, ours)  # SD-v2 pads with id 0 ("!"), SD-v1 with end-of-text
    with torch.no_grad():
        expected = load_text_encoder(Checkpoint(student), family)(ours)[0]
        assert torch.allclose(pipe.text_encoder(ids)[0], expected, atol=1e-5)
        latents = pipe(prompt, num_inference_steps=2, height=64, width=64,
                       output_type="latent").images
    assert torch.isfinite(latents).all()

    back = tmp_path / "back.safetensors"
    assert main(["import-diffusers", str(out), "--out", str(back), "--dtype", "fp32", "--json"]) == 0
    original, imported = load_file(student)[0], load_file(back)[0]
    for prefix in ("model.diffusion_model.", "first_stage_model."):
        keys = {k for k in original if k.startswith(prefix)}
        assert keys == {k for k in imported if k.startswith(prefix)}
        assert all(torch.equal(original[k], imported[k]) for k in keys), prefix


def test_an_existing_folder_is_kept_unless_overwrite_is_asked(tmp_path, capsys):
    student = _student(tmp_path, "sd-v1", "tiny")
    out = tmp_path / "exported"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    assert main(["export-diffusers", str(student), "--out", str(out), "--unet-only"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "mine.txt").read_text() == "keep me"
    assert main(["export-diffusers", str(student), "--out", str(out), "--unet-only",
                 "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["unet"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".exported")]
