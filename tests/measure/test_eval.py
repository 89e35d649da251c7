"""`bksdm eval`: tiny random teacher and student on CPU render the same prompts and seeds;
the grid, CSV and JSON come out, the teacher agrees perfectly with itself and the student
does not."""
import csv
import json
import math
from pathlib import Path

import pytest
from PIL import Image

from bksdm_ext.cli import main
from bksdm_ext.jobs.events import read_events
from bksdm_ext.model.convert import convert_checkpoint
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
