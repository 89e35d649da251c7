"""Stand-in for A1111 1.10.1 ``network_ia3.py``: (IA)^3, a learned scale per output (or, with ``on_input``, per
input) channel: the difference is the layer's own weight times that scale."""
import network


class ModuleTypeIa3(network.ModuleType):
    def create_module(self, net: network.Network, weights: network.NetworkWeights):
        if "weight" in weights.w:
            return NetworkModuleIa3(net, weights)
        return None


class NetworkModuleIa3(network.NetworkModule):
    def __init__(self, net: network.Network, weights: network.NetworkWeights):
        super().__init__(net, weights)
        self.w = weights.w["weight"]
        self.on_input = weights.w["on_input"].item()

    def calc_updown(self, orig_weight):
        w = self.w.to(orig_weight.device)
        output_shape = [w.size(0), orig_weight.size(1)]
        if self.on_input:
            output_shape.reverse()
        else:
            w = w.reshape(-1, 1)
        return self.finalize_updown(orig_weight * w, orig_weight, output_shape)
