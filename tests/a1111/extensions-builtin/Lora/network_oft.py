"""Stand-in for A1111 1.10.1 ``network_oft.py``: OFT, a block-diagonal rotation of the layer's output channels.
kohya's ``oft_blocks`` [blocks, size, size] are made orthogonal by the Cayley transform of their skew-symmetric
part (norm limited by ``alpha`` x output width); old LyCORIS ``oft_diag`` blocks are used as they are. The
difference is the rotated weight minus the weight. Not in the stand-in: BOFT (4-D blocks), ``rescale``."""
import torch

import network


class ModuleTypeOFT(network.ModuleType):
    def create_module(self, net: network.Network, weights: network.NetworkWeights):
        if "oft_blocks" in weights.w or "oft_diag" in weights.w:
            return NetworkModuleOFT(net, weights)
        return None


class NetworkModuleOFT(network.NetworkModule):
    def __init__(self, net: network.Network, weights: network.NetworkWeights):
        super().__init__(net, weights)
        self.scale = 1.0
        self.is_R = "oft_blocks" not in weights.w
        if self.is_R:
            self.oft_blocks = weights.w["oft_diag"]
            self.dim = self.oft_blocks.shape[1]
        else:
            self.oft_blocks = weights.w["oft_blocks"]
            self.alpha = weights.w.get("alpha", None)
            self.dim = self.oft_blocks.shape[0]
        if self.oft_blocks.dim() == 4:
            raise NotImplementedError("BOFT is not in the A1111 stand-in")
        self.out_dim = self.sd_module.weight.shape[0]
        if self.is_R:
            self.block_size, self.num_blocks, self.constraint = self.dim, self.out_dim // self.dim, None
        else:
            self.num_blocks, self.block_size = self.dim, self.out_dim // self.dim
            self.constraint = (0 if self.alpha is None else self.alpha) * self.out_dim

    def calc_updown(self, orig_weight):
        blocks = self.oft_blocks.to(orig_weight.device)
        eye = torch.eye(self.block_size, device=blocks.device)
        if not self.is_R:
            skew = blocks - blocks.transpose(-1, -2)
            if self.constraint != 0:
                norm = torch.norm(skew.flatten())
                limit = torch.clamp(norm, max=torch.as_tensor(self.constraint).to(blocks.device))
                skew = skew * ((limit + 1e-8) / (norm + 1e-8))
            blocks = torch.matmul(eye + skew, (eye - skew).float().inverse())
        grouped = orig_weight.reshape(self.num_blocks, self.block_size, *orig_weight.shape[1:])
        rotated = torch.einsum('k n m, k n ... -> k m ...', blocks.to(orig_weight.dtype), grouped)
        updown = rotated.reshape(orig_weight.shape) - orig_weight
        return self.finalize_updown(updown, orig_weight, orig_weight.shape)
