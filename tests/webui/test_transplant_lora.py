"""``bksdm transplant --finetune L.safetensors``: a LoRA as the fine-tune.  Its merged
difference (every network type A1111 applies) lands on the student exactly as the
difference of the base with the LoRA merged in by the A1111 stand-in's Lora code would; its
text-encoder part is merged into the text encoder (SD-v1 names, SD-v2's fused q/k/v)."""
import shutil
import sys

import pytest
import torch
from safetensors.torch import save_file

from bksdm_ext.cli import main
from bksdm_ext.model.convert import convert_checkpoint
from bksdm_ext.model.lora_keymap import LoraFile
from bksdm_ext.model.transplant import transplant
from test_convert import load_file
from test_lora_keymap import save_lora, teacher_lora
from tiny import TINY, write_teacher
from webui_env import load, standin_app, start_webui_with_lora

UNET = "model.diffusion_model."
V1_LAYER = "cond_stage_model.transformer.text_model.encoder.layers.0."
V2_LAYER = "cond_stage_model.model.transformer.resblocks.0."


def text_encoder(family: str):
    """One text-encoder layer's attention and MLP weights, named as in a checkpoint."""
    g = torch.Generator().manual_seed(5)
    if family == "sd-v1":
        shapes = {V1_LAYER + "self_attn.%s_proj.%s" % (p, w): (32,) if w == "bias" else (32, 32)
                  for p in ("q", "k", "v", "out") for w in ("weight", "bias")}
        shapes[V1_LAYER + "mlp.fc1.weight"] = (64, 32)
    else:
        shapes = {V2_LAYER + "attn.in_proj_weight": (96, 32), V2_LAYER + "attn.in_proj_bias": (96,),
                  V2_LAYER + "attn.out_proj.weight": (32, 32), V2_LAYER + "mlp.c_fc.weight": (64, 32)}
    return {k: torch.randn(s, generator=g) for k, s in shapes.items()}


TEXT_MODULES = {"self_attn_q_proj": (32, 32), "self_attn_v_proj": (32, 32),
                "self_attn_out_proj": (32, 32), "mlp_fc1": (64, 32)}


def text_lora() -> dict:
    """kohya text-encoder LoRA shapes (transformers names, as for either family)."""
    shapes = {}
    for name, (out, into) in TEXT_MODULES.items():
        key = "lora_te_text_model_encoder_layers_0_" + name
        shapes.update({key + ".lora_down.weight": (4, into), key + ".lora_up.weight": (out, 4),
                       key + ".alpha": ()})
    return shapes


@pytest.fixture
def webui(tmp_path):
    yield start_webui_with_lora(tmp_path / "webui")
    standin_app.reset(tmp_path / "after")


def merged_by_a1111(folder, loras, base, lora_name: str, strength: float):
    """The base with the LoRA merged in by the stand-in's Lora code (a U-Net forward applies
    it to every layer), written as a checkpoint."""
    import networks

    model = load(base)
    networks.load_networks([lora_name], [strength], [strength], [None])
    with torch.no_grad():
        model.apply_model(torch.zeros(1, 4, 8, 8), torch.tensor([10]), torch.zeros(1, 77, 32))
    state, _ = load_file(base)
    # a bias A1111 added to a layer without one has no place in a checkpoint
    state.update({UNET + k: v.clone() for k, v in model.model.diffusion_model.state_dict().items()
                  if UNET + k in state})
    out = folder.parent / "merged.safetensors"
    save_file(state, str(out))
    shutil.copy(base.with_suffix(".yaml"), out.with_suffix(".yaml"))
    return out


@pytest.mark.parametrize("kind,naming", [("lora", "diffusers"), ("locon-cp", "compvis"),
                                         ("lora-ab", "diffusers"), ("loha", "diffusers"),
                                         ("loha-cp", "compvis"), ("lokr", "compvis"),
                                         ("ia3", "diffusers"), ("full", "compvis"),
                                         ("norm", "diffusers"), ("glora", "compvis"),
                                         ("oft", "diffusers"), ("oft-diag", "compvis")])
@pytest.mark.slow
def test_a_loras_merged_difference_lands_as_a1111_merges_it(webui, tmp_path, kind, naming):
    folder, loras = webui
    base = write_teacher(folder, TINY["sd-v1"], name="base.safetensors")
    student = folder / "student.safetensors"
    convert_checkpoint(base, student, "small", dtype="fp32")
    lora, _ = teacher_lora("sd-v1", kind, naming)
    save_lora(loras / "mylora.safetensors", lora, scale=0.05)
    sys.modules["networks"].list_available_networks()
    merged = merged_by_a1111(folder, loras, base, "mylora", 0.7)

    via_file = transplant(student, base, merged, tmp_path / "a.safetensors", dtype="fp32")
    via_lora = transplant(student, base, loras / "mylora.safetensors", tmp_path / "b.safetensors",
                          alpha=0.7, dtype="fp32")
    expected, _ = load_file(tmp_path / "a.safetensors")
    got, metadata = load_file(tmp_path / "b.safetensors")
    assert sorted(got) == sorted(expected)
    own, _ = load_file(student)
    changed = 0
    for key in expected:
        assert torch.allclose(got[key], expected[key], atol=1e-5), key
        changed += key.startswith(UNET) and not torch.equal(got[key], own[key])
    assert changed > 0 and via_lora.alpha == 0.7
    extra = [w for w in via_lora.warnings if w not in via_file.warnings]
    assert via_lora.warnings == via_file.warnings + extra
    expected = []
    if naming == "diffusers" and kind in ("full", "norm"):  # A1111 has no name for it either
        expected.append("1 modules of mylora.safetensors name no weight of the base (A1111 "
                        "ignores them too), e.g. lora_unet_conv_norm_out")
    if kind == "full":  # diff_b of to_q/k/v (6 in each of 16 attention blocks): no bias there
        expected.append("96 modules of mylora.safetensors add a bias to layers that have none")
    assert [w[:len(e)] for w, e in zip(extra, expected)] == expected and len(extra) == len(expected)
    assert via_lora.carried_share == pytest.approx(via_file.carried_share, rel=1e-4)
    assert metadata["bksdm.transplant_lora"] == "mylora.safetensors"
    assert metadata["bksdm.teacher"] == "base.safetensors"


@pytest.mark.parametrize("family", ["sd-v1", "sd-v2"])
@pytest.mark.slow
def test_the_text_encoder_gets_the_loras_text_part(tmp_path, family, capsys):
    base = write_teacher(tmp_path, TINY[family], name="base.safetensors",
                         extra=text_encoder(family))
    student = tmp_path / "student.safetensors"
    convert_checkpoint(base, student, "tiny", dtype="fp32")
    lora_path = save_lora(tmp_path / "te.safetensors", LoraFile("te", text_lora()), scale=0.2)
    out = tmp_path / "out.safetensors"
    assert main(["transplant", "--student", str(student), "--base", str(base), "--finetune",
                 str(lora_path), "--out", str(out), "--alpha", "0.5", "--dtype", "fp32"]) == 0
    assert "carried     0.50 x LoRA %s (made for %s)" % (lora_path, base) in capsys.readouterr().out
    got, _ = load_file(out)
    before, _ = load_file(base)
    lora, _ = load_file(lora_path)

    def delta(name):
        key = "lora_te_text_model_encoder_layers_0_" + name
        return 0.5 * lora[key + ".lora_up.weight"] @ lora[key + ".lora_down.weight"]

    if family == "sd-v1":
        for name, key in (("self_attn_q_proj", "self_attn.q_proj.weight"),
                          ("self_attn_out_proj", "self_attn.out_proj.weight"),
                          ("mlp_fc1", "mlp.fc1.weight")):
            assert torch.allclose(got[V1_LAYER + key], before[V1_LAYER + key] + delta(name), atol=1e-6)
        assert torch.equal(got[V1_LAYER + "self_attn.k_proj.weight"],
                           before[V1_LAYER + "self_attn.k_proj.weight"])
        assert torch.equal(got[V1_LAYER + "self_attn.q_proj.bias"], before[V1_LAYER + "self_attn.q_proj.bias"])
    else:  # OpenCLIP: q and v into their thirds of the fused weight, k's third unchanged
        fused = V2_LAYER + "attn.in_proj_weight"
        expected = before[fused] + torch.cat([delta("self_attn_q_proj"), torch.zeros(32, 32),
                                              delta("self_attn_v_proj")])
        assert torch.allclose(got[fused], expected, atol=1e-6)
        for name, key in (("self_attn_out_proj", "attn.out_proj.weight"), ("mlp_fc1", "mlp.c_fc.weight")):
            assert torch.allclose(got[V2_LAYER + key], before[V2_LAYER + key] + delta(name), atol=1e-6)
    assert all(torch.equal(got[k], before[k]) for k in before if k.startswith("first_stage_model."))


@pytest.mark.slow
def test_a_lora_with_parts_that_cannot_merge_exits_2_with_one_line(tmp_path, capsys):
    base = write_teacher(tmp_path, TINY["sd-v1"], name="base.safetensors")
    student = tmp_path / "student.safetensors"
    convert_checkpoint(base, student, "small", dtype="fp32")
    lora, _ = teacher_lora("sd-v1", "lora", "compvis")
    key = next(iter(lora.unet_modules))
    lora.shapes[key + ".dora_scale"] = (lora.shapes[key + ".lora_up.weight"][0], 1)
    path = save_lora(tmp_path / "dora.safetensors", lora)
    assert main(["transplant", "--student", str(student), "--base", str(base), "--finetune",
                 str(path), "--out", str(tmp_path / "o.safetensors"), "--json"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "dora.safetensors: %s: its parts ['dora_scale'] are not " \
                                     "supported for merging" % key in err
    assert not (tmp_path / "o.safetensors").exists()
