"""What a training checkpoint holds, so that a resumed run repeats an uninterrupted one.

An objective registers the parts of its run by name (the trained models, optimizer, LR
scheduler, EMA, random generators, data positions); `RunState` writes them and the step
as one ``train_state.pt`` and reads them back.  The names are the file's keys, so each
objective keeps the layout its checkpoints have always had.  Under DDP every process
draws its own noise: a part registered per process is gathered from all of them and
each takes its own back, which is why a run resumes only with the process count it was
saved with.
"""
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from ..errors import BadInput
from .noising import Batches
from .state_file import save_state

STATE_FILE = "train_state.pt"


class _Mismatch(Exception):
    """A checkpoint's part that does not fit the run resuming it (said with its path)."""


class RunState:
    """The step and the registered parts of one run, saved and loaded together."""

    def __init__(self, accelerator: Any) -> None:
        self.accelerator = accelerator
        self.step = 0
        self._parts: Dict[str, Tuple[Callable[[], Any], Callable[[Any], None]]] = {}
        self._per_process: List[str] = []
        self.add("scaler", getattr(accelerator, "scaler", None))  # fp16's loss scale

    def add(self, name: str, part: Optional[Any]) -> "RunState":
        """A part with ``state_dict``/``load_state_dict`` (optimizer, LR scheduler, EMA).
        None (a part switched off) is saved as None; a part saved as None stays as it is."""
        def load(saved: Any) -> None:
            if part is not None and saved is not None:
                part.load_state_dict(saved)

        self._parts[name] = (lambda: part.state_dict() if part is not None else None), load
        return self

    def add_model(self, name: str, model: Any, trained_only: bool = False) -> "RunState":
        """A model (as accelerate prepared it): all its weights, or with `trained_only`
        only those that train (LoRA adapters, say), which a resume must train again."""
        def tensors() -> Dict[str, torch.Tensor]:
            unwrapped = self.accelerator.unwrap_model(model)
            return trained(unwrapped) if trained_only else unwrapped.state_dict()

        def load(saved: Dict[str, torch.Tensor]) -> None:
            unwrapped = self.accelerator.unwrap_model(model)
            if trained_only and set(saved) != set(trained(unwrapped)):
                raise _Mismatch("was saved with other training settings (which weights train: "
                                "full vs --lora, text encoder trained or not); resume with the "
                                "run's own settings")
            unwrapped.load_state_dict(saved, strict=not trained_only)

        self._parts[name] = tensors, load
        return self

    def add_value(self, name: str, get: Callable[[], Any], set_: Callable[[Any], None],
                  per_process: bool = False) -> "RunState":
        """Any picklable value; `per_process`: each process's own (gathered on save)."""
        self._parts[name] = get, set_
        if per_process:
            self._per_process.append(name)
        return self

    def add_generator(self, name: str, generator: torch.Generator,
                      per_process: bool = True) -> "RunState":
        return self.add_value(name, generator.get_state, generator.set_state, per_process)

    def add_position(self, name: str, batches: Batches) -> "RunState":
        """Where a `Batches` order is: the whole state of the data a run has read."""
        return self.add_value(name, lambda: batches.position,
                              lambda position: setattr(batches, "position", position))

    def snapshot(self) -> Optional[Dict[str, Any]]:
        """The state now, for process 0 to write (`write`); every process calls this (the
        per-process parts are gathered), the others get None."""
        gathered = {name: gather(self._parts[name][0](), self.accelerator)
                    for name in self._per_process}
        if not self.accelerator.is_main_process:
            return None
        state = {name: gathered[name] if name in gathered else get()
                 for name, (get, _set) in self._parts.items()}
        state["step"] = self.step
        return state

    @staticmethod
    def write(snapshot: Dict[str, Any], folder: Path) -> None:
        save_state(snapshot, folder / STATE_FILE)

    def load(self, folder: Path) -> None:
        """Continue from the checkpoint `folder`: the step and every registered part."""
        state = torch.load(str(folder / STATE_FILE), map_location="cpu", weights_only=True)
        processes = self.accelerator.num_processes
        for name in self._per_process:
            if len(state[name]) != processes:
                raise BadInput("%s was saved by %d processes; resume with the same number (now %d)"
                               % (folder, len(state[name]), processes))
        for name, (_get, load) in self._parts.items():
            saved = state[name]
            try:
                load(saved[self.accelerator.process_index] if name in self._per_process else saved)
            except _Mismatch as e:
                raise BadInput("%s %s" % (folder, e)) from None
        self.step = int(state["step"])


def trained(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """The tensors that train: every weight, or only the LoRA adapters."""
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def gather(value: Any, accelerator: Any) -> List[Any]:
    """`value` from every process, in process order (a list of one without DDP)."""
    if accelerator.num_processes == 1:
        return [value]
    gathered: List[Any] = [None] * accelerator.num_processes
    torch.distributed.all_gather_object(gathered, value)
    return gathered
