"""The block sensitivity scan (issue #15 item 3) on a tiny random teacher."""
import csv
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from bksdm_ext.cli import main
from bksdm_ext.demo import write_tiny_teacher
from bksdm_ext.jobs.events import read_events
from bksdm_ext.measure import block_scan

# down.0.1 (LDM input_blocks.2) made a no-op: a resnet whose residual branch ends in zeros
# is the identity (same width), and so is an attention block whose proj_out is zero.
NO_OP_UNIT = "down.0.1"
ZEROED = ("model.diffusion_model.input_blocks.2.0.out_layers.3.",
          "model.diffusion_model.input_blocks.2.1.proj_out.")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    path = tmp_path_factory.mktemp("scan") / "tiny-sd-v1.safetensors"
    write_tiny_teacher(path)
    state = load_file(str(path))
    for key in state:
        if key.startswith(ZEROED):
            state[key] = torch.zeros_like(state[key])
    save_file(state, str(path))
    return path


@pytest.fixture
def one_thread():
    """A tiny U-Net is dominated by thread hand-offs on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_scan_ranks_every_unit_and_writes_table_and_chart(teacher, tmp_path, one_thread, capsys,
                                                          monkeypatch):
    out = tmp_path / "job"
    argv = ["blocks", str(teacher), "--steps", "2", "--size", "32", "--cache-dir",
            str(tmp_path / "cache"), "--out", str(out), "--json"]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n\na blue square\n")
    assert main(argv + ["--prompts", str(prompts)]) == 0
    result = json.loads(capsys.readouterr().out)
    rows = {r["unit"]: r for r in result["rows"]}
    singles = ["down.%d.%d" % (s, l) for s in range(4) for l in range(2)] + ["mid"] + \
        ["up.%d.%d" % (s, l) for s in range(4) for l in range(3)] + ["innermost"]
    pairs = ["down.%d.1,up.%d.1" % (s, s) for s in range(4)]
    assert sorted(rows) == sorted(singles + pairs)
    assert result["settings"]["prompts"] == ["a red circle", "a blue square"]
    assert math.isinf(rows[NO_OP_UNIT]["psnr"]) and rows[NO_OP_UNIT]["ssim"] == 1.0
    for unit, row in rows.items():
        if unit != NO_OP_UNIT:
            assert row["ssim"] < 1.0 and math.isfinite(row["psnr"]), unit
    assert rows["mid"]["how"] == rows["innermost"]["how"] == rows[pairs[1]]["how"] == "removed"
    assert rows["down.1.0"]["how"] == rows["up.2.1"]["how"] == "stand-in"
    assert rows["innermost"]["params"] > rows["down.3.0"]["params"] > 0
    ranked = [r["ssim"] for r in result["rows"]]
    assert ranked == sorted(ranked)
    with open(out / "blocks.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    assert (out / "blocks.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    events = read_events(out / "events.jsonl")
    assert events[-1]["event"] == "done" and events[-1]["output"] == str(out / "blocks.png")
    assert [e["step"] for e in events if e["event"] == "step"][-1] == len(rows)
    assert events[0]["event"] == "start" and events[0]["total_steps"] == len(rows)

    # Cached per teacher hash and settings: the same scan does not render again.
    monkeypatch.setattr(block_scan, "scan", lambda *a, **k: pytest.fail("scanned again"))
    assert main(argv[:-3] + ["--prompts", str(prompts), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == result["rows"]


def test_channel_interpolation_stand_in_keeps_the_identity_and_resizes():
    same = block_scan.ChannelInterpolation(8, 8)
    x = torch.randn(2, 8, 3, 3)
    assert same(x, None) is x
    wider = block_scan.ChannelInterpolation(4, 7)(torch.arange(4.0).view(1, 4, 1, 1), None)
    assert torch.allclose(wider.flatten(), torch.linspace(0, 3, 7))


def test_a_missing_teacher_is_refused(tmp_path, capsys):
    assert main(["blocks", str(tmp_path / "nope.safetensors")]) == 2
    assert "no such file" in capsys.readouterr().err
