"""A WebUI others can reach (--listen): server paths typed in the page stay inside the
allowed roots, --hide-ui-dir-config refuses them altogether, uploads are the way in (zip-slip
and zip-bomb refused), and metadata rows cannot name files outside their dataset."""
import io
import json
import os
import shutil
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from bksdm_ext.errors import BadInput
from bksdm_ext.train.dataset import scan_dataset
from test_distill import make_dataset
from tiny import TINY, write_teacher
from webui_env import register_settings, standin_app, start_webui

SECRET = "root:x:0:0 secret line"


def _webui(tmp_path, *flags):
    folder = start_webui(tmp_path / "webui", *flags)
    write_teacher(folder, TINY["sd-v1"])
    from modules import sd_models

    sd_models.list_models()
    register_settings()
    return folder


@pytest.fixture
def webui(tmp_path):
    yield _webui(tmp_path)
    standin_app.reset(tmp_path / "after")


@pytest.fixture
def exposed(tmp_path):
    """Started as on a shared server: --hide-ui-dir-config."""
    yield _webui(tmp_path, "--hide-ui-dir-config")
    standin_app.reset(tmp_path / "after")


@pytest.fixture
def outside(tmp_path):
    """A folder outside every allowed root holding a dataset and a text file with a secret."""
    folder = make_dataset(tmp_path / "outside" / "data", n=2)
    (folder.parent / "secret.txt").write_text(SECRET)
    return folder


def _distill(folder="", source=0, prompts="", uploaded=""):
    from bksdm_ext.webui import checkpoints, distill_tab

    title = checkpoints.titles(students=False)[0]
    return distill_tab.start(title, "Small", distill_tab.SOURCES[source], folder, 4, prompts, "",
                             False, 2, 1, 1, 1e-3, 32, "no", False, False, False, 0, 0, "",
                             False, 1, uploaded)


def _dreambooth(folder="", uploaded=""):
    from bksdm_ext.webui import checkpoints, dreambooth_tab

    title = checkpoints.titles()[0]
    return dreambooth_tab.start(title, dreambooth_tab.SAME_MODEL, folder, "a photo of sks dog",
                                "a photo of a dog", 1, 2, 1e-4, 32, True, True, False, 16, 1e-4,
                                "no", False, False, False, uploaded)


def _no_jobs():
    from bksdm_ext.webui import jobs_service

    return jobs_service.runner().jobs() == []


def _zip(path: Path, entries) -> Path:
    with zipfile.ZipFile(str(path), "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return path


def _png(color="red") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 32), color).save(buffer, "PNG")
    return buffer.getvalue()


def _pairs(prefix="", n=3):
    entries = []
    for i in range(n):
        entries += [("%simg%d.png" % (prefix, i), _png(("red", "blue", "green")[i % 3])),
                    ("%simg%d.txt" % (prefix, i), "a %d circle" % i)]
    return entries


def test_hide_ui_dir_config_refuses_every_path_field(exposed, outside):
    from modules import shared

    from bksdm_ext.webui import a1111, distill_tab, ui, uploads

    inside = make_dataset(a1111.data_dir() / "mine", n=2)  # even an allowed folder: no typing
    for folder in ("/etc", str(outside), str(inside)):
        checked = distill_tab.check_dataset(folder)
        assert "bksdm-error" in checked and "--hide-ui-dir-config" in checked, checked
        assert "img00" not in checked and "passwd" not in checked
        assert "--hide-ui-dir-config" in _distill(folder)
        assert "--hide-ui-dir-config" in _dreambooth(folder)
    prompts = _distill(source=1, prompts=str(outside.parent / "secret.txt"))
    assert "Prompts" in prompts and "--hide-ui-dir-config" in prompts and SECRET not in prompts
    assert "--hide-ui-dir-config" in _distill(source=1, prompts="/etc/hostname")
    assert _no_jobs()

    # The path fields are hidden; the upload buttons are the way in.
    name, _ = uploads.store_training_set(_zip(exposed.parent / "set.zip", _pairs()), "set.zip")
    assert "3 images with captions" in distill_tab.check_dataset("", name)
    page = ui.on_ui_tabs()[0][0]
    shown = {block.elem_id: block.visible for block in page.blocks.values()
             if getattr(block, "elem_id", None)}
    for field in ("bksdm_distill_folder", "bksdm_distill_prompts", "bksdm_db_folder"):
        assert shown[field] is False
    assert shown["bksdm_distill_folder_upload"] and shown["bksdm_db_folder_upload"]

    # A visitor cannot widen the roots (or the output folder, or the upload limit) in Settings.
    for key, value in (("bksdm_data_roots", "/"), ("bksdm_output_dir", "/tmp"),
                       ("bksdm_upload_limit_mb", 999999)):
        before = getattr(shared.opts, key)
        assert shared.opts.set(key, value) is False and getattr(shared.opts, key) == before


def test_typed_paths_stay_inside_the_allowed_roots(webui, outside, tmp_path):
    from modules import shared

    from bksdm_ext.webui import a1111, distill_tab

    area = a1111.data_dir()
    inside = make_dataset(area / "datasets" / "mine", n=2)
    assert "2 images with captions" in distill_tab.check_dataset(str(inside))

    def refusal(path):
        checked = distill_tab.check_dataset(str(path))
        assert "bksdm-error" in checked and "outside the folders this page may read" in checked
        assert "img00" not in checked
        return checked.replace(str(path), "PATH")

    # Same answer for a folder that exists and one that does not: nothing is revealed.
    assert refusal("/etc") == refusal("/no/such/folder") == refusal(outside)
    refusal(area / ".." / "..")  # ".." is resolved before the check
    (area / "escape").symlink_to(outside, target_is_directory=True)
    refusal(area / "escape")  # a symlink inside the area that leads out
    assert "outside the folders" in _distill(str(outside))
    assert "outside the folders" in _dreambooth(str(outside))
    assert "outside the folders" in _distill(source=1, prompts=str(outside.parent / "secret.txt"))
    assert _no_jobs()

    # The server owner lists a folder in Settings: it (and a symlink into it) may be used.
    assert shared.opts.set("bksdm_data_roots", "\n%s\n" % outside.parent)
    assert "2 images with captions" in distill_tab.check_dataset(str(outside))
    assert "2 images with captions" in distill_tab.check_dataset(str(area / "escape"))
    assert distill_tab.data_flags(distill_tab.SOURCES[0], str(area / "escape"), "", 0,
                                  "")["data"] == str(outside.resolve())


def test_metadata_rows_cannot_name_files_outside_the_dataset(tmp_path):
    data = tmp_path / "data"
    make_dataset(data, n=2)
    (tmp_path / "there.png").write_bytes(_png())
    rows = [{"file_name": "img00.png", "text": "a circle"},
            {"file_name": "../there.png", "text": "exists outside"},
            {"file_name": "../gone.png", "text": "does not exist"},
            {"file_name": str(tmp_path / "there.png"), "text": "absolute"},
            {"file_name": "sub\\..\\..\\there.png", "text": "windows slashes"}]
    (data / "metadata.jsonl").write_text("\n".join(json.dumps(row) for row in rows))

    scan = scan_dataset(data)
    assert [example.image.name for example in scan.examples] == ["img00.png"]
    assert all(example.image.parent == data for example in scan.examples)
    assert "4 outside the folder" in scan.summary()
    outside = [line for line in scan.problems() if "outside the dataset folder" in line]
    assert len(outside) == 4
    # The existing and the missing outside file get the same words.
    assert outside[0].replace("there", "X") == outside[1].replace("gone", "X").replace(
        "line 3", "line 2")
    (data / "metadata.jsonl").write_text(json.dumps(rows[1]))
    with pytest.raises(BadInput, match="1 outside the folder"):
        scan_dataset(data)


def test_an_uploaded_training_set_is_picked_from_the_list(webui):
    from bksdm_ext.webui import distill_tab, uploads

    archive = _zip(webui.parent / "cats.zip", _pairs("cats/") + [("cats/.DS_Store", b"x"),
                                                                 ("__MACOSX/cats/._img0.png", b"x"),
                                                                 ("cats/run.sh", b"rm -rf /")])
    name, summary = uploads.store_training_set(archive, "cats.zip")
    assert name == "cats" and "3 images with captions" in summary
    folder = uploads.folder("datasets", name)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        "img%d.%s" % (i, ext) for i in range(3) for ext in ("png", "txt"))
    assert "3 images with captions" in distill_tab.check_dataset("", name)
    assert distill_tab.data_flags(distill_tab.SOURCES[0], "", name, 0, "")["data"] == str(folder)

    again, _ = uploads.store_training_set(archive, "cats.zip")
    assert again == "cats-2" and uploads.names("datasets") == ["cats", "cats-2"]
    metadata = _zip(webui.parent / "meta.zip", [("a.png", _png()), ("metadata.jsonl", json.dumps(
        {"file_name": "a.png", "text": "a red square"}))])
    assert "metadata.jsonl" in uploads.store_training_set(metadata, "meta.zip")[1]
    with pytest.raises(BadInput, match="no such upload"):
        uploads.folder("datasets", "../../..")
    assert "no such upload" in distill_tab.check_dataset("", "../datasets/cats")


@pytest.mark.parametrize("entry", ["../evil.png", "/tmp/evil.png", "ok/../../evil.png",
                                   "..\\evil.png", "C:/evil.png"])
def test_zip_slip_is_refused_whole(webui, tmp_path, entry):
    from bksdm_ext.webui import uploads

    archive = _zip(tmp_path / "slip.zip", _pairs() + [(entry, _png())])
    with pytest.raises(BadInput, match="points outside the zip's folder; nothing was unpacked"):
        uploads.store_training_set(archive, "slip.zip")
    assert uploads.names("datasets") == []
    assert list(uploads.area("datasets").iterdir()) == []  # no temporary folder left
    assert not list(tmp_path.rglob("evil.png")) and not Path("/tmp/evil.png").exists()


def test_zip_bombs_and_oversized_uploads_are_refused(webui, tmp_path):
    from modules import shared

    from bksdm_ext.webui import uploads

    assert shared.opts.set("bksdm_upload_limit_mb", 1)
    # 8 MB of zeros packs into a few kB: the unpacked size counts.
    bomb = _zip(tmp_path / "bomb.zip", _pairs() + [("img0.caption", b"\0" * (8 << 20))])
    assert bomb.stat().st_size < 100000
    with pytest.raises(BadInput, match="over the 1 MB upload limit"):
        uploads.store_training_set(bomb, "bomb.zip")
    big = tmp_path / "big.png"
    Image.effect_noise((700, 700), 64).convert("RGB").save(big)  # ~1.4 MB of noise
    with pytest.raises(BadInput, match="over the 1 MB upload limit"):
        uploads.store_photos([(big, "big.png")])
    assert uploads.names("datasets") == uploads.names("instances") == []
    for kind in ("datasets", "instances"):
        assert list(uploads.area(kind).iterdir()) == []  # no temporary folder left

    for data, problem in ((b"not a zip", "not a .zip file"),
                          (_zip(tmp_path / "x.zip", [("notes.md", "hello")]).read_bytes(),
                           "no captioned images")):
        (tmp_path / "bad.zip").write_bytes(data)
        with pytest.raises(BadInput, match=problem):
            uploads.store_training_set(tmp_path / "bad.zip", "bad.zip")
    assert uploads.names("datasets") == []


def test_uploaded_photos_make_an_instance_folder(webui, tmp_path):
    from bksdm_ext.webui import data_picker, uploads

    photos = []
    for i, color in enumerate(("red", "blue", "red")):
        folder = tmp_path / ("tmp%d" % i)  # gradio keeps each upload in a folder of its own
        folder.mkdir()
        (folder / "dog.png").write_bytes(_png(color))
        photos.append((folder / "dog.png", "dog.png"))
    (tmp_path / "notes.txt").write_text("not a photo")
    with pytest.raises(BadInput, match="notes.txt: not a readable"):
        uploads.store_photos(photos + [(tmp_path / "notes.txt", "notes.txt")])
    assert uploads.names("instances") == []

    name = uploads.store_photos(photos)
    folder = uploads.folder("instances", name)
    assert name == "dog" and sorted(p.name for p in folder.iterdir()) == [
        "dog-2.png", "dog-3.png", "dog.png"]
    assert data_picker.chosen_folder(data_picker.PHOTOS, "", name, "Instances") == folder
    assert "none given" in _dreambooth()
    assert _no_jobs()


# -- issue 22: files from gradio components, image decoders and sizes, links ---------------


def _event(page, elem_id: str, trigger: str) -> int:
    block = next(b for b in page.blocks.values() if getattr(b, "elem_id", None) == elem_id)
    return next(i for i, d in enumerate(page.dependencies)
                if d["targets"] == [block._id] and d["trigger"] == trigger)


def _send(page, elem_id: str, trigger: str, inputs):
    """What a client's request for the event gets, through gradio 3.41's own process_api
    (the components' preprocessing included).  On a loop of its own, left as it was:
    Python 3.8's asyncio.run leaves the main thread without one, and the next gradio page
    built in this process could not make its locks."""
    import asyncio

    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(page.process_api(
            fn_index=_event(page, elem_id, trigger), inputs=inputs, state={}))["data"]
    finally:
        loop.close()


def _sent_file(path) -> dict:
    """A file entry as the page sends it after uploading: a server path."""
    return {"name": str(path), "data": None, "is_file": True, "size": 10}


def test_a_file_entry_naming_a_server_path_is_refused(exposed, tmp_path, monkeypatch):
    """gradio 3.41 copies whatever server file a client's {"name": path, "is_file": true}
    names; the Compare prompt file and the upload buttons take only what was uploaded
    into gradio's upload folder (issue 22, item 1)."""
    import base64

    from bksdm_ext.webui import a1111, checkpoints, compare_tab, ui, uploads

    gradio_uploads = tmp_path / "gradio-uploads"  # where gradio's /upload route saves
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(gradio_uploads))
    page = ui.on_ui_tabs()[0][0]
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET + "\n")
    server_zip = _zip(tmp_path / "server.zip", _pairs())
    server_photo = tmp_path / "photo.png"
    server_photo.write_bytes(_png())
    (gradio_uploads / "token").mkdir(parents=True)
    (gradio_uploads / "token" / "link.txt").symlink_to(secret)
    form = [checkpoints.titles(), compare_tab.SOURCES[1]]
    names = [str(secret), str(gradio_uploads / ".." / "secret.txt"),
             os.path.relpath(str(secret)), str(gradio_uploads / "token" / "link.txt"),
             str(gradio_uploads / "token")]
    for name in names:
        text = _send(page, "bksdm_compare_job", "click",
                     form + [_sent_file(name), "", 4, 1, 2, 32, 7, ""])[0]
        assert "bksdm-error" in text and "not a file uploaded from this page" in text, text
        assert SECRET not in text
    assert _no_jobs() and not list(a1111.data_dir().rglob("prompts-*.txt"))
    assert [p.name for p in gradio_uploads.rglob("*")] == ["token", "link.txt"]  # no copies

    _, shown = _send(page, "bksdm_distill_folder_upload", "upload", [_sent_file(server_zip)])
    assert "not a file uploaded from this page" in shown
    _, shown = _send(page, "bksdm_db_folder_upload", "upload",
                     [[_sent_file(server_photo), _sent_file(secret)]])
    assert "not a file uploaded from this page" in shown
    assert uploads.names("datasets") == uploads.names("instances") == []

    # What the page really sends passes: a file in gradio's upload folder, or inline bytes.
    (gradio_uploads / "abc").mkdir()
    uploaded = Path(shutil.copyfile(str(server_zip), str(gradio_uploads / "abc" / "cats.zip")))
    _, shown = _send(page, "bksdm_distill_folder_upload", "upload", [_sent_file(uploaded)])
    assert "cats: stored, 3 images with captions" in shown, shown
    inline = "data:application/zip;base64," + base64.b64encode(server_zip.read_bytes()).decode()
    _, shown = _send(page, "bksdm_distill_folder_upload", "upload",
                     [{"name": "dogs.zip", "data": inline, "is_file": False}])
    assert "dogs: stored" in shown, shown
    assert uploads.names("datasets") == ["cats", "dogs"]


EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"
       b"0 0 moveto 10 10 lineto stroke\nshowpage\n%%EOF\n")


def test_a_postscript_file_named_png_never_runs_ghostscript(webui, tmp_path, monkeypatch):
    """PIL renders EPS with Ghostscript: a "photo" holding EPS must be refused unopened
    wherever user images are read (issue 22, item 2)."""
    from bksdm_ext.scores import fid
    from bksdm_ext.train.dataset import load_image
    from bksdm_ext.train.dreambooth import instance_images
    from bksdm_ext.webui import uploads

    called = tmp_path / "ghostscript-ran"
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "gs").write_text("#!/bin/sh\ntouch '%s'\nexit 1\n" % called)
    (tools / "gs").chmod(0o755)
    monkeypatch.setenv("PATH", "%s:%s" % (tools, os.environ["PATH"]))
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "dog.png").write_bytes(EPS)

    with pytest.raises(BadInput, match="dog.png: not a readable"):
        uploads.store_photos([(photos / "dog.png", "dog.png")])
    with pytest.raises(BadInput, match="dog.png: not a readable image"):
        instance_images(photos)
    with pytest.raises(BadInput, match="dog.png: cannot be decoded"):
        load_image(photos / "dog.png", 8)
    name, summary = uploads.store_training_set(
        _zip(tmp_path / "set.zip", _pairs() + [("dog.png", EPS), ("dog.txt", "a dog")]), "set.zip")
    assert "3 images with captions" in summary and "1 unreadable" in summary
    skipped = []
    assert list(fid._readable([photos / "dog.png"], skipped)) == [] and len(skipped) == 1
    assert not called.exists()


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header says width x height, with one row of data: what a bomb declares,
    without the minute it would take to make a real one."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\0" * (1 + 3 * width))) + chunk(b"IEND", b""))


def test_image_sizes_are_read_from_the_headers_and_capped(webui, tmp_path):
    """Each image at most MAX_PIXELS, an upload's images together at most
    MAX_UPLOAD_PIXELS, both from the headers before anything is decoded (item 3)."""
    from bksdm_ext.model.image_files import MAX_PIXELS
    from bksdm_ext.webui import distill_tab, uploads

    assert MAX_PIXELS == 50_000_000 and uploads.MAX_UPLOAD_PIXELS == 10 ** 10
    big = tmp_path / "big.png"
    big.write_bytes(_png_header(8000, 8000))
    with pytest.raises(BadInput, match=r"big.png: 8000x8000 pixels \(64.0 megapixels\), over "
                                       r"the 50 megapixels an image may have; downscale it"):
        uploads.store_photos([(big, "big.png")])
    name, summary = uploads.store_training_set(
        _zip(tmp_path / "one.zip", _pairs() + [("big.png", big.read_bytes()),
                                               ("big.txt", "a big one")]), "one.zip")
    assert "3 images with captions" in summary and "1 unreadable" in summary
    checked = distill_tab.check_dataset("", name)
    assert "big.png: 8000x8000 pixels (64.0 megapixels), over the 50" in checked

    # 205 images of 49 megapixels: each fits, together they hold 10.05 gigapixels.
    header = _png_header(7000, 7000)
    many = [("%03d.png" % i, header) for i in range(205)] + [
        ("%03d.txt" % i, "a caption") for i in range(205)]
    with pytest.raises(BadInput, match="many.zip: the images hold more than 10 gigapixels, "
                                       "over the 10 an upload may have; nothing was stored"):
        uploads.store_training_set(_zip(tmp_path / "many.zip", many), "many.zip")
    assert uploads.names("datasets") == ["one"]


PEAK_SCRIPT = """
import resource, sys
from bksdm_ext.train.dataset import scan_dataset
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
scan = scan_dataset(sys.argv[1])
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print("RESULT", (after - before) // 1024, len(scan.unreadable), len(scan.examples))
"""


@pytest.mark.slow
def test_tiffs_named_png_are_not_decoded(tmp_path):
    """The issue's zip: six 8000x8000 deflated TIFFs named .png took a WebUI from 0.65 to
    1.4 GB, decoded in parallel by the dataset check; TIFF is no format a dataset reads,
    so they are refused unopened (item 3)."""
    import subprocess
    import sys

    data = make_dataset(tmp_path / "data", n=2)
    tiff = io.BytesIO()
    Image.new("RGB", (8000, 8000)).save(tiff, "TIFF", compression="tiff_deflate")
    entries = [("bomb%d.png" % i, tiff.getvalue()) for i in range(6)]
    assert _zip(tmp_path / "bombs.zip", entries).stat().st_size < 100_000
    for i in range(6):
        (data / ("bomb%d.png" % i)).write_bytes(tiff.getvalue())
        (data / ("bomb%d.txt" % i)).write_text("a bomb")
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(data)], cwd=str(root),
                          capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=str(root)))
    assert done.returncode == 0, done.stderr[-3000:]
    grown_mb, unreadable, examples = map(int, done.stdout.split("RESULT")[1].split())
    assert grown_mb < 100, "the check took %d MB more" % grown_mb
    assert (unreadable, examples) == (6, 2)


def test_at_most_the_decode_budget_of_pixels_is_open_at_once(tmp_path):
    """Two images at the pixel limit may be decoded at once in the process, whoever asks;
    a third waits (item 3)."""
    import threading
    import time

    from bksdm_ext.model.image_files import DECODE_BUDGET, DECODE_THREADS, MAX_PIXELS, open_image

    assert DECODE_BUDGET == 2 * MAX_PIXELS and DECODE_THREADS == 8
    path = tmp_path / "large.png"
    path.write_bytes(_png_header(7000, 7000))  # 49 megapixels
    open_now, most = [0], [0]
    lock = threading.Lock()

    def hold():
        with open_image(path):
            with lock:
                open_now[0] += 1
                most[0] = max(most[0], open_now[0])
            time.sleep(0.2)
            with lock:
                open_now[0] -= 1

    threads = [threading.Thread(target=hold) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most[0] == 2


def test_a_photo_named_dots_png_keeps_its_extension(webui, tmp_path):
    """A photo named "...png" was stored as "png" and then not seen (item 14)."""
    from bksdm_ext.train.dreambooth import instance_images
    from bksdm_ext.webui import uploads

    (tmp_path / "p.png").write_bytes(_png())
    name = uploads.store_photos([(tmp_path / "p.png", "...png"), (tmp_path / "p.png", "dog.png")])
    folder = uploads.folder("instances", name)
    assert sorted(p.name for p in folder.iterdir()) == ["dog.png", "upload.png"]
    assert len(instance_images(folder)) == 2


def test_nothing_to_train_on_names_the_upload(webui, tmp_path):
    """Not the hidden folder it was unpacked into (item 14)."""
    from bksdm_ext.webui import uploads

    archive = _zip(tmp_path / "notes.zip", [("img.png", _png()), ("other.txt", "no caption")])
    with pytest.raises(BadInput) as refused:
        uploads.store_training_set(archive, "notes.zip")
    assert str(refused.value).startswith("notes.zip: no captioned images to train on")
    assert ".incoming" not in str(refused.value)


def test_the_prompts_field_is_checked_before_a_job_is_queued(webui):
    """A missing or empty prompt file is refused at once, not in the job's log (item 7)."""
    from bksdm_ext.webui import a1111

    area = a1111.data_dir()
    assert "no such file or folder" in _distill(source=1, prompts=str(area / "missing.txt"))
    (area / "empty.txt").write_text("\n\n")
    assert "holds no prompts" in _distill(source=1, prompts=str(area / "empty.txt"))
    (area / "notes.md").write_text("a cat\n")
    assert "not a prompt file" in _distill(source=1, prompts=str(area / "notes.md"))
    assert _no_jobs()


def test_links_inside_a_dataset_are_not_followed_out_of_it(webui, outside):
    """metadata.jsonl → linkdir/x.png with linkdir a symlink out of the folder: skipped,
    and an outside file that exists reads the same as one that does not (item 7)."""
    from bksdm_ext.webui import a1111, distill_tab

    data = make_dataset(a1111.data_dir() / "datasets" / "linked", n=1)
    (data / "linkdir").symlink_to(outside, target_is_directory=True)
    (data / "linked.png").symlink_to(outside / "img01.png")  # a pair whose image leads out
    (data / "linked.txt").write_text("a linked image")
    (data / "img01.png").write_bytes(_png())
    (data / "img01.txt").symlink_to(outside.parent / "secret.txt")  # its caption leads out
    checked = distill_tab.check_dataset(str(data))
    assert "1 image with captions (pairs); 2 outside the folder" in checked, checked
    assert "linked.png (a link): outside the dataset folder" in checked
    assert "img01.txt (a link): outside the dataset folder" in checked

    rows = [{"file_name": "img00.png", "text": "inside"},
            {"file_name": "linkdir/img00.png", "text": "exists outside"},
            {"file_name": "linkdir/gone.png", "text": "does not exist outside"}]
    (data / "metadata.jsonl").write_text("\n".join(json.dumps(row) for row in rows))
    checked = distill_tab.check_dataset(str(data))
    assert "1 image with captions (metadata.jsonl)" in checked, checked
    there = [line for line in checked.split("; ") if "linkdir" in line]
    assert len(there) == 2 and there[0].replace("img00", "X").replace("line 2", "line N") == \
        there[1].replace("gone", "X").replace("line 3", "line N")
    (data / "metadata.jsonl").unlink()
    (data / "metadata.jsonl").symlink_to(outside.parent / "secret.txt")
    checked = distill_tab.check_dataset(str(data))
    assert "metadata.jsonl (a link): outside the dataset folder" in checked and "(pairs)" in checked
    assert SECRET not in checked


def test_a_job_refuses_a_data_path_swapped_for_a_link_after_the_check(webui, outside, tmp_path,
                                                                      capsys):
    """The page hands a job the resolved path it checked; when a link stands there by the
    time the job starts, the job refuses it instead of following it (item 7)."""
    from bksdm_ext.cli import main
    from bksdm_ext.jobs.arguments import command_line
    from bksdm_ext.webui import a1111, distill_tab

    data = make_dataset(a1111.data_dir() / "datasets" / "mine", n=2)
    values = distill_tab.data_flags(distill_tab.SOURCES[0], str(data), "", 0, "")
    argv = command_line(values)
    assert values["data"] == str(data) and "--resolved-paths" in argv
    data.rename(data.with_name("moved"))
    data.symlink_to(outside, target_is_directory=True)  # swapped before the job starts

    teacher = write_teacher(tmp_path, TINY["sd-v1"])
    for command in (["distill", "--teacher", str(teacher), "--out", str(tmp_path / "run")] + argv,
                    ["dreambooth", "--model", str(teacher), "--instance-dir", str(data),
                     "--instance-prompt", "a sks dog", "--out", str(tmp_path / "db"),
                     "--resolved-paths"]):
        assert main(command) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "a link now stands in the path that was " \
                                              "checked; nothing was read from it" in err, err
        assert str(outside) not in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "db").exists()


@pytest.mark.parametrize("bad, problem", [("a\0b", "the path contains a NUL byte"),
                                          ("x" * 300, "is 300 bytes long, over the 255")])
def test_path_text_no_file_system_takes_is_one_message(webui, bad, problem):
    """NUL bytes and names over 255 bytes in the path fields (item 6)."""
    from bksdm_ext.webui import a1111, distill_tab

    typed = str(a1111.data_dir() / bad)
    checked = distill_tab.check_dataset(typed)
    assert "bksdm-error" in checked and "Image folder: " in checked, checked
    assert problem in checked
    for text in (_distill(typed), _dreambooth(typed), _distill(source=1, prompts=typed)):
        assert "bksdm-error" in text and problem in text, text
    assert _no_jobs()


def test_names_no_file_system_takes_in_uploads_and_the_convert_tab(webui, tmp_path):
    """A zip entry, a photo name or a checkpoint name over 255 bytes, and a zip holding
    x.png and x.png/y.txt: one message each, nothing stored (item 6)."""
    from webui_env import load

    from bksdm_ext.webui import convert_tab, uploads

    long = "x" * 300
    for entries, problem in (
            (_pairs() + [(long + ".png", _png())], "is 304 bytes long, over the 255"),
            (_pairs() + [("img0.png/y.txt", "a caption")],
             "img0.png is both a file and a folder in the zip; nothing was unpacked")):
        with pytest.raises(BadInput, match=problem):
            uploads.store_training_set(_zip(tmp_path / "bad.zip", entries), "bad.zip")
    assert uploads.names("datasets") == [] and list(uploads.area("datasets").iterdir()) == []

    (tmp_path / "p.png").write_bytes(_png())
    name = uploads.store_photos([(tmp_path / "p.png", long + ".png"),
                                 (tmp_path / "p.png", "nul\0.png")])
    stored = sorted(p.name for p in uploads.folder("instances", name).iterdir())
    assert stored == ["nul_.png", "x" * (255 - 16 - 4) + ".png"]  # room for "-2"

    load(webui / "teacher.safetensors")
    title, _, text = convert_tab.convert("task(1)", "Small", long, "fp16", False)
    assert title == "" and "bksdm-error" in text and "New checkpoint name" in text
    assert "is 312 bytes long" in text, text
    assert sorted(p.name for p in webui.iterdir()) == ["teacher.safetensors", "teacher.yaml"]
