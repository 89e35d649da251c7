"""Image files users give (uploads, dataset folders, DreamBooth photos and class images, FID
reference folders), opened only by the decoders chosen here and only when small enough.

A file's name says nothing about its content: a "photo" ``dog.png`` may hold EPS, which
PIL renders by running Ghostscript, or any other of PIL's forty formats.  So every user
image is opened with the explicit list `FORMATS`, and its size is read from the header
before anything is decoded: an image over `MAX_PIXELS` is refused (a few kB of deflated
zeros can declare 64 megapixels).  Decoding is bounded too: `DECODE_THREADS` images are
checked at once, and `DECODE_BUDGET` pixels may be open at once in the whole process,
whoever asks (several visitors uploading at the same time share it), so a burst of large
images waits instead of multiplying the memory.
"""
import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

from ..errors import BadInput

FORMATS = ("PNG", "JPEG", "WEBP", "BMP")  # PIL's names; JPEG includes phones' MPO files
SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# A 50-megapixel phone photo (8160x6120) fits; PIL itself warns at 89 and refuses at 179.
MAX_PIXELS = 50_000_000
DECODE_THREADS = 8
# Two images at the limit: at most about 400 MB of decoded RGBA at once.
DECODE_BUDGET = 2 * MAX_PIXELS


class _PixelBudget:
    """A counting semaphore of pixels: `hold(n)` waits until `n` are free."""

    def __init__(self, total: int) -> None:
        self.total, self.free = total, total
        self.changed = threading.Condition()

    @contextlib.contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        pixels = min(pixels, self.total)
        with self.changed:
            self.changed.wait_for(lambda: self.free >= pixels)
            self.free -= pixels
        try:
            yield
        finally:
            with self.changed:
                self.free += pixels
                self.changed.notify_all()


_budget = _PixelBudget(DECODE_BUDGET)


class TooLarge(BadInput):
    """An image whose header declares more than `MAX_PIXELS`; `reason` says so without the
    file's path (an upload names the file the visitor sent)."""

    def __init__(self, path: Path, size: str) -> None:
        self.reason = ("%s, over the %d megapixels an image may have; downscale it"
                       % (size, MAX_PIXELS // 1_000_000))
        super().__init__("%s: %s" % (path, self.reason))


UNREADABLE = "not a readable image; replace or remove it"


@contextlib.contextmanager
def open_image(path: Path) -> Iterator[Any]:
    """The PIL image of `path`, opened (header read, nothing decoded) by one of `FORMATS`
    (PIL's errors otherwise: UnidentifiedImageError for any other format), `TooLarge` when
    over `MAX_PIXELS`.  Decode it inside the block: its pixels count against the process's
    decode budget until the block ends."""
    with _opened(path) as image:
        with _budget.hold(image.width * image.height):
            yield image


def pixel_count(path: Path) -> int:
    """Width x height from the header (errors as `open_image`); nothing is decoded."""
    with _opened(path) as image:
        return image.width * image.height


@contextlib.contextmanager
def _opened(path: Path) -> Iterator[Any]:
    from PIL import Image

    try:
        opened = Image.open(path, formats=FORMATS)
    except Image.DecompressionBombError:
        raise TooLarge(path, "more than %d megapixels" % (2 * Image.MAX_IMAGE_PIXELS // 10 ** 6)
                       ) from None
    with opened as image:
        width, height = image.size
        if width * height > MAX_PIXELS:
            raise TooLarge(path, "%dx%d pixels (%.1f megapixels)"
                           % (width, height, width * height / 1e6))
        yield image


def image_problem(path: Path) -> Optional[str]:
    """None when the image checks out to its last byte, else what is wrong with it (without
    its path).  `verify` checks a PNG that far (every chunk's checksum, up to the end
    marker) but passes a truncated JPEG, whose damage shows only when its data is decoded;
    so other formats are decoded too (a JPEG at its smallest scale, which still reads every
    byte at a fraction of the cost)."""
    try:
        with open_image(path) as opened:
            opened.verify()
            if opened.format == "PNG":
                return None
        with open_image(path) as opened:
            opened.draft(opened.mode, (1, 1))
            opened.load()
        return None
    except TooLarge as e:
        return e.reason
    except Exception:  # PIL raises many exception types for damaged files
        return UNREADABLE


def image_problems(paths: List[Path]) -> Dict[Path, Optional[str]]:
    """`image_problem` of each, `DECODE_THREADS` at a time (PIL decodes without the GIL)."""
    with ThreadPoolExecutor(max_workers=DECODE_THREADS) as pool:
        return dict(zip(paths, pool.map(image_problem, paths)))
