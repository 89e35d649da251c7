"""Captioned image folders in the pairs / metadata.jsonl / metadata.csv layouts, and how
images are turned into VAE input."""
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from bksdm_ext.train.dataset import Example, load_image, scan_dataset
from bksdm_ext.errors import BadInput

RED, BLUE = (255, 0, 0), (0, 0, 255)


def write_image(path: Path, size=(20, 12), color=RED, mode="RGB", **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, **save)
    return path


def halves(path: Path, size, first=RED, second=BLUE, **save) -> Path:
    """An image whose left half is `first` and right half `second`."""
    image = Image.new("RGB", size, second)
    image.paste(first, (0, 0, size[0] // 2, size[1]))
    image.save(path, **save)
    return path


def test_pairs_layout(tmp_path):
    a = write_image(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("  a red square \n", encoding="utf-8")
    b = write_image(tmp_path / "sub" / "B.JPG")
    (tmp_path / "sub" / "B.caption").write_text("kohya caption", encoding="utf-8")
    c = write_image(tmp_path / "c.webp")  # no caption
    d = write_image(tmp_path / "d.png")
    (tmp_path / "d.txt").write_text(" \n", encoding="utf-8")  # empty caption
    e = tmp_path / "e.png"
    e.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "e.txt").write_text("broken", encoding="utf-8")
    g = write_image(tmp_path / "g.bmp")
    (tmp_path / "g.txt").write_text("\ufeffwith a BOM", encoding="utf-8")
    write_image(tmp_path / ".ipynb_checkpoints" / "a.png")
    (tmp_path / ".ipynb_checkpoints" / "a.txt").write_text("hidden", encoding="utf-8")
    (tmp_path / "notes.txt").write_text("not a caption", encoding="utf-8")

    scan = scan_dataset(str(tmp_path))
    assert scan.layout == "pairs"
    assert scan.examples == [Example(a, "a red square"), Example(g, "with a BOM"),
                             Example(b, "kohya caption")]
    assert scan.unreadable == [e]
    assert scan.missing_captions == [c, d]
    assert scan.summary() == "3 images with captions (pairs); 1 unreadable, 2 without caption"
    problems = scan.problems()
    assert problems == ["%s: not a readable image; replace or remove it" % e,
                        "%s: no caption; write its caption into c.txt" % c,
                        "%s: no caption; write its caption into d.txt" % d]
    assert scan.problems(limit=1) == problems[:1] + ["... and 2 more"]


def test_summary_without_problems(tmp_path):
    write_image(tmp_path / "only.png")
    (tmp_path / "only.txt").write_text("one", encoding="utf-8")
    scan = scan_dataset(tmp_path)
    assert scan.summary() == "1 image with captions (pairs)"
    assert scan.problems() == []


def test_metadata_jsonl(tmp_path):
    a = write_image(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("ignored: metadata wins", encoding="utf-8")
    x = write_image(tmp_path / "sub" / "x.png")
    b = write_image(tmp_path / "b.png")
    c = write_image(tmp_path / "c.png")
    rows = [{"file_name": "sub/x.png", "text": "x"}, {"file_name": "a.png", "text": " a "},
            {"file_name": "gone.png", "text": "gone"}, {"file_name": "b.png"}]
    (tmp_path / "metadata.jsonl").write_text(
        "\n".join(json.dumps(r) for r in rows[:2]) + "\n\n"
        + "\n".join(json.dumps(r) for r in rows[2:]) + "\n", encoding="utf-8")

    scan = scan_dataset(tmp_path)
    assert scan.layout == "metadata.jsonl"
    assert scan.examples == [Example(a, "a"), Example(x, "x")]
    assert scan.unreadable == [tmp_path / "gone.png"]
    assert scan.missing_captions == [b, c]
    assert scan.problems() == [
        "%s: no such file, but metadata.jsonl lists it" % (tmp_path / "gone.png"),
        "%s: no caption; add a row for it to metadata.jsonl" % b,
        "%s: no caption; add a row for it to metadata.jsonl" % c,
    ]


def test_metadata_csv(tmp_path):
    a = write_image(tmp_path / "imgs" / "a.png")
    b = write_image(tmp_path / "imgs" / "b.png")
    (tmp_path / "metadata.csv").write_text(
        'file_name,text\nimgs/b.png,"a cat, sitting"\nimgs/a.png,"two\nlines"\n',
        encoding="utf-8")
    scan = scan_dataset(tmp_path)
    assert scan.layout == "metadata.csv"
    assert scan.examples == [Example(a, "two\nlines"), Example(b, "a cat, sitting")]


def test_broken_metadata_is_bad_input(tmp_path):
    write_image(tmp_path / "a.png")
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "a"}\n{oops\n',
                                             encoding="utf-8")
    with pytest.raises(BadInput, match=r"metadata.jsonl, line 2: not valid JSON"):
        scan_dataset(tmp_path)
    (tmp_path / "metadata.jsonl").write_text('{"text": "a"}\n', encoding="utf-8")
    with pytest.raises(BadInput, match=r'line 1: no "file_name"'):
        scan_dataset(tmp_path)
    (tmp_path / "metadata.jsonl").unlink()
    (tmp_path / "metadata.csv").write_text("image,caption\na.png,a\n", encoding="utf-8")
    with pytest.raises(BadInput, match="columns image, caption; it needs file_name and text"):
        scan_dataset(tmp_path)


def test_caption_not_utf8_skips_its_image(tmp_path):
    write_image(tmp_path / "a.png")
    (tmp_path / "a.txt").write_bytes("café".encode("cp1252"))
    with pytest.raises(BadInput, match=r"1 caption file not UTF-8 text, first .*a\.txt"):
        scan_dataset(tmp_path)


def test_nothing_usable_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match="no such folder"):
        scan_dataset(tmp_path / "missing")
    with pytest.raises(BadInput, match="found no .png.*same name beside each image"):
        scan_dataset(tmp_path)
    write_image(tmp_path / "a.png")
    write_image(tmp_path / "b.png")
    with pytest.raises(BadInput) as error:
        scan_dataset(tmp_path)
    message = str(error.value)
    assert str(tmp_path) in message
    assert "of 2 images, 0 unreadable and 2 without caption" in message
    assert "metadata.jsonl" in message


def test_load_image_resizes_shorter_edge_and_center_crops(tmp_path):
    wide = load_image(halves(tmp_path / "wide.png", (40, 20)), 16)
    assert wide.shape == (3, 16, 16) and wide.dtype == torch.float32
    assert wide.min() >= -1 and wide.max() <= 1
    assert torch.allclose(wide[:, 8, 0], torch.tensor([1.0, -1.0, -1.0]))  # red left
    assert torch.allclose(wide[:, 8, 15], torch.tensor([-1.0, -1.0, 1.0]))  # blue right
    flipped = load_image(tmp_path / "wide.png", 16, flip=True)
    assert torch.equal(flipped, wide.flip(-1))

    tall = load_image(halves(tmp_path / "tall.png", (10, 30)), 20)
    assert tall.shape == (3, 20, 20)
    assert torch.allclose(tall[:, 0, 0], torch.tensor([1.0, -1.0, -1.0]))


def test_load_image_colour_modes_and_orientation(tmp_path):
    transparent = write_image(tmp_path / "t.png", color=(0, 0, 0, 0), mode="RGBA")
    assert torch.equal(load_image(transparent, 8), torch.ones(3, 8, 8))
    grey = load_image(write_image(tmp_path / "g.png", color=128, mode="L"), 8)
    assert grey.shape == (3, 8, 8) and torch.equal(grey[0], grey[2])

    # Stored 20x10 with red left; EXIF orientation 6 shows it turned clockwise: red on top.
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = load_image(halves(tmp_path / "r.png", (20, 10), exif=exif), 10)
    assert torch.allclose(rotated[:, 0, 5], torch.tensor([1.0, -1.0, -1.0]))
    assert torch.allclose(rotated[:, 9, 5], torch.tensor([-1.0, -1.0, 1.0]))


def test_load_image_damaged_file_is_bad_input(tmp_path):
    path = tmp_path / "bad.jpg"
    path.write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(BadInput, match="bad.jpg: cannot be decoded"):
        load_image(path, 8)
