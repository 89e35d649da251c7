"""A real effect of the quick path, on tiny models on the CPU: a student distilled from a
teacher T0, plus what a fine-tune T1 of T0 changed, agrees with T1 better than the student
alone and better than a student cut from T1 directly (U-Net output error on fixed noise)."""
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from bksdm_ext.model.checkpoint import Checkpoint
from bksdm_ext.model.convert import convert_checkpoint
from bksdm_ext.model.detect import inspect_checkpoint
from bksdm_ext.model.loading import load_unet
from bksdm_ext.model.transplant import transplant
from bksdm_ext.train.distill import distill
from test_distill import config, make_dataset


def make_stripes(folder: Path, n: int = 8) -> Path:
    """Another small dataset than make_dataset's circles: the fine-tune's own domain."""
    folder.mkdir(parents=True)
    for i in range(n):
        image = Image.new("RGB", (48, 40), (20 * i, 200, 255 - 20 * i))
        draw = ImageDraw.Draw(image)
        for x in range(0, 48, 6):
            draw.line((x, 0, x, 40), fill=(255, 30 * i % 255, 0), width=2)
        image.save(folder / ("s%02d.png" % i))
        (folder / ("s%02d.txt" % i)).write_text("stripes number %d" % i)
    return folder


def unet(path: Path) -> torch.nn.Module:
    ckpt = Checkpoint(path)
    return load_unet(ckpt, inspect_checkpoint(ckpt)).eval()


@torch.no_grad()
def output_error(model: Path, reference: Path) -> float:
    """Mean squared difference of the two U-Nets' predictions on fixed noisy latents,
    timesteps and text conditioning."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 4, 4, 4, generator=g)
    t = torch.randint(0, 1000, (8,), generator=g)
    context = torch.randn(8, 77, 64, generator=g)
    return (unet(model)(x, t, context).sample - unet(reference)(x, t, context).sample
            ).square().mean().item()


@pytest.mark.slow
def test_the_transplanted_student_agrees_with_the_fine_tune_best(teacher, tmp_path):
    s0 = distill(config(teacher, make_dataset(tmp_path / "circles"), tmp_path / "s0", steps=10))
    # T1: T0 trained on the task loss alone (no KD terms) on stripes: a plain fine-tune.
    t1 = distill(config(teacher, make_stripes(tmp_path / "stripes"), tmp_path / "t1",
                        preset="teacher", steps=10, lr=5e-3, lambda_output=0, lambda_feature=0))
    transplanted = tmp_path / "s0-plus-t1-difference.safetensors"
    report = transplant(s0, teacher, t1, transplanted, dtype="fp32")
    assert report.warnings == [] and report.carried_share > 0.5
    cut = tmp_path / "t1-bk-small.safetensors"
    convert_checkpoint(t1, cut, "small", dtype="fp32")

    error = {name: output_error(path, t1)
             for name, path in (("transplanted", transplanted), ("s0", s0), ("cut", cut))}
    assert error["transplanted"] < error["s0"], error
    assert error["transplanted"] < error["cut"], error
