"""Every numeric setting has one declared range (issue 22 item 5), which the command line,
the jobs and the tabs all refuse the same way: one line, before any model loads, with no
MemoryError on the way; and a transplant never writes inf or NaN (item 13)."""
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from bksdm_ext.errors import BadInput
from bksdm_ext.measure.block_scan import ScanSettings
from bksdm_ext.measure.compare import GRID_ROWS, ModelImages, grid
from bksdm_ext.measure.evaluate import EvalSettings
from bksdm_ext.measure.latency import LatencySettings
from bksdm_ext.model.convert import convert_checkpoint
from bksdm_ext.settings import declared, from_form
from bksdm_ext.train.distill_config import DistillConfig
from bksdm_ext.train.dreambooth_config import DreamBoothConfig
from bksdm_ext.train.synth_config import SynthSettings
from test_faults import ROOT, assert_one_line_refusal
from tiny import TINY, write_teacher
from webui_env import load, stop_jobs, webui_with_data_roots

# What each needs besides the field under test (no samples: their count has a bound of its
# own, tested below).
REQUIRED = {DistillConfig: dict(teacher="t", data="d", out="o", sample_every=0),
            DreamBoothConfig: dict(model="m", instance_dir="i", instance_prompt="a sks dog",
                                   class_prompt="a dog", out="o", sample_every=0),
            SynthSettings: dict(count=1), EvalSettings: {}, LatencySettings: {},
            ScanSettings: {}}


@pytest.mark.parametrize("cls", list(REQUIRED), ids=lambda cls: cls.__name__)
def test_each_declared_range_takes_its_ends_and_refuses_past_them(cls):
    assert declared(cls)
    for name, bound in declared(cls).items():
        step = bound.multiple_of if bound.whole else 1e-3
        for fits in (bound.low, bound.high):
            cls(**dict(REQUIRED[cls], **{name: fits}))
            assert getattr(from_form(cls, **dict(REQUIRED[cls], **{name: float(fits)})),
                           name) == fits
        for wrong in (bound.low - step, bound.high + step, float("nan"), float("inf")):
            with pytest.raises(BadInput, match="^--%s " % name.replace("_", "-")):
                cls(**dict(REQUIRED[cls], **{name: wrong}))
        if bound.whole:
            with pytest.raises(BadInput, match="give a whole"):
                from_form(cls, **dict(REQUIRED[cls], **{name: bound.low + 0.5}))
        with pytest.raises(BadInput, match="enter a number"):
            from_form(cls, **dict(REQUIRED[cls], **{name: None}))


def test_sizes_are_multiples_of_8_and_sample_grids_are_bounded():
    for size in (0, 63, 4096):
        with pytest.raises(BadInput, match="--size %s: give a multiple of 8 from 8 to 2,048"
                                           % format(size, ",")):
            EvalSettings(size=size)
    with pytest.raises(BadInput, match="--sample-every 1 with 50,000 steps writes 50,000 sample "
                                       "grids; at most 1,000: sample every 50 steps or more"):
        DistillConfig(teacher="t", data="d", out="o", sample_every=1)
    DistillConfig(teacher="t", data="d", out="o", sample_every=50)
    with pytest.raises(BadInput, match="--sample-every 1 with 1,001 steps"):
        DreamBoothConfig(**dict(REQUIRED[DreamBoothConfig], sample_every=1, steps=1001))
    DreamBoothConfig(**dict(REQUIRED[DreamBoothConfig], sample_every=1, steps=1000))


def test_the_grid_of_a_large_evaluation_shows_its_first_cases(tmp_path):
    from PIL import Image

    cases = [("a prompt", seed) for seed in range(GRID_ROWS + 50)]
    run = ModelImages("m", "teacher", 1, [Image.new("RGB", (8, 8))] * len(cases))
    assert grid([run], cases, cell=16).size == (220 + 16, 28 + 16 * GRID_ROWS)
    assert grid([run], cases[:3], cell=16).size == (220 + 16, 28 + 16 * 3)


# -- the command line ----------------------------------------------------------------


@pytest.mark.slow
def test_a_billion_seeds_are_refused_without_memory_error(tmp_path):
    """In a process whose heap may not pass 3 GB: a list of all cases would end in
    MemoryError (on a machine without the limit: the WebUI's whole memory)."""
    limit = 3 * 1024 ** 3
    result = subprocess.run(
        [sys.executable, "-m", "bksdm_ext", "eval", str(tmp_path / "any.safetensors"),
         "--seeds", "1000000000"], cwd=str(ROOT), stderr=subprocess.PIPE,
        universal_newlines=True,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_DATA, (limit, limit)))
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        "bksdm eval: error: --seeds 1,000,000,000: give a whole number from 1 to 1,000 (seeds "
        "per prompt)"]


@pytest.mark.parametrize("flags, words", [
    (["--size", "63"], "--size 63: give a multiple of 8"),
    (["--size", "0"], "--size 0: give a multiple of 8"),
    (["--steps", "0"], "--steps 0: give a whole number from 1 to 1,000"),
    (["--cfg-scale", "nan"], "--cfg-scale nan"),
    (["--seeds", "1000", "--prompts", "PROMPTS"], "31 prompts x 1,000 seeds is 31,000 images"),
])
def test_eval_refuses_out_of_range_settings_before_any_model_loads(tmp_path, capsys, monkeypatch,
                                                                   flags, words):
    from bksdm_ext.measure import evaluate

    monkeypatch.setattr(evaluate, "load_pipeline", lambda *a: pytest.fail("loaded a model"))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join("prompt %d" % i for i in range(31)))
    teacher = write_teacher(tmp_path, TINY["sd-v1"])
    flags = [str(prompts) if flag == "PROMPTS" else flag for flag in flags]
    assert_one_line_refusal(capsys, tmp_path, "eval", teacher, *flags, words=(words,))


@pytest.mark.parametrize("argv, words", [
    (["distill", "--teacher", "T", "--data", "teacher:20000000", "--out", "OUT"],
     "--data teacher:N 20,000,000: give a whole number from 0 to 10,000,000"),
    (["distill", "--teacher", "T", "--data", "teacher:²", "--out", "OUT"], "write teacher:N"),
    (["distill", "--teacher", "T", "--data", "D", "--out", "OUT", "--resolution", "100"],
     "--resolution 100: give a multiple of 8"),
    (["distill", "--teacher", "T", "--data", "D", "--out", "OUT", "--sample-every", "1"],
     "--sample-every 1 with 50,000 steps"),
    (["dreambooth", "--model", "T", "--instance-dir", "D", "--instance-prompt", "a sks dog",
      "--out", "OUT", "--num-class-images", "1000000"], "--num-class-images 1,000,000"),
    (["synth", "--teacher", "T", "--count", "100000000", "--out", "OUT"], "--count 100,000,000"),
    (["blocks", "T", "--size", "4096"], "--size 4,096: give a multiple of 8"),
    (["bench", "T", "--runs", "0"], "--runs 0: give a whole number from 1 to 100"),
])
@pytest.mark.slow
def test_jobs_refuse_out_of_range_settings_in_one_line(tmp_path, capsys, argv, words):
    teacher = write_teacher(tmp_path, TINY["sd-v1"])
    places = {"T": str(teacher), "D": str(tmp_path), "OUT": str(tmp_path / "run")}
    assert_one_line_refusal(capsys, tmp_path, *[places.get(a, a) for a in argv], words=(words,))
    assert not (tmp_path / "run").exists()


# -- item 13: transplant ---------------------------------------------------------------


@pytest.fixture(scope="module")
def transplant_inputs(tmp_path_factory):
    """A Small student of a base, and a fine-tune of the base that moved one U-Net tensor
    by 20,000: five times that is past float16's 65,504."""
    folder = tmp_path_factory.mktemp("transplant")
    base = write_teacher(folder, TINY["sd-v1"], name="base.safetensors")
    student = folder / "student.safetensors"
    convert_checkpoint(base, student, "small", dtype="fp32")
    state = load_file(str(base))
    key = "model.diffusion_model.input_blocks.1.0.in_layers.2.bias"
    state[key] = state[key] + 20000
    finetune = folder / "mine.safetensors"
    save_file(state, str(finetune))
    return student, base, finetune


@pytest.mark.parametrize("alpha", ["1e308", "-11", "nan", "inf"])
def test_an_absurd_alpha_is_refused(tmp_path, capsys, transplant_inputs, alpha):
    student, base, finetune = transplant_inputs
    out = tmp_path / "out.safetensors"
    assert_one_line_refusal(capsys, tmp_path, "transplant", "--student", student, "--base", base,
                            "--finetune", finetune, "--out", out, "--alpha", alpha, "--dtype",
                            "fp16", words=("--alpha", "give a number from -10.0 to 10.0"))
    assert list(tmp_path.iterdir()) == []


def test_a_result_past_the_output_dtype_is_refused_as_it_streams(tmp_path, capsys,
                                                                  transplant_inputs):
    student, base, finetune = transplant_inputs
    argv = ["transplant", "--student", student, "--base", base, "--finetune", finetune,
            "--alpha", "5"]
    out = tmp_path / "out.safetensors"
    assert_one_line_refusal(capsys, tmp_path, *argv, "--out", out, "--dtype", "fp16", words=(
        "input_blocks.1.0.in_layers.2.bias would hold inf or NaN", "float16",
        "nothing was written", "--dtype fp32"))
    assert list(tmp_path.iterdir()) == []
    from bksdm_ext.cli import main

    assert main([str(a) for a in argv] + ["--out", str(out), "--dtype", "fp32"]) == 0
    written = load_file(str(out))
    assert all(bool(torch.isfinite(t).all()) for t in written.values() if t.is_floating_point())


# -- the tabs --------------------------------------------------------------------------


@pytest.fixture
def webui(tmp_path):
    for folder in webui_with_data_roots(tmp_path):
        load(write_teacher(folder, TINY["sd-v1"]))
        yield folder


COMPARE = dict(max_prompts=4, seeds=1, steps=20, size=512, cfg_scale=7)


@pytest.mark.parametrize("change, words", [
    # Just past the bound (a billion is tested in a memory-limited process above).
    (dict(seeds=1001), "--seeds 1,001: give a whole number from 1 to 1,000"),
    (dict(size=63), "--size 63: give a multiple of 8"),
    (dict(steps=0), "--steps 0"),
    (dict(steps=None), "--steps: enter a number"),
    (dict(cfg_scale=float("nan")), "--cfg-scale nan"),
    (dict(max_prompts=float("inf")), "Prompts to use inf: give a whole finite number"),
    (dict(seeds=300, size=1024), "1 checkpoints x 1200 images at 1024 px are more than a "
                                 "comparison in the WebUI keeps (1,024 images at 512 px): run "
                                 "it as a background job"),
])
def test_compare_refuses_what_would_exhaust_the_webui_before_rendering(webui, monkeypatch,
                                                                        change, words):
    from bksdm_ext.webui import checkpoints, compare_tab

    monkeypatch.setattr(compare_tab, "compare_here", lambda *a: pytest.fail("rendered"))
    form = dict(COMPARE, **change)
    *_, text = compare_tab.run_from_ui("task(1)", checkpoints.titles(), compare_tab.SOURCES[0],
                                       None, "", **form)
    assert "bksdm-error" in text and words in text, text


def test_a_background_comparison_gets_the_same_ranges(webui):
    from bksdm_ext.webui import checkpoints, compare_tab, jobs_service

    text = compare_tab.submit_job(checkpoints.titles(), compare_tab.SOURCES[0], None, "",
                                  **dict(COMPARE, seeds=1001))
    assert "bksdm-error" in text and "--seeds 1,001" in text
    assert jobs_service.runner().jobs() == []
    text = compare_tab.submit_job(checkpoints.titles(), compare_tab.SOURCES[0], None, "",
                                  **dict(COMPARE, seeds=300, size=1024))
    assert "bksdm-success" in text, text  # a job keeps its images in its own process
    stop_jobs()


def test_latency_refuses_out_of_range_settings_before_loading(webui, monkeypatch):
    from bksdm_ext.webui import latency_tab

    monkeypatch.setattr(latency_tab, "run", lambda *a: pytest.fail("measured"))
    for change, words in ((dict(runs=10 ** 6), "--runs 1,000,000"), (dict(size=63), "--size 63"),
                          (dict(seed=-5), "--seed -5"), (dict(warmup=None), "--warmup: enter")):
        form = dict(dict(steps=20, size=512, cfg_scale=7, runs=3, warmup=1, seed=0), **change)
        *_, text = latency_tab.run_from_ui("task(1)", latency_tab.candidates(), **form)
        assert "bksdm-error" in text and words in text, text


def test_training_and_scan_tabs_refuse_out_of_range_settings_and_queue_nothing(webui, tmp_path):
    from PIL import Image

    from bksdm_ext.webui import blocks_view, distill_tab, dreambooth_tab, jobs_service

    title = distill_tab.checkpoints.titles(students=False)[0]
    photos = tmp_path / "photos"
    photos.mkdir()
    for index in range(3):
        Image.new("RGB", (16, 16), "red").save(photos / ("%d.png" % index))

    def distill(synthetic=100, **change):
        form = dict(dict(steps=100, batch_size=2, grad_accum=1, lr=1e-4, resolution=512,
                         save_every=0, sample_every=0), **change)
        return distill_tab.start(
            title, "Small", distill_tab.SOURCES[1], "", synthetic, "", "", False,
            form["steps"], form["batch_size"], form["grad_accum"], form["lr"],
            form["resolution"], "no", False, False, False, form["save_every"],
            form["sample_every"], "", False, 1)

    for text, words in (
            (distill(synthetic=1e12), "--synthetic 1,000,000,000,000: give a whole number from 0"),
            (distill(synthetic=float("nan")), "Teacher-made images nan: give a whole finite"),
            (distill(steps=0), "--steps 0: give a whole number from 1 to 1,000,000"),
            (distill(resolution=63), "--resolution 63: give a multiple of 8"),
            (distill(batch_size=10 ** 6), "--batch-size 1,000,000"),
            (distill(steps=100000, sample_every=1), "--sample-every 1 with 100,000 steps"),
            (distill(lr=float("inf")), "--lr inf"),
            (dreambooth_tab.start(title, dreambooth_tab.SAME_MODEL, str(photos), "a sks dog",
                                  "a dog", 10 ** 9, 800, 1e-6, 512, True, True, False, 16, 1e-4,
                                  "no", False, False, False), "--num-class-images 1,000,000,000"),
            (blocks_view.start_scan(20, 5000), "--size 5,000: give a multiple of 8")):
        assert "bksdm-error" in text and words in text, text
    assert jobs_service.runner().jobs() == []


def test_the_memory_estimate_says_what_is_out_of_range(webui):
    from bksdm_ext.webui import memory_estimate

    title = memory_estimate.checkpoints.titles()[0]
    text = memory_estimate.distill_estimate(title, "Small", 2, 1, 63, "no", True, True, False)
    assert "bksdm-error" in text and "--resolution 63" in text
    text = memory_estimate.dreambooth_estimate(title, None, True, False, "no", True, False)
    assert "bksdm-error" in text and "--resolution: enter a number" in text
