"""The architecture spec against the paper's numbers and the official maps (docs/facts.md §1-4)."""
import pytest
import torch

from bksdm_ext.model.arch import (PRESETS, SD_V1, SD_V2_512, SD_V2_768_V, TEACHER, Architecture,
                            Removal)

# docs/facts.md §1: exact U-Net parameter counts.
PARAMS = {
    "sd-v1": {"teacher": 859_520_964, "mid-removed": 762_482_884, "base": 579_384_964,
              "small": 482_346_884, "tiny": 323_384_964},
    "sd-v2": {"teacher": 865_910_724, "mid-removed": 768_217_284, "base": 583_480_964,
              "small": 485_787_524, "tiny": 326_825_604},
}
FAMILIES = {"sd-v1": SD_V1, "sd-v2": SD_V2_768_V}


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _removal(name: str) -> Removal:
    return TEACHER if name == "teacher" else PRESETS[name]


@pytest.mark.parametrize("family", list(PARAMS))
@pytest.mark.parametrize("name", list(PARAMS["sd-v1"]))
@pytest.mark.slow
def test_parameter_counts_match_the_paper_in_both_frameworks(family, name):
    from diffusers import UNet2DConditionModel
    from ldm.modules.diffusionmodules.openaimodel import TimestepEmbedSequential, UNetModel

    arch = Architecture(FAMILIES[family], _removal(name))
    with torch.device("meta"):
        diffusers_unet = UNet2DConditionModel(**arch.diffusers_config())
        ldm_unet = UNetModel(**arch.ldm_unet_params())
        if not arch.removal.mid_block:
            ldm_unet.middle_block = TimestepEmbedSequential()
    assert _count(diffusers_unet) == PARAMS[family][name]
    assert _count(ldm_unet) == PARAMS[family][name]


def _index_map(arch: Architecture, part: str):
    pairs = set()
    for student, teacher in arch.weight_map():
        if student.ldm.startswith(part):
            pairs.add((int(student.ldm.split(".")[1]), int(teacher.ldm.split(".")[1])))
    return sorted(pairs)


# docs/facts.md §3, verified in a real A1111: student LDM block index <- teacher index.
LDM_MAPS = {
    "base": ([0, 1, 3, 4, 6, 7, 9, 10], [0, 2, 3, 5, 6, 8, 9, 11]),
    "small": ([0, 1, 3, 4, 6, 7, 9, 10], [0, 2, 3, 5, 6, 8, 9, 11]),
    "tiny": ([0, 1, 3, 4, 6, 7], [3, 5, 6, 8, 9, 11]),
    "mid-removed": (list(range(12)), list(range(12))),
}


@pytest.mark.parametrize("teacher", [SD_V1, SD_V2_512])
@pytest.mark.parametrize("name", list(LDM_MAPS))
def test_ldm_weight_map_is_the_official_one(teacher, name):
    arch = Architecture(teacher, PRESETS[name])
    inputs, outputs = LDM_MAPS[name]
    assert _index_map(arch, "input_blocks") == list(enumerate(inputs))
    assert _index_map(arch, "output_blocks") == list(enumerate(outputs))
    blocks = {b.ldm for b in arch.blocks}
    assert any(b.startswith("middle_block") for b in blocks) == (name == "base")


def test_upsamplers_keep_their_position_inside_the_block():
    pairs = {s.ldm: t.ldm for s, t in Architecture(SD_V1, PRESETS["small"]).weight_map()}
    assert pairs["output_blocks.1.1.conv"] == "output_blocks.2.1.conv"  # stage without attention
    assert pairs["output_blocks.3.2.conv"] == "output_blocks.5.2.conv"


def _official_diffusers_source(name: str, student_module: str) -> str:
    """docs/facts.md §3's official diffusers map, written out independently of the spec."""
    parts = student_module.split(".")
    if name in ("base", "small") and parts[0] == "up_blocks" and parts[3] == "1":
        parts[3] = "2"
    if name == "tiny" and parts[0] == "up_blocks":
        parts[1] = str(int(parts[1]) + 1)
        if len(parts) > 3 and parts[3] == "1" and parts[2] in ("resnets", "attentions"):
            parts[3] = "2"
    return ".".join(parts)


@pytest.mark.parametrize("name", ["base", "small", "tiny", "mid-removed"])
def test_diffusers_weight_map_is_the_official_one(name):
    for student, teacher in Architecture(SD_V1, PRESETS[name]).weight_map():
        assert teacher.diffusers == _official_diffusers_source(name, student.diffusers)


def test_feature_kd_pairs_are_the_official_ones():
    whole = [("down_blocks.%d" % i,) * 2 for i in range(4)] + [("up_blocks.%d" % i,) * 2
                                                               for i in range(4)]
    for name in ("base", "small"):
        assert sorted(Architecture(SD_V1, PRESETS[name]).feature_kd_pairs()) == sorted(whole)
    assert sorted(Architecture(SD_V2_512, PRESETS["tiny"]).feature_kd_pairs()) == sorted([
        ("down_blocks.0", "down_blocks.0"),
        ("down_blocks.1", "down_blocks.1"),
        ("down_blocks.2.attentions.1.proj_out", "down_blocks.2.attentions.0.proj_out"),
        ("up_blocks.1", "up_blocks.0"),
        ("up_blocks.2", "up_blocks.1"),
        ("up_blocks.3", "up_blocks.2"),
    ])


def test_feature_kd_modules_exist_in_both_nets_for_every_preset():
    from diffusers import UNet2DConditionModel

    for teacher in (SD_V1, SD_V2_512):
        with torch.device("meta"):
            full = dict(UNet2DConditionModel(**Architecture(teacher).diffusers_config())
                        .named_modules())
            for removal in PRESETS.values():
                arch = Architecture(teacher, removal)
                student = dict(UNet2DConditionModel(**arch.diffusers_config()).named_modules())
                for t, s in arch.feature_kd_pairs():
                    assert t in full and s in student, (removal.name, t, s)


def test_v2_presets_derive_from_the_v2_config():
    config = Architecture(SD_V2_768_V, PRESETS["tiny"]).diffusers_config()
    assert config["attention_head_dim"] == [5, 10, 20]
    assert config["block_out_channels"] == [320, 640, 1280]
    assert config["use_linear_projection"] and config["cross_attention_dim"] == 1024
    assert config["mid_block_type"] is None and config["sample_size"] == 96
    assert Architecture(SD_V1, PRESETS["base"]).ldm_unet_params()["num_res_blocks"] == 1


def test_a_custom_removal_is_data_not_code():
    # Tiny's stage cut but keeping the mid block: a new spec, nothing else.
    custom = Removal("tiny-with-mid", "test", down_layers=(0,), up_layers=(0, 2), stages=3)
    from diffusers import UNet2DConditionModel

    arch = Architecture(SD_V1, custom)
    with torch.device("meta"):
        unet = UNet2DConditionModel(**arch.diffusers_config())
    mid = sum(p.numel() for n, p in unet.named_parameters() if n.startswith("mid_block."))
    assert _count(unet) - mid == PARAMS["sd-v1"]["tiny"]
    assert mid > 0


@pytest.mark.parametrize("bad", [
    Removal("x", "", down_layers=(0,), up_layers=(0, 1)),   # drops the last up layer
    Removal("x", "", down_layers=(1, 0), up_layers=(0, 1, 2)),
    Removal("x", "", down_layers=(0,), up_layers=(0, 1, 2)),  # counts do not fit
    Removal("x", "", stages=5),
])
def test_invalid_removals_are_refused_with_the_reason(bad):
    with pytest.raises(ValueError, match="not valid"):
        Architecture(SD_V1, bad)
