"""Stand-in for A1111 1.10.1 ``modules/devices.py``: the device choice and the dtypes (no MPS/XPU/NPU, fp8,
manual casting or NaN checks).

``device`` is None until start-up: ``standin_app.reset`` sets it (``devices.cpu`` with ``--use-cpu all``/``sd``,
else the optimal device) together with ``shared.device``, and sets ``dtype``/``dtype_vae``/``dtype_unet``/
``dtype_inference`` from ``--no-half`` as 1.10.1's start-up does. ``autocast()`` is ``torch.autocast("cuda")``
for a float16 model on CUDA, else a null context (on the CPU a float16 model fails, as in A1111: use --no-half).
"""

import contextlib

import torch

cpu: torch.device = torch.device(type="cpu")
device: torch.device = None  # set by standin_app.reset: cpu with --use-cpu all/sd, else the optimal device
dtype: torch.dtype = torch.float16
dtype_vae: torch.dtype = torch.float16
dtype_unet: torch.dtype = torch.float16
dtype_inference: torch.dtype = torch.float16
unet_needs_upcast = False


def get_optimal_device_name():
    return "cuda" if torch.cuda.is_available() else "cpu"


def get_optimal_device():
    name = get_optimal_device_name()
    return torch.device(name)


def torch_gc():
    if get_optimal_device_name() == "cuda":
        torch.cuda.empty_cache()


def autocast(disable=False):
    if disable or torch.float32 in (dtype, dtype_inference) or torch.device(device or cpu).type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda")


def without_autocast(disable=False):
    if torch.is_autocast_enabled() and not disable:
        return torch.autocast("cuda", enabled=False)
    return contextlib.nullcontext()
