import os

import pytest

# Tests never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A tiny random SD-v1 checkpoint + yaml with every part (U-Net, VAE, text encoder)."""
    from bksdm_ext.demo import write_tiny_teacher

    path = tmp_path_factory.mktemp("teacher") / "tiny-sd-v1.safetensors"
    write_tiny_teacher(path)
    return path


@pytest.fixture
def one_thread():
    """One torch thread: a tiny U-Net on a busy machine is dominated by thread hand-offs."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
