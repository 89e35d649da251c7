"""Teacher-made training data on a tiny random teacher (CPU, 32 px, few sampler steps):
the cache it writes, exact resumption after a kill or a stop, and distillation on it."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from bksdm_ext.model.checkpoint import Checkpoint
from bksdm_ext.cli import main
from bksdm_ext.model.detect import inspect_checkpoint
from bksdm_ext.train.distill import _unrelated_latents, distill
from bksdm_ext.errors import BadInput, Stopped
from bksdm_ext.jobs.events import read_events
from bksdm_ext.jobs.runner import CANCELLED, QUEUED, JobRunner
from bksdm_ext.model.generation import make_pipeline
from bksdm_ext.train.latent_cache import LatentCache
from bksdm_ext.model.loading import latent_scale, load_unet, load_vae
from bksdm_ext.train.prompts import generate_prompts
from bksdm_ext.train.synth import SynthFolder, synth, synth_summary
from bksdm_ext.train.synth_config import SynthConfig
from bksdm_ext.model.text_encoding import text_encoder_fn
from test_distill import config, make_dataset, steps

SETTINGS = dict(resolution=32, steps=2, batch_size=2, preview=3)


def synth_config(teacher: Path, out: Path, count: int, **changes) -> SynthConfig:
    return SynthConfig(teacher=str(teacher), out=str(out), count=count, **dict(SETTINGS, **changes))


def cache_of(folder: Path) -> LatentCache:
    return SynthFolder(folder).open_cache()


def assert_same_cache(a: LatentCache, b: LatentCache) -> None:
    assert len(a) == len(b)
    for i in range(len(a)):
        x, y = a.item(i), b.item(i)
        assert all(torch.equal(x[key], y[key]) for key in x), "example %d differs" % i
        assert a.caption(i) == b.caption(i)


def events(out: Path, name: str):
    return [e for e in read_events(out / "events.jsonl") if e["event"] == name]


@pytest.fixture(scope="module")
def made(teacher, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "run"
    assert synth(synth_config(teacher, out, 6, seed=5)) == out
    return out


def test_the_cache_holds_n_latents_with_std_zero_from_prompt_i_and_seed_i(teacher, made):
    cache = cache_of(made)
    prompts = generate_prompts(6, seed=5)
    assert len(cache) == 6 and (made / "prompts.txt").read_text().splitlines() == prompts
    for i in range(6):
        item = cache.item(i)
        assert item["mean"].shape == (4, 16, 16) and item["embedding"].shape == (77, 64)
        assert torch.equal(item["std"], torch.zeros(4, 16, 16))
        assert cache.caption(i) == prompts[i] and item["mean"].abs().sum() > 0
    # Image 3 alone, made the ordinary way (decoding skipped), is the cached one.
    ckpt = Checkpoint(teacher)
    info = inspect_checkpoint(ckpt)
    encode = text_encoder_fn(ckpt, info, torch.device("cpu"))
    pipe = make_pipeline(load_unet(ckpt, info), load_vae(ckpt), info)
    latent = pipe(prompt_embeds=encode([prompts[3]]), negative_prompt_embeds=encode([""]),
                  height=32, width=32, num_inference_steps=2, guidance_scale=7.5,
                  output_type="latent", generator=torch.Generator().manual_seed(5 + 3)).images
    torch.testing.assert_close(cache.item(3)["mean"], latent[0] / latent_scale(info),
                               rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(cache.item(3)["embedding"], encode([prompts[3]])[0],
                               rtol=2e-3, atol=2e-3)


def test_the_run_reports_progress_a_preview_and_a_summary(made):
    names = [e["event"] for e in read_events(made / "events.jsonl")]
    assert names[0] == "start" and names[-1] == "done"
    assert [e["step"] for e in events(made, "step")] == [2, 4, 6]
    assert all(e["eta_s"] is not None and e["images_s"] > 0 for e in events(made, "synth"))
    assert events(made, "done")[0]["output"] == str(made)
    grid = events(made, "samples")[0]["path"]
    assert Image.open(grid).size == (64, 64)  # 3 previews of 32 px, two columns
    assert sorted(p.name for p in (made / "samples" / "preview").iterdir()) == [
        "00000.png", "00001.png", "00002.png"]
    summary = synth_summary(made)
    assert summary["made"] == summary["wanted"] == 6 and summary["preview"] == grid
    assert summary["example_prompts"] == generate_prompts(5, seed=5)
    assert summary["sampler"] == "dpmpp_2m_karras" and summary["steps"] == 2
    assert "built-in" in summary["prompt_source"]


# The synth command in a process that kills itself (SIGKILL: nothing cleaned up) the
# moment its first batch is on disk: right after the batch's cache shard is written
# ("shard", before its checkpoints/step-N marker) or right after that marker ("marker",
# before the batch's previews).  A kill at a chosen point, so every run tests both.
KILLED_AFTER = """
import os, signal, sys
from bksdm_ext.jobs.runs import RunPaths
from bksdm_ext.train.latent_cache import LatentCache
owner, name = {"shard": (LatentCache, "add_batch"), "marker": (RunPaths, "write_checkpoint")}[
    sys.argv[1]]
original = getattr(owner, name)
def killed_after(self, *args, **kwargs):
    original(self, *args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
setattr(owner, name, killed_after)
from bksdm_ext.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("killed_after", ["shard", "marker"])
@pytest.mark.slow
def test_a_killed_run_resumes_to_exactly_the_uninterrupted_cache(teacher, made, tmp_path,
                                                                  killed_after):
    out = tmp_path / "killed"
    command = [sys.executable, "-c", KILLED_AFTER, killed_after, "synth", "--teacher",
               str(teacher), "--count", "6", "--out", str(out), "--resolution", "32",
               "--steps", "2", "--batch-size", "2", "--preview", "3", "--seed", "5"]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    process = subprocess.run(command, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, timeout=600)
    assert process.returncode == -signal.SIGKILL, process.stderr.decode()
    made_before = len(cache_of(out))
    assert 0 < made_before < 6, "the kill came too late to test resumption"
    assert main(["synth", "--teacher", str(teacher), "--count", "6", "--out", str(out),
                 "--resolution", "32", "--steps", "2", "--batch-size", "2", "--preview", "3",
                 "--seed", "5", "--resume", "--json"]) == 0
    starts = sorted(int(p.stem) for p in (out / "cache" / "added").glob("*.safetensors"))
    assert starts == [0, 2, 4]  # no duplicates, no gaps
    assert_same_cache(cache_of(out), cache_of(made))
    assert list(Image.open(out / "samples" / "preview.png").getdata()) == list(
        Image.open(made / "samples" / "preview.png").getdata())


def test_a_stop_keeps_what_was_made_and_resume_finishes_it(teacher, made, tmp_path):
    out = tmp_path / "stopped"
    out.mkdir()
    (out / "STOP").write_text("discard")
    with pytest.raises(Stopped):
        synth(synth_config(teacher, out, 6, seed=5))
    stopped = read_events(out / "events.jsonl")[-1]
    assert stopped["event"] == "stopped" and stopped["step"] == 2 and stopped["saved"]
    assert len(cache_of(out)) == 2 and not (out / "STOP").exists()
    with pytest.raises(BadInput, match="--resume"):
        synth(synth_config(teacher, out, 6, seed=5))
    with pytest.raises(BadInput, match="seed"):
        synth(synth_config(teacher, out, 6, seed=6), resume=True)
    synth(synth_config(teacher, out, 6, seed=5), resume=True)
    assert_same_cache(cache_of(out), cache_of(made))
    assert [e["step"] for e in events(out, "step")] == [2, 4, 6]


def test_a_short_prompt_file_is_cycled_with_new_seeds(teacher, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red ball\na blue cube\n", encoding="utf-8")
    out = tmp_path / "cycled"
    synth(synth_config(teacher, out, 3, prompts=str(prompts), preview=0))
    start = events(out, "start")[0]
    assert start["cycled"] and "different seed" in start["note"]
    cache = cache_of(out)
    assert [cache.caption(i) for i in range(3)] == ["a red ball", "a blue cube", "a red ball"]
    assert torch.equal(cache.item(0)["embedding"], cache.item(2)["embedding"])
    assert not torch.equal(cache.item(0)["mean"], cache.item(2)["mean"])
    assert not (out / "samples" / "preview.png").exists()


def test_bad_input_fails_before_any_model_loads(teacher, tmp_path, capsys):
    code = main(["synth", "--teacher", str(teacher), "--count", "4", "--out",
                 str(tmp_path / "bad"), "--prompts", str(tmp_path / "nowhere.txt")])
    assert code == 2 and "nowhere.txt" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    for changes in (dict(sampler="plms"), dict(resolution=30), dict(count=0)):
        with pytest.raises(BadInput):
            synth(synth_config(teacher, tmp_path / "bad", **dict(dict(count=4), **changes)))


@pytest.mark.slow
def test_distilling_from_teacher_data_never_encodes_an_image_and_losses_fall(
        teacher, tmp_path, monkeypatch):
    from diffusers import AutoencoderKL

    def no_encoder(*args, **kwargs):
        raise AssertionError("the VAE encoder ran")

    monkeypatch.setattr(AutoencoderKL, "encode", no_encoder)
    out = tmp_path / "teacher-data"
    distill(config(teacher, "teacher:8", out, steps=30, batch_size=4, synth_steps=2,
                   synth_batch_size=4, synth_preview=2))
    losses = [e["loss"] for e in steps(out)]
    assert len(losses) == 30 and sum(losses[-5:]) < 0.7 * sum(losses[:5])
    start = events(out, "start")[0]
    assert start["dataset"] is None and start["synthetic"]["count"] == 8
    assert events(out, "data")[0] == dict(events(out, "data")[0], examples=8, real=0, synthetic=8)
    assert events(out, "synth")[-1]["done"] == 8 and not events(out, "step")[0].get("total")
    summary = synth_summary(out)
    assert summary["made"] == 8 and Path(summary["preview"]).is_file()


def test_the_teacher_data_is_reused_and_remade_when_a_setting_changes(teacher, tmp_path):
    shared = dict(steps=1, synth_steps=2, synth_batch_size=2, cache_dir=str(tmp_path / "cache"),
                  synth_preview=0)
    distill(config(teacher, "teacher:4", tmp_path / "a", **shared))
    distill(config(teacher, "teacher:4", tmp_path / "b", **shared))
    distill(config(teacher, "teacher:4", tmp_path / "c", **dict(shared, synth_steps=3)))
    assert [len(events(tmp_path / run, "synth")) for run in "abc"] == [2, 0, 2]


def test_mixed_data_trains_on_real_plus_teacher_pairs(teacher, tmp_path):
    data = make_dataset(tmp_path / "data", n=4)
    out = tmp_path / "mixed"
    distill(config(teacher, data, out, steps=2, synthetic=3, synth_steps=2, synth_preview=0))
    assert events(out, "data")[0]["examples"] == 7
    assert events(out, "data")[0]["real"] == 4 and events(out, "data")[0]["synthetic"] == 3
    assert events(out, "done")


def test_a_synth_run_folder_and_a_prompt_file_work_as_data(teacher, made, tmp_path):
    distill(config(teacher, made, tmp_path / "from-run", steps=2))
    assert events(tmp_path / "from-run", "data")[0]["synthetic"] == 6
    assert not events(tmp_path / "from-run", "synth")  # nothing made again
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red ball\na blue cube\na green cone\n", encoding="utf-8")
    distill(config(teacher, prompts, tmp_path / "from-file", steps=1, synth_steps=2))
    assert events(tmp_path / "from-file", "data")[0]["examples"] == 3


def test_an_unfinished_synth_run_or_a_bad_teacher_count_is_refused(teacher, tmp_path):
    out = tmp_path / "unfinished"
    out.mkdir()
    (out / "STOP").write_text("save")
    with pytest.raises(Stopped):
        synth(synth_config(teacher, out, 4))
    with pytest.raises(BadInput, match="--resume"):
        distill(config(teacher, out, tmp_path / "run"))
    for data in ("teacher:0", "teacher:many"):
        with pytest.raises(BadInput, match="teacher:N"):
            distill(config(teacher, data, tmp_path / "run"))


def test_a_run_stopped_while_the_teacher_makes_data_resumes(teacher, tmp_path):
    out = tmp_path / "early"
    out.mkdir()
    (out / "STOP").write_text("save")
    settings = dict(steps=1, synth_steps=2, synth_batch_size=2, synth_preview=0)
    with pytest.raises(Stopped):
        distill(config(teacher, "teacher:4", out, **settings))
    assert (out / "checkpoints").is_dir()  # the job runner offers to resume it
    distill(config(teacher, "teacher:4", out, **settings), resume=True)
    assert [e["done"] for e in events(out, "synth")] == [2, 4]
    assert read_events(out / "events.jsonl")[-1]["event"] == "done"


def test_a_distillation_job_stopped_while_the_teacher_makes_data_can_be_resumed(teacher,
                                                                               tmp_path):
    """The job runner offers to resume it (its run folder has no checkpoint yet, only the
    teacher's first images) and the Jobs tab's resume is accepted."""
    runner = JobRunner(tmp_path / "jobs", drive=False)
    job = runner.submit("distill", ["--teacher", str(teacher), "--data", "teacher:4"],
                        device="cpu")
    assert runner.cancel(job.id).state == CANCELLED  # still queued: never started
    out = runner.folder(job.id)
    (out / "STOP").write_text("save")
    with pytest.raises(Stopped):  # what the job's run did before it stopped
        distill(config(teacher, "teacher:4", out, steps=1, synth_steps=2, synth_batch_size=2,
                       synth_preview=0))
    assert not list((out / "checkpoints").glob("step-*"))
    assert runner.resume(job.id).state == QUEUED


def test_random_conditioning_pairs_captions_with_other_examples_latents(teacher, made, tmp_path):
    cache = cache_of(made)
    indices = [0, 1, 2, 3]

    def batch():
        items = [cache.item(i) for i in indices]
        return {key: torch.stack([item[key] for item in items]) for key in items[0]}

    kept = batch()
    _unrelated_latents(kept, cache, indices, torch.Generator().manual_seed(0), p=0.0)
    assert all(torch.equal(kept["mean"][row], cache.item(i)["mean"]) for row, i in enumerate(indices))
    swapped = batch()
    _unrelated_latents(swapped, cache, indices, torch.Generator().manual_seed(0), p=1.0)
    means = [cache.item(i)["mean"] for i in range(len(cache))]
    for row, i in enumerate(indices):
        assert torch.equal(swapped["embedding"][row], cache.item(i)["embedding"])
        matches = [j for j, mean in enumerate(means) if torch.equal(swapped["mean"][row], mean)]
        assert matches and i not in matches
    out = tmp_path / "random-conditioning"
    distill(config(teacher, made, out, steps=3, random_conditioning=True))
    assert events(out, "start")[0]["random_conditioning"] == 0.5
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in steps(out))
    assert json.loads((out / "config.json").read_text())["random_conditioning"] is True
