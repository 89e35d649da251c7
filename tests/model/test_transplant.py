"""``bksdm transplant``: a student plus alpha·(fine-tune − base), exact through the weight
map for every preset, with clear refusals of pairs that do not belong together."""
import hashlib
import json
from dataclasses import replace
from pathlib import Path
import pytest
import torch
from safetensors.torch import save_file

from bksdm_ext.cli import main
from bksdm_ext.model.arch import PRESETS
from bksdm_ext.model.convert import convert_checkpoint
from test_convert import ldm_from_yaml, load_file, teacher_key, unet_part
from tiny import TINY, write_teacher

UNET = "model.diffusion_model."
TEXT_KEY = {"sd-v1": "cond_stage_model.transformer.text_model.final_layer_norm.weight",
            "sd-v2": "cond_stage_model.model.ln_final.weight"}


def perturbed(path: Path, out: Path, seed: int, only: str = "", keep_metadata: bool = False) -> Path:
    """A copy of `path` whose U-Net tensors (those starting with UNET + `only`) and text
    encoder moved by random amounts: a fine-tune, or a student after distillation."""
    state, metadata = load_file(path)
    g = torch.Generator().manual_seed(seed)
    for key, value in state.items():
        moves = key.startswith(UNET + only) or key in TEXT_KEY.values()
        if moves and value.is_floating_point():
            state[key] = (value.float() + 0.05 * torch.randn(value.shape, generator=g)).to(value.dtype)
    save_file(state, str(out), metadata=metadata if keep_metadata else None)
    if path.with_suffix(".yaml").is_file():
        out.with_suffix(".yaml").write_text(path.with_suffix(".yaml").read_text())
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """models(family, preset) -> (student, base, fine-tune), made once per module: the
    student is converted from the base, then 'distilled' (moved at random)."""
    made = {}

    def get(family: str, preset: str):
        if family not in made:
            folder = tmp_path_factory.mktemp(family)
            base = write_teacher(folder, TINY[family], name="base.safetensors")
            made[family] = folder, base, perturbed(base, folder / "mine.safetensors", seed=2)
        folder, base, finetune = made[family]
        student = folder / ("student-%s.safetensors" % preset)
        if not student.exists():
            cut = folder / ("cut-%s.safetensors" % preset)
            convert_checkpoint(base, cut, preset, dtype="fp32")
            perturbed(cut, student, seed=1, keep_metadata=True)
        return student, base, finetune

    return get


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(capsys, *args: str):
    code = main(["transplant"] + list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("family,dtype", [("sd-v1", "fp32"), ("sd-v2", "fp16")])
@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.slow
def test_every_tensor_is_student_plus_alpha_times_the_difference(tmp_path, capsys, models, family,
                                                                  preset, dtype):
    student, base, finetune = models(family, preset)
    sources = {p: digest(p) for p in (student, base, finetune)}
    out = tmp_path / "mine-bk.safetensors"
    code, stdout, _ = run(capsys, "--student", str(student), "--base", str(base), "--finetune",
                          str(finetune), "--out", str(out), "--alpha", "0.7", "--dtype", dtype,
                          "--json")
    assert code == 0
    report = json.loads(stdout)
    assert (report["arch"], report["family"]) == (preset, family)

    written, metadata = load_file(out)
    s, b, f = (load_file(p)[0] for p in (student, base, finetune))
    dtype_of = {"fp32": torch.float32, "fp16": torch.float16}[dtype]
    finfo = torch.finfo(dtype_of)
    assert set(unet_part(written)) == set(unet_part(s))
    for key in unet_part(s):
        source = UNET + teacher_key(key, preset)  # docs/facts.md §3, not the code under test
        exact = s[UNET + key].double() + 0.7 * (f[source].double() - b[source].double())
        got = written[UNET + key]
        assert got.dtype == dtype_of
        assert ((got.double() - exact).abs() <= finfo.eps * exact.abs() + finfo.tiny).all(), key
    for key, value in f.items():  # text encoder, VAE and buffers: the fine-tune's
        if not key.startswith(UNET):
            assert torch.equal(written[key], value), key
    assert metadata["bksdm.preset"] == preset
    assert metadata["bksdm.transplant_student"] == student.name
    assert metadata["bksdm.transplant_base"] == base.name
    assert metadata["bksdm.transplant_finetune"] == finetune.name
    assert metadata["bksdm.teacher"] == finetune.name  # distil it further from the fine-tune
    assert metadata["bksdm.transplant_alpha"] == "0.7"
    ldm_from_yaml(out.with_suffix(".yaml")).load_state_dict(
        {k: v.float() for k, v in unet_part(written).items()}, strict=True)
    assert {p: digest(p) for p in sources} == sources  # sources untouched
    assert not [w for w in report["warnings"] if "teacher" in w]  # the base is the recorded one


def test_the_report_says_when_the_fine_tune_changed_mostly_removed_blocks(tmp_path, capsys, models):
    student, base, _ = models("sd-v1", "small")
    finetune = perturbed(base, tmp_path / "mid-only.safetensors", seed=3, only="middle_block.")
    out = tmp_path / "out.safetensors"
    code, stdout, _ = run(capsys, "--student", str(student), "--base", str(base), "--finetune",
                          str(finetune), "--out", str(out))
    assert code == 0
    assert "mostly blocks the student removed" in stdout and "0% of" in stdout
    assert main(["transplant", "--student", str(student), "--base", str(base), "--finetune",
                 str(finetune), "--out", str(out), "--overwrite", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["carried_share"] == 0
    changed = {b["block"]: b for b in report["blocks"] if b["relative"] > 0}
    assert list(changed) == ["middle_block"] and not changed["middle_block"]["carried"]
    kept = [b for b in report["blocks"] if b["carried"]]
    assert kept and all(b["relative"] == 0 for b in kept)


def test_a_base_that_is_not_the_recorded_teacher_is_warned_about(tmp_path, capsys, models):
    student, base, finetune = models("sd-v1", "base")
    other = perturbed(base, tmp_path / "sd-other.safetensors", seed=4)
    code, stdout, _ = run(capsys, "--student", str(student), "--base", str(other), "--finetune",
                          str(finetune), "--out", str(tmp_path / "out.safetensors"))
    assert code == 0
    assert "sd-other.safetensors is not the student's recorded teacher (base.safetensors)" in stdout


def test_per_block_changes_are_relative_to_the_base(tmp_path, capsys, models):
    student, base, finetune = models("sd-v1", "tiny")
    code, stdout, _ = run(capsys, "--student", str(student), "--base", str(base), "--finetune",
                          str(finetune), "--out", str(tmp_path / "out.safetensors"), "--json")
    report = json.loads(stdout)
    b, f = load_file(base)[0], load_file(finetune)[0]
    keys = [k for k in b if k.startswith(UNET + "input_blocks.4.")]
    expected = (sum((f[k].double() - b[k].double()).square().sum() for k in keys)
                / sum(b[k].double().square().sum() for k in keys)).sqrt().item()
    block = next(x for x in report["blocks"] if x["block"] == "input_blocks.4")
    assert block["relative"] == pytest.approx(expected, rel=1e-9) and block["carried"]
    removed = {x["block"] for x in report["blocks"] if not x["carried"]}
    assert removed == {"input_blocks.2", "input_blocks.5", "input_blocks.8", "input_blocks.9",
                       "input_blocks.10", "input_blocks.11", "middle_block", "output_blocks.0",
                       "output_blocks.1", "output_blocks.2", "output_blocks.4", "output_blocks.7",
                       "output_blocks.10"}
    assert 0 < report["carried_share"] < 1


def one_line_error(capsys, *args: str) -> str:
    code, stdout, err = run(capsys, *args)
    assert code == 2 and stdout == ""
    assert len(err.strip().splitlines()) == 1
    return err


def test_bad_pairs_exit_2_with_one_line(tmp_path, capsys, models):
    student, base, finetune = models("sd-v1", "small")
    _, base2, finetune2 = models("sd-v2", "small")
    out = tmp_path / "out.safetensors"

    def refused(student_path, base_path, finetune_path) -> str:
        return one_line_error(capsys, "--student", str(student_path), "--base", str(base_path),
                              "--finetune", str(finetune_path), "--out", str(out))

    err = refused(student, base2, finetune2)  # SD-v1 student, SD-v2 base
    assert "family sd-v2" in err and "student-small.safetensors is sd-v1" in err
    tiny = tmp_path / "tiny.safetensors"
    convert_checkpoint(base, tiny, "tiny", dtype="fp32")
    err = refused(student, tiny, finetune)  # a Small student with a Tiny-layout file
    assert "'tiny' student" in err and "--base must be a full SD model" in err
    err = refused(base, base, finetune)
    assert "not a BK-SDM student" in err
    wide = tmp_path / "wide"
    wide.mkdir()
    bigger = write_teacher(wide, replace(TINY["sd-v1"], model_channels=64), name="wide.safetensors")
    err = refused(student, base, bigger)
    assert "the fine-tune must be a fine-tune of that base" in err
    err = refused(student, bigger, bigger)
    assert "does not fit wide.safetensors" in err
    assert not out.exists() and not out.with_suffix(".yaml").exists()


def test_a_v_prediction_base_for_an_epsilon_student_is_refused(tmp_path, capsys, models):
    student, _, _ = models("sd-v2", "base")
    v = tmp_path / "v"
    v.mkdir()
    base_v = write_teacher(v, TINY["sd-v2-v"], name="base-v.safetensors")
    err = one_line_error(capsys, "--student", str(student), "--base", str(base_v), "--finetune",
                         str(base_v), "--out", str(tmp_path / "out.safetensors"))
    assert "parameterization v" in err and "is eps" in err


def test_existing_outputs_and_sources_are_never_replaced(tmp_path, capsys, models):
    student, base, finetune = models("sd-v1", "small")
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"keep me")
    err = one_line_error(capsys, "--student", str(student), "--base", str(base), "--finetune",
                         str(finetune), "--out", str(out))
    assert "already exists" in err and out.read_bytes() == b"keep me"
    err = one_line_error(capsys, "--student", str(student), "--base", str(base), "--finetune",
                         str(finetune), "--out", str(finetune), "--overwrite")
    assert "would replace" in err
    assert not list(tmp_path.glob(".*.tmp")) and not list(finetune.parent.glob(".*.tmp"))


@pytest.mark.parametrize("family", ["sd-v1", "sd-v2"])
@pytest.mark.slow
def test_a_custom_students_transplant_is_exact_through_its_own_map(tmp_path, capsys, models,
                                                                   family):
    """A custom removal (issue #15) carries the difference like a preset; each student
    tensor's source is found by value (it was copied from the base before it was moved),
    so the check does not lean on the map under test."""
    _, base, finetune = models(family, "small")
    cut, student = tmp_path / "cut.safetensors", tmp_path / "custom.safetensors"
    convert_checkpoint(base, cut, "teacher", dtype="fp32", remove="down.1.1,up.1.1,mid")
    perturbed(cut, student, seed=3, keep_metadata=True)
    out = tmp_path / "mine-custom.safetensors"
    code, stdout, _ = run(capsys, "--student", str(student), "--base", str(base), "--finetune",
                          str(finetune), "--out", str(out), "--alpha", "1.0", "--dtype", "fp32",
                          "--json")
    assert code == 0
    written = load_file(out)[0]
    c, s, b, f = (load_file(p)[0] for p in (cut, student, base, finetune))
    assert set(unet_part(written)) == set(unet_part(s))
    for key in unet_part(s):
        (source,) = [k for k, v in unet_part(b).items()
                     if v.shape == c[UNET + key].shape and torch.equal(v, c[UNET + key])]
        exact = s[UNET + key].double() + (f[UNET + source].double() - b[UNET + source].double())
        assert torch.allclose(written[UNET + key].double(), exact, rtol=1e-6, atol=1e-7), key
    ldm_from_yaml(out.with_suffix(".yaml")).load_state_dict(
        {k: v.float() for k, v in unet_part(written).items()}, strict=True)
