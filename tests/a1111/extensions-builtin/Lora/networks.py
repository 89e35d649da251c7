"""Stand-in for A1111 1.10.1 ``extensions-builtin/Lora/networks.py``: LoRA files resolved onto the loaded model by
name, and applied by patching the layers' forward.

Kept as in 1.10.1, because that is where a block-removed student goes wrong without help (docs/facts.md §12):

* ``convert_diffusers_name_to_compvis(key, is_sd2)``: kohya's diffusers-style U-Net names become LDM module names
  with SD's full numbering (``down_blocks_i_attentions_j`` -> ``input_blocks_{1+3i+j}_1``, ``up_blocks_i_…_j`` ->
  ``output_blocks_{3i+j}``, resnet parts renamed, down/upsamplers, ``mid_block``, ``conv_in``/``conv_out``,
  ``time_embedding``); text-encoder names become the SD-v1 CLIP or SD-v2 OpenCLIP names; anything else is returned
  unchanged.
* ``assign_network_names_to_compvis_modules(sd_model)``: ``sd_model.network_layer_mapping`` = every module of the
  text encoder (``wrapped`` if there is one) and of ``sd_model.model``, by name with "." -> "_"; each module's
  ``network_layer_name`` set. Run on every model load (``on_model_loaded``).
* ``load_network(name, network_on_disk)``: every key split at its first "."; the module name converted, looked
  up in ``shared.sd_model.network_layer_mapping`` (read at each lookup), then without a ``_q_proj``-style suffix,
  then with ``lora_unet`` -> ``diffusion_model`` (or ``lora_te1_text_model`` -> ``0_transformer_text_model`` /
  ``transformer_text_model``, or kohya's ``oft_unet`` -> ``diffusion_model``); a key found nowhere is only logged
  at debug level. Each matched module goes to the first of ``module_types`` (1.10.1's order) that accepts its
  parts; one that none accepts fails the whole file (AssertionError). ``net.modules`` is keyed by the name that
  matched.
* ``load_networks``: names resolved through aliases, the file re-read only when its mtime changed, networks kept
  from the previous call (``loaded_networks``) and in ``networks_in_memory`` (purged down to the
  ``lora_in_memory_limit`` option, 0 by default) reused as they are, multipliers set, ``loaded_networks`` rebuilt;
  a file that fails to load is reported with ``errors.display`` and left out.
* ``network_apply_weights``: a patched layer (Linear, Conv2d, GroupNorm, LayerNorm, MultiheadAttention) looks its
  ``network_layer_name`` up in each loaded network's ``modules``; weights are backed up once, restored when the
  set of networks changes, and each module's ``calc_updown`` is added; a RuntimeError (a shape that does not fit)
  is counted in ``extra_network_lora.errors`` and skipped; SD-v2's fused q/k/v in MultiheadAttention.

Not in the stand-in: SDXL/SD3 paths (``diffusers_weight_map``, QkvLinear, ``lora_te1/2`` beyond the lookup),
bundled embeddings, the functional (``lora_functional``) path, fp16 weight copies, inpainting padding, the
``lyco`` folder, the Lora tab and its metadata editor, the infotext-paste handlers.
"""
from __future__ import annotations

import logging
import os
import re

import torch

import lora_patches  # noqa: F401 - as in 1.10.1 (scripts/lora_script.py creates the patches)
import network
import network_full
import network_glora
import network_hada
import network_ia3
import network_lokr
import network_lora
import network_norm
import network_oft
from modules import devices, errors, paths_internal, sd_models, shared

module_types = [
    network_lora.ModuleTypeLora(),
    network_hada.ModuleTypeHada(),
    network_ia3.ModuleTypeIa3(),
    network_lokr.ModuleTypeLokr(),
    network_full.ModuleTypeFull(),
    network_norm.ModuleTypeNorm(),
    network_glora.ModuleTypeGLora(),
    network_oft.ModuleTypeOFT(),
]

re_x_proj = re.compile(r"(.*)_([qkv]_proj)$")

RESNET_PARTS = {"conv1": "in_layers_2", "conv2": "out_layers_3", "norm1": "in_layers_0", "norm2": "out_layers_0",
                "time_emb_proj": "emb_layers_1", "conv_shortcut": "skip_connection"}


def _unet_name(kind, part):
    """LDM sub-module index and part name of a diffusers attention or resnet part."""
    return (1, part) if kind == "attentions" else (0, RESNET_PARTS.get(part, part))


def convert_diffusers_name_to_compvis(key, is_sd2):
    m = re.match(r"lora_unet_conv_in(.*)", key)
    if m:
        return "diffusion_model_input_blocks_0_0" + m.group(1)
    m = re.match(r"lora_unet_conv_out(.*)", key)
    if m:
        return "diffusion_model_out_2" + m.group(1)
    m = re.match(r"lora_unet_time_embedding_linear_(\d+)(.*)", key)
    if m:
        return "diffusion_model_time_embed_%d%s" % (int(m.group(1)) * 2 - 2, m.group(2))
    m = re.match(r"lora_unet_down_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", key)
    if m:
        sub, part = _unet_name(m.group(2), m.group(4))
        return "diffusion_model_input_blocks_%d_%d_%s" % (1 + int(m.group(1)) * 3 + int(m.group(3)), sub, part)
    m = re.match(r"lora_unet_mid_block_(attentions|resnets)_(\d+)_(.+)", key)
    if m:
        sub, part = _unet_name(m.group(1), m.group(3))
        return "diffusion_model_middle_block_%d_%s" % (1 if sub else int(m.group(2)) * 2, part)
    m = re.match(r"lora_unet_up_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", key)
    if m:
        sub, part = _unet_name(m.group(2), m.group(4))
        return "diffusion_model_output_blocks_%d_%d_%s" % (int(m.group(1)) * 3 + int(m.group(3)), sub, part)
    m = re.match(r"lora_unet_down_blocks_(\d+)_downsamplers_0_conv", key)
    if m:
        return "diffusion_model_input_blocks_%d_0_op" % (3 + int(m.group(1)) * 3)
    m = re.match(r"lora_unet_up_blocks_(\d+)_upsamplers_0_conv", key)
    if m:
        stage = int(m.group(1))
        return "diffusion_model_output_blocks_%d_%d_conv" % (2 + stage * 3, 2 if stage > 0 else 1)
    m = re.match(r"lora_te_text_model_encoder_layers_(\d+)_(.+)", key)
    if m:
        layer, part = m.group(1), m.group(2)
        if not is_sd2:
            return "transformer_text_model_encoder_layers_%s_%s" % (layer, part)
        part = part.replace("mlp_fc1", "mlp_c_fc").replace("mlp_fc2", "mlp_c_proj")
        return "model_transformer_resblocks_%s_%s" % (layer, part.replace("self_attn", "attn"))
    return key


def assign_network_names_to_compvis_modules(sd_model):
    network_layer_mapping = {}
    text = getattr(shared.sd_model.cond_stage_model, "wrapped", shared.sd_model.cond_stage_model)
    for part in (text, shared.sd_model.model):
        for name, module in part.named_modules():
            network_name = name.replace(".", "_")
            network_layer_mapping[network_name] = module
            module.network_layer_name = network_name
    sd_model.network_layer_mapping = network_layer_mapping


def _lookup(key):
    return shared.sd_model.network_layer_mapping.get(key, None)


def load_network(name, network_on_disk):
    net = network.Network(name, network_on_disk)
    net.mtime = os.path.getmtime(network_on_disk.filename)
    sd = sd_models.read_state_dict(network_on_disk.filename)
    if not hasattr(shared.sd_model, "network_layer_mapping"):
        assign_network_names_to_compvis_modules(shared.sd_model)

    keys_failed_to_match = {}
    is_sd2 = "model_transformer_resblocks" in shared.sd_model.network_layer_mapping
    matched_networks = {}
    for key_network, weight in sd.items():
        module_name, _, network_part = key_network.partition(".")
        key = convert_diffusers_name_to_compvis(module_name, is_sd2)
        sd_module = _lookup(key)
        if sd_module is None:
            m = re_x_proj.match(key)
            if m:
                sd_module = _lookup(m.group(1))
        if sd_module is None and "lora_unet" in module_name:
            key = module_name.replace("lora_unet", "diffusion_model")
            sd_module = _lookup(key)
        elif sd_module is None and "lora_te1_text_model" in module_name:
            key = module_name.replace("lora_te1_text_model", "0_transformer_text_model")
            sd_module = _lookup(key)
            if sd_module is None:
                key = module_name.replace("lora_te1_text_model", "transformer_text_model")
                sd_module = _lookup(key)
        elif sd_module is None and "oft_unet" in module_name:
            key = module_name.replace("oft_unet", "diffusion_model")
            sd_module = _lookup(key)
        if sd_module is None:
            keys_failed_to_match[key_network] = key
            continue
        if key not in matched_networks:
            matched_networks[key] = network.NetworkWeights(network_key=key_network, sd_key=key, w={}, sd_module=sd_module)
        matched_networks[key].w[network_part] = weight

    for key, weights in matched_networks.items():
        net_module = None
        for nettype in module_types:
            net_module = nettype.create_module(net, weights)
            if net_module is not None:
                break
        if net_module is None:
            raise AssertionError(f"Could not find a module type (out of {', '.join(type(x).__name__ for x in module_types)}) that would accept those keys: {', '.join(weights.w)}")
        net.modules[key] = net_module

    if keys_failed_to_match:
        logging.debug(f"Network {network_on_disk.filename} didn't match keys: {keys_failed_to_match}")
    return net


def purge_networks_from_memory():
    while len(networks_in_memory) > shared.opts.lora_in_memory_limit and len(networks_in_memory) > 0:
        networks_in_memory.pop(next(iter(networks_in_memory)))
    devices.torch_gc()


def load_networks(names, te_multipliers=None, unet_multipliers=None, dyn_dims=None):
    already_loaded = {net.name: net for net in loaded_networks if net.name in names}
    loaded_networks.clear()
    networks_on_disk = [available_network_aliases.get(name, None) for name in names]
    if any(x is None for x in networks_on_disk):
        list_available_networks()
        networks_on_disk = [available_network_aliases.get(name, None) for name in names]

    failed_to_load_networks = []
    for i, (network_on_disk, name) in enumerate(zip(networks_on_disk, names)):
        net = already_loaded.get(name, None)
        if network_on_disk is not None:
            if net is None:
                net = networks_in_memory.get(name)
            if net is None or os.path.getmtime(network_on_disk.filename) > net.mtime:
                try:
                    net = load_network(name, network_on_disk)
                    networks_in_memory.pop(name, None)
                    networks_in_memory[name] = net
                except Exception as e:
                    errors.display(e, f"loading network {network_on_disk.filename}")
                    continue
            net.mentioned_name = name
            network_on_disk.read_hash()
        if net is None:
            failed_to_load_networks.append(name)
            logging.info(f"Couldn't find network with name {name}")
            continue
        net.te_multiplier = te_multipliers[i] if te_multipliers else 1.0
        net.unet_multiplier = unet_multipliers[i] if unet_multipliers else 1.0
        net.dyn_dim = dyn_dims[i] if dyn_dims else 1.0
        loaded_networks.append(net)
    if failed_to_load_networks:
        print("Lora not found: " + ", ".join(failed_to_load_networks))
    purge_networks_from_memory()


def network_restore_weights_from_backup(self):
    weights_backup = getattr(self, "network_weights_backup", None)
    bias_backup = getattr(self, "network_bias_backup", None)
    if weights_backup is None and bias_backup is None:
        return
    if weights_backup is not None:
        if isinstance(self, torch.nn.MultiheadAttention):
            self.in_proj_weight.copy_(weights_backup[0])
            self.out_proj.weight.copy_(weights_backup[1])
        else:
            self.weight.copy_(weights_backup)
    target = self.out_proj if isinstance(self, torch.nn.MultiheadAttention) else self
    if bias_backup is None:
        target.bias = None
    else:
        target.bias.copy_(bias_backup)


def network_apply_weights(self):
    network_layer_name = getattr(self, "network_layer_name", None)
    if network_layer_name is None:
        return
    current_names = getattr(self, "network_current_names", ())
    wanted_names = tuple((x.name, x.te_multiplier, x.unet_multiplier, x.dyn_dim) for x in loaded_networks)
    mha = isinstance(self, torch.nn.MultiheadAttention)

    weights_backup = getattr(self, "network_weights_backup", None)
    if weights_backup is None and wanted_names != ():
        if current_names != ():
            raise RuntimeError(f"{network_layer_name} - no backup weights found and current weights are not unchanged")
        weights_backup = ((self.in_proj_weight.to(devices.cpu, copy=True), self.out_proj.weight.to(devices.cpu, copy=True))
                          if mha else self.weight.to(devices.cpu, copy=True))
        self.network_weights_backup = weights_backup
    bias_backup = getattr(self, "network_bias_backup", None)
    if bias_backup is None and wanted_names != ():
        bias = self.out_proj.bias if mha else getattr(self, "bias", None)
        self.network_bias_backup = None if bias is None else bias.to(devices.cpu, copy=True)

    if current_names == wanted_names:
        return
    network_restore_weights_from_backup(self)
    for net in loaded_networks:
        module = net.modules.get(network_layer_name, None)
        if module is not None and hasattr(self, "weight"):
            try:
                with torch.no_grad():
                    updown, ex_bias = module.calc_updown(self.weight)
                    self.weight.copy_((self.weight.to(dtype=updown.dtype) + updown).to(dtype=self.weight.dtype))
                    if ex_bias is not None and hasattr(self, "bias"):
                        if self.bias is None:
                            self.bias = torch.nn.Parameter(ex_bias).to(self.weight.dtype)
                        else:
                            self.bias.copy_((self.bias + ex_bias).to(dtype=self.bias.dtype))
            except RuntimeError as e:
                logging.debug(f"Network {net.name} layer {network_layer_name}: {e}")
                extra_network_lora.errors[net.name] = extra_network_lora.errors.get(net.name, 0) + 1
            continue

        projections = [net.modules.get(network_layer_name + "_" + p, None) for p in ("q_proj", "k_proj", "v_proj", "out_proj")]
        if mha and all(projections):
            try:
                with torch.no_grad():
                    chunks = self.in_proj_weight.chunk(3, 0)
                    qkv = torch.vstack([m.calc_updown(w)[0] for m, w in zip(projections[:3], chunks)])
                    updown_out, ex_bias = projections[3].calc_updown(self.out_proj.weight)
                    self.in_proj_weight += qkv
                    self.out_proj.weight += updown_out
                    if ex_bias is not None:
                        self.out_proj.bias += ex_bias
            except RuntimeError as e:
                logging.debug(f"Network {net.name} layer {network_layer_name}: {e}")
                extra_network_lora.errors[net.name] = extra_network_lora.errors.get(net.name, 0) + 1
            continue
        if module is None:
            continue
        logging.debug(f"Network {net.name} layer {network_layer_name}: couldn't find supported operation")
        extra_network_lora.errors[net.name] = extra_network_lora.errors.get(net.name, 0) + 1
    self.network_current_names = wanted_names


def network_reset_cached_weight(self):
    self.network_current_names = ()
    self.network_weights_backup = None
    self.network_bias_backup = None


def _patched(kind):
    def forward(self, *args, **kwargs):
        network_apply_weights(self)
        return getattr(originals, kind + "_forward")(self, *args, **kwargs)

    def load_state_dict(self, *args, **kwargs):
        network_reset_cached_weight(self)
        return getattr(originals, kind + "_load_state_dict")(self, *args, **kwargs)

    return forward, load_state_dict


network_Linear_forward, network_Linear_load_state_dict = _patched("Linear")
network_Conv2d_forward, network_Conv2d_load_state_dict = _patched("Conv2d")
network_GroupNorm_forward, network_GroupNorm_load_state_dict = _patched("GroupNorm")
network_LayerNorm_forward, network_LayerNorm_load_state_dict = _patched("LayerNorm")
network_MultiheadAttention_forward, network_MultiheadAttention_load_state_dict = _patched("MultiheadAttention")


def _lora_dir():
    return getattr(shared.cmd_opts, "lora_dir", None) or os.path.join(paths_internal.models_path, "Lora")


def process_network_files(names: list[str] | None = None):
    folder = _lora_dir()
    candidates = sorted(os.path.join(root, f) for root, _, files in os.walk(folder) for f in files
                        if os.path.splitext(f)[1].lower() in (".pt", ".ckpt", ".safetensors"))
    for filename in candidates:
        name = os.path.splitext(os.path.basename(filename))[0]
        if names and name not in names:
            continue
        entry = network.NetworkOnDisk(name, filename)
        available_networks[name] = entry
        if entry.alias in available_network_aliases:
            forbidden_network_aliases[entry.alias.lower()] = 1
        available_network_aliases[name] = entry
        available_network_aliases[entry.alias] = entry


def list_available_networks():
    available_networks.clear()
    available_network_aliases.clear()
    forbidden_network_aliases.clear()
    available_network_hash_lookup.clear()
    forbidden_network_aliases.update({"none": 1, "Addams": 1})
    os.makedirs(_lora_dir(), exist_ok=True)
    process_network_files()


originals = None  # lora_patches.LoraPatches, set by scripts/lora_script.py
extra_network_lora = None  # extra_networks_lora.ExtraNetworkLora, set by its before_ui callback

available_networks = {}
available_network_aliases = {}
loaded_networks = []
networks_in_memory = {}
available_network_hash_lookup = {}
forbidden_network_aliases = {}

list_available_networks()
