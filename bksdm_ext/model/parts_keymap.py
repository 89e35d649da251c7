"""Key converters for the VAE and text encoder of an SD v1/v2 checkpoint.

A BK-SDM student only changes the U-Net; its VAE and text encoder are the
teacher's. To move a student between a diffusers folder and an A1111 single
file, these two parts must be renamed (and a few tensors reshaped) without
losing anything, so every converter here is lossless and raises ``ValueError``
on a key it does not know instead of dropping it.

Layouts (keys in and out exclude the checkpoint prefixes below):

* VAE: diffusers ``AutoencoderKL`` <-> LDM ``first_stage_model``. Block counts
  are read from the keys, so tiny test VAEs work as well as the 4-level one.
* Text encoder SD-v1: HF ``CLIPTextModel`` <-> A1111's ``FrozenCLIPEmbedder``,
  which wraps the same HF model, so only the key set is checked (and old
  checkpoints' ``embeddings.``/``encoder.``/``final_layer_norm.`` keys, which
  are also transformers 5's names, are normalised to ``text_model.…`` the way
  A1111 does when it loads them: see clip_naming).
* Text encoder SD-v2: HF ``CLIPTextModel`` (a diffusers SD-2 ``text_encoder/``)
  <-> OpenCLIP's text tower as A1111's ``FrozenOpenCLIPEmbedder`` holds it.

Documented exceptions to "lossless" (all SD-v2 text encoder, plus VAE training
leftovers):

* HF -> OpenCLIP: diffusers' SD-2 text encoder has 23 layers, OpenCLIP's tower
  24 resblocks. Nothing is made up for the missing last block (nor for
  ``logit_scale``): SD-2 conditions on the penultimate layer, so A1111's
  embedder (``layer="penultimate"``) never runs that block, and A1111 loads
  checkpoints with ``strict=False`` (missing parameters become zeros). Filler
  weights would only let a consumer that does run the block use noise without
  noticing. diffusers' own ``convert_diffusers_to_original_stable_diffusion.py``
  writes the same 23 blocks.
* HF -> OpenCLIP: ``text_model.embeddings.position_ids`` has no OpenCLIP
  counterpart; it must be ``arange`` (else ``ValueError``) and OpenCLIP -> HF
  rebuilds it, since transformers 4.30.2 (A1111's pin) keeps it in the state
  dict. Drop it yourself for transformers >= 4.31, where it is not persistent.
* OpenCLIP -> HF: ``logit_scale`` (the contrastive temperature, no place in any
  HF text model, unused for conditioning) is dropped. ``text_projection`` is
  kept as ``text_projection.weight`` (what ``CLIPTextModelWithProjection``
  holds), and every resblock is kept: a real SD-2 checkpoint therefore gives
  24 layers plus the projection; to load it into diffusers' 23-layer
  ``CLIPTextModel``, drop ``text_model.encoder.layers.23.*`` and
  ``text_projection.weight`` (both unused by SD-2).
* LDM VAE -> diffusers: ``loss*`` (LPIPS/discriminator) and
  ``model_ema.decay``/``model_ema.num_updates`` are dropped, as A1111 does when
  it loads a VAE file; they are training state, not part of the autoencoder.

Tensors are passed through, or reshaped/split as views, rather than copied: a
text encoder is hundreds of MB. The only copies are the fused q/k/v and the
transposed ``text_projection``, made contiguous so the result saves with
safetensors.
"""

import re
from typing import Dict, Iterable, List, Mapping, Tuple

import torch

from .clip_naming import nested_name, nested_names

VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = {"sd-v1": "cond_stage_model.transformer.", "sd-v2": "cond_stage_model.model."}

StateDict = Dict[str, torch.Tensor]
KeyPairs = List[Tuple[str, str]]

# ---------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------


def _count(keys: Iterable[str], pattern: str) -> int:
    """Return 1 + the largest index captured by ``pattern`` (0 if none), to size a layout from its keys."""
    found = [int(m.group(1)) for m in (re.match(pattern, k) for k in keys) if m]
    return max(found) + 1 if found else 0


def _rename(sd: Mapping[str, torch.Tensor], names: Mapping[str, str], what: str) -> StateDict:
    """Rename every key through ``names``; unknown keys and two keys landing on one name are errors."""
    out: StateDict = {}
    for key, value in sd.items():
        if key not in names:
            raise ValueError("unknown {} key {!r}".format(what, key))
        new_key = names[key]
        if new_key in out:
            raise ValueError("two {} keys map to {!r} (e.g. {!r})".format(what, new_key, key))
        out[new_key] = value
    return out


def _weight_and_bias(pairs: Iterable[Tuple[str, str]]) -> KeyPairs:
    """Expand module-path pairs into ``.weight`` and ``.bias`` key pairs."""
    return [(a + suffix, b + suffix) for a, b in pairs for suffix in (".weight", ".bias")]


def _check_family(family: str) -> None:
    """Fail early on a family this module has no text-encoder layout for."""
    if family not in TEXT_PREFIX:
        raise ValueError("unknown model family {!r}; expected one of {}".format(family, sorted(TEXT_PREFIX)))


# ---------------------------------------------------------------------------
# VAE
# ---------------------------------------------------------------------------

# Resnet parts, (diffusers, LDM).
_VAE_RESNET = [("norm1", "norm1"), ("conv1", "conv1"), ("norm2", "norm2"), ("conv2", "conv2"),
               ("conv_shortcut", "nin_shortcut")]
# Mid-block attention parts, (diffusers, LDM).
_VAE_ATTENTION = [("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")]
# Attention names of diffusers' former AttentionBlock. diffusers 0.30.3 never
# writes them (its models only have to_q/to_k/to_v/to_out.0) but still renames
# them when loading an old folder, so a raw read of such a folder has them.
_VAE_LEGACY_ATTENTION = [("query", "q"), ("key", "k"), ("value", "v"), ("proj_attn", "proj_out")]
# LDM attention weights are 1x1 convolutions, diffusers' are linear layers.
_LDM_VAE_CONV_ATTENTION = re.compile(r"(?:en|de)coder\.mid\.attn_1\.(?:q|k|v|proj_out)\.weight")
# Training state that A1111 also skips when it loads a VAE file.
_LDM_VAE_TRAINING_KEYS = ("model_ema.decay", "model_ema.num_updates")


def _block_resnet_pairs(diffusers_block: str, ldm_block: str, n_resnets: int) -> KeyPairs:
    """(diffusers, LDM) module paths of the resnets in one down/up block."""
    return [("{}resnets.{}.{}".format(diffusers_block, j, d), "{}block.{}.{}".format(ldm_block, j, l))
            for j in range(n_resnets) for d, l in _VAE_RESNET]


def _vae_pairs(n_down: int, n_up: int, n_resnets: int, legacy: bool = False) -> KeyPairs:
    """List (diffusers key, LDM key) for a VAE of the given size; LDM numbers decoder blocks in reverse."""
    attention = _VAE_ATTENTION + (_VAE_LEGACY_ATTENTION if legacy else [])
    modules = [("quant_conv", "quant_conv"), ("post_quant_conv", "post_quant_conv")]
    for side in ("encoder", "decoder"):
        modules += [(side + ".conv_in", side + ".conv_in"), (side + ".conv_norm_out", side + ".norm_out"),
                    (side + ".conv_out", side + ".conv_out")]
        for m in (0, 1):
            modules += [("{}.mid_block.resnets.{}.{}".format(side, m, d), "{}.mid.block_{}.{}".format(side, m + 1, l))
                        for d, l in _VAE_RESNET]
        modules += [("{}.mid_block.attentions.0.{}".format(side, d), "{}.mid.attn_1.{}".format(side, l))
                    for d, l in attention]
    for i in range(n_down):
        block, ldm_block = "encoder.down_blocks.{}.".format(i), "encoder.down.{}.".format(i)
        modules.append((block + "downsamplers.0.conv", ldm_block + "downsample.conv"))
        modules += _block_resnet_pairs(block, ldm_block, n_resnets)
    for i in range(n_up):
        block, ldm_block = "decoder.up_blocks.{}.".format(i), "decoder.up.{}.".format(n_up - 1 - i)
        modules.append((block + "upsamplers.0.conv", ldm_block + "upsample.conv"))
        modules += _block_resnet_pairs(block, ldm_block, n_resnets)
    return _weight_and_bias(modules)


def _linear_to_conv1x1(key: str, w: torch.Tensor) -> torch.Tensor:
    """Give a [C, C] linear weight the [C, C, 1, 1] shape LDM's 1x1 convolutions load."""
    if w.dim() == 2:
        return w.reshape(w.shape[0], w.shape[1], 1, 1)
    if w.dim() == 4 and w.shape[2:] == (1, 1):
        return w
    raise ValueError("{!r}: expected a 2-D or 1x1 attention weight, got shape {}".format(key, tuple(w.shape)))


def _conv1x1_to_linear(key: str, w: torch.Tensor) -> torch.Tensor:
    """Give a [C, C, 1, 1] convolution weight the [C, C] shape diffusers' linear layers load."""
    if w.dim() == 4 and w.shape[2:] == (1, 1):
        return w.reshape(w.shape[0], w.shape[1])
    if w.dim() == 2:
        return w
    raise ValueError("{!r}: expected a 2-D or 1x1 attention weight, got shape {}".format(key, tuple(w.shape)))


def vae_to_ldm(sd: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Convert a diffusers ``AutoencoderKL`` state dict to the keys after ``first_stage_model.``.

    Reads both current and legacy (``query``/``key``/``value``/``proj_attn``) attention names.
    """
    keys = list(sd)
    pairs = _vae_pairs(_count(keys, r"encoder\.down_blocks\.(\d+)\."), _count(keys, r"decoder\.up_blocks\.(\d+)\."),
                       _count(keys, r".*\.resnets\.(\d+)\."), legacy=True)
    out = _rename(sd, dict(pairs), "diffusers VAE")
    return {k: _linear_to_conv1x1(k, v) if _LDM_VAE_CONV_ATTENTION.fullmatch(k) else v for k, v in out.items()}


def vae_to_diffusers(sd: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Convert LDM VAE keys (after ``first_stage_model.``) to a diffusers ``AutoencoderKL`` state dict.

    Drops ``loss*`` and ``model_ema.decay``/``model_ema.num_updates`` (training state), as A1111 does.
    """
    sd = {k: v for k, v in sd.items() if not (k.startswith("loss") or k in _LDM_VAE_TRAINING_KEYS)}
    keys = list(sd)
    pairs = _vae_pairs(_count(keys, r"encoder\.down\.(\d+)\."), _count(keys, r"decoder\.up\.(\d+)\."),
                       _count(keys, r".*\.block\.(\d+)\."))
    reshaped = {k: _conv1x1_to_linear(k, v) if _LDM_VAE_CONV_ATTENTION.fullmatch(k) else v for k, v in sd.items()}
    return _rename(reshaped, {ldm: diffusers for diffusers, ldm in pairs}, "LDM VAE")


# ---------------------------------------------------------------------------
# Text encoders
# ---------------------------------------------------------------------------

_HF_POSITION_IDS = "text_model.embeddings.position_ids"
_HF_LAYER = "text_model.encoder.layers.{}."
_HF_QKV = ("q_proj", "k_proj", "v_proj")
# Per-layer parts other than q/k/v, (HF, OpenCLIP).
_CLIP_LAYER_PARTS = [("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"),
                     ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")]
# Whole-model parts, (HF, OpenCLIP); text_projection is also transposed.
_CLIP_TOP_PAIRS = [
    ("text_model.embeddings.token_embedding.weight", "token_embedding.weight"),
    ("text_model.embeddings.position_embedding.weight", "positional_embedding"),
    ("text_model.final_layer_norm.weight", "ln_final.weight"),
    ("text_model.final_layer_norm.bias", "ln_final.bias"),
    ("text_projection.weight", "text_projection"),
]
_OPENCLIP_LOGIT_SCALE = "logit_scale"


def _hf_layer_count(keys: Iterable[str]) -> int:
    """Number of HF CLIP encoder layers named in ``keys``."""
    return _count(keys, r"text_model\.encoder\.layers\.(\d+)\.")


def _v1_keys(n_layers: int) -> List[str]:
    """All keys of an HF ``CLIPTextModel`` with ``n_layers`` layers, as SD-v1's embedder holds them."""
    keys = [_HF_POSITION_IDS] + [hf for hf, _ in _CLIP_TOP_PAIRS if hf != "text_projection.weight"]
    for n in range(n_layers):
        parts = ["self_attn." + p for p in _HF_QKV] + [hf for hf, _ in _CLIP_LAYER_PARTS]
        keys += [_HF_LAYER.format(n) + p + s for p in parts for s in (".weight", ".bias")]
    return keys


def _v2_pairs(n_layers: int) -> KeyPairs:
    """(HF key, OpenCLIP key) for everything but q/k/v and position_ids."""
    pairs = list(_CLIP_TOP_PAIRS)
    for n in range(n_layers):
        pairs += _weight_and_bias((_HF_LAYER.format(n) + hf, "transformer.resblocks.{}.{}".format(n, oc))
                                  for hf, oc in _CLIP_LAYER_PARTS)
    return pairs


def _check_position_ids(ids: torch.Tensor) -> None:
    """OpenCLIP has no position_ids; only the standard ``arange`` can be dropped and rebuilt losslessly."""
    expected = torch.arange(ids.shape[-1]).unsqueeze(0)
    if ids.shape != expected.shape or not torch.equal(ids.to(device="cpu", dtype=torch.long), expected):
        raise ValueError("{} is not the standard arange(0, N); OpenCLIP cannot hold it".format(_HF_POSITION_IDS))


def _clip_v2_to_openclip(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """HF ``CLIPTextModel`` -> OpenCLIP text tower; q/k/v are fused into ``in_proj``."""
    rest = dict(sd)
    if _HF_POSITION_IDS in rest:
        _check_position_ids(rest.pop(_HF_POSITION_IDS))
    n_layers = _hf_layer_count(rest)
    fused: StateDict = {}
    for n in range(n_layers):
        for param in ("weight", "bias"):
            names = [_HF_LAYER.format(n) + "self_attn.{}.{}".format(p, param) for p in _HF_QKV]
            present = [name for name in names if name in rest]
            if not present:
                continue
            if len(present) != 3:
                raise ValueError("layer {} has only {} of q/k/v {}".format(n, present, param))
            fused["transformer.resblocks.{}.attn.in_proj_{}".format(n, param)] = torch.cat([rest.pop(k) for k in names])
    out = _rename(rest, dict(_v2_pairs(n_layers)), "HF CLIP text")
    if "text_projection" in out:
        out["text_projection"] = out["text_projection"].t().contiguous()
    out.update(fused)
    return out


def _clip_v2_to_hf(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """OpenCLIP text tower -> HF ``CLIPTextModel``; ``in_proj`` is split into q/k/v."""
    rest = {k: v for k, v in sd.items() if k != _OPENCLIP_LOGIT_SCALE}
    n_layers = _count(rest, r"transformer\.resblocks\.(\d+)\.")
    split: StateDict = {}
    for n in range(n_layers):
        for param in ("weight", "bias"):
            key = "transformer.resblocks.{}.attn.in_proj_{}".format(n, param)
            if key not in rest:
                continue
            fused = rest.pop(key)
            if fused.shape[0] % 3 != 0:
                raise ValueError("{!r}: first dimension {} is not 3 x width".format(key, fused.shape[0]))
            for p, part in zip(_HF_QKV, fused.chunk(3)):
                split[_HF_LAYER.format(n) + "self_attn.{}.{}".format(p, param)] = part
    out = _rename(rest, {oc: hf for hf, oc in _v2_pairs(n_layers)}, "OpenCLIP text")
    if "text_projection.weight" in out:
        out["text_projection.weight"] = out["text_projection.weight"].t().contiguous()
    if "text_model.embeddings.position_embedding.weight" in out:
        n_positions = out["text_model.embeddings.position_embedding.weight"].shape[0]
        out[_HF_POSITION_IDS] = torch.arange(n_positions).unsqueeze(0)
    out.update(split)
    return out


def _v1_checked(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """SD-v1's embedder holds the HF model itself: keep its keys (in the nested naming), reject others."""
    names = {k: nested_name(k) for k in sd}
    known = set(_v1_keys(_hf_layer_count(names.values())))
    return _rename(sd, {k: v for k, v in names.items() if v in known}, "SD-v1 CLIP text")


def clip_to_ldm(sd: Mapping[str, torch.Tensor], family: str) -> Dict[str, torch.Tensor]:
    """Convert an HF ``CLIPTextModel`` state dict (either transformers naming) to the keys
    after ``TEXT_PREFIX[family]``."""
    _check_family(family)
    if family == "sd-v1":
        return _v1_checked(sd)
    return _clip_v2_to_openclip(nested_names(sd))


def clip_to_hf(sd: Mapping[str, torch.Tensor], family: str) -> Dict[str, torch.Tensor]:
    """Convert the keys after ``TEXT_PREFIX[family]`` to an HF ``CLIPTextModel`` state dict."""
    _check_family(family)
    if family == "sd-v1":
        return _v1_checked(sd)
    return _clip_v2_to_hf(sd)
