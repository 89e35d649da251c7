"""A real effect, on tiny models on the CPU, through the stand-in's A1111 Lora code: a LoRA Δ
made for a teacher T, on a student S distilled from T, moves S toward T+Δ (U-Net output error
on fixed noise) clearly more than S alone; A1111's own teacher-numbered resolution does not."""
import shutil

import pytest
import torch

from bksdm_ext.model.arch import Architecture
from bksdm_ext.demo import prompt_embeddings
from bksdm_ext.model.checkpoint import Checkpoint
from bksdm_ext.model.detect import inspect_checkpoint
from bksdm_ext.model.loading import load_text_encoder
from bksdm_ext.model.lora_keymap import LoraFile
from bksdm_ext.train.distill import distill
from test_distill import config, make_dataset
from test_lora_keymap import diffusers_modules, save_lora
from webui_env import load, standin_app, start_webui_with_lora


def attention_lora(teacher: Architecture) -> LoraFile:
    """Δ: rank-4 on every Linear of the teacher's attention blocks, kohya's diffusers names."""
    shapes = {}
    for name, module in diffusers_modules(teacher).items():
        if ".attentions." in name and isinstance(module, torch.nn.Linear):
            key = "lora_unet_" + name.replace(".", "_")
            shapes[key + ".lora_down.weight"] = (4, module.weight.shape[1])
            shapes[key + ".lora_up.weight"] = (module.weight.shape[0], 4)
            shapes[key + ".alpha"] = ()
    return LoraFile("delta", shapes)


def conditioning(teacher) -> torch.Tensor:
    """The teacher's own text encoder on the captions the student was distilled with."""
    ckpt = Checkpoint(teacher)
    text_encoder = load_text_encoder(ckpt, "sd-v1")
    captions = [p.read_text() for p in sorted(make_dataset(teacher.parent / "captions").glob("*.txt"))]
    return torch.cat([prompt_embeddings(text_encoder, c) for c in captions])


@torch.no_grad()
def unet_output(model, context: torch.Tensor, lora: bool) -> torch.Tensor:
    """The loaded U-Net's prediction on fixed noisy latents and timesteps, with the LoRA
    active or not (as a generation with or without <lora:delta:1> has it)."""
    import networks

    names = ["delta"] if lora else []
    networks.load_networks(names, [1.0] * len(names), [1.0] * len(names), [None] * len(names))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(len(context), 4, 16, 16, generator=g)
    t = torch.randint(0, 1000, (len(context),), generator=g)
    return model.apply_model(x, t, context)


@pytest.fixture
def webui(tmp_path):
    folder, loras = start_webui_with_lora(tmp_path / "webui")
    yield folder, loras
    standin_app.reset(tmp_path / "after")


@pytest.mark.slow
def test_an_adapted_teacher_lora_moves_the_student_toward_teacher_plus_lora(
        webui, teacher, tmp_path, monkeypatch):
    folder, loras = webui
    student = distill(config(teacher, make_dataset(tmp_path / "circles"), tmp_path / "s",
                             steps=10))
    for path in (teacher, student):
        shutil.copy(path, folder / path.name)
        shutil.copy(path.with_suffix(".yaml"), folder / path.with_suffix(".yaml").name)
    arch = inspect_checkpoint(Checkpoint(teacher)).arch
    save_lora(loras / "delta.safetensors", attention_lora(arch), scale=0.3)

    context = conditioning(teacher)
    t_model = load(folder / teacher.name)
    reference = unet_output(t_model, context, lora=True)  # T+Δ
    plain_teacher = unet_output(t_model, context, lora=False)
    s_model = load(folder / student.name)
    outputs = {"S": unet_output(s_model, context, lora=False),
               "S+Δ adapted": unet_output(s_model, context, lora=True)}
    unet_output(s_model, context, lora=False)  # the layers take their own weights back
    import networks

    monkeypatch.setattr(networks, "load_network", networks.load_network.bksdm_original)
    outputs["S+Δ teacher-numbered"] = unet_output(s_model, context, lora=True)
    error = {k: (v - reference).square().mean().item() for k, v in outputs.items()}
    wanted = (reference - plain_teacher).flatten()  # what Δ does to T
    agreement = {k: torch.nn.functional.cosine_similarity(
        (outputs[k] - outputs["S"]).flatten(), wanted, dim=0).item() for k in list(outputs)[1:]}
    print("\nU-Net output MSE against T+Δ: %s (T alone %.4f; S against T %.4f); cosine of the "
          "change Δ makes to S with the change it makes to T: %s" % (
              ", ".join("%s %.4f" % kv for kv in error.items()),
              (plain_teacher - reference).square().mean().item(),
              (outputs["S"] - plain_teacher).square().mean().item(),
              ", ".join("%s %.3f" % kv for kv in agreement.items())))
    # Δ's modules in removed blocks (84 of 192) cannot act, and S's kept blocks see other
    # inputs than T's: the adapted Δ gets part of the way; teacher numbering nearly none.
    gain = {k: error["S"] - error[k] for k in agreement}
    assert error["S+Δ adapted"] < 0.85 * error["S"], error
    assert gain["S+Δ adapted"] > 3 * gain["S+Δ teacher-numbered"], error
    assert agreement["S+Δ adapted"] > agreement["S+Δ teacher-numbered"] + 0.1, agreement
