"""Image-quality scores for comparing a teacher with its students (the interface other
analyses code against): `psnr` and `ssim` take two float tensors [N, 3, H, W] in [0, 1]
and give one value per image (shape [N]); see `bksdm_ext.scores.agreement` for their
exact definitions.  Identical images have a PSNR of +inf; `average_psnr` averages the
squared errors, so the mean is finite unless every pair is identical.

The math lives in `bksdm_ext.scores`, below both `measure` and `train`, so that
evaluation during distillation uses the very same functions.
"""
from ..scores.agreement import average_psnr, psnr, ssim
from ..scores.clip import ClipScorer, clip_score_of_embeddings

__all__ = ["average_psnr", "psnr", "ssim", "ClipScorer", "clip_score_of_embeddings"]
