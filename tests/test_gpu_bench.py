"""bench/gpu.py --cpu-smoke runs every GPU measurement at tiny shapes and writes the same
results files a GPU run does."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_cpu_smoke_runs_every_part_and_writes_json_and_markdown(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--cpu-smoke",
                           "--out", str(tmp_path)], capture_output=True, text=True, cwd=str(ROOT),
                          timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    (result,) = tmp_path.glob("cpu-*.json")
    results = json.loads(result.read_text())
    assert results["mode"] == "cpu-smoke" and results["machine"]["gpu"] == "CPU"
    parts = results["parts"]
    assert set(parts) == {"kd", "lcm", "dreambooth:reference", "dreambooth:options",
                          "dreambooth:lora", "synth", "latency"}
    failed = {name: part["log"] for name, part in parts.items() if "error" in part}
    assert not failed, failed
    assert parts["kd"]["trainer"]["samples_s"] > 0 and parts["kd"]["official"]["samples_s"] > 0
    assert parts["lcm"]["trainer"]["samples_s"] > 0 and parts["lcm"]["plan_estimate_gib"] > 0
    assert all(parts["dreambooth:" + s]["peak_gib"] is not None for s in ("options", "lora"))
    assert parts["synth"]["straight_images_s"] > 0
    assert [m["preset"] for m in parts["latency"]["models"]] == ["teacher", "base", "small", "tiny"]
    goals = {row["goal"]: row for row in results["goals"]}
    assert len(goals) == 11 and all(row["met"] is None for row in goals.values())
    assert "LCM peak memory, this trainer" in goals
    markdown = result.with_suffix(".md").read_text()
    assert markdown.startswith("# BK-SDM GPU run: CPU") and "| DreamBooth peak, lora |" in markdown
