"""Importing a BK-SDM diffusers folder (nota-ai/bk-sdm-* layout) into one A1111 file."""
import json

import pytest
import torch

from bksdm_ext.model.arch import PRESETS, Architecture
from bksdm_ext.cli import main
from bksdm_ext.model.parts_keymap import TEXT_PREFIX, VAE_PREFIX, clip_to_hf, vae_to_diffusers
from test_convert import ldm_from_yaml, load_file, same_outputs, unet_part
from tiny import TINY


def make_folder(root, spec, preset):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    arch = Architecture(spec, PRESETS[preset])
    unet = UNet2DConditionModel(**arch.diffusers_config())
    with torch.no_grad():
        for p in unet.parameters():
            p.normal_(0, 0.1)
    unet.save_pretrained(str(root / "unet"))
    vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4,
                        latent_channels=4, layers_per_block=1)
    vae.save_pretrained(str(root / "vae"))
    text = CLIPTextModel(CLIPTextConfig(hidden_size=spec.context_dim, intermediate_size=64,
                                        num_attention_heads=4, num_hidden_layers=2,
                                        vocab_size=100, max_position_embeddings=16,
                                        projection_dim=spec.context_dim))
    text.save_pretrained(str(root / "text_encoder"))  # transformers 4.30 writes a .bin here
    (root / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    (root / "scheduler").mkdir()
    prediction = "v_prediction" if spec.parameterization == "v" else "epsilon"
    (root / "scheduler" / "scheduler_config.json").write_text(
        json.dumps({"prediction_type": prediction}))
    return unet, vae, text


@pytest.mark.parametrize("family,preset", [("sd-v1", "small"), ("sd-v2-v", "tiny"),
                                           ("sd-v1", "base")])
def test_import_writes_an_a1111_student(tmp_path, capsys, family, preset):
    spec = TINY[family]
    folder = tmp_path / ("bk-sdm-" + preset)
    folder.mkdir()
    unet, vae, text = make_folder(folder, spec, preset)
    out = tmp_path / "imported.safetensors"
    assert main(["import-diffusers", str(folder), "--out", str(out), "--dtype", "fp32",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["arch"] == preset and report["parameterization"] == spec.parameterization

    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["preset"] == preset and info["family"] == spec.family
    assert info["parameterization"] == spec.parameterization

    state, metadata = load_file(out)
    assert metadata["bksdm.source"] == folder.name
    ldm_unet = ldm_from_yaml(out.with_suffix(".yaml"))
    ldm_unet.load_state_dict(unet_part(state), strict=True)
    assert same_outputs(ldm_unet, Architecture(spec, PRESETS[preset]), unet_part(state), spec) <= 1e-4

    vae_back = vae_to_diffusers({k[len(VAE_PREFIX):]: v for k, v in state.items()
                                 if k.startswith(VAE_PREFIX)})
    assert all(torch.equal(vae_back[k], v) for k, v in vae.state_dict().items())
    prefix = TEXT_PREFIX[spec.family]
    text_back = clip_to_hf({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)},
                           spec.family)
    for key, value in text.state_dict().items():
        if key in text_back:
            assert torch.equal(text_back[key], value), key


def test_a_folder_without_model_index_is_refused(tmp_path, capsys):
    code = main(["import-diffusers", str(tmp_path), "--out", str(tmp_path / "x.safetensors")])
    assert code == 2 and "model_index.json" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()


def test_the_import_reports_to_a_person_too(tmp_path, capsys):
    """Without --json the report is lines for a person (it once raised KeyError there)."""
    folder = tmp_path / "bk-sdm-small"
    folder.mkdir()
    make_folder(folder, TINY["sd-v1"], "small")
    out = tmp_path / "imported.safetensors"
    assert main(["import-diffusers", str(folder), "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "wrote %s" % out
    assert "  preset      small" in lines and "  family      sd-v1 (eps)" in lines
