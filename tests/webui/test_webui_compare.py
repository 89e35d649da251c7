"""The Compare panel inside the A1111 1.10.1 stand-in: teacher and student render the same
prompts and seeds through A1111's own txt2img, are scored against the teacher, and the
original checkpoint comes back; the same comparison runs as a background eval job."""
import csv
import html
from pathlib import Path

import pytest
from PIL import Image

from bksdm_ext.demo import write_tiny_teacher
from bksdm_ext.jobs.runner import SUCCEEDED
from bksdm_ext.model.convert import convert_checkpoint
from bksdm_ext.model.samplers import DrawPoint
from test_eval import with_recommendation
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
    assert (teacher_row[1], teacher_row[7], teacher_row[8]) == ("teacher", "inf", "1.0000")
    assert student_row[1] == "small" and float(student_row[8]) < 0.999
    assert float(teacher_row[6]) > 0 and float(student_row[6]) > 0  # seconds per image
    assert teacher_row[9] == student_row[9] == "-" and "pass --clip-model" in text
    # Neither names a draw point: both at the form's steps with bksdm eval's sampler.
    assert [row[2:5] for row in table["data"]] == [["DPM++ 2M Karras", 2, 7.0]] * 2
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


def test_each_checkpoint_draws_at_its_point_the_recommended_one_by_default(webui):
    """A student whose metadata recommends a point draws there unless the form names one;
    the table and the CSV say where each drew; the job passes the given points on."""
    from bksdm_ext.webui import a1111, compare_tab, jobs_service

    student = webui / "teacher-bk-small.safetensors"
    with_recommendation(student, webui / "student-lcm.safetensors", DrawPoint("euler", 1, 2.0))
    a1111.refresh_checkpoints()

    def chosen():  # their titles, which gain a hash once A1111 has loaded them
        return [next(t for t in compare_tab.candidates()[0] if t.split(" [")[0] == name)
                for name in ("teacher.safetensors", "student-lcm.safetensors")]

    titles = chosen()
    picture, table, grid_file, csv_file, history, text = compare_tab.run_from_ui(
        "task(1)", titles, compare_tab.SOURCES[2], None, "a red cube", **FORM,
        points="teacher.safetensors=dpmpp_2m:3")
    assert "bksdm-success" in text, text
    assert "student-lcm.safetensors: drawn at Euler, 1 steps, CFG 2, the point its metadata " \
           "recommends" in text
    assert [row[:5] for row in table["data"]] == [
        ["teacher.safetensors", "teacher", "DPM++ 2M", 3, 7.0],
        ["student-lcm.safetensors", "small", "Euler", 1, 2.0]]
    assert table["data"][0][7] == "inf" and float(table["data"][1][8]) < 0.999
    with open(csv_file, newline="") as f:
        assert [(r["sampler"], r["steps"], r["cfg_scale"]) for r in csv.DictReader(f)] == [
            ("DPM++ 2M", "3", "7.0"), ("Euler", "1", "2.0")]
    # Told otherwise, the student draws where it is told.
    *_, text = compare_tab.run_from_ui(
        "task(2)", chosen(), compare_tab.SOURCES[2], None, "a red cube", **FORM,
        points="student-lcm.safetensors=euler:2")
    assert "recommends" not in text
    text = compare_tab.submit_job(chosen(), compare_tab.SOURCES[2], None, "a red cube",
                                  **FORM, points="teacher.safetensors = euler_a:3:5")
    assert "bksdm-success" in text, text
    argv = jobs_service.runner().jobs()[-1].argv
    assert argv[-2:] == [str(webui / "teacher.safetensors") + "@euler_a:3:5",
                         str(webui / "student-lcm.safetensors")]


@pytest.mark.parametrize("points, said", [
    ("teacher.safetensors:lcm:4", "Draw points: 'teacher.safetensors:lcm:4': write "
                                  "FILE=sampler:steps[:cfg], e.g. student-lcm.safetensors=lcm:4:1"),
    ("nobody.safetensors=lcm:4", "Draw points: nobody.safetensors is not a chosen checkpoint; "
                                 "one of teacher.safetensors, teacher-bk-small.safetensors"),
    ("teacher.safetensors=heun:4", "Draw points: teacher.safetensors: draw point 'heun:4': "
                                   "unknown sampler 'heun'; one of"),
    ("teacher.safetensors=lcm:4:-1", "Draw points: teacher.safetensors: draw point 'lcm:4:-1': "
                                     "--cfg-scale -1"),
])
def test_a_bad_draw_point_is_one_message_and_nothing_is_drawn_or_queued(webui, monkeypatch,
                                                                      points, said):
    from bksdm_ext.webui import compare_tab, jobs_service

    monkeypatch.setattr(compare_tab, "render_loaded", lambda *a: pytest.fail("rendered"))
    _, chosen = compare_tab.candidates()
    *nothing, text = compare_tab.run_from_ui("task(1)", chosen, compare_tab.SOURCES[0], None,
                                             "", **FORM, points=points)
    assert nothing == [None] * 5 and "bksdm-error" in text and said in html.unescape(text)
    text = compare_tab.submit_job(chosen, compare_tab.SOURCES[0], None, "", **FORM,
                                  points=points)
    assert "bksdm-error" in text and said in html.unescape(text)
    assert jobs_service.runner().jobs() == []


def test_a_sampler_a1111_lacks_is_refused_here_before_any_checkpoint_loads(webui, monkeypatch):
    from bksdm_ext.webui import a1111, compare_tab

    monkeypatch.setattr(a1111, "load_checkpoint", lambda *a: pytest.fail("loaded"))
    _, chosen = compare_tab.candidates()
    *_, text = compare_tab.run_from_ui("task(1)", chosen, compare_tab.SOURCES[0], None, "",
                                       **FORM, points="teacher-bk-small.safetensors=pndm:4")
    assert "sampler pndm has no A1111 equivalent to draw with here" in text


def test_an_older_history_keeps_its_rows_under_both_versions_columns(webui):
    from bksdm_ext.webui import compare_tab

    compare_tab.history_path().write_text("time,model,steps\n2026-01-01,old.safetensors,20\n",
                                          encoding="utf-8")
    _, chosen = compare_tab.candidates()
    *_, history, text = compare_tab.run_from_ui("task(1)", chosen[:1], compare_tab.SOURCES[2],
                                                None, "a red cube", **FORM)
    with open(history, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["model"], r["steps"], r["preset"]) for r in rows] == [
        ("old.safetensors", "20", ""), ("teacher.safetensors", "2", "teacher")]


@pytest.mark.slow
def test_a_background_comparison_runs_bksdm_eval_as_a_job(webui, tmp_path, monkeypatch):
    """...looking for CLIP where the WebUI's interrogator keeps it: a file there cut short
    leaves the CLIP column empty (found, not named: issue 21), the job succeeds."""
    from bksdm_ext.webui import a1111, compare_tab, job_scores, jobs_service

    interrogate = tmp_path / "interrogate"
    interrogate.mkdir()
    (interrogate / "ViT-L-14.pt").write_bytes(b"PK\x03\x04 cut short")
    monkeypatch.setattr(a1111, "clip_folders", lambda: [interrogate])
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
    assert "--clip-folder=%s" % interrogate in job.argv
    assert not any(a.startswith("--clip-model") for a in job.argv)
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
            "column": [row[9] for row in table["data"]], "text": text}


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
