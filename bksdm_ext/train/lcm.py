"""Latent consistency distillation onto a BK-SDM student (``bksdm distill --objective lcm``),
so that block removal and step reduction multiply: a student that draws in 2-8 steps.

The objective is the LCM paper's (Luo et al., 2023) as diffusers' reference scripts
``train_lcm_distill_sd_wds.py`` and ``train_lcm_distill_lora_sd_wds.py`` implement it
(docs/facts.md §14).  Each micro-batch:

1. clean latents from the training cache (distillation's data, teacher-made or a dataset),
   a solver index n drawn uniformly, the latents noised to t_{n+k} on the DDIM solver's grid
   (``lcm_ddim_timesteps`` = 50 points of 1000: skipping step k = 20);
2. the online student's consistency function at t_{n+k}:
   f(x, t) = c_skip(t)·x + c_out(t)·x̂₀(x, t), with the boundary conditions
   c_skip = σ²/((10t)² + σ²), c_out = 10t/√((10t)² + σ²), σ = 0.5 (`boundary_scalings`);
3. the frozen teacher with classifier-free guidance (cond and uncond as one batch of twice
   the size), w drawn uniformly from [``lcm_w_min``, ``lcm_w_max``] per example in LCM's
   formulation (x̂ = cond + w·(cond − uncond)), and one DDIM step from t_{n+k} to t_n
   (`DDIMSolver`);
4. the target network's consistency function at t_n on that point: an EMA copy of the
   student (θ⁻ ← μθ⁻ + (1 − μ)θ after each optimizer step, μ = ``lcm_target_decay``
   (0.95), `TargetNetwork`); with LCM-LoRA the student itself without gradients, as the
   LoRA script does;
5. the pseudo-Huber loss √((f − f⁻)² + c²) − c (c = 0.001) or L2, plus optionally a
   feature-KD term toward the teacher's conditional pass at the same timestep (EdgeFusion).

No guidance-scale embedding: the full LCM script gives its student a w input
(``time_cond_proj_dim``), but a student must load in A1111's LDM ``UNetModel`` unchanged,
and that model has no such input.  So, as in the LCM-LoRA script, w is drawn for the
teacher only: the student learns the guided teacher over the whole w range and draws
without CFG (CFG scale 1), which is what its metadata recommends.

With ``lora_rank`` only LoRA adapters on the student train (LCM-LoRA); the result is a
LoRA file under the names A1111's Lora extension resolves on that student's layout.
Everything else a distillation run does (teacher-made data, cached latents, exact resume,
DDP, memory fitting, events, samples and eval) is distill.py's and the skeleton's.
"""
import copy
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch

from ..errors import BadInput
from ..model.blocks import preset_name
from ..model.convert import DTYPES, teacher_origin
from ..model.loading import latent_scale, noise_scheduler
from ..model.text_encoding import text_encoder_fn
from .distill import (StudentRun, StudentTraining, export_student, run_metadata, run_samples,
                      start_student_run, teacher_dtype, training_batch, with_channels)
from .distill_config import DistillConfig
from .kd import FeatureTaps
from .memory_plan import MemoryPlan
from .noising import randn
from .optim import optimizer_step
from .skeleton import Cadence, train

SIGMA_DATA = 0.5  # the consistency models' data standard deviation in c_skip, c_out
# What LCM-LoRA adapts: the LoRA script's default targets (attention, feed-forward and
# transformer projections, the ResNet convolutions and time projections, the resamplers).
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj",
                "ff.net.2", "conv1", "conv2", "conv_shortcut", "downsamplers.0.conv",
                "upsamplers.0.conv", "time_emb_proj")


def lcm_settings(cfg: DistillConfig) -> DistillConfig:
    """The settings an LCM run uses: LCM-LoRA keeps no EMA of the student (its weights are
    frozen; the adapters are the result)."""
    return replace(cfg, ema=False) if cfg.lora_rank else cfg


# -- the pieces of the objective ----------------------------------------------------


class DDIMSolver:
    """DDIM over the skipped-step grid t_i = (i + 1)·k − 1 (i < n, k = T // n): the
    teacher's ODE step from t_{i} to t_{i−1} (to 0 from the first point)."""

    def __init__(self, alphas_cumprod: torch.Tensor, points: int) -> None:
        total = len(alphas_cumprod)
        if not 1 <= points <= total:
            raise BadInput("--lcm-ddim-timesteps must be between 1 and the teacher's %d "
                           "training timesteps; got %d" % (total, points))
        self.skip = total // points
        self.timesteps = torch.arange(1, points + 1) * self.skip - 1
        self.alphas_prev = torch.cat([alphas_cumprod[:1], alphas_cumprod[self.timesteps[:-1]]])

    def to(self, device: torch.device) -> "DDIMSolver":
        self.timesteps, self.alphas_prev = self.timesteps.to(device), self.alphas_prev.to(device)
        return self

    def step(self, x0: torch.Tensor, eps: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The point at t_{index−1} (0 for index 0) given the prediction at t_index."""
        a = _per_example(self.alphas_prev[index])
        return a.sqrt() * x0 + (1 - a).sqrt() * eps


def boundary_scalings(timesteps: torch.Tensor, scaling: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """(c_skip, c_out) of the consistency function at `timesteps`: 1 and 0 at t = 0, so
    f(x, 0) = x; LCMScheduler samples with the same ones."""
    t = scaling * timesteps.double()
    c_skip = SIGMA_DATA ** 2 / (t ** 2 + SIGMA_DATA ** 2)
    c_out = t / (t ** 2 + SIGMA_DATA ** 2).sqrt()
    return _per_example(c_skip.float()), _per_example(c_out.float())


def x0_and_eps(output: torch.Tensor, sample: torch.Tensor, alphas_cumprod: torch.Tensor,
               timesteps: torch.Tensor, parameterization: str
               ) -> Tuple[torch.Tensor, torch.Tensor]:
    """The clean latents and the noise a U-Net's `output` at `timesteps` implies for
    `sample` (ε- or v-prediction)."""
    a = _per_example(alphas_cumprod[timesteps])
    alpha, sigma = a.sqrt(), (1 - a).sqrt()
    if parameterization == "v":
        return alpha * sample - sigma * output, alpha * output + sigma * sample
    return (sample - sigma * output) / alpha, output


def consistency(output: torch.Tensor, sample: torch.Tensor, alphas_cumprod: torch.Tensor,
                timesteps: torch.Tensor, parameterization: str, scaling: float) -> torch.Tensor:
    """The consistency function f(x, t) = c_skip·x + c_out·x̂₀ of a U-Net's `output`."""
    c_skip, c_out = boundary_scalings(timesteps, scaling)
    x0, _eps = x0_and_eps(output, sample, alphas_cumprod, timesteps, parameterization)
    return c_skip * sample + c_out * x0


def consistency_loss(prediction: torch.Tensor, target: torch.Tensor, kind: str,
                     huber_c: float) -> torch.Tensor:
    """Pseudo-Huber mean(√((p − t)² + c²) − c), or the mean squared error ("l2"), in fp32."""
    difference = prediction.float() - target.float()
    if kind == "l2":
        return difference.pow(2).mean()
    return ((difference.pow(2) + huber_c ** 2).sqrt() - huber_c).mean()


class TargetNetwork:
    """The target of the consistency loss: a copy of the student whose weights follow the
    online student's as an exponential moving average, θ⁻ ← μθ⁻ + (1 − μ)θ, after every
    optimizer step (no warm-up, as the reference script).  Frozen; checkpointed whole."""

    def __init__(self, student: torch.nn.Module, decay: float) -> None:
        self.model = copy.deepcopy(student).requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, student: torch.nn.Module) -> None:
        online = student.state_dict()
        for key, value in self.model.state_dict().items():
            if value.is_floating_point():
                value.lerp_(online[key].to(value.dtype), 1 - self.decay)


def _per_example(values: torch.Tensor) -> torch.Tensor:
    return values.view(-1, 1, 1, 1)


# -- the run ---------------------------------------------------------------------------


def consistency_distill(cfg: DistillConfig, resume: bool,
                        memory: Optional[MemoryPlan] = None) -> Path:
    """The LCM run (distill.distill dispatches here): the student, or LoRA adapters on it,
    trained; returns the final student file (with ``lora_rank``, the LoRA file is
    `lora_file` of it)."""
    lora = bool(cfg.lora_rank)
    s = start_student_run(cfg, resume, memory, lcm=_lcm_fields(cfg))
    device = s.run.accelerator.device
    schedule = noise_scheduler(s.info).alphas_cumprod
    solver = DDIMSolver(schedule, cfg.lcm_ddim_timesteps).to(device)
    target = None
    if lora:
        from .lora import add_lora

        with torch.random.fork_rng(devices=[]):  # the adapters' init from the run's seed
            torch.manual_seed(cfg.seed)
            add_lora(s.student, LORA_TARGETS, int(cfg.lora_rank or 0))
    else:
        target = TargetNetwork(s.student, cfg.lcm_target_decay)
        target.model.to(device)
    t = StudentTraining.of(cfg, s.run.accelerator, s.teacher, s.cache, s.student)
    student = s.run.accelerator.unwrap_model(t.student)
    state = t.state()
    if lora:  # the adapters are the whole trained state
        state.add_model("student", t.student, trained_only=True)
    if target is not None:
        state.add_model("target", target.model)
    output = _Output(cfg, s, student, t.weights)
    with _lcm_steps(cfg, s, t, solver, schedule, target) as step:
        train(s.run, state, Cadence.of(cfg, cfg.eval_interval()), step, t.optimizer,
              samples=run_samples(cfg, s, output.weights), files=output.checkpoint_file,
              samples_per_step=cfg.batch_size * cfg.grad_accum * s.run.accelerator.num_processes,
              desc="consistency distilling")
    final = s.run.paths.out / output.final_name
    return s.finish(t.student, state, final, lambda: output.write_final(final, state.step),
                    **({"lora": str(lora_file(final))} if lora else {}))


def lora_file(student: Path) -> Path:
    """Where an LCM-LoRA run puts its LoRA file: beside the student, ``<student>-lora``."""
    return student.with_name(student.stem + "-lora.safetensors")


def _lcm_fields(cfg: DistillConfig) -> Dict[str, Any]:
    """The start event's record of the objective's settings."""
    return {"w": [cfg.lcm_w_min, cfg.lcm_w_max], "ddim_timesteps": cfg.lcm_ddim_timesteps,
            "target": "the student" if cfg.lora_rank else "EMA %g" % cfg.lcm_target_decay,
            "loss": cfg.lcm_loss, "feature_kd": cfg.lcm_feature_kd, "lora_rank": cfg.lora_rank,
            "recommended": cfg.recommendation().describe()}  # type: ignore[union-attr]


class _Output:
    """What an LCM run exports: the student as an A1111 file (``<student>-lcm``); with LoRA
    that student has the adapters merged, and beside it is the LoRA file (``-lcm-lora``:
    the adapters under the names A1111's Lora extension resolves on the student's layout,
    kohya's metadata and the run's), as DreamBooth's LoRA mode does.  Checkpoints hold the
    student, or with LoRA only the LoRA file."""

    def __init__(self, cfg: DistillConfig, s: StudentRun, student: torch.nn.Module,
                 full_weights: Callable[[], Dict[str, torch.Tensor]]) -> None:
        self.cfg, self.s, self.student, self.full_weights = cfg, s, student, full_weights
        self.lora = bool(cfg.lora_rank)
        # Named after the student it starts from (or the teacher's pruned one).
        stem = (Path(cfg.init_student).stem if cfg.init_student
                else "%s-bk-%s" % (s.ckpt.path.stem, preset_name(s.arch)))
        self.base = stem + ".safetensors"
        self.final_name = stem + "-lcm.safetensors"

    def weights(self) -> Dict[str, torch.Tensor]:
        """The student's weights now (LoRA: with the adapters merged)."""
        if not self.lora:
            return self.full_weights()
        from .lora import merged_state_dict

        return merged_state_dict(self.student)

    def checkpoint_file(self, folder: Path, step: int) -> Dict[str, str]:
        if self.lora:
            name = "lcm-lora-step-%07d.safetensors" % step
            self._write_lora(folder / name, step)
            return {"lora": name}
        name = "student-step-%07d.safetensors" % step
        self._write_student(folder / name, step)
        return {"student": name}

    def write_final(self, path: Path, step: int) -> None:
        self._write_student(path, step)
        if self.lora:
            self._write_lora(lora_file(path), step)

    def _write_student(self, path: Path, step: int) -> None:
        s = self.s
        export_student(path, self.weights(), s.arch, s.ckpt, s.info, self.cfg, step)

    def _write_lora(self, path: Path, step: int) -> None:
        from .lora import kohya_metadata, kohya_state, write_lora

        cfg, s = self.cfg, self.s
        metadata = kohya_metadata(s.arch, int(cfg.lora_rank or 0), self.base)
        metadata.update(teacher_origin(s.ckpt), **run_metadata(cfg, step))
        write_lora(path, kohya_state(self.student, s.arch), DTYPES[cfg.export_dtype] or torch.float32,
                   metadata)


# -- one step --------------------------------------------------------------------------


@contextmanager
def _lcm_steps(cfg: DistillConfig, s: StudentRun, t: StudentTraining, solver: DDIMSolver,
               schedule: torch.Tensor, target: Optional[TargetNetwork]
               ) -> Iterator[Callable[[], Dict[str, float]]]:
    """One optimizer step of `cfg.grad_accum` micro-batches (module docstring, 1-5), then
    the target and the EMA follow the student.  Returns the losses averaged."""
    accelerator, device = t.accelerator, t.accelerator.device
    student = accelerator.unwrap_model(t.student)
    alphas, scale, half = schedule.to(device), latent_scale(s.info), teacher_dtype(device)
    parameterization, scaling = s.info.parameterization, cfg.lcm_timestep_scaling
    uncond = text_encoder_fn(s.ckpt, s.info, device)([""]).to(device)
    pairs = s.arch.feature_kd_pairs() if cfg.lcm_feature_kd else []
    teacher_taps = FeatureTaps(t.teacher, [name for name, _ in pairs]) if pairs else None
    student_taps = FeatureTaps(student, [name for _, name in pairs]) if pairs else None

    def guided_step(noisy: torch.Tensor, extra: Optional[torch.Tensor], start: torch.Tensor,
                    embedding: torch.Tensor, w: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The teacher's CFG prediction at t_{n+k} and the DDIM step to t_n."""
        both = t.teacher(with_channels(noisy, extra).repeat(2, 1, 1, 1).to(half),
                         torch.cat([start, start]),
                         torch.cat([embedding, uncond.expand_as(embedding)]).to(half)).sample
        x0, eps = x0_and_eps(both.float(), torch.cat([noisy, noisy]), alphas,
                             torch.cat([start, start]), parameterization)
        (x0_c, x0_u), (eps_c, eps_u) = x0.chunk(2), eps.chunk(2)
        w = _per_example(w)
        return solver.step(x0_c + w * (x0_c - x0_u), eps_c + w * (eps_c - eps_u), index)

    def micro_step() -> Dict[str, float]:
        batch = training_batch(cfg, t, scale)
        latents, embedding, size = batch.latents, batch.embedding, len(batch.latents)
        index = torch.randint(0, len(solver.timesteps), (size,), generator=t.generator).to(device)
        noise = randn(latents, t.generator)
        w = (cfg.lcm_w_min + (cfg.lcm_w_max - cfg.lcm_w_min) * torch.rand(size, generator=t.generator)
             ).to(device)
        start = solver.timesteps[index]
        end = (start - solver.skip).clamp(min=0)
        a = _per_example(alphas[start])
        noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
        extra = s.extra_channels(batch, t.generator)
        with accelerator.accumulate(t.student):
            with accelerator.autocast():
                output = t.student(with_channels(noisy, extra), start, embedding).sample
            prediction = consistency(output.float(), noisy, alphas, start, parameterization,
                                     scaling)
            student_features = student_taps.take() if student_taps else []
            with torch.no_grad():
                with accelerator.autocast():
                    x_prev = guided_step(noisy, extra, start, embedding, w, index)
                    teacher_features = [f[:size] for f in teacher_taps.take()] if teacher_taps else []
                    target_output = (target.model if target else student)(
                        with_channels(x_prev, extra), end, embedding).sample
                goal = consistency(target_output.float(), x_prev, alphas, end, parameterization,
                                   scaling)
            loss = consistency_loss(prediction, goal, cfg.lcm_loss, cfg.lcm_huber_c)
            parts = {"consistency": loss.item()}
            if pairs:
                feature = _feature_kd(student_features, teacher_features)
                loss = loss + cfg.lcm_feature_kd * feature
                parts["feature_kd"] = feature.item()
            optimizer_step(accelerator, loss, t.student.parameters(), t.optimizer,
                           cfg.max_grad_norm, t.scheduler)
        return dict(parts, loss=loss.item())

    def step() -> Dict[str, float]:
        totals: Dict[str, float] = {}
        for _ in range(cfg.grad_accum):
            for key, value in micro_step().items():
                totals[key] = totals.get(key, 0.0) + value / cfg.grad_accum
        if target is not None:
            target.update(student)
        if t.ema is not None:
            t.ema.update(student)
        return totals

    try:
        yield step
    finally:
        for taps in (teacher_taps, student_taps):
            if taps is not None:
                taps.close()


def _feature_kd(student: List[torch.Tensor], teacher: List[torch.Tensor]) -> torch.Tensor:
    return torch.stack([torch.nn.functional.mse_loss(a.float(), b.float())
                        for a, b in zip(student, teacher)]).sum()

