"""Damaged inputs, full or read-only disks and racing conversions, on real files through the
real command line: one line, exit 2, nothing half-written left behind (issue 13, items 6-9)."""
import contextlib
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bksdm_ext.cli import main
from tiny import TINY, teacher_state, write_teacher


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.err.strip()


def assert_one_line_refusal(capsys, tmp_path: Path, *argv, words=()):
    code, err = run_cli(capsys, *argv)
    assert code == 2, err
    assert "Traceback" not in err, err
    prefix = "bksdm %s: error: " % argv[0]
    assert prefix in err, err
    err = err[err.rindex(prefix):]  # after any progress bar
    assert len(err.splitlines()) == 1, err
    for word in words:
        assert word in err, err
    return err


# -- item 9: malformed safetensors headers, random .ckpt, the allowed placeholder ---------


def _safetensors(path: Path, header, data: bytes = b"") -> Path:
    encoded = header if isinstance(header, bytes) else json.dumps(header).encode("utf-8")
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)
    return path


def _f32(shape, begin):
    count = 1
    for n in shape:
        count *= n
    return {"dtype": "F32", "shape": list(shape), "data_offsets": [begin, begin + 4 * count]}


MALFORMED = {
    "overlapping": ({"a": _f32([4], 0), "b": _f32([4], 8)}, 24, "overlaps"),
    "gap": ({"a": _f32([2], 0), "b": _f32([2], 16)}, 24, "gap"),
    "reversed offsets": ({"a": {"dtype": "F32", "shape": [0], "data_offsets": [8, 0]}}, 8,
                         "describes tensor 'a' wrongly"),
    "shape does not match bytes": ({"a": {"dtype": "F32", "shape": [3, 3],
                                          "data_offsets": [0, 16]}}, 16,
                                   "describes tensor 'a' wrongly"),
    "negative shape": ({"a": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}}, 16,
                       "describes tensor 'a' wrongly"),
    "list header": ([1, 2, 3], 0, "not a JSON object"),
    "deeply nested": (b"[" * 100000 + b"]" * 100000, 0, "not a JSON object"),
    "metadata not texts": ({"__metadata__": {"x": [1]}, "a": _f32([1], 0)}, 4, "__metadata__"),
    "trailing bytes": ({"a": _f32([1], 0)}, 12, "follow its last tensor"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_safetensors_headers_are_one_line(tmp_path, capsys, case):
    header, data_size, words = MALFORMED[case]
    bad = _safetensors(tmp_path / "bad.safetensors", header, bytes(data_size))
    for command in (["info", bad], ["convert", bad, "--arch", "small", "--out",
                                    tmp_path / "s.safetensors"]):
        assert_one_line_refusal(capsys, tmp_path, *command, words=(str(bad), words))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.safetensors"]


def test_a_random_bytes_ckpt_is_not_a_checkpoint(tmp_path, capsys):
    bad = tmp_path / "random.ckpt"
    bad.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(1),
                                  dtype=torch.uint8).numpy().tobytes())
    err = assert_one_line_refusal(capsys, tmp_path, "info", bad,
                                  words=(str(bad), "not a checkpoint",
                                         "damaged or not a PyTorch file"))
    assert "run code" not in err


class ModelCheckpoint:
    """Pickled as Lightning's callback built with arguments (its name is swapped in below)."""

    def __reduce__(self):
        return (ModelCheckpoint, ("checkpoints/", "val_loss"))


def test_the_allowed_lightning_callback_built_with_arguments_loads(tmp_path, capsys):
    state = teacher_state(TINY["sd-v1"])
    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": state, "callbacks": {"cb": ModelCheckpoint()}}, str(path),
               _use_new_zipfile_serialization=False, pickle_protocol=2)
    own = ("c%s\nModelCheckpoint\n" % __name__).encode()
    data = path.read_bytes()
    assert data.count(own) == 1
    path.write_bytes(data.replace(
        own, b"cpytorch_lightning.callbacks.model_checkpoint\nModelCheckpoint\n"))
    code, err = run_cli(capsys, "info", path, "--json")
    assert code == 0, err


# -- item 8: two conversions to the same new name -----------------------------------------

RACER = r"""
import os, sys, time
from pathlib import Path
from bksdm_ext.errors import BadInput
from bksdm_ext.model.convert import convert_checkpoint

source, out, arch, barrier, count = sys.argv[1:]

def all_writing(done, total):
    # every racer has passed the up-front name check and is writing before any finishes
    if done == 1:
        Path(barrier, str(os.getpid())).touch()
        deadline = time.time() + 120
        while len(os.listdir(barrier)) < int(count) and time.time() < deadline:
            time.sleep(0.01)

try:
    convert_checkpoint(source, out, arch, progress=all_writing)
except BadInput as e:
    print(e, file=sys.stderr)
    sys.exit(2)
"""


@pytest.mark.slow
def test_racing_conversions_to_one_name_place_one_whole_pair(tmp_path, capsys):
    import subprocess
    import sys

    from bksdm_ext.model.safetensors_io import SafetensorsReader

    teacher = write_teacher(tmp_path, TINY["sd-v1"])
    (tmp_path / "out").mkdir()
    (tmp_path / "barrier").mkdir()
    out = tmp_path / "out" / "student.safetensors"
    arches = ["base", "small", "tiny", "mid-removed"]
    racers = [subprocess.Popen([sys.executable, "-c", RACER, str(teacher), str(out), arch,
                                str(tmp_path / "barrier"), str(len(arches))],
                               cwd=str(Path(__file__).resolve().parents[2]),
                               stderr=subprocess.PIPE, universal_newlines=True)
              for arch in arches]
    results = [(racer.wait(timeout=300), racer.stderr.read()) for racer in racers]
    assert sorted(code for code, _ in results) == [0, 2, 2, 2], results
    for code, err in results:
        if code == 2:
            assert "already exists" in err and str(out) in err, err
    assert sorted(p.name for p in out.parent.iterdir()) == ["student.safetensors", "student.yaml"]
    # The yaml is the one the weights' own run wrote.
    winner = SafetensorsReader(out).metadata["bksdm.preset"]
    alone = tmp_path / "alone.safetensors"
    assert run_cli(capsys, "convert", teacher, "--arch", winner, "--out", alone)[0] == 0
    assert out.with_suffix(".yaml").read_text() == alone.with_suffix(".yaml").read_text()


def test_a_pair_is_placed_whole_or_not_at_all(tmp_path):
    from bksdm_ext.errors import BadInput
    from bksdm_ext.model.staging import staged

    weights, config = tmp_path / "s.safetensors", tmp_path / "s.yaml"
    with pytest.raises(BadInput, match="s.yaml already exists"):
        with staged([weights, config]) as (weights_tmp, config_tmp):
            weights_tmp.write_bytes(b"ours")
            config_tmp.write_text("ours")
            config.write_text("theirs")  # another run placed its yaml meanwhile
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]
    assert config.read_text() == "theirs"


# -- item 6: damaged training images and captions ----------------------------------------

DISTILL = ["--arch", "small", "--steps", "1", "--batch-size", "2", "--grad-accum", "1",
           "--resolution", "32", "--mixed-precision", "no", "--save-every", "0",
           "--sample-every", "0", "--no-ema", "--no-gradient-checkpointing", "--log-every", "1",
           "--export-dtype", "fp32"]


def _captioned_images(folder: Path, count: int) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", (40, 40), (60 * i % 256, 90, 200)).save(folder / ("img%d.png" % i))
        (folder / ("img%d.txt" % i)).write_text("a picture number %d" % i, encoding="utf-8")
    return folder


def _truncated_jpeg(path: Path) -> Path:
    from PIL import Image

    noise = torch.randint(0, 256, (64, 64, 3), generator=torch.Generator().manual_seed(0),
                          dtype=torch.uint8).numpy()
    Image.fromarray(noise).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with Image.open(path) as opened:
        opened.verify()  # the damage that verify() cannot see
    return path


def test_a_truncated_jpeg_and_a_non_utf8_caption_are_skipped_and_reported(teacher, tmp_path,
                                                                        capsys):
    from bksdm_ext.jobs.events import read_events

    data = _captioned_images(tmp_path / "data", 3)
    cut = _truncated_jpeg(data / "cut.jpg")
    (data / "cut.txt").write_text("a damaged photo", encoding="utf-8")
    (data / "img2.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    out = tmp_path / "run"
    code, err = run_cli(capsys, "distill", "--teacher", teacher, "--data", data, "--out", out,
                        *DISTILL)
    assert code == 0, err
    start = next(e for e in read_events(out / "events.jsonl") if e["event"] == "start")
    assert start["dataset"] == ("2 images with captions (pairs); 1 unreadable, "
                                "1 with a caption that is not UTF-8")
    assert start["problems"] == [
        "%s: not a readable image; replace or remove it" % cut,
        "%s: not UTF-8 text, so its image is skipped; save it with UTF-8 encoding"
        % (data / "img2.txt")]
    cache = next(e for e in read_events(out / "events.jsonl") if e["event"] == "cache")
    assert cache["examples"] == 2


def test_16_bit_greyscale_png_is_scaled_not_white(tmp_path):
    from PIL import Image

    from bksdm_ext.train.dataset import load_image

    levels = torch.full((16, 16), 16448, dtype=torch.int32)  # 25% grey in 16 bits (64 * 257)
    levels[:, 8:] = 65535
    path = tmp_path / "grey16.png"
    Image.fromarray(levels.numpy().astype("uint16")).save(path)
    with Image.open(path) as opened:
        assert opened.mode in ("I", "I;16")  # really 16 bits on disk
    pixels = load_image(path, 16)
    assert torch.allclose(pixels[:, :, :8], torch.tensor(64 / 127.5 - 1.0))
    assert torch.allclose(pixels[:, :, 8:], torch.tensor(1.0))


def test_the_scan_decodes_images_so_a_truncated_jpeg_is_caught_before_training(tmp_path):
    from bksdm_ext.train.dataset import scan_dataset

    data = _captioned_images(tmp_path / "data", 1)
    cut = _truncated_jpeg(data / "cut.jpg")
    (data / "cut.txt").write_text("a damaged photo", encoding="utf-8")
    scan = scan_dataset(data)
    assert scan.unreadable == [cut] and [e.image.name for e in scan.examples] == ["img0.png"]


# -- item 7: full, read-only and size-limited disks ---------------------------------------

ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def small_disk(folder: Path, size: int, read_only: bool = False):
    """A real filesystem of `size` bytes at `folder` (a tmpfs: needs root, as in CI)."""
    folder.mkdir(exist_ok=True)
    options = "size=%d%s" % (size, ",ro" if read_only else "")
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)]).returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("CI runs as root and must mount a tmpfs for the disk tests")
        pytest.skip("mounting a small tmpfs needs root")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=True)


def resize(disk: Path, size: int) -> None:
    subprocess.run(["mount", "-o", "remount,size=%d" % size, str(disk)], check=True)


def test_convert_to_a_disk_without_room_fails_before_writing(tmp_path, capsys, monkeypatch):
    from bksdm_ext.model import convert

    teacher = write_teacher(tmp_path, TINY["sd-v1"])
    # Before even hashing the teacher (a minute for a multi-GB one).
    monkeypatch.setattr(convert, "a1111_sha256", lambda path: pytest.fail("hashed %s" % path))
    with small_disk(tmp_path / "disk", 1024 * 1024) as disk:
        out = disk / "student.safetensors"
        assert_one_line_refusal(capsys, tmp_path, "convert", teacher, "--arch", "small",
                                "--out", out, words=(str(out), "not enough space",
                                                     "it needs 9.6 MB", "1.0 MB free",
                                                     "free some space"))
        assert list(disk.iterdir()) == []


def test_convert_to_a_read_only_disk_is_one_line(tmp_path, capsys):
    teacher = write_teacher(tmp_path, TINY["sd-v1"])
    with small_disk(tmp_path / "disk", 1024 ** 3, read_only=True) as disk:
        out = disk / "student.safetensors"
        assert_one_line_refusal(capsys, tmp_path, "convert", teacher, "--arch", "small",
                                "--out", out, words=(str(out), "Read-only file system",
                                                     "writable disk"))


def test_import_diffusers_to_a_disk_without_room_fails_before_writing(tmp_path, capsys):
    from test_diffusers_import import make_folder

    folder = tmp_path / "bk-sdm-small"
    folder.mkdir()
    make_folder(folder, TINY["sd-v1"], "small")
    with small_disk(tmp_path / "disk", 64 * 1024) as disk:
        out = disk / "imported.safetensors"
        assert_one_line_refusal(capsys, tmp_path, "import-diffusers", folder, "--out", out,
                                words=(str(out), "not enough space", "it needs"))
        assert list(disk.iterdir()) == []


@pytest.mark.slow
def test_a_file_size_limit_midway_is_one_line_and_leaves_nothing(tmp_path):
    """RLIMIT_FSIZE fails the write after its free-space check passed, as a disk filled by
    someone else meanwhile would; it needs no root."""
    resource = pytest.importorskip("resource")
    teacher = write_teacher(tmp_path, TINY["sd-v1"])
    out = tmp_path / "out" / "student.safetensors"
    out.parent.mkdir()
    limit = 2 * 1024 * 1024
    result = subprocess.run(
        [sys.executable, "-m", "bksdm_ext", "convert", str(teacher), "--arch", "small", "--out",
         str(out), "--json"], cwd=str(ROOT), stderr=subprocess.PIPE, universal_newlines=True,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "bksdm convert: error: %s: File too large; free some space or choose another folder"
        % out]
    assert list(out.parent.iterdir()) == []


def _step_events(out: Path):
    from bksdm_ext.jobs.events import read_events

    return read_events(out / "events.jsonl")


@pytest.mark.slow
def test_a_training_run_that_fills_the_disk_keeps_its_checkpoint_and_resumes(
        teacher, tmp_path, capsys, monkeypatch):
    from bksdm_ext.jobs.runs import RunPaths

    data = _captioned_images(tmp_path / "data", 2)
    settings = list(DISTILL)
    settings[settings.index("--steps") + 1] = "2"
    settings[settings.index("--save-every") + 1] = "1"
    argv = ["distill", "--teacher", teacher, "--data", data, "--keep-last", "1"] + settings
    write_checkpoint = RunPaths.write_checkpoint

    def fill_the_disk_first(paths, step, fill, keep_last, keep=None):
        if step == 2:  # others filled the disk meanwhile: 64 KB left
            resize(disk, shutil.disk_usage(str(disk)).used + 64 * 1024)
        return write_checkpoint(paths, step, fill, keep_last, keep)

    with small_disk(tmp_path / "disk", 1024 ** 3) as disk:
        out = disk / "run"
        monkeypatch.setattr(RunPaths, "write_checkpoint", fill_the_disk_first)
        err = assert_one_line_refusal(
            capsys, tmp_path, *argv, "--out", out,
            words=(str(out / "checkpoints" / "step-0000002"), "No space left on device",
                   "last good checkpoint step-0000001 is kept", "--resume"))
        events = _step_events(out)
        assert events[-1]["event"] == "error" and events[-1]["message"] in err
        assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000001"]

        monkeypatch.setattr(RunPaths, "write_checkpoint", write_checkpoint)
        resize(disk, 1024 ** 3)  # space freed
        code, err = run_cli(capsys, *argv, "--out", out, "--resume")
        assert code == 0, err
        events = _step_events(out)
        assert events[-1]["event"] == "done" and Path(events[-1]["output"]).is_file()
        assert [e["resumed_from"] for e in events if e["event"] == "start"] == [
            None, str(out / "checkpoints" / "step-0000001")]


@pytest.mark.webui
def test_the_convert_tab_says_the_disk_is_full(tmp_path):
    from webui_env import load, standin_app, start_webui

    folder = start_webui(tmp_path / "webui")  # the checkpoint folder
    try:
        with small_disk(folder, 40 * 1024 * 1024):
            from bksdm_ext.webui import convert_tab

            load(write_teacher(folder, TINY["sd-v1"]))  # 34 MB of the 40
            title, button, message = convert_tab.convert("task(1)", "Small", "student", "fp16",
                                                         False)
            assert title == "" and "bksdm-error" in message
            assert "not enough space: it needs 9.6 MB" in message
            assert sorted(p.name for p in folder.iterdir()) == ["teacher.safetensors",
                                                                "teacher.yaml"]
    finally:
        standin_app.reset(tmp_path / "after")


# -- issue 22, item 6: names no file system takes -------------------------------------------


def test_an_output_name_over_255_bytes_is_one_line(tmp_path, capsys):
    teacher = write_teacher(tmp_path, TINY["sd-v1"])
    out = tmp_path / ("s" * 300 + ".safetensors")
    assert_one_line_refusal(capsys, tmp_path, "convert", teacher, "--arch", "small", "--out",
                            out, words=("output file: the name", "is 312 bytes long",
                                        "choose a shorter name"))
    # Short enough itself, but not its temporary name: refused before anything is written.
    out = tmp_path / ("s" * 230 + ".safetensors")
    assert_one_line_refusal(capsys, tmp_path, "convert", teacher, "--arch", "small", "--out",
                            out, words=("is 242 bytes long", "kept for the temporary name"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["teacher.safetensors", "teacher.yaml"]


def test_an_input_path_with_a_name_over_255_bytes_is_one_line(tmp_path, capsys):
    teacher = write_teacher(tmp_path, TINY["sd-v1"])
    assert_one_line_refusal(capsys, tmp_path, "dreambooth", "--model", teacher,
                            "--instance-dir", tmp_path / ("d" * 300), "--instance-prompt",
                            "a sks dog", "--no-prior-preservation", "--out", tmp_path / "run",
                            words=("File name too long", "choose a shorter name"))
