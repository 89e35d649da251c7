import os
import shutil
import tempfile
from pathlib import Path

import pytest

# One OpenMP thread for the whole run and the processes it starts (read when torch is first
# imported, after this file): the tiny models run many times faster without threads handing off
# work on a shared 2-core machine, and the count never changes mid-run. A test that lowered it to
# one and raised it again left MKL's batched LU factorisation (torch.inverse, as OFT LoRAs use)
# spinning forever in a later test (torch 2.13 with MKL 2024.2, tests/webui).
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Tests never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# The tests' own Hugging Face home, never the developer's: set before anything imports
# huggingface_hub or transformers (they read it then), inherited by the job processes the
# tests start, and filled as a real A1111 machine's by `a1111_hf_cache`.
HF_HOME = Path(tempfile.mkdtemp(prefix="bksdm-hf-home-"))
os.environ.update(HF_HOME=str(HF_HOME), HF_HUB_CACHE=str(HF_HOME / "hub"))
for _legacy in ("HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE", "PYTORCH_TRANSFORMERS_CACHE",
                "PYTORCH_PRETRAINED_BERT_CACHE"):
    os.environ.pop(_legacy, None)


# The folders of tests/ that test bksdm_ext without the WebUI; tests/webui/ holds every test
# module that needs gradio and the A1111 stand-in to import or run.
ENGINE_FOLDERS = {"cli", "model", "train", "jobs", "measure", "scores"}


def pytest_collection_modifyitems(config, items):
    """`webui` for tests/webui/, `engine` for the engine folders' tests that are not marked
    `webui` themselves (the few there that also look at the WebUI side), so a folder's place
    decides what a Makefile target selects without a marker on each test."""
    tests = Path(__file__).parent
    for item in items:
        folder = item.path.relative_to(tests).parts[0]
        if folder == "webui":
            item.add_marker(pytest.mark.webui)
        elif folder in ENGINE_FOLDERS and item.get_closest_marker("webui") is None:
            item.add_marker(pytest.mark.engine)


def pytest_unconfigure(config):
    shutil.rmtree(str(HF_HOME), ignore_errors=True)


# The folders of the session-scoped fixtures below: they live as long as the run.
RUN_FOLDERS = set()


@pytest.fixture(scope="module", autouse=True)
def module_folders_go_with_the_module(tmp_path_factory, request):
    """What a module's fixtures make with tmp_path_factory (its teachers, distilled students,
    tens of MB each) is deleted when the module ends, as pytest deletes a passed test's
    tmp_path, unless a test of the module failed: a run holds one module's folders at a time,
    not every module's until it ends."""
    base = tmp_path_factory.getbasetemp()
    before = set(base.iterdir())
    failed = request.session.testsfailed
    yield
    if request.session.testsfailed == failed:
        for folder in set(base.iterdir()) - before - RUN_FOLDERS:
            if folder.is_dir() and not folder.is_symlink():
                shutil.rmtree(str(folder), ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def a1111_hf_cache(tmp_path_factory) -> Path:
    """The Hugging Face cache as every A1111 machine has it, for every test: the config.json
    and tokenizer files of openai/clip-vit-large-patch14 and no weights (A1111 builds its
    text encoder from the config alone; fake_hub.py fetches them the same way).  Returns the
    snapshot folder."""
    from fake_hub import cache_like_a1111, clip_l14_files

    served = tmp_path_factory.mktemp("clip-l14")
    RUN_FOLDERS.add(served)
    return cache_like_a1111(HF_HOME, clip_l14_files(served))


@pytest.fixture
def a1111_machine(a1111_hf_cache, tmp_path_factory, monkeypatch) -> Path:
    """A1111's Hugging Face cache and no other CLIP: a home without the `clip` package's
    files (A1111's interrogator's ViT-L/14), for this process and the jobs it starts."""
    monkeypatch.setenv("HOME", str(tmp_path_factory.mktemp("home")))
    from bksdm_ext.scores.clip import local_model

    assert local_model() is None
    return a1111_hf_cache


@pytest.fixture(scope="session")
def teacher(tmp_path_factory):
    """A tiny random SD-v1 checkpoint + yaml with every part (U-Net, VAE, text encoder).
    Made once per run (47 MB, by ~15 test modules): never change it or its yaml; write
    only names of your own beside it."""
    from bksdm_ext.demo import write_tiny_teacher

    folder = tmp_path_factory.mktemp("teacher")
    RUN_FOLDERS.add(folder)
    path = folder / "tiny-sd-v1.safetensors"
    write_tiny_teacher(path)
    return path
