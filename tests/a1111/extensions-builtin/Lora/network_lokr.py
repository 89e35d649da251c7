"""Stand-in for A1111 1.10.1 ``network_lokr.py``: LoKr, the Kronecker product of two factors, each given whole
(``lokr_w1``/``lokr_w2``) or as a low-rank pair (``_a @ _b``; ``lokr_t2`` a core for convolutions)."""
import torch

import lyco_helpers
import network


class ModuleTypeLokr(network.ModuleType):
    def create_module(self, net: network.Network, weights: network.NetworkWeights):
        w = weights.w
        has_1 = "lokr_w1" in w or ("lokr_w1_a" in w and "lokr_w1_b" in w)
        has_2 = "lokr_w2" in w or ("lokr_w2_a" in w and "lokr_w2_b" in w)
        return NetworkModuleLokr(net, weights) if has_1 and has_2 else None


def make_kron(orig_shape, w1, w2):
    if w2.dim() == 4:
        w1 = w1[:, :, None, None]
    return torch.kron(w1, w2.contiguous()).reshape(orig_shape)


class NetworkModuleLokr(network.NetworkModule):
    def __init__(self, net: network.Network, weights: network.NetworkWeights):
        super().__init__(net, weights)
        w = weights.w
        self.w1, self.w1a, self.w1b = w.get("lokr_w1"), w.get("lokr_w1_a"), w.get("lokr_w1_b")
        self.w2, self.w2a, self.w2b, self.t2 = w.get("lokr_w2"), w.get("lokr_w2_a"), w.get("lokr_w2_b"), w.get("lokr_t2")
        for factor in (self.w1b, self.w2b):
            if factor is not None:
                self.dim = factor.shape[0]

    def calc_updown(self, orig_weight):
        device = orig_weight.device
        w1 = self.w1.to(device) if self.w1 is not None else self.w1a.to(device) @ self.w1b.to(device)
        if self.w2 is not None:
            w2 = self.w2.to(device)
        elif self.t2 is None:
            w2 = self.w2a.to(device) @ self.w2b.to(device)
        else:
            w2 = lyco_helpers.make_weight_cp(self.t2.to(device), self.w2a.to(device), self.w2b.to(device))
        output_shape = [w1.size(0) * w2.size(0), w1.size(1) * w2.size(1)]
        if orig_weight.dim() == 4:
            output_shape = orig_weight.shape
        return self.finalize_updown(make_kron(output_shape, w1, w2), orig_weight, output_shape)
