"""Stand-in for A1111 1.10.1 ``extensions-builtin/Lora/network.py``: a LoRA file on disk, a loaded network and
the base of its per-layer modules.

``NetworkModule`` keeps 1.10.1's behaviour that decides where and how much a module changes a layer: ``shape``
(the layer's weight shape), ``dim``/``alpha``/``scale`` -> ``calc_scale()``, ``multiplier()`` (the text-encoder
multiplier when ``sd_key`` has "transformer" in its first 20 characters, else the U-Net one) and
``finalize_updown`` (reshape to the layer, scale, multiplier; ``bias``/``dora_scale`` parts are not applied in
the stand-in); a module resolved to a layer without a weight (a ResBlock's Identity ``skip_connection``) raises
TypeError in the constructor, which fails the whole file, as in 1.10.1. ``NetworkOnDisk`` reads the .safetensors metadata (not through A1111's cache), its alias
(``ss_output_name``), SD version and sha256 (the stand-in's ``hashes`` hash whole files, also for
``use_addnet_hash``). Not kept: the functional ``forward`` path, QkvLinear (SD3), user metadata."""
from __future__ import annotations

import enum
import os
from collections import namedtuple

from modules import hashes, sd_models

NetworkWeights = namedtuple('NetworkWeights', ['network_key', 'sd_key', 'w', 'sd_module'])


class SdVersion(enum.Enum):
    Unknown = 1
    SD1 = 2
    SD2 = 3
    SDXL = 4


class NetworkOnDisk:
    def __init__(self, name, filename):
        self.name = name
        self.filename = filename
        self.is_safetensors = os.path.splitext(filename)[1].lower() == ".safetensors"
        self.metadata = sd_models.read_metadata_from_safetensors(filename) if self.is_safetensors else {}
        self.alias = self.metadata.get('ss_output_name', self.name)
        self.hash = None
        self.shorthash = None
        self.set_hash(self.metadata.get('sshs_model_hash') or
                      hashes.sha256_from_cache(self.filename, "lora/" + self.name, use_addnet_hash=self.is_safetensors) or '')
        self.sd_version = self.detect_version()

    def detect_version(self):
        if str(self.metadata.get('ss_base_model_version', "")).startswith("sdxl_"):
            return SdVersion.SDXL
        if str(self.metadata.get('ss_v2', "")) == "True":
            return SdVersion.SD2
        return SdVersion.SD1 if self.metadata else SdVersion.Unknown

    def set_hash(self, v):
        self.hash = v
        self.shorthash = self.hash[0:12]
        if self.shorthash:
            import networks
            networks.available_network_hash_lookup[self.shorthash] = self

    def read_hash(self):
        if not self.hash:
            self.set_hash(hashes.sha256(self.filename, "lora/" + self.name, use_addnet_hash=self.is_safetensors) or '')

    def get_alias(self):
        import networks
        if self.alias.lower() in networks.forbidden_network_aliases:
            return self.name
        return self.alias


class Network:  # LoraModule
    def __init__(self, name, network_on_disk: NetworkOnDisk):
        self.name = name
        self.network_on_disk = network_on_disk
        self.te_multiplier = 1.0
        self.unet_multiplier = 1.0
        self.dyn_dim = None
        self.modules = {}
        self.bundle_embeddings = {}
        self.mtime = None
        self.mentioned_name = None


class ModuleType:
    def create_module(self, net: Network, weights: NetworkWeights) -> Network | None:
        return None


class NetworkModule:
    def __init__(self, net: Network, weights: NetworkWeights):
        self.network = net
        self.network_key = weights.network_key
        self.sd_key = weights.sd_key
        self.sd_module = weights.sd_module
        if hasattr(self.sd_module, 'weight'):
            self.shape = self.sd_module.weight.shape
        elif hasattr(self.sd_module, 'out_proj'):  # MultiheadAttention: q/k/v/out share the out shape
            self.shape = self.sd_module.out_proj.weight.shape
        else:
            self.shape = None
        self.dim = None
        self.bias = weights.w.get("bias")
        self.alpha = weights.w["alpha"].item() if "alpha" in weights.w else None
        self.scale = weights.w["scale"].item() if "scale" in weights.w else None
        self.dora_scale = weights.w.get("dora_scale", None)
        self.dora_norm_dims = len(self.shape) - 1  # a module without a weight fails here, as in 1.10.1

    def multiplier(self):
        return self.network.te_multiplier if 'transformer' in self.sd_key[:20] else self.network.unet_multiplier

    def calc_scale(self):
        if self.scale is not None:
            return self.scale
        if self.dim is not None and self.alpha is not None:
            return self.alpha / self.dim
        return 1.0

    def finalize_updown(self, updown, orig_weight, output_shape, ex_bias=None):
        if len(output_shape) == 4:
            updown = updown.reshape(output_shape)
        if orig_weight.size().numel() == updown.size().numel():
            updown = updown.reshape(orig_weight.shape)
        if ex_bias is not None:
            ex_bias = ex_bias * self.multiplier()
        return updown * self.calc_scale() * self.multiplier(), ex_bias

    def calc_updown(self, target):
        raise NotImplementedError()
