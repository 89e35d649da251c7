"""Stand-in for A1111 1.10.1 ``modules/devices.py``: just the CPU/CUDA device choice (no MPS/XPU, dtypes, autocast)."""

import torch

cpu: torch.device = torch.device(type="cpu")
device: torch.device = None  # set by standin_app.reset: cpu with --use-cpu all/sd, else the optimal device


def get_optimal_device_name():
    return "cuda" if torch.cuda.is_available() else "cpu"


def get_optimal_device():
    name = get_optimal_device_name()
    return torch.device(name)


def torch_gc():
    if get_optimal_device_name() == "cuda":
        torch.cuda.empty_cache()
