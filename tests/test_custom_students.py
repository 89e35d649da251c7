"""Custom students (issue #15) through the rest of the project: distillation with the
spec's feature-KD pairs, exact resume, and the exported student's own yaml."""
import pytest
import torch

from bksdm_ext.cli import main
from bksdm_ext.model.checkpoint import Checkpoint
from bksdm_ext.model.detect import inspect_checkpoint
from bksdm_ext.model.blocks import notation
from bksdm_ext.train.distill import distill
from test_convert import ldm_from_yaml, load_file, unet_part
from test_distill import config, data, steps  # noqa: F401  (data is a fixture)

CUSTOM = "down.1.1,up.1.1,down.3.0,up.3.2"  # stage 3 keeps its second layer: not a preset


def test_a_custom_student_distils_and_resumes_exactly(teacher, data, tmp_path):  # noqa: F811
    straight = tmp_path / "straight"
    settings = dict(arch="mid-removed", remove=CUSTOM, steps=4, save_every=2)
    final = distill(config(teacher, data, straight, **settings))
    split = tmp_path / "split"
    distill(config(teacher, data, split, **dict(settings, steps=2)))
    resumed = distill(config(teacher, data, split, **settings), resume=True)
    losses = [e["loss"] for e in steps(straight)]
    assert losses == [e["loss"] for e in steps(split)] and all(l > 0 for l in losses)
    assert all(e["feature_kd"] > 0 for e in steps(straight))
    a, metadata = load_file(final)
    b, _ = load_file(resumed)
    assert final.name == resumed.name == "tiny-sd-v1-bk-custom-distilled.safetensors"
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert metadata["bksdm.removal"] == "down.1.1,down.3.0,up.1.1,up.3.2,mid"
    info = inspect_checkpoint(Checkpoint(final))
    assert notation(info.arch) == metadata["bksdm.removal"]
    ldm_from_yaml(final.with_suffix(".yaml")).load_state_dict(unet_part(a), strict=True)


def test_distill_remove_alone_cuts_the_teacher(teacher, data, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "cli"
    assert main(["distill", "--teacher", str(teacher), "--data", str(data), "--out", str(out),
                 "--remove", "down.*.1,up.*.1", "--steps", "1", "--batch-size", "2",
                 "--grad-accum", "1", "--resolution", "32", "--mixed-precision", "no",
                 "--save-every", "0", "--sample-every", "0", "--no-ema"]) == 0
    assert (out / "tiny-sd-v1-bk-base-distilled.safetensors").is_file()
    assert main(["distill", "--teacher", str(teacher), "--data", str(data), "--out",
                 str(tmp_path / "bad"), "--remove", "down.2.1"]) == 2
    assert "stage 2 removes 1 down and 0 up layers" in capsys.readouterr().err


def test_bench_times_a_custom_student(teacher, tmp_path, capsys):
    import json

    from bksdm_ext.model.convert import convert_checkpoint

    student = tmp_path / "cut.safetensors"
    convert_checkpoint(teacher, student, "teacher", dtype="fp32", remove="down.0.0,up.0.1,mid")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny U-Net on a busy machine: thread hand-offs dominate
    try:
        assert main(["bench", str(teacher), str(student), "--steps", "1", "--size", "32",
                     "--runs", "1", "--warmup", "0", "--json"]) == 0
    finally:
        torch.set_num_threads(threads)
    rows = json.loads(capsys.readouterr().out)["results"]
    assert [r["preset"] for r in rows] == ["teacher", "custom"]
