"""Each setting is declared once (issue 23 item 2): the command line's options, the argv a
job runs and the tabs' labels all come from the settings dataclasses; and one recipe says
which student a preset and a removal make (item 1)."""
import json
from dataclasses import replace

import pytest

from bksdm_ext.cli import build_parser, main
from bksdm_ext.errors import BadInput
from bksdm_ext.jobs.arguments import config_argv
from bksdm_ext.measure.block_scan import ScanSettings
from bksdm_ext.measure.evaluate import EvalSettings
from bksdm_ext.measure.latency import LatencySettings
from bksdm_ext.model.arch import PRESETS, SD_V1, TEACHER, Architecture
from bksdm_ext.model.blocks import notation, which_student
from bksdm_ext.model.convert import ConversionSettings
from bksdm_ext.model.transplant import TransplantSettings
from bksdm_ext.settings import declarations
from bksdm_ext.train.distill_config import DistillConfig
from bksdm_ext.train.dreambooth_config import DreamBoothConfig
from bksdm_ext.train.synth_config import SynthConfig

# Each command with its settings, the options it needs besides them, and settings that
# differ from every default (texts starting with "-" included: they stay values).
COMMANDS = {
    "distill": (DistillConfig, [], DistillConfig(
        teacher="-t.safetensors", data="teacher:20", out="", preset="tiny", remove="mid",
        init_student="s.safetensors", steps=300, batch_size=3, grad_accum=2, lr=0.5,
        resolution=256, mixed_precision="bf16", lambda_task=0.5, lambda_output=0.25,
        lambda_feature=2.0, ema=False, ema_decay=0.5, gradient_checkpointing=False,
        use_8bit_adam=True, flip=False, save_every=7, keep_last=3, sample_every=0,
        sample_prompts=["-a fox", "--help"], eval_every=5, seed=9, v_prediction=False,
        export_dtype="bf16", cache_dir="c", log_every=2, synthetic=4, prompts="p.txt",
        negative_prompt="--blurry", synth_cfg_scale=3.0, synth_steps=4, synth_sampler="euler",
        synth_batch_size=2, synth_preview=1, random_conditioning=True,
        random_conditioning_p=0.25, fit_memory=False, objective="lcm", lcm_w_min=2.0,
        lcm_w_max=3.0, lcm_ddim_timesteps=25, lcm_target_decay=0.5, lcm_loss="l2",
        lcm_huber_c=0.01, lcm_timestep_scaling=5.0, lcm_feature_kd=0.5, lcm_steps=2,
        lora_rank=8)),
    "dreambooth": (DreamBoothConfig, [], DreamBoothConfig(
        model="m", instance_dir="i", instance_prompt="-a sks dog", out="", class_prompt="--a dog",
        class_model="c", class_dir="d", num_class_images=3, steps=20, resolution=64, lr=0.5,
        lora_lr=0.25, batch_size=2, prior_weight=0.5, prior_preservation=False,
        train_text_encoder=False, lora=True, lora_rank=4, mixed_precision="no",
        gradient_checkpointing=False, use_8bit_adam=True, save_every=5, sample_every=10,
        sample_prompts=["a", "b"], clip_model="clip", seed=3, export_dtype="fp32", log_every=1,
        fit_memory=False)),
    "synth": (SynthConfig, [], SynthConfig(
        count=5, prompts="-p.txt", negative_prompt="-x", cfg_scale=2.0, steps=3,
        sampler="euler", resolution=64, batch_size=2, seed=4, preview=0, teacher="t", out="",
        v_prediction=True)),
    "eval": (EvalSettings, ["m.safetensors"], EvalSettings(
        prompts="p.txt", seeds=2, seed=5, steps=3, sampler="euler", size=64, cfg_scale=2.0,
        negative_prompt="-ugly")),
    "blocks": (ScanSettings, ["t.safetensors"], ScanSettings(
        steps=3, size=64, cfg_scale=2.0, seed=5, groups=False)),
    "bench": (LatencySettings, ["m.safetensors"], LatencySettings(
        steps=3, sampler="euler", size=64, cfg_scale=2.0, runs=2, warmup=0, seed=5)),
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_config_writes_the_argv_that_makes_it_again(command):
    """What a job runs: the config's own argv, parsed by the command's real parser."""
    from bksdm_ext.cli.flags import settings_from

    cls, positional, settings = COMMANDS[command]
    assert [item.name for item in declarations(cls)  # every setting but --out is changed
            if item.setting.cli and item.name != "out"
            and getattr(settings, item.name) == item.default] == []
    argv = config_argv(settings, positional)
    out = ["--out", "run"] if hasattr(settings, "out") else []
    parsed = build_parser().parse_args([command] + out + argv)
    again = settings_from(parsed, cls)
    assert again == (replace(settings, out="run") if out else settings)
    # Each value is its option's (--key=value), never an option of its own.
    assert all(arg.startswith("--") for arg in argv[:len(argv) - len(positional) - 1])


@pytest.mark.parametrize("command", ["distill", "dreambooth", "synth", "blocks"])
def test_every_boolean_setting_has_both_senses_and_its_default_when_left_out(command):
    cls, positional, settings = COMMANDS[command]
    required = [a for a in config_argv(settings) if a.split("=")[0] in
                {"--teacher", "--data", "--model", "--instance-dir", "--instance-prompt",
                 "--count"}]
    base = [command] + required + positional + (["--out", "o"] if hasattr(settings, "out")
                                                 else [])
    switches = [item for item in declarations(cls) if item.switch and item.setting.cli]
    assert switches
    for item in switches:
        flag = item.flag
        assert getattr(build_parser().parse_args(base + [flag]), item.name) is True
        assert getattr(build_parser().parse_args(base + ["--no-" + flag[2:]]), item.name) is False
        assert getattr(build_parser().parse_args(base), item.name) is None  # the config's default


def test_the_flags_users_already_use_still_work():
    parsed = build_parser().parse_args([
        "distill", "--teacher", "t", "--data", "d", "--out", "o", "--no-ema",
        "--no-gradient-checkpointing", "--no-flip", "--no-fit-memory", "--use-8bit-adam",
        "--random-conditioning", "--arch", "base", "--sample-prompt", "a", "--sample-prompt", "b"])
    assert (parsed.ema, parsed.gradient_checkpointing, parsed.flip, parsed.fit_memory) == (
        False, False, False, False)
    assert (parsed.use_8bit_adam, parsed.random_conditioning, parsed.preset) == (True, True, "base")
    assert parsed.sample_prompts == ["a", "b"]
    parsed = build_parser().parse_args(["dreambooth", "--model", "m", "--instance-dir", "i",
                                        "--instance-prompt", "p", "--out", "o",
                                        "--no-prior-preservation", "--no-train-text-encoder",
                                        "--lora"])
    assert (parsed.prior_preservation, parsed.train_text_encoder, parsed.lora) == (
        False, False, True)
    assert build_parser().parse_args(["blocks", "t", "--no-groups"]).groups is False


def test_help_shows_each_settings_help_and_default(capsys):
    with pytest.raises(SystemExit):
        main(["distill", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--steps STEPS optimizer steps (default 50000)" in text
    assert "--ema, --no-ema keep an EMA copy of the student's weights" in text
    assert "(default on)" in text and "{default}" not in text
    for cls in (DistillConfig, DreamBoothConfig, SynthConfig, EvalSettings, ScanSettings,
                LatencySettings, ConversionSettings, TransplantSettings):
        for item in declarations(cls):
            assert "{" not in item.help(), (cls.__name__, item.name)


# -- which student -----------------------------------------------------------------------


def test_one_recipe_makes_every_student():
    assert which_student(SD_V1).removal == TEACHER  # no preset: the teacher itself
    assert which_student(SD_V1, "small") == Architecture(SD_V1, PRESETS["small"])
    assert which_student(SD_V1, PRESETS["tiny"]) == Architecture(SD_V1, PRESETS["tiny"])
    # Units that amount to a preset are the preset, whatever they start from.
    assert which_student(SD_V1, None, notation(Architecture(SD_V1, PRESETS["base"]))).removal == \
        PRESETS["base"]
    assert which_student(SD_V1, "base", "mid").removal == PRESETS["small"]
    custom = which_student(SD_V1, "mid-removed", "down.3.0,up.3.2")
    assert custom.removal.name == "custom" and notation(custom) == "down.3.0,up.3.2,mid"
    with pytest.raises(BadInput, match="unknown architecture 'huge'"):
        which_student(SD_V1, "huge")
    with pytest.raises(BadInput, match="--remove up.2.0"):
        which_student(SD_V1, None, "up.2.0")


def test_a_distillation_without_a_preset_is_small_or_the_teacher_cut_by_remove():
    assert DistillConfig(teacher="t", data="d", out="o").preset == "small"
    cut = DistillConfig(teacher="t", data="d", out="o", remove="mid")
    assert cut.preset is None
    assert which_student(SD_V1, cut.preset, cut.remove).removal == PRESETS["mid-removed"]
    assert "--arch=small" in config_argv(DistillConfig(teacher="t", data="d", out="o"))
    assert not any(a.startswith("--arch") for a in config_argv(cut))


def test_presets_carry_the_labels_the_tabs_show():
    assert {name: removal.label for name, removal in PRESETS.items()} == {
        "base": "Base", "small": "Small", "tiny": "Tiny", "mid-removed": "Mid-stage removed"}


@pytest.mark.webui
def test_the_tabs_offer_the_presets_by_their_own_labels():
    pytest.importorskip("gradio")  # the WebUI's stack (the newest-releases stack has none)
    import webui_env  # noqa: F401  (A1111's stand-in on the path)
    from bksdm_ext.webui.presets import label_of, labels, name_of

    assert labels() == ["Base", "Small", "Tiny", "Mid-stage removed"]
    assert [name_of(label) for label in labels()] == list(PRESETS)
    assert all(label_of(name_of(label)) == label for label in labels())
    assert (name_of("Custom"), label_of("custom")) == (None, "custom")


def test_reports_name_the_preset_and_keep_the_arch_key_scripts_read(tmp_path, capsys):
    from tiny import TINY, write_teacher

    teacher = write_teacher(tmp_path, TINY["sd-v1"])
    out = tmp_path / "student.safetensors"
    assert main(["convert", str(teacher), "--arch", "tiny", "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["preset"] == report["arch"] == "tiny"
    assert main(["convert", str(teacher), "--remove", "mid", "--out", str(out),
                 "--overwrite"]) == 0
    assert "  preset      mid-removed" in capsys.readouterr().out
