"""`bksdm bench`: teacher and students timed on this device (tiny models, CPU)."""
import json
import re

import pytest

import pytest

from bksdm_ext.cli import main
from bksdm_ext.errors import BadInput
from bksdm_ext.cli.bench import render
from bksdm_ext.model.samplers import DrawPoint, parse_points
from bksdm_ext.model.convert import convert_checkpoint
from bksdm_ext.demo import write_tiny_teacher


@pytest.mark.slow
def test_bench_times_teacher_and_students_with_every_part(tmp_path, capsys):
    teacher = tmp_path / "tiny.safetensors"
    write_tiny_teacher(teacher)
    students = []
    for preset in ("base", "tiny"):
        students.append(tmp_path / ("tiny-%s.safetensors" % preset))
        convert_checkpoint(teacher, students[-1], preset, dtype="fp32")
    argv = ["bench", str(students[0]), str(teacher), str(students[1]), "--steps", "3",
            "--size", "64", "--runs", "2"]
    assert main(argv + ["--json"]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    assert [r["preset"] for r in results] == ["base", "teacher", "tiny"]
    teacher_result = results[1]
    assert teacher_result["speedup"] == 1.0  # the teacher is the reference
    for r in results:
        spread = r["seconds_per_image"]
        assert 0 < spread["low"] <= spread["median"] <= spread["high"]
        assert r["unet_ms_per_step"]["median"] > 0 and r["vae_decode_ms"]["median"] > 0
        assert r["text_encoder_ms"]["median"] > 0 and r["settings"]["steps"] == 3
        # the U-Net's share can't exceed the whole
        assert r["unet_ms_per_step"]["median"] * 3 / 1000 < spread["high"]
    assert results[2]["unet_params"] < results[0]["unet_params"] < teacher_result["unet_params"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "speed-up" in printed and "tiny-base.safetensors" in printed


def test_each_model_is_timed_at_each_draw_point_against_the_teacher_at_the_first(tmp_path,
                                                                                 capsys):
    """A teacher at 4 steps of Euler a beside a student at 4 and at 2 of LCM: one row per
    model and point; the speed-up of each is against the teacher's first point."""
    teacher = tmp_path / "tiny.safetensors"
    write_tiny_teacher(teacher)
    student = tmp_path / "tiny-small.safetensors"
    convert_checkpoint(teacher, student, "small", dtype="fp32")
    assert parse_points(["euler_a:4", "lcm:2:1"]) == [DrawPoint("euler_a", 4),
                                                      DrawPoint("lcm", 2, 1.0)]
    argv = ["bench", str(teacher), str(student), "--at", "euler_a:4", "--at", "lcm:2:1",
            "--size", "64", "--runs", "2", "--cfg-scale", "7"]
    assert main(argv + ["--json"]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    assert [(r["model"], r["settings"]["sampler"], r["settings"]["steps"],
             r["settings"]["cfg_scale"]) for r in results] == [
        ("tiny.safetensors", "euler_a", 4, 7.0), ("tiny.safetensors", "lcm", 2, 1.0),
        ("tiny-small.safetensors", "euler_a", 4, 7.0), ("tiny-small.safetensors", "lcm", 2, 1.0)]
    reference = results[0]["seconds_per_image"]["median"]
    assert results[0]["speedup"] == 1.0
    assert [r["speedup"] for r in results] == pytest.approx(
        [reference / r["seconds_per_image"]["median"] for r in results])
    printed = [re.split(r"\s{2,}", line) for line in
               render(json.loads(json.dumps({"results": results}))).splitlines()]
    assert printed[0][3:5] == ["sampler", "steps"] and printed[2][3:5] == ["lcm", "2"]
    assert main(["bench", str(teacher), "--at", "lcm:0"]) == 2  # refused before any model loads
    assert "draw point 'lcm:0': --steps 0: give a whole number" in capsys.readouterr().err


@pytest.mark.parametrize("text,message", [
    ("euler_a", "draw point 'euler_a': write sampler:steps or sampler:steps:cfg"),
    ("warp:4", "draw point 'warp:4': unknown sampler 'warp'; one of dpmpp_2m_karras"),
    ("lcm:0", "draw point 'lcm:0': --steps 0: give a whole number from 1 to 1,000"),
    ("lcm:2.5", "draw point 'lcm:2.5': steps '2.5': give a whole finite number"),
    ("lcm:4:nan", "draw point 'lcm:4:nan': cfg_scale 'nan': give a finite number"),
])
def test_a_bad_draw_point_says_which_and_what_to_write(text, message):
    with pytest.raises(BadInput) as refused:
        parse_points([text])
    assert str(refused.value).startswith(message), str(refused.value)
