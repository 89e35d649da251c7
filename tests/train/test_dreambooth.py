"""DreamBooth on a tiny random student (CPU): prior preservation with class images made
once, joint U-Net + text-encoder training, exact resume, A1111 exports, LoRA files whose
keys resolve the way A1111's Lora extension resolves them."""
import io
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bksdm_ext.train import class_images as class_images_module
from bksdm_ext.train import dreambooth as dreambooth_module
from bksdm_ext.cli import main
from bksdm_ext.model.clip_naming import nested_name
from bksdm_ext.model.convert import convert_checkpoint
from bksdm_ext.demo import write_tiny_teacher
from bksdm_ext.train.dreambooth import dreambooth
from bksdm_ext.train.dreambooth_config import DreamBoothConfig
from bksdm_ext.errors import BadInput, Stopped
from bksdm_ext.jobs.events import read_events
from test_convert import ldm_from_yaml, load_file, unet_part
from test_distill import TINY_V2_V, make_dataset

V1_TEXT = "cond_stage_model.transformer."
V2_TEXT = "cond_stage_model.model."


@pytest.fixture(scope="module")
def student(teacher) -> Path:
    path = teacher.with_name("tiny-sd-v1-bk-small.safetensors")
    convert_checkpoint(teacher, path, "small", dtype="fp32")
    return path


@pytest.fixture(scope="module")
def instances(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("subject") / "photos", n=3)  # 48x40: crops vary


def config(model: Path, instances: Path, out: Path, **changes) -> DreamBoothConfig:
    settings = dict(model=str(model), instance_dir=str(instances), instance_prompt="a sks circle",
                    class_prompt="a circle", out=str(out), num_class_images=3, steps=2,
                    resolution=32, lr=1e-3, mixed_precision="no", gradient_checkpointing=False,
                    save_every=0, sample_every=0, sample_steps=2, class_steps=2, log_every=1,
                    export_dtype="fp32")
    settings.update(changes)
    return DreamBoothConfig(**settings)


def events(out: Path, name: str):
    return [e for e in read_events(out / "events.jsonl") if e["event"] == name]


# transformers 5 renamed the call (the old name warns until v6): the engine uses the new one.
@pytest.mark.filterwarnings("error:`gradient_checkpointing_enable` is deprecated:FutureWarning")
@pytest.mark.slow
def test_full_finetune_trains_unet_and_text_encoder_and_exports_an_a1111_student(
        student, teacher, instances, tmp_path):
    out = tmp_path / "run"
    final = dreambooth(config(student, instances, out, class_model=str(teacher), steps=24,
                              gradient_checkpointing=True, sample_every=24, save_every=12))
    start = events(out, "start")[0]
    assert start["model"] == str(student) and start["class_model"] == str(teacher)
    assert start["instance_images"] == 3 and start["mode"] == "full"
    made = events(out, "class_images")[0]
    assert made["generated"] == 3 and made["reused"] == 0 and made["model"] == str(teacher)
    assert len(list(Path(made["folder"]).glob("*.png"))) == 3
    assert Path(made["folder"]).name.startswith("class-a-circle-")

    steps = events(out, "step")
    assert [e["step"] for e in steps] == list(range(1, 25))
    for e in steps:
        assert all(torch.isfinite(torch.tensor([e["loss_instance"], e["loss_prior"]])))
        assert e["loss"] == pytest.approx(e["loss_instance"] + e["loss_prior"], rel=1e-5)
        assert e["eta_s"] is not None and e["lr"] == 1e-3
    losses = [e["loss"] for e in steps]
    assert sum(losses[-6:]) / 6 < 0.8 * sum(losses[:6]) / 6

    grid = Image.open(events(out, "samples")[-1]["path"])
    assert grid.size == (64, 32)  # before | after, for the instance prompt
    assert [e["step"] for e in events(out, "checkpoint")] == [12, 24]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000024"]
    done = read_events(out / "events.jsonl")[-1]
    assert done["event"] == "done" and done["output"] == str(final) and "lora" not in done

    state, metadata = load_file(final)
    base, base_metadata = load_file(student)
    unet = ldm_from_yaml(final.with_suffix(".yaml"))
    unet.load_state_dict(unet_part(state), strict=True)
    assert set(state) == set(base)
    assert metadata["bksdm.preset"] == "small" and metadata["bksdm.family"] == "sd-v1"
    assert metadata["bksdm.teacher"] == base_metadata["bksdm.teacher"] == teacher.name
    assert metadata["bksdm.dreambooth_instance_prompt"] == "a sks circle"
    assert metadata["bksdm.dreambooth_steps"] == "24" and metadata["bksdm.dreambooth_mode"] == "full"
    changed = {k for k in state if not torch.equal(state[k], base[k])}
    assert any(k.startswith(V1_TEXT + "text_model.encoder.") for k in changed)  # jointly trained
    assert any(k.startswith("model.diffusion_model.") for k in changed)
    assert not any(k.startswith("first_stage_model.") for k in changed)


@pytest.mark.slow
def test_class_images_are_made_once_shared_and_topped_up(student, instances, tmp_path,
                                                         monkeypatch):
    shared = tmp_path / "classes"
    dreambooth(config(student, instances, tmp_path / "a", class_dir=str(shared), steps=1))
    folder = Path(events(tmp_path / "a", "class_images")[0]["folder"])
    assert folder.parent == shared
    images = sorted(folder.glob("*.png"))
    original = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in images}

    real_load_unet = class_images_module.load_unet
    monkeypatch.setattr(class_images_module, "load_unet",
                        lambda *a: pytest.fail("generated class images again"))
    dreambooth(config(student, instances, tmp_path / "b", class_dir=str(shared), steps=1))
    reused = events(tmp_path / "b", "class_images")[0]
    assert (reused["generated"], reused["reused"], reused["folder"]) == (0, 3, str(folder))
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in images} == original

    calls = []
    monkeypatch.setattr(class_images_module, "load_unet",
                        lambda *a: calls.append(1) or real_load_unet(*a))
    images[1].unlink()
    dreambooth(config(student, instances, tmp_path / "c", class_dir=str(shared), steps=1))
    topped = events(tmp_path / "c", "class_images")[0]
    assert (topped["generated"], topped["reused"], len(calls)) == (1, 2, 1)
    # image i comes from seed i: the same picture, up to batch-size rounding
    redone = torch.tensor(np.array(Image.open(images[1])), dtype=torch.int16)
    first = torch.tensor(np.array(Image.open(io.BytesIO(original[images[1].name][1]))),
                         dtype=torch.int16)
    assert (redone - first).abs().max() <= 2

    dreambooth(config(student, instances, tmp_path / "d", class_dir=str(shared), steps=1,
                      class_prompt="a square"))
    assert events(tmp_path / "d", "class_images")[0]["folder"] != str(folder)


@pytest.mark.slow
def test_a_stop_file_saves_and_resuming_repeats_the_uninterrupted_run(student, instances,
                                                                      tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    dreambooth(config(student, instances, straight, steps=4, save_every=2))
    split = tmp_path / "split"
    real_crop = dreambooth_module._crop
    calls = []

    def crop_then_ask_to_stop(*args):
        calls.append(1)
        if len(calls) == 3:  # during step 2 (one instance and one class crop a step)
            (split / "STOP").write_text("save")
        return real_crop(*args)

    monkeypatch.setattr(dreambooth_module, "_crop", crop_then_ask_to_stop)
    with pytest.raises(Stopped):
        dreambooth(config(student, instances, split, steps=4, save_every=3))
    stopped = read_events(split / "events.jsonl")[-1]
    assert stopped["event"] == "stopped" and stopped["step"] == 2 and stopped["saved"] is True
    assert (split / "checkpoints" / "step-0000002").is_dir() and not (split / "STOP").exists()
    monkeypatch.setattr(dreambooth_module, "_crop", real_crop)
    with pytest.raises(BadInput, match="--resume"):
        dreambooth(config(student, instances, split, steps=4, save_every=2))
    final = dreambooth(config(student, instances, split, steps=4, save_every=2), resume=True)
    assert events(split, "class_images")[-1]["generated"] == 0
    assert [e["loss"] for e in events(split, "step")] == [e["loss"] for e in events(straight, "step")]
    a, _ = load_file(final)
    b, _ = load_file(straight / final.name)
    assert all(torch.equal(a[k], b[k]) for k in a)


def a1111_lora_target(name: str, sd2: bool) -> str:
    """The module name A1111's Lora extension (1.6.1, 1.10.1) looks a kohya key up under,
    for keys that none of its diffusers-name patterns match."""
    text = re.match(r"lora_te_text_model_encoder_layers_(\d+)_(.+)", name)
    if text:
        layer, rest = text.groups()
        if sd2:
            return "model_transformer_resblocks_%s_%s" % (layer, rest.replace("self_attn", "attn"))
        return "transformer_text_model_encoder_layers_%s_%s" % (layer, rest)
    assert name.startswith("lora_unet_")
    return name.replace("lora_unet", "diffusion_model")


# A1111 rewrites kohya keys that start like this as if the U-Net had SD's full layout.
DIFFUSERS_PATTERNS = ("lora_unet_conv_in", "lora_unet_conv_out", "lora_unet_time_embedding_linear_",
                      "lora_unet_down_blocks_", "lora_unet_mid_block_", "lora_unet_up_blocks_")


def lora_modules(lora_state):
    names = sorted({k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0]
                    for k in lora_state})
    for name in names:
        assert not name.startswith(DIFFUSERS_PATTERNS)
        down = lora_state[name + ".lora_down.weight"]
        up = lora_state[name + ".lora_up.weight"]
        alpha = float(lora_state[name + ".alpha"])
        yield name, up @ down * alpha / down.shape[0]


@pytest.mark.slow
def test_lora_file_resolves_in_a1111_and_reproduces_the_merged_student(student, instances,
                                                                       tmp_path):
    from transformers import CLIPTextConfig, CLIPTextModel

    out = tmp_path / "lora"
    final = dreambooth(config(student, instances, out, lora=True, steps=3, lr=None, lora_lr=1e-2,
                              gradient_checkpointing=True))
    done = read_events(out / "events.jsonl")[-1]
    assert done["output"] == str(final) and Path(done["lora"]).is_file()
    lora, lora_metadata = load_file(Path(done["lora"]))
    merged, metadata = load_file(final)
    base, _ = load_file(student)
    assert metadata["bksdm.dreambooth_mode"] == "lora-r16" and lora_metadata["ss_v2"] == "False"
    assert events(out, "start")[0]["lr"] == 1e-2

    ldm = ldm_from_yaml(final.with_suffix(".yaml"))
    text = CLIPTextModel(CLIPTextConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=1, vocab_size=49408))
    modules = {("diffusion_model." + n).replace(".", "_"): (m, "model.diffusion_model." + n)
               for n, m in ldm.named_modules()}
    # A1111's CLIP (transformers 4.x) nests the tower under text_model.; transformers 5 does not.
    modules.update({("transformer." + nested_name(n)).replace(".", "_"):
                    (m, V1_TEXT + nested_name(n)) for n, m in text.named_modules()})
    seen = {"unet": 0, "te": 0}
    touched = set()
    for name, delta in lora_modules(lora):
        module, key = modules[a1111_lora_target(name, sd2=False)]
        assert isinstance(module, torch.nn.Linear) and module.weight.shape == delta.shape
        assert torch.allclose(base[key + ".weight"] + delta, merged[key + ".weight"], atol=1e-6)
        seen["unet" if name.startswith("lora_unet_") else "te"] += 1
        touched.add(key + ".weight")
        assert delta.abs().max() > 0
    # 4 projections x 2 attentions x (3 down + 6 up) transformers of BK-Small; 2 CLIP layers
    assert seen == {"unet": 4 * 2 * 9, "te": 4 * 2}
    assert all(torch.equal(merged[k], base[k]) for k in base if k not in touched)


@pytest.mark.slow
def test_sd2_v_prediction_lora_resolves_onto_openclip_attention(tmp_path, instances):
    model = tmp_path / "tiny-v2.safetensors"
    write_tiny_teacher(model, TINY_V2_V)
    out = tmp_path / "v2"
    dreambooth(config(model, instances, out, lora=True, steps=2, lr=1e-2,
                      prior_preservation=False, class_prompt=""))
    start = events(out, "start")[0]
    assert start["parameterization"] == "v" and start["family"] == "sd-v2"
    assert start["class_images"] == 0 and not events(out, "class_images")
    assert all("loss_prior" not in e for e in events(out, "step"))
    done = read_events(out / "events.jsonl")[-1]
    lora, metadata = load_file(Path(done["lora"]))
    merged, _ = load_file(Path(done["output"]))
    base, _ = load_file(model)
    assert metadata["ss_v2"] == "True"

    ldm = ldm_from_yaml(Path(done["output"]).with_suffix(".yaml"))
    unet_modules = {("diffusion_model." + n).replace(".", "_"): m for n, m in ldm.named_modules()}
    # A1111 loads the file's cond_stage_model.* into its OpenCLIP embedder, so the file's
    # names are its module names: "<module>.in_proj_weight" is a MultiheadAttention's
    # fused q/k/v (as torch names it), "<module>.weight" a Linear's.
    assert {n for n, _ in torch.nn.MultiheadAttention(8, 1).named_parameters()} >= {
        "in_proj_weight", "out_proj.weight"}
    text_params = {k[len("cond_stage_model."):].replace(".", "_"): v for k, v in base.items()
                   if k.startswith(V2_TEXT)}
    text_deltas = {}
    for name, delta in lora_modules(lora):
        target = a1111_lora_target(name, sd2=True)
        if name.startswith("lora_unet_"):
            assert unet_modules[target].weight.shape == delta.shape
            continue
        projection = re.match(r"(.*)_([qkv]_proj)$", target)
        if projection:  # A1111 applies q/k/v to the attention's fused in_proj_weight
            fused = text_params[projection.group(1) + "_in_proj_weight"]
            assert fused.shape == (3 * delta.shape[0], delta.shape[1])
        else:  # attn.out_proj, a Linear inside the attention
            assert text_params[target + "_weight"].shape == delta.shape
        text_deltas[target] = delta
    assert len(text_deltas) == 4  # q, k, v, out of the one layer SD-v2 conditions through
    fused = V2_TEXT + "transformer.resblocks.0.attn.in_proj_weight"
    expected = base[fused] + torch.cat([text_deltas["model_transformer_resblocks_0_attn_%s_proj" % p]
                                        for p in "qkv"])
    assert torch.allclose(merged[fused], expected, atol=1e-6)
    out_proj = V2_TEXT + "transformer.resblocks.0.attn.out_proj.weight"
    assert torch.allclose(merged[out_proj], base[out_proj]
                          + text_deltas["model_transformer_resblocks_0_attn_out_proj"], atol=1e-6)
    last = V2_TEXT + "transformer.resblocks.1.attn.in_proj_weight"  # never run: left as it was
    assert torch.equal(merged[last], base[last])


def test_lora_without_peft_is_a_bad_input_and_full_finetuning_never_needs_it(
        student, instances, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # what `import peft` sees when it is absent
    monkeypatch.setattr(dreambooth_module, "load_unet", lambda *a: pytest.fail("loaded a model"))
    with pytest.raises(BadInput, match="pip install peft"):
        dreambooth(config(student, instances, tmp_path / "lora", lora=True))
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "peft", None)
    dreambooth(config(student, instances, tmp_path / "full", steps=1, prior_preservation=False))
    assert read_events(tmp_path / "full" / "events.jsonl")[-1]["event"] == "done"


def test_bad_inputs_fail_before_any_model_loads(student, instances, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(dreambooth_module, "load_unet", lambda *a: pytest.fail("loaded a model"))
    empty = tmp_path / "empty"
    (empty / "notes").mkdir(parents=True)
    (empty / "notes" / "readme.txt").write_text("no photos here")
    with pytest.raises(BadInput, match="no images"):
        dreambooth(config(student, empty, tmp_path / "run"))
    with pytest.raises(BadInput, match="no such file"):
        dreambooth(config(tmp_path / "missing.safetensors", instances, tmp_path / "run"))
    with pytest.raises(BadInput, match="class-prompt"):
        dreambooth(config(student, instances, tmp_path / "run", class_prompt=" "))
    broken = make_dataset(tmp_path / "broken", n=1)
    (broken / "cut.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(BadInput, match="cut.png"):
        dreambooth(config(student, broken, tmp_path / "run"))
    code = main(["dreambooth", "--model", str(student), "--instance-dir", str(empty),
                 "--instance-prompt", "a sks circle", "--class-prompt", "a circle",
                 "--out", str(tmp_path / "cli")])
    err = capsys.readouterr().err
    assert code == 2 and "no images" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_cli_runs_a_tiny_dreambooth(student, instances, tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["dreambooth", "--model", str(student), "--instance-dir", str(instances),
                 "--instance-prompt", "a sks circle", "--class-prompt", "a circle", "--out", str(out),
                 "--num-class-images", "2", "--steps", "2", "--resolution", "32", "--lr", "1e-4",
                 "--mixed-precision", "no", "--no-gradient-checkpointing", "--save-every", "0",
                 "--sample-every", "0", "--no-train-text-encoder", "--export-dtype", "fp16",
                 "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    state, metadata = load_file(Path(result["output"]))
    base, _ = load_file(student)
    assert metadata["bksdm.dreambooth_text_encoder"] == "frozen"
    assert all(torch.equal(state[k], base[k]) for k in base if k.startswith(V1_TEXT))
    assert state["model.diffusion_model.out.2.weight"].dtype == torch.float16
    assert json.loads((out / "config.json").read_text())["steps"] == 2


@pytest.mark.slow
def test_cli_dreambooth_on_an_a1111_machine_samples_without_a_clip_score(
        student, instances, tmp_path, capsys, a1111_machine):
    """Default sampling and no --clip-model, with the Hugging Face cache A1111 leaves (CLIP's
    config without weights): the run succeeds with its samples and no CLIP score."""
    out = tmp_path / "run"
    code = main(["dreambooth", "--model", str(student), "--instance-dir", str(instances),
                 "--instance-prompt", "a sks circle", "--class-prompt", "a circle", "--out",
                 str(out), "--num-class-images", "1", "--steps", "2", "--resolution", "32",
                 "--json"])
    assert code == 0, capsys.readouterr().err
    sample = out / "samples" / "step-0000002.png"
    assert [e["path"] for e in events(out, "samples")] == [str(sample)]
    assert sample.is_file() and events(out, "eval") == []
    assert events(out, "done")


def test_a_named_clip_that_cannot_be_had_ends_the_run_before_any_work(
        student, instances, tmp_path, capsys, monkeypatch, a1111_machine):
    monkeypatch.setattr(dreambooth_module, "load_unet", lambda *a: pytest.fail("loaded a model"))
    monkeypatch.setattr(dreambooth_module, "ensure_class_images",
                        lambda *a, **k: pytest.fail("made class images"))
    code = main(["dreambooth", "--model", str(student), "--instance-dir", str(instances),
                 "--instance-prompt", "a sks circle", "--class-prompt", "a circle", "--out",
                 str(tmp_path / "run"), "--steps", "2", "--resolution", "32", "--clip-model",
                 "openai/clip-vit-large-patch14"])
    err = capsys.readouterr().err
    assert code == 2 and ("could not download CLIP model openai/clip-vit-large-patch14's "
                          "weights (the Hugging Face cache has its config only, in %s)"
                          % a1111_machine) in err, err


def test_samples_get_the_clip_score_of_their_prompt(student, instances, tmp_path):
    from test_scores import tiny_clip

    out = tmp_path / "clip-run"
    clip = tiny_clip(tmp_path / "clip")
    dreambooth(config(student, instances, out, steps=2, sample_every=2,
                      prior_preservation=False, clip_model=str(clip)))
    scored = events(out, "eval")  # the instance prompt's CLIP score, with the samples
    assert [e["step"] for e in scored] == [2] and scored[0]["clip_model"] == str(clip)
    assert 0 <= scored[0]["clip_score"] <= 100
