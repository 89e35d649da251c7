"""The inpainting conditioning of a training step, for 9-channel (inpainting) U-Nets.

An inpainting U-Net sees the noisy latent, the mask on the latent grid and the latent of
the image with the masked part blanked (docs/facts.md §13, in that order: A1111's
``inpainting_image_conditioning`` and ldm's ``c_concat``).  Training gives the teacher and
the student the same such input, with random masks drawn as the public recipes draw them:

* a quarter of the examples have everything masked (the runwayml SD-inpainting recipe:
  ``ldm.data.laion.AddMask``'s ``p_drop`` 0.25), which is drawing from text alone;
* the others a rectangle or an ellipse of random size (0 to the image's in each
  direction) at a random place where it fits (diffusers' ``train_dreambooth_inpaint.py``
  ``random_mask``).

The masked image is made in pixels, as at inference: the cached latent is decoded, the
masked part set to 0 (mid-grey), and encoded again.  Teacher-made data, which exists only
as latents, goes the same way.  Masks and the encoder's sampling come from the step's
generator, so a resumed run draws the same ones.
"""
from typing import Any

import torch

from .noising import randn

FULL_MASK_P = 0.25
# Images per VAE call: decoding and encoding one chunk at a time bounds the extra memory.
VAE_CHUNK = 4


def random_masks(count: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """[count, 1, height, width] masks of 0/1 (1 = redraw), drawn as the module docstring says;
    every mask takes the same six draws, so the sequence does not depend on the shapes."""
    ys = torch.arange(height, dtype=torch.float32).view(-1, 1)
    xs = torch.arange(width, dtype=torch.float32).view(1, -1)
    masks = []
    for u in torch.rand(count, 6, generator=generator).tolist():
        if u[0] < FULL_MASK_P:
            masks.append(torch.ones(height, width))
            continue
        size_x, size_y = int(u[1] * (width + 1)), int(u[2] * (height + 1))
        half_x, half_y = size_x // 2, size_y // 2
        centre_x = half_x + int(u[3] * (width - 2 * half_x + 1))
        centre_y = half_y + int(u[4] * (height - 2 * half_y + 1))
        dx, dy = (xs - centre_x).abs(), (ys - centre_y).abs()
        if u[5] < 0.5:
            inside = (dx <= half_x) & (dy <= half_y)
        else:
            inside = (dx / max(half_x, 0.5)) ** 2 + (dy / max(half_y, 0.5)) ** 2 <= 1
        masks.append(inside.float())
    return torch.stack(masks)[:, None]


class InpaintingConditioning:
    """Clean latents (VAE scale, unscaled) -> the 5 channels an inpainting U-Net gets besides
    the noisy latent: the mask on the latent grid and the masked image's latent, scaled."""

    def __init__(self, vae: Any, latent_scale: float) -> None:
        self.vae, self.scale = vae, latent_scale

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        vae = self.vae
        pixels = torch.cat([vae.decode(chunk.to(vae.dtype)).sample.float().clamp(-1, 1)
                            for chunk in latents.split(VAE_CHUNK)])
        masks = random_masks(len(latents), pixels.shape[-2], pixels.shape[-1], generator)
        masks = masks.to(pixels.device)
        masked = pixels * (masks < 0.5)
        encoded = []
        for chunk in masked.split(VAE_CHUNK):
            dist = vae.encode(chunk.to(vae.dtype)).latent_dist
            mean, std = dist.mean.float(), dist.std.float()
            encoded.append(mean + std * randn(mean, generator))
        mask_latent = torch.nn.functional.interpolate(masks, size=latents.shape[-2:])
        return torch.cat([mask_latent, torch.cat(encoded) * self.scale], dim=1)
