"""The Compare panel inside the A1111 1.10.1 stand-in: teacher and student render the same
prompts and seeds through A1111's own txt2img, are scored against the teacher, and the
original checkpoint comes back; the same comparison runs as a background eval job."""
import csv
from pathlib import Path

import pytest
from PIL import Image

from bksdm_ext.demo import write_tiny_teacher
from bksdm_ext.jobs.runner import SUCCEEDED
from bksdm_ext.model.convert import convert_checkpoint
from test_jobs import wait
from webui_env import load, standin_app, start_webui, stop_jobs

FORM = dict(max_prompts=1, seeds=2, steps=2, size=32, cfg_scale=7)


@pytest.fixture
def webui(tmp_path):
    folder = start_webui(tmp_path / "webui")
    teacher = folder / "teacher.safetensors"
    write_tiny_teacher(teacher)
    convert_checkpoint(teacher, folder / "teacher-bk-small.safetensors", "small", dtype="fp32")
    other = folder / "other.safetensors"
    write_tiny_teacher(other)
    convert_checkpoint(other, folder / "other-bk-tiny.safetensors", "tiny", dtype="fp32")
    load(teacher)
    yield folder
    stop_jobs()
    standin_app.reset(tmp_path / "after")


def _loaded_name():
    from modules import sd_models

    return Path(sd_models.model_data.sd_model.sd_checkpoint_info.filename).name


def _names(titles):
    return [t.split(" [")[0] for t in titles]


def test_the_loaded_teacher_and_its_students_are_preselected(webui):
    from bksdm_ext.webui import compare_tab

    titles, chosen = compare_tab.candidates()
    assert set(_names(titles)) == {"teacher.safetensors", "teacher-bk-small.safetensors",
                                   "other.safetensors", "other-bk-tiny.safetensors"}
    assert _names(chosen) == ["teacher.safetensors", "teacher-bk-small.safetensors"]


def test_compare_here_scores_the_student_against_the_teacher(webui, a1111_machine):
    """With the Hugging Face cache A1111 leaves (CLIP's config without weights): the grid
    and the table, with an empty CLIP column and the way to fill it."""
    from bksdm_ext.webui import compare_tab

    _, chosen = compare_tab.candidates()
    picture, table, grid_file, csv_file, history, text = compare_tab.run_from_ui(
        "task(1)", chosen, compare_tab.SOURCES[2], None, "a red cube\na blue ball", **FORM)
    assert "bksdm-success" in text, text
    assert _loaded_name() == "teacher.safetensors"  # the original is loaded again
    teacher_row, student_row = table["data"]
    assert (teacher_row[1], teacher_row[4], teacher_row[5]) == ("teacher", "inf", "1.0000")
    assert student_row[1] == "small" and float(student_row[5]) < 0.999
    assert float(teacher_row[3]) > 0 and float(student_row[3]) > 0  # seconds per image
    assert teacher_row[6] == student_row[6] == "-" and "pass --clip-model" in text
    assert "No CLIP model on this machine" in compare_tab.clip_status()
    with Image.open(picture) as image:  # 1 prompt (the first N = 1) x 2 seeds, 2 models
        assert image.size == (220 + 2 * 256, 28 + 2 * 256)
    assert Path(grid_file).is_file()
    with open(csv_file, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["preset"] for r in rows] == ["teacher", "small"] and rows[0]["webui"] == "v1.10.1"
    compare_tab.run_from_ui("task(2)", chosen[:1], compare_tab.SOURCES[0], None, "", **FORM)
    with open(history, newline="") as f:
        assert [r["preset"] for r in csv.DictReader(f)] == ["teacher", "small", "teacher"]


def test_bad_forms_say_what_to_do(webui):
    from bksdm_ext.webui import compare_tab

    _, chosen = compare_tab.candidates()
    *_, text = compare_tab.run_from_ui("task(3)", [], compare_tab.SOURCES[0], None, "", **FORM)
    assert "Choose at least one checkpoint" in text
    *_, text = compare_tab.run_from_ui("task(4)", chosen, compare_tab.SOURCES[2], None, " \n",
                                       **FORM)
    assert "Type at least one prompt" in text
    text = compare_tab.submit_job(chosen, compare_tab.SOURCES[1], None, "", **FORM)
    assert "Upload a prompt file" in text


@pytest.mark.slow
def test_a_background_comparison_runs_bksdm_eval_as_a_job(webui, tmp_path):
    from bksdm_ext.webui import compare_tab, job_scores, jobs_service

    _, chosen = compare_tab.candidates()
    prompts = tmp_path / "mine.txt"
    prompts.write_text("a green tree\na yellow car\n")
    text = compare_tab.submit_job(chosen, compare_tab.SOURCES[1], str(prompts), "",
                                  **dict(FORM, seeds=1, steps=1))
    assert "bksdm-success" in text, text
    runner = jobs_service.runner()
    job = runner.jobs()[-1]
    assert job.kind == "eval" and str(webui / "teacher.safetensors") in job.argv
    assert job.argv.index("--") < job.argv.index(str(webui / "teacher.safetensors"))
    job = wait(runner, job.id, lambda j: j.state not in ("queued", "running"))
    assert job.state == SUCCEEDED, runner.log_tail(job.id)
    assert Path(job.result) == runner.folder(job.id) / "grid.png" and not job.registered
    _, table = job_scores.view(jobs_service.label(job))
    assert "| teacher.safetensors | teacher |" in table and "| small |" in table


# The Download CLIP button, in a WebUI of its own: huggingface_hub reads where to download
# from (a local fake hub) and the cache to fill (A1111's: CLIP's config and tokenizer, no
# weights) when it is first imported.
DOWNLOAD_SCRIPT = """
import json, sys
from pathlib import Path

import gradio as gr

from bksdm_ext.demo import write_tiny_teacher
from webui_env import load, start_webui

folder = start_webui(Path(sys.argv[1]))
write_tiny_teacher(folder / "teacher.safetensors")
load(folder / "teacher.safetensors")
from bksdm_ext.webui import compare_tab

with gr.Blocks() as page:
    compare_tab.build()
blocks = {getattr(block, "elem_id", None): block for block in page.blocks.values()}
button = blocks["bksdm_compare_download"]
index = next(i for i, d in enumerate(page.dependencies)
             if d["targets"] == [button._id] and d["trigger"] == "click")
ids = {block._id: getattr(block, "elem_id", None) for block in page.blocks.values()}


def compare():
    picture, table, *_, text = compare_tab.run_from_ui(
        "task(1)", compare_tab.candidates()[1], compare_tab.SOURCES[2], None, "a red cube",
        max_prompts=1, seeds=1, steps=2, size=32, cfg_scale=7)
    return {"grid": Path(picture).is_file(),
            "column": [row[6] for row in table["data"]], "text": text}


before = {"status": blocks["bksdm_compare_clip"].value, "compare": compare()}
pressed = page.fns[index].fn()
print("RESULT " + json.dumps({
    "before": before, "outputs": [ids[i] for i in page.dependencies[index]["outputs"]],
    "pressed": pressed, "again": compare_tab.download_clip(),
    "after": {"status": compare_tab.clip_status(), "compare": compare()}}))
"""


@pytest.mark.slow
def test_download_clip_fetches_the_weights_a1111s_cache_lacks_on_the_button_only(tmp_path):
    """The cache A1111 leaves: CLIP's config and tokenizer, no weights.  Before: the grid
    and table are drawn, the CLIP column empty and saying how to fill it; the button fetches
    only the weights of openai/clip-vit-large-patch14 from a local fake hub, saying which
    files and how big; pressed again it fetches nothing; after: the column has scores.
    Nothing reaches the network (HF_ENDPOINT is the fake hub)."""
    import json
    import os
    import subprocess
    import sys

    from bksdm_ext.errors import size_text
    from bksdm_ext.model.tokenizer import clip_tokenizer
    from fake_hub import (CLIP_L14, cache_like_a1111, holds_config_and_tokenizer_only, hub_env,
                          serving)
    from test_scores import tiny_clip

    root = Path(__file__).resolve().parents[2]
    served = tiny_clip(tmp_path / "served")
    clip_tokenizer("sd-v1").save_pretrained(str(served))
    weights = [p for p in served.iterdir() if p.name in ("model.safetensors", "pytorch_model.bin")]
    snapshot = cache_like_a1111(tmp_path / "hf-home", served)
    assert holds_config_and_tokenizer_only(snapshot)
    with serving(CLIP_L14, served) as (url, fetched):
        env = hub_env(url, tmp_path / "hf-home",
                      os.pathsep.join([str(root), str(root / "tests")]))
        env["HOME"] = str(tmp_path / "home")  # no `clip` package files of the developer's
        done = subprocess.run([sys.executable, "-c", DOWNLOAD_SCRIPT, str(tmp_path / "webui")],
                              env=env, cwd=str(root), capture_output=True, text=True,
                              timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.split("RESULT ", 1)[1])
    before, after = result["before"], result["after"]
    assert "No CLIP model on this machine" in before["status"]
    assert "openai/clip-vit-large-patch14 (1.7 GB)" in before["status"]
    assert before["compare"]["grid"] and before["compare"]["column"] == ["-"]
    assert "bksdm-success" in before["compare"]["text"]
    assert "pass --clip-model" in before["compare"]["text"]
    assert result["outputs"] == ["bksdm_compare_clip", "bksdm_compare_result"]
    status, text = result["pressed"]
    assert len(weights) == 1 and "bksdm-success" in text
    assert ("Downloaded CLIP openai/clip-vit-large-patch14 into the Hugging Face cache: %s (%s)"
            % (weights[0].name, size_text(weights[0].stat().st_size))) in text
    assert "**openai/clip-vit-large-patch14** (already on this machine)" in status
    assert "is already in the Hugging Face cache; nothing downloaded" in result["again"][1]
    assert after["status"] == status
    assert float(after["compare"]["column"][0]) >= 0
    assert "pass --clip-model" not in after["compare"]["text"]
    # From the fake hub: the weights, on the button only (the config was A1111's already).
    assert [name for method, name in fetched if method == "GET"] == [weights[0].name]
