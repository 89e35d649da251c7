"""``bksdm distill --init-student``: KD from the teacher starting from a given student file
(transplanted, imported or an earlier result) instead of the pruned teacher."""
from pathlib import Path

import pytest
import torch

from bksdm_ext.cli import main
from bksdm_ext.model.arch import PRESETS, Architecture
from bksdm_ext.model.checkpoint import Checkpoint
from bksdm_ext.model.convert import convert_checkpoint
from bksdm_ext.model.detect import inspect_checkpoint
from bksdm_ext.model.loading import latent_scale, load_unet, noise_scheduler
from bksdm_ext.train.dataset import scan_dataset
from bksdm_ext.train.distill import distill
from bksdm_ext.train.kd import FeatureTaps, LossWeights, kd_loss
from bksdm_ext.train.latent_cache import LatentCache, cache_fingerprint, teacher_identity
from bksdm_ext.train.noising import Batches, noised, randn
from test_convert import load_file
from test_distill import assert_resumes_exactly, config, make_dataset, steps
from test_transplant import perturbed


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data") / "pairs")


@pytest.fixture(scope="module")
def start(teacher, tmp_path_factory) -> Path:
    """A Small student of the teacher that is not the pruned teacher (as after distillation)."""
    folder = tmp_path_factory.mktemp("start")
    cut = folder / "cut.safetensors"
    convert_checkpoint(teacher, cut, "small", dtype="fp32")
    return perturbed(cut, folder / "start.safetensors", seed=5, keep_metadata=True)


def first_loss_by_hand(teacher: Path, student: Path, data: Path, run: Path) -> float:
    """The run's first step, written out: the same batch and noise (seed 0, no flips), the
    teacher and the student file's U-Net, the three-term loss."""
    ckpt = Checkpoint(teacher)
    info = inspect_checkpoint(ckpt)
    teacher_unet = load_unet(ckpt, info).eval()
    student_ckpt = Checkpoint(student)
    student_unet = load_unet(student_ckpt, inspect_checkpoint(student_ckpt)).train()
    cache = LatentCache(run / "cache", cache_fingerprint(scan_dataset(data), 32, False,
                                                         encoders=teacher_identity(teacher)))
    generator = torch.Generator().manual_seed(0)
    indices = Batches(len(cache), 2, 0, 1, 0).next()
    torch.rand(len(indices), generator=generator)  # the flip draws
    items = [cache.item(i) for i in indices]
    mean, std, embedding = (torch.stack([item[k] for item in items]).float()
                            for k in ("mean", "std", "embedding"))
    latents = (mean + std * randn(mean, generator)) * latent_scale(info)
    noisy, timesteps, target = noised(latents, noise_scheduler(info).alphas_cumprod,
                                      info.parameterization, generator)
    pairs = Architecture(info.arch.teacher, PRESETS["small"]).feature_kd_pairs()
    taps = (FeatureTaps(teacher_unet, [t for t, _ in pairs]),
            FeatureTaps(student_unet, [s for _, s in pairs]))
    with torch.no_grad():
        teacher_pred = teacher_unet(noisy, timesteps, embedding).sample
        student_pred = student_unet(noisy, timesteps, embedding).sample
    _, parts = kd_loss(student_pred, teacher_pred, target, taps[1].take(), taps[0].take(),
                       LossWeights())
    return parts["loss"]


@pytest.mark.slow
def test_the_first_loss_is_a_forward_pass_of_exactly_the_given_weights(teacher, data, start,
                                                                       tmp_path):
    run = tmp_path / "run"
    final = distill(config(teacher, data, run, steps=1, flip=False, init_student=str(start)))
    first = steps(run)[0]["loss"]
    assert first == pytest.approx(first_loss_by_hand(teacher, start, data, run), rel=1e-5)
    pruned = tmp_path / "pruned"
    distill(config(teacher, data, pruned, steps=1, flip=False))
    assert steps(pruned)[0]["loss"] != pytest.approx(first, rel=1e-3)
    _, metadata = load_file(final)
    assert metadata["bksdm.init_student"] == "start.safetensors"


@pytest.mark.slow
def test_a_run_from_a_student_resumes_exactly(teacher, data, start, tmp_path):
    assert_resumes_exactly(teacher, data, tmp_path, 1, steps=2, save_every=1, ema=True,
                           init_student=str(start))


def test_a_student_of_another_layout_is_refused_before_anything_loads(teacher, data, start,
                                                                      tmp_path, capsys,
                                                                      monkeypatch):
    from bksdm_ext.train import distill as distill_module

    monkeypatch.setattr(distill_module, "load_unet", lambda *a: pytest.fail("loaded a model"))
    argv = ["distill", "--teacher", str(teacher), "--data", str(data), "--out",
            str(tmp_path / "run"), "--init-student", str(start)]
    assert main(argv + ["--arch", "tiny"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "start.safetensors" in err and "BK-SDM 'small'" in err and "choose --arch small" in err
    assert main(argv[:-1] + [str(teacher)]) == 2  # the teacher is no Small student
    err = capsys.readouterr().err
    assert "a full teacher U-Net" in err and "leave out --init-student" in err
    assert "--arch teacher" not in err  # --arch takes presets only
    assert not (tmp_path / "run").exists()


def test_a_custom_student_is_met_with_the_flags_that_make_its_layout(teacher, data, tmp_path,
                                                                     capsys):
    from bksdm_ext.model.blocks import removal_from_units
    from bksdm_ext.train.init_student import checked_init_student

    custom = tmp_path / "custom.safetensors"
    convert_checkpoint(teacher, custom, "teacher", remove="down.3.1,up.3.1")
    argv = ["distill", "--teacher", str(teacher), "--data", str(data), "--out",
            str(tmp_path / "run"), "--init-student", str(custom), "--arch", "small"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--arch custom" not in err
    assert "give --remove down.3.1,up.3.1 without --arch" in err, err
    ckpt = Checkpoint(teacher)  # the advice holds: that run's student is the file's layout
    info = inspect_checkpoint(ckpt)
    checked_init_student(str(custom), ckpt, info, Architecture(
        info.arch.teacher, removal_from_units(info.arch.teacher, "down.3.1,up.3.1")))
