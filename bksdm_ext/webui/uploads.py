"""Files a visitor uploads through the page: a subject's photos for DreamBooth and training
sets (.zip) for distillation, stored in the WebUI data folder under ``bksdm/uploads/``.

This is how a remote user gets data onto a server that takes no typed paths
(``--hide-ui-dir-config``). An upload is size-limited (*Settings → BK-SDM*), a .zip is
refused whole when an entry would land outside its folder (zip-slip) or its unpacked size
is over the limit or the free space (zip bomb), and only images, captions and metadata are
unpacked. Everything is written into a hidden temporary folder first and renamed into
place once complete, so the list never shows a half-written upload.
"""
import contextlib
import os
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Iterator, List, Tuple

from ..errors import BadInput
from ..train.dataset import (CAPTION_SUFFIXES, IMAGE_SUFFIXES, METADATA_FILES, is_readable_image,
                             scan_dataset, stays_inside)
from . import a1111

LIMIT_OPTION = "bksdm_upload_limit_mb"
MB = 1024 * 1024
MAX_ZIP_ENTRIES = 200000
ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, NotImplementedError)


def area(kind: str) -> Path:
    folder = a1111.data_dir() / "uploads" / kind
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def names(kind: str) -> List[str]:
    """The finished uploads of `kind` (hidden temporary folders left out)."""
    return sorted(entry.name for entry in area(kind).iterdir()
                  if entry.is_dir() and not entry.name.startswith("."))


def folder(kind: str, name: str) -> Path:
    """The folder of an upload picked from the list; only listed names are accepted."""
    if name not in names(kind):
        raise BadInput("%s: no such upload; upload it again or pick one from the list" % name)
    return area(kind) / name


def store_photos(files: List[Tuple[Path, str]]) -> str:
    """Copy uploaded (temporary file, original name) photos into a new instance folder;
    returns its name. Anything that is not a readable image refuses the whole upload."""
    if not files:
        raise BadInput("No photos uploaded; choose 3-5 photos of your subject.")
    _check_size(sum(path.stat().st_size for path, _ in files), "the photos", area("instances"))
    for path, name in files:
        if Path(name).suffix.lower() not in IMAGE_SUFFIXES or not is_readable_image(path):
            raise BadInput("%s: not a readable .png, .jpg, .jpeg, .webp or .bmp image; nothing "
                           "was stored, upload photos only" % name)
    with _incoming("instances") as incoming:
        for path, name in files:
            shutil.copyfile(str(path), str(_free_name(incoming, _safe_name(name))))
        return _place(incoming, "instances", Path(files[0][1]).stem)


def store_training_set(path: Path, name: str) -> Tuple[str, str]:
    """Unpack an uploaded .zip of image + caption pairs (or images + metadata.jsonl/csv) into
    a new dataset folder; returns its name and what the dataset holds. A zip holding a
    single folder is unpacked without that folder level, so metadata.jsonl ends up at the
    dataset's top."""
    if not zipfile.is_zipfile(str(path)):
        raise BadInput("%s: not a .zip file; pack the images with their .txt captions (or a "
                       "metadata.jsonl) into a .zip" % name)
    try:
        with zipfile.ZipFile(str(path)) as archive:
            members = _wanted_members(archive, name)
            _check_size(sum(info.file_size for info, _ in members), name, area("datasets"))
            with _incoming("datasets") as incoming:
                for info, relative in members:
                    target = incoming.joinpath(*relative.parts)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    # zipfile stops at each entry's declared size and fails its CRC check when
                    # the data is longer, so the sizes checked above bound what is written.
                    with archive.open(info) as source, open(str(target), "wb") as out:
                        shutil.copyfileobj(source, out)
                top = _single_folder(incoming)
                scan = scan_dataset(top)  # BadInput when nothing in it can be trained on
                return _place(top, "datasets", Path(name).stem), scan.summary()
    except ZIP_ERRORS as e:
        raise BadInput("%s: damaged or unsupported .zip (%s); pack it again without a "
                       "password" % (name, e)) from None


def _wanted_members(archive: zipfile.ZipFile, name: str) -> List[Tuple[zipfile.ZipInfo,
                                                                        PurePosixPath]]:
    """The entries to unpack (images, captions, metadata) with their relative paths; the
    whole zip is refused when any entry's path leaves the folder."""
    infos = archive.infolist()
    if len(infos) > MAX_ZIP_ENTRIES:
        raise BadInput("%s: %d entries, more than the %d an upload may have; split the "
                       "training set" % (name, len(infos), MAX_ZIP_ENTRIES))
    wanted = []
    for info in infos:
        if not stays_inside(info.filename):
            raise BadInput("%s: the entry %s points outside the zip's folder; nothing was "
                           "unpacked, pack the files with relative paths" % (name, info.filename))
        if info.is_dir() or stat.S_ISLNK(info.external_attr >> 16):
            continue
        relative = PurePosixPath(info.filename.replace("\\", "/"))
        hidden = any(part.startswith(".") or part == "__MACOSX" for part in relative.parts)
        suffix = relative.suffix.lower()
        if not hidden and (suffix in IMAGE_SUFFIXES or suffix in CAPTION_SUFFIXES
                           or relative.name in METADATA_FILES):
            wanted.append((info, relative))
    return wanted


def _check_size(size: int, what: str, destination: Path) -> None:
    limit = int(float(a1111.opt(LIMIT_OPTION, 2048)) * MB)
    if size > limit:
        raise BadInput("%s: %.1f MB, over the %.0f MB upload limit (Settings → BK-SDM); "
                       "nothing was stored" % (what, size / MB, limit / MB))
    free = shutil.disk_usage(str(destination)).free
    if size > free:
        raise BadInput("%s: needs %.1f MB, only %.1f MB free in %s; nothing was stored"
                       % (what, size / MB, free / MB, destination))


@contextlib.contextmanager
def _incoming(kind: str) -> Iterator[Path]:
    """A hidden temporary folder beside the uploads, removed afterwards whatever happens."""
    incoming = Path(tempfile.mkdtemp(prefix=".incoming-", dir=str(area(kind))))
    try:
        yield incoming
    finally:
        shutil.rmtree(str(incoming), ignore_errors=True)


def _single_folder(folder: Path) -> Path:
    entries = list(folder.iterdir())
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else folder


def _safe_name(name: str) -> str:
    """A plain file or folder name from what the browser sent: no folders, no leading dots."""
    cleaned = re.sub(r"[^\w.\- ]", "_", Path(name.replace("\\", "/")).name).lstrip(". ")
    return cleaned or "upload"


def _free_name(folder: Path, name: str) -> Path:
    """`folder/name`, or `folder/stem-2.ext`, ... when that is taken."""
    candidate, number = folder / name, 1
    while candidate.exists():
        number += 1
        candidate = folder / ("%s-%d%s" % (Path(name).stem, number, Path(name).suffix))
    return candidate


def _place(source: Path, kind: str, stem: str) -> str:
    """Rename the finished `source` folder into the uploads under a name not yet used."""
    while True:
        target = _free_name(area(kind), _safe_name(stem))
        try:
            os.rename(str(source), str(target))
            return target.name
        except OSError:
            if not target.exists():  # not another upload taking the name meanwhile
                raise
