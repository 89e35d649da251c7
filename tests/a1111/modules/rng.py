"""Stand-in for A1111 1.10.1 ``modules/rng.py``: ``ImageRNG``, the initial noise of a batch, one generator per
seed. The stand-in draws on a CPU ``torch.Generator`` and moves the result to ``shared.device`` (1.10.1's default
"GPU" source draws on the GPU, so the same seed gives other noise there); no subseeds/variation, no seed resize."""

import torch

from modules import devices, shared


class ImageRNG:
    def __init__(self, shape, seeds, subseeds=None, subseed_strength=0.0, seed_resize_from_h=0, seed_resize_from_w=0):
        self.shape = tuple(map(int, shape))
        self.seeds = seeds
        self.subseeds = subseeds
        self.subseed_strength = subseed_strength
        self.seed_resize_from_h = seed_resize_from_h
        self.seed_resize_from_w = seed_resize_from_w
        self.generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
        self.is_first = True

    def first(self):
        return self.next()

    def next(self):
        """The next noise tensor ``[len(seeds), *shape]``: each seed's generator draws its own row."""
        self.is_first = False
        noise = [torch.randn(self.shape, generator=generator) for generator in self.generators]
        return torch.stack(noise).to(shared.device or devices.cpu)
