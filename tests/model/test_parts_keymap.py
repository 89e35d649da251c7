"""Tests for bksdm_ext.model.parts_keymap against the real model code on both sides.

The LDM side is the ``ldm`` package of stable-diffusion-sdkit (the same
AutoencoderKL / FrozenCLIPEmbedder / FrozenOpenCLIPEmbedder A1111 runs) and
open-clip-torch 2.20.0 (A1111's pin). All models are tiny and randomly
initialised; nothing is downloaded.
"""

import contextlib
import importlib
import importlib.util
import sys
import types
from typing import Callable, Dict, Iterator, Mapping
from unittest import mock

import diffusers
import pytest
import torch
import transformers

from bksdm_ext.model.parts_keymap import (TEXT_PREFIX, clip_to_hf, clip_to_ldm, vae_to_diffusers,
                                    vae_to_ldm)


pytestmark = pytest.mark.a1111_pins

TOL = 1e-4

# Tiny VAE: LDM's GroupNorm always uses 32 groups, so widths are multiples of 32.
# Three levels so decoder block reversal has a block that maps onto itself.
VAE_CHANNELS = (32, 64, 64)
LDM_DDCONFIG = {
    "double_z": True, "z_channels": 4, "resolution": 16, "in_channels": 3, "out_ch": 3, "ch": 32,
    "ch_mult": [1, 2, 2], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0,
}

CONTEXT = 16
# Large enough that attention is far from uniform, so a q/k mix-up changes outputs.
CLIP_STD = 0.5
VOCAB = 100
WIDTH = 32
HEADS = 4


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def randomize(module: torch.nn.Module, seed: int, std: float = 0.1) -> torch.nn.Module:
    """Give every parameter random values, so swapped same-shape tensors (norm1/norm2, q/k) change outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return module.eval()


def assert_same_state(actual: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> None:
    """Exactly the same keys, dtypes, shapes and values."""
    assert sorted(actual) == sorted(expected)
    for key, value in expected.items():
        assert actual[key].dtype == value.dtype, key
        assert torch.equal(actual[key], value), key


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@contextlib.contextmanager
def torchvision_stubbed_if_unimportable() -> Iterator[None]:
    """Let open_clip import without a working torchvision.

    The test stack's torch 2.13 CPU build has no matching torchvision on PyPI (a
    mismatched one fails on import), and open_clip 2.20.0 imports torchvision at
    module level only for its image transforms and FrozenBatchNorm2d, which the
    text tower never uses. Mocks stand in for those modules while open_clip is
    imported, then are taken out of sys.modules again.
    """
    try:
        importlib.import_module("torchvision")
        importable = True
    except Exception:  # noqa: BLE001 - a torchvision built for another torch raises RuntimeError
        importable = False
    if importable:
        yield
        return
    names = ["torchvision", "torchvision.ops", "torchvision.ops.misc", "torchvision.transforms",
             "torchvision.transforms.functional"]
    saved = {name: sys.modules.get(name) for name in names}
    sys.modules.update({name: mock.MagicMock(name=name) for name in names})
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


@pytest.fixture(scope="module")
def ldm_autoencoder() -> types.ModuleType:
    pytest.importorskip("ldm", reason="needs stable-diffusion-sdkit (installed with --no-deps)")
    return importlib.import_module("ldm.models.autoencoder")


@pytest.fixture(scope="module")
def ldm_encoders() -> types.ModuleType:
    pytest.importorskip("ldm", reason="needs stable-diffusion-sdkit (installed with --no-deps)")
    if importlib.util.find_spec("open_clip") is None:
        pytest.skip("needs open-clip-torch==2.20.0 (installed with --no-deps)")
    with torchvision_stubbed_if_unimportable():
        return importlib.import_module("ldm.modules.encoders.modules")


def as_cond_stage(embedder: torch.nn.Module) -> torch.nn.Module:
    """Hang a text embedder where A1111's LatentDiffusion has it, so keys carry the checkpoint prefix."""
    holder = torch.nn.Module()
    holder.cond_stage_model = embedder
    return holder


# ---------------------------------------------------------------------------
# VAE
# ---------------------------------------------------------------------------


def tiny_diffusers_vae() -> torch.nn.Module:
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * len(VAE_CHANNELS),
        up_block_types=("UpDecoderBlock2D",) * len(VAE_CHANNELS), block_out_channels=VAE_CHANNELS,
        layers_per_block=1, norm_num_groups=32, latent_channels=4, sample_size=16)
    return randomize(vae, seed=0)


def test_vae_to_ldm_loads_strictly_and_matches_ldm_outputs(ldm_autoencoder: types.ModuleType) -> None:
    vae = tiny_diffusers_vae()
    ldm_vae = ldm_autoencoder.AutoencoderKL(ddconfig=LDM_DDCONFIG, lossconfig={"target": "torch.nn.Identity"},
                                            embed_dim=4).eval()
    ldm_vae.load_state_dict(vae_to_ldm(vae.state_dict()), strict=True)

    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    z = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert max_diff(ldm_vae.encode(x).mean, vae.encode(x).latent_dist.mean) <= TOL
        assert max_diff(ldm_vae.decode(z), vae.decode(z).sample) <= TOL


def test_vae_round_trips_exactly(ldm_autoencoder: types.ModuleType) -> None:
    sd = tiny_diffusers_vae().state_dict()
    assert_same_state(vae_to_diffusers(vae_to_ldm(sd)), sd)

    ldm_sd = randomize(ldm_autoencoder.AutoencoderKL(
        ddconfig=LDM_DDCONFIG, lossconfig={"target": "torch.nn.Identity"}, embed_dim=4), seed=3).state_dict()
    assert_same_state(vae_to_ldm(vae_to_diffusers(ldm_sd)), ldm_sd)


def test_full_size_sd_vae_layout(ldm_autoencoder: types.ModuleType) -> None:
    """The real 4-level SD VAE maps key for key and shape for shape (built on the meta device: no memory)."""
    with torch.device("meta"):
        vae = diffusers.AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=512)
        ldm_vae = ldm_autoencoder.AutoencoderKL(
            ddconfig={"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3,
                      "ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [],
                      "dropout": 0.0},
            lossconfig={"target": "torch.nn.Identity"}, embed_dim=4)
    converted = {k: tuple(v.shape) for k, v in vae_to_ldm(vae.state_dict()).items()}
    assert converted == {k: tuple(v.shape) for k, v in ldm_vae.state_dict().items()}
    assert converted["decoder.up.3.upsample.conv.weight"] == (512, 512, 3, 3)
    assert converted["encoder.mid.attn_1.q.weight"] == (512, 512, 1, 1)


def test_vae_reads_legacy_diffusers_attention_names() -> None:
    sd = tiny_diffusers_vae().state_dict()
    legacy_names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    legacy = {}
    for key, value in sd.items():
        for new, old in legacy_names.items():
            key = key.replace("attentions.0.{}.".format(new), "attentions.0.{}.".format(old))
        legacy[key] = value
    assert "decoder.mid_block.attentions.0.proj_attn.weight" in legacy
    assert_same_state(vae_to_ldm(legacy), vae_to_ldm(sd))


def test_vae_to_diffusers_drops_only_training_state() -> None:
    ldm_sd = vae_to_ldm(tiny_diffusers_vae().state_dict())
    with_training = dict(ldm_sd)
    with_training.update({"loss.logvar": torch.zeros(()), "loss.discriminator.main.0.weight": torch.zeros(2),
                          "model_ema.decay": torch.tensor(0.999), "model_ema.num_updates": torch.tensor(5)})
    assert_same_state(vae_to_diffusers(with_training), vae_to_diffusers(ldm_sd))


@pytest.mark.parametrize("convert, key", [
    (vae_to_ldm, "encoder.mid_block.attentions.0.to_x.weight"),
    (vae_to_ldm, "decoder.up.0.block.0.conv1.weight"),
    (vae_to_diffusers, "encoder.down_blocks.0.resnets.0.conv1.weight"),
    (vae_to_diffusers, "model_ema.encoderconv_inweight"),
])
def test_vae_unknown_key_raises(convert: Callable[[Mapping[str, torch.Tensor]], Dict[str, torch.Tensor]],
                                key: str) -> None:
    with pytest.raises(ValueError, match="unknown"):
        convert({key: torch.zeros(1)})


def test_vae_rejects_two_names_for_one_tensor() -> None:
    w = torch.zeros(4, 4)
    with pytest.raises(ValueError, match="map to"):
        vae_to_ldm({"encoder.mid_block.attentions.0.to_q.weight": w, "encoder.mid_block.attentions.0.query.weight": w})


# ---------------------------------------------------------------------------
# Text encoder, SD-v1
# ---------------------------------------------------------------------------


def tiny_clip_config(layers: int, act: str) -> "transformers.CLIPTextConfig":
    return transformers.CLIPTextConfig(
        vocab_size=VOCAB, hidden_size=WIDTH, intermediate_size=4 * WIDTH, num_hidden_layers=layers,
        num_attention_heads=HEADS, max_position_embeddings=CONTEXT, hidden_act=act, projection_dim=24)


def tiny_tokens() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, CONTEXT), generator=torch.Generator().manual_seed(4))


def test_clip_v1_round_trips_and_keeps_position_ids() -> None:
    sd = randomize(transformers.CLIPTextModel(tiny_clip_config(2, "quick_gelu")), seed=5).state_dict()
    assert "text_model.embeddings.position_ids" in sd
    ldm_sd = clip_to_ldm(sd, "sd-v1")
    assert_same_state(ldm_sd, sd)
    assert_same_state(clip_to_hf(ldm_sd, "sd-v1"), sd)


def test_clip_v1_loads_strictly_into_frozen_clip_embedder(ldm_encoders: types.ModuleType,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A1111's SD-v1 cond_stage_model takes the converted keys under TEXT_PREFIX["sd-v1"], nothing missing or extra."""
    config = tiny_clip_config(2, "quick_gelu")
    hf = randomize(transformers.CLIPTextModel(config), seed=6, std=CLIP_STD)
    monkeypatch.setattr(ldm_encoders, "CLIPTokenizer", types.SimpleNamespace(from_pretrained=lambda version: None))
    monkeypatch.setattr(ldm_encoders, "CLIPTextModel", types.SimpleNamespace(
        from_pretrained=lambda version: transformers.CLIPTextModel(config)))
    model = as_cond_stage(ldm_encoders.FrozenCLIPEmbedder(device="cpu"))

    model.load_state_dict({TEXT_PREFIX["sd-v1"] + k: v for k, v in clip_to_ldm(hf.state_dict(), "sd-v1").items()},
                          strict=True)
    tokens = tiny_tokens()
    with torch.no_grad():
        expected = hf(input_ids=tokens).last_hidden_state
        assert torch.equal(model.cond_stage_model.transformer(input_ids=tokens).last_hidden_state, expected)


def test_clip_v1_normalises_old_checkpoint_keys() -> None:
    sd = randomize(transformers.CLIPTextModel(tiny_clip_config(2, "quick_gelu")), seed=7).state_dict()
    old = {k[len("text_model."):]: v for k, v in sd.items()}
    assert "embeddings.position_ids" in old and "final_layer_norm.weight" in old
    assert_same_state(clip_to_hf(old, "sd-v1"), sd)

    both = dict(old, **{"text_model.final_layer_norm.weight": sd["text_model.final_layer_norm.weight"]})
    with pytest.raises(ValueError, match="map to"):
        clip_to_hf(both, "sd-v1")


@pytest.mark.parametrize("key", ["text_projection.weight", "text_model.encoder.layers.0.self_attn.qkv.weight",
                                 "cond_stage_model.transformer.text_model.final_layer_norm.weight"])
def test_clip_v1_unknown_key_raises(key: str) -> None:
    with pytest.raises(ValueError, match="unknown"):
        clip_to_ldm({key: torch.zeros(1)}, "sd-v1")


def test_unknown_family_raises() -> None:
    with pytest.raises(ValueError, match="family"):
        clip_to_ldm({}, "sdxl")
    with pytest.raises(ValueError, match="family"):
        clip_to_hf({}, "sd-v3")


# ---------------------------------------------------------------------------
# Text encoder, SD-v2 (OpenCLIP)
# ---------------------------------------------------------------------------


def tiny_open_clip(ldm_encoders: types.ModuleType, layers: int) -> torch.nn.Module:
    """An open_clip CLIP whose text tower matches tiny_clip_config(layers, "gelu")."""
    return ldm_encoders.open_clip.CLIP(
        embed_dim=24,
        vision_cfg={"layers": 1, "width": 32, "head_width": 16, "patch_size": 8, "image_size": 16},
        text_cfg={"context_length": CONTEXT, "vocab_size": VOCAB, "width": WIDTH, "heads": HEADS, "layers": layers})


def tiny_text_tower(ldm_encoders: types.ModuleType, layers: int) -> torch.nn.Module:
    """tiny_open_clip without its image tower: what SD-2 checkpoints hold under cond_stage_model.model."""
    model = tiny_open_clip(ldm_encoders, layers)
    del model.visual
    return model.eval()


def test_clip_v2_matches_a1111_penultimate_layer(ldm_encoders: types.ModuleType,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """diffusers' SD-2 text encoder (one layer short) == A1111's OpenCLIP embedder run to the penultimate block.

    The converted dict lacks exactly the unused last resblock, text_projection and logit_scale,
    which A1111's strict=False load leaves alone.
    """
    hf = randomize(transformers.CLIPTextModel(tiny_clip_config(2, "gelu")), seed=8, std=CLIP_STD)
    clip = tiny_open_clip(ldm_encoders, layers=3)
    monkeypatch.setattr(ldm_encoders.open_clip, "create_model_and_transforms", lambda *a, **k: (clip, None, None))
    model = as_cond_stage(ldm_encoders.FrozenOpenCLIPEmbedder(device="cpu", layer="penultimate"))
    prefix = TEXT_PREFIX["sd-v2"]

    result = model.load_state_dict({prefix + k: v for k, v in clip_to_ldm(hf.state_dict(), "sd-v2").items()},
                                   strict=False)
    assert result.unexpected_keys == []
    expected_missing = {prefix + k for k in model.cond_stage_model.model.state_dict()
                        if k.startswith("transformer.resblocks.2.")} | {prefix + "text_projection",
                                                                        prefix + "logit_scale"}
    assert set(result.missing_keys) == expected_missing

    tokens = tiny_tokens()
    with torch.no_grad():
        ours = model.cond_stage_model.encode_with_transformer(tokens)
        assert max_diff(ours, hf(input_ids=tokens).last_hidden_state) <= TOL


def test_clip_v2_text_projection_is_transposed(ldm_encoders: types.ModuleType) -> None:
    """CLIPTextModelWithProjection's text_embeds == open_clip's encode_text after conversion."""
    hf = randomize(transformers.CLIPTextModelWithProjection(tiny_clip_config(2, "gelu")), seed=9, std=CLIP_STD)
    model = tiny_text_tower(ldm_encoders, layers=2)
    result = model.load_state_dict(clip_to_ldm(hf.state_dict(), "sd-v2"), strict=False)
    assert (result.missing_keys, result.unexpected_keys) == (["logit_scale"], [])

    tokens = tiny_tokens()
    with torch.no_grad():
        assert max_diff(model.encode_text(tokens), hf(input_ids=tokens).text_embeds) <= TOL


@pytest.mark.parametrize("model_class", ["CLIPTextModel", "CLIPTextModelWithProjection"])
def test_clip_v2_round_trips_exactly(model_class: str) -> None:
    sd = randomize(getattr(transformers, model_class)(tiny_clip_config(2, "gelu")), seed=10).state_dict()
    assert_same_state(clip_to_hf(clip_to_ldm(sd, "sd-v2"), "sd-v2"), sd)


def test_clip_v2_from_open_clip_keeps_all_but_logit_scale(ldm_encoders: types.ModuleType) -> None:
    """A full OpenCLIP text tower (as in an SD-2 checkpoint) loses only logit_scale, and can be
    saved as it is (contiguous tensors)."""
    sd = randomize(tiny_text_tower(ldm_encoders, layers=3), seed=11).state_dict()
    hf_sd = clip_to_hf(sd, "sd-v2")

    full = transformers.CLIPTextModelWithProjection(tiny_clip_config(3, "gelu"))
    full.load_state_dict(hf_sd, strict=True)
    without_logit_scale = {k: v for k, v in sd.items() if k != "logit_scale"}
    assert_same_state(clip_to_ldm(hf_sd, "sd-v2"), without_logit_scale)
    # safetensors refuses non-contiguous tensors, e.g. an un-copied transpose
    assert all(v.is_contiguous() for v in hf_sd.values())


def test_clip_v2_rejects_what_openclip_cannot_hold() -> None:
    sd = transformers.CLIPTextModel(tiny_clip_config(1, "gelu")).state_dict()

    shuffled = dict(sd, **{"text_model.embeddings.position_ids": torch.arange(CONTEXT).flip(0).unsqueeze(0)})
    with pytest.raises(ValueError, match="position_ids"):
        clip_to_ldm(shuffled, "sd-v2")

    no_k = {k: v for k, v in sd.items() if k != "text_model.encoder.layers.0.self_attn.k_proj.weight"}
    with pytest.raises(ValueError, match="q/k/v"):
        clip_to_ldm(no_k, "sd-v2")

    with pytest.raises(ValueError, match="unknown"):
        clip_to_hf({"transformer.resblocks.0.ls_1.gamma": torch.zeros(WIDTH)}, "sd-v2")

