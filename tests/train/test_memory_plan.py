"""The GPU-memory chooser against the peaks measured on an H200 (docs/facts.md §9) and the GPU
sizes users have; an out-of-memory error names the setting to lower and leaves the run resumable."""
import json
from dataclasses import asdict, replace

import pytest
import torch

from bksdm_ext.cli import build_parser
from bksdm_ext.errors import BadInput
from bksdm_ext.train.distill_config import DistillConfig
from bksdm_ext.train.dreambooth_config import DreamBoothConfig
from bksdm_ext.train.memory_fit import (MEMORY_FILE, fit_distill, fit_dreambooth,
                                        free_gpu_bytes, out_of_memory_explained)
from bksdm_ext.train.memory_plan import (GIB, Settings, distill_peak_gib, dreambooth_peak_gib,
                                         plan_distill, plan_dreambooth)

PAPER = Settings(64, 4, True, False, "fp16", ema=True)  # the paper's distillation settings
DREAMBOOTH = Settings(1, 1, False, False, "fp16")  # the measured DreamBooth step: plain AdamW


def test_estimates_reproduce_the_measured_peaks():
    # docs/facts.md §9: BK-Small distillation, cached latents, 512²: micro-batch 64 24.5 GiB,
    # 32 13.8 GiB
    assert distill_peak_gib("sd-v1", "small", 512, PAPER) == pytest.approx(24.5, abs=0.05)
    assert distill_peak_gib("sd-v1", "small", 512, replace(PAPER, micro_batch=32)) == \
        pytest.approx(13.8, abs=0.05)
    # DreamBooth, 1 + 1 images, U-Net + text encoder, AdamW: BK-Small 11.5 GiB, SD-v1 18.5 GiB
    assert dreambooth_peak_gib("sd-v1", "small", 512, DREAMBOOTH, False, True) == \
        pytest.approx(11.5, rel=0.03)
    assert dreambooth_peak_gib("sd-v1", "teacher", 512, DREAMBOOTH, False, True) == \
        pytest.approx(18.5, rel=0.03)


@pytest.mark.parametrize("gib, micro, eight_bit, ema", [
    (80, 64, False, True),   # the paper's 64 × 4 as is (A100/H100 80 GB)
    (24, 32, False, True),   # 64 would need 24.5 GiB: 32 × 8
    (16, 32, False, True),   # effective batch 256 within 16 GiB (the goal)
    (12, 16, True, True),    # the AdamW state alone no longer fits: 8-bit moments
    (8, 4, True, False),     # and the EMA copy goes too
])
def test_distillation_choices_keep_the_effective_batch(gib, micro, eight_bit, ema):
    plan = plan_distill(gib * GIB, "sd-v1", "small", 512, PAPER, have_bitsandbytes=True)
    s = plan.settings
    assert (s.micro_batch, s.use_8bit_adam, s.ema) == (micro, eight_bit, ema)
    assert s.effective_batch == 256 and s.gradient_checkpointing and s.mixed_precision == "fp16"
    assert plan.fits and plan.estimate_gib <= 0.9 * gib
    if micro < 64:
        assert "micro-batch %d instead of 64" % micro in plan.describe()


def test_without_bitsandbytes_a_plan_that_cannot_fit_says_so():
    plan = plan_distill(8 * GIB, "sd-v1", "small", 512, PAPER, have_bitsandbytes=False)
    assert not plan.fits and plan.settings.micro_batch == 1
    assert "does not fit" in plan.describe()


def test_dreambooth_goals_on_small_cards():
    full = plan_dreambooth(8 * GIB, "sd-v1", "small", 512, DREAMBOOTH, True, lora=False,
                           train_text_encoder=True)
    assert full.fits and full.settings.use_8bit_adam and full.settings.gradient_checkpointing
    assert full.estimate_gib <= 8
    lora = plan_dreambooth(8 * GIB, "sd-v1", "small", 512, DREAMBOOTH, True, lora=True,
                           train_text_encoder=True)
    assert lora.estimate_gib <= 5 and not lora.settings.use_8bit_adam and not lora.changed
    roomy = plan_dreambooth(24 * GIB, "sd-v1", "small", 512, DREAMBOOTH, True, lora=False,
                            train_text_encoder=True)
    assert roomy.settings == DREAMBOOTH and not roomy.changed


def distill_config(tmp_path, **changes) -> DistillConfig:
    return replace(DistillConfig(teacher="t.safetensors", data="d", out=str(tmp_path / "run")),
                   **changes)


def test_fitting_changes_nothing_without_a_gpu_or_when_switched_off(tmp_path):
    cfg = distill_config(tmp_path)
    assert fit_distill(cfg, "sd-v1", None, True) == (cfg, None)
    off = distill_config(tmp_path, fit_memory=False)
    assert fit_distill(off, "sd-v1", 8 * GIB, True) == (off, None)
    fitted, plan = fit_distill(cfg, "sd-v1", 16 * GIB, True)
    assert (fitted.batch_size, fitted.grad_accum) == (32, 8) and plan.fits
    assert build_parser().parse_args(["distill", "--teacher", "t", "--data", "d", "--out", "o",
                                      "--no-fit-memory"]).fit_memory is False


def test_out_of_memory_names_the_setting_and_the_resume_uses_it(tmp_path):
    cfg, _plan = fit_distill(distill_config(tmp_path), "sd-v1", 16 * GIB, True)
    with pytest.raises(BadInput) as error:
        with out_of_memory_explained(cfg):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    message = str(error.value)
    assert "out of GPU memory with micro-batch 32 × 8" in message
    assert "--batch-size 16 --grad-accum 16 keeps the effective batch 256" in message
    assert "--resume" in message
    assert json.loads((tmp_path / "run" / MEMORY_FILE).read_text()) == {"max_micro_batch": 16}
    # The resumed run (same arguments) starts at the recorded micro-batch, even on a roomy GPU.
    resumed, plan = fit_distill(distill_config(tmp_path), "sd-v1", 80 * GIB, True)
    assert (resumed.batch_size, resumed.grad_accum) == (16, 16)
    assert plan.settings.micro_batch == 16


def test_dreambooth_out_of_memory_suggests_the_next_memory_option(tmp_path):
    cfg = DreamBoothConfig(model="m", instance_dir="i", instance_prompt="a sks dog",
                           class_prompt="a dog", out=str(tmp_path / "db"),
                           gradient_checkpointing=True)
    with pytest.raises(BadInput, match="--use-8bit-adam"):
        with out_of_memory_explained(cfg):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
    fitted, plan = fit_dreambooth(cfg, "sd-v1", "small", 8 * GIB, True)
    assert fitted.use_8bit_adam and plan.fits


def test_processes_of_a_multi_gpu_run_keep_their_settings(monkeypatch):
    """Each DDP process sees its own free memory; fitting could make them disagree."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *device: (16 * GIB, 80 * GIB))
    assert free_gpu_bytes() == 16 * GIB
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert free_gpu_bytes() is None


def test_a_run_on_a_gpu_announces_its_plan_and_records_it(teacher, tmp_path, monkeypatch, capsys):
    """The wiring in distill(): the plan is printed before the run and kept in its start event
    (a CPU run stands in for the GPU here; only the free memory is pretended)."""
    from bksdm_ext.jobs.events import read_events
    from bksdm_ext.train import distill as distill_module
    from test_distill import config

    monkeypatch.setattr(distill_module, "free_gpu_bytes", lambda: 16 * GIB)
    out = tmp_path / "run"
    distill_module.distill(config(teacher, "teacher:2", out, steps=1, synth_steps=1,
                                  synth_batch_size=2, synth_preview=0))
    (start,) = [e for e in read_events(out / "events.jsonl") if e["event"] == "start"]
    assert start["memory_plan"].startswith("micro-batch 2 × 1 accumulation (effective 2)")
    assert "GPU memory plan: micro-batch 2 × 1" in capsys.readouterr().err


def test_a_resumed_run_keeps_the_settings_it_started_with(tmp_path, capsys):
    """Resumed on a GPU with more (or less) free memory, a run continues with its own
    micro-batch, so it repeats the uninterrupted run; only an out-of-memory error lowers it."""
    started, _plan = fit_distill(distill_config(tmp_path), "sd-v1", 16 * GIB, True)
    assert (started.batch_size, started.grad_accum) == (32, 8)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(asdict(started), default=str))  # as distill() does
    fresh, _plan = fit_distill(distill_config(tmp_path), "sd-v1", 80 * GIB, True)
    assert fresh.batch_size == 64  # what a new run on this card would take
    resumed, plan = fit_distill(distill_config(tmp_path), "sd-v1", 80 * GIB, True, resume=True)
    assert plan is None and (resumed.batch_size, resumed.grad_accum) == (32, 8)
    assert "resuming with the run's own settings, micro-batch 32 × 8" in capsys.readouterr().err
    (run / MEMORY_FILE).write_text(json.dumps({"max_micro_batch": 16}))
    lowered, _plan = fit_distill(distill_config(tmp_path), "sd-v1", 80 * GIB, True, resume=True)
    assert (lowered.batch_size, lowered.grad_accum) == (16, 16)
    assert "(lowered by memory.json)" in capsys.readouterr().err
    # --no-fit-memory takes the arguments as given
    off = distill_config(tmp_path, fit_memory=False, batch_size=8, grad_accum=32)
    assert fit_distill(off, "sd-v1", 80 * GIB, True, resume=True)[0].batch_size == 8


def test_a_resumed_dreambooth_run_keeps_its_memory_settings(tmp_path):
    cfg = DreamBoothConfig(model="m", instance_dir="i", instance_prompt="a sks dog",
                           class_prompt="a dog", out=str(tmp_path / "db"))
    started, _plan = fit_dreambooth(cfg, "sd-v1", "small", 8 * GIB, True)
    assert started.use_8bit_adam
    (tmp_path / "db").mkdir()
    (tmp_path / "db" / "config.json").write_text(json.dumps(asdict(started), default=str))
    assert not fit_dreambooth(cfg, "sd-v1", "small", 80 * GIB, True)[0].use_8bit_adam
    assert fit_dreambooth(cfg, "sd-v1", "small", 80 * GIB, True, resume=True)[0].use_8bit_adam
