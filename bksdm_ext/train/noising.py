"""The forward diffusion every trainer here applies (distillation, DreamBooth): which
examples a step takes, and clean latents turned into (noisy input, timestep, target).

All randomness is drawn from the run's own CPU generator, so the numbers are the same on
any device and a resumed run repeats an uninterrupted one.
"""
from typing import List, Tuple

import torch


class Batches:
    """Which cache entries each process trains on: an epoch is a seeded permutation of the
    dataset, consumed `global_batch` entries at a time; each process takes its slice.
    The whole state is one integer, `position`, so resuming continues the same sequence."""

    def __init__(self, size: int, batch_size: int, rank: int, world: int, seed: int) -> None:
        self.size, self.batch_size, self.rank, self.world, self.seed = size, batch_size, rank, world, seed
        self.position = 0

    def next(self) -> List[int]:
        global_batch = self.batch_size * self.world
        indices = [self._at(self.position + i) for i in range(global_batch)]
        self.position += global_batch
        return indices[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]

    def _at(self, position: int) -> int:
        epoch, offset = divmod(position, self.size)
        return int(self._permutation(epoch)[offset])

    def _permutation(self, epoch: int) -> torch.Tensor:
        cached = getattr(self, "_cached", None)
        if cached is None or cached[0] != epoch:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._cached = (epoch, torch.randperm(self.size, generator=generator))
        return self._cached[1]


def randn(like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Noise shaped like `like`, drawn on the CPU from `generator`."""
    return torch.randn(like.shape, generator=generator).to(like.device, like.dtype)


def noised(latents: torch.Tensor, alphas: torch.Tensor, parameterization: str,
           generator: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(noisy latents, timesteps, what the U-Net should predict: ε, or v for v-models) at
    uniformly drawn training timesteps; `alphas` are the schedule's cumulative products."""
    eps = randn(latents, generator)
    timesteps = torch.randint(0, len(alphas), (latents.shape[0],), generator=generator)
    timesteps = timesteps.to(latents.device)
    a = alphas[timesteps].view(-1, 1, 1, 1)
    noisy = a.sqrt() * latents + (1 - a).sqrt() * eps
    target = eps if parameterization == "eps" else a.sqrt() * eps - (1 - a).sqrt() * latents
    return noisy, timesteps, target
