"""Stand-in for A1111 1.10.1 ``network_full.py``: a whole weight difference (``diff``, bias ``diff_b``)."""
import network


class ModuleTypeFull(network.ModuleType):
    def create_module(self, net: network.Network, weights: network.NetworkWeights):
        return NetworkModuleFull(net, weights) if "diff" in weights.w else None


class NetworkModuleFull(network.NetworkModule):
    def __init__(self, net: network.Network, weights: network.NetworkWeights):
        super().__init__(net, weights)
        self.weight = weights.w.get("diff")
        self.ex_bias = weights.w.get("diff_b")

    def calc_updown(self, orig_weight):
        bias = self.ex_bias.to(orig_weight.device) if self.ex_bias is not None else None
        return self.finalize_updown(self.weight.to(orig_weight.device), orig_weight, self.weight.shape, bias)
