"""Block names and custom removals (issue #15): the notation, `convert --remove`, and
custom students that load strictly from their own yaml and compute what diffusers does."""
import json
import random
from pathlib import Path

import pytest
import torch

from bksdm_ext.cli import main
from bksdm_ext.errors import BadInput
from bksdm_ext.model.arch import PRESETS, SD_V1, TEACHER, Architecture
from bksdm_ext.model.blocks import describe_presets, notation, removal_from_units
from bksdm_ext.model.checkpoint import Checkpoint
from bksdm_ext.model.convert import convert_checkpoint
from bksdm_ext.model.detect import inspect_checkpoint
from bksdm_ext.model.unit_costs import UnitCosts
from test_convert import ldm_from_yaml, load_file, same_outputs, unet_part
from tiny import TINY, write_teacher

# The issue's notation for the presets, written out independently of the code.
PRESET_UNITS = {"base": "down.*.1,up.*.1", "small": "down.*.1,up.*.1,mid",
                "tiny": "down.*.1,up.*.1,mid,innermost", "mid-removed": "mid"}


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """One tiny teacher per family, written once for the module."""
    folder = tmp_path_factory.mktemp("teachers")
    return {family: write_teacher(folder, spec, name=family + ".safetensors")
            for family, spec in TINY.items()}


def random_removals(seed: int, count: int):
    """Unit lists drawn at random from everything a stage could lose; the invalid ones
    (a layer that would get the wrong channels) are drawn again."""
    rng = random.Random(seed)
    found = []
    while len(found) < count:
        units = []
        for stage in range(4):
            if rng.random() < 0.5:
                units += ["down.%d.%d" % (stage, rng.randrange(2)),
                          "up.%d.%d" % (stage, rng.randrange(3))]
        units += [u for u in ("mid", "innermost") if rng.random() < 0.4]
        try:
            removal = removal_from_units(SD_V1, ",".join(units))
        except BadInput:
            continue
        if removal is not TEACHER and units not in found:
            found.append(units)
    return [",".join(u) for u in found]


def test_presets_in_block_notation_are_the_issues():
    assert describe_presets(SD_V1) == PRESET_UNITS
    for name, units in PRESET_UNITS.items():
        assert removal_from_units(SD_V1, units) is PRESETS[name]
    assert removal_from_units(SD_V1, "mid", start=PRESETS["base"]) is PRESETS["small"]
    assert removal_from_units(SD_V1, "innermost", start=PRESETS["small"]) is PRESETS["tiny"]


@pytest.mark.parametrize("family", ["sd-v1", "sd-v2", "sd-v2-v"])
@pytest.mark.slow
def test_random_custom_students_load_strictly_from_their_yaml_and_match_diffusers(
        tmp_path, teachers, family):
    spec = TINY[family]
    teacher = teachers[family]
    costs = UnitCosts(Checkpoint(teacher), Architecture(spec))
    for i, units in enumerate(random_removals(seed=len(family), count=3)):
        out = tmp_path / ("custom-%d.safetensors" % i)
        report = convert_checkpoint(teacher, out, "teacher", dtype="fp32", remove=units)
        state, metadata = load_file(out)
        student = unet_part(state)
        info = inspect_checkpoint(Checkpoint(out))
        arch = info.arch
        assert notation(arch) == metadata.get("bksdm.removal", notation(arch))
        assert arch.kept() == Architecture(spec, removal_from_units(spec, units)).kept()
        # Spec, file and the model A1111 builds from the yaml agree on the size.
        ldm_unet = ldm_from_yaml(out.with_suffix(".yaml"))
        built = sum(p.numel() for p in ldm_unet.parameters())
        assert costs.student_params(arch) == report.student_unet_params == built, units
        assert sum(v.numel() for v in student.values()) == built
        ldm_unet.load_state_dict(student, strict=True)
        assert same_outputs(ldm_unet, arch, student, spec) <= 1e-4, units


@pytest.mark.parametrize("preset", list(PRESET_UNITS))
def test_a_preset_written_as_units_gives_the_same_bytes(tmp_path, teachers, preset):
    teacher = teachers["sd-v2-v"]
    by_name, by_units = tmp_path / "a.safetensors", tmp_path / "b" / "a.safetensors"
    by_units.parent.mkdir()
    assert main(["convert", str(teacher), "--arch", preset, "--out", str(by_name)]) == 0
    assert main(["convert", str(teacher), "--remove", PRESET_UNITS[preset],
                 "--out", str(by_units)]) == 0
    assert by_name.read_bytes() == by_units.read_bytes()
    assert by_name.with_suffix(".yaml").read_bytes() == by_units.with_suffix(".yaml").read_bytes()


def test_arch_plus_remove_starts_from_the_preset(tmp_path, teachers):
    teacher = teachers["sd-v1"]
    a, b = tmp_path / "a" / "s.safetensors", tmp_path / "b" / "s.safetensors"
    a.parent.mkdir(), b.parent.mkdir()
    convert_checkpoint(teacher, a, "small")
    convert_checkpoint(teacher, b, "base", remove="mid")
    assert a.read_bytes() == b.read_bytes()
    convert_checkpoint(teacher, b, "mid-removed", remove="down.0.0,up.0.1", overwrite=True)
    assert load_file(b)[1]["bksdm.removal"] == "down.0.0,up.0.1,mid"


@pytest.mark.parametrize("units, message", [
    ("down.1.2", "'down.1.2': down stages have layers 0-1"),
    ("down.7.0", "'down.7.0': this U-Net has stages 0-3"),
    ("left.1.1", "'left.1.1' is not a block name"),
    ("down.1.0,down.1.1,up.1.0,up.1.1", "down.1: every layer of the stage is removed"),
    ("down.2.1", "stage 2 removes 1 down and 0 up layers"),
    ("down.1.0,up.1.1", "down.1.1: made for 640 input channels, it would get 320"),
    ("down.1.1,up.1.0", "up.1.1: made for 1280 input channels, it would get 1920"),
])
def test_removals_that_cannot_work_are_refused_naming_the_unit(tmp_path, teachers, capsys, units,
                                                               message):
    teacher = teachers["sd-v1"]
    out = tmp_path / "x.safetensors"
    assert main(["convert", str(teacher), "--remove", units, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message.replace("640", "64").replace("320", "32").replace("1280", "128") \
        .replace("1920", "192") in err, err
    assert list(tmp_path.iterdir()) == []


def test_remove_alone_must_remove_something(tmp_path, teachers, capsys):
    teacher = teachers["sd-v1"]
    assert main(["convert", str(teacher), "--remove", " ", "--out",
                 str(tmp_path / "x.safetensors")]) == 2
    assert "removes nothing" in capsys.readouterr().err


def test_a_lost_yaml_is_rebuilt_from_the_recorded_removal(tmp_path):
    """down.0.0 + up.0.1 keeps teacher layers the canonical guess would not: only the
    metadata knows, and the weights still say how many."""
    from bksdm_ext.model.ldm_config import dump_config, model_config

    spec = TINY["sd-v2-v"]
    out = tmp_path / "custom.safetensors"
    convert_checkpoint(write_teacher(tmp_path, spec), out, "teacher", remove="down.0.0,up.0.1,mid")
    written = out.with_suffix(".yaml").read_text()
    out.with_suffix(".yaml").unlink()
    info = inspect_checkpoint(Checkpoint(out))
    assert notation(info.arch) == "down.0.0,up.0.1,mid"
    assert info.arch.down_layers(0) == (1,) and info.parameterization == "v"
    assert dump_config(model_config(info.arch)) == written  # what the WebUI writes back
    assert info.preset == "custom"


def test_info_blocks_lists_every_unit_with_its_parameters(tmp_path, teachers, capsys):
    spec = TINY["sd-v1"]
    teacher = teachers["sd-v1"]
    assert main(["info", "--blocks", str(teacher), "--json"]) == 0
    rows = {r["unit"]: r for r in json.loads(capsys.readouterr().out)["units"]}
    assert len(rows) == 4 * 2 + 1 + 4 * 3 + 1 and all(r["kept"] for r in rows.values())
    # A unit's parameters are what a student without it lacks.
    ckpt = Checkpoint(teacher)
    costs = UnitCosts(ckpt, Architecture(spec))
    full = costs.student_params(Architecture(spec))
    for units, removed in [("mid", ["mid"]), ("down.2.1,up.2.1", ["down.2.1", "up.2.1"]),
                           ("innermost", ["innermost"])]:
        student = Architecture(spec, removal_from_units(spec, units))
        assert full - costs.student_params(student) == sum(rows[u]["params"] for u in removed)
    out = tmp_path / "s.safetensors"
    convert_checkpoint(teacher, out, "base", remove="mid")
    assert main(["info", "--blocks", str(out)]) == 0
    text = capsys.readouterr().out
    assert "small, removed: down.*.1,up.*.1,mid" in text
    assert any(line.split()[:2] == ["down.2.1", "no"] for line in text.splitlines())


@pytest.mark.parametrize("family", ["sd-v1", "sd-v2-v"])
@pytest.mark.slow
def test_step_flops_are_what_torch_counts(teachers, family):
    """The FLOPs estimate (from tensor shapes alone) against torch's own FLOP counter on
    the diffusers model of the same student."""
    FlopCounterMode = pytest.importorskip(  # torch >= 2.1 (the Jetson stack has 2.0)
        "torch.utils.flop_counter").FlopCounterMode
    from diffusers import UNet2DConditionModel

    from bksdm_ext.model.unit_costs import CONTEXT_TOKENS

    spec = TINY[family]
    costs = UnitCosts(Checkpoint(teachers[family]), Architecture(spec))
    for units in ["", "down.*.1,up.*.1,mid,innermost"] + random_removals(seed=3, count=2):
        arch = Architecture(spec, removal_from_units(spec, units))
        side = spec.sample_size
        with torch.device("meta"):
            unet = UNet2DConditionModel(**arch.diffusers_config())
            with FlopCounterMode(display=False) as counter:
                unet(torch.randn(1, 4, side, side), torch.tensor([10]),
                     encoder_hidden_states=torch.randn(1, CONTEXT_TOKENS, spec.context_dim))
        assert costs.student_flops(arch) == pytest.approx(counter.get_total_flops(), rel=1e-9)
