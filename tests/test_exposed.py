"""A WebUI others can reach (--listen): server paths typed in the page stay inside the
allowed roots, --hide-ui-dir-config refuses them altogether, uploads are the way in (zip-slip
and zip-bomb refused), and metadata rows cannot name files outside their dataset."""
import io
import json
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
