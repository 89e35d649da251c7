"""device_info: software versions, Jetson facts from recorded board output, and the run monitor."""
import shutil
import stat
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Dict, List

import pytest

from bksdm_ext.measure import device_info
from bksdm_ext.measure.device_info import (
    TegraMonitor,
    jetson_status,
    parse_jetson_clocks,
    parse_nv_tegra_release,
    parse_nvpmodel,
    parse_tegrastats,
    read_board,
    software,
)

FIXTURES = Path(__file__).parents[1] / "fixtures" / "jetson"
ROOT = Path(__file__).resolve().parents[2]
# Looked up before any test narrows PATH to its folder of fake tools.
CAT, SLEEP = shutil.which("cat"), shutil.which("sleep")


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def fake_tool(bin_dir: Path, name: str, body: str) -> None:
    """A shell script standing in for a Jetson tool; external commands are named by absolute path."""
    script = bin_dir / name
    body = body.format(cat=CAT, sleep=SLEEP)
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


@pytest.fixture
def bin_dir(tmp_path, monkeypatch) -> Path:
    """PATH holds only this folder, so the machine's own Jetson tools (if any) are never run."""
    folder = tmp_path / "bin"
    folder.mkdir()
    monkeypatch.setenv("PATH", str(folder))
    return folder


@pytest.fixture
def no_jtop(monkeypatch) -> None:
    # A None entry makes `from jtop import jtop` raise ImportError, installed or not.
    monkeypatch.setitem(sys.modules, "jtop", None)


@pytest.fixture
def agx_orin(monkeypatch) -> None:
    monkeypatch.setattr(device_info, "BOARD_MODEL_PATH", str(FIXTURES / "device-tree-model_agx_orin"))
    monkeypatch.setattr(device_info, "TEGRA_RELEASE_PATH", str(FIXTURES / "nv_tegra_release_r35.4.1"))


# --- software ---------------------------------------------------------------------------------

def test_import_does_not_import_torch():
    code = "import sys, bksdm_ext.measure.device_info; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=str(ROOT)).returncode == 0


def test_software_reports_versions():
    import platform

    import torch

    info = software()
    assert set(info) == {"gpu", "torch", "cuda", "cudnn", "xformers", "python"}
    assert info["torch"] == torch.__version__
    assert info["python"] == platform.python_version()
    if torch.cuda.is_available():
        assert info["gpu"] == torch.cuda.get_device_name()
    else:
        assert info["gpu"].startswith("CPU: ")
        assert info["cuda"] == (torch.version.cuda or "none (CPU build)")


def test_software_without_torch_or_xformers(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setattr(device_info, "_package_version", lambda name: "not installed")
    info = software()
    assert info["torch"] == "not installed"
    assert info["xformers"] == "not installed"
    assert info["gpu"].startswith("CPU: ")


@pytest.mark.parametrize("number, text", [(8902, "8.9.2"), (8600, "8.6.0"), (90100, "9.1.0"), (None, "none")])
def test_cudnn_version(number, text):
    assert device_info._cudnn_version(number) == text


# --- board and release ------------------------------------------------------------------------

def test_read_board_strips_the_nul(tmp_path):
    assert read_board(str(FIXTURES / "device-tree-model_agx_orin")) == "NVIDIA Jetson AGX Orin Developer Kit"
    assert read_board(str(tmp_path / "missing")) is None


@pytest.mark.parametrize("name, l4t, jetpack", [
    ("nv_tegra_release_r35.4.1", "35.4.1", "5.1.2"),
    ("nv_tegra_release_r36.4.3", "36.4.3", "6.2"),
])
def test_parse_nv_tegra_release(name, l4t, jetpack):
    assert parse_nv_tegra_release(fixture(name)) == {"l4t": l4t, "jetpack": jetpack}


def test_parse_nv_tegra_release_unknown_and_garbage():
    line = "# R36 (release), REVISION: 2.0, GCID: 35084178, BOARD: generic, EABI: aarch64, DATE: Tue Dec 19 05:55:03 UTC 2023"
    assert parse_nv_tegra_release(line) == {"l4t": "36.2.0", "jetpack": "6.0 DP"}
    assert parse_nv_tegra_release(line.replace("2.0", "9.9")) == {"l4t": "36.9.9", "jetpack": None}
    assert parse_nv_tegra_release("") == {"l4t": None, "jetpack": None}


# --- nvpmodel and jetson_clocks ---------------------------------------------------------------

def test_parse_nvpmodel():
    assert parse_nvpmodel(fixture("nvpmodel_q_maxn.txt")) == {"mode": "MAXN", "id": 0, "is_max_power": True}
    assert parse_nvpmodel(fixture("nvpmodel_q_30w.txt")) == {"mode": "MODE_30W", "id": 2, "is_max_power": False}
    assert parse_nvpmodel("NVPM WARN: fan mode is not set!\nNV Power Mode: MODE_15W\n1\n")["mode"] == "MODE_15W"
    assert parse_nvpmodel("") == {"mode": None, "id": None, "is_max_power": False}


def test_parse_jetson_clocks_locked():
    clocks = parse_jetson_clocks(fixture("jetson_clocks_show_maxn_locked.txt"))
    assert clocks == {"cpu_locked": True, "gpu_locked": True, "emc_locked": True, "locked": True,
                      "power_mode": "MAXN"}


@pytest.mark.parametrize("name, mode", [
    ("jetson_clocks_show_maxn_unlocked.txt", "MAXN"),
    ("jetson_clocks_show_30w_unlocked.txt", "MODE_30W"),
])
def test_parse_jetson_clocks_unlocked(name, mode):
    clocks = parse_jetson_clocks(fixture(name))
    assert clocks == {"cpu_locked": False, "gpu_locked": False, "emc_locked": False, "locked": False,
                      "power_mode": mode}


def test_parse_jetson_clocks_judges_only_online_cores_and_unknown_output():
    text = fixture("jetson_clocks_show_maxn_locked.txt").replace(
        "cpu11: Online=1 Governor=schedutil MinFreq=2201600",
        "cpu11: Online=0 Governor=schedutil MinFreq=729600")
    assert parse_jetson_clocks(text)["cpu_locked"] is True
    assert parse_jetson_clocks("Error: Run this script(/usr/bin/jetson_clocks) as a root user")["locked"] is None


# --- tegrastats -------------------------------------------------------------------------------

def test_parse_tegrastats_agx_orin_jp5():
    idle = parse_tegrastats(fixture("tegrastats_agx_orin_jp5.txt").splitlines()[0])
    assert idle["ram_used_mb"] == 5637 and idle["ram_total_mb"] == 30536
    assert idle["gpu_load_pct"] == 0
    assert idle["rails_mw"] == {"VDD_GPU_SOC": 2766, "VDD_CPU_CV": 395, "VIN_SYS_5V0": 2621, "VDDQ_VDD2_1V8AO": 602}
    assert idle["power_rails"] == ["VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0", "VDDQ_VDD2_1V8AO"]
    assert idle["power_mw"] == 2766 + 395 + 2621 + 602
    assert idle["temps_c"]["CPU"] == 43.312 and idle["temps_c"]["tj"] == 43.312
    assert "GPU" not in idle["temps_c"] and "CV0" not in idle["temps_c"]  # -256C: sensor off

    loaded = parse_tegrastats(fixture("tegrastats_agx_orin_jp5.txt").splitlines()[2])
    assert loaded["gpu_load_pct"] == 99
    assert loaded["power_mw"] == 22461 + 1582 + 5649 + 3011
    assert loaded["temps_c"]["GPU"] == 45.468


def test_parse_tegrastats_input_rail_is_the_total():
    orin_nx = parse_tegrastats(fixture("tegrastats_orin_nx_jp5.txt"))
    assert orin_nx["power_rails"] == ["VDD_IN"] and orin_nx["power_mw"] == 4979
    nano = parse_tegrastats(fixture("tegrastats_nano_jp4.txt"))
    assert nano["power_rails"] == ["POM_5V_IN"] and nano["power_mw"] == 1038
    assert nano["ram_used_mb"] == 1471 and nano["gpu_load_pct"] == 0


def test_parse_tegrastats_older_single_gr3d_value():
    xavier = parse_tegrastats(fixture("tegrastats_agx_xavier_jp4.txt"))
    assert xavier["gpu_load_pct"] == 99
    assert xavier["ram_used_mb"] == 2455 and xavier["ram_total_mb"] == 31919
    assert xavier["power_mw"] == 7764 + 155 + 1243 + 0 + 466 + 2047
    assert xavier["temps_c"]["GPU"] == 33.0


def test_parse_tegrastats_tolerates_other_layouts():
    # RAM without lfb, GR3D_FREQ without a frequency, lowercase sensors, fields never seen before.
    line = "RAM 1795/3995MB SWAP 0/0MB CPU [3%@1428,off] NEWFIELD x=1 GR3D_FREQ 42% cpu@47.062C VDD_IN 5100mW/5000mW"
    parsed = parse_tegrastats(line)
    assert parsed["ram_used_mb"] == 1795 and parsed["ram_total_mb"] == 3995
    assert parsed["gpu_load_pct"] == 42
    assert parsed["temps_c"] == {"cpu": 47.062}
    assert parsed["power_mw"] == 5100
    assert parse_tegrastats("") == {}
    assert parse_tegrastats("not tegrastats at all") == {}


# --- jetson_status ----------------------------------------------------------------------------

def test_not_a_jetson(monkeypatch, tmp_path, bin_dir):
    monkeypatch.setattr(device_info, "BOARD_MODEL_PATH", str(tmp_path / "no-device-tree-model"))
    assert jetson_status() is None


def test_a_raspberry_pi_is_not_a_jetson(monkeypatch, tmp_path, bin_dir):
    model = tmp_path / "model"
    model.write_bytes(b"Raspberry Pi 4 Model B Rev 1.4\x00")
    monkeypatch.setattr(device_info, "BOARD_MODEL_PATH", str(model))
    monkeypatch.setattr(device_info, "TEGRA_RELEASE_PATH", str(tmp_path / "no-nv_tegra_release"))
    assert jetson_status() is None


def test_maxn_and_locked_gives_no_warnings(agx_orin, bin_dir):
    fake_tool(bin_dir, "nvpmodel", "{cat} %s" % (FIXTURES / "nvpmodel_q_maxn.txt"))
    fake_tool(bin_dir, "jetson_clocks", "{cat} %s" % (FIXTURES / "jetson_clocks_show_maxn_locked.txt"))
    assert jetson_status() == {
        "board": "NVIDIA Jetson AGX Orin Developer Kit",
        "l4t": "35.4.1",
        "jetpack": "5.1.2",
        "power_mode": "MAXN",
        "power_mode_id": 0,
        "clocks_locked": True,
        "warnings": [],
    }


def test_30w_and_unlocked_gives_both_warnings(agx_orin, bin_dir):
    fake_tool(bin_dir, "nvpmodel", "{cat} %s" % (FIXTURES / "nvpmodel_q_30w.txt"))
    fake_tool(bin_dir, "jetson_clocks", "{cat} %s" % (FIXTURES / "jetson_clocks_show_30w_unlocked.txt"))
    status = jetson_status()
    assert status["power_mode"] == "MODE_30W" and status["clocks_locked"] is False
    assert status["warnings"] == [
        "Power mode is MODE_30W, not MAXN: latency figures will be slower than the paper's (sudo nvpmodel -m 0)",
        "Clocks are not locked: run sudo jetson_clocks for stable figures",
    ]


def test_jetson_clocks_without_root_is_unknown(agx_orin, bin_dir):
    fake_tool(bin_dir, "nvpmodel", "{cat} %s" % (FIXTURES / "nvpmodel_q_maxn.txt"))
    fake_tool(bin_dir, "jetson_clocks", 'echo "Error: Run this script($0) as a root user" >&2\nexit 1')
    status = jetson_status()
    assert status["clocks_locked"] == "unknown"
    assert status["warnings"] == []


def test_missing_or_hanging_tools_are_unknown(agx_orin, bin_dir, monkeypatch):
    assert jetson_status()["power_mode"] == "unknown"  # neither tool on PATH
    monkeypatch.setattr(device_info, "COMMAND_TIMEOUT_S", 0.2)
    fake_tool(bin_dir, "nvpmodel", "exec {sleep} 10")
    fake_tool(bin_dir, "jetson_clocks", "exec {sleep} 10")
    status = jetson_status()
    assert status["power_mode"] == "unknown" and status["clocks_locked"] == "unknown"


# --- TegraMonitor -----------------------------------------------------------------------------

def wait_for_samples(monitor: TegraMonitor, count: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while monitor.peak().get("samples", 0) < count and time.monotonic() < deadline:
        time.sleep(0.02)


def test_monitor_is_a_no_op_off_jetson(no_jtop, bin_dir):
    with TegraMonitor() as monitor:
        pass
    assert monitor.source is None
    assert monitor.peak() == {}


def test_monitor_runs_tegrastats(no_jtop, bin_dir, tmp_path):
    args_file = tmp_path / "args"
    fake_tool(bin_dir, "tegrastats", "\n".join([
        'echo "$@" > %s' % args_file,
        "while true; do",
        "  while IFS= read -r line; do",
        "    printf '%s\\n' \"$line\"",
        "    {sleep} 0.05",
        "  done < %s" % (FIXTURES / "tegrastats_agx_orin_jp5.txt"),
        "done",
    ]))
    with TegraMonitor(interval_ms=200) as monitor:
        wait_for_samples(monitor, 4)
    assert monitor.source == "tegrastats"
    assert args_file.read_text().split() == ["--interval", "200"]

    peak = monitor.peak()
    assert peak["samples"] >= 4
    assert peak["ram_used_mb_max"] == 11905
    assert peak["gpu_load_pct_max"] == 99
    assert peak["power_w_max"] == pytest.approx((22461 + 1582 + 5649 + 3011) / 1000, abs=0.01)
    assert 2766 + 395 + 2621 + 602 < peak["power_w_mean"] * 1000 < 22461 + 1582 + 5649 + 3011
    time.sleep(0.2)  # tegrastats was stopped: no more samples arrive
    assert monitor.peak()["samples"] == peak["samples"]


class FakeJtop:
    """jetson-stats' client as TegraMonitor uses it: attach(), start() then readings to observers, close()."""

    readings: List[Dict] = []
    fail_start = False

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.observers = []
        self.closed = False
        self.stats: Dict = {}
        self.memory: Dict = {}

    def attach(self, observer) -> None:
        self.observers.append(observer)

    def start(self) -> None:
        if self.fail_start:
            raise RuntimeError("The jtop.service is not active. Please run:\nsudo systemctl restart jtop.service")
        for stats, memory in self.readings:
            self.stats, self.memory = stats, memory
            for observer in self.observers:
                observer(self)

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def fake_jtop(monkeypatch):
    module = types.ModuleType("jtop")
    module.jtop = FakeJtop
    monkeypatch.setitem(sys.modules, "jtop", module)
    monkeypatch.setattr(FakeJtop, "readings", [
        ({"GPU": 0.0, "Power TOT": 6384, "Temp CPU": 43.3}, {"RAM": {"tot": 31268864, "used": 5772288}}),
        ({"GPU": 99.1, "Power TOT": 32703}, {"RAM": {"tot": 31268864, "used": 12190720}}),
        ({"GPU": 97.0, "Power TOT": 32309}, {"RAM": {"tot": 31268864, "used": 12158976}}),
        ({}, {}),  # a reading with nothing in it is skipped, not raised into jtop's thread
    ])
    return FakeJtop


def test_monitor_prefers_jtop(fake_jtop, bin_dir):
    with TegraMonitor() as monitor:
        client = monitor._jtop
    assert monitor.source == "jtop" and client.interval == 0.2 and client.closed
    assert monitor.peak() == {
        "source": "jtop",
        "samples": 3,
        "ram_used_mb_max": 11905,
        "gpu_load_pct_max": 99.1,
        "power_w_max": 32.7,
        "power_w_mean": round((6384 + 32703 + 32309) / 3000, 2),
    }


def test_monitor_falls_back_when_jtop_service_is_down(fake_jtop, bin_dir, monkeypatch):
    monkeypatch.setattr(FakeJtop, "fail_start", True)
    with TegraMonitor() as monitor:
        pass
    assert monitor.source is None and monitor.peak() == {}
