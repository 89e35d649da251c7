"""Stand-in for A1111 1.10.1 ``network_norm.py``: a difference for a norm layer's scale and shift
(``w_norm``, ``b_norm``)."""
import network


class ModuleTypeNorm(network.ModuleType):
    def create_module(self, net: network.Network, weights: network.NetworkWeights):
        return NetworkModuleNorm(net, weights) if all(x in weights.w for x in ["w_norm", "b_norm"]) else None


class NetworkModuleNorm(network.NetworkModule):
    def __init__(self, net: network.Network, weights: network.NetworkWeights):
        super().__init__(net, weights)
        self.w_norm = weights.w.get("w_norm")
        self.b_norm = weights.w.get("b_norm")

    def calc_updown(self, orig_weight):
        bias = self.b_norm.to(orig_weight.device) if self.b_norm is not None else None
        return self.finalize_updown(self.w_norm.to(orig_weight.device), orig_weight, self.w_norm.shape, bias)
