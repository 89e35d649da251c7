"""Damaged checkpoint files, and things that are not files, given as checkpoints (issue 22
items 4, 13 and 14, and the fuzzed safetensors headers): the command line answers in one
line with exit 2; the WebUI leaves such a file out of its lists, names it, and its page
still builds."""
import json
import os
import random
import re
import struct
from pathlib import Path

import pytest
import torch

from test_faults import _safetensors, assert_one_line_refusal, run_cli
from bksdm_ext.errors import BadInput
from tiny import TEXT_KEY, TINY, teacher_state, write_teacher
from webui_env import load, standin_app, start_webui

# -- item 4: one damaged file in the checkpoint folder --------------------------------

DTYPE_IN_A_LIST = {"a": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}


def test_a_damaged_file_in_the_checkpoint_folder_is_listed_as_unreadable(tmp_path, capsys):
    folder = start_webui(tmp_path / "webui")
    try:
        from modules import script_callbacks, sd_models

        teacher = write_teacher(folder, TINY["sd-v1"])
        bad = _safetensors(folder / "bad.safetensors", DTYPE_IN_A_LIST, bytes(4))
        sd_models.list_models()
        from bksdm_ext.webui import checkpoints, convert_tab

        assert checkpoints.titles() == ["teacher.safetensors"]
        assert checkpoints.unreadable() == [
            "bad.safetensors: the .safetensors header describes tensor 'a' wrongly (unknown "
            "dtype, bad shape or offsets, or a byte count that does not match its shape); "
            "download or copy it again"]
        assert "bad.safetensors is left out of the BK-SDM lists" in capsys.readouterr().out
        tabs = script_callbacks.ui_tabs_callback()  # the whole BK-SDM page builds
        assert [title for _, title, _ in tabs] == ["BK-SDM"]
        load(teacher)
        summary = convert_tab.loaded_summary()
        assert "Not in the BK-SDM lists: bad.safetensors: the .safetensors header" in summary
        assert "**Loaded:** teacher.safetensors" in summary
    finally:
        standin_app.reset(tmp_path / "after")
    for command in (["info", bad], ["convert", bad, "--arch", "small", "--out",
                                    tmp_path / "s.safetensors"]):
        assert_one_line_refusal(capsys, tmp_path, *command,
                                words=(str(bad), "describes tensor 'a' wrongly"))



def test_a_header_length_past_the_librarys_limit_is_refused_before_it_is_read(tmp_path, capsys):
    big = tmp_path / "big.safetensors"
    with open(big, "wb") as f:  # sparse: 100 MB of "header" the reader must not take in
        f.write(struct.pack("<Q", 100_000_001))
        f.truncate(8 + 100_000_001)
    assert_one_line_refusal(capsys, tmp_path, "info", big,
                            words=(str(big), "more than the 100000000"))


def test_an_empty_tensor_with_a_dimension_past_int64_is_a_damaged_header(tmp_path, capsys):
    teacher = write_teacher(tmp_path, TINY["sd-v1"])
    header, data = _header(teacher)
    header["extra"] = {"dtype": "F32", "shape": [0, 2 ** 64], "data_offsets": [data, data]}
    encoded = json.dumps(header).encode("utf-8")
    damaged = tmp_path / "damaged.safetensors"
    with open(teacher, "rb") as source, open(damaged, "wb") as f:
        source.seek(8 + struct.unpack("<Q", source.read(8))[0])
        f.write(struct.pack("<Q", len(encoded)) + encoded + source.read())
    assert_one_line_refusal(capsys, tmp_path, "convert", damaged, "--arch", "small", "--out",
                            tmp_path / "s.safetensors", words=("describes tensor 'extra' wrongly",))


@pytest.mark.parametrize("yaml_text, words", [
    ("model: {params: 3}", "model.params is not a section"),
    ("model: {params: {unet_config: [1]}}", "unet_config or its params is not a section"),
    ("model: {params: {unet_config: {params: ab}}}", "unet_config or its params is not a section"),
    ("model: {params: {image_size: x}}", "image_size is not a positive whole number"),
    ("model: {params: {parameterization: [v]}}", "parameterization is neither eps nor v"),
    ("model: {params: {unet_config: {params: {num_head_channels: abc}}}}",
     "num_head_channels = 'abc', not a positive whole number"),
])
def test_a_damaged_yaml_beside_the_checkpoint_is_one_line(tmp_path, capsys, yaml_text, words):
    teacher = write_teacher(tmp_path, TINY["sd-v1"], with_yaml=False)
    teacher.with_suffix(".yaml").write_text(yaml_text)
    for command in (["info", teacher], ["convert", teacher, "--arch", "small", "--out",
                                        tmp_path / "s.safetensors"]):
        assert_one_line_refusal(capsys, tmp_path, *command, words=(teacher.stem, words))


def _header(path: Path):
    """(header, bytes of tensor data) of a .safetensors file."""
    with open(path, "rb") as f:
        length = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(length)), path.stat().st_size - 8 - length

# -- fuzzed safetensors headers ------------------------------------------------------

FUZZ_CASES = 320
JUNK = (None, True, False, 0, -1, 3, 2 ** 64, 10 ** 30, 1.5, float("1e308"), "", "F32", "F8_E4M3",
        [], ["F32"], [1, [2]], [-4], [0, 2 ** 70], [1.0, 2.0], {}, {"dtype": "F32"}, "x" * 300)
# The tensors whose shapes tell the U-Net's layout: damage there reaches the detection.
READ_BY_DETECT = ["model.diffusion_model." + k for k in (
    "input_blocks.0.0.weight", "input_blocks.1.0.out_layers.3.weight",
    "input_blocks.1.1.proj_in.weight", "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
    "input_blocks.4.0.out_layers.3.weight")]
METADATA_KEYS = ("bksdm.unet_config", "bksdm.removal", "bksdm.family", "bksdm.preset",
                 "bksdm.parameterization", "bksdm.teacher_sha256")


def _base():
    """(header, data bytes) of a tiny SD-v1 teacher's U-Net in float16, with a text-encoder
    tensor naming its family: what `info` and `convert` read.  Its data stays zero (a sparse
    file): only the header is fuzzed."""
    state = teacher_state(TINY["sd-v1"])
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name in sorted(k for k in state if k.startswith(("model.diffusion_model.", TEXT_KEY["sd-v1"]))):
        shape = list(state[name].shape)
        size = 2 * state[name].numel()
        header[name] = {"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    return header, offset


def _nested(rng: random.Random) -> str:
    """A marker `_encode` turns into arrays nested this deep (json.dumps cannot)."""
    return "@@nested %d@@" % rng.choice([2, 50, 5000, 200000])


def _encode(header) -> bytes:
    text = json.dumps(header)
    return re.sub(r'"@@nested (\d+)@@"', lambda m: "[" * int(m.group(1)) + "]" * int(m.group(1)),
                  text).encode("utf-8")


def _junk(rng: random.Random):
    return _nested(rng) if rng.random() < 0.1 else rng.choice(JUNK)


def _mutate(rng: random.Random, header: dict, data: int):
    """(what was done, the header's bytes, data length, length field or None)."""
    header = json.loads(json.dumps(header))
    tensors = sorted(k for k in header if k != "__metadata__")
    name = rng.choice(READ_BY_DETECT if rng.random() < 0.3 else tensors)
    kind = rng.choice(["swap", "swap", "lengths", "shape", "metadata", "nested", "flip",
                       "length field", "truncated", "random"])
    if kind == "swap":  # a field, a whole entry or the metadata becomes another JSON type
        target = rng.choice(["dtype", "shape", "data_offsets", "entry", "__metadata__"])
        if target == "entry":
            header[name] = _junk(rng)
        elif target == "__metadata__":
            header["__metadata__"] = _junk(rng)
        else:
            header[name][target] = _junk(rng)
        return "%s.%s = junk" % (name, target), _encode(header), data, None
    if kind == "lengths":  # offsets or a dimension off by a little or a lot
        entry = header[name]
        if rng.random() < 0.5:
            entry["data_offsets"][rng.randrange(2)] += rng.choice([-8, -1, 1, 4, 2 ** 40])
        else:
            entry["shape"].append(rng.choice([0, 2, 2 ** 62]))
        return "%s lengths" % name, _encode(header), data, None
    if kind == "shape":  # same byte count, another shape: flattened, reversed, padded
        entry = header[name]
        count = 1
        for n in entry["shape"]:
            count *= n
        entry["shape"] = rng.choice([[count], entry["shape"][::-1], entry["shape"] + [1],
                                     [1] * 70 + [count], [], [count, 1]]) if count else [0]
        if entry["shape"] == [] and count != 1:
            entry["shape"] = [count]
        return "%s shape %s" % (name, entry["shape"][:8]), _encode(header), data, None
    if kind == "metadata":  # what the extension reads from metadata, as junk
        key = rng.choice(METADATA_KEYS)
        value = rng.choice([json.dumps(_junk(rng)), "down.9.9", "mid,mid", "sd-v2", "v", "",
                            '{"num_heads": "x"}', '{"num_head_channels": 0}',
                            '{"num_heads": -3}', '"ab"', "[1]", "[" * 100000 + "]" * 100000])
        header.setdefault("__metadata__", {})[key] = value
        return "metadata %s = %.40r" % (key, value), _encode(header), data, None
    if kind == "nested":
        where = rng.choice(["junk key", "metadata"])
        if where == "junk key":
            header["zzz"] = _nested(rng)
        else:
            header["__metadata__"] = {"x": _nested(rng)}
        return "nested %s" % where, _encode(header), data, None
    encoded = _encode(header)
    if kind == "flip":  # bytes of the JSON text changed in place
        encoded = bytearray(encoded)
        for _ in range(rng.choice([1, 3, 20])):
            encoded[rng.randrange(len(encoded))] = rng.randrange(256)
        return "flipped bytes", bytes(encoded), data, None
    if kind == "length field":
        field = rng.choice([0, 1, len(encoded) - 1, len(encoded) + 1, 2 ** 63, 2 ** 64 - 1,
                            len(encoded) + data, 100_000_001, rng.randrange(2 ** 64)])
        return "length field %d" % field, encoded, data, field
    if kind == "truncated":
        cut = rng.choice([rng.randrange(8 + len(encoded)), 8 + len(encoded) + rng.randrange(data)])
        return "truncated at %d" % cut, encoded, cut - 8 - len(encoded), None
    noise = bytes(rng.randrange(256) for _ in range(rng.choice([0, 7, 8, 64, 4096])))
    return "random bytes", noise, -1, None


def _write(path: Path, encoded: bytes, data: int, field) -> None:
    """The file: length field, header, then `data` zero bytes (sparse); a negative `data`
    makes `encoded` the whole file, a cut inside the header keeps only its start."""
    with open(path, "wb") as f:
        if data < 0:
            f.write(encoded)
            return
        whole = struct.pack("<Q", len(encoded) if field is None else field) + encoded
        f.write(whole[:8 + len(encoded) + min(data, 0)])
        f.truncate(len(whole) + max(data, 0))


def _outcome(path: Path, what: str, function, *args) -> str:
    """"ok", or "refused" with a one-line BadInput naming `path`; anything else fails."""
    try:
        function(*args)
    except BadInput as e:
        message = str(e)
        assert len(message.splitlines()) == 1 and path.name in message, (what, message)
        return "refused"
    except Exception as e:  # noqa: BLE001 - the point of the test: nothing else escapes
        pytest.fail("%s (%s): %s raised %r" % (path.name, what, function.__name__, e))
    return "ok"


@pytest.mark.slow
def test_fuzzed_headers_reach_info_convert_and_the_checkpoint_list_only_as_bad_input(
        tmp_path, capsys):
    from bksdm_ext.model.convert import convert_checkpoint
    from bksdm_ext.model.info import describe

    header, data = _base()
    rng = random.Random(22)  # the same files every run
    folder = start_webui(tmp_path / "webui")
    try:
        outcomes = []
        out = tmp_path / "out.safetensors"
        for index in range(FUZZ_CASES):
            what, mutated, size, field = _mutate(rng, header, data)
            path = folder / ("case-%03d.safetensors" % index)
            _write(path, mutated, size, field)
            outcomes += [_outcome(path, what, describe, path),
                         _outcome(path, what, convert_checkpoint, path, out, "small")]
            for made in (out, out.with_suffix(".yaml")):
                if made.exists():
                    made.unlink()
        assert outcomes.count("refused") > FUZZ_CASES and outcomes.count("ok") > 10
        from modules import script_callbacks, sd_models

        sd_models.list_models()
        capsys.readouterr()
        from bksdm_ext.webui import checkpoints

        listed = checkpoints.titles()
        problems = checkpoints.unreadable()
        script_callbacks.ui_tabs_callback()  # the page builds with all of them there
        printed = capsys.readouterr()
        assert "Traceback" not in printed.err, printed.err[-3000:]
        assert len(problems) > FUZZ_CASES // 2 and 0 < len(listed) < FUZZ_CASES - len(problems)
        assert all(p.startswith("case-") and "cannot be read (" not in p for p in problems)
    finally:
        standin_app.reset(tmp_path / "after")


# -- item 14: what is named when something is wrong ----------------------------------


def test_a_folder_or_a_pipe_given_as_a_checkpoint_is_called_what_it_is(tmp_path, capsys):
    out = ["--arch", "small", "--out", tmp_path / "s.safetensors"]
    folder = tmp_path / "model.safetensors"
    folder.mkdir()
    assert_one_line_refusal(capsys, tmp_path, "convert", folder, *out,
                            words=(str(folder), "a folder, not a checkpoint file"))
    (folder / "model_index.json").write_text("{}")
    assert_one_line_refusal(capsys, tmp_path, "info", folder,
                            words=("a diffusers folder", "bksdm import-diffusers"))
    pipe = tmp_path / "pipe.safetensors"
    os.mkfifo(str(pipe))
    assert_one_line_refusal(capsys, tmp_path, "info", pipe,
                            words=(str(pipe), "not a regular file (a named pipe"))
    assert_one_line_refusal(capsys, tmp_path, "info", tmp_path / "gone.safetensors",
                            words=("gone.safetensors: no such file",))


def test_a_yaml_that_does_not_fit_on_the_disk_is_the_file_named(teacher, tmp_path, capsys):
    """A disk with room for the student's weights but not its .yaml."""
    from test_faults import small_disk

    sized = tmp_path / "sized"
    sized.mkdir()
    run_cli(capsys, "convert", teacher, "--arch", "small", "--out", sized / "s.safetensors")
    pages = -(-(sized / "s.safetensors").stat().st_size // 4096)
    with small_disk(tmp_path / "disk", pages * 4096) as disk:
        out = disk / "s.safetensors"
        err = assert_one_line_refusal(capsys, tmp_path, "convert", teacher, "--arch", "small",
                                      "--out", out, words=("No space left on device",))
        assert err.startswith("bksdm convert: error: %s: " % out.with_suffix(".yaml")), err
        assert list(disk.iterdir()) == []


def test_full_width_digits_are_no_block_names(tmp_path, capsys):
    teacher = write_teacher(tmp_path, TINY["sd-v1"])
    for units in ("down.１.1", "up.*.２", "down.٣.0"):
        assert_one_line_refusal(capsys, tmp_path, "convert", teacher, "--remove", units,
                                "--out", tmp_path / "s.safetensors",
                                words=("'%s' is not a block name" % units,))
