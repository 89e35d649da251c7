"""Files a visitor uploads through the page: a subject's photos for DreamBooth and training
sets (.zip) for distillation, stored in the WebUI data folder under ``bksdm/uploads/``.

This is how a remote user gets data onto a server that takes no typed paths
(``--hide-ui-dir-config``). An upload is size-limited (*Settings → BK-SDM*), a .zip is
refused whole when an entry would land outside its folder (zip-slip), its unpacked size is
over the limit or the free space (zip bomb), or an entry's name no file system takes, and
only images, captions and metadata are unpacked. Images are opened only as PNG, JPEG, WEBP
or BMP, each at most `image_files.MAX_PIXELS` and all of an upload's together at most
`MAX_UPLOAD_PIXELS`, counted from their headers before anything is decoded (a few kB of
deflated zeros can declare gigapixels). Everything is written into a hidden temporary
folder first and renamed into place once complete, so the list never shows a
half-written upload.
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

from ..errors import NAME_MAX, BadInput, DiskError, check_path_text
from ..model.image_files import UNREADABLE, image_problem, pixel_count
from ..train.dataset import (CAPTION_SUFFIXES, IMAGE_SUFFIXES, METADATA_FILES, scan_dataset,
                             stays_inside)
from . import a1111

LIMIT_OPTION = "bksdm_upload_limit_mb"
MB = 1024 * 1024
MAX_ZIP_ENTRIES = 200000
# 38,000 images of 512x512, or 200 at the 50-megapixel limit of one image.
MAX_UPLOAD_PIXELS = 10 ** 10
NAME_ROOM = 16  # bytes a stored name leaves for `_free_name`'s "-2", "-3", ...
ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, NotImplementedError)


def area(kind: str) -> Path:
    """The folder of the uploads of `kind`, resolved: the paths handed to jobs are the
    resolved ones (a job refuses a path that resolves elsewhere by the time it starts)."""
    folder = Path(os.path.realpath(str(a1111.data_dir() / "uploads" / kind)))
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
    _check_pixels([path for path, _ in files], "the photos")
    for path, name in files:
        is_image = Path(name).suffix.lower() in IMAGE_SUFFIXES
        problem = image_problem(path) if is_image else UNREADABLE
        if problem == UNREADABLE:
            raise BadInput("%s: not a readable .png, .jpg, .jpeg, .webp or .bmp image; nothing "
                           "was stored, upload photos only" % name)
        if problem:
            raise BadInput("%s: %s; nothing was stored" % (name, problem))
    with _unpacking("the photos"), _incoming("instances") as incoming:
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
            with _unpacking(name), _incoming("datasets") as incoming:
                for info, relative in members:
                    target = incoming.joinpath(*relative.parts)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    # zipfile stops at each entry's declared size and fails its CRC check when
                    # the data is longer, so the sizes checked above bound what is written.
                    with archive.open(info) as source, open(str(target), "wb") as out:
                        shutil.copyfileobj(source, out)
                top = _single_folder(incoming)
                _check_pixels([incoming.joinpath(*relative.parts) for _, relative in members
                               if relative.suffix.lower() in IMAGE_SUFFIXES], name)
                try:
                    scan = scan_dataset(top)  # BadInput when nothing in it can be trained on
                except BadInput as e:  # named after the upload, not the hidden folder
                    raise BadInput(str(e).replace(str(top), name)) from None
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
            check_path_text(str(relative), "%s: the entry %s" % (name, str(relative)[:60]))
            wanted.append((info, relative))
    files = {relative for _, relative in wanted}
    clash = next((folder for _, relative in wanted for folder in relative.parents
                  if folder in files), None)
    if clash is not None:
        raise BadInput("%s: %s is both a file and a folder in the zip; nothing was unpacked, "
                       "rename one of them and pack it again" % (name, clash))
    return wanted


def _check_pixels(images: List[Path], what: str) -> None:
    """Refuse an upload whose images declare, in their headers, more pixels together than
    an upload may have; nothing is decoded.  Files that are no image, or too large an
    image, are left to the check that follows (it says which, and never decodes them)."""
    total = 0
    for path in images:
        try:
            total += pixel_count(path)
        except Exception:  # TooLarge, or PIL's many exception types for damaged files
            continue
        if total > MAX_UPLOAD_PIXELS:
            raise BadInput("%s: the images hold more than %d gigapixels, over the %d an upload "
                           "may have; nothing was stored, upload fewer or smaller images"
                           % (what, MAX_UPLOAD_PIXELS // 10 ** 9, MAX_UPLOAD_PIXELS // 10 ** 9))


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
def _unpacking(what: str) -> Iterator[None]:
    """A full disk or a path the file system refuses, while storing: one message."""
    try:
        yield
    except OSError as e:
        problem = DiskError.of(e)
        if problem is None:
            raise
        raise problem.about(what, then="nothing was stored") from None


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
    """A plain file or folder name from what the browser sent: no folders, no leading dots,
    the suffix kept ("...png" is "upload.png", not "png"), short enough for every file
    system with room for `_free_name`'s number."""
    cleaned = re.sub(r"[^\w.\- ]", "_", Path(name.replace("\\", "/")).name)
    head, dot, suffix = cleaned.rpartition(".")
    if not dot or len(suffix) > NAME_ROOM:
        head, suffix = cleaned, ""
    stem = head.lstrip(". ") or "upload"
    room = NAME_MAX - NAME_ROOM - len(suffix.encode("utf-8")) - 1
    stem = stem.encode("utf-8")[:room].decode("utf-8", "ignore")
    return stem + ("." + suffix if suffix else "")


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
