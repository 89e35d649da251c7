"""Captioned image folders, in the layouts WebUI users already have.

The layout follows from what is in the folder:

- ``metadata.jsonl`` or ``metadata.csv`` (diffusers' imagefolder): rows with ``file_name``
  (relative to the folder, subfolders allowed) and ``text``;
- otherwise pairs (kohya / A1111 training): every image, in any subfolder, with its caption
  in a same-stem ``.txt`` (or kohya's ``.caption``) beside it.

Single bad images or missing captions are collected and reported, not fatal, so one stray
file does not stop a long run; a folder with nothing usable is a BadInput before any model
loads.  A dataset reads nothing outside its folder: a row naming ``../x.png`` and a link
that leads out (``linkdir/x.png`` with ``linkdir`` a symlink) are skipped alike, without
looking whether the file there exists.
"""
import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch

from ..errors import BadInput
from ..model.image_files import (SUFFIXES as IMAGE_SUFFIXES, UNREADABLE, TooLarge,
                                 image_problems, open_image)

CAPTION_SUFFIXES = (".txt", ".caption")
METADATA_FILES = ("metadata.jsonl", "metadata.csv")
EXPECTED_LAYOUT = (
    "put a caption file with the same name beside each image (cat.png + cat.txt), or add a "
    'metadata.jsonl with one {"file_name": "cat.png", "text": "a photo of a cat"} per line, '
    "or a metadata.csv with file_name and text columns"
)


@dataclass
class Example:
    image: Path
    caption: str


@dataclass
class DatasetScan:
    folder: Path
    layout: str  # "pairs", "metadata.jsonl" or "metadata.csv"
    examples: List[Example]
    unreadable: List[Path]  # images PIL cannot open or verify, or rows naming no file
    missing_captions: List[Path]  # no caption file, an empty one, or no metadata row
    # what leads out of the folder, never opened: metadata rows ("metadata.jsonl, line 3:
    # ../x.png") and links ("x.png (a link)")
    outside: List[str] = field(default_factory=list)
    unreadable_captions: List[Path] = field(default_factory=list)  # caption files not UTF-8
    reasons: Dict[Path, str] = field(default_factory=dict)  # what is wrong with an unreadable

    def summary(self) -> str:
        """One line for a log or the UI."""
        line = "%s with captions (%s)" % (_count(len(self.examples), "image"), self.layout)
        skipped = []
        if self.unreadable:
            skipped.append("{:,} unreadable".format(len(self.unreadable)))
        if self.missing_captions:
            skipped.append("{:,} without caption".format(len(self.missing_captions)))
        if self.outside:
            skipped.append("{:,} outside the folder".format(len(self.outside)))
        if self.unreadable_captions:
            skipped.append("{:,} with a caption that is not UTF-8".format(
                len(self.unreadable_captions)))
        return line + ("; " + ", ".join(skipped) if skipped else "")

    def problems(self, limit: int = 10) -> List[str]:
        """What was skipped, one file a line, the first `limit` of them."""
        lines = ["%s: %s" % (path, self.reasons.get(path) or (
            UNREADABLE if path.is_file() else "no such file, but %s lists it" % self.layout))
            for path in self.unreadable[:limit]]
        lines += ["%s: outside the dataset folder, not used; put the file itself in the "
                  "folder and name it relative to it" % row
                  for row in self.outside[:limit - len(lines)]]
        for path in self.missing_captions[:limit - len(lines)]:
            if self.layout == "pairs":
                fix = "write its caption into %s" % path.with_suffix(".txt").name
            else:
                fix = "add a row for it to %s" % self.layout
            lines.append("%s: no caption; %s" % (path, fix))
        lines += ["%s: not UTF-8 text, so its image is skipped; save it with UTF-8 encoding"
                  % path for path in self.unreadable_captions[:limit - len(lines)]]
        hidden = (len(self.unreadable) + len(self.missing_captions) + len(self.outside)
                  + len(self.unreadable_captions) - len(lines))
        return lines + (["... and {:,} more".format(hidden)] if hidden else [])


def scan_dataset(folder: Union[str, Path]) -> DatasetScan:
    """Find the examples in `folder`, in sorted order, checking that each image opens."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BadInput("%s: no such folder; give the folder that holds the training images"
                       % folder)
    root = Path(os.path.realpath(str(folder)))
    scan = DatasetScan(folder, "pairs", [], [], [])
    images = []
    for image in sorted(image_files(folder)):
        through = next((path for path in (image, _caption_path(image))
                        if path is not None and leads_out(path, root)), None)
        if through is None:
            images.append(image)
        else:
            scan.outside.append("%s (a link)" % through.relative_to(folder).as_posix())
    for name in METADATA_FILES:
        if leads_out(folder / name, root):
            scan.outside.append("%s (a link)" % name)
        elif (folder / name).is_file():
            scan.layout = name
            break
    if scan.layout == "pairs":
        candidates = [(image, _caption_file(image)) for image in images]
    else:
        rows, outside_rows = _metadata_rows(folder / scan.layout, root)
        scan.outside += outside_rows
        listed = {image for image, _ in rows}
        candidates = rows + [(image, "") for image in images if image not in listed]
        candidates.sort(key=lambda candidate: candidate[0])
    problems = image_problems([image for image, caption in candidates if caption])
    for image, caption in candidates:
        if caption is None:
            scan.unreadable_captions.append(_caption_path(image) or image)
        elif not caption:
            scan.missing_captions.append(image)
        elif problems[image] is not None:
            scan.unreadable.append(image)
            if image.is_file():
                scan.reasons[image] = str(problems[image])
        else:
            scan.examples.append(Example(image, caption))
    if not scan.examples:
        if candidates or scan.outside:
            found = "of %s, %d unreadable and %d without caption" % (
                _count(len(candidates) + len(scan.outside), "image"), len(scan.unreadable),
                len(scan.missing_captions))
            if scan.outside:
                found += ", %d outside the folder" % len(scan.outside)
            if scan.unreadable_captions:
                found += "; %s not UTF-8 text, first %s" % (
                    _count(len(scan.unreadable_captions), "caption file"),
                    scan.unreadable_captions[0])
        else:
            found = "found no .png, .jpg, .jpeg, .webp or .bmp files"
        raise BadInput("%s: no captioned images to train on (%s); %s"
                       % (folder, found, EXPECTED_LAYOUT))
    return scan


def load_image(path: Path, resolution: int, flip: bool = False) -> torch.Tensor:
    """The image as the VAE wants it: RGB, shorter edge scaled to `resolution` and center
    cropped to a square (as diffusers' train_text_to_image does), optionally mirrored,
    float [3, resolution, resolution] in [-1, 1].

    Photos are turned upright by their EXIF orientation, as viewers show them, and
    transparent areas become white rather than whatever colour hides under them.
    """
    from PIL import Image, ImageOps

    image = open_rgb(path)
    # The shorter edge becomes `resolution`, the longer one is truncated like torchvision's.
    width, height = image.size
    if width <= height:
        size = (resolution, int(resolution * height / width))
    else:
        size = (int(resolution * width / height), resolution)
    image = image.resize(size, Image.BICUBIC)
    left = int(round((size[0] - resolution) / 2.0))
    top = int(round((size[1] - resolution) / 2.0))
    image = image.crop((left, top, left + resolution, top + resolution))
    if flip:
        image = ImageOps.mirror(image)
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)
    return pixels.float() / 127.5 - 1.0


def open_rgb(path: Path) -> Any:
    """The image as an RGB PIL image, upright by its EXIF orientation, transparent areas
    white, 16-bit greyscale scaled to 8 bits (PIL would clip it to pure white)."""
    from PIL import Image, ImageOps

    try:
        with open_image(path) as opened:
            image = ImageOps.exif_transpose(opened)
            if image.mode == "I" or image.mode.startswith("I;16"):
                levels = np.asarray(image).astype(np.float64) / 257.0
                image = Image.fromarray(levels.round().clip(0, 255).astype(np.uint8), "L")
            image = image.convert("RGBA")
    except TooLarge:
        raise
    except Exception as e:  # PIL raises many exception types for damaged files
        raise BadInput("%s: cannot be decoded as an image (%s); replace or remove it"
                       % (path, e)) from None
    white = Image.new("RGBA", image.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, image).convert("RGB")


def _count(n: int, noun: str) -> str:
    return "{:,} {}{}".format(n, noun, "" if n == 1 else "s")


def image_files(folder: Path) -> Iterator[Path]:
    """Image files under `folder`, skipping hidden folders (.ipynb_checkpoints, caches)."""
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if Path(name).suffix.lower() in IMAGE_SUFFIXES and not name.startswith("."):
                yield Path(root) / name


def _caption_path(image: Path) -> Optional[Path]:
    """The caption file beside `image`, if there is one (or a link in its place, which
    `scan_dataset` follows only when it stays in the folder)."""
    return next((path for path in map(image.with_suffix, CAPTION_SUFFIXES)
                 if path.is_symlink() or path.is_file()), None)


def leads_out(path: Path, root: Path) -> bool:
    """Whether `path`, with every link followed, lies outside the (resolved) folder `root`;
    decided from the links alone, never from whether the file at the end exists."""
    try:
        Path(os.path.realpath(str(path))).relative_to(root)
    except ValueError:
        return True
    return False


def _caption_file(image: Path) -> Optional[str]:
    """The caption beside `image`; "" when there is none, None when it is not UTF-8 text
    (one mis-saved caption skips its image, not the dataset)."""
    path = _caption_path(image)
    if path is None or not path.is_file():
        return ""
    try:
        return _read_text(path).strip()
    except BadInput:
        return None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise BadInput("%s: not UTF-8 text; save it with UTF-8 encoding" % path) from None


def _metadata_rows(path: Path, root: Path) -> Tuple[List[Tuple[Path, str]], List[str]]:
    """(image, caption) for every row (a row without a usable text has caption ""), and the
    rows whose file_name leaves the folder `root` ("line 3: ../x.png", also through a
    link), which are not looked at: a dataset must not read, or tell whether there is, any
    file outside its folder."""
    if path.suffix == ".jsonl":
        records = _jsonl_records(path)
    else:
        records = _csv_records(path)
    rows, outside = [], []
    for line, record in records:
        name = record.get("file_name")
        if not isinstance(name, str) or not name.strip():
            raise BadInput('%s, line %d: no "file_name"; each row names an image relative to '
                           "the folder, with its caption in \"text\"" % (path, line))
        if not stays_inside(name.strip()) or leads_out(path.parent / name.strip(), root):
            outside.append("%s, line %d: %s" % (path.name, line, name.strip()))
            continue
        text = record.get("text")
        rows.append((path.parent / name.strip(), text.strip() if isinstance(text, str) else ""))
    return rows, outside


def stays_inside(name: str) -> bool:
    """Whether a relative file name stays in its folder, by its text alone (no absolute
    path, drive or ``..``; either slash)."""
    posix = PurePosixPath(name.replace("\\", "/"))
    return not (posix.is_absolute() or ".." in posix.parts or PureWindowsPath(name).drive)


def _jsonl_records(path: Path) -> List[Tuple[int, Dict[str, Any]]]:
    records = []
    for line, text in enumerate(_read_text(path).splitlines(), 1):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except ValueError as e:
            raise BadInput("%s, line %d: not valid JSON (%s); write one JSON object per line"
                           % (path, line, e)) from None
        if not isinstance(record, dict):
            raise BadInput('%s, line %d: not a JSON object; write {"file_name": ..., "text": ...}'
                           % (path, line))
        records.append((line, record))
    return records


def _csv_records(path: Path) -> List[Tuple[int, Dict[str, Optional[str]]]]:
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
    columns = reader.fieldnames or []
    if "file_name" not in columns or "text" not in columns:
        raise BadInput("%s: the header has columns %s; it needs file_name and text"
                       % (path, ", ".join(columns) or "none"))
    return [(reader.line_num, record) for record in reader]
