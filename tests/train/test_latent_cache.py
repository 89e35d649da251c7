"""The latent cache encodes each example once, is rebuilt whenever what it depends on
changes, resumes interrupted builds and gives back what the encoders gave (within fp16)."""
import os
import pickle
from pathlib import Path
from typing import List, Optional

import numpy as np
import pytest
import torch
from PIL import Image

from bksdm_ext.train.dataset import DatasetScan, load_image, scan_dataset
from bksdm_ext.train.latent_cache import LatentCache, cache_fingerprint, dataset_fingerprint

RESOLUTION = 16
CAPTIONS = ["a red fox", "two cats", "a lighthouse at dusk", "green hills", "an old map"]


class Encoders:
    """A tiny random VAE and CLIP text encoder, counting calls; can fail on purpose."""

    def __init__(self, fail_after: Optional[int] = None) -> None:
        from diffusers import AutoencoderKL
        from transformers import CLIPTextConfig, CLIPTextModel

        torch.manual_seed(0)
        self.vae = AutoencoderKL(block_out_channels=(32, 32), layers_per_block=1,
                                 down_block_types=("DownEncoderBlock2D",) * 2,
                                 up_block_types=("UpDecoderBlock2D",) * 2).eval()
        self.text = CLIPTextModel(CLIPTextConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=1,
            vocab_size=1000, max_position_embeddings=77)).eval()
        self.fail_after = fail_after
        self.image_calls = 0
        self.caption_calls = 0

    def images(self, images: torch.Tensor):
        self.image_calls += 1
        if self.fail_after is not None and self.image_calls > self.fail_after:
            raise RuntimeError("interrupted")
        latents = self.vae.encode(images).latent_dist
        return latents.mean, latents.std

    def captions(self, captions: List[str]) -> torch.Tensor:
        self.caption_calls += 1
        return torch.stack([embed(self.text, caption) for caption in captions])

    def calls(self) -> int:
        return self.image_calls + self.caption_calls


def embed(text: torch.nn.Module, caption: str) -> torch.Tensor:
    """[77, D] for a caption; the tiny encoder has no vocabulary, so words map to ids by hash."""
    ids = ([sum(map(ord, word)) % 1000 for word in caption.split()] + [0] * 77)[:77]
    with torch.no_grad():
        return text(torch.tensor([ids]))[0][0]


def write_example(folder: Path, name: str, caption: str, seed: int) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / (name + ".png"))
    (folder / (name + ".txt")).write_text(caption, encoding="utf-8")


@pytest.fixture
def dataset(tmp_path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    for i, caption in enumerate(CAPTIONS):
        write_example(folder, "img%d" % i, caption, i)
    return folder


def build(root: Path, scan: DatasetScan, encoders: Encoders, resolution: int = RESOLUTION,
          flip: bool = True, batch_size: int = 2, **fingerprint: str) -> LatentCache:
    cache = LatentCache(root, cache_fingerprint(scan, resolution, flip, vae="tiny", **fingerprint),
                        shard_size=2)
    cache.build(scan, encoders.images, encoders.captions, resolution, flip, batch_size=batch_size)
    return cache


def assert_matches_direct_encode(cache: LatentCache, scan: DatasetScan, encoders: Encoders,
                                 resolution: int = RESOLUTION) -> None:
    images = [load_image(example.image, resolution, flip=flipped)
              for flipped in (False, True) for example in scan.examples]
    with torch.no_grad():
        direct = encoders.vae.encode(torch.stack(images)).latent_dist
    n = len(scan.examples)
    for i, example in enumerate(scan.examples):
        for flipped in (False, True):
            item = cache.item(i, flipped=flipped)
            assert all(value.dtype == torch.float32 for value in item.values())
            j = i + n * flipped
            torch.testing.assert_close(item["mean"], direct.mean[j], rtol=2e-3, atol=1e-3)
            torch.testing.assert_close(item["std"], direct.std[j], rtol=2e-3, atol=1e-3)
        torch.testing.assert_close(cache.item(i)["embedding"],
                                   embed(encoders.text, example.caption),
                                   rtol=2e-3, atol=2e-3)
        assert cache.caption(i) == example.caption


def test_build_stores_what_the_encoders_give(dataset, tmp_path):
    scan = scan_dataset(dataset)
    encoders = Encoders()
    progress = []
    cache = LatentCache(tmp_path / "cache", cache_fingerprint(scan, RESOLUTION, True, vae="tiny"),
                        shard_size=2)
    assert not cache.is_complete() and len(cache) == 0
    cache.build(scan, encoders.images, encoders.captions, RESOLUTION, True, batch_size=2,
                progress=lambda done, total: progress.append((done, total)))
    assert cache.is_complete() and len(cache) == 5
    assert cache.stats == {"encoded": 5, "reused": 0}
    assert progress == [(2, 5), (4, 5), (5, 5)]
    assert encoders.image_calls == 3  # one call per batch, mirrors in the same call
    item = cache.item(4, flipped=True)
    assert item["mean"].shape == item["std"].shape == (4, 8, 8)
    assert item["embedding"].shape == (77, 32)
    assert_matches_direct_encode(cache, scan, encoders)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [
        "index.json", "shard-00000.safetensors", "shard-00001.safetensors",
        "shard-00002.safetensors"]


def test_second_build_encodes_nothing(dataset, tmp_path):
    scan = scan_dataset(dataset)
    build(tmp_path / "cache", scan, Encoders())
    again = Encoders()
    cache = build(tmp_path / "cache", scan_dataset(dataset), again)
    assert again.calls() == 0
    assert cache.stats == {"encoded": 0, "reused": 5}
    assert_matches_direct_encode(cache, scan, again)


@pytest.mark.parametrize("change", ["resolution", "caption", "image", "encoder"])
def test_any_change_rebuilds(dataset, tmp_path, change):
    build(tmp_path / "cache", scan_dataset(dataset), Encoders())
    resolution, encoder = RESOLUTION, {}
    if change == "resolution":
        resolution = 24
    elif change == "caption":
        (dataset / "img3.txt").write_text("green hills in fog", encoding="utf-8")
    elif change == "image":
        write_example(dataset, "img1", CAPTIONS[1], seed=99)
        os.utime(dataset / "img1.png", ns=(1, 1))
    else:
        encoder = {"text_encoder": "another one"}
    scan = scan_dataset(dataset)
    fingerprint = cache_fingerprint(scan, resolution, True, vae="tiny", **encoder)
    assert not LatentCache(tmp_path / "cache", fingerprint, shard_size=2).is_complete()
    encoders = Encoders()
    cache = build(tmp_path / "cache", scan, encoders, resolution=resolution, **encoder)
    assert cache.stats == {"encoded": 5, "reused": 0}
    assert encoders.image_calls == 3
    assert_matches_direct_encode(cache, scan, encoders, resolution)


def test_interrupted_build_resumes_with_finished_shards(dataset, tmp_path):
    scan = scan_dataset(dataset)
    with pytest.raises(RuntimeError, match="interrupted"):
        build(tmp_path / "cache", scan, Encoders(fail_after=3), flip=False, batch_size=1)
    assert not LatentCache(tmp_path / "cache", cache_fingerprint(scan, RESOLUTION, False,
                                                                 vae="tiny"),
                           shard_size=2).is_complete()
    assert not list((tmp_path / "cache").glob("*.tmp"))
    encoders = Encoders()
    cache = build(tmp_path / "cache", scan, encoders, flip=False, batch_size=1)
    assert cache.stats == {"encoded": 3, "reused": 2}
    assert encoders.image_calls == 3  # examples 2, 3 and 4 only
    assert cache.is_complete() and len(cache) == 5
    images = torch.stack([load_image(example.image, RESOLUTION) for example in scan.examples])
    with torch.no_grad():
        direct = encoders.vae.encode(images).latent_dist
    for i in range(len(scan.examples)):
        torch.testing.assert_close(cache.item(i)["mean"], direct.mean[i], rtol=2e-3, atol=1e-3)
    with pytest.raises(ValueError, match="without flips"):
        cache.item(0, flipped=True)


def test_added_examples_survive_reopening(dataset, tmp_path):
    scan = scan_dataset(dataset)
    fingerprint = cache_fingerprint(scan, RESOLUTION, True, vae="tiny")
    cache = build(tmp_path / "cache", scan, Encoders())
    latent, embedding = torch.randn(4, 8, 8), torch.randn(77, 32)
    cache.add(latent, torch.zeros(4, 8, 8), embedding, "teacher sample")
    cache.add(latent * 2, torch.zeros(4, 8, 8), embedding, "another")
    assert len(cache) == 7

    reopened = LatentCache(tmp_path / "cache", fingerprint, shard_size=2)
    assert len(reopened) == 7 and reopened.is_complete()
    for flipped in (False, True):
        item = reopened.item(5, flipped=flipped)
        torch.testing.assert_close(item["mean"], latent, rtol=1e-3, atol=1e-3)
        assert torch.equal(item["std"], torch.zeros(4, 8, 8))
        torch.testing.assert_close(item["embedding"], embedding, rtol=1e-3, atol=1e-3)
    assert reopened.caption(6) == "another"
    with pytest.raises(IndexError):
        reopened.item(7)

    # Another fingerprint never sees them: its build starts from scratch.
    other = build(tmp_path / "cache", scan, Encoders(), vae_version="2")
    assert len(other) == 5
    assert len(LatentCache(tmp_path / "cache", fingerprint, shard_size=2)) == 0


def test_add_to_an_empty_cache(tmp_path):
    cache = LatentCache(tmp_path / "synthetic", {"teacher": "abc"})
    cache.add(torch.ones(4, 8, 8), torch.zeros(4, 8, 8), torch.ones(77, 32), "a cat")
    reopened = LatentCache(tmp_path / "synthetic", {"teacher": "abc"})
    assert len(reopened) == 1 and not reopened.is_complete()
    assert torch.equal(reopened.item(0)["mean"], torch.ones(4, 8, 8))


def test_fingerprint_must_describe_the_build(dataset, tmp_path):
    scan = scan_dataset(dataset)
    cache = LatentCache(tmp_path / "cache", cache_fingerprint(scan, RESOLUTION, True, vae="x"))
    encoders = Encoders()
    with pytest.raises(ValueError, match="cache_fingerprint"):
        cache.build(scan, encoders.images, encoders.captions, 32, True)
    assert encoders.calls() == 0


def test_dataset_fingerprint_follows_files_and_captions(dataset):
    first = dataset_fingerprint(scan_dataset(dataset))
    assert dataset_fingerprint(scan_dataset(dataset)) == first
    (dataset / "img0.txt").write_text("a red fox ", encoding="utf-8")  # same after strip
    assert dataset_fingerprint(scan_dataset(dataset)) == first
    (dataset / "img0.txt").write_text("a grey fox", encoding="utf-8")
    assert dataset_fingerprint(scan_dataset(dataset)) != first


def test_cache_pickles_for_dataloader_workers(dataset, tmp_path):
    cache = build(tmp_path / "cache", scan_dataset(dataset), Encoders())
    expected = cache.item(3)
    copy = pickle.loads(pickle.dumps(cache))
    assert torch.equal(copy.item(3)["mean"], expected["mean"])
