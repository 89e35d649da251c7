"""CLIP tokenizers for SD-v1 and SD-v2 from files A1111 already has, never downloaded.

Both families use OpenAI CLIP's byte-level BPE (49,408 tokens, start 49406, end 49407);
they differ in padding only: SD-v1 (OpenAI CLIP) pads with <|endoftext|>, SD-v2 (OpenCLIP)
with id 0, the token "!".  open-clip-torch, which A1111 installs, ships the BPE merges as
a gz file; transformers' CLIPTokenizer wants vocab.json + merges.txt, so they are derived
from it the way OpenAI's SimpleTokenizer derives its encoder.
"""
import gzip
import importlib.util
import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional

from ..errors import BadInput

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

CONTEXT_LENGTH = 77
PAD_TOKEN = {"sd-v1": "<|endoftext|>", "sd-v2": "!"}
BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
HF_TOKENIZER = "openai/clip-vit-large-patch14"
# SimpleTokenizer keeps this many merges after the header line: 256 byte tokens, their
# 256 end-of-word forms, the merges and 2 special tokens make 49,408.
MERGE_COUNT = 49152 - 256 - 2


def clip_tokenizer(family: str, vocab_file: Optional[Path] = None) -> "CLIPTokenizer":
    """The tokenizer SD `family` ("sd-v1" or "sd-v2") was trained with, 77 tokens long.

    `vocab_file` is a BPE merges file like open_clip's bpe_simple_vocab_16e6.txt.gz; without
    it open-clip-torch's copy is used, then transformers' local Hugging Face cache.
    """
    if family not in PAD_TOKEN:
        raise ValueError("unknown model family %r (expected one of %s)"
                         % (family, ", ".join(sorted(PAD_TOKEN))))
    bpe = Path(vocab_file) if vocab_file is not None else open_clip_bpe()
    if bpe is not None:
        return _from_bpe(bpe, PAD_TOKEN[family])
    return _from_hf_cache(PAD_TOKEN[family])


def open_clip_bpe() -> Optional[Path]:
    """open-clip-torch's BPE file, found without importing open_clip (it imports torchvision)."""
    spec = importlib.util.find_spec("open_clip")
    folders = spec.submodule_search_locations if spec is not None else None
    for folder in folders or []:
        path = Path(folder) / BPE_FILE
        if path.is_file():
            return path
    return None


def bytes_to_unicode() -> Dict[int, str]:
    """OpenAI CLIP's reversible map from bytes to printable characters, in vocabulary order."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, [chr(c) for c in codes]))


def _from_bpe(path: Path, pad_token: str) -> "CLIPTokenizer":
    from transformers import CLIPTokenizer

    if not path.is_file():
        raise BadInput("%s: no such CLIP BPE vocabulary file; give the path of open_clip's %s "
                       "or leave the option out to use the installed one" % (path, BPE_FILE))
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise BadInput("%s: cannot read the CLIP BPE vocabulary (%s); reinstall open-clip-torch "
                       "(`pip install --force-reinstall open-clip-torch`)" % (path, e)) from None
    merges = lines[1:MERGE_COUNT + 1]
    if len(merges) < MERGE_COUNT or any(len(m.split()) != 2 for m in merges):
        raise BadInput("%s: not a complete CLIP BPE vocabulary (expected %d merge lines of two "
                       "symbols); reinstall open-clip-torch" % (path, MERGE_COUNT))
    chars = list(bytes_to_unicode().values())
    vocab: List[str] = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    # CLIPTokenizer reads both files while it is constructed, so a temporary folder will do.
    with tempfile.TemporaryDirectory(prefix="bksdm-clip-") as tmp:
        vocab_path, merges_path = Path(tmp) / "vocab.json", Path(tmp) / "merges.txt"
        vocab_path.write_text(json.dumps({token: i for i, token in enumerate(vocab)}),
                              encoding="utf-8")
        merges_path.write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
        return CLIPTokenizer(str(vocab_path), str(merges_path), pad_token=pad_token,
                             model_max_length=CONTEXT_LENGTH)


def _from_hf_cache(pad_token: str) -> "CLIPTokenizer":
    from transformers import CLIPTokenizer

    try:
        return CLIPTokenizer.from_pretrained(HF_TOKENIZER, local_files_only=True,
                                             pad_token=pad_token, model_max_length=CONTEXT_LENGTH)
    except OSError:
        raise BadInput(
            "no CLIP tokenizer vocabulary on this machine: open-clip-torch (its %s) is not "
            "installed and the Hugging Face cache has no %s tokenizer; install open-clip-torch "
            "(`pip install open-clip-torch`, A1111 installs it) or give the path of a %s file"
            % (BPE_FILE, HF_TOKENIZER, BPE_FILE)
        ) from None
