"""The CLIP tokenizers built offline give OpenAI's/OpenCLIP's token ids, padding per family."""
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
from transformers import CLIPTokenizer

from bksdm_ext.errors import BadInput
from bksdm_ext.model.tokenizer import BPE_FILE, PACKAGED_BPE, clip_tokenizer

PROMPTS = [
    "a photo of a cat",
    "A Photo, of a CAT!!  ",
    "portrait of an astronaut riding a horse, 4k, highly detailed, trending on artstation",
    "it's a naïve café in 東京 🐱 (masterpiece:1.2), [red|blue] 1999",
    "",
    " ".join(["lots of words"] * 40),  # longer than 77 tokens: truncated, still ends with 49407
]


def open_clip_folder() -> Path:
    """Where open-clip-torch (the reference) is installed, found without importing it
    (its __init__ imports torchvision)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("open-clip-torch is not installed")
    return Path(list(spec.submodule_search_locations)[0])


def open_clip_reference() -> ModuleType:
    """open_clip's own tokenizer module, loaded from its file without importing the package."""
    spec = importlib.util.spec_from_file_location("open_clip_tokenizer_reference",
                                                  str(open_clip_folder() / "tokenizer.py"))
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


def test_shipped_vocabulary_is_open_clips_byte_for_byte():
    assert PACKAGED_BPE.read_bytes() == (open_clip_folder() / BPE_FILE).read_bytes()


def test_exclamation_marks_stay_text_when_sd_v2_pads_with_them():
    """id 0 is "!": padding with it must not turn a prompt's "!!" into two pads."""
    tokenizer = clip_tokenizer("sd-v2")
    padded = tokenizer("a cat!!", padding="max_length", max_length=10).input_ids
    assert padded == [49406, 320, 2368, 748, 49407, 0, 0, 0, 0, 0]


def test_explicit_vocab_file(tmp_path):
    copy = tmp_path / "vocab.txt.gz"
    copy.write_bytes(PACKAGED_BPE.read_bytes())
    assert clip_tokenizer("sd-v1", copy)("a photo of a cat").input_ids == [
        49406, 320, 1125, 539, 320, 2368, 49407]


def test_missing_or_broken_vocab_file_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match="no-such.gz"):
        clip_tokenizer("sd-v1", tmp_path / "no-such.gz")
    broken = tmp_path / "broken.gz"
    broken.write_bytes(b"not gzip")
    with pytest.raises(BadInput, match="broken.gz.*the one this package ships"):
        clip_tokenizer("sd-v1", broken)


def test_unknown_family():
    with pytest.raises(ValueError, match="sd-xl"):
        clip_tokenizer("sd-xl")
