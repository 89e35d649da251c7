"""The LCM sampler the extension adds to A1111 1.6 (1.8 and later have their own): the
arithmetic of A1111 1.10.1's ``sd_samplers_lcm`` (LCM's 50 timesteps, a linear schedule over
them, the boundary conditions at 10·t), written out here; registered only where A1111 lacks
one; and in txt2img it draws in the steps asked for with the image's seeded noise."""
import math
from pathlib import Path

import pytest
import torch

from bksdm_ext.model.convert import convert_checkpoint
from bksdm_ext.webui import lcm_sampler
from tiny import TINY, write_teacher
from webui_env import load, standin_app, start_webui


class Schedule:
    """An ldm model's noise schedule: SD's scaled-linear betas 0.00085-0.012."""

    def __init__(self):
        betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
        self.alphas_cumprod = torch.cumprod(1 - betas, 0).float()
        self.seen = []

    def apply_model(self, x, t, **kwargs):
        self.seen.append(t.clone())
        return torch.full_like(x, 0.3)  # the "predicted noise"


def sigma_at(schedule: Schedule, timestep: int) -> float:
    alpha = float(schedule.alphas_cumprod[timestep])
    return math.sqrt((1 - alpha) / alpha)


def test_the_schedule_is_lcms_50_timesteps_spaced_linearly():
    schedule = Schedule()
    denoiser = lcm_sampler.LCMDenoiser(schedule)
    timesteps = [999 - 20 * k for k in range(50)]  # 999, 979, ..., 19
    assert torch.allclose(denoiser.get_sigmas(50), torch.tensor(
        [sigma_at(schedule, t) for t in timesteps] + [0.0]), rtol=1e-5)
    assert torch.allclose(denoiser.get_sigmas(2), torch.tensor(
        [sigma_at(schedule, 999), sigma_at(schedule, 19), 0.0]), rtol=1e-5)
    # 4 steps: timesteps 999, 672.33, 345.67, 19: between two of the 50, log-linearly
    index = (672 + 1 / 3 - 19) / 20  # 32.67 of the 50
    low, high, w = 32, 33, index - 32
    expected = math.exp((1 - w) * math.log(sigma_at(schedule, 19 + 20 * low)) +
                        w * math.log(sigma_at(schedule, 19 + 20 * high)))
    assert float(denoiser.get_sigmas(4)[1]) == pytest.approx(expected, rel=1e-4)
    assert denoiser.sigma_to_t(denoiser.get_sigmas(50)[:-1]).tolist() == timesteps


def test_the_output_is_the_consistency_function_of_the_predicted_x0():
    """c_skip(t)·x + c_out(t)·x0 with x0 = x - σ·ε, c_skip = σd²/((10t)² + σd²),
    c_out = 10t/√((10t)² + σd²), σd = 0.5; the U-Net gets x/√(σ²+1) at t."""
    schedule = Schedule()
    denoiser = lcm_sampler.LCMDenoiser(schedule)
    for timestep in (19, 499, 999):
        sigma = sigma_at(schedule, timestep)
        x = torch.linspace(-2, 2, 2 * 4 * 8 * 8).view(2, 4, 8, 8)
        out = denoiser(x, torch.full([2], sigma))
        scaled = 10.0 * timestep
        c_skip = 0.25 / (scaled ** 2 + 0.25)
        c_out = scaled / math.sqrt(scaled ** 2 + 0.25)
        assert torch.allclose(out, c_skip * x + c_out * (x - sigma * 0.3), atol=1e-5)
        assert schedule.seen[-1].tolist() == [timestep, timestep]


def test_each_step_is_the_denoised_latent_plus_fresh_noise_at_the_next_sigma():
    sigmas = torch.tensor([3.0, 1.0, 0.0])
    noises = iter([torch.full([1, 1], 10.0)])
    seen = []

    def model(x, sigma):
        seen.append((x.clone(), float(sigma[0])))
        return x * 0.5

    out = lcm_sampler.sample_lcm(model, torch.ones(1, 1), sigmas, disable=True,
                                 noise_sampler=lambda s, n: next(noises))
    assert [s for _, s in seen] == [3.0, 1.0]
    assert float(seen[1][0]) == 0.5 + 1.0 * 10.0 and float(out) == (0.5 + 10.0) * 0.5


@pytest.fixture
def a1111_1_6_samplers():
    """The stand-in's sampler list as A1111 1.6 has it: no "LCM" (1.8.0 added it)."""
    from modules import sd_samplers

    saved = sd_samplers.all_samplers, sd_samplers.all_samplers_map
    sd_samplers.all_samplers = [s for s in saved[0] if s.name != "LCM"]
    sd_samplers.all_samplers_map = {s.name: s for s in sd_samplers.all_samplers}
    sd_samplers.set_samplers()
    yield sd_samplers
    sd_samplers.all_samplers, sd_samplers.all_samplers_map = saved
    sd_samplers.set_samplers()


@pytest.fixture
def student(tmp_path):
    folder = start_webui(tmp_path / "webui")
    teacher = write_teacher(folder, TINY["sd-v1"])
    yield Path(convert_checkpoint(teacher, folder / "student.safetensors", "small",
                                  dtype="fp32").output)
    standin_app.reset(tmp_path / "after")


def test_on_a1111_1_6_the_extension_adds_lcm_and_on_1_10_leaves_a1111s(tmp_path,
                                                                      a1111_1_6_samplers):
    sd_samplers = a1111_1_6_samplers
    assert "LCM" not in sd_samplers.visible_sampler_names()
    start_webui(tmp_path / "webui-1.6")  # loads the extension's script
    assert sd_samplers.visible_sampler_names()[-1] == "LCM"
    assert sd_samplers.samplers_map["k_lcm"] == "LCM"
    assert sd_samplers.all_samplers_map["LCM"].constructor is lcm_sampler._sampler
    assert lcm_sampler.register() is False  # a second load adds no second LCM
    assert [s.name for s in sd_samplers.all_samplers].count("LCM") == 1


def test_on_a1111_1_10_its_own_lcm_stays(tmp_path):
    from modules import sd_samplers

    own = sd_samplers.all_samplers_map["LCM"]
    start_webui(tmp_path / "webui-1.10")
    assert sd_samplers.all_samplers_map["LCM"] is own
    assert [s.name for s in sd_samplers.all_samplers].count("LCM") == 1
    standin_app.reset(tmp_path / "after")


def test_txt2img_with_lcm_on_1_6_runs_the_steps_asked_with_each_images_seeded_noise(
        a1111_1_6_samplers, student):
    """4 steps are 4 U-Net calls at LCM's timesteps; an image is the same made alone or in a
    batch (its noise between steps comes from its seed, as A1111 gives every sampler)."""
    from modules import processing

    lcm_sampler.register()
    model = load(student)
    calls = []
    original = model.apply_model
    model.apply_model = lambda x, t, *a, **k: (calls.append(t.tolist()), original(x, t, *a, **k))[1]

    def draw(seed, batch_size):
        p = processing.StableDiffusionProcessingTxt2Img(
            prompt="a cat", steps=4, width=32, height=32, batch_size=batch_size, seed=seed,
            sampler_name="LCM", cfg_scale=1.5, do_not_save_samples=True, do_not_save_grid=True)
        return processing.process_images(p)

    batch = draw(7, 2)
    assert "Sampler: LCM" in batch.infotexts[0] and "Steps: 4" in batch.infotexts[0]
    # one CFG batch per step, at the nearest of the 50 timesteps to 999, 672.3, 345.7, 19
    assert [t[0] for t in calls] == [999, 679, 339, 19]
    calls.clear()
    alone = draw(8, 1)
    assert len(calls) == 4
    pixels = [torch.tensor(list(image.getdata()), dtype=torch.float32)
              for image in (batch.images[1], alone.images[0], batch.images[0])]
    assert torch.equal(pixels[0], pixels[1])
    assert not torch.equal(pixels[0], pixels[2])
