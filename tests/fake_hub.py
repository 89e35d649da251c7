"""A local file server that answers as the Hugging Face hub does, for tests of the
"download on request" paths: point HF_ENDPOINT at it and nothing reaches the network.

It also fills a Hugging Face cache the way a real AUTOMATIC1111 leaves it: A1111 builds
SD-v1's text encoder with ``CLIPTextModel.from_pretrained(None, config=
"openai/clip-vit-large-patch14", state_dict={})`` and its tokenizer with
``CLIPTokenizer.from_pretrained`` (modules/sd_disable_initialization.py), so every A1111
machine has that repository's config.json and tokenizer files cached, and no weights."""
import hashlib
import http.server
import os
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

CLIP_L14 = "openai/clip-vit-large-patch14"  # SD-v1's text encoder, A1111's CLIP
# A commit id: huggingface_hub names the snapshot folder after the one the hub answers with.
COMMIT = "32bd64288804d66eefd0ccbe215aa642df71cc41"
# What A1111's loading asks transformers for: CLIPTextModel.from_pretrained(None, config=repo)
# reads only the config (CLIPTextConfig.from_pretrained), then the tokenizer's files.
# What a tokenizer's from_pretrained may fetch (transformers 4 reads vocab.json and merges.txt,
# transformers 5 tokenizer.json).
TOKENIZER_FILES = {"vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json"}
A1111_FETCH = ("import sys\n"
               "from transformers import CLIPTextConfig, CLIPTokenizer\n"
               "CLIPTextConfig.from_pretrained(sys.argv[1])\n"
               "CLIPTokenizer.from_pretrained(sys.argv[1])\n")


@contextmanager
def serving(repo: str, folder: Path, commit: str = COMMIT
            ) -> Iterator[Tuple[str, List[Tuple[str, str]]]]:
    """Serve the files of `folder` as `repo`'s main revision (`commit`); yields (the
    endpoint, the (method, file) requests answered so far)."""
    files: Dict[str, bytes] = {p.name: p.read_bytes() for p in folder.iterdir()}
    prefix, fetched = "/%s/resolve/main/" % repo, []

    class Hub(http.server.BaseHTTPRequestHandler):
        def answer(self, body: bool) -> None:
            name = self.path[len(prefix):] if self.path.startswith(prefix) else None
            if name not in files:
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            fetched.append((self.command, name))
            self.send_response(200)
            self.send_header("X-Repo-Commit", commit)
            self.send_header("ETag", '"%s"' % hashlib.sha256(files[name]).hexdigest())
            self.send_header("Content-Length", str(len(files[name])))
            self.end_headers()
            if body:
                self.wfile.write(files[name])

        def do_HEAD(self) -> None:
            self.answer(False)

        def do_GET(self) -> None:
            self.answer(True)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield "http://127.0.0.1:%d" % server.server_port, fetched
    finally:
        server.shutdown()


def hub_env(endpoint: str, hf_home: Path, pythonpath: str) -> Dict[str, str]:
    """The environment of a fresh process that downloads from `endpoint` into the Hugging
    Face home `hf_home` (huggingface_hub reads both when it is imported)."""
    env = dict(os.environ, HF_ENDPOINT=endpoint, HF_HOME=str(hf_home), PYTHONPATH=pythonpath,
               HF_HUB_DISABLE_TELEMETRY="1")
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE",
                 "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE"):
        env.pop(name, None)
    return env


def clip_l14_files(folder: Path) -> Path:
    """openai/clip-vit-large-patch14's config.json and tokenizer files, made offline: the
    repository's sizes (ViT-L/14 vision, 768-wide text) and OpenAI's BPE shipped in
    bksdm_ext; no weights (A1111 never fetches them)."""
    from transformers import CLIPConfig

    from bksdm_ext.model.tokenizer import clip_tokenizer

    CLIPConfig(text_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                num_attention_heads=12, projection_dim=768),
               vision_config=dict(hidden_size=1024, intermediate_size=4096,
                                  num_hidden_layers=24, num_attention_heads=16, patch_size=14,
                                  image_size=224, projection_dim=768),
               projection_dim=768).save_pretrained(str(folder))
    clip_tokenizer("sd-v1").save_pretrained(str(folder))
    return folder


def holds_config_and_tokenizer_only(snapshot: Path) -> bool:
    """Whether a cached snapshot holds what A1111 leaves: config.json and tokenizer files."""
    names = {p.name for p in snapshot.iterdir()}
    return "config.json" in names and len(names) > 1 and names - {"config.json"} <= TOKENIZER_FILES


def cache_like_a1111(hf_home: Path, served: Path, repo: str = CLIP_L14) -> Path:
    """Fill `hf_home`'s cache with what A1111's model loading fetches of `repo` (its
    config and tokenizer, never its weights) from a fake hub serving `served`, through
    transformers itself in a fresh process; returns the snapshot folder."""
    root = Path(__file__).resolve().parent.parent
    with serving(repo, served) as (url, _):
        done = subprocess.run([sys.executable, "-c", A1111_FETCH, repo], cwd=str(root),
                              env=hub_env(url, hf_home, str(root)), capture_output=True,
                              text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError("filling the Hugging Face cache failed:\n" + done.stderr[-3000:])
    return (hf_home / "hub" / ("models--" + repo.replace("/", "--")) / "snapshots" / COMMIT)
