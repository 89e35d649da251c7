"""Knowledge-distillation pieces of BK-SDM: a student initialised from its teacher, the
module outputs feature-KD compares, and the paper's three-term loss."""
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..model.arch import Architecture
from ..model.keymap import student_sources


def student_from_teacher(teacher: torch.nn.Module, arch: Architecture) -> torch.nn.Module:
    """A diffusers U-Net of `arch` whose every tensor is the teacher tensor the map names."""
    from diffusers import UNet2DConditionModel

    state = teacher.state_dict()
    sources = student_sources(arch, state, naming="diffusers")
    student = UNet2DConditionModel(**arch.diffusers_config())
    student.load_state_dict({s: state[t].detach().clone().float() for s, t in sources.items()},
                            strict=True)
    return student


class FeatureTaps:
    """Keeps what the named modules returned in the latest forward (element 0 of a tuple)."""

    def __init__(self, model: torch.nn.Module, names: Sequence[str]) -> None:
        modules = dict(model.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            raise ValueError("no module named %s to take features from" % ", ".join(missing))
        self.names = list(names)
        self.outputs: Dict[str, torch.Tensor] = {}
        self._handles = [modules[n].register_forward_hook(self._keeper(n)) for n in names]

    def _keeper(self, name: str) -> Callable[..., None]:
        def keep(module: torch.nn.Module, inputs: Any, output: Any) -> None:
            self.outputs[name] = output[0] if isinstance(output, (tuple, list)) else output
        return keep

    def take(self) -> List[torch.Tensor]:
        outputs = [self.outputs[n] for n in self.names]
        self.outputs = {}
        return outputs

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


@dataclass
class LossWeights:
    """λ_sd, λ_out, λ_feat: 1, 1, 1 in the paper (100 for its unconditional face model)."""

    task: float = 1.0
    output: float = 1.0
    feature: float = 1.0


def kd_loss(student_pred: torch.Tensor, teacher_pred: torch.Tensor, target: torch.Tensor,
            student_features: Sequence[torch.Tensor], teacher_features: Sequence[torch.Tensor],
            weights: LossWeights) -> Tuple[torch.Tensor, Dict[str, float]]:
    """λ_sd·task + λ_out·output-KD + λ_feat·Σ feature-KD, all mean-squared errors in fp32."""
    student_pred = student_pred.float()
    task = F.mse_loss(student_pred, target.float())
    output = F.mse_loss(student_pred, teacher_pred.float())
    feature = torch.stack([F.mse_loss(s.float(), t.float())
                           for s, t in zip(student_features, teacher_features)]).sum()
    total = weights.task * task + weights.output * output + weights.feature * feature
    parts = {"loss": total.item(), "task": task.item(), "output_kd": output.item(),
             "feature_kd": feature.item()}
    return total, parts


class EMA:
    """Exponential moving average of a model's weights, with diffusers' warm-up
    (decay = min(decay, (1 + n) / (10 + n))) so early averages are not stuck at the init."""

    def __init__(self, model: torch.nn.Module, decay: float = 0.9999) -> None:
        self.decay = decay
        self.updates = 0
        self.shadow = {k: v.detach().float().clone() for k, v in model.state_dict().items()
                       if v.is_floating_point()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        self.updates += 1
        for key, value in model.state_dict().items():
            if key in self.shadow:
                self.shadow[key].lerp_(value.float(), 1 - decay)

    def state_dict(self) -> Dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.decay, self.updates = state["decay"], state["updates"]
        for key, value in state["shadow"].items():
            self.shadow[key].copy_(value)
