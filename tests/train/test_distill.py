"""Distillation on a tiny random teacher and a synthetic captioned dataset (CPU)."""
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from bksdm_ext.model.arch import PRESETS, SD_V2_768_V, TEACHER, Architecture
from bksdm_ext.cli import main
from bksdm_ext.demo import TINY_SD_V1, write_tiny_teacher
from bksdm_ext.train.distill import distill
from bksdm_ext.train.distill_config import DistillConfig
from bksdm_ext.errors import BadInput
from bksdm_ext.jobs.events import read_events
from bksdm_ext.train.kd import FeatureTaps, student_from_teacher
from test_convert import ldm_from_yaml, load_file, unet_part

COLORS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
TINY_V2_V = replace(SD_V2_768_V, model_channels=32, context_dim=64, head_channels=8)


def make_dataset(folder: Path, n: int = 8) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image = Image.new("RGB", (48, 40), COLORS[i % len(COLORS)])
        ImageDraw.Draw(image).ellipse((8, 6, 30, 30), fill=COLORS[(i + 3) % len(COLORS)])
        image.save(folder / ("img%02d.png" % i))
        (folder / ("img%02d.txt" % i)).write_text("a %s circle on %s" % (
            COLORS[(i + 3) % len(COLORS)], COLORS[i % len(COLORS)]))
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data") / "pairs")


def config(teacher: Path, data: Path, out: Path, **changes) -> DistillConfig:
    settings = dict(teacher=str(teacher), data=str(data), out=str(out), preset="small", steps=4,
                    batch_size=2, grad_accum=1, lr=1e-3, resolution=32, mixed_precision="no",
                    ema=False, gradient_checkpointing=False, save_every=0, sample_every=0,
                    log_every=1, export_dtype="fp32")
    settings.update(changes)
    return DistillConfig(**settings)


def steps(out: Path):
    return [e for e in read_events(out / "events.jsonl") if e["event"] == "step"]


@pytest.mark.slow
def test_losses_are_finite_and_fall_and_the_run_ends_with_an_a1111_student(teacher, data, tmp_path):
    out = tmp_path / "run"
    final = distill(config(teacher, data, out, steps=30, batch_size=4, log_every=1))
    losses = [e["loss"] for e in steps(out)]
    assert len(losses) == 30 and all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    assert all(e["feature_kd"] > 0 and e["output_kd"] > 0 for e in steps(out)[:1])
    assert final.is_file() and final.with_suffix(".yaml").is_file()
    state, metadata = load_file(final)
    assert metadata["bksdm.preset"] == "small" and metadata["bksdm.distilled_steps"] == "30"
    unet = ldm_from_yaml(final.with_suffix(".yaml"))
    unet.load_state_dict(unet_part(state), strict=True)
    teacher_state, _ = load_file(teacher)
    assert torch.equal(state["first_stage_model.decoder.conv_out.weight"],
                       teacher_state["first_stage_model.decoder.conv_out.weight"])


def test_kd_terms_vanish_for_a_copy_of_the_teacher(teacher, data, tmp_path):
    out = tmp_path / "copy"
    distill(config(teacher, data, out, preset="teacher", steps=1))
    first = steps(out)[0]
    assert first["output_kd"] == 0 and first["feature_kd"] == 0 and first["task"] > 0


@pytest.mark.parametrize("family", ["sd-v1", "sd-v2"])
@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.slow
def test_feature_pairs_match_in_shape_for_every_preset(family, preset):
    from diffusers import UNet2DConditionModel

    spec = TINY_SD_V1 if family == "sd-v1" else TINY_V2_V
    torch.manual_seed(0)
    teacher = UNet2DConditionModel(**Architecture(spec, TEACHER).diffusers_config()).eval()
    arch = Architecture(spec, PRESETS[preset])
    student = student_from_teacher(teacher, arch).eval()
    pairs = arch.feature_kd_pairs()
    taps = FeatureTaps(teacher, [t for t, _ in pairs]), FeatureTaps(student, [s for _, s in pairs])
    x, t, context = torch.randn(1, 4, 16, 16), torch.tensor([3]), torch.randn(1, 5, spec.context_dim)
    with torch.no_grad():
        teacher(x, t, context)
        student(x, t, context)
    features = taps[0].take(), taps[1].take()
    assert len(features[0]) == len(pairs)
    assert [f.shape for f in features[0]] == [f.shape for f in features[1]]


def test_v_prediction_teacher_trains_on_velocity(tmp_path, data):
    teacher = tmp_path / "tiny-v2-v.safetensors"
    write_tiny_teacher(teacher, TINY_V2_V)
    out = tmp_path / "v"
    final = distill(config(teacher, data, out, preset="tiny", steps=2))
    start = next(e for e in read_events(out / "events.jsonl") if e["event"] == "start")
    assert start["parameterization"] == "v" and start["family"] == "sd-v2"
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in steps(out))
    _, metadata = load_file(final)
    assert metadata["bksdm.parameterization"] == "v"


def test_noising_and_targets_are_diffusers_own():
    from diffusers import DDPMScheduler

    from bksdm_ext.train.noising import noised

    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              prediction_type="v_prediction")
    latents = torch.randn(3, 4, 8, 8)
    for parameterization in ("eps", "v"):
        noisy, t, target = noised(latents, scheduler.alphas_cumprod, parameterization,
                                  torch.Generator().manual_seed(0))
        same = torch.Generator().manual_seed(0)  # the draws noised() makes, in its order
        eps = torch.randn(latents.shape, generator=same)
        assert torch.equal(t, torch.randint(0, 1000, (3,), generator=same))
        assert torch.allclose(noisy, scheduler.add_noise(latents, eps, t), atol=1e-6)
        expected = eps if parameterization == "eps" else scheduler.get_velocity(latents, eps, t)
        assert torch.allclose(target, expected, atol=1e-6)


@pytest.mark.slow
def test_the_cache_is_reused_and_no_image_is_encoded_again(teacher, data, tmp_path, monkeypatch):
    from bksdm_ext.train import distill as distill_module

    cache = tmp_path / "cache"
    distill(config(teacher, data, tmp_path / "a", cache_dir=str(cache), steps=2))
    calls = []
    monkeypatch.setattr(distill_module, "load_vae", lambda *a: calls.append(a))
    distill(config(teacher, data, tmp_path / "b", cache_dir=str(cache), steps=10))  # 2.5 epochs
    assert calls == []
    cached = [e for e in read_events(tmp_path / "b" / "events.jsonl") if e["event"] == "cache"][0]
    assert cached["examples"] == 8 and cached.get("encoded", 0) == 0


def assert_resumes_exactly(teacher: Path, data: Path, folder: Path, stop_at: int,
                           **settings) -> Path:
    """A run stopped after `stop_at` steps and resumed repeats an uninterrupted run's losses
    and ends with the same student; returns the resumed run's folder."""
    straight = folder / "straight"
    distill(config(teacher, data, straight, **settings))
    split = folder / "split"
    distill(config(teacher, data, split, **dict(settings, steps=stop_at)))
    final = distill(config(teacher, data, split, **settings), resume=True)
    assert [e["loss"] for e in steps(straight)] == [e["loss"] for e in steps(split)]
    a, _ = load_file(final)
    b, _ = load_file(straight / final.name)
    assert all(torch.equal(a[k], b[k]) for k in a)
    return split


@pytest.mark.slow
def test_resuming_repeats_the_losses_of_an_uninterrupted_run(teacher, data, tmp_path):
    split = assert_resumes_exactly(teacher, data, tmp_path, 3, steps=6, save_every=3, ema=True,
                                   grad_accum=2)
    kept = sorted(p.name for p in (split / "checkpoints").iterdir())
    assert kept == ["step-0000003", "step-0000006"]
    assert (split / "checkpoints" / "step-0000006" / "student-step-0000006.safetensors").is_file()


def test_bad_data_fails_before_anything_loads(teacher, tmp_path, monkeypatch):
    from bksdm_ext.train import distill as distill_module

    monkeypatch.setattr(distill_module, "load_unet", lambda *a: pytest.fail("loaded a model"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BadInput, match="empty"):
        distill(config(teacher, empty, tmp_path / "run"))
    with pytest.raises(BadInput):
        distill(config(teacher, tmp_path / "missing", tmp_path / "run"))


def test_unreadable_images_and_missing_captions_are_reported_not_fatal(teacher, tmp_path):
    data = make_dataset(tmp_path / "data", n=4)
    (data / "broken.png").write_bytes(b"not an image")
    (data / "broken.txt").write_text("a broken file")
    Image.new("RGB", (40, 40)).save(data / "uncaptioned.png")
    out = tmp_path / "run"
    distill(config(teacher, data, out, steps=1))
    start = next(e for e in read_events(out / "events.jsonl") if e["event"] == "start")
    assert "1 unreadable" in start["dataset"] and "1 without caption" in start["dataset"]
    assert any("broken.png" in p for p in start["problems"])


def test_an_existing_run_needs_resume(teacher, data, tmp_path, capsys):
    out = tmp_path / "run"
    distill(config(teacher, data, out, steps=1, save_every=1))
    code = main(["distill", "--teacher", str(teacher), "--data", str(data), "--out", str(out),
                 "--steps", "2"])
    assert code == 2 and "--resume" in capsys.readouterr().err


def test_cli_runs_a_tiny_distillation(teacher, data, tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["distill", "--teacher", str(teacher), "--data", str(data), "--out", str(out),
                 "--arch", "tiny", "--steps", "2", "--batch-size", "2", "--grad-accum", "1",
                 "--resolution", "32", "--mixed-precision", "no", "--save-every", "0",
                 "--sample-every", "0", "--no-ema", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert Path(result["output"]).is_file()


@pytest.mark.slow
def test_two_processes_train_one_student_with_ddp(teacher, data, tmp_path):
    """`accelerate launch --multi_gpu` on GPUs; on a CPU, torchrun's two gloo processes."""
    import subprocess
    import sys

    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_port", "29531", "-m", "bksdm_ext", "distill", "--teacher", str(teacher),
               "--data", str(data), "--out", str(out), "--steps", "2", "--batch-size", "2",
               "--grad-accum", "1", "--resolution", "32", "--mixed-precision", "no",
               "--save-every", "0", "--sample-every", "0", "--no-ema", "--log-every", "1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    events = read_events(out / "events.jsonl")
    assert [e["event"] for e in events].count("start") == 1  # only process 0 writes
    assert events[0]["processes"] == 2
    done = events[-1]
    assert done["event"] == "done" and done["replicas_agree"] is True
    assert Path(done["output"]).is_file()


@pytest.mark.slow
def test_sample_grids_show_teacher_and_student_side_by_side(teacher, data, tmp_path):
    out = tmp_path / "samples"
    distill(config(teacher, data, out, steps=2, sample_every=2, sample_steps=2,
                   sample_prompts=["a red circle", "a blue circle"]))
    grid = Image.open(out / "samples" / "step-0000002.png")
    assert grid.size == (64, 64)  # two columns (teacher, student) x two prompts, 32 px each
    event = [e for e in read_events(out / "events.jsonl") if e["event"] == "samples"][0]
    assert event["step"] == 2 and Path(event["path"]).is_file()
    left, right = grid.crop((0, 0, 32, 32)), grid.crop((32, 0, 64, 32))
    assert list(left.getdata()) != list(right.getdata())


def test_a_failing_run_records_why_in_its_events(teacher, data, tmp_path, monkeypatch):
    from bksdm_ext.train import distill as distill_module

    def broken(*args):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(distill_module, "student_from_teacher", broken)
    out = tmp_path / "fails"
    with pytest.raises(RuntimeError):
        distill(config(teacher, data, out))
    last = read_events(out / "events.jsonl")[-1]
    assert last["event"] == "error" and "out of memory" in last["message"]


@pytest.mark.parametrize("request_kind", ["save", "discard"])
@pytest.mark.slow
def test_a_stop_file_stops_at_the_next_step(teacher, data, tmp_path, monkeypatch, request_kind):
    from bksdm_ext.train import distill as distill_module
    from bksdm_ext.errors import Stopped

    out = tmp_path / request_kind
    real_batch = distill_module._batch
    calls = []

    def batch_then_ask_to_stop(*args):
        calls.append(1)
        if len(calls) == 2:  # during step 2
            (out / "STOP").write_text(request_kind)
        return real_batch(*args)

    monkeypatch.setattr(distill_module, "_batch", batch_then_ask_to_stop)
    with pytest.raises(Stopped):
        distill(config(teacher, data, out, steps=10))
    stopped = read_events(out / "events.jsonl")[-1]
    assert stopped["event"] == "stopped" and stopped["step"] == 2
    assert stopped["saved"] == (request_kind == "save")
    assert (out / "checkpoints" / "step-0000002").is_dir() == (request_kind == "save")
    assert not (out / "STOP").exists()
    if request_kind == "save":
        monkeypatch.setattr(distill_module, "_batch", real_batch)
        distill(config(teacher, data, out, steps=3), resume=True)
        assert read_events(out / "events.jsonl")[-1]["event"] == "done"


@pytest.mark.slow
def test_eval_events_score_the_student_against_the_teacher_and_mark_the_best(teacher, data,
                                                                              tmp_path):
    out = tmp_path / "eval"
    distill(config(teacher, data, out, steps=2, sample_every=0, eval_every=1, sample_steps=1,
                   save_every=2, sample_prompts=["a red circle"]))
    evals = [e for e in read_events(out / "events.jsonl") if e["event"] == "eval"]
    assert [e["step"] for e in evals] == [1, 2]
    assert all(0 < e["ssim"] < 1 and 0 < e["psnr"] < 100 and e["prompts"] == 1 for e in evals)
    assert evals[0]["best"] is True  # the first score is the best so far
    assert evals[1]["best"] == (evals[1]["ssim"] > evals[0]["ssim"])
    assert evals[0]["checkpoint"] is None and Path(evals[1]["checkpoint"]).is_dir()
    assert not (out / "samples").exists()  # scored without writing sample grids


@pytest.mark.slow
def test_pruning_old_checkpoints_spares_the_one_marked_best(teacher, data, tmp_path, monkeypatch):
    """keep_last=1 would delete step 1's checkpoint; it is the best by score, so it stays
    (and stays across a resume), while the other old ones go."""
    import bksdm_ext.train.distill as distill_module

    ssims = iter([0.9, 0.5, 0.4, 0.3])  # step 1 scores best
    monkeypatch.setattr(distill_module, "agreement",
                        lambda images, reference: {"ssim": next(ssims), "psnr": 20.0})
    out = tmp_path / "best"
    distill(config(teacher, data, out, steps=3, save_every=1, keep_last=1, eval_every=1,
                   sample_steps=1, sample_prompts=["a red circle"]))
    kept = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert kept == ["step-0000001", "step-0000003"]
    distill(config(teacher, data, out, steps=4, save_every=1, keep_last=1, eval_every=1,
                   sample_steps=1, sample_prompts=["a red circle"]), resume=True)
    kept = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert kept == ["step-0000001", "step-0000004"]
    best = [e for e in read_events(out / "events.jsonl") if e["event"] == "eval" and e["best"]]
    assert [e["step"] for e in best] == [1]
