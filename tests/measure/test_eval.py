"""`bksdm eval`: tiny random teacher and student on CPU render the same prompts and seeds;
the grid, CSV and JSON come out, the teacher agrees perfectly with itself and the student
does not."""
import csv
import json
import math
import shutil
from pathlib import Path

import pytest
from PIL import Image

from bksdm_ext.cli import main
from bksdm_ext.jobs.events import read_events
from bksdm_ext.model.convert import convert_checkpoint
from bksdm_ext.model.samplers import DrawPoint
from bksdm_ext.scores.eval_prompts import EVAL_PROMPTS, load_prompts
from test_scores import tiny_clip


@pytest.fixture(scope="module")
def models(teacher, tmp_path_factory):
    student = tmp_path_factory.mktemp("student") / "tiny-bk-small.safetensors"
    convert_checkpoint(teacher, student, "small", dtype="fp32")
    return teacher, student


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("# one prompt\n\na red cube on grass\n", encoding="utf-8")
    return path


SMALL = ["--steps", "1", "--size", "32", "--seeds", "2"]  # 2 cases: the prompt x 2 seeds


def test_eval_writes_grid_csv_and_json_with_perfect_self_agreement(models, prompts, tmp_path,
                                                                   capsys):
    teacher, student = models
    clip = tiny_clip(tmp_path / "clip")
    grid, table = tmp_path / "grid.png", tmp_path / "scores.csv"
    code = main(["eval", str(teacher), str(student), "--prompts", str(prompts), *SMALL,
                 "--clip-model", str(clip), "--grid", str(grid), "--csv", str(table), "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    first, second = result["results"]
    assert (first["model"], first["preset"], second["preset"]) == (teacher.name, "teacher", "small")
    assert math.isinf(first["psnr"]) and first["ssim"] == pytest.approx(1.0)
    assert math.isfinite(second["psnr"]) and second["ssim"] < 0.999
    assert first["images"] == second["images"] == 2
    assert first["seconds_per_image"] > 0 and second["seconds_per_image"] > 0
    assert 0 <= first["clip_score"] <= 100 and first["clip_model"] == str(clip)
    with Image.open(grid) as image:  # label column + 2 models, header + 2 rows of 256 px
        assert image.size == (220 + 2 * 256, 28 + 2 * 256)
    with open(table, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["preset"] for r in rows] == ["teacher", "small"] and rows[0]["psnr"] == "inf"
    assert float(rows[1]["ssim"]) == pytest.approx(second["ssim"], abs=1e-4)


def test_eval_as_a_job_writes_its_run_folder_and_events(models, prompts, tmp_path, capsys,
                                                         a1111_machine):
    """With the Hugging Face cache A1111 leaves (CLIP's config without weights): PSNR and
    SSIM, an empty CLIP column, and the table says how to get a CLIP score."""
    teacher, student = models
    out = tmp_path / "job"
    assert main(["eval", str(teacher), str(student), "--prompts", str(prompts), *SMALL,
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "CLIP score: no CLIP model on this machine: pass --clip-model" in text
    with open(out / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["psnr"] == "inf" and 0 < float(rows[1]["ssim"]) < 1
    assert [(r["clip_score"], r["clip_model"]) for r in rows] == [("", "")] * 2
    events = read_events(out / "events.jsonl")
    assert events[0]["event"] == "start" and events[0]["total_steps"] == 4
    assert [e["step"] for e in events if e["event"] == "step"] == [1, 2, 3, 4]
    done = events[-1]
    assert done["event"] == "done" and Path(done["output"]) == out / "grid.png"
    assert (out / "scores.csv").is_file()
    scores = json.loads((out / "scores.json").read_text())
    assert [s["preset"] for s in scores] == ["teacher", "small"]


def test_bad_inputs_exit_2_before_anything_is_generated(models, tmp_path, capsys):
    teacher, student = models
    assert main(["eval", str(teacher), "--prompts", str(tmp_path / "none.txt")]) == 2
    assert "no such prompt file" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    assert main(["eval", str(teacher), "--prompts", str(empty)]) == 2
    assert "no prompts in the file" in capsys.readouterr().err
    taken = tmp_path / "grid.png"
    taken.write_bytes(b"mine")
    assert main(["eval", str(teacher), "--grid", str(taken), *SMALL]) == 2
    assert "already exists" in capsys.readouterr().err and taken.read_bytes() == b"mine"


def test_a_named_clip_without_its_weights_is_refused_before_anything_is_generated(
        models, prompts, tmp_path, capsys, monkeypatch, a1111_machine):
    from bksdm_ext.measure import evaluate

    monkeypatch.setattr(evaluate, "render", lambda *a: pytest.fail("rendered"))
    teacher, student = models
    assert main(["eval", str(teacher), str(student), "--prompts", str(prompts), *SMALL,
                 "--clip-model", str(a1111_machine)]) == 2
    err = capsys.readouterr().err
    assert "%s: a CLIP config without its weights" % a1111_machine in err
    assert "download them with --clip-model openai/clip-vit-large-patch14 (1.7 GB)" in err


def test_the_builtin_prompt_set_is_thirty_distinct_prompts():
    assert load_prompts("builtin") == list(EVAL_PROMPTS)
    assert len(set(EVAL_PROMPTS)) == len(EVAL_PROMPTS) == 30


def test_a_stop_file_ends_an_eval_job_after_the_current_image(models, prompts, tmp_path):
    teacher, student = models
    out = tmp_path / "stopped"
    out.mkdir()
    (out / "STOP").write_text("discard")  # as `bksdm jobs cancel` / the Jobs tab ask
    assert main(["eval", str(teacher), str(student), "--prompts", str(prompts), *SMALL,
                 "--out", str(out)]) == 3
    last = read_events(out / "events.jsonl")[-1]
    assert (last["event"], last["step"]) == ("stopped", 1)
    assert not (out / "grid.png").exists() and not (out / "STOP").exists()


def with_recommendation(source: Path, target: Path, point: DrawPoint) -> Path:
    """A copy of a student whose metadata recommends `point`, as an LCM student's does."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(source), framework="pt") as f:
        metadata = dict(f.metadata() or {})
    save_file(load_file(str(source)), str(target), dict(metadata, **point.metadata()))
    if source.with_suffix(".yaml").is_file():  # the config A1111 loads a student with
        shutil.copyfile(source.with_suffix(".yaml"), target.with_suffix(".yaml"))
    return target


def test_each_model_draws_at_its_own_point_and_a_recommended_one_is_taken_and_said(
        models, prompts, tmp_path, capsys):
    teacher, student = models
    lcm = with_recommendation(student, tmp_path / "student-lcm.safetensors",
                              DrawPoint("lcm", 2, 1.0))
    table_file = tmp_path / "scores.csv"
    assert main(["eval", "%s@euler_a:3" % teacher, "%s@euler:2:5" % student, str(lcm),
                 "--prompts", str(prompts), *SMALL, "--csv", str(table_file)]) == 0
    out = capsys.readouterr().out
    assert ("student-lcm.safetensors: drawn at LCM, 2 steps, CFG 1, the point its metadata "
            "recommends (student-lcm.safetensors@SAMPLER:STEPS[:CFG] draws it elsewhere)") in out
    with open(table_file, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["model"], r["sampler"], r["steps"], r["cfg_scale"]) for r in rows] == [
        (teacher.name, "euler_a", "3", "7.0"), (student.name, "euler", "2", "5.0"),
        (lcm.name, "lcm", "2", "1.0")]
    # Against the teacher at its own point: itself identical, each student scored apart.
    assert rows[0]["psnr"] == "inf" and all(0 < float(r["ssim"]) < 1 for r in rows[1:])
    table_lines = [line.split() for line in out.splitlines() if line.startswith(lcm.name)]
    assert table_lines[-1][1:5] == ["small", "lcm", "2", "1.0"]
    # Told otherwise, the recommended student draws where it is told.
    assert main(["eval", str(teacher), "%s@euler:1" % lcm, "--prompts", str(prompts), *SMALL,
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["notes"] == []
    assert [(r["sampler"], r["steps"], r["cfg_scale"]) for r in result["results"]] == [
        ("dpmpp_2m_karras", 1, 7.0), ("euler", 1, 7.0)]


def test_the_draw_point_drawing_changes_the_student_images(models, prompts, tmp_path,
                                                           capsys):
    """The point reaches the pipeline: the same student at another sampler agrees less."""
    teacher, student = models
    assert main(["eval", str(teacher), "%s@dpmpp_2m_karras:1" % teacher,
                 "%s@euler_a:2" % teacher, "--prompts", str(prompts), *SMALL, "--json"]) == 0
    same, other = json.loads(capsys.readouterr().out)["results"][1:]
    assert math.isinf(same["psnr"]) and math.isfinite(other["psnr"])


@pytest.mark.parametrize("text, said", [
    ("@lcm", "@lcm: draw point 'lcm': write sampler:steps or sampler:steps:cfg"),
    ("@heun:4", "@heun:4: draw point 'heun:4': unknown sampler 'heun'; one of"),
    ("@lcm:0", "@lcm:0: draw point 'lcm:0': --steps 0: give a whole number from 1"),
])
def test_a_bad_draw_point_exits_2_before_any_model_loads(models, prompts, text, said, capsys,
                                                         monkeypatch):
    from bksdm_ext.measure import evaluate

    monkeypatch.setattr(evaluate, "render", lambda *a: pytest.fail("rendered"))
    teacher, student = models
    assert main(["eval", str(teacher), str(student) + text, "--prompts", str(prompts),
                 *SMALL]) == 2
    err = capsys.readouterr().err
    assert str(student) + said in err and err.count("draw point") == 1
