"""Encode each training image and caption once, and read them back every step.

Distillation shows every image many times; running the VAE and the text encoder on it
each step is the largest avoidable cost.  The cache keeps, per example, the VAE latent
distribution's mean and std (the trainer samples ``(mean + std * noise) * scaling_factor``
each step, so sampling stays random), the same for the mirrored image when flips are on,
and the caption's text embedding, the [77, D] encoder output the U-Net conditions on.

Layout of the cache folder:

- ``index.json``: format, fingerprint, shard size, example count, finished shards;
- ``shard-00000.safetensors``…: examples [k * shard_size, (k + 1) * shard_size) as
  ``mean``, ``std`` (and ``mean_flipped``, ``std_flipped``) [n, C, h, w] and ``embedding``
  [n, 77, D], their captions in the file's metadata;
- ``added/00000000.safetensors``…: examples from `LatentCache.add` / `add_batch` (for
  instance teacher-made ones), each file named by the index of its first example among
  the added ones, so one file per batch keeps 100k examples to 25k files.

Everything is stored float16: it halves disk and page cache, and its ~1e-3 relative error
is far below the noise training adds.  `item` hands back float32.  Files are written under
a temporary name and renamed, so an interrupted build leaves only whole shards, which the
next build reuses.
"""
import bisect
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from .dataset import DatasetScan, Example, load_image
from ..errors import DiskError
from ..model.safetensors_io import SafetensorsReader, TensorOut, tensor_bytes, write_safetensors

FORMAT = "1"  # changes when what the shards hold changes, so old caches are rebuilt
SHARD_SIZE = 1024
ImageEncoder = Callable[[torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]
CaptionEncoder = Callable[[List[str]], torch.Tensor]


def dataset_fingerprint(scan: DatasetScan) -> str:
    """A digest of each example's image path (relative to the folder), size, modification
    time and caption: editing, replacing, adding or recaptioning anything changes it."""
    digest = hashlib.sha256()
    for example in scan.examples:
        stat = example.image.stat()
        name = Path(os.path.relpath(example.image, scan.folder)).as_posix()
        record = [name, stat.st_size, stat.st_mtime_ns, example.caption]
        digest.update(json.dumps(record).encode("utf-8") + b"\n")
    return digest.hexdigest()


def teacher_identity(path: Path) -> str:
    """Name, size and modification time of a checkpoint: cheap to take on a multi-GB file,
    and changed by any edit or replacement of it."""
    stat = Path(path).stat()
    return "%s:%d:%d" % (Path(path).name, stat.st_size, int(stat.st_mtime))


def cache_fingerprint(scan: DatasetScan, resolution: int, flip: bool,
                      **encoders: str) -> Dict[str, str]:
    """What a cache of `scan` depends on; `encoders` name the VAE and text encoder (for
    instance their weights' hashes), since a different encoder gives different latents."""
    fingerprint = {"dataset": dataset_fingerprint(scan), "resolution": str(resolution),
                   "flip": str(bool(flip))}
    fingerprint.update(encoders)
    return fingerprint


class LatentCache:
    """Encoded examples in `root`, valid for `fingerprint` (from `cache_fingerprint`).

    A cache whose stored fingerprint differs is never read: `build` and `add` delete it
    first.  Indexes run over the dataset's examples, in scan order, then the added ones.
    """

    def __init__(self, root: Path, fingerprint: Dict[str, str],
                 shard_size: int = SHARD_SIZE) -> None:
        self.root = Path(root)
        self.fingerprint = dict(fingerprint)
        self.shard_size = shard_size
        self.stats: Dict[str, int] = {"encoded": 0, "reused": 0}
        self._readers: Dict[Path, SafetensorsReader] = {}
        self._index = self._load_index()
        self._find_added()
        # Dataset examples readable now: all of them once a build has finished.
        self._count = self._index["count"] if self.is_complete() else 0

    def is_complete(self) -> bool:
        """Whether every dataset example is encoded for this fingerprint."""
        return (self._index is not None and self._index["complete"]
                and all((self.root / name).is_file() for name in self._index["shards"]))

    def build(self, scan: DatasetScan, encode_images: ImageEncoder,
              encode_captions: CaptionEncoder, resolution: int, flip: bool,
              batch_size: int = 8, progress: Optional[Callable[[int, int], None]] = None) -> None:
        """Encode what is not cached yet, reusing finished shards.

        `encode_images` gets float32 CPU images [B, 3, H, W] in [-1, 1] (B up to
        `batch_size`, twice that with flips: originals then mirrors) and returns the latent
        distribution's (mean, std), each [B, C, h, w]; `encode_captions` gets captions and
        returns embeddings [B, 77, D].  Both run under torch.no_grad.  `progress(done, total)`
        follows examples.
        """
        expected = cache_fingerprint(scan, resolution, flip)
        if {key: self.fingerprint.get(key) for key in expected} != expected:
            raise ValueError("the cache fingerprint does not describe this dataset, resolution "
                             "and flip setting; make it with cache_fingerprint()")
        if self._index is None:
            self._reset()
        index = self._index
        total = len(scan.examples)
        index.update(count=total, complete=False)
        self._count = 0
        self.stats = {"encoded": 0, "reused": 0}
        for number, first in enumerate(range(0, total, self.shard_size)):
            examples = scan.examples[first:first + self.shard_size]
            path = self._shard(number)
            if path.name in index["shards"] and path.is_file():
                self.stats["reused"] += len(examples)
                if progress is not None:
                    progress(first + len(examples), total)
                continue
            parts = []
            for start in range(0, len(examples), batch_size):
                batch = examples[start:start + batch_size]
                parts.append(_encode(batch, encode_images, encode_captions, resolution, flip))
                if progress is not None:
                    progress(first + start + len(batch), total)
            self._save(path, {key: torch.cat([part[key] for part in parts]) for key in parts[0]},
                       [example.caption for example in examples])
            if path.name not in index["shards"]:
                index["shards"].append(path.name)
            self._write_index()
            self.stats["encoded"] += len(examples)
        index["complete"] = True
        self._write_index()
        self._count = total

    def __len__(self) -> int:
        return self._count + self._added_total

    def item(self, index: int, flipped: bool = False) -> Dict[str, torch.Tensor]:
        """{"mean", "std": [C, h, w], "embedding": [77, D]}, float32.  `flipped` picks the
        mirrored image's latents; added examples have none and give their only ones."""
        reader, row = self._locate(index)
        keys = ["mean", "std"]
        if flipped and index < self._count:
            if "mean_flipped" not in reader.entries:
                raise ValueError("the cache was built without flips; build it with flip=True")
            keys = ["mean_flipped", "std_flipped"]
        return {"mean": reader.tensor(keys[0])[row].float(),
                "std": reader.tensor(keys[1])[row].float(),
                "embedding": reader.tensor("embedding")[row].float()}

    def caption(self, index: int) -> str:
        reader, row = self._locate(index)
        return json.loads(reader.metadata["captions"])[row]

    def add(self, mean: torch.Tensor, std: torch.Tensor, embedding: torch.Tensor,
            caption: str) -> None:
        """Append one example (e.g. a teacher-generated latent, std zero), on disk at once.
        Shapes as `item` returns them."""
        self.add_batch(mean[None], std[None], embedding[None], [caption])

    def add_batch(self, mean: torch.Tensor, std: torch.Tensor, embedding: torch.Tensor,
                  captions: List[str]) -> None:
        """Append len(captions) examples as one file, on disk at once: `item`'s shapes with
        a leading batch dimension.  A kill leaves whole batches only."""
        if mean.shape[0] != len(captions) or std.shape != mean.shape or \
                embedding.shape[0] != len(captions):
            raise ValueError("add_batch got %s, %s and %s for %d captions" % (
                tuple(mean.shape), tuple(std.shape), tuple(embedding.shape), len(captions)))
        if self._index is None:
            self._reset()
        folder = self.root / "added"
        folder.mkdir(exist_ok=True)
        path = folder / ("%08d.safetensors" % self._added_total)
        tensors = {"mean": mean, "std": std, "embedding": embedding}
        self._save(path, {key: value.detach().to("cpu", torch.float16)
                          for key, value in tensors.items()}, list(captions))
        self._added.append(path)
        self._added_starts.append(self._added_total)
        self._added_total += len(captions)

    def __getstate__(self) -> Dict[str, Any]:
        """Memory maps cannot be pickled (DataLoader workers on Windows pickle the
        dataset); each copy maps the files again when it first reads."""
        state = dict(self.__dict__)
        state["_readers"] = {}
        return state

    def _key(self) -> Dict[str, Any]:
        return {"format": FORMAT, "fingerprint": self.fingerprint, "shard_size": self.shard_size}

    def _load_index(self) -> Optional[Dict[str, Any]]:
        """The stored index if it belongs to this fingerprint, else None."""
        try:
            index = json.loads((self.root / "index.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        stored = {key: index.get(key) for key in self._key()}
        return index if stored == self._key() else None

    def _reset(self) -> None:
        """Delete whatever a different fingerprint left and start an empty index."""
        self._readers.clear()
        self.root.mkdir(parents=True, exist_ok=True)
        for path in list(self.root.glob("shard-*")) + list((self.root / "added").glob("*")):
            path.unlink()
        self._count = 0
        self._index = dict(self._key(), count=0, shards=[], complete=False)
        self._find_added()  # none now
        self._write_index()

    def _find_added(self) -> None:
        """The added files and where each starts; the last one's header says its length."""
        found = sorted((self.root / "added").glob("*.safetensors")) if self._index else []
        self._added: List[Path] = found
        self._added_starts: List[int] = [int(path.stem) for path in found]
        self._added_total = (self._added_starts[-1] + self._reader(found[-1]).entries["mean"]
                             .shape[0]) if found else 0

    def _reader(self, path: Path) -> SafetensorsReader:
        reader = self._readers.get(path)
        if reader is None:
            reader = self._readers[path] = SafetensorsReader(path)
        return reader

    def _write_index(self) -> None:
        path = self.root / "index.json"
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(json.dumps(self._index, indent=1), encoding="utf-8")
        os.replace(str(temporary), str(path))

    def _save(self, path: Path, tensors: Dict[str, torch.Tensor], captions: List[str]) -> None:
        temporary = path.with_name(path.name + ".tmp")
        try:
            write_safetensors(temporary, [TensorOut(key, value.dtype, tuple(value.shape),
                                                    lambda value=value: tensor_bytes(value))
                                          for key, value in sorted(tensors.items())],
                              {"captions": json.dumps(captions)})
        except BaseException as e:
            temporary.unlink(missing_ok=True)  # a full disk: give back what it took
            problem = DiskError.of(e)
            if problem is None:
                raise
            raise problem.about(path) from None
        self._readers.pop(path, None)
        os.replace(str(temporary), str(path))

    def _shard(self, number: int) -> Path:
        return self.root / ("shard-%05d.safetensors" % number)

    def _locate(self, index: int) -> Tuple[SafetensorsReader, int]:
        if not 0 <= index < len(self):
            raise IndexError("example %d of a cache of %d" % (index, len(self)))
        if index < self._count:
            number, row = divmod(index, self.shard_size)
            path = self._shard(number)
        else:
            added = index - self._count
            number = bisect.bisect_right(self._added_starts, added) - 1
            path, row = self._added[number], added - self._added_starts[number]
        return self._reader(path), row


class CacheUnion:
    """Several caches read as one (a dataset's and a teacher-made one): indexes run over
    the first cache's examples, then the next one's."""

    def __init__(self, caches: List[LatentCache]) -> None:
        self.caches = list(caches)
        self.starts = [0]
        for cache in self.caches:
            self.starts.append(self.starts[-1] + len(cache))

    def __len__(self) -> int:
        return self.starts[-1]

    def item(self, index: int, flipped: bool = False) -> Dict[str, torch.Tensor]:
        cache, inner = self._locate(index)
        return cache.item(inner, flipped)

    def caption(self, index: int) -> str:
        cache, inner = self._locate(index)
        return cache.caption(inner)

    def _locate(self, index: int) -> Tuple[LatentCache, int]:
        if not 0 <= index < len(self):
            raise IndexError("example %d of %d" % (index, len(self)))
        number = bisect.bisect_right(self.starts, index) - 1
        return self.caches[number], index - self.starts[number]


def _encode(batch: List[Example], encode_images: ImageEncoder, encode_captions: CaptionEncoder,
            resolution: int, flip: bool) -> Dict[str, torch.Tensor]:
    """One batch's tensors, float16 on the CPU."""
    images = torch.stack([load_image(example.image, resolution) for example in batch])
    if flip:
        images = torch.cat([images, images.flip(-1)])
    with torch.no_grad():
        mean, std = encode_images(images)
        embedding = encode_captions([example.caption for example in batch])
    if mean.shape[0] != len(images) or std.shape != mean.shape or embedding.shape[0] != len(batch):
        raise ValueError("the encoders returned %s, %s and %s for %d images and %d captions"
                         % (tuple(mean.shape), tuple(std.shape), tuple(embedding.shape),
                            len(images), len(batch)))
    n = len(batch)
    tensors = {"mean": mean[:n], "std": std[:n], "embedding": embedding}
    if flip:
        tensors.update(mean_flipped=mean[n:], std_flipped=std[n:])
    return {key: value.detach().to("cpu", torch.float16) for key, value in tensors.items()}
