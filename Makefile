# Reproducible test environment: a CPU-only venv with the package versions an
# AUTOMATIC1111 1.10.1 user has (pyproject's `test` extra), plus Stability-AI's
# `ldm` package (stable-diffusion-sdkit) that the WebUI side of bksdm_ext uses.
# The project itself is NOT installed into it (only its dependencies): in a real WebUI the
# extension is a folder, never an installed package, so nothing may work only because
# `import bksdm_ext` happens to succeed. Tests import it from the checkout (pytest's
# `pythonpath`), the demo runs `python -m bksdm_ext` from here.
#
#   make test   build .venv if needed, then vermin (3.8), py3.8 compileall, pytest
#   make demo   build .venv if needed, then `bksdm demo`
#   make .venv  just (re)build the venv; reinstalls when pyproject.toml or this file change;
#               also installs Debian's chromium (for tests/test_browser.py) when it is missing

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

# The browser tests/test_browser.py drives through Playwright (never `playwright install`).
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
# (tests/test_parts_keymap.py compares with A1111's own text encoders, built the way
# transformers 4.30 builds them, so it belongs to the first stack only; so does
# tests/test_gpu_bench.py, whose parts are the engines these tests already run here.
# The engines are sampled, one run of each kind, to keep CI within its budget.)
LATEST_TESTS := tests/test_tokenizer.py tests/test_clip_naming.py tests/test_clip_sources.py tests/test_scores.py \
                tests/test_demo.py \
                tests/test_layout.py tests/test_memory_plan.py tests/test_convert.py \
                tests/test_latency.py tests/test_fid.py tests/test_lora_keymap.py tests/test_lora_adapt.py \
                tests/test_distill.py::test_losses_are_finite_and_fall_and_the_run_ends_with_an_a1111_student \
                tests/test_distill.py::test_v_prediction_teacher_trains_on_velocity \
                tests/test_distill.py::test_resuming_repeats_the_losses_of_an_uninterrupted_run \
                tests/test_dreambooth.py::test_full_finetune_trains_unet_and_text_encoder_and_exports_an_a1111_student \
                tests/test_dreambooth.py::test_lora_file_resolves_in_a1111_and_reproduces_the_merged_student \
                tests/test_dreambooth.py::test_sd2_v_prediction_lora_resolves_onto_openclip_attention \
                tests/test_dreambooth.py::test_samples_get_the_clip_score_of_their_prompt \
                tests/test_synth.py::test_the_cache_holds_n_latents_with_std_zero_from_prompt_i_and_seed_i \
                tests/test_synth.py::test_distilling_from_teacher_data_never_encodes_an_image_and_losses_fall \
                tests/test_inpainting.py::test_an_inpainting_teacher_distils_with_falling_losses_into_an_a1111_student \
                tests/test_inpainting.py::test_teacher_made_data_trains_an_inpainting_student \
                tests/test_lcm.py::test_boundary_conditions_are_the_consistency_models_and_the_lcm_samplers \
                tests/test_lcm.py::test_the_target_network_follows_the_student_as_an_ema \
                tests/test_lcm.py::test_resuming_an_lcm_run_repeats_its_losses_target_and_ema \
                tests/test_lcm.py::test_resuming_an_lcm_lora_run_repeats_its_losses \
                tests/test_lcm.py::test_few_step_lcm_samples_agree_with_the_teacher_better_than_before_and_than_kd

# The Jetson stack (`make test-jetson`): what A1111 1.6.1 runs on a Jetson AGX Orin under
# JetPack 5 (docs/facts.md §6b): Python 3.8, torch 2.0.1, safetensors 0.3.1, numpy 1.23.5,
# transformers 4.30.2, accelerate 0.21.0, huggingface_hub 0.36.2, gradio 3.41.2 with
# pydantic 1.10, and diffusers 0.30.3 as install.py adds it. torch 2.0.1 is PyPI's CUDA
# build (it runs on the CPU). The whole suite runs there but the browser tests (Playwright
# needs a newer Python) and tests/test_environment.py (the first stack's pins).
JETSON_VENV  := .venv-jetson
JETSON_STAMP := $(JETSON_VENV)/.installed
JETSON_REQS  := torch==2.0.1 safetensors==0.3.1 numpy==1.23.5 diffusers==0.30.3 \
                transformers==4.30.2 tokenizers==0.13.3 accelerate==0.21.0 huggingface_hub==0.36.2 \
                Pillow==9.5.0 gradio==3.41.2 gradio_client==0.5.0 fastapi==0.94.0 httpx==0.24.1 \
                "pydantic<2" omegaconf==2.2.3 einops==0.4.1 peft==0.13.2 pytorch_lightning==1.9.4 \
                setuptools==75.3.0 PyYAML tqdm ftfy pytest

.PHONY: .venv test demo test-latest test-wheel test-jetson

.venv: $(STAMP) $(CHROMIUM)

$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "+ apt-get install chromium"; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else \
	  echo "$(CHROMIUM) is missing and cannot be installed here (needs root and apt-get): tests/test_browser.py will skip"; \
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

demo: .venv
	$(PY) -m bksdm_ext demo

$(LATEST_STAMP): pyproject.toml Makefile
	@$(PY312) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 12) else "need Python 3.12 for the second stack, got " + sys.version)'
	test -x $(LATEST_VENV)/bin/python || $(PY312) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install -q --progress-bar off $(LATEST_TORCH) ".[train]" $(LATEST_REQS)
	$(LATEST_VENV)/bin/python -m pip uninstall -q -y bksdm-webui
	$(LATEST_VENV)/bin/python -m pip install -q --progress-bar off --no-deps $(SDKIT)
	touch $@

# The suite's engine tests on the second stack (the WebUI tests need A1111's pins).
test-latest: $(LATEST_STAMP)
	$(LATEST_VENV)/bin/python -m pytest -q -p no:cacheprovider $(LATEST_TESTS)

$(JETSON_STAMP): Makefile
	@$(PY38) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 8) else "need Python 3.8 for the Jetson stack, got " + sys.version)'
	test -x $(JETSON_VENV)/bin/python || $(PY38) -m venv $(JETSON_VENV)
	$(JETSON_VENV)/bin/python -m pip install -q --progress-bar off $(JETSON_REQS)
	$(JETSON_VENV)/bin/python -m pip install -q --progress-bar off --no-deps $(SDKIT)
	touch $@

test-jetson: $(JETSON_STAMP)
	$(JETSON_VENV)/bin/python -m pytest -q -p no:cacheprovider --ignore=tests/test_browser.py \
	  --ignore=tests/test_environment.py

# The wheel alone in a fresh venv, offline, away from the checkout: a tiny distillation.
test-wheel:
	PYTHON=$(PYTHON) TORCH_REQ="$(TORCH_REQ)" .ci/clean-wheel
