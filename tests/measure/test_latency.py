"""`bksdm bench`: teacher and students timed on this device (tiny models, CPU)."""
import json

import pytest

from bksdm_ext.cli import main
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
