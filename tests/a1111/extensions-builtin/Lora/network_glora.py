"""Stand-in for A1111 1.10.1 ``network_glora.py``: GLoRA, ``b2 @ b1 + (W @ a2) @ a1`` for a Linear weight W."""
import network


class ModuleTypeGLora(network.ModuleType):
    def create_module(self, net: network.Network, weights: network.NetworkWeights):
        if all(x in weights.w for x in ["a1.weight", "a2.weight", "alpha", "b1.weight", "b2.weight"]):
            return NetworkModuleGLora(net, weights)
        return None


class NetworkModuleGLora(network.NetworkModule):
    def __init__(self, net: network.Network, weights: network.NetworkWeights):
        super().__init__(net, weights)
        self.w1a, self.w1b = weights.w["a1.weight"], weights.w["b1.weight"]
        self.w2a, self.w2b = weights.w["a2.weight"], weights.w["b2.weight"]

    def calc_updown(self, orig_weight):
        w1a, w1b, w2a, w2b = (w.to(orig_weight.device) for w in (self.w1a, self.w1b, self.w2a, self.w2b))
        updown = w2b @ w1b + (orig_weight.to(w1a.dtype) @ w2a) @ w1a
        return self.finalize_updown(updown, orig_weight, [w1a.size(0), w1b.size(1)])
