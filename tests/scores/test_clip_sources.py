"""Where a CLIP for the CLIP score comes from: open_clip's LAION models in the Hugging Face
cache (only open_clip's weight file, no transformers config) score exactly as open_clip
itself does; the preferred CLIP is picked first; a ResNet CLIP is never picked and,
named, is refused with one clear message.  Every model is tiny and random."""
import importlib
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from bksdm_ext.errors import BadInput
from bksdm_ext.scores.clip import ClipScorer, cached_model, find_scorer, local_model
from bksdm_ext.scores.openai_clip import OPENAI, ClipSettings, to_clip_model
from test_parts_keymap import torchvision_stubbed_if_unimportable
from test_scores import _images, tiny_clip

H14 = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"  # the table: gelu, 80-wide vision heads
BIGG = "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k"
OPENAI_L14 = "openai/clip-vit-large-patch14"
PROMPTS = ["a red cube on a table", "two dogs"]


@pytest.fixture(scope="module")
def open_clip():
    if importlib.util.find_spec("open_clip") is None:
        pytest.skip("needs open-clip-torch")
    with torchvision_stubbed_if_unimportable():  # the first stack has no torchvision
        return importlib.import_module("open_clip")


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty Hugging Face cache and an empty home (no `clip` package files)."""
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return cache


def snapshot(cache: Path, repo: str) -> Path:
    """A snapshot folder of `repo` in the layout huggingface_hub writes."""
    folder = cache / ("models--" + repo.replace("/", "--"))
    (folder / "snapshots" / "0123abcd").mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("0123abcd")
    return folder / "snapshots" / "0123abcd"


def tiny_open_clip(open_clip, vision: dict, text: dict, quick_gelu: bool = False,
                   seed: int = 1):
    torch.manual_seed(seed)
    return open_clip.CLIP(embed_dim=8, quick_gelu=quick_gelu,
                          vision_cfg=dict(dict(layers=2, patch_size=8, image_size=32), **vision),
                          text_cfg=dict(context_length=77, vocab_size=49408, layers=2, **text)
                          ).eval()


def open_clip_embeddings(open_clip, model, images, mean, std):
    """open_clip's own encode_image / encode_text (its tokenizer pads with 0, ours with
    the end token: the causal mask makes that irrelevant)."""
    pixels = (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        return model.encode_image(pixels), model.encode_text(open_clip.tokenize(PROMPTS))


def our_embeddings(scorer, images):
    tokens = scorer.tokenizer(PROMPTS, padding="max_length", max_length=77,
                              return_tensors="pt").input_ids
    with torch.no_grad():
        image = scorer.model.get_image_features(pixel_values=scorer.pixels(images))
        text = scorer.model.get_text_features(input_ids=tokens)
    unwrap = (lambda x: x if isinstance(x, torch.Tensor) else x.pooler_output)
    return unwrap(image), unwrap(text)


def assert_scores_as_open_clip(open_clip, scorer, model, mean, std):
    images = _images(36, n=2, size=32)[..., :32]  # at the model's size: no resizing
    theirs = open_clip_embeddings(open_clip, model, images, mean, std)
    for ours, want in zip(our_embeddings(scorer, images), theirs):
        assert torch.allclose(ours, want, atol=1e-5), (ours - want).abs().max()
    cosine = torch.nn.functional.cosine_similarity(*theirs, dim=-1)
    assert (cosine > 0).all()  # seeds chosen so that the floor at 0 hides nothing
    assert torch.allclose(scorer.score(images, PROMPTS), (100 * cosine).clamp(min=0), atol=1e-3)


def test_open_clip_models_in_the_cache_score_as_open_clip_does(open_clip, hub):
    """SD-v2's ViT-H-14 as open_clip caches it: only open_clip_pytorch_model.bin, read with
    the table's settings (gelu, 80-wide vision heads); SDXL's ViT-bigG-14 with an
    open_clip_config.json, whose settings win (quick_gelu, 24-wide heads, its own mean)."""
    h14 = tiny_open_clip(open_clip, dict(width=160, head_width=80, mlp_ratio=3.5),
                         dict(width=64, heads=1), seed=5)
    torch.save(h14.state_dict(), str(snapshot(hub, H14) / "open_clip_pytorch_model.bin"))
    assert local_model() == H14 and cached_model() == H14
    scorer = ClipScorer.load(H14)
    assert scorer.name == H14 and scorer.model.config.vision_config.num_attention_heads == 2
    assert scorer.model.config.vision_config.intermediate_size == 560
    assert_scores_as_open_clip(open_clip, scorer, h14, OPENAI.mean, OPENAI.std)

    # The same weights read as an OpenAI CLIP (quick_gelu) give other embeddings, so the
    # comparison above does tell the activations apart.
    wrong = ClipScorer(H14, to_clip_model(h14.state_dict(), H14, ClipSettings(
        vision_head_width=80)).eval(), scorer.tokenizer, 32)
    images = _images(36, n=2, size=32)[..., :32]
    assert not torch.allclose(our_embeddings(wrong, images)[0],
                              our_embeddings(scorer, images)[0], atol=1e-4)

    mean, std = (0.5, 0.5, 0.5), (0.25, 0.3, 0.35)
    bigg = tiny_open_clip(open_clip, dict(width=48, head_width=24), dict(width=64, heads=2),
                          quick_gelu=True)
    folder = snapshot(hub, BIGG)
    torch.save(bigg.state_dict(), str(folder / "open_clip_pytorch_model.bin"))
    (folder / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": {"embed_dim": 8, "quick_gelu": True,
                      "vision_cfg": {"width": 48, "head_width": 24, "layers": 2},
                      "text_cfg": {"width": 64, "heads": 2, "layers": 2}},
        "preprocess_cfg": {"mean": list(mean), "std": list(std)}}))
    assert local_model() == H14  # the smaller one first
    scorer = ClipScorer.load(BIGG)
    assert (tuple(scorer.mean), tuple(scorer.std)) == (mean, std)
    assert scorer.model.config.text_config.hidden_act == "quick_gelu"
    assert_scores_as_open_clip(open_clip, scorer, bigg, mean, std)


def test_openai_vit_l14_comes_first(hub, tmp_path):
    """ViT-L/14 before a bigger or smaller CLIP: OpenAI's in the cache, else the
    interrogator's file, else the first of the table."""
    torch.save({}, str(snapshot(hub, H14) / "open_clip_pytorch_model.bin"))
    assert local_model() == H14
    folder = tmp_path / "interrogator"
    folder.mkdir()
    (folder / "ViT-L-14.pt").write_bytes(b"")
    assert local_model([folder]) == str(folder / "ViT-L-14.pt")
    tiny_clip(snapshot(hub, OPENAI_L14))
    assert local_model([folder]) == OPENAI_L14


def test_a_resnet_clip_is_never_picked_and_named_is_refused(open_clip, hub, tmp_path):
    said = []
    folder = tmp_path / "clip"
    folder.mkdir()
    resnet = tiny_open_clip(open_clip, dict(layers=(1, 1, 1, 1), width=16), dict(width=64, heads=1))
    rn50 = folder / "RN50.pt"
    torch.save(resnet.state_dict(), str(rn50))
    assert local_model([folder]) is None
    assert find_scorer(None, say=said.append, folders=[folder]) is None
    for load in (lambda: ClipScorer.load(str(rn50)), lambda: find_scorer(str(rn50), say=said.append)):
        with pytest.raises(BadInput) as refused:
            load()
        text = str(refused.value)
        assert text.startswith(str(rn50) + ": a ResNet CLIP"), text
        assert "ViT-L-14.pt" in text and "open_clip_pytorch_model.bin" in text
    assert said == []  # nothing to download: a file was named


# -- A1111's Hugging Face cache: CLIP's config and tokenizer, no weights -------------------


def test_a1111s_weightless_cache_is_no_clip_and_naming_it_says_what_is_missing(a1111_machine,
                                                                              capsys):
    """The cache every A1111 has (conftest.a1111_hf_cache): nothing is picked, and the
    repository or its folder named is refused before anything loads, saying which folder
    lacks which files and how to download them (offline here, so the download fails too)."""
    from fake_hub import holds_config_and_tokenizer_only

    snapshot = a1111_machine
    assert holds_config_and_tokenizer_only(snapshot)
    assert local_model() is None and cached_model() is None
    assert find_scorer(None) is None

    with pytest.raises(BadInput) as refused:
        ClipScorer.load(OPENAI_L14)
    assert str(refused.value) == (
        "CLIP model openai/clip-vit-large-patch14: the Hugging Face cache has its config and "
        "no weights (%s); download them with --clip-model openai/clip-vit-large-patch14 "
        "(1.7 GB), or the WebUI's 'Download CLIP'" % snapshot)
    with pytest.raises(BadInput) as refused:
        find_scorer(str(snapshot))
    assert str(refused.value) == (
        "%s: a CLIP config without its weights (none of model.safetensors, pytorch_model.bin, "
        "model.safetensors.index.json, pytorch_model.bin.index.json is there): the Hugging "
        "Face cache's copy of openai/clip-vit-large-patch14, config only (as A1111 caches "
        "ViT-L/14 for its text encoder); download them with --clip-model "
        "openai/clip-vit-large-patch14 (1.7 GB), or the WebUI's 'Download CLIP'" % snapshot)
    with pytest.raises(BadInput) as refused:
        find_scorer(OPENAI_L14)  # named: a download is tried, and cannot be (offline)
    text = str(refused.value)
    assert text.startswith("could not download CLIP model openai/clip-vit-large-patch14's "
                           "weights (the Hugging Face cache has its config only, in %s): "
                           % snapshot), text
    assert text.endswith("check the connection (and that HF_HUB_OFFLINE is not set), or give "
                         "a local CLIPModel folder with its weights")
    assert "downloading CLIP openai/clip-vit-large-patch14 (1.7 GB)" in capsys.readouterr().out


def test_a_folder_with_a_config_and_no_weights_is_refused_and_shards_count_only_complete(
        tmp_path):
    from transformers import CLIPModel

    from bksdm_ext.scores.clip import has_weights

    folder = tiny_clip(tmp_path / "whole")
    sharded = tmp_path / "sharded"
    CLIPModel.from_pretrained(str(folder)).save_pretrained(str(sharded), max_shard_size="200KB")
    shards = sorted(p for p in sharded.iterdir() if "-of-" in p.name)
    assert len(shards) > 1 and has_weights(sharded)
    assert ClipScorer.load(str(sharded)).score(_images(3, n=1, size=32), ["a cat"]).shape == (1,)
    shards[-1].unlink()  # an interrupted copy: the index names a shard that is not there
    assert not has_weights(sharded)
    for name in [p.name for p in folder.iterdir() if p.name != "config.json"]:
        (folder / name).unlink()
    for weightless in (folder, sharded):
        with pytest.raises(BadInput) as refused:
            ClipScorer.load(str(weightless))
        assert str(refused.value).startswith(
            "%s: a CLIP config without its weights (none of model.safetensors, "
            "pytorch_model.bin, model.safetensors.index.json, pytorch_model.bin.index.json is "
            "there); copy the model's weights into it, or pass --clip-model "
            "openai/clip-vit-large-patch14 (a 1.7 GB download)" % weightless)


def test_open_clips_weights_are_used_beside_a_weightless_transformers_config(hub, tmp_path):
    """A laion repository whose transformers config.json is cached without transformers'
    weights, beside open_clip's file: the open_clip file is the CLIP (it was refused)."""
    from transformers import CLIPModel

    from test_scores import _openai_state

    laion = "laion/CLIP-ViT-L-14-laion2B-s32B-b82K"  # the table: gelu, 64-wide heads
    folder = snapshot(hub, laion)
    twin = tiny_clip(tmp_path / "twin", width=64, heads=1)
    torch.save(_openai_state(CLIPModel.from_pretrained(str(twin))),
               str(folder / "open_clip_pytorch_model.bin"))
    (folder / "config.json").write_text((twin / "config.json").read_text())
    assert local_model() == laion
    scorer = find_scorer(None)
    assert scorer.name == laion and scorer.model.config.text_config.hidden_act == "gelu"


def test_an_unreadable_clip_found_on_the_machine_means_no_score_and_named_is_refused(
        a1111_machine, tmp_path):
    """The interrogator's ViT-L/14 cut short by an interrupted download: not asked for, it
    leaves the CLIP score empty and says why; named, it is refused."""
    folder = tmp_path / "interrogator"
    folder.mkdir()
    (folder / "ViT-L-14.pt").write_bytes(b"PK\x03\x04 cut short")
    said = []
    assert local_model([folder]) == str(folder / "ViT-L-14.pt")
    assert find_scorer(None, say=said.append, folders=[folder]) is None
    assert len(said) == 1 and said[0].startswith(
        "no CLIP score: %s: not a CLIP checkpoint" % (folder / "ViT-L-14.pt")), said
    with pytest.raises(BadInput, match="ViT-L-14.pt: not a CLIP checkpoint"):
        find_scorer(str(folder / "ViT-L-14.pt"))


def test_damaged_weights_in_the_cache_mean_no_score_and_named_are_refused(hub, tmp_path):
    """ViT-L/14's model.safetensors in the cache cut short by an interrupted download: not
    asked for, the CLIP score is left empty and the message says which file and what to do;
    named, it is refused with the same words, never a traceback."""
    folder = snapshot(hub, OPENAI_L14)
    (folder / "config.json").write_bytes((tiny_clip(tmp_path / "tiny") / "config.json").read_bytes())
    (folder / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{cut")
    said = []
    assert local_model() == OPENAI_L14
    assert find_scorer(None, say=said.append) is None
    assert len(said) == 1 and said[0].startswith(
        "no CLIP score: %s: CLIP weights that cannot be read (" % folder), said
    assert said[0].endswith("; delete %s and download it again with --clip-model "
                            "openai/clip-vit-large-patch14 (1.7 GB), or the WebUI's "
                            "'Download CLIP'" % folder.parent.parent), said
    with pytest.raises(BadInput, match="CLIP weights that cannot be read"):
        find_scorer(OPENAI_L14)
