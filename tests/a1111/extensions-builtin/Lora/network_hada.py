"""Stand-in for A1111 1.10.1 ``network_hada.py``: LoHa, the element-wise product of two low-rank differences
(``hada_w1_a @ hada_w1_b`` and ``hada_w2_a @ hada_w2_b``; with ``hada_t1``/``hada_t2`` cores for convolutions)."""
import lyco_helpers
import network


class ModuleTypeHada(network.ModuleType):
    def create_module(self, net: network.Network, weights: network.NetworkWeights):
        if all(x in weights.w for x in ["hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"]):
            return NetworkModuleHada(net, weights)
        return None


class NetworkModuleHada(network.NetworkModule):
    def __init__(self, net: network.Network, weights: network.NetworkWeights):
        super().__init__(net, weights)
        self.w1a, self.w1b = weights.w["hada_w1_a"], weights.w["hada_w1_b"]
        self.w2a, self.w2b = weights.w["hada_w2_a"], weights.w["hada_w2_b"]
        self.t1, self.t2 = weights.w.get("hada_t1"), weights.w.get("hada_t2")
        self.dim = self.w1b.shape[0]

    def calc_updown(self, orig_weight):
        device = orig_weight.device
        w1a, w1b, w2a, w2b = (w.to(device) for w in (self.w1a, self.w1b, self.w2a, self.w2b))
        if self.t1 is not None:
            output_shape = [w1a.size(1), w1b.size(1)] + list(self.t1.shape[2:])
            first = lyco_helpers.make_weight_cp(self.t1.to(device), w1a, w1b)
        else:
            output_shape = [w1a.size(0), w1b.size(1)] + (list(w1b.shape[2:]) if w1b.dim() == 4 else [])
            first = lyco_helpers.rebuild_conventional(w1a, w1b, output_shape)
        if self.t2 is not None:
            second = lyco_helpers.make_weight_cp(self.t2.to(device), w2a, w2b)
        else:
            second = lyco_helpers.rebuild_conventional(w2a, w2b, output_shape)
        return self.finalize_updown(first * second, orig_weight, output_shape)
