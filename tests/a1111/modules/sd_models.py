"""Stand-in for A1111 1.10.1 ``modules/sd_models.py``: listing, choosing and loading checkpoints.

Listing: ``.ckpt``/``.safetensors`` files (not ``.vae.*``) under ``--ckpt-dir`` and ``models/Stable-diffusion``,
in natural order; a file's title is its path relative to that folder, plus `` [<sha256[:10]>]`` once it was hashed
(hashing happens when it is loaded).

Loading (``load_model``): state dict (``get_checkpoint_state_dict``) -> ``sd_models_config.find_checkpoint_config``
(looked up on the module at each call) -> ``OmegaConf.load`` + ``repair_config`` -> ``instantiate_from_config`` ->
``load_model_weights`` (``load_state_dict(strict=False)``: missing and unexpected keys are ignored silently) ->
``sd_checkpoint_info``/``sd_model_checkpoint``/``sd_model_hash``/``used_config``/``is_sd1``/``is_sd2`` set ->
``script_callbacks.model_loaded_callback``. 1.10.1 creates Linear/Conv2d/MultiheadAttention layers on the meta
device and materializes the ones the checkpoint lacks as zeros; here those layers are zero-filled before the
weights are applied, with the same result (norm layers keep their init values; not with
``--disable-model-loading-ram-optimization``). Reloading into a model built from the same yaml keeps the old values
of missing weights. Unless ``--no-half`` the model is cast to float16, except ``alphas_cumprod``.

The model: the yaml's ``LatentDiffusion`` is built as ``StandInLatentDiffusion`` (tests cannot download CLIP or a
VAE): the real ``ldm`` U-Net from ``unet_config`` at ``sd_model.model.diffusion_model``, ``parameterization``, the
``betas``/``alphas_cumprod`` buffers, a small stand-in text encoder at ``cond_stage_model`` (prompt words hashed to
tokens -> ``[B, 77, context_dim]``; SD-v2 yamls give it a ``.model`` child like OpenCLIP's, which is how
``set_model_type`` tells SD-v2) and a stand-in VAE at ``first_stage_model`` (``decode(z)``: ``[B, 4, h, w]`` ->
``[B, 3, 8h, 8w]`` by one fixed upsampling convolution; ``encode(x)`` the other way by one fixed stride-8
convolution, returning the latent itself where ldm returns a distribution to sample), and ldm's
``get_learned_conditioning``, ``apply_model``, ``encode_first_stage``, ``get_first_stage_encoding``,
``decode_first_stage`` and ``ema_scope``. An inpainting yaml's ``LatentInpaintDiffusion`` is built the same way
with its ``conditioning_key`` (``hybrid``): ``apply_model`` then concatenates ``c_concat`` (mask and masked-image
latent) to the latent before the U-Net, as ldm's ``DiffusionWrapper`` does. The text encoder's and VAE's weights are fixed random values (the same for
every model, never from the global RNG) held as non-persistent buffers: they are moved and cast with the model but
are not in ``state_dict()`` and ``load_state_dict`` never sees them, so a checkpoint's real CLIP/VAE tensors stay
unexpected keys (ignored, whatever their shapes) and ``state_dict()`` has only the U-Net and the schedule.
Of 1.10.1's model hijack only ``sd_hijack_unet.th`` is applied (U-Net skip connections resized, so sides that are
multiples of 8 work). One model at a time: no checkpoint cache, no RAM/VRAM shuffling, no fp8 or lowvram.
"""

import contextlib
import importlib
import os
import re
import sys
import threading
import zlib

import safetensors.torch
import torch
from omegaconf import OmegaConf

from modules import devices, errors, hashes, paths_internal, script_callbacks, sd_hijack_unet, sd_models_config, shared

model_dir = "Stable-diffusion"
model_path = os.path.join(paths_internal.models_path, model_dir)  # standin_app.reset re-points it

checkpoints_list = {}  # title -> CheckpointInfo
checkpoint_aliases = {}  # any id (title, name, hash, ...) -> CheckpointInfo


class CheckpointInfo:
    def __init__(self, filename):
        self.filename = filename
        self.is_safetensors = filename.lower().endswith(".safetensors")
        full = os.path.abspath(filename)
        self.name = os.path.basename(filename)
        for folder in (shared.cmd_opts.ckpt_dir, model_path):
            if folder and full.startswith(os.path.join(os.path.abspath(folder), "")):
                self.name = os.path.relpath(full, os.path.abspath(folder))
                break
        self.name_for_extra = os.path.basename(os.path.splitext(filename)[0])
        self.model_name = re.sub(r"[\\/]", "_", os.path.splitext(self.name)[0])

        self.sha256 = hashes.sha256_from_cache(filename, "checkpoint/" + self.name)
        self.shorthash = self.sha256[:10] if self.sha256 else None
        suffix = " [%s]" % self.shorthash if self.shorthash else ""
        self.title = self.name + suffix
        self.short_title = self.name_for_extra + suffix
        self.ids = [self.model_name, self.title, self.name, self.name_for_extra]
        if self.shorthash:
            self.ids += [self.shorthash, self.sha256, self.short_title]

    def register(self):
        checkpoint_aliases.update(dict.fromkeys(self.ids, self))
        checkpoints_list.update({self.title: self})

    def calculate_shorthash(self):
        """Hashes the file (once); the entry's title gains `` [hash]``, in place in ``checkpoints_list``."""
        self.sha256 = hashes.sha256(self.filename, "checkpoint/" + self.name)
        if self.sha256 is None:
            return None
        short = self.sha256[:10]
        if short != self.shorthash:
            self.shorthash = short
            self.title = "%s [%s]" % (self.name, short)
            self.short_title = "%s [%s]" % (self.name_for_extra, short)
            self.ids += [short, self.sha256, self.title, self.short_title]
            retitled = [(self.title if info is self else title, info) for title, info in checkpoints_list.items()]
            checkpoints_list.clear()
            checkpoints_list.update(retitled)
            self.register()
        return short


def setup_model():
    if not os.path.isdir(model_path):
        os.makedirs(model_path)


def checkpoint_tiles(use_short=False):
    field = "short_title" if use_short else "title"
    return [getattr(info, field) for info in checkpoints_list.values()]


def list_models():
    for registry in (checkpoints_list, checkpoint_aliases):
        registry.clear()
    found = []
    for folder in (shared.cmd_opts.ckpt_dir, model_path):
        if not folder or not os.path.isdir(folder):
            continue
        files = [os.path.join(root, name) for root, _, names in os.walk(folder, followlinks=True) for name in names]
        for path in sorted(files, key=lambda p: [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p)]):
            lower = path.lower()
            wanted = lower.endswith((".ckpt", ".safetensors")) and not lower.endswith((".vae.ckpt", ".vae.safetensors"))
            if wanted and os.path.exists(path) and path not in found:
                found.append(path)
    for path in found:
        CheckpointInfo(path).register()


def select_checkpoint():
    """The checkpoint the setting names, else the first listed one; FileNotFoundError when none is listed."""
    wanted = shared.opts.sd_model_checkpoint
    if wanted in checkpoint_aliases:
        return checkpoint_aliases[wanted]
    if not checkpoints_list:
        folders = [f for f in (model_path, shared.cmd_opts.ckpt_dir) if f]
        raise FileNotFoundError("No checkpoints found in %s: can't run without one." % ", ".join(folders))
    fallback = next(iter(checkpoints_list.values()))
    if wanted is not None:
        print("Checkpoint %s not found; loading %s instead" % (wanted, fallback.title), file=sys.stderr)
    return fallback


def get_state_dict_from_checkpoint(pl_sd):
    """The weights of a (possibly ``{"state_dict": ...}``-wrapped) checkpoint; pre-``text_model`` CLIP keys renamed."""
    if isinstance(pl_sd.get("state_dict"), dict):
        pl_sd = pl_sd["state_dict"]
    clip = "cond_stage_model.transformer."
    old_parts = ("embeddings.", "encoder.", "final_layer_norm.")
    return {(clip + "text_model." + k[len(clip):] if k.startswith(clip) and k[len(clip):].startswith(old_parts) else k): v
            for k, v in pl_sd.items()}


def read_state_dict(checkpoint_file, print_global_state=False, map_location=None):
    where = str(map_location or shared.weight_load_location or devices.get_optimal_device_name())
    if checkpoint_file.lower().endswith(".safetensors"):
        loaded = safetensors.torch.load_file(checkpoint_file, device=where)
    else:
        # torch's weights_only loading stands in for 1.10.1's restricted unpickler
        loaded = torch.load(checkpoint_file, map_location=where)
    if print_global_state:
        print("Global step:", loaded.get("global_step"))
    return get_state_dict_from_checkpoint(loaded)


def read_metadata_from_safetensors(filename):
    """The ``__metadata__`` of a .safetensors header; values that are JSON objects come back parsed."""
    import json

    with open(filename, mode="rb") as file:
        length = int.from_bytes(file.read(8), "little")
        start = file.read(2)
        assert length > 2 and start in (b'{"', b"{'"), f"{filename} is not a safetensors file"
        found = {}
        try:
            for key, value in json.loads(start + file.read(length - 2)).get("__metadata__", {}).items():
                found[key] = value
                if isinstance(value, str) and value.startswith("{"):
                    try:
                        found[key] = json.loads(value)
                    except ValueError:
                        pass
        except Exception:
            errors.report(f"Error reading metadata from file: {filename}", exc_info=True)
        return found


def get_checkpoint_state_dict(checkpoint_info: CheckpointInfo, timer):
    short = checkpoint_info.calculate_shorthash()
    print("Loading weights [%s] from %s" % (short, checkpoint_info.filename))
    return read_state_dict(checkpoint_info.filename)


def set_model_type(model, state_dict):
    # as 1.10.1 tells them apart: SD-v2's OpenCLIP text encoder has a .model
    sd2 = hasattr(model.cond_stage_model, "model")
    model.is_sd1, model.is_sd2 = not sd2, sd2
    model.is_sdxl = model.is_ssd = model.is_sd3 = False


def load_model_weights(model, checkpoint_info: CheckpointInfo, state_dict, timer):
    short = checkpoint_info.calculate_shorthash()
    shared.opts.data.update(sd_model_checkpoint=checkpoint_info.title)
    weights = get_checkpoint_state_dict(checkpoint_info, timer) if state_dict is None else state_dict

    set_model_type(model, weights)
    model.load_state_dict(weights, strict=False)

    schedule = model.alphas_cumprod  # stays float32 in a float16 model, as in 1.10.1
    model.to(torch.float16 if not shared.cmd_opts.no_half else torch.float32)
    model.alphas_cumprod = model.alphas_cumprod_original = schedule
    model.sd_model_hash, model.sd_model_checkpoint, model.sd_checkpoint_info = short, checkpoint_info.filename, checkpoint_info


def repair_config(sd_config, state_dict=None):
    unet = sd_config.model.params.get("unet_config")
    if unet is not None:
        unet.params.use_checkpoint = False  # no gradient checkpointing for inference
        if shared.cmd_opts.no_half:
            unet.params.use_fp16 = False


class SdModelData:
    def __init__(self):
        self.sd_model, self.loaded_sd_models, self.was_loaded_at_least_once = None, [], False
        self.lock = threading.RLock()

    def get_sd_model(self):
        """The loaded model; until one was loaded, asking loads one (failures are printed and give None)."""
        with self.lock:
            if self.sd_model is None and not self.was_loaded_at_least_once:
                try:
                    load_model()
                except Exception as e:
                    errors.display(e, "loading the checkpoint", full_traceback=True)
        return self.sd_model

    def set_sd_model(self, v, already_loaded=False):
        others = [m for m in self.loaded_sd_models if m is not v]
        self.loaded_sd_models = others if v is None else [v] + others
        self.sd_model = v


model_data = SdModelData()


def send_model_to_cpu(m):
    if m is not None:
        m.to(devices.cpu)

    devices.torch_gc()


def send_model_to_device(m):
    m.to(shared.device or devices.cpu)


def send_model_to_trash(m):
    m.to(device="meta")
    devices.torch_gc()


def _fixed_random(seed, *shape):
    """stand-in weights: the same values for every model, without touching the global RNG"""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


class StandInTokenEmbedding(torch.nn.Module):
    """(stand-in) token and position embeddings, as non-persistent buffers (see the module docstring)."""

    def __init__(self, vocab_size, width, length, seed):
        super().__init__()
        self.register_buffer("token_embedding", _fixed_random(seed, vocab_size, width), persistent=False)
        self.register_buffer("positional_embedding", 0.1 * _fixed_random(seed + 1, length, width), persistent=False)

    def forward(self, tokens):
        x = self.token_embedding[tokens] + self.positional_embedding
        return torch.nn.functional.layer_norm(x, x.shape[-1:])


class StandInTextEncoder(torch.nn.Module):
    """(stand-in) ``cond_stage_model``: ``forward(texts)`` -> ``[len(texts), 77, width]``, as A1111's hijacked CLIP
    returns for prompts of up to 75 tokens. Tokens: lower-cased words and punctuation, each hashed (crc32) into the
    vocabulary, between start and end tokens, padded with the end token, longer prompts cut (A1111 would add
    77-token chunks). The embeddings sit at ``.transformer`` (SD-v1's CLIP) or ``.model`` (SD-v2's OpenCLIP)."""

    vocab_size = 1024
    max_length = 77

    def __init__(self, width, openclip=False):
        super().__init__()
        self.child_name = "model" if openclip else "transformer"
        setattr(self, self.child_name, StandInTokenEmbedding(self.vocab_size, width, self.max_length, 1000))

    def tokenize(self, texts):
        start, end = self.vocab_size - 2, self.vocab_size - 1
        rows = []
        for text in texts:
            words = re.findall(r"\w+|[^\w\s]", str(text).lower())[:self.max_length - 2]
            ids = [start] + [zlib.crc32(w.encode("utf8")) % start for w in words] + [end]
            rows.append(ids + [end] * (self.max_length - len(ids)))
        return rows

    def forward(self, texts):
        embedder = getattr(self, self.child_name)
        tokens = torch.tensor(self.tokenize(texts), device=embedder.token_embedding.device)
        return embedder(tokens)


class StandInAutoencoderKL(torch.nn.Module):
    """(stand-in) ``first_stage_model``: ``decode(z)`` -> ``[B, 3, 8h, 8w]`` by one fixed random transposed
    convolution (kernel 8, stride 8), ``encode(x)`` -> ``[B, 4, h/8, w/8]`` by one fixed random convolution (the
    latent itself, not a distribution); ``dtype``/``device`` as ldm's LightningModule has them."""

    def __init__(self, latent_channels=4):
        super().__init__()
        self.register_buffer("weight", 0.5 * _fixed_random(2000, latent_channels, 3, 8, 8), persistent=False)
        self.register_buffer("bias", torch.zeros(3), persistent=False)
        self.register_buffer("encoder_weight", _fixed_random(2001, latent_channels, 3, 8, 8) / 64, persistent=False)

    @property
    def dtype(self):
        return self.weight.dtype

    @property
    def device(self):
        return self.weight.device

    def decode(self, z):
        return torch.nn.functional.conv_transpose2d(z.to(self.weight.dtype), self.weight, self.bias, stride=8)

    def encode(self, x):
        return torch.nn.functional.conv2d(x.to(self.encoder_weight.dtype), self.encoder_weight, stride=8)


class StandInLatentDiffusion(torch.nn.Module):
    """(stand-in) built from the ``params`` of a yaml whose model target is ldm's ``LatentDiffusion``."""

    def __init__(self, unet_config, cond_stage_config=None, parameterization="eps", conditioning_key=None,
                 timesteps=1000, linear_start=1e-4, linear_end=2e-2, scale_factor=1.0, channels=4, **other_params):
        super().__init__()
        import ldm.util

        self.parameterization = parameterization
        self.conditioning_key = conditioning_key
        self.scale_factor = float(scale_factor)
        self.channels = int(channels)
        self.cond_stage_key = "txt"
        self.model = torch.nn.Module()  # ldm's DiffusionWrapper
        self.model.conditioning_key = conditioning_key
        self.model.diffusion_model = ldm.util.instantiate_from_config(unet_config)
        context_dim = unet_config.get("params", {}).get("context_dim") or 768
        openclip = str((cond_stage_config or {}).get("target", "")).endswith("FrozenOpenCLIPEmbedder")
        self.cond_stage_model = StandInTextEncoder(int(context_dim), openclip=openclip)
        self.first_stage_model = StandInAutoencoderKL(self.channels)
        # ldm's "linear" schedule
        betas = torch.linspace(linear_start ** 0.5, linear_end ** 0.5, timesteps, dtype=torch.float64) ** 2
        self.num_timesteps = int(timesteps)
        self.register_buffer("betas", betas.float())
        self.register_buffer("alphas_cumprod", torch.cumprod(1 - betas, 0).float())

    @property
    def dtype(self):
        return next(self.model.diffusion_model.parameters()).dtype

    @contextlib.contextmanager
    def ema_scope(self, context=None):
        yield  # no EMA weights in the stand-in

    def get_learned_conditioning(self, c):
        """The text encoder's output for a list of prompts (a forward call of ``cond_stage_model``)."""
        return self.cond_stage_model(c)

    def apply_model(self, x_noisy, t, cond, return_ids=False):
        """The U-Net's output for a cross-attention context (a tensor, a list of them or ``{"c_crossattn": [...]}``);
        an inpainting model (``hybrid``/``concat``) gets ``cond["c_concat"]`` concatenated to the latent."""
        if isinstance(cond, dict):
            if self.conditioning_key in ("hybrid", "concat"):
                x_noisy = torch.cat([x_noisy] + list(cond["c_concat"]), dim=1)
            cond = cond["c_crossattn"]
        context = torch.cat(cond, 1) if isinstance(cond, (list, tuple)) else cond
        return self.model.diffusion_model(x_noisy, t, context=context)

    def encode_first_stage(self, x):
        return self.first_stage_model.encode(x)

    def get_first_stage_encoding(self, encoder_posterior):
        return self.scale_factor * encoder_posterior

    @torch.no_grad()
    def decode_first_stage(self, z, predict_cids=False, force_not_quantize=False):
        """Latents -> images in about [-1, 1] (``first_stage_model.decode``, looked up at each call)."""
        return self.first_stage_model.decode(z / self.scale_factor)


standin_model_targets = {
    "ldm.models.diffusion.ddpm.LatentDiffusion": "modules.sd_models.StandInLatentDiffusion",
    "ldm.models.diffusion.ddpm.LatentInpaintDiffusion": "modules.sd_models.StandInLatentDiffusion",
}


def instantiate_from_config(config, state_dict=None):
    target = standin_model_targets.get(config["target"], config["target"])
    return get_obj_from_str(target)(**config.get("params", {}))


def get_obj_from_str(string, reload=False):
    module_name, _, attribute = string.rpartition(".")
    module = importlib.import_module(module_name)
    if reload:
        module = importlib.reload(module)
    return getattr(module, attribute)


def load_model(checkpoint_info=None, already_loaded_state_dict=None):
    info = checkpoint_info or select_checkpoint()
    if model_data.sd_model is not None:  # one model at a time
        send_model_to_trash(model_data.sd_model)
    model_data.sd_model, model_data.loaded_sd_models = None, []

    weights = already_loaded_state_dict
    if weights is None:
        weights = get_checkpoint_state_dict(info, None)
    yaml_path = sd_models_config.find_checkpoint_config(weights, info)
    config = OmegaConf.load(yaml_path)
    repair_config(config, weights)
    print("Creating model from config:", yaml_path)

    model = instantiate_from_config(config.model, weights)
    model.used_config = yaml_path
    if not shared.cmd_opts.disable_model_loading_ram_optimization:
        # what 1.10.1's meta-device creation leaves in layers the checkpoint does not fill
        with torch.no_grad():
            for layer in model.modules():
                if isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.MultiheadAttention)):
                    for weight in layer.parameters(recurse=False):
                        weight.zero_()
    load_model_weights(model, info, weights, None)
    sd_hijack_unet._apply()  # 1.10.1's model hijack: U-Net skip connections resize (sides multiples of 8)

    send_model_to_device(model)
    model.eval()
    model_data.set_sd_model(model)
    model_data.was_loaded_at_least_once = True
    script_callbacks.model_loaded_callback(model)
    print("Model loaded:", info.title)
    return model


def reload_model_weights(sd_model=None, info=None, forced_reload=False):
    """Makes ``info`` (default: the setting's checkpoint) the loaded model: nothing to do when it already is,
    new weights into the current model when the yaml is the same, else a fresh ``load_model``."""
    wanted = info or select_checkpoint()
    current = sd_model or model_data.sd_model
    if current is not None and not forced_reload and current.sd_model_checkpoint == wanted.filename:
        return current

    weights = get_checkpoint_state_dict(wanted, None)
    yaml_path = sd_models_config.find_checkpoint_config(weights, wanted)
    if current is None or yaml_path != current.used_config:
        return load_model(wanted, already_loaded_state_dict=weights)

    load_model_weights(current, wanted, weights, None)
    send_model_to_device(current)
    model_data.set_sd_model(current)
    script_callbacks.model_loaded_callback(current)
    return current


def unload_model_weights(sd_model=None, info=None):
    """1.10.1 keeps the model, on the CPU (1.6.1 drops it: ``model_data.sd_model = None``)."""
    send_model_to_cpu(sd_model or shared.sd_model)

    return sd_model
