"""What the latency panel shows about the device it measures on.

A latency figure means little without the GPU and software stack it came from and, on a
Jetson, the power mode and clock state it ran under: the same board is several times slower
in a low-power mode with unlocked clocks. The Jetson parsers take recorded text or paths so
tests can feed them samples from a real board. Nothing here imports torch at module level,
and nothing fails on a machine that is not a Jetson: Jetson facts are then None or {}.
"""
import platform
import re
import shutil
import subprocess
import threading
from importlib import metadata
from typing import IO, Any, Dict, List, Optional, Tuple

BOARD_MODEL_PATH = "/proc/device-tree/model"
TEGRA_RELEASE_PATH = "/etc/nv_tegra_release"
# nvpmodel and jetson_clocks answer at once; a hung tool must not hold up the panel.
COMMAND_TIMEOUT_S = 5.0

# L4T release (from /etc/nv_tegra_release) -> JetPack release, from NVIDIA's JetPack archive.
# The board records only its L4T version; releases missing here give jetpack None.
JETPACK_FOR_L4T = {
    "35.1.0": "5.0.2",
    "35.2.1": "5.1",
    "35.3.1": "5.1.1",
    "35.4.1": "5.1.2",
    "35.5.0": "5.1.3",
    "35.6.0": "5.1.4",
    "36.2.0": "6.0 DP",
    "36.3.0": "6.0",
    "36.4.0": "6.1",
    "36.4.3": "6.2",
}

# Rails that measure the whole module's input (Orin NX/Nano, Xavier NX, Nano): where one is
# present it is the total and the other rails are parts of it. AGX Orin has none, so there
# the total is the sum of all its rails, as jtop does.
INPUT_RAILS = ("VDD_IN", "POM_5V_IN")
# What tegrastats prints for a temperature sensor that is switched off.
OFFLINE_SENSOR_C = -256.0
# The per-sample readings TegraMonitor keeps, from either jtop or tegrastats.
SAMPLE_KEYS = ("ram_used_mb", "gpu_load_pct", "power_mw")

_RELEASE_RE = re.compile(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)")
_POWER_MODE_RE = re.compile(r"NV Power Mode:\s*(\S+)")
_NUMBER_LINE_RE = re.compile(r"^\s*(\d+)\s*$", re.MULTILINE)
_CLOCK_FIELD_RE = re.compile(r"(\w+)=(\d+)")
_RAM_RE = re.compile(r"\bRAM (\d+)/(\d+)MB")
_GR3D_RE = re.compile(r"\bGR3D_FREQ (\S+)")
# Power rails print as "NAME current/average", in mW ("VDD_GPU_SOC 2766mW/2766mW" on
# JetPack 5, "POM_5V_IN 1038/1038" on JetPack 4). RAM, SWAP and IRAM, whose numbers end in
# MB or kB, fail the closing word boundary.
_RAIL_RE = re.compile(r"\b([A-Z][A-Z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?\b")
_TEMP_RE = re.compile(r"\b(\w+)@(-?\d+(?:\.\d+)?)C\b")


def software() -> Dict[str, str]:
    """The GPU and library versions a latency figure depends on, for the panel to show beside it."""
    info = {
        "gpu": "CPU: %s" % (platform.processor() or platform.machine()),
        "torch": "not installed",
        "cuda": "none",
        "cudnn": "none",
        "xformers": _package_version("xformers"),
        "python": platform.python_version(),
    }
    try:
        import torch
    except (ImportError, OSError):  # OSError: a torch whose CUDA libraries are missing
        return info
    info["torch"] = torch.__version__
    info["cuda"] = torch.version.cuda or "none (CPU build)"
    info["cudnn"] = _cudnn_version(torch.backends.cudnn.version())
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cudnn_version(number: Optional[int]) -> str:
    """torch reports cuDNN as one number: 8902 is 8.9.2, and from cuDNN 9 on 90100 is 9.1.0."""
    if not number:
        return "none"
    major, rest = divmod(number, 10000 if number >= 90000 else 1000)
    return "%d.%d.%d" % (major, rest // 100, rest % 100)


def read_board(model_path: str = BOARD_MODEL_PATH) -> Optional[str]:
    """The board name from the device tree ("NVIDIA Jetson AGX Orin Developer Kit"); None where there is none.

    The file ends in a NUL, which is stripped.
    """
    try:
        with open(model_path, "rb") as f:
            raw = f.read()
    except OSError:
        return None
    board = raw.decode("utf-8", "replace").strip("\x00 \n")
    return board or None


def parse_nv_tegra_release(text: str) -> Dict[str, Optional[str]]:
    """L4T and JetPack versions from /etc/nv_tegra_release; L4T is all a Jetson records of its JetPack."""
    match = _RELEASE_RE.search(text)
    if not match:
        return {"l4t": None, "jetpack": None}
    l4t = "%s.%s" % match.groups()
    return {"l4t": l4t, "jetpack": JETPACK_FOR_L4T.get(l4t)}


def parse_nvpmodel(text: str) -> Dict[str, Any]:
    """The power mode from ``nvpmodel -q``: "NV Power Mode: MAXN" then the mode id on its own line.

    Max power is told by name (MAXN, id 0 on AGX Orin) because mode ids differ between boards.
    """
    match = _POWER_MODE_RE.search(text)
    if not match:
        return {"mode": None, "id": None, "is_max_power": False}
    mode = match.group(1)
    mode_id = _NUMBER_LINE_RE.search(text, match.end())
    return {
        "mode": mode,
        "id": int(mode_id.group(1)) if mode_id else None,
        "is_max_power": mode.startswith("MAXN"),
    }


def parse_jetson_clocks(text: str) -> Dict[str, Any]:
    """Whether ``jetson_clocks --show`` reports the clocks locked at their maximum.

    Locked means every online CPU core at MinFreq == MaxFreq == CurrentFreq, the GPU at
    MinFreq == MaxFreq, and EMC pinned (FreqOverride=1; jetson_clocks leaves EMC's MinFreq low).
    Each check, and ``locked``, is None when its line is missing (not jetson_clocks output).
    """
    cpu_checks: List[bool] = []
    gpu_locked: Optional[bool] = None
    emc_locked: Optional[bool] = None
    power_mode: Optional[str] = None
    for line in text.splitlines():
        fields = dict(_CLOCK_FIELD_RE.findall(line))
        if re.match(r"cpu\d+:", line):
            if fields.get("Online", "1") == "1":
                cpu_checks.append(_all_equal(fields, ("MinFreq", "MaxFreq", "CurrentFreq")))
        elif line.startswith("GPU "):
            gpu_locked = _all_equal(fields, ("MinFreq", "MaxFreq"))
        elif line.startswith("EMC "):
            if "FreqOverride" in fields:
                emc_locked = fields["FreqOverride"] == "1"
            else:
                emc_locked = _all_equal(fields, ("CurrentFreq", "MaxFreq"))
        elif line.startswith("NV Power Mode:"):
            power_mode = line.split(":", 1)[1].strip()
    cpu_locked = all(cpu_checks) if cpu_checks else None
    checks = (cpu_locked, gpu_locked, emc_locked)
    return {
        "cpu_locked": cpu_locked,
        "gpu_locked": gpu_locked,
        "emc_locked": emc_locked,
        "locked": None if None in checks else all(checks),
        "power_mode": power_mode,
    }


def _all_equal(fields: Dict[str, str], keys: Tuple[str, ...]) -> bool:
    values = [fields.get(key) for key in keys]
    return None not in values and len(set(values)) == 1


def parse_tegrastats(line: str) -> Dict[str, Any]:
    """RAM, GPU load, power and temperatures from one tegrastats line; fields it does not know are skipped.

    Gives ram_used_mb / ram_total_mb, gpu_load_pct (the highest load in GR3D_FREQ: "0%@[305,305]"
    on Orin, "99%@1300" before), rails_mw (each rail's current reading), power_mw with
    power_rails naming the rails it counts (the input rail VDD_IN or POM_5V_IN where the
    board has one, else the sum of all: VDD_GPU_SOC + VDD_CPU_CV + VIN_SYS_5V0 +
    VDDQ_VDD2_1V8AO on AGX Orin) and temps_c (sensors that are off, at -256C, left out).
    """
    result: Dict[str, Any] = {}
    ram = _RAM_RE.search(line)
    if ram:
        result["ram_used_mb"], result["ram_total_mb"] = int(ram.group(1)), int(ram.group(2))
    gr3d = _GR3D_RE.search(line)
    loads = [int(load) for load in re.findall(r"(\d+)%", gr3d.group(1))] if gr3d else []
    if loads:
        result["gpu_load_pct"] = max(loads)
    rails = {name: int(current) for name, current, _average in _RAIL_RE.findall(line)}
    if rails:
        inputs = [name for name in INPUT_RAILS if name in rails]
        counted = inputs[:1] if inputs else list(rails)
        result["rails_mw"] = rails
        result["power_rails"] = counted
        result["power_mw"] = sum(rails[name] for name in counted)
    readings = {name: float(value) for name, value in _TEMP_RE.findall(line)}
    temps = {name: celsius for name, celsius in readings.items() if celsius != OFFLINE_SENSOR_C}
    if temps:
        result["temps_c"] = temps
    return result


def jetson_status() -> Optional[Dict[str, Any]]:
    """Board, L4T/JetPack, power mode and clock state, with warnings when figures will not match the paper's.

    None on anything but a Jetson: a board with a device tree but neither /etc/nv_tegra_release
    nor "Jetson" in its name (a Raspberry Pi) is not one. ``clocks_locked`` is "unknown" where
    ``jetson_clocks --show`` cannot run (it needs root), ``power_mode`` where nvpmodel is missing.
    """
    board = read_board(BOARD_MODEL_PATH)
    release_text = _read_text(TEGRA_RELEASE_PATH)
    if board is None or (release_text is None and "jetson" not in board.lower()):
        return None
    release = parse_nv_tegra_release(release_text or "")
    power = parse_nvpmodel(_run(["nvpmodel", "-q"]) or "")
    locked = parse_jetson_clocks(_run(["jetson_clocks", "--show"]) or "")["locked"]
    warnings = []
    if power["mode"] and not power["is_max_power"]:
        warnings.append("Power mode is %s, not MAXN: latency figures will be slower than the paper's "
                        "(sudo nvpmodel -m 0)" % power["mode"])
    if locked is False:
        warnings.append("Clocks are not locked: run sudo jetson_clocks for stable figures")
    return {
        "board": board,
        "l4t": release["l4t"],
        "jetpack": release["jetpack"],
        "power_mode": power["mode"] or "unknown",
        "power_mode_id": power["id"],
        "clocks_locked": "unknown" if locked is None else locked,
        "warnings": warnings,
    }


def _read_text(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _run(command: List[str]) -> Optional[str]:
    """A Jetson tool's output; None where it is missing, fails (jetson_clocks without root) or hangs."""
    if shutil.which(command[0]) is None:
        return None
    try:
        done = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, timeout=COMMAND_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


class TegraMonitor:
    """Samples RAM, GPU load and power while a generation runs (``with TegraMonitor() as m: ...``).

    Peak memory and power tell whether a run was near the board's limits, which its latency
    alone does not. Reads jtop (jetson-stats) when its service answers, else runs
    ``tegrastats``; with neither (any machine but a Jetson) it samples nothing and peak() is {}.
    It never raises, so monitoring cannot break a generation.
    """

    def __init__(self, interval_ms: int = 200) -> None:
        self.interval_ms = interval_ms
        self.source: Optional[str] = None  # "jtop", "tegrastats", or None when a no-op
        self._samples: List[Dict[str, float]] = []
        self._lock = threading.Lock()
        self._jtop: Any = None
        self._process: Optional[subprocess.Popen] = None
        self._reader: Optional[threading.Thread] = None

    def __enter__(self) -> "TegraMonitor":
        if not self._start_jtop():
            self._start_tegrastats()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def _start_jtop(self) -> bool:
        try:
            from jtop import jtop
        except ImportError:
            return False
        try:
            client = jtop(interval=self.interval_ms / 1000)
            client.attach(self._on_jtop)
            client.start()
        except Exception:  # JtopException: jtop.service is down or of another version; use tegrastats
            return False
        self._jtop = client
        self.source = "jtop"
        return True

    def _on_jtop(self, jetson: Any) -> None:
        """jtop's observer, called from its thread on each reading."""
        try:
            stats = jetson.stats
            sample = {"ram_used_mb": jetson.memory["RAM"]["used"] / 1024}  # jtop gives KB
            if isinstance(stats.get("GPU"), (int, float)):
                sample["gpu_load_pct"] = float(stats["GPU"])
            if "Power TOT" in stats:
                sample["power_mw"] = float(stats["Power TOT"])
        except Exception:  # an error raised here would stop jtop's reader thread for good
            return
        self._add(sample)

    def _start_tegrastats(self) -> None:
        if shutil.which("tegrastats") is None:
            return
        try:
            process = subprocess.Popen(["tegrastats", "--interval", str(self.interval_ms)],
                                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                       stderr=subprocess.DEVNULL, text=True)
        except OSError:
            return
        self._process = process
        self._reader = threading.Thread(target=self._read_tegrastats, args=(process.stdout,), daemon=True)
        self._reader.start()
        self.source = "tegrastats"

    def _read_tegrastats(self, lines: IO[str]) -> None:
        for line in lines:
            parsed = parse_tegrastats(line)
            sample = {key: float(parsed[key]) for key in SAMPLE_KEYS if key in parsed}
            if sample:
                self._add(sample)

    def _add(self, sample: Dict[str, float]) -> None:
        with self._lock:
            self._samples.append(sample)

    def stop(self) -> None:
        """Stops sampling; what was sampled stays readable through peak()."""
        if self._jtop is not None:
            self._jtop.close()
            self._jtop = None
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=COMMAND_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            if self._reader is not None:
                self._reader.join(timeout=COMMAND_TIMEOUT_S)
            if self._process.stdout is not None:
                self._process.stdout.close()
            self._process = None

    def peak(self) -> Dict[str, Any]:
        """Max RAM used (MB), max GPU load (%), max and mean power (W) so far; {} when nothing was sampled."""
        with self._lock:
            samples = list(self._samples)
        if not samples:
            return {}
        result: Dict[str, Any] = {"source": self.source, "samples": len(samples)}
        ram = [s["ram_used_mb"] for s in samples if "ram_used_mb" in s]
        if ram:
            result["ram_used_mb_max"] = round(max(ram))
        gpu = [s["gpu_load_pct"] for s in samples if "gpu_load_pct" in s]
        if gpu:
            result["gpu_load_pct_max"] = max(gpu)
        power_w = [s["power_mw"] / 1000 for s in samples if "power_mw" in s]
        if power_w:
            result["power_w_max"] = round(max(power_w), 2)
            result["power_w_mean"] = round(sum(power_w) / len(power_w), 2)
        return result
