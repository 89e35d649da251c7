"""The quick path in the A1111 1.10.1 stand-in: the Convert tab's "Start from" a distilled
student + the loaded model's difference, and the Distill tab's "Start from" a student."""
import pytest
import torch

from bksdm_ext.demo import write_tiny_teacher
from bksdm_ext.model.convert import convert_checkpoint
from test_convert import load_file, unet_part
from test_transplant import perturbed
from test_webui_jobs import start_distill
from tiny import TINY, write_teacher
from webui_env import load, stop_jobs, webui_with_data_roots


@pytest.fixture
def webui(tmp_path):
    yield from webui_with_data_roots(tmp_path)


def title_of(path):
    from modules import sd_models

    sd_models.list_models()
    return next(i.title for i in sd_models.checkpoints_list.values() if i.filename == str(path))


def quick_path_files(folder, family="sd-v1"):
    """base, a 'distilled' Small student of it, and a fine-tune of the base, in the list."""
    base = write_teacher(folder, TINY[family], name="sd-base.safetensors")
    convert_checkpoint(base, folder / "cut.safetensors", "small", dtype="fp32")
    student = perturbed(folder / "cut.safetensors", folder / "bk-small.safetensors", seed=1,
                        keep_metadata=True)
    (folder / "cut.safetensors").unlink()
    (folder / "cut.yaml").unlink()
    mine = perturbed(base, folder / "mine.safetensors", seed=2)
    return base, student, mine


def test_convert_tab_starts_from_a_student_plus_the_loaded_models_difference(webui):
    from bksdm_ext.webui import convert_tab, transplant_form

    base, student, mine = quick_path_files(webui)
    load(mine)
    mode = transplant_form.START_FROM[1]
    assert transplant_form.student_preset(title_of(student)) == "small"
    title, button, message = convert_tab.convert(
        "task(1)", "Tiny", "mine-bk-small", "fp32", False, mode, title_of(student),
        title_of(base), 0.5)
    out = webui / "mine-bk-small.safetensors"
    assert "bksdm-success" in message and "BK-SDM small student bk-small.safetensors" in message
    assert out.is_file() and out.with_suffix(".yaml").is_file() and button["visible"] is True
    assert title == title_of(out)
    written, metadata = load_file(out)
    s, b, f = (unet_part(load_file(p)[0]) for p in (student, base, mine))
    key = "output_blocks.1.0.in_layers.2.weight"  # comes from teacher output block 2
    expected = s[key].double() + 0.5 * (f["output_blocks.2.0.in_layers.2.weight"].double()
                                         - b["output_blocks.2.0.in_layers.2.weight"].double())
    assert torch.allclose(unet_part(written)[key].double(), expected, atol=1e-6)
    assert metadata["bksdm.preset"] == "small" and metadata["bksdm.transplant_base"] == base.name

    missing = convert_tab.convert("task(2)", "Small", "again", "fp32", False, mode, "", "", 1.0)
    assert "bksdm-error" in missing[2] and "Choose the distilled student" in missing[2]
    wrong = convert_tab.convert("task(3)", "Small", "again", "fp32", False, mode,
                                title_of(base), title_of(base), 1.0)
    assert "bksdm-error" in wrong[2] and "not a BK-SDM student" in wrong[2]
    assert not (webui / "again.safetensors").exists()


@pytest.mark.parametrize("family", ["sd-v1", "sd-v2-v"])
def test_an_unsaved_merge_is_carried_from_memory(webui, family):
    from bksdm_ext.webui import convert_tab, transplant_form

    base, student, mine = quick_path_files(webui, family)
    model = load(mine)
    mine.unlink()
    mine.with_suffix(".yaml").unlink()
    with torch.no_grad():  # the merge exists only in memory, and differs from the file
        model.model.diffusion_model.out[2].bias.add_(1.0)
    message = convert_tab.convert("task(4)", "Small", "merge-bk", "fp32", False,
                                  transplant_form.START_FROM[1], title_of(student),
                                  title_of(base), 1.0)[2]
    assert "bksdm-success" in message, message
    written, metadata = load_file(webui / "merge-bk.safetensors")
    s, b = (unet_part(load_file(p)[0]) for p in (student, base))
    merged = model.model.diffusion_model.out[2].bias.detach().double()
    expected = s["out.2.bias"].double() + merged - b["out.2.bias"].double()
    assert torch.allclose(unet_part(written)["out.2.bias"].double(), expected, atol=1e-6)
    assert metadata["bksdm.parameterization"] == TINY[family].parameterization


def test_distill_tab_starts_from_a_student_of_the_list(webui, tmp_path):
    from bksdm_ext.webui import distill_tab, init_student_form, jobs_service
    from test_distill import make_dataset

    teacher = webui / "tiny-sd.safetensors"
    write_tiny_teacher(teacher)
    student = webui / "tiny-sd-bk-tiny.safetensors"
    convert_checkpoint(teacher, student, "tiny", dtype="fp32")
    data = make_dataset(tmp_path / "data")
    mode = init_student_form.START_FROM[1]

    def start(student_title):
        return start_distill(distill_tab, title_of(teacher), data, steps=1, save_every=0,
                             sample_every=0, start_from=(mode, student_title))

    message = start(title_of(student))
    assert "bksdm-success" in message and "BK-Tiny" in message, message
    argv = " ".join(jobs_service.runner().jobs()[-1].argv)
    assert "--arch=tiny" in argv and "--init-student=%s" % student in argv
    stop_jobs()

    other = tmp_path / "other"
    other.mkdir()
    convert_checkpoint(write_teacher(other, TINY["sd-v1"], name="sd-other.safetensors"),
                       webui / "other-bk-small.safetensors", "small")
    message = start(title_of(webui / "other-bk-small.safetensors"))
    assert "bksdm-error" in message and "other-bk-small.safetensors" in message
    message = start("")
    assert "bksdm-error" in message and "Choose a checkpoint" in message
    message = start_distill(distill_tab, title_of(teacher), data, steps=1, save_every=0,
                            sample_every=0, start_from=(mode, title_of(student), "mid"))
    assert "bksdm-error" in message and "keeps its own blocks" in message
    assert len(jobs_service.runner().jobs()) == 1


def test_distill_tab_starts_from_a_custom_student_with_its_removal(webui, tmp_path):
    """--arch takes presets only: a custom student's layout goes to the job as --remove."""
    from bksdm_ext.webui import distill_tab, init_student_form, jobs_service
    from test_distill import make_dataset

    teacher = webui / "tiny-sd.safetensors"
    write_tiny_teacher(teacher)
    student = webui / "tiny-sd-bk-custom.safetensors"
    convert_checkpoint(teacher, student, "teacher", remove="down.3.1,up.3.1")
    message = start_distill(distill_tab, title_of(teacher), make_dataset(tmp_path / "data"),
                            steps=1, save_every=0, sample_every=0,
                            start_from=(init_student_form.START_FROM[1], title_of(student)))
    assert "bksdm-success" in message and "minus down.3.1,up.3.1" in message, message
    argv = " ".join(jobs_service.runner().jobs()[-1].argv)
    assert "custom" not in argv.replace(str(student), "")
    assert "down.3.1,up.3.1" in argv and str(student) in argv
    stop_jobs()
