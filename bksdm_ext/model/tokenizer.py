"""CLIP tokenizers for SD-v1 and SD-v2 from the vocabulary this package ships, never downloaded.

Both families use OpenAI CLIP's byte-level BPE (49,408 tokens, start 49406, end 49407);
they differ in padding only: SD-v1 (OpenAI CLIP) pads with <|endoftext|>, SD-v2 (OpenCLIP)
with id 0, the token "!".  OpenAI's MIT-licensed merges file ships in `vocab/` (so a bare
`pip install` or a WebUI folder has it without open-clip-torch or a Hugging Face cache);
transformers' CLIPTokenizer wants vocab.json + merges.txt, so they are derived from it
the way OpenAI's SimpleTokenizer derives its encoder.
"""
import gzip
import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from ..errors import BadInput

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

CONTEXT_LENGTH = 77
FAMILIES = ("sd-v1", "sd-v2")
BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
PACKAGED_BPE = Path(__file__).resolve().parent / "vocab" / BPE_FILE
END_TOKEN = "<|endoftext|>"
# SimpleTokenizer keeps this many merges after the header line: 256 byte tokens, their
# 256 end-of-word forms, the merges and 2 special tokens make 49,408.
MERGE_COUNT = 49152 - 256 - 2


def clip_tokenizer(family: str, vocab_file: Optional[Path] = None) -> "CLIPTokenizer":
    """The tokenizer SD `family` ("sd-v1" or "sd-v2") was trained with, 77 tokens long.

    `vocab_file` is a BPE merges file like OpenAI's bpe_simple_vocab_16e6.txt.gz; without
    it the copy shipped in this package is used.
    """
    if family not in FAMILIES:
        raise ValueError("unknown model family %r (expected one of %s)"
                         % (family, ", ".join(FAMILIES)))
    path = Path(vocab_file) if vocab_file is not None else PACKAGED_BPE
    return _from_bpe(path, _tokenizer_class(family))


def _tokenizer_class(family: str) -> Any:
    """CLIPTokenizer for SD-v1; for SD-v2 one whose padding id is 0.

    The pad token cannot simply be "!": transformers 5 splits every special token out of
    the text before BPE, so "!!" in a prompt would become two pads instead of token 748.
    Overriding only the id keeps "!" an ordinary token on transformers 4 and 5 alike.
    """
    from transformers import CLIPTokenizer

    if family == "sd-v1":
        return CLIPTokenizer

    class OpenCLIPTokenizer(CLIPTokenizer):
        @property
        def pad_token_id(self) -> int:
            return 0

    return OpenCLIPTokenizer


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


def _from_bpe(path: Path, tokenizer_class: Any) -> "CLIPTokenizer":
    remedy = ("give a complete copy of OpenAI CLIP's %s, or leave the option out to use the one "
              "this package ships (reinstall it if that one is damaged)" % BPE_FILE)
    if not path.is_file():
        raise BadInput("%s: no such CLIP BPE vocabulary file; %s" % (path, remedy))
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise BadInput("%s: cannot read the CLIP BPE vocabulary (%s); %s" % (path, e, remedy)) from None
    merges = lines[1:MERGE_COUNT + 1]
    if len(merges) < MERGE_COUNT or any(len(m.split()) != 2 for m in merges):
        raise BadInput("%s: not a complete CLIP BPE vocabulary (expected %d merge lines of two "
                       "symbols); %s" % (path, MERGE_COUNT, remedy))
    chars = list(bytes_to_unicode().values())
    vocab: List[str] = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", END_TOKEN]
    # CLIPTokenizer reads both files while it is constructed, so a temporary folder will do.
    with tempfile.TemporaryDirectory(prefix="bksdm-clip-") as tmp:
        vocab_path, merges_path = Path(tmp) / "vocab.json", Path(tmp) / "merges.txt"
        vocab_path.write_text(json.dumps({token: i for i, token in enumerate(vocab)}),
                              encoding="utf-8")
        merges_path.write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
        return tokenizer_class(str(vocab_path), str(merges_path), pad_token=END_TOKEN,
                               model_max_length=CONTEXT_LENGTH)
