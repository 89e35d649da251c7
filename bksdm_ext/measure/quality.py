"""Image agreement scores: how close an image is to a reference (the teacher's).

`psnr` and `ssim` take two float tensors [N, 3, H, W] in [0, 1] and give one value per
image (shape [N]).  Identical images have a PSNR of +inf and an SSIM of 1.  SSIM is
Wang et al.'s: an 11-pixel Gaussian window (sigma 1.5) per channel, over the valid
region, averaged over channels and pixels.
"""
import torch
import torch.nn.functional as F

_WINDOW, _SIGMA = 11, 1.5
_C1, _C2 = 0.01 ** 2, 0.03 ** 2


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(1.0 / mse)).float()


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.double(), b.double()
    channels = a.shape[1]
    size = min(_WINDOW, a.shape[-1], a.shape[-2])
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-coords ** 2 / (2 * _SIGMA ** 2))
    g = g / g.sum()
    window = (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, window, groups=channels)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    index = ((2 * mu_a * mu_b + _C1) * (2 * cov + _C2)) / (
        (mu_a ** 2 + mu_b ** 2 + _C1) * (var_a + var_b + _C2))
    return index.flatten(1).mean(1).float()
