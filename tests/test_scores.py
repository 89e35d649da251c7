"""PSNR, SSIM and CLIP score against independent references: numpy written here from the
papers' formulas, torchmetrics where it is installed, and cosines computed by hand."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from bksdm_ext.errors import BadInput
from bksdm_ext.measure.quality import ClipScorer, average_psnr, psnr, ssim


def _images(seed: int, n: int = 2, size: int = 40) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    smooth = torch.nn.functional.interpolate(torch.rand(n, 3, size // 4, size // 4, generator=g),
                                             size=(size, size + 8), mode="bilinear")
    return (smooth + 0.05 * torch.randn(smooth.shape, generator=g)).clamp(0, 1)


def _numpy_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """Wang et al. 2004 with an 11x11 Gaussian (sigma 1.5), each window explicitly, the
    edges mirrored by 5 pixels (torchmetrics' convention)."""
    r = np.arange(11) - 5.0
    g = np.exp(-r ** 2 / (2 * 1.5 ** 2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    maps = []
    for channel in range(3):
        a = np.lib.stride_tricks.sliding_window_view(np.pad(x[channel], 5, mode="reflect"), (11, 11))
        b = np.lib.stride_tricks.sliding_window_view(np.pad(y[channel], 5, mode="reflect"), (11, 11))
        mu_a, mu_b = (a * w).sum((-1, -2)), (b * w).sum((-1, -2))
        var_a = (a ** 2 * w).sum((-1, -2)) - mu_a ** 2
        var_b = (b ** 2 * w).sum((-1, -2)) - mu_b ** 2
        cov = (a * b * w).sum((-1, -2)) - mu_a * mu_b
        maps.append(((2 * mu_a * mu_b + c1) * (2 * cov + c2))
                    / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2)))
    return float(np.mean(maps))


def test_identical_images_agree_perfectly():
    a = _images(0)
    assert torch.isinf(psnr(a, a)).all() and psnr(a, a).shape == (2,)
    assert torch.allclose(ssim(a, a), torch.ones(2))
    assert average_psnr([math.inf, math.inf]) == math.inf


def test_psnr_of_a_known_brightness_shift_and_its_pooled_average():
    a = torch.full((1, 3, 16, 16), 0.5)
    assert psnr(a, a + 0.1).item() == pytest.approx(20.0, abs=1e-4)  # MSE 0.01
    assert psnr(a, a + 0.01).item() == pytest.approx(40.0, abs=1e-4)
    # errors 0 and 0.01 pool to 0.005: 23.01 dB, finite although one pair is identical
    assert average_psnr([math.inf, 20.0]) == pytest.approx(10 * math.log10(200), abs=1e-9)


def test_ssim_and_psnr_of_distortions_equal_a_numpy_reference():
    clean = _images(1)
    noisy = (clean + 0.08 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    blurred = torch.nn.functional.avg_pool2d(clean, 3, stride=1, padding=1)
    for distorted in (noisy, blurred):
        got = ssim(clean, distorted)
        for i in range(clean.shape[0]):
            want = _numpy_ssim(clean[i].double().numpy(), distorted[i].double().numpy())
            assert got[i].item() == pytest.approx(want, abs=1e-5)
            mse = ((clean[i].double() - distorted[i].double()) ** 2).mean().item()
            assert psnr(clean, distorted)[i].item() == pytest.approx(10 * math.log10(1 / mse),
                                                                     abs=1e-4)
        assert (got < 0.99).all()


def test_ssim_equals_torchmetrics():
    functional = pytest.importorskip("torchmetrics.functional.image")
    clean = _images(3, n=3)
    noisy = (clean + 0.1 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(4))).clamp(0, 1)
    want = functional.structural_similarity_index_measure(
        noisy, clean, gaussian_kernel=True, sigma=1.5, kernel_size=11, data_range=1.0,
        k1=0.01, k2=0.03, reduction="none")
    assert torch.allclose(ssim(noisy, clean), want.float(), atol=1e-5)


def test_bad_shapes_are_refused_with_a_message():
    with pytest.raises(BadInput, match="too small"):
        ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))
    with pytest.raises(BadInput, match=r"\[N, 3, H, W\]"):
        psnr(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))


# -- CLIP score -----------------------------------------------------------------------


def tiny_clip(folder: Path, image_size: int = 32) -> Path:
    """A random transformers CLIPModel with CLIP's real vocabulary size, saved to `folder`."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=16, intermediate_size=32,
                         num_hidden_layers=1, num_attention_heads=2,
                         max_position_embeddings=77),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2, image_size=image_size, patch_size=8),
        projection_dim=8)
    CLIPModel(config).save_pretrained(str(folder))
    return folder


def test_clip_score_is_the_hand_computed_cosine(tmp_path):
    from bksdm_ext.model.tokenizer import clip_tokenizer

    scorer = ClipScorer.load(str(tiny_clip(tmp_path / "clip")))
    images = _images(5, n=2, size=48)  # 48x56: resized to 32x36 then centre-cropped
    prompts = ["a red cube", "a photo of a cat on a sofa"]
    got = scorer.score(images, prompts)

    model = scorer.model
    tokens = clip_tokenizer("sd-v1")(prompts, padding="max_length", max_length=77,
                                     return_tensors="pt").input_ids
    resized = torch.nn.functional.interpolate(images, size=(32, 37), mode="bicubic",
                                              antialias=True).clamp(0, 1)[..., 2:34]
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    with torch.no_grad():
        image = model.get_image_features(pixel_values=(resized - mean) / std)
        text = model.get_text_features(input_ids=tokens)
    cosine = (image / image.norm(dim=-1, keepdim=True) * text / text.norm(dim=-1, keepdim=True)).sum(-1)
    assert torch.allclose(got, (100 * cosine).clamp(min=0), atol=1e-4)
    assert got.shape == (2,)


def test_clip_score_equals_torchmetrics(tmp_path):
    """torchmetrics' CLIPScore (its own preprocessing and tokenising) on the same model."""
    clip_score = pytest.importorskip("torchmetrics.functional.multimodal").clip_score
    from transformers import CLIPImageProcessor

    from bksdm_ext.model.tokenizer import clip_tokenizer

    folder = tiny_clip(tmp_path / "openai-tiny-clip")  # torchmetrics accepts "openai" names
    clip_tokenizer("sd-v1").save_pretrained(str(folder))
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
                       ).save_pretrained(str(folder))
    images = (_images(6, n=2, size=32)[..., :32] * 255).round()  # at CLIP's size: no resizing
    prompts = ["a lighthouse at dusk", "two dogs"]
    got = ClipScorer.load(str(folder)).score(images / 255, prompts)
    for i in range(2):
        want = clip_score(images[i:i + 1].to(torch.uint8), prompts[i:i + 1], str(folder))
        assert got[i].item() == pytest.approx(want.item(), abs=1e-3)


def test_missing_clip_models_say_what_to_do(tmp_path):
    with pytest.raises(BadInput, match="no such CLIP model folder"):
        ClipScorer.load(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInput, match="not a transformers CLIPModel folder"):
        ClipScorer.load(str(tmp_path / "empty"))


def test_a_clip_model_in_the_hugging_face_cache_is_found_and_used_offline(tmp_path):
    """A pre-filled cache (the layout huggingface_hub writes), in a fresh process whose
    HF_HUB_CACHE points at it; an empty cache finds nothing."""
    import os
    import subprocess
    import sys

    hub = tmp_path / "hub"
    repo = hub / "models--openai--clip-vit-base-patch32"
    tiny_clip(repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    script = ("import torch; from bksdm_ext.scores.clip import ClipScorer, cached_model\n"
              "name = cached_model(); print(name)\n"
              "if name: print(ClipScorer.load(name).score(torch.rand(1, 3, 32, 32), ['a cat']).shape)")
    root = Path(__file__).resolve().parent.parent
    for cache, expected in ((hub, "openai/clip-vit-base-patch32\ntorch.Size([1])"),
                            (tmp_path / "empty", "None")):
        env = dict(os.environ, HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1",
                   PYTHONPATH=str(root))
        done = subprocess.run([sys.executable, "-c", script], env=env, cwd=str(root),
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == expected
