# Reproducible test environment: a CPU-only venv with the package versions an
# AUTOMATIC1111 1.10.1 user has (pyproject's `test` extra), plus Stability-AI's
# `ldm` package (stable-diffusion-sdkit) that the WebUI side of bksdm_ext uses.
# The project itself is NOT installed into it (only its dependencies): in a real WebUI the
# extension is a folder, never an installed package, so nothing may work only because
# `import bksdm_ext` happens to succeed. Tests import it from the checkout (pytest's
# `pythonpath`), the demo runs `python -m bksdm_ext` from here.
#
#   make test   build .venv if needed, then vermin (3.8), py3.8 compileall, pytest (the whole suite)
#   make test-fast  the suite but its slow and browser tests (pytest markers), for day-to-day work
#   make demo   build .venv if needed, then `bksdm demo`
#   make .venv  just (re)build the venv; reinstalls when pyproject.toml or this file change;
#               also installs Debian's chromium (for tests/webui/test_browser.py) when it is missing

SHELL := /bin/bash
.DEFAULT_GOAL := test

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PY38   ?= $(HOME)/.pyenv/versions/3.8.18/bin/python

# The CPU wheel (found through pip's configured find-links). Naming the local
# version makes pip fail loudly instead of fetching the multi-GB CUDA torch from
# PyPI if that wheel is ever missing.
TORCH_REQ := torch==2.13.0+cpu

# What ldm.modules.diffusionmodules.openaimodel and ldm.models.autoencoder import
# beyond the `test` extra: autoencoder.py does `import pytorch_lightning`
# (pinned as in A1111 1.10.1). lightning_fabric (pulled by pytorch_lightning
# 1.9.4) calls pkg_resources, which setuptools 82 removed; torch needs
# setuptools>=77.0.3, so setuptools is pinned in between.
# torchvision is deliberately absent: PyPI's is a CUDA build that cannot be
# imported against the CPU torch ("operator torchvision::nms does not exist"),
# and a broken torchvision breaks torchmetrics -> pytorch_lightning -> ldm.
LDM_REQS := pytorch_lightning==1.9.4 lightning-utilities==0.15.3 setuptools==80.9.0

# Installed without their (stale, conflicting) dependencies: sdkit provides `ldm`;
# open_clip (A1111's pin, for the SD-v2 text-encoder checks) would otherwise pull
# torchvision; its image code is stubbed by the one test that imports it.
SDKIT := stable-diffusion-sdkit==2.1.5 open-clip-torch==2.20.0

# The browser tests/webui/test_browser.py drives through Playwright (never `playwright install`).
# Installed with apt-get when missing (needs root, as in CI); where that is impossible
# the browser test skips, except under CI=true, where it fails.
CHROMIUM := /usr/bin/chromium

# Paths that must stay Python-3.8 compatible; missing ones are skipped.
PY38_PATHS = $(wildcard bksdm_ext scripts install.py)

# The second stack (`make test-latest`): the newest releases the `train` extra allows,
# which is what `pip install ".[train]"` gives a lab today; its upper bounds are these pins.
# Python 3.12 with PyPI's own torch (a CUDA build that runs on the CPU; its nvidia-* wheels
# make the venv ~5.5 GB) and the torchvision built against it, so torch-fidelity (FID) and
# open_clip's image code import for real here. This machine caps torch at 2.14.1.
# open-clip-torch (the tokenizer tests' reference) and sdkit's `ldm` (the U-Net the
# conversion tests load students into) come without their dependencies, as in .venv.
PY312        ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python) python3.12)
LATEST_VENV  := .venv-latest
LATEST_STAMP := $(LATEST_VENV)/.installed
LATEST_TORCH := torch==2.14.1 torchvision==0.29.1
LATEST_REQS  := diffusers==0.42.1 transformers==5.24.0 accelerate==1.15.0 huggingface_hub==2.4.0 \
                peft==0.21.2 torch-fidelity==0.4.0 torchmetrics==1.9.0 pytest ftfy omegaconf einops
# Which tests it runs, by marker (pyproject.toml; tests/conftest.py gives `engine` and `webui`
# by folder): the engine tests (tests/cli, model, train, jobs, measure, scores) except the
# `slow` ones (CI's budget: each engine still runs here in a quicker test, and test-wheel runs
# the demo, a distillation and DreamBooth on the newest releases too) and `a1111_pins`
# (tests/model/test_parts_keymap.py compares with A1111's own parts at its pins: LDM's
# autoencoder needs pytorch_lightning); then tests/scores whole, slow ones included: this
# stack's torchvision is real, so FID (torch-fidelity) and CLIP's image code run for real only
# here. tests/webui is not collected: its modules need gradio.
LATEST_MARKERS := engine and not slow and not a1111_pins

# The Jetson stack (`make test-jetson`): what A1111 1.6.1 runs on a Jetson AGX Orin under
# JetPack 5 (docs/facts.md §6b): Python 3.8, torch 2.0.1, safetensors 0.3.1, numpy 1.23.5,
# transformers 4.30.2, accelerate 0.21.0, huggingface_hub 0.36.2, gradio 3.41.2 with
# pydantic 1.10, and diffusers 0.30.3 as install.py adds it. torch 2.0.1 is PyPI's CUDA
# build (it runs on the CPU). The whole suite runs there but the `browser` tests (Playwright
# needs a newer Python) and tests/test_environment.py (the guard of the first stack's pins).
JETSON_VENV  := .venv-jetson
JETSON_STAMP := $(JETSON_VENV)/.installed
JETSON_REQS  := torch==2.0.1 safetensors==0.3.1 numpy==1.23.5 diffusers==0.30.3 \
                transformers==4.30.2 tokenizers==0.13.3 accelerate==0.21.0 huggingface_hub==0.36.2 \
                Pillow==9.5.0 gradio==3.41.2 gradio_client==0.5.0 fastapi==0.94.0 httpx==0.24.1 \
                "pydantic<2" omegaconf==2.2.3 einops==0.4.1 peft==0.13.2 pytorch_lightning==1.9.4 \
                setuptools==75.3.0 PyYAML tqdm ftfy pytest

# `make test-fast`: the suite but its `slow` and `browser` tests, for day-to-day work, on
# FAST_WORKERS pytest-xdist workers (each test process has one torch thread, tests/conftest.py).
FAST_MARKERS := not slow and not browser
FAST_WORKERS ?= 2

.PHONY: .venv test test-fast demo test-latest test-wheel test-jetson

.venv: $(STAMP) $(CHROMIUM)

$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "+ apt-get install chromium"; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else \
	  echo "$(CHROMIUM) is missing and cannot be installed here (needs root and apt-get): tests/webui/test_browser.py will skip"; \
	fi

$(STAMP): pyproject.toml Makefile
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "need Python 3.11 for the torch 2.13.0+cpu cp311 wheel, got " + sys.version)'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --progress-bar off "$(TORCH_REQ)" -e ".[test]" $(LDM_REQS)
	$(PY) -m pip uninstall -q -y bksdm-webui
	$(PY) -m pip install -q --progress-bar off --no-deps $(SDKIT)
	touch $@

test: .venv
	@if [ -n "$(PY38_PATHS)" ]; then \
	  echo "+ vermin -t=3.8- $(PY38_PATHS)"; \
	  $(VENV)/bin/vermin -t=3.8- --violations --no-tips --eval-annotations $(PY38_PATHS); \
	fi
	@if [ -x "$(PY38)" ] && [ -n "$(PY38_PATHS)" ]; then \
	  echo "+ python3.8 -m compileall -q $(PY38_PATHS)"; \
	  "$(PY38)" -m compileall -q $(PY38_PATHS); \
	fi
	$(PY) -m pytest -q

test-fast: .venv
	$(PY) -m pytest -q -p no:cacheprovider -m "$(FAST_MARKERS)" -n $(FAST_WORKERS)

demo: .venv
	$(PY) -m bksdm_ext demo

$(LATEST_STAMP): pyproject.toml Makefile
	@$(PY312) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 12) else "need Python 3.12 for the second stack, got " + sys.version)'
	test -x $(LATEST_VENV)/bin/python || $(PY312) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install -q --progress-bar off $(LATEST_TORCH) ".[train]" $(LATEST_REQS)
	$(LATEST_VENV)/bin/python -m pip uninstall -q -y bksdm-webui
	$(LATEST_VENV)/bin/python -m pip install -q --progress-bar off --no-deps $(SDKIT)
	touch $@

# The suite's engine tests on the second stack (the WebUI tests need A1111's pins), then the
# slow tests of the scores.
test-latest: $(LATEST_STAMP)
	$(LATEST_VENV)/bin/python -m pytest -q -p no:cacheprovider -m "$(LATEST_MARKERS)" --ignore=tests/webui
	$(LATEST_VENV)/bin/python -m pytest -q -p no:cacheprovider -m slow tests/scores

$(JETSON_STAMP): Makefile
	@$(PY38) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 8) else "need Python 3.8 for the Jetson stack, got " + sys.version)'
	test -x $(JETSON_VENV)/bin/python || $(PY38) -m venv $(JETSON_VENV)
	$(JETSON_VENV)/bin/python -m pip install -q --progress-bar off $(JETSON_REQS)
	$(JETSON_VENV)/bin/python -m pip install -q --progress-bar off --no-deps $(SDKIT)
	touch $@

test-jetson: $(JETSON_STAMP)
	$(JETSON_VENV)/bin/python -m pytest -q -p no:cacheprovider -m "not browser" \
	  --ignore=tests/test_environment.py

# The wheel alone in a fresh venv, offline, away from the checkout: a tiny distillation.
test-wheel:
	PYTHON=$(PYTHON) TORCH_REQ="$(TORCH_REQ)" .ci/clean-wheel
