"""The training skeleton with a toy objective (a linear regression, CPU, a second each):
what any objective gets by plugging in, without the diffusion models around it."""
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from bksdm_ext.errors import BadInput, Stopped
from bksdm_ext.jobs.events import read_events
from bksdm_ext.jobs.runs import RunPaths
from bksdm_ext.train.optim import optimizer_step
from bksdm_ext.train.run_state import RunState
from bksdm_ext.train.samples import SampleGrid, Samples, kept_reference
from bksdm_ext.train.skeleton import Cadence, Run, train

TRUE_WEIGHTS = torch.tensor([[1.0, -2.0, 0.5, 3.0]])


@dataclass
class ToyConfig:
    out: str
    steps: int
    log_every: int = 1
    save_every: int = 2
    keep_last: int = 1
    sample_every: int = 0


def toy_run(out: Path, steps: int, resume: bool = False, stop_at: Optional[int] = None,
            scores: Optional[List[float]] = None, **cadence) -> torch.nn.Module:
    """A short training script in the shape distill/dreambooth have: start the run, set up,
    register the state, define the step, hand it to the skeleton.  `stop_at`: a STOP
    "save" request arrives during that step; `scores`: the eval figure at each sample."""
    from accelerate import Accelerator

    cfg = ToyConfig(str(out), steps, **cadence)
    accelerator = Accelerator(cpu=True)
    run = Run.start(cfg, accelerator, RunPaths(out).resume_point(resume), None, objective="toy")
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.3)
    model, optimizer = accelerator.prepare(model, optimizer)
    generator = torch.Generator().manual_seed(1)
    state = (RunState(accelerator).add_model("model", model).add("optimizer", optimizer)
             .add_generator("generators", generator))

    def step():
        x = torch.randn(64, 4, generator=generator)
        loss = F.mse_loss(model(x), x @ TRUE_WEIGHTS.T)
        optimizer_step(accelerator, loss, model.parameters(), optimizer, max_grad_norm=1.0)
        if state.step + 1 == stop_at:
            (out / "STOP").write_text("save")
        return {"loss": loss.item()}

    def weights_file(folder: Path, step: int):
        torch.save(model.state_dict(), str(folder / "weights.pt"))
        return {"weights": "weights.pt"}

    figures = iter(scores or [])
    samples = Samples(SampleGrid(run.paths.samples, 8, [Image.new("RGB", (8, 8), "white")]),
                      draw=lambda: [Image.new("RGB", (8, 8), "black")],
                      score=lambda images: {"score": next(figures)}, best_by="score")
    train(run, state, Cadence.of(cfg, cfg.sample_every), step, optimizer,
          samples=samples if scores else None, files=weights_file, desc="toy")
    return model


def events(out: Path, name: str):
    return [e for e in read_events(out / "events.jsonl") if e["event"] == name]


def test_an_objective_stopped_and_resumed_repeats_the_uninterrupted_run(tmp_path):
    straight = toy_run(tmp_path / "straight", steps=6)
    split = tmp_path / "split"
    with pytest.raises(Stopped):
        toy_run(split, steps=6, stop_at=3)
    stopped = read_events(split / "events.jsonl")[-1]
    assert stopped["event"] == "stopped" and stopped["step"] == 3 and stopped["saved"] is True
    # saved at 2, then at the stop; keep_last=1 pruned step 2
    assert sorted(p.name for p in (split / "checkpoints").iterdir()) == ["step-0000003"]
    assert events(split, "checkpoint")[-1]["weights"] == str(
        split / "checkpoints" / "step-0000003" / "weights.pt")
    resumed = toy_run(split, steps=6, resume=True)
    losses = [e["loss"] for e in events(tmp_path / "straight", "step")]
    assert len(losses) == 6 and losses[-1] < losses[0]
    assert [e["loss"] for e in events(split, "step")] == losses
    assert all(torch.equal(a, b) for a, b in zip(straight.state_dict().values(),
                                                 resumed.state_dict().values()))
    assert [e["resumed_from"] for e in events(split, "start")] == [
        None, str(split / "checkpoints" / "step-0000003")]


def test_evaluations_mark_the_best_and_pruning_spares_its_checkpoint(tmp_path):
    out = tmp_path / "best"
    toy_run(out, steps=4, save_every=1, sample_every=1, scores=[0.2, 0.9, 0.5, 0.4])
    evals = events(out, "eval")
    assert [(e["step"], e["score"], e["best"]) for e in evals] == [
        (1, 0.2, True), (2, 0.9, True), (3, 0.5, False), (4, 0.4, False)]
    assert evals[1]["checkpoint"] == str(out / "checkpoints" / "step-0000002")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step-0000002", "step-0000004"]
    grid = Image.open(events(out, "samples")[-1]["path"])
    assert grid.size == (16, 8) and grid.getpixel((0, 0)) == (255, 255, 255)
    assert grid.getpixel((8, 0)) == (0, 0, 0)  # reference | now


def _state(accelerator, model: torch.nn.Module) -> RunState:
    return RunState(accelerator).add_model("model", model, trained_only=True)


def test_a_checkpoint_resumes_only_with_the_settings_it_was_saved_with(tmp_path):
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    model[0].requires_grad_(False)  # only the second layer trains (as LoRA adapters would)
    state = _state(accelerator, model)
    state.step = 5
    folder = tmp_path / "step-0000005"
    folder.mkdir()
    state.write(state.snapshot(), folder)

    again = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    again[0].requires_grad_(False)
    resumed = _state(accelerator, again)
    resumed.load(folder)
    assert resumed.step == 5 and torch.equal(again[1].weight, model[1].weight)
    assert not torch.equal(again[0].weight, model[0].weight)  # frozen: not in the checkpoint

    everything = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    with pytest.raises(BadInput, match="step-0000005 was saved with other training settings"):
        _state(accelerator, everything).load(folder)

    generator = torch.Generator()
    two = RunState(accelerator).add_generator("generators", generator)
    folder = tmp_path / "ddp"
    folder.mkdir()
    two.write({"generators": [generator.get_state()] * 2, "scaler": None, "step": 1}, folder)
    with pytest.raises(BadInput, match="saved by 2 processes; resume with the same number"):
        RunState(accelerator).add_generator("generators", generator).load(folder)


def test_kept_reference_images_come_back_pixel_for_pixel(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    made = [Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)) for _ in range(3)]
    path = tmp_path / "samples" / "before.png"
    assert kept_reference(path, 8, lambda: made) == made
    again = kept_reference(path, 8, lambda: pytest.fail("made again"))
    assert len(again) == 3 and all(np.array_equal(np.array(a), np.array(m))
                                   for a, m in zip(again, made))
