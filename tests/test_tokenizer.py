"""The CLIP tokenizers built offline give OpenAI's/OpenCLIP's token ids, padding per family."""
import importlib.util
from types import ModuleType

import pytest
from transformers import CLIPTokenizer

from bksdm_ext.errors import BadInput
from bksdm_ext.model.tokenizer import HF_TOKENIZER, clip_tokenizer, open_clip_bpe

PROMPTS = [
    "a photo of a cat",
    "A Photo, of a CAT!!  ",
    "portrait of an astronaut riding a horse, 4k, highly detailed, trending on artstation",
    "it's a naïve café in 東京 🐱 (masterpiece:1.2), [red|blue] 1999",
    "",
    " ".join(["lots of words"] * 40),  # longer than 77 tokens: truncated, still ends with 49407
]


def open_clip_reference() -> ModuleType:
    """open_clip's own tokenizer module, loaded from its file without importing the package
    (whose __init__ imports torchvision)."""
    bpe = open_clip_bpe()
    if bpe is None:
        pytest.skip("open-clip-torch is not installed")
    spec = importlib.util.spec_from_file_location("open_clip_tokenizer_reference",
                                                  str(bpe.parent / "tokenizer.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ids(tokenizer: CLIPTokenizer):
    return tokenizer(PROMPTS, padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True).input_ids


def test_sd_v2_matches_open_clip_tokenize():
    reference = open_clip_reference().tokenize(PROMPTS).tolist()
    tokenizer = clip_tokenizer("sd-v2")
    assert tokenizer.model_max_length == 77
    assert ids(tokenizer) == reference
    assert reference[0][:8] == [49406, 320, 1125, 539, 320, 2368, 49407, 0]


def test_sd_v1_matches_openai_ids_padded_with_end_token():
    reference = open_clip_reference().tokenize(PROMPTS).tolist()
    for row in reference:  # OpenAI CLIP / transformers pad with <|endoftext|>, not 0
        end = row.index(49407)
        row[end + 1:] = [49407] * (len(row) - end - 1)
    tokenizer = clip_tokenizer("sd-v1")
    assert ids(tokenizer) == reference
    assert reference[0][:8] == [49406, 320, 1125, 539, 320, 2368, 49407, 49407]
    assert reference[-1][-1] == 49407 and len(reference[-1]) == 77


def test_explicit_vocab_file(tmp_path):
    bpe = open_clip_bpe()
    if bpe is None:
        pytest.skip("open-clip-torch is not installed")
    copy = tmp_path / "vocab.txt.gz"
    copy.write_bytes(bpe.read_bytes())
    assert clip_tokenizer("sd-v1", copy)("a photo of a cat").input_ids == [
        49406, 320, 1125, 539, 320, 2368, 49407]


def test_missing_or_broken_vocab_file_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match="no-such.gz"):
        clip_tokenizer("sd-v1", tmp_path / "no-such.gz")
    broken = tmp_path / "broken.gz"
    broken.write_bytes(b"not gzip")
    with pytest.raises(BadInput, match="broken.gz.*reinstall open-clip-torch"):
        clip_tokenizer("sd-v1", broken)


def test_unknown_family():
    with pytest.raises(ValueError, match="sd-xl"):
        clip_tokenizer("sd-xl")


def test_falls_back_to_local_hugging_face_cache(tmp_path, monkeypatch):
    if open_clip_bpe() is None:
        pytest.skip("open-clip-torch is not installed")
    saved = tmp_path / "hf"
    clip_tokenizer("sd-v1").save_pretrained(str(saved))
    original = CLIPTokenizer.from_pretrained
    calls = []

    def from_cache(name, **kwargs):
        calls.append((name, kwargs["local_files_only"]))
        return original(str(saved), **kwargs)

    monkeypatch.setattr("bksdm_ext.model.tokenizer.open_clip_bpe", lambda: None)
    monkeypatch.setattr(CLIPTokenizer, "from_pretrained", staticmethod(from_cache))
    tokenizer = clip_tokenizer("sd-v2")
    assert calls == [(HF_TOKENIZER, True)]
    assert tokenizer("a cat", padding="max_length", max_length=77).input_ids[:5] == [
        49406, 320, 2368, 49407, 0]


def test_no_vocabulary_anywhere_says_how_to_get_one(monkeypatch):
    def not_cached(name, **kwargs):
        raise OSError("not in the cache")

    monkeypatch.setattr("bksdm_ext.model.tokenizer.open_clip_bpe", lambda: None)
    monkeypatch.setattr(CLIPTokenizer, "from_pretrained", staticmethod(not_cached))
    with pytest.raises(BadInput, match="pip install open-clip-torch"):
        clip_tokenizer("sd-v1")
