"""Stand-in for A1111 1.10.1 ``network_lora.py``: LoRA and LoCon (``lora_up``/``lora_down``, optional
``lora_mid`` core; peft's ``lora_A``/``lora_B`` are taken as down/up). The factors become Linear/Conv2d layers
shaped for the target layer, as in 1.10.1, so a factor that cannot take that shape fails there."""
import torch

import lyco_helpers
import network
from modules import devices


class ModuleTypeLora(network.ModuleType):
    def create_module(self, net: network.Network, weights: network.NetworkWeights):
        if all(x in weights.w for x in ["lora_up.weight", "lora_down.weight"]):
            return NetworkModuleLora(net, weights)
        if all(x in weights.w for x in ["lora_A.weight", "lora_B.weight"]):
            w = dict(weights.w)
            weights.w.clear()
            weights.w.update({"lora_up.weight": w["lora_B.weight"], "lora_down.weight": w["lora_A.weight"]})
            return NetworkModuleLora(net, weights)
        return None


class NetworkModuleLora(network.NetworkModule):
    def __init__(self, net: network.Network, weights: network.NetworkWeights):
        super().__init__(net, weights)
        self.up_model = self.create_module(weights.w, "lora_up.weight")
        self.down_model = self.create_module(weights.w, "lora_down.weight")
        self.mid_model = self.create_module(weights.w, "lora_mid.weight", none_ok=True)
        self.dim = weights.w["lora_down.weight"].shape[0]

    def create_module(self, weights, key, none_ok=False):
        weight = weights.get(key)
        if weight is None and none_ok:
            return None
        kind = type(self.sd_module)
        if kind in (torch.nn.Linear, torch.nn.modules.linear.NonDynamicallyQuantizableLinear, torch.nn.MultiheadAttention):
            weight = weight.reshape(weight.shape[0], -1)
            module = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        elif kind is torch.nn.Conv2d and key == "lora_down.weight":
            if weight.dim() == 2:
                weight = weight.reshape(weight.shape[0], -1, 1, 1)
            spatial = weight.shape[2:] != (1, 1)
            module = torch.nn.Conv2d(weight.shape[1], weight.shape[0], self.sd_module.kernel_size if spatial else (1, 1),
                                     self.sd_module.stride if spatial else 1, self.sd_module.padding if spatial else 0, bias=False)
        elif kind is torch.nn.Conv2d and key == "lora_mid.weight":
            module = torch.nn.Conv2d(weight.shape[1], weight.shape[0], self.sd_module.kernel_size, self.sd_module.stride,
                                     self.sd_module.padding, bias=False)
        elif kind is torch.nn.Conv2d and key == "lora_up.weight":
            module = torch.nn.Conv2d(weight.shape[1], weight.shape[0], (1, 1), bias=False)
        else:
            raise AssertionError(f'Lora layer {self.network_key} matched a layer with unsupported type: {kind.__name__}')
        with torch.no_grad():
            module.weight.copy_(weight.reshape(module.weight.shape) if weight.shape != module.weight.shape else weight)
        module.to(device=devices.cpu, dtype=devices.dtype)
        module.weight.requires_grad_(False)
        return module

    def calc_updown(self, orig_weight):
        up = self.up_model.weight.to(orig_weight.device)
        down = self.down_model.weight.to(orig_weight.device)
        output_shape = [up.size(0), down.size(1)]
        if self.mid_model is not None:
            mid = self.mid_model.weight.to(orig_weight.device)
            updown = lyco_helpers.rebuild_cp_decomposition(up, down, mid)
            output_shape += mid.shape[2:]
        else:
            if down.dim() == 4:
                output_shape += down.shape[2:]
            updown = lyco_helpers.rebuild_conventional(up, down, output_shape, self.network.dyn_dim)
        return self.finalize_updown(updown, orig_weight, output_shape)
