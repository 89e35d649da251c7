"""FID against a reference folder (`bksdm eval --fid-reference`), checked against a
computation written here: features from torch-fidelity's own Inception extractor with the
same weights, the Fréchet distance in numpy.

Nothing is downloaded: the Inception weights are a randomly initialised (Kaiming, so that
the features neither vanish nor explode) state dict of torch-fidelity's network, saved
under the cache's file name in a temporary TORCH_HOME or passed with --fid-weights.
torch-fidelity needs torchvision, so the tests that build the network run in the second
stack (`make test-latest`); the first stack checks the message that says what to install.
"""
import csv
import importlib.util
import json
import math
from pathlib import Path
from typing import List

import numpy as np
import pytest
import torch
from PIL import Image

from bksdm_ext.cli import main
from bksdm_ext.errors import BadInput
from bksdm_ext.jobs.events import read_events
from bksdm_ext.measure.compare import ModelScores, table
from bksdm_ext.scores.fid import WEIGHTS_FILE, FidScorer, download_note
from test_eval import SMALL, models, prompts  # noqa: F401  (fixtures)

HAS_FIDELITY = importlib.util.find_spec("torch_fidelity") is not None


@pytest.fixture(autouse=True)
def torch_home(tmp_path, monkeypatch):
    """An empty torch.hub cache of the test's own: whatever the code fetched would land here."""
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """A random torch-fidelity FeatureExtractorInceptionV3 state dict."""
    pytest.importorskip("torch_fidelity")
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class KeepsItsRandomInit(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True):  # the file given is empty
            return None

    folder = tmp_path_factory.mktemp("inception")
    torch.save({}, folder / "empty.pth")
    torch.manual_seed(0)
    network = KeepsItsRandomInit("inception-v3-compat", ["2048"],
                                 feature_extractor_weights_path=str(folder / "empty.pth"))
    for module in network.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    torch.save(network.state_dict(), folder / WEIGHTS_FILE)
    return folder / WEIGHTS_FILE


@pytest.fixture
def cached(weights, torch_home) -> Path:
    """The weights where torch.hub keeps its downloads."""
    path = torch_home / "hub" / "checkpoints" / WEIGHTS_FILE
    path.parent.mkdir(parents=True)
    path.write_bytes(weights.read_bytes())
    return path


def _noise(n: int, seed: int, size: int = 32) -> List[Image.Image]:
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=g)
    return [Image.fromarray(p.numpy()) for p in pixels]


def _gradients(n: int, seed: int, size: int = 24) -> List[Image.Image]:
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 1, size).view(size, 1, 1).expand(size, size, 3)
    return [Image.fromarray((255 * ramp * torch.rand(3, generator=g)).to(torch.uint8).numpy())
            for _ in range(n)]


def _folder(path: Path, images: List[Image.Image]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        image.save(path / ("%02d.png" % i))
    return path


def _frechet_distance(weights: Path, a: List[Image.Image], b: List[Image.Image]) -> float:
    """FID written out: torch-fidelity's extractor gives the 2048 features; with A, B the
    centred feature rows (n, m images), Σa = AᵀA/(n-1), Σb = BᵀB/(m-1) and
    Tr √(Σa Σb) = the sum of the singular values of A Bᵀ / √((n-1)(m-1)) (the nonzero
    eigenvalues of AᵀA BᵀB are those of (A Bᵀ)(A Bᵀ)ᵀ): exact, and no 2048² matrix root."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    network = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                          feature_extractor_weights_path=str(weights))

    def features(images: List[Image.Image]) -> np.ndarray:
        batch = torch.stack([torch.from_numpy(np.array(i)).permute(2, 0, 1) for i in images])
        with torch.no_grad():
            return network(batch)[0].double().numpy()

    fa, fb = features(a), features(b)
    ca, cb = fa - fa.mean(0), fb - fb.mean(0)
    trace_root = np.linalg.svd(ca @ cb.T, compute_uv=False).sum() / math.sqrt(
        (len(a) - 1) * (len(b) - 1))
    return float(((fa.mean(0) - fb.mean(0)) ** 2).sum() + (ca ** 2).sum() / (len(a) - 1)
                 + (cb ** 2).sum() / (len(b) - 1) - 2 * trace_root)


@pytest.mark.slow
def test_fid_is_zero_for_the_reference_itself_and_matches_a_numpy_fid_for_other_images(
        cached, tmp_path):
    reference = _noise(5, seed=1)
    folder = _folder(tmp_path / "reference", reference[:4])
    _folder(folder / "more", reference[4:])  # subfolders count
    (folder / "broken.png").write_bytes(b"not a png")
    (folder / "notes.txt").write_text("not an image")
    said: List[str] = []
    fid = FidScorer.load(folder, say=said.append)
    assert fid.images == 5 and [Path(s.split(": ")[0]).name for s in fid.skipped] == ["broken.png"]
    assert not any("downloading" in line for line in said)  # the cached copy was used
    assert any("broken.png" in line for line in said)
    assert any("only 5 reference images" in line and "biased" in line for line in said)

    other = _gradients(6, seed=2)
    expected = _frechet_distance(cached, reference, other)
    assert expected > 1 and fid.score(other) == pytest.approx(expected, rel=1e-5)
    assert abs(fid.score(reference)) < 1e-5 * expected


@pytest.mark.slow
def test_eval_writes_an_fid_per_model_with_weights_from_a_file(models, prompts, weights,
                                                               torch_home, tmp_path, capsys):
    teacher, student = models
    folder = _folder(tmp_path / "reference", _noise(3, seed=3))
    scores = tmp_path / "scores.csv"
    assert main(["eval", str(teacher), str(student), "--prompts", str(prompts), *SMALL,
                 "--fid-reference", str(folder), "--fid-weights", str(weights),
                 "--csv", str(scores), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    fids = [r["fid"] for r in result["results"]]
    assert all(math.isfinite(f) and f > 0 for f in fids) and fids[0] != fids[1]
    assert (result["fid_reference"], result["fid_reference_images"]) == (str(folder), 3)
    with open(scores, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["fid"]) for r in rows] == pytest.approx(fids, abs=1e-4)
    assert rows[0]["fid_reference_images"] == "3"
    assert not torch_home.exists()  # nothing fetched into the cache


@pytest.mark.slow
def test_an_eval_job_records_its_fid_and_the_reference_it_was_measured_against(
        teacher, prompts, cached, tmp_path, capsys):
    folder = _folder(tmp_path / "reference", _noise(2, seed=8))
    out = tmp_path / "job"
    assert main(["eval", str(teacher), "--prompts", str(prompts), *SMALL,
                 "--fid-reference", str(folder), "--out", str(out)]) == 0
    start = read_events(out / "events.jsonl")[0]
    assert (start["fid_reference"], start["fid_reference_images"]) == (str(folder), 2)
    (fid,) = [s["fid"] for s in json.loads((out / "scores.json").read_text())]
    with open(out / "scores.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert math.isfinite(fid) and float(row["fid"]) == pytest.approx(fid, abs=1e-4)
    assert "FID" in capsys.readouterr().out  # the table's column


def test_a_file_that_is_not_plain_weights_is_refused_before_it_is_unpickled(tmp_path):
    pytest.importorskip("torch_fidelity")
    import argparse

    crafted = tmp_path / "crafted.pth"
    torch.save(argparse.Namespace(anything=1), crafted)  # loading it builds a class instance
    folder = _folder(tmp_path / "reference", _noise(2, seed=4))
    with pytest.raises(BadInput, match="crafted.pth: not a plain weights file"):
        FidScorer.load(folder, weights=crafted)


@pytest.mark.parametrize("count", [0, 1])
def test_a_folder_with_fewer_than_two_images_is_refused_before_anything_is_built(
        teacher, count, tmp_path, torch_home, capsys):
    folder = _folder(tmp_path / "reference", _noise(count, seed=5))
    assert main(["eval", str(teacher), "--fid-reference", str(folder), *SMALL]) == 2
    error = capsys.readouterr().err
    assert "FID needs at least 2 images" in error and "has %d image file(s)" % count in error
    assert not torch_home.exists()


def test_fid_needs_two_images_from_each_model(teacher, prompts, tmp_path, capsys):
    folder = _folder(tmp_path / "reference", _noise(2, seed=6))
    assert main(["eval", str(teacher), "--prompts", str(prompts), "--seeds", "1",
                 "--fid-reference", str(folder)]) == 2
    assert "each model makes 1 image(s)" in capsys.readouterr().err


@pytest.mark.skipif(HAS_FIDELITY, reason="the first stack's message: torch-fidelity is absent")
def test_without_torch_fidelity_the_message_says_what_to_install(teacher, tmp_path, capsys):
    folder = _folder(tmp_path / "reference", _noise(2, seed=7))
    assert main(["eval", str(teacher), "--fid-reference", str(folder), *SMALL]) == 2
    assert "pip install torch-fidelity torchmetrics" in capsys.readouterr().err


def test_the_download_is_announced_only_when_the_weights_are_not_cached(torch_home):
    note = download_note()
    assert WEIGHTS_FILE in note and "91 MiB" in note
    assert str(torch_home / "hub" / "checkpoints") in note
    (torch_home / "hub" / "checkpoints").mkdir(parents=True)
    (torch_home / "hub" / "checkpoints" / WEIGHTS_FILE).write_bytes(b"")
    assert download_note() is None


def test_the_table_has_an_fid_column_only_when_fid_was_asked_for():
    row = dict(model="m", preset="teacher", unet_params=1, images=2, seconds_per_image=None,
               psnr=math.inf, ssim=1.0)
    with_fid = table([ModelScores(**row, fid=12.345)]).splitlines()
    assert with_fid[0].split()[-1] == "FID" and with_fid[1].split()[-1] == "12.35"
    assert "FID" not in table([ModelScores(**row)])
