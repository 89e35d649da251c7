"""FID (Fréchet Inception distance) of a model's images against a folder of reference
images: the paper's image-quality metric (on 30k MS-COCO images), for labs, from the CLI.

It is torchmetrics' ``FrechetInceptionDistance`` (2048 pool features of torch-fidelity's
port of the TensorFlow FID Inception network), so the numbers are the ones other papers'
code gives.  Images go in as 8-bit RGB and are resized to 299² the way the TensorFlow
original resizes them (``antialias=False``, which also keeps every torchmetrics version on
the same numbers).

torch-fidelity needs torchvision, which a WebUI or a lab has; it is imported only when FID
is asked for.  Its weights (``WEIGHTS_FILE``) are fetched by torch.hub into its cache
($TORCH_HOME/hub/checkpoints) when the network is first built, which happens only when FID
is asked for, after one line says so; `--fid-weights FILE` uses a copy instead (offline).

The reference folder is read recursively (a data set's images often sit in subfolders);
.png, .jpg, .jpeg, .webp and .bmp files count (opened as `model.image_files` opens user
images), unreadable ones are skipped and reported.
"""
import inspect
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, List, Optional, Sequence

import torch

from ..errors import BadInput
from ..model.image_files import SUFFIXES as IMAGE_SUFFIXES, TooLarge, open_image

WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
WEIGHTS_SIZE = "91 MiB"
INSTALL = ("pip install torch-fidelity torchmetrics (or the `fid` extra: pip install "
           "'bksdm-webui[fid]'), with the torchvision that matches your torch")
# FID is biased on few images (the estimate falls as the count grows), so values are
# comparable only at equal counts; below this many, `FidScorer.load` warns.
FEW_IMAGES = 2048
BATCH = 16  # images per Inception forward


@dataclass
class FidScorer:
    """torchmetrics' FID holding the reference folder's features (computed once); each
    model's images are scored against them."""

    metric: Any  # torchmetrics.image.fid.FrechetInceptionDistance(reset_real_features=False)
    reference: Path
    images: int  # reference images read
    skipped: List[str] = field(default_factory=list)  # "file: why" for each unreadable one

    @classmethod
    def load(cls, reference: Path, weights: Optional[Path] = None,
             device: Optional[torch.device] = None,
             say: Callable[[str], None] = print) -> "FidScorer":
        """Read `reference` through the Inception network (`weights`, else torch.hub's
        cached copy, downloaded after `say` tells so)."""
        files = reference_files(Path(reference))
        check_count(len(files), "%s has %d image file(s) (%s)"
                    % (reference, len(files), ", ".join(IMAGE_SUFFIXES)))
        metric = _metric(weights, device, say)
        skipped: List[str] = []
        count = 0
        for batch in uint8_batches(_readable(files, skipped)):
            metric.update(batch.to(metric.device), real=True)
            count += batch.shape[0]
        if skipped:
            say("FID: skipped %d unreadable file(s) in %s: %s"
                % (len(skipped), reference, "; ".join(skipped)))
        check_count(count, "%s has %d readable image(s)" % (reference, count))
        if count < FEW_IMAGES:
            say("FID: only %d reference images: FID on few images is biased (upwards, the "
                "more so the fewer); the paper uses 30k MS-COCO images. Compare models only "
                "at equal image counts" % count)
        return cls(metric=metric, reference=Path(reference), images=count, skipped=skipped)

    @torch.no_grad()
    def score(self, images: Sequence[Any]) -> float:
        """FID of `images` (PIL images, at least 2) against the reference; lower is closer."""
        check_count(len(images), "a model made %d image(s)" % len(images))
        self.metric.reset()  # forgets the last model's images, keeps the reference
        for batch in uint8_batches(images):
            self.metric.update(batch.to(self.metric.device), real=False)
        return float(self.metric.compute())


def check_count(count: int, what: str) -> None:
    """FID compares two covariance matrices: each set needs at least 2 images."""
    if count < 2:
        raise BadInput("FID needs at least 2 images on each side: %s" % what)


def reference_files(folder: Path) -> List[Path]:
    """The image files under `folder` and its subfolders, sorted."""
    if not folder.is_dir():
        raise BadInput("%s: no such folder (--fid-reference takes a folder of reference "
                       "images: %s)" % (folder, ", ".join(IMAGE_SUFFIXES)))
    return sorted(p for p in folder.rglob("*")
                  if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def cached_weights() -> Path:
    """Where torch.hub keeps (or will download) torch-fidelity's Inception weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE


def download_note() -> Optional[str]:
    """The line to show before the network is built, when its weights must be downloaded."""
    if cached_weights().is_file():
        return None
    return ("FID: downloading torch-fidelity's Inception weights (%s, %s) into %s; "
            "--fid-weights FILE uses a copy instead" % (WEIGHTS_FILE, WEIGHTS_SIZE,
                                                         cached_weights().parent))


def _metric(weights: Optional[Path], device: Optional[torch.device],
            say: Callable[[str], None]) -> Any:
    fid_class = _fid_class()
    options = {"feature": 2048, "reset_real_features": False, "normalize": False}
    accepted = inspect.signature(fid_class).parameters
    if "antialias" in accepted:  # newer torchmetrics; older ones always resize this way
        options["antialias"] = False
    if weights is not None:
        _check_weights_file(Path(weights))
        if "feature_extractor_weights_path" not in accepted:
            raise BadInput("--fid-weights needs a newer torchmetrics (pip install -U "
                           "torchmetrics), or copy %s to %s" % (weights, cached_weights()))
        options["feature_extractor_weights_path"] = str(weights)
    else:
        note = download_note()
        if note:
            say(note)
    try:
        metric = fid_class(**options)
    except RuntimeError as e:  # keys or shapes that do not match, a truncated file
        raise BadInput("%s: not torch-fidelity's FID Inception weights (%s): %s%s"
                       % (weights or cached_weights(), WEIGHTS_FILE, str(e).splitlines()[0],
                          "" if weights else "; delete it to download it again")) from None
    except OSError as e:  # the download failed
        raise BadInput("could not download %s (%s): download it where you can and pass "
                       "--fid-weights FILE" % (_weights_url(), e)) from None
    return metric if device is None else metric.to(device)


def _fid_class() -> Any:
    """torchmetrics' FrechetInceptionDistance, or one message saying what to install."""
    try:
        import torch_fidelity  # noqa: F401  (needs torchvision; torchmetrics checks lazily)
        from torchmetrics.image.fid import FrechetInceptionDistance
    except (ImportError, RuntimeError) as e:  # RuntimeError: a torchvision built for another torch
        raise BadInput("FID needs torch-fidelity and torchmetrics (%s): %s"
                       % (str(e).splitlines()[0], INSTALL)) from None
    return FrechetInceptionDistance


def _weights_url() -> str:
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    return URL_INCEPTION_V3


def _check_weights_file(path: Path) -> None:
    """torch-fidelity unpickles the file with every class allowed; a file that is not plain
    tensors (one that could run code) is refused first."""
    if not path.is_file():
        raise BadInput("%s: no such file (--fid-weights takes torch-fidelity's %s)"
                       % (path, WEIGHTS_FILE))
    try:
        torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        raise BadInput("%s: not a plain weights file (%s): --fid-weights takes "
                       "torch-fidelity's %s" % (path, str(e).splitlines()[0], WEIGHTS_FILE)
                       ) from None


def _readable(files: Iterable[Path], skipped: List[str]) -> Iterator[Any]:
    """Each file as an RGB PIL image; one that cannot be read is noted in `skipped`."""
    for path in files:
        try:
            with open_image(path) as image:
                rgb = image.convert("RGB")
        except TooLarge as e:
            skipped.append(str(e))
            continue
        except (OSError, ValueError) as e:
            skipped.append("%s: %s" % (path, e))
            continue
        yield rgb


def uint8_batches(images: Iterable[Any], size: int = BATCH) -> Iterator[torch.Tensor]:
    """[N, 3, H, W] uint8 batches of up to `size` images; images of another size than the
    batch's start a new batch (the network resizes each to 299²)."""
    import numpy

    batch: List[torch.Tensor] = []
    for image in images:
        pixels = torch.from_numpy(numpy.array(image.convert("RGB"))).permute(2, 0, 1)
        if batch and (len(batch) == size or batch[0].shape != pixels.shape):
            yield torch.stack(batch)
            batch = []
        batch.append(pixels)
    if batch:
        yield torch.stack(batch)
