"""The one training skeleton every objective plugs into (distillation, DreamBooth, and the
next one): the run folder and its start event, the step loop with its cadence (log, save,
sample, evaluate, stop on request), checkpoints with pruning, and the speed meter.

An objective reads like a short training script: it checks its inputs, starts a `Run`,
sets up its models and data, registers what a resume needs in a `RunState`, and hands
`train` a function that makes one optimizer step and returns its losses; then it
exports.  Everything else a run does between its first and last step is here, once:

- ``step`` events every ``log_every`` steps (and at the last) with the losses, learning
  rate, speed, time left and peak GPU memory;
- ``checkpoints/step-N`` every ``save_every`` steps (and at the last): the run state, plus
  what the objective adds (the student as an A1111 file), only the newest ``keep_last``
  kept and the best one spared;
- sample grids every ``sample_every`` steps and ``eval`` events every ``eval_every``
  (samples.py), with the best score so far, across a resume too;
- a STOP file from the Jobs tab ends the run at the step it is seen by all processes,
  saving first when asked.
"""
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import torch

from ..jobs.events import EventLog, read_events, start_event
from ..jobs.runs import RunPaths, event, failures_reported, progress_bar, stop_run
from .memory_fit import STARTED_WITH, announce, out_of_memory_explained
from .memory_plan import MemoryPlan
from .run_state import RunState, gather
from .samples import Samples

# The files an objective adds to a checkpoint folder at a step: event field -> file name.
CheckpointFiles = Callable[[Path, int], Dict[str, str]]


def fitted_run(cfg: Any, resume: bool, fit: Callable[[], Tuple[Any, Optional[MemoryPlan]]],
               train_run: Callable[[Any, bool, Optional[MemoryPlan]], Path]) -> Path:
    """`train_run` with the settings `fit` finds for the GPU's memory (memory_fit.py); a
    run that fails says why in its event file too (the WebUI's job list reads it there),
    and a GPU that still runs out of memory says which setting to lower."""
    with failures_reported(cfg.out):
        cfg, memory = fit()
        announce(memory)
        with out_of_memory_explained(cfg):
            return train_run(cfg, resume, memory)


@dataclass
class Run:
    """A started run: its folder, its accelerator, the event log (process 0's only) and
    the checkpoint it continues from."""

    paths: RunPaths
    accelerator: Any
    log: Optional[EventLog]
    resumed_from: Optional[Path]

    @classmethod
    def start(cls, cfg: Any, accelerator: Any, resumed_from: Optional[Path],
              memory: Optional[MemoryPlan], **fields: Any) -> "Run":
        """Write the settings (config.json, what a resume keeps) and the ``start`` event
        with the objective's `fields`."""
        paths = RunPaths(Path(cfg.out))
        log = None
        if accelerator.is_main_process:
            paths.out.mkdir(parents=True, exist_ok=True)
            (paths.out / STARTED_WITH).write_text(json.dumps(asdict(cfg), indent=2, default=str))
            log = EventLog(paths.events)
        event(log, "start", **start_event(cfg.steps), **fields,
              memory_plan=memory.describe() if memory is not None else None,
              resumed_from=str(resumed_from) if resumed_from else None)
        return cls(paths, accelerator, log, resumed_from)

    @property
    def main(self) -> bool:
        return bool(self.accelerator.is_main_process)

    def event(self, name: str, **fields: Any) -> None:
        event(self.log, name, **fields)

    def stop_request(self) -> str:
        """"save", "discard" or "" from the run folder's STOP file, as process 0 sees it
        (all processes must stop at the same step)."""
        request = self.paths.take_stop_request() if self.main else ""
        if self.accelerator.num_processes > 1:
            shared = [request]
            torch.distributed.broadcast_object_list(shared, src=0)
            request = shared[0]
        return request

    def save(self, state: RunState, keep_last: int, best: Optional[Path],
             files: Optional[CheckpointFiles] = None) -> None:
        """``checkpoints/step-N``: the run state and the objective's `files`, written under
        a temporary name and renamed; only the newest `keep_last` stay, and `best`.  Every
        process calls this."""
        snapshot = state.snapshot()
        if snapshot is None:  # not process 0
            return
        written: Dict[str, str] = {}

        def fill(folder: Path) -> None:
            state.write(snapshot, folder)
            if files is not None:
                written.update(files(folder, state.step))

        target = self.paths.write_checkpoint(state.step, fill, keep_last, keep=best)
        self.event("checkpoint", step=state.step, path=str(target),
                   **{key: str(target / name) for key, name in written.items()})


@dataclass
class Cadence:
    """When a run of `steps` steps logs, saves, draws samples and evaluates: every so
    many steps and at the last one (0: never)."""

    steps: int
    log_every: int
    save_every: int
    keep_last: int
    sample_every: int
    eval_every: int

    @classmethod
    def of(cls, cfg: Any, eval_every: int) -> "Cadence":
        """The cadence of a run config's ``steps``, ``log_every``, ``save_every``,
        ``keep_last`` and ``sample_every``, evaluating every `eval_every` steps."""
        return cls(cfg.steps, cfg.log_every, cfg.save_every, cfg.keep_last, cfg.sample_every,
                   eval_every)

    def due(self, every: int, step: int) -> bool:
        return bool(every) and (step % every == 0 or step == self.steps)


class SpeedMeter:
    """Progress per second since the run (re)started, the time left, and with
    `samples_per_step` the training examples a second; on a GPU the peak memory too."""

    def __init__(self, first: int, total: int, rate: str = "it_s",
                 samples_per_step: Optional[int] = None,
                 device: Optional[torch.device] = None) -> None:
        self.first, self.total, self.rate = first, total, rate
        self.samples_per_step, self.device = samples_per_step, device
        self.started = time.perf_counter()

    def figures(self, done: int) -> Dict[str, Any]:
        rate = (done - self.first) / max(time.perf_counter() - self.started, 1e-9)
        figures = {self.rate: round(rate, 4)}
        if self.samples_per_step is not None:
            figures["samples_s"] = round(rate * self.samples_per_step, 3)
        figures["eta_s"] = round((self.total - done) / rate) if rate > 0 else None
        if self.device is not None and self.device.type == "cuda":
            figures["peak_mem_gb"] = round(torch.cuda.max_memory_allocated(self.device) / 2 ** 30, 3)
        return figures


class BestScore:
    """The best value of the eval figure `key` so far and its checkpoint (when that step
    saved one), also across a resume (read back from the run's eval events): an ``eval``
    event says whether it is the new best, and checkpoint pruning spares the best one."""

    def __init__(self, paths: RunPaths, key: Optional[str]) -> None:
        self.value, self.checkpoint = float("-inf"), None  # type: float, Optional[Path]
        if key is None:
            return
        for e in read_events(paths.events):
            if e.get("event") == "eval" and key in e:
                self.update(e[key], Path(e["checkpoint"]) if e.get("checkpoint") else None)

    def update(self, value: float, checkpoint: Optional[Path]) -> bool:
        if value > self.value:
            self.value, self.checkpoint = value, checkpoint
            return True
        return False


def train(run: Run, state: RunState, cadence: Cadence, step: Callable[[], Dict[str, float]],
          optimizer: Any, samples: Optional[Samples] = None,
          files: Optional[CheckpointFiles] = None, samples_per_step: Optional[int] = None,
          desc: str = "training") -> None:
    """Call `step` (one optimizer step; returns its losses, ``loss`` among them) until
    `cadence.steps`, continuing from the run's checkpoint; logs, saves, samples,
    evaluates and stops on request as `cadence` says.  `samples` is process 0's only."""
    if run.resumed_from is not None:
        state.load(run.resumed_from)
    best = BestScore(run.paths, samples.best_by if samples is not None else None)
    progress = progress_bar(cadence.steps, state.step, run.main, desc)
    meter = SpeedMeter(state.step, cadence.steps, samples_per_step=samples_per_step,
                       device=run.accelerator.device)

    def save() -> None:
        run.save(state, cadence.keep_last, best.checkpoint, files)

    while state.step < cadence.steps:
        losses = step()
        state.step += 1
        progress.update(1)
        progress.set_postfix(loss="%.4f" % losses["loss"])
        if cadence.due(cadence.log_every, state.step):
            run.event("step", step=state.step, lr=optimizer.param_groups[0]["lr"],
                      **meter.figures(state.step), **losses)
        if cadence.due(cadence.save_every, state.step):
            save()
        if samples is not None:
            _show(run, samples, cadence, best, state.step)
        request = run.stop_request()
        if request and state.step < cadence.steps:
            stop_run(request, state.step, save, run.log, progress)
    progress.close()


def _show(run: Run, samples: Samples, cadence: Cadence, best: BestScore, step: int) -> None:
    """The sample grid and the ``eval`` event of this step, where they are due; both from
    one drawing of the sample prompts."""
    sample_now = cadence.due(cadence.sample_every, step)
    eval_now = cadence.due(cadence.eval_every, step) and samples.score is not None
    if not (sample_now or eval_now):
        return
    images = samples.draw()
    if sample_now:
        run.event("samples", step=step, path=str(samples.grid.write(step, images)))
    if eval_now:
        figures = samples.score(images)
        if samples.best_by is not None:
            saved = run.paths.checkpoint(step)  # the checkpoint of this step, when one was saved
            saved_path = saved if saved.is_dir() else None
            figures.update(best=best.update(figures[samples.best_by], saved_path),
                           checkpoint=str(saved_path) if saved_path else None)
        run.event("eval", step=step, **figures)


def replicas_agree(model: torch.nn.Module, accelerator: Any) -> bool:
    """Whether every process holds the same weights.  DDP keeps them identical; a run says
    so, since a silent divergence would make the exported (process 0) model not the one
    the other processes trained.  Every process calls this."""
    checksum = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().cpu()
    checksums = gather(checksum, accelerator)
    return all(torch.equal(c, checksums[0]) for c in checksums)
