"""The README's main job: `bksdm demo` converts a tiny model and generates with both."""
import json

import pytest
from PIL import Image

from bksdm_ext.cli import main


@pytest.mark.slow
def test_demo_converts_and_generates(tmp_path, capsys):
    assert main(["demo", "--workdir", str(tmp_path), "--arch", "tiny", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["student_unet_params"] < result["teacher_unet_params"]
    assert (tmp_path / "tiny-sd-v1-bk-tiny.safetensors").is_file()
    assert (tmp_path / "tiny-sd-v1-bk-tiny.yaml").is_file()
    image = Image.open(result["images"])
    assert image.size == (128, 64)
    left, right = image.crop((0, 0, 64, 64)), image.crop((64, 0, 128, 64))
    assert left.getextrema() != ((0, 0), (0, 0), (0, 0))  # a real decode, not a blank
    assert list(left.getdata()) != list(right.getdata())   # teacher and student differ
