"""Latent consistency distillation (``bksdm distill --objective lcm``) on tiny models (CPU):
the objective's pieces against their formulas written out here, exact resume, the student
and the LCM-LoRA file in A1111's terms, the recommendation in the metadata, samples drawn
with the LCM sampler."""
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from bksdm_ext.cli import build_parser, main
from bksdm_ext.demo import TINY_SD_V1, write_tiny_teacher
from bksdm_ext.errors import BadInput
from bksdm_ext.jobs.arguments import command_line
from bksdm_ext.jobs.events import read_events
from bksdm_ext.model.arch import PRESETS, Architecture
from bksdm_ext.model.convert import convert_checkpoint
from bksdm_ext.model.info import describe
from bksdm_ext.model.samplers import DEFAULT_CFG, DEFAULT_SAMPLER
from bksdm_ext.train import distill as distill_module
from bksdm_ext.train.distill import distill
from bksdm_ext.train.distill_config import DistillConfig
from bksdm_ext.train.lcm import (LORA_TARGETS, DDIMSolver, TargetNetwork, boundary_scalings,
                                 consistency_loss, lora_file, x0_and_eps)
from bksdm_ext.train.memory_plan import Settings, distill_peak_gib, distill_state_gib
from test_convert import ldm_from_yaml, load_file, unet_part
from test_distill import TINY_V2_V, assert_resumes_exactly, config, make_dataset, steps
from test_dreambooth import DIFFUSERS_PATTERNS, a1111_lora_target


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data") / "pairs")


def lcm(teacher: Path, data: Path, out: Path, **changes) -> DistillConfig:
    return config(teacher, data, out, **dict(dict(objective="lcm"), **changes))


def schedule() -> torch.Tensor:
    from diffusers import DDPMScheduler

    return DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                         beta_end=0.012).alphas_cumprod


# -- the objective's pieces, against the formulas ---------------------------------------


def test_boundary_conditions_are_the_consistency_models_and_the_lcm_samplers():
    timesteps = torch.tensor([0, 1, 19, 259, 999])
    c_skip, c_out = boundary_scalings(timesteps, 10.0)
    from diffusers import LCMScheduler

    sampler = LCMScheduler()
    for row, t in enumerate(timesteps.tolist()):
        scaled = 10.0 * t  # σ_data = 0.5: c_skip = σ²/((10t)² + σ²), c_out = 10t/√((10t)² + σ²)
        assert c_skip[row].item() == pytest.approx(0.25 / (scaled ** 2 + 0.25), rel=1e-6)
        assert c_out[row].item() == pytest.approx(scaled / math.sqrt(scaled ** 2 + 0.25), rel=1e-6)
        skip, out = sampler.get_scalings_for_boundary_condition_discrete(t)
        assert (c_skip[row].item(), c_out[row].item()) == pytest.approx((skip, out), rel=1e-5)
    assert (c_skip[0].item(), c_out[0].item()) == (1.0, 0.0)  # f(x, 0) = x
    assert c_skip.shape == (5, 1, 1, 1)


def test_the_ddim_solver_steps_over_the_skipped_grid():
    alphas = schedule()
    solver = DDIMSolver(alphas, 50)
    assert solver.skip == 20 and solver.timesteps.tolist() == [20 * i + 19 for i in range(50)]
    generator = torch.Generator().manual_seed(0)
    x0, eps = (torch.randn(3, 4, 2, 2, generator=generator) for _ in range(2))
    index = torch.tensor([0, 1, 49])
    stepped = solver.step(x0, eps, index)
    for row, i in enumerate(index.tolist()):
        previous = alphas[0] if i == 0 else alphas[20 * (i - 1) + 19]  # a at t_{n} = t_{n+k} - k
        expected = previous.sqrt() * x0[row] + (1 - previous).sqrt() * eps[row]
        assert torch.allclose(stepped[row], expected, atol=1e-6)
    for points in (0, 1001):
        with pytest.raises(BadInput, match="lcm-ddim-timesteps"):
            DDIMSolver(alphas, points)


@pytest.mark.parametrize("parameterization", ["eps", "v"])
def test_clean_latents_and_noise_are_recovered_from_either_prediction(parameterization):
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    generator = torch.Generator().manual_seed(1)
    latents, noise = (torch.randn(3, 4, 4, 4, generator=generator) for _ in range(2))
    t = torch.tensor([5, 500, 990])
    noisy = scheduler.add_noise(latents, noise, t)
    output = noise if parameterization == "eps" else scheduler.get_velocity(latents, noise, t)
    x0, eps = x0_and_eps(output, noisy, scheduler.alphas_cumprod, t, parameterization)
    assert torch.allclose(x0, latents, atol=1e-3) and torch.allclose(eps, noise, atol=1e-4)


def test_the_losses_are_pseudo_huber_and_l2():
    prediction, target = torch.tensor([0.0, 0.5, -2.0]), torch.tensor([0.0, 0.0, 1.0])
    c = 0.001
    huber = sum(math.sqrt(d * d + c * c) - c for d in (0.0, 0.5, -3.0)) / 3
    assert consistency_loss(prediction, target, "huber", c).item() == pytest.approx(huber, rel=1e-6)
    assert consistency_loss(prediction, target, "l2", c).item() == pytest.approx((0.25 + 9) / 3)


def test_the_target_network_follows_the_student_as_an_ema():
    student = torch.nn.Linear(2, 2)
    with torch.no_grad():
        student.weight.fill_(1.0)
        student.bias.fill_(0.0)
    target = TargetNetwork(student, 0.95)
    assert not any(p.requires_grad for p in target.model.parameters())
    with torch.no_grad():
        student.weight.fill_(3.0)
        student.bias.fill_(-1.0)
    target.update(student)  # θ⁻ ← μθ⁻ + (1 − μ)θ
    assert torch.allclose(target.model.weight, torch.full((2, 2), 0.95 * 1.0 + 0.05 * 3.0))
    assert torch.allclose(target.model.bias, torch.full((2,), 0.05 * -1.0))
    target.update(student)
    assert torch.allclose(target.model.weight,
                          torch.full((2, 2), 0.95 * (0.95 + 0.05 * 3.0) + 0.05 * 3.0))
    assert torch.equal(student.weight, torch.full((2, 2), 3.0))  # the student is untouched


def test_the_lcm_step_keeps_the_target_and_lora_memory_in_its_estimate():
    s = Settings(32, 2, True, False, "fp16", ema=True)
    params = 482_346_884  # BK-Small, docs/facts.md §1
    extra_state = distill_state_gib("sd-v1", "small", s, "lcm") - distill_state_gib("sd-v1", "small", s)
    assert extra_state == pytest.approx(params * 4 / 2 ** 30)  # the fp32 target network
    kd, lcm_peak = (distill_peak_gib("sd-v1", "small", 512, s, objective) for objective in ("kd", "lcm"))
    kd_activations = kd - distill_state_gib("sd-v1", "small", s)
    assert lcm_peak - kd == pytest.approx(extra_state + 0.5 * kd_activations)
    lora = distill_state_gib("sd-v1", "small", s, "lcm", lora=True)
    assert lora == pytest.approx((params * 4 + 859_520_964 * 2) / 2 ** 30 + 0.5)


# -- runs ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_an_lcm_run_trains_with_the_guided_teacher_and_exports_a_recommending_student(
        teacher, data, tmp_path, monkeypatch):
    drawn = []
    real_pipeline, real_images = distill_module.make_pipeline, distill_module.prompt_images

    def pipeline(unet, vae, info, sampler=DEFAULT_SAMPLER, **kwargs):
        drawn.append(sampler)
        return real_pipeline(unet, vae, info, sampler, **kwargs)

    def images(pipe, embeddings, negative, size, steps_, seed, cfg_scale=DEFAULT_CFG):
        drawn.append((steps_, cfg_scale))
        return real_images(pipe, embeddings, negative, size, steps_, seed, cfg_scale)

    monkeypatch.setattr(distill_module, "make_pipeline", pipeline)
    monkeypatch.setattr(distill_module, "prompt_images", images)
    out = tmp_path / "lcm"
    final = distill(lcm(teacher, data, out, steps=3, sample_every=3, sample_steps=3, lcm_steps=2,
                        sample_prompts=["a red circle"], lcm_feature_kd=0.5))
    start = read_events(out / "events.jsonl")[0]
    assert start["objective"] == "lcm" and start["lr"] == 1e-3
    assert start["lcm"]["w"] == [5.0, 15.0] and start["lcm"]["target"] == "EMA 0.95"
    assert start["lcm"]["recommended"] == "LCM, 2 steps, CFG 1"
    for e in steps(out):
        assert math.isfinite(e["loss"]) and e["feature_kd"] > 0
        assert e["loss"] == pytest.approx(e["consistency"] + 0.5 * e["feature_kd"], rel=1e-5)
    # The teacher's reference with the default sampler and CFG, the student with LCM, no CFG.
    assert drawn == [DEFAULT_SAMPLER, (3, DEFAULT_CFG), "lcm", (2, 1.0)]
    assert (out / "samples" / "step-0000003.png").is_file()
    assert final.name == "tiny-sd-v1-bk-small-lcm.safetensors"
    state, metadata = load_file(final)
    assert metadata["bksdm.objective"] == "lcm" and metadata["bksdm.distilled_steps"] == "3"
    assert (metadata["bksdm.recommended_sampler"], metadata["bksdm.recommended_steps"],
            metadata["bksdm.recommended_cfg"]) == ("LCM", "2", "1")
    ldm_from_yaml(final.with_suffix(".yaml")).load_state_dict(unet_part(state), strict=True)
    assert describe(final)["recommended"] == "LCM, 2 steps, CFG 1"
    kd_student = distill(config(teacher, data, tmp_path / "kd", steps=1))
    assert "recommended" not in describe(kd_student)
    assert load_file(kd_student)[1]["bksdm.objective"] == "kd"


@pytest.mark.slow
def test_resuming_an_lcm_run_repeats_its_losses_target_and_ema(teacher, data, tmp_path):
    split = assert_resumes_exactly(teacher, data, tmp_path, 2, objective="lcm", steps=4,
                                   save_every=2, ema=True, grad_accum=2)
    saved = torch.load(str(split / "checkpoints" / "step-0000004" / "train_state.pt"),
                       weights_only=True)
    assert {"student", "target", "ema", "optimizer", "generators"} <= set(saved)
    assert not all(torch.equal(saved["target"][k], saved["student"][k]) for k in saved["target"])


@pytest.mark.slow
def test_resuming_an_lcm_lora_run_repeats_its_losses(teacher, data, tmp_path):
    split = assert_resumes_exactly(teacher, data, tmp_path, 1, objective="lcm", lora_rank=4,
                                   steps=2, save_every=1)
    (kept,) = (split / "checkpoints" / "step-0000002").glob("lcm-lora-step-*.safetensors")
    lora, _ = load_file(kept)
    straight, _ = load_file(lora_file(tmp_path / "straight" / "tiny-sd-v1-bk-small-lcm.safetensors"))
    resumed, _ = load_file(lora_file(split / "tiny-sd-v1-bk-small-lcm.safetensors"))
    assert set(lora) == set(straight) and all(torch.equal(straight[k], resumed[k]) for k in straight)


@pytest.mark.slow
def test_two_processes_consistency_distil_one_student_with_ddp(teacher, data, tmp_path):
    """`accelerate launch --multi_gpu` on GPUs; on a CPU, torchrun's two gloo processes: the
    EMA target follows the same student in both."""
    import subprocess
    import sys

    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_port", "29533", "-m", "bksdm_ext", "distill", "--objective", "lcm",
               "--teacher", str(teacher), "--data", str(data), "--out", str(out), "--steps", "2",
               "--batch-size", "2", "--grad-accum", "1", "--resolution", "32",
               "--mixed-precision", "no", "--save-every", "0", "--sample-every", "0",
               "--log-every", "1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    events = read_events(out / "events.jsonl")
    assert events[0]["processes"] == 2 and events[0]["objective"] == "lcm"
    assert events[-1]["event"] == "done" and events[-1]["replicas_agree"] is True


@pytest.mark.slow
def test_a_v_prediction_teacher_distils_on_its_own_parameterization(tmp_path, data):
    teacher = tmp_path / "tiny-v2-v.safetensors"
    write_tiny_teacher(teacher, TINY_V2_V)
    out = tmp_path / "v"
    final = distill(lcm(teacher, data, out, preset="tiny", steps=2))
    start = read_events(out / "events.jsonl")[0]
    assert start["parameterization"] == "v" and all(math.isfinite(e["loss"]) for e in steps(out))
    assert load_file(final)[1]["bksdm.parameterization"] == "v"


def test_bad_lcm_settings_fail_before_anything_loads(teacher, data, tmp_path, monkeypatch):
    monkeypatch.setattr(distill_module, "load_unet", lambda *a: pytest.fail("loaded a model"))
    with pytest.raises(BadInput, match="lcm-w-min"):
        distill(lcm(teacher, data, tmp_path / "w", lcm_w_min=9.0, lcm_w_max=3.0))
    with pytest.raises(BadInput, match="needs --objective lcm"):
        distill(config(teacher, data, tmp_path / "kd", lora_rank=8))
    with pytest.raises(BadInput, match="lcm-steps"):
        distill(lcm(teacher, data, tmp_path / "s", lcm_steps=0))
    with pytest.raises(BadInput, match="lcm-ddim-timesteps"):
        distill(lcm(teacher, data, tmp_path / "d", lcm_ddim_timesteps=2000))


# -- LCM-LoRA in A1111's terms ------------------------------------------------------------


def _a1111_functional(module: torch.nn.Module, down: torch.Tensor, up: torch.Tensor,
                      scale: float) -> None:
    """A LoRA module applied without merging (A1111's ``lora_functional`` path, not in the
    stand-in): the layer's output plus up(down(x))·alpha/rank, the down as a layer like the
    module (a convolution keeps its kernel, stride and padding), the up 1×1."""
    if isinstance(module, torch.nn.Conv2d):
        def extra(x: torch.Tensor) -> torch.Tensor:
            hidden = torch.nn.functional.conv2d(x, down, stride=module.stride,
                                                padding=module.padding)
            return torch.nn.functional.conv2d(hidden, up)
    else:
        def extra(x: torch.Tensor) -> torch.Tensor:
            return x @ down.t() @ up.t()
    module.register_forward_hook(lambda m, inputs, output: output + extra(inputs[0]) * scale)


@pytest.mark.webui  # the A1111 stand-in's Lora extension needs gradio
@pytest.mark.slow
def test_the_lcm_lora_resolves_onto_the_student_in_a1111_and_merged_equals_unmerged(
        teacher, data, tmp_path, capsys):
    """The LoRA file in the A1111 stand-in's built-in Lora extension (its resolution and
    weight patching mirror 1.10.1's networks.py): every module lands on the student, by
    A1111's own lookup as by the extension's, and the output it gives equals the student
    the run exported with the adapters merged, and the adapters applied unmerged."""
    import sys

    from webui_env import load, standin_app, start_webui_with_lora

    base = tmp_path / "tiny-sd-v1-bk-small.safetensors"
    convert_checkpoint(teacher, base, "small", dtype="fp32")
    out = tmp_path / "lora"
    final = distill(lcm(teacher, data, out, lora_rank=4, steps=2, lr=1e-2, init_student=str(base)))
    done = read_events(out / "events.jsonl")[-1]
    assert done["output"] == str(final) and done["lora"] == str(lora_file(final))
    lora_path = Path(done["lora"])
    assert lora_path.name == "tiny-sd-v1-bk-small-lcm-lora.safetensors"
    lora, metadata = load_file(lora_path)
    assert metadata["ss_network_dim"] == "4" and metadata["bksdm.lora_base"] == base.name
    assert metadata["bksdm.preset"] == "small" and metadata["bksdm.recommended_sampler"] == "LCM"
    assert describe(lora_path)["recommended"] == "LCM, 4 steps, CFG 1"
    assert main(["info", str(lora_path)]) == 0
    shown = capsys.readouterr().out
    assert "LoRA for a BK-SDM small student (%s)" % base.name in shown
    assert "LCM, 4 steps, CFG 1" in shown

    modules = sorted({k.split(".")[0] for k in lora})
    assert modules and not any(name.startswith(DIFFUSERS_PATTERNS) for name in modules)
    student = UNet2DConditionModel_of("small")
    targeted = [n for n, _ in student.named_modules()
                if any(n == t or n.endswith("." + t) for t in LORA_TARGETS)]
    assert len(modules) == len(targeted)  # an adapter on every module the targets name
    assert all(lora[m + ".lora_up.weight"].abs().max() > 0 for m in modules)  # all trained

    folder, loras = start_webui_with_lora(tmp_path / "webui")
    try:
        shutil.copy(base, folder / base.name)
        shutil.copy(base.with_suffix(".yaml"), folder / base.with_suffix(".yaml").name)
        shutil.copy(lora_path, loras / lora_path.name)
        networks = sys.modules["networks"]
        networks.list_available_networks()
        model = load(folder / base.name)
        unet = model.model.diffusion_model
        names = {id(m): "diffusion_model_" + n.replace(".", "_") for n, m in unet.named_modules()}
        name = lora_path.stem
        plain = networks.load_network.bksdm_original(name, networks.available_networks[name])
        placed = {k: names.get(id(m.sd_module)) for k, m in plain.modules.items()}
        # A1111's own lookup finds every module, each on the module of its own name.
        assert sorted(placed) == [a1111_lora_target(m, sd2=False) for m in modules]
        assert all(placed[k] == k for k in placed)
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(2, 4, 16, 16, generator=generator)
        context = torch.randn(2, 77, 64, generator=generator)
        t = torch.tensor([999, 259])
        with torch.no_grad():
            plain_output = unet(x, t, context)
            networks.load_networks([name], [1.0], [1.0], [None])  # as <lora:name:1> does
            (net,) = networks.loaded_networks
            assert len(net.modules) == len(modules) and net.bksdm_note is None
            applied = unet(x, t, context)  # A1111 patches the weights in at the forward
    finally:
        standin_app.reset(tmp_path / "after")

    exported = ldm_from_yaml(final.with_suffix(".yaml"))
    exported.load_state_dict(unet_part(load_file(final)[0]), strict=True)
    unmerged = ldm_from_yaml(base.with_suffix(".yaml"))
    unmerged.load_state_dict(unet_part(load_file(base)[0]), strict=True)
    ldm_modules = {("diffusion_model." + n).replace(".", "_"): m
                   for n, m in unmerged.named_modules()}
    for module in modules:
        down, up = lora[module + ".lora_down.weight"], lora[module + ".lora_up.weight"]
        _a1111_functional(ldm_modules[a1111_lora_target(module, sd2=False)], down, up,
                          float(lora[module + ".alpha"]) / down.shape[0])
    with torch.no_grad():
        merged, functional = exported(x, t, context), unmerged(x, t, context)
    assert torch.allclose(applied, merged, atol=1e-4)
    assert torch.allclose(applied, functional, atol=1e-4)
    assert not torch.allclose(plain_output, applied, atol=1e-3)  # the LoRA changes the output


def UNet2DConditionModel_of(preset: str):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**Architecture(TINY_SD_V1, PRESETS[preset]).diffusers_config())


# -- command line and jobs ----------------------------------------------------------------


def test_the_cli_runs_an_lcm_lora_distillation_and_refuses_lora_on_kd(teacher, data, tmp_path,
                                                                       capsys):
    out = tmp_path / "cli"
    argv = ["distill", "--teacher", str(teacher), "--data", str(data), "--out", str(out),
            "--objective", "lcm", "--lora-rank", "4", "--steps", "1", "--batch-size", "2",
            "--grad-accum", "1", "--resolution", "32", "--mixed-precision", "no",
            "--save-every", "0", "--sample-every", "0", "--lcm-w-min", "6.5", "--lcm-w-max",
            "6.5", "--lcm-loss", "l2", "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert Path(result["output"]).is_file() and Path(result["config"]).is_file()
    assert Path(result["lora"]).is_file()
    start = read_events(out / "events.jsonl")[0]
    assert start["lcm"]["w"] == [6.5, 6.5] and start["lcm"]["loss"] == "l2"
    assert start["lr"] == 1e-4  # LCM-LoRA's own default
    code = main(["distill", "--teacher", str(teacher), "--data", str(data), "--out",
                 str(tmp_path / "kd"), "--lora-rank", "4"])
    assert code == 2 and "--objective lcm" in capsys.readouterr().err


def test_a_job_passes_the_lcm_settings_through_its_command_line():
    options = {"teacher": "t.safetensors", "data": "teacher:10", "out": "run", "objective": "lcm",
               "lora_rank": 8, "lcm_w_min": 3.0, "lcm_w_max": 3.0, "lcm_steps": 2,
               "lcm_feature_kd": 0.1, "lcm_loss": "l2"}
    args = build_parser().parse_args(["distill"] + command_line(options))
    assert (args.objective, args.lora_rank, args.lcm_w_min, args.lcm_w_max, args.lcm_steps,
            args.lcm_feature_kd, args.lcm_loss) == ("lcm", 8, 3.0, 3.0, 2, 0.1, "l2")
    cfg = DistillConfig(teacher="t", data="d", out="o", objective="lcm")
    assert cfg.learning_rate() == 8e-6 and DistillConfig(teacher="t", data="d", out="o"
                                                         ).learning_rate() == 5e-5


def test_each_lcm_setting_is_declared_once_with_its_help_and_the_cli_shows_it():
    import argparse

    from bksdm_ext.settings import declarations

    declared = {d.name: d for d in declarations(DistillConfig)}
    new = [name for name in declared if name.startswith("lcm_")] + ["objective", "lora_rank"]
    assert len(new) == 11
    (commands,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    helps = {a.dest: a.help for a in commands.choices["distill"]._actions}
    for name in new + ["lr"]:
        assert declared[name].help() and helps[name] == declared[name].help()
    assert "LCM 8e-06" in helps["lr"] and "LCM-LoRA 0.0001" in helps["lr"]


# -- few steps: the check of issue 26 -------------------------------------------------------

AGREEMENT_PROMPTS = ["a red circle on blue", "a green square", "a yellow star at night",
                     "an orange cat"]
SIZE = 16  # 8×8 latents: the tiny U-Nets' four stages still fit


class Agreement:
    """PSNR/SSIM against the teacher's 25-step images (DPM++ 2M Karras, CFG 7.5), on fixed
    prompts and seeds, through the generation path every part uses."""

    def __init__(self, teacher: Path) -> None:
        from bksdm_ext.model.checkpoint import Checkpoint
        from bksdm_ext.model.detect import inspect_checkpoint
        from bksdm_ext.model.loading import load_vae
        from bksdm_ext.model.text_encoding import text_encoder_fn

        ckpt = Checkpoint(teacher)
        self.info = inspect_checkpoint(ckpt)
        encode = text_encoder_fn(ckpt, self.info, torch.device("cpu"))
        self.embeddings, self.negative = encode(AGREEMENT_PROMPTS), encode([""])
        self.vae = load_vae(ckpt).eval()
        self.reference = self.images(teacher, DEFAULT_SAMPLER, 25, DEFAULT_CFG)

    def images(self, path: Path, sampler: str, steps_: int, cfg_scale: float):
        from bksdm_ext.model.checkpoint import Checkpoint
        from bksdm_ext.model.detect import inspect_checkpoint
        from bksdm_ext.model.generation import make_pipeline
        from bksdm_ext.model.loading import load_unet
        from bksdm_ext.train.samples import prompt_images

        model = Checkpoint(path)
        pipe = make_pipeline(load_unet(model, inspect_checkpoint(model)).eval(), self.vae,
                             self.info, sampler)
        return prompt_images(pipe, self.embeddings, self.negative, SIZE, steps_, 100, cfg_scale)

    def __call__(self, label: str, path: Path, sampler: str = "lcm", steps_: int = 4,
                 cfg_scale: float = 1.0):
        from bksdm_ext.scores.agreement import agreement

        figures = agreement(self.images(path, sampler, steps_, cfg_scale), self.reference)
        print("%-26s %-16s %2d steps  PSNR %.2f dB  SSIM %.3f"
              % (label, sampler, steps_, figures["psnr"], figures["ssim"]))
        return figures


@pytest.fixture(scope="module")
def few_steps(teacher, data, tmp_path_factory):
    """The tiny random teacher's reference images; the pruned Small student; a KD-only
    student and an LCM student trained from it with the same data, steps and batch, the
    guidance distilled at w = 6.5 (the teacher's CFG 7.5).  The run is short (40 steps), so
    its target follows the student faster than the paper's long runs need (μ = 0.5, not
    0.95: at 0.95 the target is still mostly the pruned student after 40 steps)."""
    folder = tmp_path_factory.mktemp("few-steps")
    pruned = folder / "tiny-sd-v1-bk-small.safetensors"
    convert_checkpoint(teacher, pruned, "small", dtype="fp32")
    common = dict(resolution=SIZE, steps=40, batch_size=4, lr=1e-3, log_every=20,
                  cache_dir=str(folder / "cache"), lcm_w_min=6.5, lcm_w_max=6.5)
    return dict(folder=folder, common=common, pruned=pruned, agreement=Agreement(teacher),
                kd=distill(config(teacher, data, folder / "kd", **common)),
                lcm=distill(lcm(teacher, data, folder / "lcm", lcm_target_decay=0.5, **common)))


@pytest.mark.slow
def test_few_step_lcm_samples_agree_with_the_teacher_better_than_before_and_than_kd(few_steps):
    """The issue's check on the CPU (about a minute with the fixture's two runs): the LCM
    student's 2- and 4-step LCM images against the teacher's 25-step ones, beside the student
    it started from and a KD-only student at the same steps, with the LCM sampler and, at 2
    steps, with its own sampler and CFG too (twice the U-Net passes).  The figures are
    printed (-s)."""
    score = few_steps["agreement"]
    for steps_, margin in ((2, 1.5), (4, 0.75)):
        before = score("pruned (before)", few_steps["pruned"], steps_=steps_)
        after = score("LCM student", few_steps["lcm"], steps_=steps_)
        assert after["psnr"] > before["psnr"] + margin and after["ssim"] > before["ssim"] + 0.01
        kd_only = score("KD-only student", few_steps["kd"], steps_=steps_)
        assert after["psnr"] > kd_only["psnr"] + 2.0 and after["ssim"] > kd_only["ssim"] + 0.03
    kd_own = score("KD-only student", few_steps["kd"], DEFAULT_SAMPLER, 2, DEFAULT_CFG)
    two_steps = score("LCM student", few_steps["lcm"], steps_=2)
    assert two_steps["psnr"] > kd_own["psnr"] + 1.0 and two_steps["ssim"] > kd_own["ssim"]
    # Reported only: at 4 steps DPM++ 2M with CFG on the KD student comes closer to the tiny
    # random teacher's 25 steps than 4 LCM steps do (the README says so).
    score("KD-only student", few_steps["kd"], DEFAULT_SAMPLER, 4, DEFAULT_CFG)


@pytest.mark.slow
def test_the_lcm_student_beats_the_teachers_lcm_lora_adapted_onto_it(few_steps, teacher, data):
    """The zero-training baseline a user would try first (about 45 s more): an LCM-LoRA
    trained on the teacher for as long, rewritten in the student's block layout
    (`bksdm lora-adapt`, what the WebUI does when a student is loaded) and applied onto the
    pruned student at strength 1 as A1111's Lora extension adds it (lora_merge)."""
    from bksdm_ext.model.checkpoint import Checkpoint
    from bksdm_ext.model.lora_adapt import adapt_lora
    from bksdm_ext.model.lora_merge import MergedLora
    from bksdm_ext.model.safetensors_io import tensor_out, write_safetensors

    folder, pruned = few_steps["folder"], few_steps["pruned"]
    teacher_run = distill(lcm(teacher, data, folder / "teacher-lora", preset="teacher",
                              lora_rank=16, **few_steps["common"]))
    adapted = folder / "teacher-lcm-lora-for-small.safetensors"
    report = adapt_lora(pruned, lora_file(teacher_run), adapted)
    assert report.placed > 0 and report.removed_blocks > 0 and report.unplaced == 0
    student, applied = Checkpoint(pruned), MergedLora(Checkpoint(pruned), Checkpoint(adapted), 1.0)
    assert applied.changed_keys()
    baked = folder / "tiny-sd-v1-bk-small-teacher-lcm-lora.safetensors"
    write_safetensors(baked, [tensor_out(k, applied.tensor(k), student.dtype(k))
                              for k in sorted(student.keys())], student.metadata)
    shutil.copy(str(pruned.with_suffix(".yaml")), str(baked.with_suffix(".yaml")))
    score = few_steps["agreement"]
    for steps_ in (2, 4):
        score("teacher + its LCM-LoRA", teacher_run, steps_=steps_)  # reported only
        baseline = score("student + teacher LCM-LoRA", baked, steps_=steps_)
        after = score("LCM student", few_steps["lcm"], steps_=steps_)
        assert after["psnr"] > baseline["psnr"] + 0.5 and after["ssim"] > baseline["ssim"]
