"""Agreement of an image with a reference image (the teacher's, for the same prompt and
seed): PSNR and SSIM on decoded images in [0, 1].

SSIM follows Wang et al. 2004 exactly as torchmetrics (1.x) computes it: an 11×11
Gaussian window with σ = 1.5 on each channel, K1 = 0.01, K2 = 0.03, data range 1, the
image mirrored ("reflect") by 5 pixels at the edges so that every pixel has a window, the
map averaged over all pixels and channels.  scikit-image (``gaussian_weights=True,
use_sample_covariance=False``) uses the same windows but averages only the pixels 5 or more
from an edge, so its values differ slightly at image borders.
"""
import math
from typing import Any, Dict, Sequence

import torch
import torch.nn.functional as F

from ..errors import BadInput

WINDOW = 11
SIGMA = 1.5
K1, K2 = 0.01, 0.03


def _check(a: torch.Tensor, b: torch.Tensor, minimum: int = 1) -> None:
    if a.shape != b.shape or a.dim() != 4 or a.shape[1] != 3:
        raise BadInput("images to compare must both be [N, 3, H, W]; got %s and %s"
                       % (tuple(a.shape), tuple(b.shape)))
    if min(a.shape[-2:]) < minimum:
        raise BadInput("images of %dx%d px are too small to compare: SSIM needs at least "
                       "%d px on each side" % (a.shape[-1], a.shape[-2], minimum))


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of each image pair (shape [N]); identical images
    give +inf (average them with `average_psnr`, which handles that)."""
    _check(a, b)
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(1.0 / mse)).float()


def average_psnr(values: Sequence[float]) -> float:
    """The PSNR of the pooled images: the mean squared error is averaged, not the dB, so an
    identical pair (inf dB, error 0) counts as a perfect image instead of making the mean
    inf; the result is inf only when every pair is identical."""
    if not values:
        return float("nan")
    mse = sum(10 ** (-v / 10) for v in values) / len(values)
    return math.inf if mse == 0 else -10 * math.log10(mse)


def _gaussian_window(device: torch.device) -> torch.Tensor:
    coords = torch.arange(WINDOW, dtype=torch.float64, device=device) - (WINDOW - 1) / 2
    g = torch.exp(-coords.pow(2) / (2 * SIGMA ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(3, 1, WINDOW, WINDOW)


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Structural similarity of each image pair (shape [N]), 1 for identical images."""
    _check(a, b, minimum=WINDOW)
    x, y = a.double(), b.double()
    window = _gaussian_window(x.device)

    def blur(t: torch.Tensor) -> torch.Tensor:  # channel by channel, edges mirrored
        pad = WINDOW // 2
        return F.conv2d(F.pad(t, (pad, pad, pad, pad), mode="reflect"), window, groups=3)

    mu_x, mu_y = blur(x), blur(y)
    var_x = (blur(x * x) - mu_x ** 2).clamp(min=0)  # rounding must not make it negative
    var_y = (blur(y * y) - mu_y ** 2).clamp(min=0)
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = K1 ** 2, K2 ** 2
    score = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return score.flatten(1).mean(1).float()


def to_tensor(images: Sequence[Any]) -> torch.Tensor:
    """PIL images of one size to a float tensor [N, 3, H, W] in [0, 1]."""
    import numpy as np

    array = np.stack([np.asarray(image.convert("RGB"), dtype=np.float32) for image in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2) / 255.0


def agreement(images: Sequence[Any], reference: Sequence[Any]) -> Dict[str, float]:
    """Mean PSNR (pooled, see `average_psnr`) and SSIM of PIL images against the reference
    images of the same prompts and seeds."""
    a, b = to_tensor(images), to_tensor(reference)
    return {"psnr": average_psnr(psnr(a, b).tolist()), "ssim": float(ssim(a, b).mean())}
