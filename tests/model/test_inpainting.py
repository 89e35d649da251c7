"""Inpainting teachers (9-channel U-Nets): students convert, transplant, load in A1111 with its
inpainting config and inpaint in img2img (the A1111 stand-in's inpainting path)."""
from dataclasses import replace

import numpy as np
import pytest
import torch
import yaml
from PIL import Image, ImageDraw

from bksdm_ext.cli import main
from bksdm_ext.errors import BadInput
from bksdm_ext.model.arch import PRESETS, Architecture
from bksdm_ext.model.convert import convert_checkpoint
from bksdm_ext.model.keymap import KeyMap
from bksdm_ext.model.transplant import transplant
from test_convert import ldm_from_yaml, load_file, unet_part
from tiny import TINY, write_teacher

INPAINT = {family: replace(spec, in_channels=9) for family, spec in TINY.items()}
CONV_IN = "model.diffusion_model.input_blocks.0.0.weight"
# docs/facts.md §13: what A1111's configs/v1-inpainting-inference.yaml (1.6.1 and 1.10.1) says
# that its text-to-image config does not.
A1111_INPAINTING = {"target": "ldm.models.diffusion.ddpm.LatentInpaintDiffusion",
                    "conditioning_key": "hybrid", "finetune_keys": None, "in_channels": 9}


def inpainting_fields(config):
    params = config["model"]["params"]
    return {"target": config["model"]["target"], "conditioning_key": params["conditioning_key"],
            "finetune_keys": params.get("finetune_keys", "absent"),
            "in_channels": params["unet_config"]["params"]["in_channels"]}


@pytest.mark.parametrize("family", ["sd-v1", "sd-v2-v"])
@pytest.mark.parametrize("preset", ["small", "tiny", "base"])
@pytest.mark.slow
def test_an_inpainting_teacher_converts_to_a_student_that_loads_strictly_with_9_channels(
        tmp_path, family, preset):
    from diffusers import UNet2DConditionModel

    spec = INPAINT[family]
    teacher = write_teacher(tmp_path, spec)
    out = tmp_path / ("%s.safetensors" % preset)
    report = convert_checkpoint(teacher, out, preset, dtype="fp32")
    config = yaml.safe_load(out.with_suffix(".yaml").read_text())
    assert inpainting_fields(config) == A1111_INPAINTING
    assert config["model"]["params"].get("parameterization", "eps") == spec.parameterization
    state, metadata = load_file(out)
    assert "inpainting" in metadata["modelspec.architecture"]
    unet = ldm_from_yaml(out.with_suffix(".yaml"))
    unet.load_state_dict(unet_part(state), strict=True)
    assert unet.input_blocks[0][0].in_channels == 9
    assert torch.equal(state[CONV_IN], load_file(teacher)[0][CONV_IN])
    assert report.student_unet_params == sum(p.numel() for p in unet.parameters())
    # the same U-Net as diffusers builds it from the spec, on a 9-channel input
    arch = Architecture(spec, PRESETS[preset])
    reference = UNet2DConditionModel(**arch.diffusers_config()).eval()
    reference.load_state_dict(KeyMap(arch).convert_to_diffusers(unet_part(state)), strict=True)
    x, t = torch.randn(2, 9, 16, 16), torch.tensor([10, 700])
    context = torch.randn(2, 7, spec.context_dim)
    with torch.no_grad():
        difference = unet.eval()(x, timesteps=t, context=context) - \
            reference(x, t, encoder_hidden_states=context).sample
    assert difference.abs().max() < 1e-4


def test_the_cli_converts_an_inpainting_teacher_and_says_what_it_is(tmp_path, capsys):
    teacher = write_teacher(tmp_path, INPAINT["sd-v1"])
    out = tmp_path / "student.safetensors"
    assert main(["convert", str(teacher), "--arch", "small", "--out", str(out)]) == 0
    assert load_file(out)[0][CONV_IN].shape[1] == 9
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    assert "inpainting (latent, mask, masked image: 9 channels)" in capsys.readouterr().out


def test_a_text_to_image_teacher_still_gets_a_text_to_image_config(tmp_path):
    teacher = write_teacher(tmp_path, TINY["sd-v1"])
    out = tmp_path / "small.safetensors"
    convert_checkpoint(teacher, out, "small")
    config = yaml.safe_load(out.with_suffix(".yaml").read_text())
    assert config["model"]["target"] == "ldm.models.diffusion.ddpm.LatentDiffusion"
    assert config["model"]["params"]["conditioning_key"] == "crossattn"


def test_transplant_carries_an_inpainting_fine_tune_into_an_inpainting_student(tmp_path):
    base = write_teacher(tmp_path, INPAINT["sd-v1"], name="base.safetensors")
    state, _ = load_file(base)
    state[CONV_IN] = state[CONV_IN] + 0.5  # the fine-tune changed the input convolution
    from safetensors.torch import save_file

    finetune = tmp_path / "mine.safetensors"
    save_file(state, str(finetune))
    finetune.with_suffix(".yaml").write_text(base.with_suffix(".yaml").read_text())
    student = tmp_path / "student.safetensors"
    convert_checkpoint(base, student, "small", dtype="fp32")
    out = tmp_path / "mine-small.safetensors"
    transplant(student, base, finetune, out, dtype="fp32")
    moved = load_file(out)[0][CONV_IN] - load_file(student)[0][CONV_IN]
    assert moved.shape[1] == 9 and torch.allclose(moved, torch.full_like(moved, 0.5), atol=1e-5)
    assert inpainting_fields(yaml.safe_load(out.with_suffix(".yaml").read_text())) == \
        A1111_INPAINTING


def test_transplant_refuses_to_mix_inpainting_and_text_to_image_models(tmp_path):
    plain = write_teacher(tmp_path, TINY["sd-v1"], name="plain.safetensors")
    inpainting = write_teacher(tmp_path, INPAINT["sd-v1"], name="inpainting.safetensors")
    student = tmp_path / "student.safetensors"
    convert_checkpoint(plain, student, "small")
    with pytest.raises(BadInput, match="inpainting model .9 U-Net input channels.*text-to-image"):
        transplant(student, inpainting, inpainting, tmp_path / "out.safetensors")


# -- in the A1111 stand-in ------------------------------------------------------------------

@pytest.fixture
def webui(tmp_path):
    from webui_env import standin_app, start_webui

    folder = start_webui(tmp_path / "webui")
    yield folder
    standin_app.reset(tmp_path / "after")


def picture_and_mask():
    image = Image.new("RGB", (64, 64), "red")
    ImageDraw.Draw(image).ellipse((8, 8, 40, 40), fill="blue")
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((32, 0, 63, 63), fill=255)  # the right half is redrawn
    return image, mask


def inpaint(model):
    """img2img with a mask ("whole picture", original content under the mask) on the loaded model;
    returns the image and the U-Net's inputs of the first step."""
    from modules import processing

    image, mask = picture_and_mask()
    seen = []
    conv_in = model.model.diffusion_model.input_blocks[0][0]
    handle = conv_in.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    p = processing.StableDiffusionProcessingImg2Img(
        init_images=[image], mask=mask, prompt="a blue circle", seed=1, steps=4, width=64,
        height=64, sampler_name="Euler", denoising_strength=0.75, inpainting_fill=1,
        inpaint_full_res=False, mask_blur=0, do_not_save_samples=True, do_not_save_grid=True)
    try:
        return processing.process_images(p), seen[0], p
    finally:
        handle.remove()


@pytest.mark.webui
@pytest.mark.parametrize("preset", ["small", "tiny"])
def test_an_inpainting_student_inpaints_in_img2img(webui, preset):
    from bksdm_ext.webui import guard
    from webui_env import load

    teacher = write_teacher(webui, INPAINT["sd-v1"])
    student = webui / ("inpaint-%s.safetensors" % preset)
    convert_checkpoint(teacher, student, preset, dtype="fp32")
    model = load(student)
    assert guard.last_problem == [] and model.model.conditioning_key == "hybrid"
    processed, unet_input, p = inpaint(model)
    # 4 latent channels, the mask, the latent of the picture with the masked half blanked
    assert unet_input.shape[1] == 9 and p.is_using_inpainting_conditioning
    mask_channel = unet_input[0, 4]
    assert mask_channel[:, 4:].eq(1).all() and mask_channel[:, :4].eq(0).all()
    image, _ = picture_and_mask()
    blanked = np.array(image, dtype=np.float32) / 255 * 2 - 1
    blanked[:, 32:] = 0
    expected = model.get_first_stage_encoding(model.encode_first_stage(
        torch.from_numpy(blanked).permute(2, 0, 1)[None]))
    assert torch.allclose(unet_input[0, 5:], expected[0], atol=1e-5)
    # the unmasked half keeps the picture's latent; the masked half is redrawn
    out = torch.from_numpy(np.array(processed.images[0], dtype=np.float32))
    kept = model.decode_first_stage(p.init_latent)[0].permute(1, 2, 0)
    kept = torch.clamp((kept + 1) / 2, 0, 1) * 255
    assert (out[:, :32] - kept[:, :32].floor()).abs().max() <= 1
    assert (out[:, 32:] - kept[:, 32:].floor()).abs().mean() > 1


@pytest.mark.webui
def test_an_inpainting_student_without_its_yaml_gets_the_inpainting_config_back(webui):
    from bksdm_ext.webui import guard
    from webui_env import load

    teacher = write_teacher(webui, INPAINT["sd-v1"])
    student = webui / "lost.safetensors"
    convert_checkpoint(teacher, student, "small", dtype="fp32")
    written = student.with_suffix(".yaml").read_text()
    student.with_suffix(".yaml").unlink()
    model = load(student)
    assert student.with_suffix(".yaml").read_text() == written
    assert guard.last_problem == [] and model.model.conditioning_key == "hybrid"


@pytest.mark.webui
def test_the_convert_tab_makes_a_student_of_a_loaded_inpainting_model(webui):
    from bksdm_ext.webui import convert_tab
    from webui_env import load

    load(write_teacher(webui, INPAINT["sd-v1"], name="my-inpainting.safetensors"))
    assert "ε prediction, inpainting" in convert_tab.loaded_summary()
    title, _, message = convert_tab.convert("task(1)", "Small", "my-inpainting-bk-small", "fp16",
                                            False)
    student = webui / "my-inpainting-bk-small.safetensors"
    assert "bksdm-success" in message, message
    assert load_file(student)[0][CONV_IN].shape[1] == 9
    assert inpainting_fields(yaml.safe_load(student.with_suffix(".yaml").read_text())) == \
        A1111_INPAINTING


# -- distillation --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def inpainting_teacher(tmp_path_factory):
    """A tiny random SD-v1 inpainting checkpoint with every part (U-Net, VAE, text encoder)."""
    from bksdm_ext.demo import TINY_SD_V1, write_tiny_teacher

    path = tmp_path_factory.mktemp("inpainting") / "tiny-inpainting.safetensors"
    write_tiny_teacher(path, replace(TINY_SD_V1, in_channels=9))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from test_distill import make_dataset

    return make_dataset(tmp_path_factory.mktemp("data") / "pairs")


def test_random_masks_follow_the_public_recipes():
    from bksdm_ext.train.inpainting import random_masks

    masks = random_masks(400, 24, 32, torch.Generator().manual_seed(0))
    assert masks.shape == (400, 1, 24, 32) and set(masks.unique().tolist()) <= {0.0, 1.0}
    full = masks.flatten(1).mean(1) == 1
    assert 0.18 < full.float().mean() < 0.32  # a quarter masked entirely (runwayml's p_drop)
    partial = masks[~full].flatten(1).mean(1)
    assert partial.min() < 0.05 and partial.max() > 0.6  # shapes of every size up to the image
    assert torch.equal(masks, random_masks(400, 24, 32, torch.Generator().manual_seed(0)))


def test_the_conditioning_is_the_mask_then_the_masked_images_latent(inpainting_teacher):
    from bksdm_ext.model.checkpoint import Checkpoint
    from bksdm_ext.model.loading import load_vae
    from bksdm_ext.train.inpainting import InpaintingConditioning, random_masks

    vae = load_vae(Checkpoint(inpainting_teacher)).eval()
    latents = torch.randn(3, 4, 8, 8)
    got = InpaintingConditioning(vae, 0.18215)(latents, torch.Generator().manual_seed(1))
    # by hand: the same draws (masks first, then the encoder's sampling), the image in pixels
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        pixels = vae.decode(latents).sample.clamp(-1, 1)
        masks = random_masks(3, pixels.shape[-2], pixels.shape[-1], generator)
        dist = vae.encode(pixels * (1 - masks)).latent_dist
        noise = torch.randn(dist.mean.shape, generator=generator)
    assert got.shape == (3, 5, 8, 8)
    assert torch.equal(got[:, :1], torch.nn.functional.interpolate(masks, size=(8, 8)))
    assert torch.allclose(got[:, 1:], (dist.mean + dist.std * noise) * 0.18215, atol=1e-5)


@pytest.mark.slow
def test_an_inpainting_teacher_distils_with_falling_losses_into_an_a1111_student(
        inpainting_teacher, data, tmp_path):
    from bksdm_ext.train.distill import distill
    from test_distill import config, steps

    seen = []
    from diffusers import UNet2DConditionModel

    original = UNet2DConditionModel.forward

    def recording(self, sample, *args, **kwargs):
        seen.append(sample.shape[1])
        return original(self, sample, *args, **kwargs)

    UNet2DConditionModel.forward = recording
    try:
        out = tmp_path / "run"
        final = distill(config(inpainting_teacher, data, out, steps=30, batch_size=4))
    finally:
        UNet2DConditionModel.forward = original
    losses = [e["loss"] for e in steps(out)]
    assert len(losses) == 30 and sum(losses[-5:]) < 0.7 * sum(losses[:5])
    assert set(seen) == {9}  # teacher and student get the mask and the masked image's latent
    state, metadata = load_file(final)
    config_file = yaml.safe_load(final.with_suffix(".yaml").read_text())
    assert inpainting_fields(config_file) == A1111_INPAINTING
    unet = ldm_from_yaml(final.with_suffix(".yaml"))
    unet.load_state_dict(unet_part(state), strict=True)


@pytest.mark.slow
def test_an_inpainting_distillation_resumes_exactly(inpainting_teacher, data, tmp_path):
    from test_distill import assert_resumes_exactly

    assert_resumes_exactly(inpainting_teacher, data, tmp_path, 2, steps=4, save_every=2)


@pytest.mark.slow
def test_teacher_made_data_trains_an_inpainting_student(inpainting_teacher, tmp_path):
    from bksdm_ext.train.distill import distill
    from test_distill import config, steps

    out = tmp_path / "teacher-data"
    final = distill(config(inpainting_teacher, "teacher:8", out, steps=20, batch_size=4,
                           synth_steps=2, synth_batch_size=4, sample_every=10))
    losses = [e["loss"] for e in steps(out)]
    assert len(losses) == 20 and sum(losses[-5:]) < sum(losses[:5])
    assert load_file(final)[0][CONV_IN].shape[1] == 9
    assert sorted(p.name for p in (out / "samples").glob("step-*.png"))  # grids drew too


def test_dreambooth_refuses_an_inpainting_model_before_any_work(inpainting_teacher, data, tmp_path):
    from bksdm_ext.train.dreambooth import dreambooth
    from test_dreambooth import config as dreambooth_config

    out = tmp_path / "db"
    with pytest.raises(BadInput, match="inpainting model; DreamBooth here trains text-to-image"):
        dreambooth(dreambooth_config(inpainting_teacher, data, out))
    assert not out.exists()
