"""Every bad input: exit 2, one line naming the file and the problem, no traceback, and
nothing left behind in the output folder."""
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from bksdm_ext.cli import main
from tiny import TINY, teacher_state, write_teacher


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.err.strip()


def assert_refused(capsys, tmp_path: Path, source: Path, *words: str, extra=()):
    before = set(tmp_path.iterdir())
    out = tmp_path / "out" / "student.safetensors"
    out.parent.mkdir(exist_ok=True)
    code, err = run_cli(capsys, "convert", source, "--arch", "small", "--out", out, *extra)
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert str(source) in err or source.name in err
    for word in words:
        assert word in err, err
    assert list(out.parent.iterdir()) == []
    assert set(tmp_path.iterdir()) - {out.parent} == before - {out.parent}


def _with(tmp_path: Path, name: str, changes) -> Path:
    state = teacher_state(TINY["sd-v1"])
    changes(state)
    path = tmp_path / name
    save_file(state, str(path))
    return path


def test_sdxl_is_refused(tmp_path, capsys):
    path = _with(tmp_path, "xl.safetensors", lambda s: s.update(
        {"conditioner.embedders.1.model.ln_final.weight": torch.zeros(4)}))
    assert_refused(capsys, tmp_path, path, "SDXL")


def test_sd3_is_refused(tmp_path, capsys):
    path = tmp_path / "sd3.safetensors"
    save_file({"model.diffusion_model.joint_blocks.0.x.weight": torch.zeros(2)}, str(path))
    assert_refused(capsys, tmp_path, path, "SD3")


@pytest.mark.parametrize("channels,what", [(8, "instruct-pix2pix"), (5, "5 input channels")])
def test_pix2pix_and_other_conditioned_unets_are_refused(tmp_path, capsys, channels, what):
    """(Inpainting U-Nets, 9 channels, convert: tests/model/test_inpainting.py.)"""
    def widen(state):
        w = state["model.diffusion_model.input_blocks.0.0.weight"]
        state["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(
            w.shape[0], channels, *w.shape[2:])
    assert_refused(capsys, tmp_path, _with(tmp_path, "widened.safetensors", widen), what,
                   "inpainting U-Nets (9)")


def test_a_file_without_a_unet_is_refused(tmp_path, capsys):
    path = tmp_path / "other.safetensors"
    save_file({"encoder.layer.0.weight": torch.zeros(3)}, str(path))
    assert_refused(capsys, tmp_path, path, "not a Stable Diffusion checkpoint")


def test_a_lora_is_refused(tmp_path, capsys):
    path = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down_blocks_0.alpha": torch.zeros(1)}, str(path))
    assert_refused(capsys, tmp_path, path, "LoRA")


def test_truncated_safetensors_is_refused(tmp_path, capsys):
    good = write_teacher(tmp_path, TINY["sd-v1"], with_yaml=False)
    data = good.read_bytes()
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(data[: len(data) // 2])
    assert_refused(capsys, tmp_path, bad, "truncated")


def test_truncated_ckpt_is_refused(tmp_path, capsys):
    good = write_teacher(tmp_path, TINY["sd-v1"], name="t.ckpt", with_yaml=False)
    data = good.read_bytes()
    bad = tmp_path / "cut.ckpt"
    bad.write_bytes(data[: len(data) // 2])
    assert_refused(capsys, tmp_path, bad, "truncated")


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, ("touch %s" % self.marker,))


def test_a_ckpt_that_would_run_code_is_refused_before_it_runs(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    state = teacher_state(TINY["sd-v1"])
    state["payload"] = _Payload(marker)
    torch.save({"state_dict": state}, str(evil))
    pickle.loads(pickle.dumps(0))  # the real pickle module still works here
    assert_refused(capsys, tmp_path, evil, "refused", "posix.system")
    assert not marker.exists()


def test_an_existing_output_is_kept_unless_overwrite(tmp_path, capsys):
    source = write_teacher(tmp_path, TINY["sd-v1"])
    out = tmp_path / "student.safetensors"
    out.write_bytes(b"precious")
    code, err = run_cli(capsys, "convert", source, "--arch", "small", "--out", out)
    assert code == 2 and "already exists" in err and "--overwrite" in err
    assert out.read_bytes() == b"precious"
    assert run_cli(capsys, "convert", source, "--arch", "small", "--out", out, "--overwrite")[0] == 0
    assert out.read_bytes() != b"precious"


def test_the_source_is_never_the_output(tmp_path, capsys):
    source = write_teacher(tmp_path, TINY["sd-v1"])
    before = source.read_bytes()
    code, err = run_cli(capsys, "convert", source, "--arch", "small", "--out", source,
                        "--overwrite")
    assert code == 2 and "source" in err
    assert source.read_bytes() == before


def test_a_student_is_not_converted_again(tmp_path, capsys):
    source = write_teacher(tmp_path, TINY["sd-v1"])
    student = tmp_path / "student.safetensors"
    assert run_cli(capsys, "convert", source, "--arch", "base", "--out", student)[0] == 0
    (tmp_path / "out").mkdir()
    code, err = run_cli(capsys, "convert", student, "--arch", "small", "--out",
                        tmp_path / "out" / "x.safetensors")
    assert code == 2 and "already a BK-SDM 'base' student" in err


def test_missing_file_and_wrong_extension(tmp_path, capsys):
    code, err = run_cli(capsys, "convert", tmp_path / "nope.safetensors", "--arch", "small",
                        "--out", tmp_path / "s.safetensors")
    assert code == 2 and "no such file" in err
    source = write_teacher(tmp_path, TINY["sd-v1"])
    code, err = run_cli(capsys, "convert", source, "--arch", "small", "--out", tmp_path / "s.ckpt")
    assert code == 2 and ".safetensors" in err


def test_unknown_arch_is_an_argument_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", "x.safetensors", "--arch", "huge", "--out", "y.safetensors"])
    assert exit_info.value.code == 2


@pytest.mark.parametrize("part, words", [
    ("first_stage_model.", ("no VAE weights", "Bake in VAE")),
    ("cond_stage_model.transformer.", ("no text encoder weights",))])
@pytest.mark.slow
def test_a_checkpoint_without_its_vae_or_text_encoder_is_refused_where_they_are_needed(
        tmp_path, capsys, part, words):
    """A1111 loads such a file (its yaml still names the part; a separate VAE can stand in),
    so it reaches `bksdm eval`: one line naming the file and the missing part."""
    from safetensors.torch import load_file

    from bksdm_ext.demo import write_tiny_teacher

    whole = tmp_path / "whole.safetensors"
    write_tiny_teacher(whole)  # every part real, so only the missing one can stop it
    source = tmp_path / "partial.safetensors"
    save_file({k: v for k, v in load_file(str(whole)).items() if not k.startswith(part)},
              str(source))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\n")
    code, err = run_cli(capsys, "eval", source, "--prompts", prompts, "--steps", "1", "--size",
                        "32", "--seeds", "1")
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    for word in ("%s: it has no " % source, part + "*") + words:
        assert word in err, err
