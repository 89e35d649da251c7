"""An inpainting U-Net where a text-to-image one is expected.

An inpainting U-Net takes 9 channels: the noisy latent, the mask and the latent of the
masked image (docs/facts.md §13).  Drawing from text alone is inpainting with everything
masked: A1111's txt2img gives such a model a mask of ones and the latent of a grey image.
`FullyMaskedUNet` does the same for every part that draws with a diffusers pipeline
(sample grids, teacher-made data, latency, the demo), so those parts need not know.
"""
from typing import Any, Dict, Tuple

import torch

# What a U-Net input carries besides the latent in an inpainting model: the mask (1) and
# the masked image's latent (4).
CONDITIONING_CHANNELS = 5


class FullyMaskedUNet(torch.nn.Module):
    """`unet` (diffusers, 9 input channels) seen as a 4-channel text-to-image U-Net."""

    def __init__(self, unet: Any, vae: Any, latent_scale: float) -> None:
        from diffusers.configuration_utils import FrozenDict

        super().__init__()
        self.unet = unet
        self.config = FrozenDict({**unet.config,
                                  "in_channels": unet.config.in_channels - CONDITIONING_CHANNELS})
        self.__dict__["_vae"] = vae  # used, not owned: not a submodule, not in state_dict
        self._latent_scale = latent_scale
        self._grey: Dict[Tuple[Any, ...], torch.Tensor] = {}

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def device(self) -> torch.device:
        return self.unet.device

    def conditioning(self, latents: torch.Tensor) -> torch.Tensor:
        """Mask of ones, then the latent of a grey image, for latents of this size."""
        key = (tuple(latents.shape[-2:]), latents.device, latents.dtype)
        if key not in self._grey:
            vae = self._vae
            factor = 2 ** (len(vae.config.block_out_channels) - 1)
            height, width = latents.shape[-2:]
            grey = torch.zeros(1, 3, height * factor, width * factor, device=vae.device,
                               dtype=vae.dtype)  # 0 is mid-grey in the VAE's [-1, 1] range
            with torch.no_grad():
                image = vae.encode(grey).latent_dist.mean * self._latent_scale
            mask = torch.ones(1, 1, height, width, device=image.device, dtype=image.dtype)
            self._grey[key] = torch.cat([mask, image], dim=1).to(latents.device, latents.dtype)
        return self._grey[key]

    def forward(self, sample: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        conditioning = self.conditioning(sample).expand(len(sample), -1, -1, -1)
        return self.unet(torch.cat([sample, conditioning], dim=1), *args, **kwargs)
