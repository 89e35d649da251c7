"""A LoRA merged into its base model, tensor by tensor: the fine-tune ``transplant`` carries.

``bksdm transplant --finetune L.safetensors`` treats "the base with the LoRA at strength α"
as the fine-tune, so a student gets ``student + α·ΔW`` at the teacher tensor each of its
tensors came from, and the text encoder gets the LoRA's text-encoder part.  ΔW is what A1111's
built-in Lora extension adds to a weight (1.10.1's module types, docs/facts.md §12): LoRA and
LoCon (with a CP core), LoHa (with CP cores), LoKr, IA3, full differences and norm
differences (with their biases), GLoRA, and OFT (kohya's Cayley blocks, LyCORIS' diagonal
blocks), scaled by alpha/rank where the type has one.  A file with parts these do not cover
(DoRA's ``dora_scale``, BOFT) is refused rather than merged in part.
"""
import re
from typing import Dict, List, Mapping, Optional, Tuple

import torch

from ..errors import BadInput
from .checkpoint import Checkpoint
from .detect import inspect_checkpoint
from .keymap import UNET_PREFIX
from .lora_adapt import checkpoint_modules, read_lora
from .lora_keymap import LoraPlan, plan_lora, underscored
from .parts_keymap import TEXT_PREFIX
from .safetensors_io import tensor_bytes

Delta = Tuple[torch.Tensor, Optional[torch.Tensor]]  # (weight difference, bias difference)
# Where a module's difference goes: (checkpoint key, q/k/v chunk of a fused weight or None,
# "weight" or "bias").
Target = Tuple[str, Optional[int], str]
SD2_TEXT_MODULE = re.compile(r"text_model_encoder_layers_(\d+)_(.+)")
SD2_TEXT_RENAMES = (("self_attn", "attn"), ("mlp_fc1", "mlp_c_fc"), ("mlp_fc2", "mlp_c_proj"))
FUSED = ".in_proj_weight"  # OpenCLIP's q, k and v in one weight


def module_delta(parts: Mapping[str, torch.Tensor], weight: torch.Tensor) -> Delta:
    """What one LoRA module adds to a weight of the base (and to its bias), at strength 1."""
    p = {k: v.double() for k, v in parts.items()}
    w = weight.double()
    unsupported = sorted(set(p) & {"dora_scale", "bias"})
    if unsupported or p.get("oft_blocks", torch.zeros(1, 1, 1)).dim() == 4:
        raise BadInput("its parts %s are not supported for merging (DoRA, BOFT, LoRA biases)"
                       % (unsupported or ["oft_blocks (BOFT)"]))
    delta, rank, bias = _difference(p, w)
    if delta.numel() != w.numel():
        raise BadInput("a module of %s values does not fit a weight of shape %s"
                       % (delta.numel(), tuple(w.shape)))
    if "scale" in p:
        factor = float(p["scale"])
    elif rank and "alpha" in p and not ("oft_blocks" in p or "oft_diag" in p):
        factor = float(p["alpha"]) / rank
    else:
        factor = 1.0
    return delta.reshape(w.shape) * factor, bias


def _difference(p: Dict[str, torch.Tensor], w: torch.Tensor
                ) -> Tuple[torch.Tensor, Optional[int], Optional[torch.Tensor]]:
    """(unscaled weight difference, the rank alpha divides by, bias difference)."""
    up, down = p.get("lora_up.weight", p.get("lora_B.weight")), \
        p.get("lora_down.weight", p.get("lora_A.weight"))
    if up is not None and down is not None:
        up2, down2 = up.flatten(1), down.flatten(1)
        if "lora_mid.weight" in p:
            return torch.einsum("a b k l, o a, b i -> o i k l", p["lora_mid.weight"], up2,
                                down2), down.shape[0], None
        return up2 @ down2, down.shape[0], None
    if "hada_w1_a" in p:
        first = _factor(p["hada_w1_a"], p["hada_w1_b"], p.get("hada_t1"))
        second = _factor(p["hada_w2_a"], p["hada_w2_b"], p.get("hada_t2"))
        return first * second.reshape(first.shape), p["hada_w1_b"].shape[0], None
    if "lokr_w1" in p or "lokr_w1_a" in p:
        w1 = p["lokr_w1"] if "lokr_w1" in p else p["lokr_w1_a"] @ p["lokr_w1_b"]
        w2 = p["lokr_w2"] if "lokr_w2" in p else _factor(p["lokr_w2_a"], p["lokr_w2_b"],
                                                          p.get("lokr_t2"))
        if w2.dim() == 4:
            w1 = w1[:, :, None, None]
        rank = next((p[k].shape[0] for k in ("lokr_w2_b", "lokr_w1_b") if k in p), None)
        return torch.kron(w1, w2), rank, None
    if "weight" in p and "on_input" in p:  # IA3
        scale = p["weight"] if bool(p["on_input"]) else p["weight"].reshape(-1, *[1] * (w.dim() - 1))
        return w * scale, None, None
    if "diff" in p:
        return p["diff"], None, p.get("diff_b")
    if "w_norm" in p:
        return p["w_norm"], None, p.get("b_norm")
    if "a1.weight" in p:  # GLoRA
        return p["b2.weight"] @ p["b1.weight"] + (w @ p["a2.weight"]) @ p["a1.weight"], None, None
    if "oft_blocks" in p or "oft_diag" in p:
        return _rotated(p, w) - w, None, None
    raise BadInput("a module with parts %s is of no network type A1111 applies" % sorted(p))


def _factor(a: torch.Tensor, b: torch.Tensor, core: Optional[torch.Tensor]) -> torch.Tensor:
    """a @ b, or the CP product of a core [r, r, k, k] with a [r, out] and b [r, in]."""
    if core is None:
        return a @ b.flatten(1)
    return torch.einsum("a b k l, a o, b i -> o i k l", core, a, b)


def _rotated(p: Dict[str, torch.Tensor], w: torch.Tensor) -> torch.Tensor:
    """OFT: the weight's output channels rotated block by block."""
    if "oft_blocks" in p:  # kohya: Cayley transform of the skew part, its norm limited
        blocks = p["oft_blocks"]
        count, size = blocks.shape[0], w.shape[0] // blocks.shape[0]
        skew = blocks - blocks.transpose(-1, -2)
        limit = float(p["alpha"]) * w.shape[0] if "alpha" in p else 0.0
        if limit:
            norm = torch.norm(skew.flatten())
            skew = skew * ((torch.clamp(norm, max=limit) + 1e-8) / (norm + 1e-8))
        eye = torch.eye(size, dtype=w.dtype)
        rotation = (eye + skew) @ torch.inverse(eye - skew)
    else:  # LyCORIS' diagonal blocks are the rotation
        rotation = p["oft_diag"]
        size = rotation.shape[1]
        count = w.shape[0] // size
    grouped = w.reshape(count, size, *w.shape[1:])
    return torch.einsum("k n m, k n ... -> k m ...", rotation, grouped).reshape(w.shape)


class MergedLora(Checkpoint):
    """`base` with `lora` merged in at `strength`, read like a checkpoint: the tensors the
    LoRA changes are computed when read (in float64; raw bytes in the base's dtype)."""

    def __init__(self, base: Checkpoint, lora: Checkpoint, strength: float) -> None:
        super().__init__(base.path)
        self.path = lora.path  # messages and reports name the LoRA
        self._lora = lora
        self.strength = float(strength)
        info = inspect_checkpoint(base)
        _, lora_file = read_lora(lora.path)
        self.plan = plan_lora(lora_file, info.arch, checkpoint_modules(base))
        self._parts = {**lora_file.unet_modules, **lora_file.text_modules}
        self._targets, self.unmatched_text = _targets(self.plan, self, info.family)
        self.new_biases = sorted(m for m, target in self.plan.targets.items()
                                 if {"diff_b", "b_norm"} & set(self._parts[m])
                                 and UNET_PREFIX + target + ".bias" not in self)

    def changed_keys(self) -> List[str]:
        return sorted(self._targets)

    def tensor(self, key: str) -> torch.Tensor:
        if key not in self._targets:
            return super().tensor(key)
        value = super().tensor(key).double().clone()
        for module, chunk, what in self._targets[key]:
            parts = {part: self._lora.tensor(module + "." + part) for part in self._parts[module]}
            weight_key = key if what == "weight" else key[:-len("bias")] + "weight"
            weight = super().tensor(weight_key).double()
            target = weight if chunk is None else weight.chunk(3)[chunk]
            try:
                delta, bias = module_delta(parts, target)
            except BadInput as e:
                raise BadInput("%s: %s: %s" % (self.path, module, e)) from None
            change = delta if what == "weight" else bias
            if change is None:
                continue
            if chunk is None:
                value += self.strength * change.reshape(value.shape)
            else:
                value.chunk(3)[chunk].add_(self.strength * change)
        return value

    def raw_bytes(self, key: str) -> memoryview:
        if key not in self._targets:
            return super().raw_bytes(key)
        return tensor_bytes(self.tensor(key).to(self.dtype(key)))


def _targets(plan: LoraPlan, base: Checkpoint, family: str
             ) -> Tuple[Dict[str, List[Target]], List[str]]:
    """Checkpoint key -> the LoRA modules whose differences it gets; and the text-encoder
    modules the base has no weight for."""
    targets: Dict[str, List[Target]] = {}

    def add(key: str, module: str, chunk: Optional[int]) -> None:
        targets.setdefault(key + ".weight", []).append((module, chunk, "weight"))
        if key + ".bias" in base:
            targets.setdefault(key + ".bias", []).append((module, chunk, "bias"))

    for module, target in plan.targets.items():
        add(UNET_PREFIX + target, module, None)
    prefix = TEXT_PREFIX[family]
    text = {underscored(k[len(prefix):-len(".weight")]): k[:-len(".weight")]
            for k in base.keys() if k.startswith(prefix) and k.endswith(".weight")}
    fused = {underscored(k[len(prefix):-len(FUSED)]): k for k in base.keys()
             if k.startswith(prefix) and k.endswith(FUSED)}
    unmatched = []
    for module in plan.text:
        name, chunk = _text_module(module[module.index("_te_") + len("_te_"):], family)
        if chunk is not None and name in fused:
            targets.setdefault(fused[name], []).append((module, chunk, "weight"))
        elif chunk is None and name in text:
            add(text[name], module, None)
        else:
            unmatched.append(module)
    return targets, unmatched


def _text_module(name: str, family: str) -> Tuple[str, Optional[int]]:
    """A kohya text-encoder module name as the base's module (underscore name), and the q/k/v
    chunk of OpenCLIP's fused attention weight it belongs to (SD-v2), as A1111 maps it."""
    if family != "sd-v2":
        return name, None
    match = SD2_TEXT_MODULE.match(name)
    if match is None:
        return name, None
    rest = match.group(2)
    for old, new in SD2_TEXT_RENAMES:
        rest = rest.replace(old, new)
    name = "transformer_resblocks_%s_%s" % (match.group(1), rest)
    projection = re.match(r"(.*)_([qkv])_proj$", name)
    if projection:
        return projection.group(1), "qkv".index(projection.group(2))
    return name, None


def lora_warnings(merged: MergedLora) -> List[str]:
    """What of the LoRA has no place in the base (A1111 would ignore it too)."""
    warnings = []
    missing = len(merged.plan.unplaced) + len(merged.unmatched_text)
    if missing:
        warnings.append("%d modules of %s name no weight of the base (A1111 ignores them too), "
                        "e.g. %s" % (missing, merged.path.name,
                                     (merged.plan.unplaced + merged.unmatched_text)[0]))
    if merged.new_biases:
        warnings.append("%d modules of %s add a bias to layers that have none (A1111 adds one "
                        "while it applies the LoRA); a checkpoint has no place for it, so only "
                        "their weight change is carried, e.g. %s"
                        % (len(merged.new_biases), merged.path.name, merged.new_biases[0]))
    return warnings
