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


def tiny_clip(folder: Path, image_size: int = 32, width: int = 16, heads: int = 2) -> Path:
    """A random transformers CLIPModel with CLIP's real vocabulary size, saved to `folder`."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=width, intermediate_size=4 * width,
                         num_hidden_layers=2, num_attention_heads=heads,
                         max_position_embeddings=77),
        vision_config=dict(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=2,
                           num_attention_heads=heads, image_size=image_size, patch_size=8),
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
        image = embeddings(model, pixel_values=(resized - mean) / std)
        text = embeddings(model, input_ids=tokens)
    cosine = (image / image.norm(dim=-1, keepdim=True) * text / text.norm(dim=-1, keepdim=True)).sum(-1)
    assert torch.allclose(got, (100 * cosine).clamp(min=0), atol=1e-4)
    assert got.shape == (2,)


def embeddings(model, input_ids=None, pixel_values=None) -> torch.Tensor:
    """CLIP's projected text or image embedding, computed from the towers by hand (the same
    on transformers 4 and 5, whose get_*_features differ in what they return)."""
    if input_ids is not None:
        return model.text_projection(model.text_model(input_ids=input_ids).pooler_output)
    return model.visual_projection(model.vision_model(pixel_values=pixel_values).pooler_output)


def test_clip_score_equals_torchmetrics(tmp_path):
    """torchmetrics' CLIPScore (its own preprocessing and tokenising) on the same model."""
    clip_score = pytest.importorskip("torchmetrics.functional.multimodal").clip_score
    import transformers

    if int(transformers.__version__.split(".")[0]) >= 5:
        pytest.skip("torchmetrics' clip_score calls .norm() on what transformers 5's "
                    "get_*_features returns (a model output); the first stack checks it")
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
    with pytest.raises(BadInput, match="no such CLIP model"):
        ClipScorer.load(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInput, match="not a transformers CLIPModel folder"):
        ClipScorer.load(str(tmp_path / "empty"))


@pytest.mark.slow
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
    root = Path(__file__).resolve().parents[2]
    for cache, expected in ((hub, "openai/clip-vit-base-patch32\ntorch.Size([1])"),
                            (tmp_path / "empty", "None")):
        env = dict(os.environ, HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1",
                   PYTHONPATH=str(root))
        done = subprocess.run([sys.executable, "-c", script], env=env, cwd=str(root),
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == expected


def _openai_state(model) -> dict:
    """The state dict OpenAI's `clip` package uses for the same weights (written from
    clip/model.py's module names)."""
    sd = model.state_dict()
    out = {"logit_scale": sd["logit_scale"], "text_projection": sd["text_projection.weight"].t(),
           "visual.proj": sd["visual_projection.weight"].t(),
           "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
           "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
           "visual.class_embedding": sd["vision_model.embeddings.class_embedding"],
           "visual.conv1.weight": sd["vision_model.embeddings.patch_embedding.weight"],
           "visual.positional_embedding": sd["vision_model.embeddings.position_embedding.weight"]}
    for kind in ("weight", "bias"):
        out["ln_final." + kind] = sd["text_model.final_layer_norm." + kind]
        out["visual.ln_pre." + kind] = sd["vision_model.pre_layrnorm." + kind]
        out["visual.ln_post." + kind] = sd["vision_model.post_layernorm." + kind]
        for ours, theirs in (("text_model.", ""), ("vision_model.", "visual.")):
            for i in range(2):
                a, b = "%sencoder.layers.%d." % (ours, i), "%stransformer.resblocks.%d." % (theirs, i)
                out[b + "attn.in_proj_" + kind] = torch.cat(
                    [sd[a + "self_attn.%s_proj.%s" % (x, kind)] for x in "qkv"])
                for x, y in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"),
                             ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"),
                             ("mlp.fc2", "mlp.c_proj")):
                    out["%s%s.%s" % (b, y, kind)] = sd["%s%s.%s" % (a, x, kind)]
    return out


def _torchscript_archive(state: dict, path: Path) -> Path:
    """A TorchScript file holding `state` under its dotted names, like OpenAI's .pt files."""
    root = torch.nn.Module()
    for key, value in state.items():
        *parents, leaf = key.split(".")
        module = root
        for name in parents:
            if not hasattr(module, name):
                module.add_module(name, torch.nn.Module())
            module = getattr(module, name)
        module.register_parameter(leaf, torch.nn.Parameter(value.clone(), requires_grad=False))
    torch.jit.script(root).save(str(path))
    return path


def test_an_openai_clip_file_like_the_interrogators_scores_as_its_transformers_twin(tmp_path):
    from transformers import CLIPModel

    from bksdm_ext.scores.openai_clip import interrogator_file

    folder = tiny_clip(tmp_path / "hf", width=64, heads=1)  # OpenAI CLIP: 64-wide heads
    (tmp_path / "models").mkdir()
    pt = _torchscript_archive(_openai_state(CLIPModel.from_pretrained(str(folder))),
                              tmp_path / "models" / "ViT-L-14.pt")
    assert interrogator_file([tmp_path / "elsewhere", tmp_path / "models"]) == pt
    images, prompts = _images(7, n=2, size=32)[..., :32], ["a cat", "a bridge in the fog"]
    twin, converted = ClipScorer.load(str(folder)), ClipScorer.load(str(pt))
    assert torch.allclose(converted.score(images, prompts), twin.score(images, prompts), atol=1e-4)
    tokens = twin.tokenizer(prompts, padding="max_length", max_length=77,
                            return_tensors="pt").input_ids
    with torch.no_grad():  # the embeddings themselves, not just the (often 0-floored) scores
        for a, b in ((embeddings(converted.model, input_ids=tokens),
                      embeddings(twin.model, input_ids=tokens)),
                     (embeddings(converted.model, pixel_values=converted.pixels(images)),
                      embeddings(twin.model, pixel_values=twin.pixels(images)))):
            assert torch.allclose(a, b, atol=1e-5) and a.abs().sum() > 0
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(BadInput, match="broken.pt: not a CLIP checkpoint"):
        ClipScorer.load(str(broken))


@pytest.mark.slow
def test_a_named_clip_is_downloaded_on_request_only(tmp_path):
    """A local file server answers as the Hugging Face hub does (HF_ENDPOINT); nothing is
    fetched until a CLIP is named, then it is, once, into the cache where it is found."""
    import subprocess
    import sys

    from fake_hub import hub_env, serving

    root = Path(__file__).resolve().parents[2]
    with serving("openai/clip-vit-base-patch32", tiny_clip(tmp_path / "served")) as (url, fetched):
        env = hub_env(url, tmp_path / "hf-home", str(root))

        def run(script: str) -> str:
            done = subprocess.run([sys.executable, "-c", "from bksdm_ext.scores.clip import *\n"
                                   + script], env=env, cwd=str(root), capture_output=True,
                                  text=True, timeout=300)
            assert done.returncode == 0, done.stderr
            return done.stdout.strip()

        assert run("print(find_scorer(None))\n"
                   "try:\n    ClipScorer.load('openai/clip-vit-base-patch32')\n"
                   "except Exception as e:\n    print(e)") == (
            "None\nCLIP model openai/clip-vit-base-patch32 is not in the Hugging Face cache; "
            "ask for it to be downloaded (--clip-model openai/clip-vit-base-patch32, or the "
            "WebUI's 'Download CLIP')")
        assert fetched == []  # not asked: nothing fetched
        assert run("print(find_scorer('openai/clip-vit-base-patch32').name, cached_model())") == (
            "downloading CLIP openai/clip-vit-base-patch32 (0.6 GB)\n"
            "openai/clip-vit-base-patch32 openai/clip-vit-base-patch32")
        assert ("GET", "config.json") in fetched and len(fetched) >= 3
