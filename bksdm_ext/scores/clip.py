"""CLIP score, the paper's text-image metric: 100 × the cosine of CLIP's image and text
embeddings, floored at 0, as torchmetrics' ``CLIPScore`` defines it.

The CLIP model is a transformers ``CLIPModel`` folder or Hugging Face repository, or a CLIP
checkpoint in OpenAI's layout (openai_clip.py): an OpenAI ``.pt`` file (A1111's
interrogator keeps ViT-L/14 as one) or open_clip's weights of a laion repository in the
Hugging Face cache (open_clip_cache.py).  One is used only when it is already on the
machine (a folder or file given, a repository in the Hugging Face cache, the
interrogator's file) unless the user asks for a download by naming it (`--clip-model`,
the Compare tab's button); nothing is downloaded behind their back.

A repository counts as cached only with its weights: every A1111 machine has
openai/clip-vit-large-patch14's config.json and tokenizer in its cache and no weights (A1111
builds SD-v1's text encoder from that config alone, docs/facts.md §12).  A CLIP found on the
machine is optional: when none is usable the CLIP score is left empty.  Only a CLIP the user
named can fail a run, when it is looked up, before the run's work.
"""
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..errors import BadInput
from .open_clip_cache import cached_repo, cached_weights, settings_for
from .openai_clip import OPENAI, interrogator_file, read_state, to_clip_model

# Repositories looked for in the Hugging Face cache (transformers' files or open_clip's),
# with their download size (float32 weights, the same for both).  Order: ViT-L/14 first,
# torchmetrics' default and the CLIP most published scores use; then the others by size,
# smallest (quickest to score with) first.  CLIPs score differently, so the one used is
# always named.
KNOWN_MODELS = {
    "openai/clip-vit-large-patch14": "1.7 GB",  # the same weights as A1111's interrogator's
    "laion/CLIP-ViT-L-14-laion2B-s32B-b82K": "1.7 GB",
    "openai/clip-vit-base-patch16": "0.6 GB",
    "openai/clip-vit-base-patch32": "0.6 GB",
    "laion/CLIP-ViT-H-14-laion2B-s32B-b79K": "3.9 GB",  # open_clip's, for SD-v2's text encoder
    "laion/CLIP-ViT-g-14-laion2B-s12B-b42K": "5.5 GB",
    "laion/CLIP-ViT-g-14-laion2B-s34B-b88K": "5.5 GB",  # the BK-SDM paper's CLIP score
    "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k": "10.2 GB",  # open_clip's, for SDXL's
}
DEFAULT_DOWNLOAD = "openai/clip-vit-large-patch14"
HOW_TO_GET = ("pass --clip-model %s (a %s download), a local CLIPModel folder, an OpenAI "
              "CLIP .pt file or an open_clip open_clip_pytorch_model.bin; in the WebUI press "
              "'Download CLIP'" % (DEFAULT_DOWNLOAD, KNOWN_MODELS[DEFAULT_DOWNLOAD]))
HOW_TO_ENABLE = "no CLIP model on this machine: " + HOW_TO_GET
# transformers' weight files that CLIPModel.from_pretrained loads into PyTorch: one file, or
# an index naming its shards.  TensorFlow's and Flax's are not counted: loading them needs
# those frameworks (and from_tf / from_flax), and transformers 5 no longer reads them.
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
SHARD_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def clip_score_of_embeddings(image_embeds: torch.Tensor, text_embeds: torch.Tensor
                             ) -> torch.Tensor:
    """max(100 · cos(image, text), 0) for each row."""
    cosine = F.cosine_similarity(image_embeds.float(), text_embeds.float(), dim=-1)
    return (100 * cosine).clamp(min=0)


def cached_model() -> Optional[str]:
    """The first known CLIP repository already in the Hugging Face cache, if any."""
    return next((repo for repo in KNOWN_MODELS if _in_cache(repo)), None)


def local_model(folders: Sequence[Path] = ()) -> Optional[str]:
    """A CLIP already on the machine, ViT-L/14 first: OpenAI's in the Hugging Face cache,
    else the file of A1111's interrogator (in `folders` or the `clip` package's cache),
    else the first of KNOWN_MODELS in the cache."""
    if _in_cache(DEFAULT_DOWNLOAD):
        return DEFAULT_DOWNLOAD
    found = interrogator_file(folders)
    return str(found) if found is not None else cached_model()


def has_weights(folder: Path) -> bool:
    """Whether a CLIPModel folder holds its weights (a file, or an index and all its
    shards), not only config.json."""
    if any((folder / name).is_file() for name in WEIGHT_FILES):
        return True
    for name in SHARD_INDEXES:
        shards = _shards(folder / name)
        if shards and all((folder / shard).is_file() for shard in shards):
            return True
    return False


def _shards(index: Path) -> List[str]:
    """The shard files a sharded checkpoint's index names ([] without a readable index)."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
    except (OSError, ValueError, AttributeError):
        return []
    return sorted(set(weight_map.values())) if isinstance(weight_map, dict) else []


def _cached_snapshot(repo: str) -> Optional[Path]:
    """The cached snapshot folder of `repo` with transformers' config.json, weights or not
    (read straight from the cache huggingface_hub keeps, whichever transformers version is
    installed), or None."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, "config.json")
    return Path(found).parent if isinstance(found, str) else None


def _cached_model(repo: str) -> Optional[Path]:
    """`repo`'s cached snapshot folder when its weights are there too, else None."""
    snapshot = _cached_snapshot(repo)
    return snapshot if snapshot is not None and has_weights(snapshot) else None


def _in_cache(repo: str) -> bool:
    """Whether `repo`'s weights are in the Hugging Face cache, as transformers' or
    open_clip's files (its config alone, as A1111 leaves ViT-L/14, is no CLIP)."""
    return _cached_model(repo) is not None or cached_weights(repo) is not None


def _snapshot_files(repo: str) -> Dict[str, Tuple[str, int]]:
    """Each file of `repo`'s cached snapshot: (the blob it is, its size in bytes)."""
    snapshot = _cached_snapshot(repo)
    files = [p for p in snapshot.iterdir() if p.is_file()] if snapshot is not None else []
    return {p.name: (os.path.realpath(str(p)), p.stat().st_size) for p in files}


def fetch(name: str) -> List[Tuple[str, int]]:
    """Download what the Hugging Face cache lacks of CLIP repository `name` (all of it, or
    the weights beside the config A1111 cached) and load it once, so that a download that
    cannot be used says so now; returns each file fetched with its size in bytes ([] when
    nothing was missing)."""
    before = _snapshot_files(name)
    ClipScorer.load(name, download=True)
    return [(file, size) for file, (blob, size) in sorted(_snapshot_files(name).items())
            if before.get(file, ("", 0))[0] != blob]


def _weights_missing(folder: Path) -> str:
    """What a CLIP folder with config.json and no weights lacks, and how to get it."""
    missing = "%s: a CLIP config without its weights (none of %s is there)" % (
        folder, ", ".join(WEIGHT_FILES + SHARD_INDEXES))
    repo = cached_repo(folder)
    if repo is None:
        return missing + "; copy the model's weights into it, or " + HOW_TO_GET
    return missing + ": the Hugging Face cache's copy of %s, config only (as A1111 caches " \
                     "ViT-L/14 for its text encoder); %s" % (repo, _get_weights(repo))


def _unreadable_weights(folder: Path, error: Exception) -> str:
    """What to do about a CLIP folder whose weight files do not load (an interrupted
    download, a damaged disk)."""
    reason = "%s: CLIP weights that cannot be read (%s: %s)" % (
        folder, type(error).__name__, (str(error).splitlines() or [""])[0])
    repo = cached_repo(folder)
    if repo is None:
        return reason + "; replace them with the model's complete weight files"
    return reason + "; delete %s and %s" % (
        folder.parent.parent, _get_weights(repo).replace("download them", "download it again"))


def _get_weights(repo: str) -> str:
    """How to download `repo`'s weights into the Hugging Face cache."""
    size = KNOWN_MODELS.get(repo)
    return "download them with --clip-model %s%s%s" % (
        repo, " (%s)" % size if size else "",
        ", or the WebUI's 'Download CLIP'" if repo == DEFAULT_DOWNLOAD else "")


def _is_path(name: str) -> bool:
    """Whether `name` means a file or folder rather than a repository id."""
    path = Path(name)
    return path.exists() or bool(path.suffix or path.is_absolute() or name.startswith("."))


def download_note(name: str) -> str:
    size = KNOWN_MODELS.get(name)
    return "downloading CLIP %s%s" % (name, " (%s)" % size if size else "")


def find_scorer(name: Optional[str], device: Optional[torch.device] = None,
                say: Callable[[str], None] = print,
                folders: Sequence[Path] = ()) -> Optional["ClipScorer"]:
    """The CLIP model the user named (downloaded if it must be: they asked for it; one that
    cannot be had is a BadInput), else one already on the machine (see `local_model`),
    else None (no CLIP score)."""
    if name is None:
        name = local_model(folders)
        if name is None:
            return None
        try:
            return ClipScorer.load(name, device=device)
        except BadInput as e:  # not asked for: a CLIP that cannot be read means no score
            say("no CLIP score: %s" % e)
            return None
    if not _is_path(name) and not _in_cache(name):
        say(download_note(name))
    return ClipScorer.load(name, download=True, device=device)


@dataclass
class ClipScorer:
    """A loaded CLIP model that scores images against their prompts."""

    name: str
    model: Any  # transformers.CLIPModel
    tokenizer: Any
    image_size: int
    mean: Sequence[float] = OPENAI.mean
    std: Sequence[float] = OPENAI.std

    @classmethod
    def load(cls, name: str, download: bool = False,
             device: Optional[torch.device] = None) -> "ClipScorer":
        """`name`: a CLIPModel folder, a CLIP file in OpenAI's layout, or a Hugging Face
        repository id (its cached transformers files, else its cached open_clip file).  A
        repository not yet in the cache is fetched only with `download` (transformers'
        files); otherwise the message says how."""
        from transformers import CLIPModel

        folder = Path(name)
        if folder.is_file():  # e.g. A1111's interrogator's ViT-L/14
            return cls._from_checkpoint(name, folder, device)
        a_path = _is_path(name)
        weightless = None  # a repository's cached snapshot holding its config only
        if not a_path:  # a repository id: its cached copy, if any
            snapshot = _cached_snapshot(name)
            if snapshot is not None and has_weights(snapshot):
                folder = snapshot
            else:
                weights = cached_weights(name)
                if weights is not None:  # open_clip's files
                    return cls._from_checkpoint(name, weights, device)
                weightless = snapshot
        local = folder.is_dir()
        if not local and a_path:
            raise BadInput("%s: no such CLIP model (expected a transformers CLIPModel folder "
                           "with config.json and weights, or an OpenAI CLIP .pt file)" % name)
        if local and (folder / "config.json").is_file() and not has_weights(folder):
            raise BadInput(_weights_missing(folder))
        if weightless is not None and not download:
            raise BadInput("CLIP model %s: the Hugging Face cache has its config and no "
                           "weights (%s); %s" % (name, weightless, _get_weights(name)))
        try:
            model = CLIPModel.from_pretrained(str(folder) if local else name,
                                              local_files_only=local or not download)
        except OSError as e:
            if local:
                raise BadInput("%s: not a transformers CLIPModel folder (%s)"
                               % (folder, str(e).splitlines()[0])) from None
            if not download:
                raise BadInput("CLIP model %s is not in the Hugging Face cache; ask for it to "
                               "be downloaded (--clip-model %s, or the WebUI's 'Download "
                               "CLIP')" % (name, name)) from None
            what = name if weightless is None else (
                "%s's weights (the Hugging Face cache has its config only, in %s)"
                % (name, weightless))
            raise BadInput("could not download CLIP model %s: %s; check the connection (and "
                           "that HF_HUB_OFFLINE is not set), or give a local CLIPModel folder "
                           "with its weights" % (what, str(e).splitlines()[0])) from None
        except Exception as e:  # e.g. SafetensorError, UnpicklingError: weights cut short
            if not local:
                raise
            raise BadInput(_unreadable_weights(folder, e)) from None
        processor = _preprocessor_config(folder) if local else {}
        return cls._ready(name, model, device, tuple(processor.get("image_mean", OPENAI.mean)),
                          tuple(processor.get("image_std", OPENAI.std)))

    @classmethod
    def _from_checkpoint(cls, name: str, path: Path, device: Optional[torch.device]
                         ) -> "ClipScorer":
        """A CLIP file in OpenAI's layout (OpenAI's or open_clip's), converted."""
        settings = settings_for(path)
        model = to_clip_model(read_state(path), str(path), settings)
        return cls._ready(name, model, device, settings.mean, settings.std)

    @classmethod
    def _ready(cls, name: str, model: Any, device: Optional[torch.device],
               mean: Sequence[float], std: Sequence[float]) -> "ClipScorer":
        model = model.eval().requires_grad_(False)
        if device is not None:
            model = model.to(device)
        return cls(name=name, model=model, tokenizer=_tokenizer(),
                   image_size=int(model.config.vision_config.image_size), mean=mean, std=std)

    def pixels(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP's preprocessing: shorter edge to the model's size (bicubic), centre crop,
        normalise."""
        height, width = images.shape[-2:]
        scale = self.image_size / min(height, width)
        size = (max(self.image_size, round(height * scale)), max(self.image_size, round(width * scale)))
        if size != (height, width):
            images = F.interpolate(images.float(), size=size, mode="bicubic", antialias=True,
                                   align_corners=False).clamp(0, 1)
        top, left = (size[0] - self.image_size) // 2, (size[1] - self.image_size) // 2
        images = images[..., top:top + self.image_size, left:left + self.image_size]
        mean = torch.tensor(self.mean, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, 3, 1, 1)
        return (images.float() - mean) / std

    @torch.no_grad()
    def score(self, images: torch.Tensor, prompts: List[str]) -> torch.Tensor:
        """The CLIP score of each image [N, 3, H, W] in [0, 1] with its prompt (shape [N])."""
        if images.dim() != 4 or images.shape[0] != len(prompts):
            raise BadInput("CLIP score needs one prompt per image; got %d images and %d prompts"
                           % (images.shape[0] if images.dim() else 0, len(prompts)))
        device = next(self.model.parameters()).device
        dtype = next(self.model.parameters()).dtype
        tokens = self.tokenizer(prompts, padding="max_length", truncation=True,
                                max_length=self.model.config.text_config.max_position_embeddings,
                                return_tensors="pt")
        text = _projected(self.model.get_text_features(input_ids=tokens.input_ids.to(device)))
        image = _projected(self.model.get_image_features(
            pixel_values=self.pixels(images.to(device)).to(dtype)))
        return clip_score_of_embeddings(image, text).cpu()


def _projected(features: Any) -> torch.Tensor:
    """The projected embeddings from ``get_*_features``: a tensor up to transformers 4,
    a model output holding them as ``pooler_output`` from transformers 5 on."""
    return features if isinstance(features, torch.Tensor) else features.pooler_output


def _tokenizer() -> Any:
    """OpenAI CLIP's tokenizer, built offline (every CLIP model above uses its BPE)."""
    from ..model.tokenizer import clip_tokenizer

    return clip_tokenizer("sd-v1")


def _preprocessor_config(folder: Path) -> dict:
    """Mean and std from the model's preprocessor_config.json when it has one."""
    path = folder / "preprocessor_config.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
