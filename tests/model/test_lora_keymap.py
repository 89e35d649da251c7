"""The LoRA key map: teacher LoRAs of every network type A1111's Lora extension handles, in
both namings, SD-v1 and SD-v2, land module by module on the student module the block map
says -- the map written out below (docs/facts.md §3), not computed by the code under test;
student LoRAs stay where they are; LoRAs of another family or of no known layout are refused."""
import re
from dataclasses import replace
from functools import lru_cache
from typing import Dict, Optional, Tuple

import pytest
import torch

from bksdm_ext.errors import BadInput
from bksdm_ext.model.arch import PRESETS, TEACHER, Architecture
from bksdm_ext.model.blocks import removal_from_units
from bksdm_ext.model.lora_keymap import (LoraFile, LoraMismatch, ModelModules, layout_metadata,
                                         plan_lora)
from tiny import TINY, ldm_unet

# Teacher index -> student index of input_blocks/output_blocks (docs/facts.md §3); a teacher
# block that is not listed is removed.  "middle": whether the student keeps middle_block.
SMALL_INPUT = {0: 0, 1: 1, 3: 2, 4: 3, 6: 4, 7: 5, 9: 6, 10: 7}
SMALL_OUTPUT = {0: 0, 2: 1, 3: 2, 5: 3, 6: 4, 8: 5, 9: 6, 11: 7}
ALL = {i: i for i in range(12)}
BLOCK_MAPS = {
    "base": {"input_blocks": SMALL_INPUT, "output_blocks": SMALL_OUTPUT, "middle": True},
    "small": {"input_blocks": SMALL_INPUT, "output_blocks": SMALL_OUTPUT, "middle": False},
    "tiny": {"input_blocks": {0: 0, 1: 1, 3: 2, 4: 3, 6: 4, 7: 5},
             "output_blocks": {3: 0, 5: 1, 6: 2, 8: 3, 9: 4, 11: 5}, "middle": False},
    "mid-removed": {"input_blocks": ALL, "output_blocks": ALL, "middle": False},
    # custom: layer 1 of down stage 1 (input_blocks.5) and of the up stage of resolution 1
    # (output_blocks.7) removed
    "down.1.1,up.1.1": {"input_blocks": {0: 0, 1: 1, 2: 2, 3: 3, 4: 4, 6: 5, 7: 6, 8: 7, 9: 8,
                                         10: 9, 11: 10},
                        "output_blocks": {0: 0, 1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6, 8: 7, 9: 8,
                                          10: 9, 11: 10}, "middle": True},
}
FAMILIES = ("sd-v1", "sd-v2")


def student_arch(family: str, name: str) -> Architecture:
    teacher = TINY[family]
    removal = PRESETS[name] if name in PRESETS else removal_from_units(teacher, name)
    return Architecture(teacher, removal)


def expected_target(teacher_module: str, name: str) -> Optional[str]:
    """The student module (underscore name) a teacher module (underscore name) becomes."""
    block_map = BLOCK_MAPS[name]
    match = re.match(r"(input_blocks|output_blocks)_(\d+)(_.*)?$", teacher_module)
    if match:
        index = block_map[match.group(1)].get(int(match.group(2)))
        return None if index is None else "%s_%d%s" % (match.group(1), index, match.group(3) or "")
    if teacher_module.startswith("middle_block_"):
        return teacher_module if block_map["middle"] else None
    return teacher_module  # time_embed, out: every student has them


def a1111_compvis(name: str) -> str:
    """What A1111 1.10.1's convert_diffusers_name_to_compvis makes of a kohya diffusers-style
    U-Net module name (without lora_unet_), written out from its rules; other names unchanged."""
    resnet = {"conv1": "in_layers_2", "conv2": "out_layers_3", "norm1": "in_layers_0",
              "norm2": "out_layers_0", "time_emb_proj": "emb_layers_1",
              "conv_shortcut": "skip_connection"}
    rules = [
        (r"conv_in(.*)", lambda m: "input_blocks_0_0" + m[1]),
        (r"conv_out(.*)", lambda m: "out_2" + m[1]),
        (r"time_embedding_linear_(\d+)(.*)", lambda m: "time_embed_%d%s" % (int(m[1]) * 2 - 2, m[2])),
        (r"down_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", lambda m: "input_blocks_%d_%d_%s" % (
            1 + int(m[1]) * 3 + int(m[3]), m[2] == "attentions",
            resnet.get(m[4], m[4]) if m[2] == "resnets" else m[4])),
        (r"mid_block_(attentions|resnets)_(\d+)_(.+)", lambda m: "middle_block_%d_%s" % (
            1 if m[1] == "attentions" else int(m[2]) * 2,
            resnet.get(m[3], m[3]) if m[1] == "resnets" else m[3])),
        (r"up_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", lambda m: "output_blocks_%d_%d_%s" % (
            int(m[1]) * 3 + int(m[3]), m[2] == "attentions",
            resnet.get(m[4], m[4]) if m[2] == "resnets" else m[4])),
        (r"down_blocks_(\d+)_downsamplers_0_conv", lambda m: "input_blocks_%d_0_op" % (3 + int(m[1]) * 3)),
        (r"up_blocks_(\d+)_upsamplers_0_conv", lambda m: "output_blocks_%d_%d_conv" % (
            2 + int(m[1]) * 3, 2 if int(m[1]) > 0 else 1)),
    ]
    for pattern, rewrite in rules:
        match = re.match(pattern, name)
        if match:
            return rewrite(match)
    return name


@lru_cache(maxsize=None)
def ldm_modules(arch: Architecture) -> Dict[str, torch.nn.Module]:
    """Weight-bearing modules of the real LDM UNetModel of `arch`, by LDM path."""
    return {n: m for n, m in ldm_unet(arch).named_modules() if getattr(m, "weight", None) is not None}


@lru_cache(maxsize=None)
def diffusers_modules(arch: Architecture) -> Dict[str, torch.nn.Module]:
    """Weight-bearing modules of diffusers' own UNet2DConditionModel: kohya's names."""
    from diffusers import UNet2DConditionModel

    model = UNet2DConditionModel(**arch.diffusers_config())
    return {n: m for n, m in model.named_modules() if getattr(m, "weight", None) is not None}


def model_modules(arch: Architecture) -> ModelModules:
    return ModelModules({n: tuple(m.weight.shape) for n, m in ldm_modules(arch).items()})


def _linear(m):
    return isinstance(m, torch.nn.Linear)


def _weighted(m):
    return isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))


def _norm(m):
    return isinstance(m, (torch.nn.GroupNorm, torch.nn.LayerNorm))


def _lora(w, m):
    conv = len(w) == 4
    return {"lora_down.weight": (4, w[1]) + tuple(w[2:]), "alpha": (),
            "lora_up.weight": (w[0], 4) + ((1, 1) if conv else ())}


def _lokr(w, m):
    return {"lokr_w1": (2, 2), "lokr_w2": (w[0] // 2, w[1] // 2) + tuple(w[2:]), "alpha": ()}


# Network type -> (which modules it is made for, its parts' shapes for a weight shape `w`):
# every type A1111 1.10.1's Lora extension handles (networks.module_types).
NETWORK_TYPES = {
    "lora": (_weighted, _lora),
    "locon-cp": (lambda m: isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3),
                 lambda w, m: {"lora_down.weight": (4, w[1], 1, 1), "lora_mid.weight": (4, 4, 3, 3),
                               "lora_up.weight": (w[0], 4, 1, 1), "alpha": ()}),
    "lora-ab": (_linear, lambda w, m: {"lora_A.weight": (4, w[1]), "lora_B.weight": (w[0], 4)}),
    "loha": (_weighted, lambda w, m: {"hada_w1_a": (w[0], 4), "hada_w1_b": (4, int(torch.tensor(w[1:]).prod())),
                                      "hada_w2_a": (w[0], 4), "hada_w2_b": (4, int(torch.tensor(w[1:]).prod())),
                                      "alpha": ()}),
    "loha-cp": (lambda m: isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3),
                lambda w, m: {"hada_t1": (4, 4, 3, 3), "hada_w1_a": (4, w[0]), "hada_w1_b": (4, w[1]),
                              "hada_t2": (4, 4, 3, 3), "hada_w2_a": (4, w[0]), "hada_w2_b": (4, w[1])}),
    "lokr": (_weighted, _lokr),
    "ia3": (_linear, lambda w, m: {"weight": (w[0],), "on_input": ()}),
    "oft": (_linear, lambda w, m: {"oft_blocks": (4, w[0] // 4, w[0] // 4), "alpha": ()}),
    "oft-diag": (_linear, lambda w, m: {"oft_diag": (w[0] // 4, 4, 4)}),
    "glora": (_linear, lambda w, m: {"a1.weight": (4, w[1]), "a2.weight": (w[1], 4), "alpha": (),
                                     "b1.weight": (4, w[1]), "b2.weight": (w[0], 4)}),
    "full": (lambda m: True, lambda w, m: {"diff": tuple(w), "diff_b": (w[0],)}),
    "norm": (_norm, lambda w, m: {"w_norm": tuple(w), "b_norm": tuple(w)}),
}


def teacher_lora(family: str, kind: str, naming: str, prefix: str = "lora_unet_"
                 ) -> Tuple[LoraFile, Dict[str, str]]:
    """A LoRA of one network type over every module of the teacher it can change, named as
    kohya (diffusers naming) or LDM (compvis) names them; and module key -> the teacher's
    LDM module (underscore name) A1111 resolves it to."""
    teacher = Architecture(TINY[family])
    modules = diffusers_modules(teacher) if naming == "diffusers" else ldm_modules(teacher)
    wanted, parts_of = NETWORK_TYPES[kind]
    shapes, teacher_module = {}, {}
    for name, module in modules.items():
        if not wanted(module):
            continue
        key = prefix + name.replace(".", "_")
        for part, shape in parts_of(tuple(module.weight.shape), module).items():
            shapes[key + "." + part] = shape
        teacher_module[key] = a1111_compvis(name.replace(".", "_"))
    return LoraFile("mylora", shapes), teacher_module


def save_lora(path, lora: LoraFile, seed: int = 0, scale: float = 0.1):
    """The file: random tensors of its shapes (alpha = rank, IA3 on the output side)."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in sorted(lora.shapes.items()):
        if key.endswith(".alpha"):
            state[key] = torch.tensor(4.0)
        elif key.endswith(".on_input"):
            state[key] = torch.tensor(False)
        else:
            state[key] = torch.randn(shape, generator=g) * scale
    save_file(state, str(path), metadata=lora.metadata or None)
    return path


@pytest.fixture(scope="module")
def students():
    return {(f, n): (student_arch(f, n), model_modules(student_arch(f, n)))
            for f in FAMILIES for n in BLOCK_MAPS}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", list(BLOCK_MAPS))
@pytest.mark.slow
def test_teacher_loras_of_every_type_and_naming_land_on_the_mapped_student_module(
        students, family, name):
    arch, modules = students[family, name]
    teacher_names = {n.replace(".", "_") for n in ldm_modules(Architecture(arch.teacher))}
    for kind in NETWORK_TYPES:
        for naming in ("diffusers", "compvis"):
            lora, teacher_module = teacher_lora(family, kind, naming)
            plan = plan_lora(lora, arch, modules)
            assert plan.layout.is_teacher
            placed = {k: t.replace(".", "_") for k, t in plan.targets.items()}
            # A1111 finds no teacher module for diffusers' conv_norm_out: nor does the student
            unplaced = sorted(k for k, t in teacher_module.items() if t not in teacher_names)
            assert plan.unplaced == unplaced
            assert unplaced == (["lora_unet_conv_norm_out"] if naming == "diffusers"
                                and kind in ("full", "norm") else [])
            expected = {k: expected_target(t, name) for k, t in teacher_module.items()
                        if k not in unplaced}
            assert placed == {k: t for k, t in expected.items() if t is not None}, (kind, naming)
            assert sorted(plan.removed) == sorted(k for k, t in expected.items() if t is None)
            dropped = sum(t is None for t in expected.values())
            assert plan.adapted == any(t != teacher_module[k] for k, t in expected.items())
            assert plan.note() == ("mylora — %d of %d modules target blocks this student does "
                                   "not have" % (dropped, len(teacher_module)))
            if kind == "lora" and name == "small":
                assert dropped > 0 and len(placed) > dropped


def test_kohya_oft_keys_land_like_lora_keys(students):
    arch, modules = students["sd-v1", "small"]
    lora, teacher_module = teacher_lora("sd-v1", "oft", "compvis", prefix="oft_unet_")
    plan = plan_lora(lora, arch, modules)
    assert {k: t.replace(".", "_") for k, t in plan.targets.items()} == {
        k: expected_target(t, "small") for k, t in teacher_module.items()
        if expected_target(t, "small") is not None}
    assert all(new.startswith("oft_unet_") for new in plan.new_names().values())


def student_lora(arch: Architecture, metadata: Dict[str, str]) -> LoraFile:
    """A LoRA made on the student itself: its own LDM module names (as train/lora.py writes)."""
    shapes = {}
    for name, module in ldm_modules(arch).items():
        if _weighted(module):
            for part, shape in _lora(tuple(module.weight.shape), module).items():
                shapes["lora_unet_" + name.replace(".", "_") + "." + part] = shape
    shapes["lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight"] = (32, 4)
    shapes["lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"] = (4, 32)
    return LoraFile("mine", shapes, metadata)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", list(BLOCK_MAPS))
@pytest.mark.parametrize("with_metadata", [True, False])
def test_student_loras_resolve_to_themselves(students, family, name, with_metadata):
    arch, modules = students[family, name]
    lora = student_lora(arch, layout_metadata(arch) if with_metadata else {})
    plan = plan_lora(lora, arch, modules)
    # mid-removed names every block as its teacher does: both layouts place the file alike
    assert plan.layout.kept() == arch.kept() or name == "mid-removed"
    assert not plan.adapted and plan.note() is None
    assert all(new == key for key, new in plan.new_names().items())
    assert len(plan.targets) == len(lora.unet_modules) and not plan.removed
    assert plan.text == ["lora_te_text_model_encoder_layers_0_self_attn_q_proj"]


def test_metadata_decides_where_shapes_fit_both_layouts(students):
    """input_blocks_1_1 and output_blocks_2_1 have the same widths in the teacher and in
    BK-Small, but output_blocks_2 is another teacher block than the student's."""
    arch, modules = students["sd-v1", "small"]
    small = student_lora(arch, {})
    shapes = {k: s for k, s in small.shapes.items() if k.startswith(
        ("lora_unet_input_blocks_1_1_proj_in.", "lora_unet_output_blocks_2_0_in_layers_2."))}
    teacher_made = plan_lora(LoraFile("x", shapes), arch, modules)
    assert teacher_made.layout.is_teacher  # no metadata: the teacher's layout comes first
    assert teacher_made.targets["lora_unet_output_blocks_2_0_in_layers_2"] == \
        "output_blocks.1.0.in_layers.2"
    student_made = plan_lora(LoraFile("x", shapes, layout_metadata(arch)), arch, modules)
    assert student_made.targets["lora_unet_output_blocks_2_0_in_layers_2"] == \
        "output_blocks.2.0.in_layers.2"


def test_a_student_lora_applies_to_its_teacher_through_the_same_map(students):
    arch, _ = students["sd-v1", "small"]
    teacher = Architecture(arch.teacher)
    plan = plan_lora(student_lora(arch, layout_metadata(arch)), teacher, model_modules(teacher))
    assert plan.adapted and not plan.removed
    assert plan.targets["lora_unet_input_blocks_2_0_op"] == "input_blocks.3.0.op"
    assert plan.targets["lora_unet_output_blocks_7_0_skip_connection"] == \
        "output_blocks.11.0.skip_connection"


def linear_lora(arch: Architecture, name: str) -> LoraFile:
    """A LoRA on every Linear of `arch`'s U-Net, LDM names."""
    return LoraFile(name, {"lora_unet_" + n.replace(".", "_") + "." + p: s
                           for n, m in ldm_modules(arch).items() if _linear(m)
                           for p, s in _lora(tuple(m.weight.shape), m).items()})


def other_family_lora() -> LoraFile:
    """A LoRA of an SD-v2-like model with 48-wide text conditioning (the tiny SD-v1's is 32)."""
    return linear_lora(Architecture(replace(TINY["sd-v2"], context_dim=48)), "v2lora")


def test_a_lora_of_the_other_family_is_refused(students):
    arch, modules = students["sd-v1", "small"]
    with pytest.raises(LoraMismatch, match="text conditioning 48 wide.*SD-v1 \\(32\\)"):
        plan_lora(other_family_lora(), arch, modules)
    with pytest.raises(BadInput, match="made for an SD-v2 model and this one is SD-v1"):
        plan_lora(student_lora(arch, {"bksdm.family": "sd-v2", "bksdm.preset": "small"}), arch,
                  modules)


@pytest.mark.parametrize("extra", [
    {"lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": (32, 4)},
    {"lora_unet_input_blocks_4_1_transformer_blocks_1_attn1_to_q.lora_up.weight": (64, 4)},
])
def test_an_sdxl_lora_is_refused(students, extra):
    arch, modules = students["sd-v1", "small"]
    lora = student_lora(arch, {})
    lora.shapes.update(extra)
    with pytest.raises(LoraMismatch, match="mine is an SDXL LoRA"):
        plan_lora(lora, arch, modules)


def test_a_file_that_fits_no_layout_is_refused_whole(students):
    arch, modules = students["sd-v1", "small"]
    lora, _ = teacher_lora("sd-v1", "lora", "compvis")
    # one module made for a 64-wide layer where every layout has a 32-wide one
    lora.shapes["lora_unet_input_blocks_1_1_proj_in.lora_up.weight"] = (64, 4)
    with pytest.raises(LoraMismatch) as refused:
        plan_lora(lora, arch, modules)
    message = str(refused.value)
    assert message.startswith("mylora fits no block layout of this model")
    assert "the teacher's blocks: 1 modules do not fit, e.g. " \
           "lora_unet_input_blocks_1_1_proj_in does not fit input_blocks.1.1.proj_in (32x32x1x1)" \
           in message
    assert "none of it is applied" in message and "BK-SDM 'small'" in message


def test_teacher_layout_is_the_teacher_itself_on_a_teacher():
    teacher = Architecture(TINY["sd-v1"])
    lora, teacher_module = teacher_lora("sd-v1", "lora", "diffusers")
    plan = plan_lora(lora, teacher, model_modules(teacher))
    assert not plan.adapted and plan.note() is None
    assert {k: t.replace(".", "_") for k, t in plan.targets.items()} == teacher_module
    assert plan.layout.removal == TEACHER


def test_the_project_writes_the_layout_into_its_loras_and_reads_it_back():
    from bksdm_ext.model.lora_keymap import declared_layout
    from bksdm_ext.train.lora import kohya_metadata

    for name in BLOCK_MAPS:
        arch = student_arch("sd-v1", name)
        metadata = kohya_metadata(arch, 16, "student.safetensors")
        assert declared_layout(metadata, arch.teacher).kept() == arch.kept()
        assert metadata["bksdm.family"] == "sd-v1" and metadata["ss_v2"] == "False"
    custom = kohya_metadata(student_arch("sd-v1", "down.1.1,up.1.1"), 16, "s.safetensors")
    assert custom["bksdm.preset"] == "custom" and custom["bksdm.removal"] == "down.1.1,up.1.1"
