"""Custom students (issue #15) through the rest of the project: distillation with the
spec's feature-KD pairs, exact resume, and the exported student's own yaml."""
import pytest
import torch

from bksdm_ext.cli import main
from bksdm_ext.model.checkpoint import Checkpoint
from bksdm_ext.model.detect import inspect_checkpoint
from bksdm_ext.model.blocks import notation
from bksdm_ext.train.distill import distill
from test_convert import ldm_from_yaml, load_file, unet_part
from test_distill import config, data, steps  # noqa: F401  (data is a fixture)
from test_dreambooth import instances  # noqa: F401  (a fixture)

CUSTOM = "down.1.1,up.1.1,down.3.0,up.3.2"  # stage 3 keeps its second layer: not a preset


@pytest.mark.slow
def test_a_custom_student_distils_and_resumes_exactly(teacher, data, tmp_path):  # noqa: F811
    straight = tmp_path / "straight"
    settings = dict(preset="mid-removed", remove=CUSTOM, steps=4, save_every=2)
    final = distill(config(teacher, data, straight, **settings))
    split = tmp_path / "split"
    distill(config(teacher, data, split, **dict(settings, steps=2)))
    resumed = distill(config(teacher, data, split, **settings), resume=True)
    losses = [e["loss"] for e in steps(straight)]
    assert losses == [e["loss"] for e in steps(split)] and all(l > 0 for l in losses)
    assert all(e["feature_kd"] > 0 for e in steps(straight))
    a, metadata = load_file(final)
    b, _ = load_file(resumed)
    assert final.name == resumed.name == "tiny-sd-v1-bk-custom-distilled.safetensors"
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert metadata["bksdm.removal"] == "down.1.1,down.3.0,up.1.1,up.3.2,mid"
    info = inspect_checkpoint(Checkpoint(final))
    assert notation(info.arch) == metadata["bksdm.removal"]
    ldm_from_yaml(final.with_suffix(".yaml")).load_state_dict(unet_part(a), strict=True)


def test_distill_remove_alone_cuts_the_teacher(teacher, data, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "cli"
    assert main(["distill", "--teacher", str(teacher), "--data", str(data), "--out", str(out),
                 "--remove", "down.*.1,up.*.1", "--steps", "1", "--batch-size", "2",
                 "--grad-accum", "1", "--resolution", "32", "--mixed-precision", "no",
                 "--save-every", "0", "--sample-every", "0", "--no-ema"]) == 0
    assert (out / "tiny-sd-v1-bk-base-distilled.safetensors").is_file()
    assert main(["distill", "--teacher", str(teacher), "--data", str(data), "--out",
                 str(tmp_path / "bad"), "--remove", "down.2.1"]) == 2
    assert "stage 2 removes 1 down and 0 up layers" in capsys.readouterr().err


def test_bench_times_a_custom_student(teacher, tmp_path, capsys):
    import json

    from bksdm_ext.model.convert import convert_checkpoint

    student = tmp_path / "cut.safetensors"
    convert_checkpoint(teacher, student, "teacher", dtype="fp32", remove="down.0.0,up.0.1,mid")
    assert main(["bench", str(teacher), str(student), "--steps", "1", "--size", "32",
                 "--runs", "1", "--warmup", "0", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["results"]
    assert [r["preset"] for r in rows] == ["teacher", "custom"]


# -- DreamBooth, LoRA and eval on a custom student (not a preset) -----------------------

DREAMBOOTH_CUT = "down.1.1,up.1.1,mid"


@pytest.fixture(scope="module")
def custom_student(teacher, tmp_path_factory):
    from bksdm_ext.model.convert import convert_checkpoint

    path = tmp_path_factory.mktemp("custom") / "tiny-sd-v1-cut.safetensors"
    convert_checkpoint(teacher, path, "teacher", dtype="fp32", remove=DREAMBOOTH_CUT)
    return path


def _dreambooth_config(model, instances, out, **changes):
    from test_dreambooth import config as dreambooth_config

    return dreambooth_config(model, instances, out, prior_preservation=False, class_prompt="",
                             **changes)


def test_dreambooth_full_finetunes_a_custom_student_and_exports_it_loadable(
        custom_student, instances, tmp_path):  # noqa: F811
    from bksdm_ext.train.dreambooth import dreambooth

    final = dreambooth(_dreambooth_config(custom_student, instances, tmp_path / "full"))
    state, metadata = load_file(final)
    base, base_metadata = load_file(custom_student)
    assert metadata["bksdm.preset"] == "custom" and metadata["bksdm.dreambooth_mode"] == "full"
    assert metadata["bksdm.removal"] == base_metadata["bksdm.removal"] == "down.1.1,up.1.1,mid"
    assert set(state) == set(base)
    assert any(not torch.equal(state[k], base[k]) for k in base
               if k.startswith("model.diffusion_model."))  # the U-Net was trained
    ldm_from_yaml(final.with_suffix(".yaml")).load_state_dict(unet_part(state), strict=True)


def test_dreambooth_lora_on_a_custom_student_resolves_onto_its_own_unet(
        custom_student, instances, tmp_path):  # noqa: F811
    from pathlib import Path

    from bksdm_ext.jobs.events import read_events
    from bksdm_ext.train.dreambooth import dreambooth
    from test_dreambooth import a1111_lora_target, lora_modules

    out = tmp_path / "lora"
    final = dreambooth(_dreambooth_config(custom_student, instances, out, lora=True, lr=None,
                                          lora_lr=1e-2, train_text_encoder=False))
    lora, _ = load_file(Path(read_events(out / "events.jsonl")[-1]["lora"]))
    merged, metadata = load_file(final)
    base, _ = load_file(custom_student)
    assert metadata["bksdm.removal"] == "down.1.1,up.1.1,mid"
    ldm = ldm_from_yaml(final.with_suffix(".yaml"))
    ldm.load_state_dict(unet_part(merged), strict=True)
    modules = {("diffusion_model." + n).replace(".", "_"): (m, "model.diffusion_model." + n)
               for n, m in ldm.named_modules()}
    projections = {name for name, m in ldm.named_modules()
                   if name.endswith((".to_q", ".to_k", ".to_v", ".to_out.0"))}
    touched = set()
    for name, delta in lora_modules(lora):
        module, key = modules[a1111_lora_target(name, sd2=False)]
        assert isinstance(module, torch.nn.Linear) and module.weight.shape == delta.shape
        assert torch.allclose(base[key + ".weight"] + delta, merged[key + ".weight"], atol=1e-6)
        touched.add(key[len("model.diffusion_model."):])
    assert touched == projections  # every attention projection the student kept, no other


def test_eval_compares_a_custom_student_with_its_teacher(teacher, custom_student, tmp_path,
                                                        capsys):
    import json
    import math

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube on grass\n", encoding="utf-8")
    assert main(["eval", str(teacher), str(custom_student), "--prompts", str(prompts),
                 "--steps", "1", "--size", "32", "--seeds", "1", "--json"]) == 0
    first, second = json.loads(capsys.readouterr().out)["results"]
    assert (first["preset"], second["preset"]) == ("teacher", "custom")
    assert second["unet_params"] < first["unet_params"]
    assert math.isfinite(second["psnr"]) and second["ssim"] < 0.999
